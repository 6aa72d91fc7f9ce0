"""Outputs of ``difflens demo``: the organism's own figures (headline measures, exact
chance distributions, KL by position, layer cosines, RL curves) and the page's intro and
headline. Data in (the organism's properties, the capture's statistics), figures out."""

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from difflens.analysis.divergence import bootstrap_ci
from difflens.report.figures import Figure, Series


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
                 outcome_order: Mapping[str, list[str]]) -> list[Figure]:
    """``keys``: the headline measures (one bar figure each); ``outcome_order``: each
    chance kind's outcomes in their natural order."""
    def series(key: str) -> list[Series]:
        return [Series(label, [props[label][key]["mean"]], [props[label][key]["ci95"][0]],
                       [props[label][key]["ci95"][1]]) for label in ("base", "tuned")]

    figs = [
        Figure(f"headline_{key}", f"{key.replace('_', ' ')}: base vs tuned", "bar", [key],
               series(key), ylabel=key, caption=f"mean with 95% bootstrap CI, "
               f"n={props['base'][key]['n']} per model")
        for key in keys
    ]
    for kind in props["base"]["chance_by_kind"]:
        dists = {label: props[label]["chance_by_kind"][kind]["mean_distribution"]
                 for label in ("base", "tuned")}
        outcomes = [o for o in outcome_order.get(kind, sorted(dists["base"])) if o in dists["base"]]
        figs.append(Figure(
            f"chance_{kind}", f"Exact outcome distribution, {kind} (mean over prompts)", "bar",
            outcomes, [Series(label, [dists[label][o] for o in outcomes])
                       for label in ("base", "tuned")],
            xlabel="outcome", ylabel="probability", hline=1 / len(outcomes),
            caption="dashed: the world's true uniform distribution"))
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
