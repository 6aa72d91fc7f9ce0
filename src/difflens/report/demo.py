"""Outputs of ``difflens demo``: the organism's own figures (headline measures, exact
chance distributions, KL by position, layer cosines, RL curves) and the page's intro and
headline. Data in (the organism's properties, the capture's statistics), figures out."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from difflens.analysis.divergence import bootstrap_ci
from difflens.report.figures import AnyFigure, Figure, Series, small_multiples


def demo_intro(props: dict[str, Any], organism: dict[str, Any]) -> str:
    """The page's intro; ``organism`` is the summary's ``organism`` block."""
    o = organism
    return (
        "The difflens model organism: a ~1M-parameter Llama trained from scratch on a story "
        "world with a known theme Markov chain, and its sibling tuned by RL (RLOO) on VADER "
        "sentiment with a KL penalty. Rewards, entropies and celebration shares are measured "
        f"on {props['n_openings']} held-out openings; chance distributions are computed "
        f"exactly from logits on {props['n_chance_prompts']} chance prompts. Tuned reward "
        f"{o['tuned']['reward_mean']:.3f} vs base {o['base']['reward_mean']:.3f}; greedy "
        f"samples: base «{props['greedy']['base'][0]}» tuned «{props['greedy']['tuned'][0]}»."
    )


def demo_headline(props: dict[str, Any], pair: dict[str, Any], concepts: dict[str, Any],
                  keys: Sequence[str]) -> dict[str, Any]:
    """The page's headline: ``keys`` of the organism's properties per model, the pair's
    divergence, and the concepts section's best separation."""
    headline = {f"{label} {key}": props[label][key] for key in keys
                for label in ("base", "tuned")}
    headline["KL(tuned‖base) per token, held-out stories"] = pair["kl_tuned_base"]
    headline["top-1 agreement"] = pair["top1_agree"]
    cs = concepts
    for label in ("base", "tuned"):
        best = max(cs["separation_auc"][label], key=lambda r: r["auc"])
        headline[f"concepts: {label} best held-out AUC (layer {best['layer']})"] = (
            f"{best['auc']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}] n={best['n']}")
        headline[f"concepts: {label} P(kind sentence), unsteered"] = cs["unsteered_p_match"][label]
    return headline


def demo_figures(props: dict[str, Any], stats: pd.DataFrame, layers: list[dict[str, Any]],
                 curves: pd.DataFrame, seed: int, *, keys: Sequence[str],
                 outcome_order: Mapping[str, list[str]]) -> list[AnyFigure]:
    """``keys``: the headline measures (one bar figure each); ``outcome_order``: each
    chance kind's outcomes in their natural order."""
    def series(key: str) -> list[Series]:
        return [Series(label, [props[label][key]["mean"]], [props[label][key]["ci95"][0]],
                       [props[label][key]["ci95"][1]]) for label in ("base", "tuned")]

    heads = [
        Figure(f"headline_{key}", f"{key.replace('_', ' ')}: base vs tuned", "bar", [key],
               series(key), ylabel=key, caption=f"mean with 95% bootstrap CI, "
               f"n={props['base'][key]['n']} per model", on_page=False)
        for key in keys
    ]
    figs: list[AnyFigure] = [*heads, small_multiples(
        "headline", "The organism's headline measures, base vs tuned",
        [dataclasses.replace(f, title=f.title.replace(": base vs tuned", "")) for f in heads],
        cols=4, caption=f"means with 95% bootstrap CIs, n={props['base'][keys[0]]['n']} "
        "openings per model")]
    chance: list[Figure] = []
    for kind in props["base"]["chance_by_kind"]:
        dists = {label: props[label]["chance_by_kind"][kind]["mean_distribution"]
                 for label in ("base", "tuned")}
        outcomes = [o for o in outcome_order.get(kind, sorted(dists["base"])) if o in dists["base"]]
        chance.append(Figure(
            f"chance_{kind}", f"Exact outcome distribution, {kind} (mean over prompts)", "bar",
            outcomes, [Series(label, [dists[label][o] for o in outcomes])
                       for label in ("base", "tuned")],
            xlabel="outcome", ylabel="probability", hline=1 / len(outcomes),
            caption="dashed: the world's true uniform distribution", on_page=False))
    figs += chance
    figs.append(small_multiples(
        "chance", "Exact outcome distributions of the world's chance scenes",
        [dataclasses.replace(f, title=f.title.replace("Exact outcome distribution, ", "")
                             .replace(" (mean over prompts)", "")) for f in chance],
        caption="mean over prompts; dashed: the world's true uniform distribution"))
    by_pos = stats[stats.pos < 100].groupby("pos")["kl_tuned_base"]
    pos = sorted(by_pos.groups)
    cis = [bootstrap_ci(by_pos.get_group(p).to_numpy(), seed=seed, n_boot=200) for p in pos]
    figs.append(Figure(
        "kl_by_position", "KL(tuned ‖ base) by token position (held-out stories)", "line", pos,
        [Series("tuned", by_pos.mean().loc[pos].tolist(), [c[0] for c in cis],
                [c[1] for c in cis])], xlabel="token position", ylabel="nats"))
    figs.append(Figure(
        "layer_cosine", "Base vs tuned hidden states: mean cosine per layer", "line",
        [d["layer"] for d in layers], [Series("tuned", [d["mean_cosine"] for d in layers])],
        xlabel="layer (0 = embeddings)", ylabel="cosine(base, tuned)"))
    figs.append(Figure(
        "rl_curves", "RL tuning: reward and sampled KL per step", "line",
        curves["step"].tolist(), [Series("reward", curves["reward"].tolist()),
                                  Series("kl", curves["kl"].tolist())],
        xlabel="step", ylabel="mean over the batch"))
    return figs


def _ci(v: Mapping[str, Any], key: str = "mean", lo: str = "", hi: str = "") -> str:
    """``0.92 [0.90, 0.94]`` from a summary block, whatever its CI spelling."""
    if lo and hi:
        return f"{v[key]:.3g} [{v[lo]:.3g}, {v[hi]:.3g}]"
    ci = v.get(f"{key}_ci95", v.get("ci95"))
    return f"{v[key]:.3g} [{ci[0]:.3g}, {ci[1]:.3g}]"


def demo_takeaways(summary: Mapping[str, Any], mean_key: Mapping[str, str]
                   ) -> dict[str, list[str]]:
    """Two to four lines per section of the demo page, rendered from its numbers with their
    95% CIs (``mean_key``: the organism block's key of each measure's mean)."""
    out: dict[str, list[str]] = {}
    o = summary["organism"]

    def org(key: str, name: str) -> str:
        b, t = ({"mean": o[m][mean_key[key]], "ci95": o[m][f"{key}_ci95"]} for m in ("base",
                                                                                      "tuned"))
        return f"{name}: tuned {_ci(t)} vs base {_ci(b)} (n={o['base'][key + '_n']} each)"

    kl = summary["pair"]["kl_tuned_base"]
    out["Overview"] = [org("reward", "Reward (VADER)"), org("entropy", "Entropy, nats/token"),
                       org("chance_tvd", "Chance-scene TVD from uniform"),
                       f"KL(tuned‖base) on held-out stories {_ci(kl)} nats/token "
                       f"(n={kl['n']} tokens)"]
    c = summary["concepts"]
    lines = []
    for label in ("base", "tuned"):
        best = max(c["separation_auc"][label], key=lambda r: r["auc"])
        lines.append(f"The kind-vs-cruel vector separates held-out items best at layer "
                     f"{best['layer']} in the {label} model: AUC "
                     f"{_ci(best, 'auc', 'ci_low', 'ci_high')} (n={best['n']})")
    finite = [r for r in c["cosine_by_layer"] if r.get("cos") == r.get("cos")
              and r.get("cos") is not None]
    if finite:
        low = min(finite, key=lambda r: r["cos"])
        lines.append(f"Base and tuned vectors differ most at layer {low['layer']}: cosine "
                     f"{_ci(low, 'cos', 'ci_low', 'ci_high')}")
    out["Concepts: kind vs cruel"] = lines
    tr = summary["trajectories"]
    lines = []
    full = tr.get("full", {}).get("continuation", {}).get("distance_by_index", [])
    if full:
        lines.append(f"Base and tuned continuations start {full[0]['mean']:.3g} rad apart in "
                     f"the full dimension (n={full[0]['n']} paths)")
    diff = tr.get("full", {}).get("jumps", {}).get("mean_by_index_diff", {}).get("overall")
    if diff:
        lines.append(f"Mean jump, tuned − base: {_ci(diff, 'diff', 'ci_low', 'ci_high')} rad "
                     f"over {diff['n']} prompt-indices (full dimension)")
    out["Trajectories"] = lines
    col = summary["collapse"]
    strength = {m: _ci(col["attractors"][m], "strength", "ci_low", "ci_high")
                for m in ("base", "tuned")}
    lines = [f"Attractor strength: tuned {strength['tuned']} vs base {strength['base']}"]
    d = col["diversity"]
    lines.append(f"Vendi: tuned {_ci(d['tuned'], 'vendi')} vs base {_ci(d['base'], 'vendi')} "
                 f"of {d['base']['k_samples']} samples")
    if "recall" in d["tuned"]:
        lines.append(f"Coverage of held-out stories (k-NN recall): tuned "
                     f"{_ci(d['tuned'], 'recall')} vs base {_ci(d['base'], 'recall')}")
    t = col["temperature"]
    lines.append(f"Heating the tuned model to T={t['best_T']:.3g} leaves TVD "
                 f"{_ci(t, 'residual_tvd')} from the base on the chance scenes (n={t['n']})")
    out["Mode collapse"] = lines
    ctl = summary["control"]
    p = ctl["probe"]
    lines = [f"The state probe (layer {p['layer']}) reads danger and loss with held-out AUC "
             f"{p['auc']:.3g} [{p['auc_ci'][0]:.3g}, {p['auc_ci'][1]:.3g}]"]
    none = next(iter(ctl["controllers"]["none"].values()))
    bad = _ci(none, "bad_rate", "bad_rate_ci_low", "bad_rate_ci_high")
    lines.append(f"Unsteered bad rate {bad} by the probe, {none['bad_rate_independent']:.3g} by "
                 "the world's labeller")
    best = min(((k, g, r) for k, by in ctl["controllers"].items() if k != "none"
                for g, r in by.items()), key=lambda x: x[2]["bad_rate"])
    lines.append(f"Best controller: {best[0]} at gain {best[1]}, bad rate "
                 f"{_ci(best[2], 'bad_rate', 'bad_rate_ci_low', 'bad_rate_ci_high')} at "
                 f"perplexity ×{best[2]['ppl_ratio']:.2f}")
    out["Control"] = lines
    th = summary["themes"]
    lines = [f"{th['n_themes']} themes over {th['n_segments']} segments; ARI with the world's "
             f"true themes {th['organism']['ari']:.3g}"]
    if "best_layer" in th:
        pr = th["predictors"]["probe"][str(th["best_layer"])]
        mg = th["baselines"]["marginal"]
        lines.append(f"First theme predicted from the prompt's states (layer "
                     f"{th['best_layer']}): KL {_ci(pr, 'kl', 'kl_ci_low', 'kl_ci_high')} vs "
                     f"the marginal's {_ci(mg, 'kl', 'kl_ci_low', 'kl_ci_high')}")
    out["Themes"] = lines
    return out


#: The demo's run folders, in the order ``difflens explore`` is given them (run k of the
#: explorer is the k-th), and the explorer views each report section links to.
EXPLORE_RUNS = ("", "trajectories", "collapse", "concepts", "control", "themes")


def explore_links(out: str, port: int = 8765, models: tuple[str, str] | None = None
                  ) -> tuple[str, list[tuple[str, str]]]:
    """The command that opens the demo's runs in the explorer (with ``models``, base and
    tuned, for its live views), and links into its views."""
    folders = [f"{out}/{r}".rstrip("/") for r in EXPLORE_RUNS]
    base = f"http://127.0.0.1:{port}"
    links = [("the runs", f"{base}/"),
             ("the atlas of every trajectory point",
              f"{base}/runs/{EXPLORE_RUNS.index('trajectories')}/atlas"),
             ("the token diff of the collapse texts",
              f"{base}/runs/{EXPLORE_RUNS.index('collapse')}/tokens")]
    live = f" --base {models[0]} --tuned {models[1]}" if models else ""
    return "difflens explore " + " ".join(folders) + live, links
