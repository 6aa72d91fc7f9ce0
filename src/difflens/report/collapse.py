"""Outputs of ``difflens collapse``: each step's figures, the probability-tree table, and
the page's intro and headline. Data in (summaries, tables, trees), figures out.

The trees and probe results are read through the small protocols below, so that this
module needs none of the code that builds them from a model."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from difflens.analysis.temperature_match import TemperatureMatch
from difflens.capture.outcomes import ProbeResults
from difflens.report.figures import (
    COLORS,
    AnyFigure,
    CustomFigure,
    Figure,
    Series,
    as_estimate,
    small_multiples,
)
from difflens.sampling.tree import ProbabilityTree, TreeNode


def label_order(models: Sequence[str]) -> list[str]:
    return sorted(models, key=lambda m: {"base": 0, "tuned": 1}.get(m, 2))


def intro_html(summary: dict[str, Any]) -> str:
    """A short reading guide for the index page and the demo section."""
    parts = ["Mode collapse, measured exactly where possible: answer distributions come from "
             "chained logits, not samples; every mean has a 95% bootstrap CI."]
    t = summary.get("temperature")
    if t:
        res = t["residual_tvd"]
        parts.append(f"Best-matching temperature for the tuned model: T={t['best_T']:.3g}; "
                     f"TVD from the base there {res['value']:.3f} "
                     f"[{res['ci_low']:.3f}, {res['ci_high']:.3f}] vs "
                     f"{t['tvd_at_1']['value']:.3f} at T=1 (n={t['n']} phrasings).")
    for m, a in summary.get("attractors", {}).items():
        st = a["strength"]
        parts.append(f"Attractor strength {m}: {st['value']:.3f} [{st['ci_low']:.3f}, "
                     f"{st['ci_high']:.3f}] (chance {a['chance']:.3f}).")
    return " ".join(parts)


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {}
    d = summary.get("divergence", {})
    if "kl_tuned_base_mean" in d:
        h["KL(tuned‖base) per token"] = d["kl_tuned_base_mean"]
    for name, by_model in probe_items(summary.get("probes", {})):
        for m, r in by_model.items():
            h[f"probe {name}, {m}: top answer"] = (
                f"{r['top_answer']} (p={r['top_prob']:.3f}); entropy "
                f"{r['entropy_bits']['value']:.2f} of {r['max_entropy_bits']:.2f} bits; outside "
                f"mass {r['outside_mass']['value']:.3f}"
                if r.get("answered", True) else unanswered_note(r))
    for name, r in summary.get("probes", {}).get("rank_correlation", {}).items():
        h[f"probe {name}: rank correlation base vs tuned"] = (
            f"Spearman {rank_text(r['spearman'])}, Kendall {rank_text(r['kendall'])} over "
            f"{r['n_answers']} answers" + ("" if r["answered"] else
                                           " (a model does not answer it)"))
    for m, a in summary.get("attractors", {}).items():
        h[f"attractor strength, {m}"] = a["strength"]
    for m, r in summary.get("diversity", {}).items():
        h[f"diversity, {m}"] = (f"distinct-2 {value_of(r['distinct_2']):.3f}, self-BLEU "
                                f"{value_of(r['self_bleu']):.3f}, Vendi "
                                f"{value_of(r['vendi']):.2f}, Fréchet "
                                f"{value_of(r.get('frechet')):.4f}")
    return h


def value_of(v: Any) -> float:
    """The value of an estimate in a summary (a bare number, as a metric no unit had is
    written, is its own value; a missing one is NaN)."""
    return as_estimate(v).value


def rank_text(est: Mapping[str, Any]) -> str:
    """A rank correlation with its CI, to two decimals: ``0.83 [0.61, 0.95]``."""
    return f"{est['value']:.2f} [{est['ci_low']:.2f}, {est['ci_high']:.2f}]"


def probe_items(probes: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """(probe, {model: row}) of a ``probes`` summary, without its ``rank_correlation``."""
    return [(k, v) for k, v in probes.items() if k != "rank_correlation"]


def unanswered_note(row: Mapping[str, Any]) -> str:
    """What a probe row says when the model does not answer the probe."""
    return (f"not answered: outside mass {row['outside_mass']['value']:.3f} > "
            f"{row['outside_limit']:g}, so the distribution given an answer (top "
            f"{row['top_answer']}, p={row['top_prob']:.3f}) rests on almost no mass")


def divergence_figures(curve: pd.DataFrame, models: list[str]) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    x = curve.t.tolist()
    if "kl_tuned_base" in curve:
        figs.append(Figure(
            "divergence_kl", "KL between the models along the continuation", "line", x,
            [Series(lbl, curve[c].tolist(), curve[c + "_lo"].tolist(), curve[c + "_hi"].tolist())
             for lbl, c in (("KL(tuned‖base)", "kl_tuned_base"),
                            ("KL(base‖tuned)", "kl_base_tuned"))],
            xlabel="continuation token index", ylabel="nats",
            caption="mean over texts at each index, 95% bootstrap band"))
    figs.append(Figure(
        "divergence_entropy", "Next-token entropy along the continuation", "line", x,
        [Series(m, curve[f"{m}_entropy"].tolist(), curve[f"{m}_entropy_lo"].tolist(),
                curve[f"{m}_entropy_hi"].tolist()) for m in label_order(models)],
        xlabel="continuation token index", ylabel="nats"))
    return figs


def context_figures(contexts: Mapping[str, Any]) -> list[AnyFigure]:
    """Which contexts collapse: the measure (entropy drop for a pair) by context."""
    by = contexts["by_context"]
    names = [c for c in ("copy", "repeat", "novel") if "value" in by[c]]
    what = ("entropy drop, base - tuned (nats)" if contexts["measure"] == "entropy_drop"
            else f"{contexts['measure']} (nats)")
    return [Figure(
        "divergence_contexts", "Which contexts collapse: copying, repetition, novel text",
        "bar", [f"{c} ({by[c]['share']:.0%} of tokens)" for c in names],
        [Series.of(what, [by[c] for c in names])], ylabel=what,
        caption="copy: the token completes a bigram of the prompt; repeat: a bigram written "
        "earlier in the continuation; 95% bootstrap CI over texts (n="
        f"{contexts['n_texts']})")]


def entropy_prediction_figures(result: Mapping[str, Any]) -> list[AnyFigure]:
    """Spearman's rho of the out-of-fold predictions: the state probe and the baselines."""
    models = [m for m in label_order(list(result)) if "probe" in result[m]]
    if not models:
        return []
    names = ["probe (prompt states)", *result[models[0]]["baselines"]]

    def rows(m: str) -> list[dict[str, Any]]:
        return [result[m]["probe"], *result[m]["baselines"].values()]

    return [Figure(
        "entropy_prediction", "Which prompts get a low-entropy continuation? (predicted)",
        "bar", names, [Series.of(m, [r["spearman"] for r in rows(m)]) for m in models],
        ylabel="Spearman rho, predicted vs actual mean entropy", hline=0.0,
        caption="out-of-fold (5 folds over prompts); ridge on the final prompt token's state, "
        "layer chosen in each training fold; baselines: 1-D fits; 95% bootstrap CI over "
        "prompts; n = " + ", ".join(f"{m} {result[m]['n_prompts']}" for m in models))]


def probe_figures(results: ProbeResults, summary: dict[str, Any]) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    models = label_order(list(dict.fromkeys(results.phrasings.model)))
    names = [n for n, _ in probe_items(summary)]
    silent = [f"{m} on {n}" for n in names for m in models
              if not summary[n][m].get("answered", True)]
    warning = (f"; NOT ANSWERED ({', '.join(silent)}): outside mass above "
               f"{summary[names[0]][models[0]]['outside_limit']:g}, the distribution given "
               f"an answer rests on almost no mass" if silent else "")
    figs.append(Figure(
        "probes_tvd", "Distance from uniform of each probe's answers", "bar", names,
        [Series.of(m, [summary[n][m]["tvd_uniform"] for n in names]) for m in models],
        ylabel="TVD from uniform", caption="mean over phrasings; 95% bootstrap CI over "
        "phrasings; 0 = a fair draw" + warning))
    panels: list[Figure] = []
    for name in names:
        a = results.answers[results.answers.probe == name]
        answers = list(dict.fromkeys(a.answer))
        mean = a.groupby(["model", "answer"])["p"].mean()
        mute = [m for m in models if not summary[name][m].get("answered", True)]
        panels.append(Figure(
            f"probe_{name}", f"Exact answer distribution: {name} (mean over phrasings)"
            + (f" — not answered by {', '.join(mute)}" if mute else ""), "bar",
            answers, [Series(m, [float(mean[(m, x)]) for x in answers]) for m in models],
            xlabel="answer", ylabel="probability", hline=1 / len(answers),
            caption="chained token probabilities, renormalised over the answers; dashed: "
            "uniform" + "".join(f"; {m}: {unanswered_note(summary[name][m])}" for m in mute),
            on_page=len(names) == 1))
    figs += panels
    if len(panels) > 1:  # the page shows them side by side
        figs.append(small_multiples(
            "probe_answers", "Exact answer distributions, every probe (mean over phrasings)",
            [dataclasses.replace(f, title=f.title.replace("Exact answer distribution: ", "")
                                 .replace(" (mean over phrasings)", "")) for f in panels],
            caption="chained token probabilities, renormalised over each probe's answers; "
            "dashed: uniform" + (warning and "; " + warning.lstrip("; "))))
    return figs


def rank_figures(ranks: Mapping[str, Any]) -> list[AnyFigure]:
    """Spearman and Kendall correlation of the two models' answer orderings, per probe."""
    names = list(ranks)
    if not names:
        return []
    return [Figure(
        "probes_rank_correlation", "Do base and tuned order the answers alike?", "bar", names,
        [Series.of(label, [ranks[n][key] for n in names])
         for label, key in (("Spearman", "spearman"), ("Kendall tau-b", "kendall"))],
        ylabel="rank correlation", hline=0.0,
        caption="over each probe's answers (mean probability over phrasings); 95% bootstrap "
        "CI resampling answers; 0 = unrelated orderings" + "".join(
            f"; {n}: a model does not answer it" for n in names if not ranks[n]["answered"]))]


def temperature_figures(table: pd.DataFrame, best_t: float) -> list[AnyFigure]:
    g = table.groupby("T")
    t = g.size().index.tolist()
    ent, base = g.entropy_bits.mean(), g.base_entropy.mean()
    return [
        Figure("temperature_entropy", "Tuned entropy vs temperature (base at T=1 dashed)",
               "line", t, [Series("tuned", ent.tolist())], xlabel="temperature of the tuned "
               "model", ylabel="entropy (bits, mean over phrasings)",
               hline=float(base.iloc[0]), caption=f"best match T={best_t:.3g}"),
        Figure("temperature_tvd", "What temperature cannot explain: TVD(tuned at T, base)",
               "line", t, [Series("tuned", g.tvd_base.mean().tolist()),
                           Series("uniform", g.tvd_uniform.mean().tolist())],
               xlabel="temperature of the tuned model", ylabel="TVD (mean over phrasings)",
               caption="'tuned': distance from the base's answers; 'uniform': from a fair "
               "draw"),
    ]


def free_text_figures(match: TemperatureMatch, temperature: Mapping[str, Any]
                      ) -> list[AnyFigure]:
    """The tuned model's diversity against its temperature, the base at T = 1 dashed: one
    figure per metric, with the meeting temperature next to the exact-probe best T."""
    figs: list[AnyFigure] = []
    for metric, m in match.meet.items():
        c = match.curves[match.curves.metric == metric].sort_values("T")
        t, lo, hi = m["value"], m["ci_low"], m["ci_high"]
        meets = (f"meets the base at T={t:.3g} [{lo:.3g}, {hi:.3g}]" if t == t
                 else "does not meet the base in this range")
        figs.append(Figure(
            f"temperature_free_text_{metric}", f"Free text: tuned {metric} vs temperature "
            "(base at T=1 dashed)", "line", c["T"].tolist(),
            [Series("tuned", c.tuned.tolist(), c.ci_low.tolist(), c.ci_high.tolist())],
            xlabel="temperature of the tuned model", ylabel=f"{metric} (mean over prompts)",
            hline=float(c.base.iloc[0]),
            caption=f"{meets} (95% CI over prompts, n={m['n_prompts']}); exact probes: best "
            f"T={temperature['best_T']:.3g}"))
    return figs


def decollapse_figures(result: Mapping[str, Any]) -> list[AnyFigure]:
    """The de-collapse sampler: diversity and perplexity under the base of every sample set
    (the models' own samples and the capped ones)."""
    sets = result["sets"]
    names = list(sets)

    def series(label: str, key: str) -> Series:
        return Series.of(label, [sets[n].get(key) for n in names])

    shares = [(lbl, k) for lbl, k in (("distinct-2", "distinct_2"), ("self-BLEU", "self_bleu"),
                                      ("recall", "recall"), ("precision", "precision"))
              if all(k in sets[n] for n in names)]
    return [
        Figure("decollapse_diversity", "De-collapse sampler: diversity of each sample set",
               "bar", names, [series(lbl, k) for lbl, k in shares], ylabel="share",
               caption=f"cap = no token above this probability ({result['model']}); 95% CI "
               "over prompts (recall: over reference texts)"),
        Figure("decollapse_vendi", "De-collapse sampler: Vendi score", "bar", names,
               [series("Vendi", "vendi")], ylabel="effective number of distinct samples"),
        Figure("decollapse_ppl", f"De-collapse sampler: perplexity under {result['scorer']}",
               "bar", names, [series("perplexity", "ppl_under_scorer")],
               ylabel="perplexity (per token)",
               caption=f"exp of the mean per-text NLL under {result['scorer']}; 95% CI over "
               "texts; the cost in fluency of a cap"),
    ]


def flat_tree(tree: ProbabilityTree) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []

    def walk(node: TreeNode, nid: str, parent: str, path: str) -> float:
        row = {"id": nid, "parent": parent, "depth": node.depth, "token": node.text,
               "path": path, "prob": node.prob, "seq_prob": node.seq_prob}
        rows.append(row)
        below = sum(walk(c, f"{nid}/{i}", nid, path + c.text)
                    for i, c in enumerate(node.children))
        # A block is at least as tall as its children (float sums can exceed by 1e-16).
        value = float(max(node.seq_prob, below))
        row["value"] = value
        return value

    walk(tree.root, "root", "", "")
    rows[0]["token"] = "prompt"
    return rows


def tree_table(trees: Mapping[str, ProbabilityTree]) -> pd.DataFrame:
    return pd.DataFrame([{"model": m, **r} for m, t in trees.items() for r in flat_tree(t)])


def tree_figure(trees: Mapping[str, ProbabilityTree]) -> CustomFigure:
    labels = label_order(list(trees))
    flats = {m: flat_tree(trees[m]) for m in labels}

    def draw_plotly() -> Any:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels,
                            specs=[[{"type": "domain"}] * len(labels)])
        for k, m in enumerate(labels):
            r = flats[m]
            fig.add_trace(go.Icicle(
                ids=[x["id"] for x in r], parents=[x["parent"] for x in r],
                labels=[x["token"] for x in r], values=[x["value"] for x in r],
                branchvalues="total", tiling={"orientation": "h"},
                customdata=[[x["path"], x["prob"]] for x in r],
                hovertemplate="%{customdata[0]}<br>P(sequence)=%{value:.4f}<br>"
                              "P(token|parent)=%{customdata[1]:.3f}<extra></extra>"),
                row=1, col=k + 1)
        prompt = next(iter(trees.values())).prompt
        fig.update_layout(title=f"Probability tree of «{prompt[-60:]}» (block height = "
                          "sequence probability)", height=560, margin={"t": 80})
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(labels), figsize=(6 * len(labels), 6), squeeze=False)
        for ax, m in zip(axes[0], labels, strict=True):
            depth = trees[m].depth

            def draw(node: TreeNode, y0: float, m: str = m, ax: Any = ax) -> None:
                y = y0
                for c in node.children:
                    h = c.seq_prob
                    ax.add_patch(plt.Rectangle((c.depth - 1, y), 0.95, h,
                                               color=COLORS.get(m, "#4c72b0"),
                                               alpha=0.35 + 0.5 * c.prob, lw=0))
                    if h > 0.03:
                        ax.text(c.depth - 0.95, y + h / 2, f"{c.text.strip()[:12]} "
                                f"{c.seq_prob:.2f}", va="center", fontsize=7)
                    draw(c, y)
                    y += h

            draw(trees[m].root, 0.0)
            ax.set(xlim=(0, depth), ylim=(1, 0), title=m, xlabel="depth (tokens)",
                   ylabel="cumulative sequence probability")
        fig.suptitle("Probability tree (block height = sequence probability)")
        fig.tight_layout()
        return fig

    return CustomFigure("tree", "Probability trees, base vs tuned", draw_plotly,
                        draw_matplotlib, caption="each block is a token; its height is the "
                        "probability of the whole path; white space is pruned mass")


def attractor_figures(summary: dict[str, Any]) -> list[AnyFigure]:
    models = label_order(list(summary))
    return [Figure(
        "attractor_strength", "Attractor strength: do perturbed completions return?", "bar",
        ["strength (1 - edit distance)", "exact ending", "ending cosine"],
        [Series.of(m, [summary[m]["strength"], summary[m]["exact_rate"], summary[m]["cosine"]])
         for m in models],
        ylabel="similarity of the new ending to the original",
        caption="95% bootstrap CI over prompts; chance (endings of different prompts): "
        + ", ".join(f"{m} {summary[m]['chance']:.3f}" for m in models)),
        *_entropy_after_figure(summary, models)]


def _entropy_after_figure(summary: dict[str, Any], models: list[str]) -> list[AnyFigure]:
    """Entropy on the new path minus the original path, for escapes and returns."""
    groups = ["escaped", "returned"]
    if not all("entropy_after" in summary[m] for m in models):
        return []

    return [Figure(
        "attractor_entropy_after", "Confidence after a perturbation: entropy of the new path "
        "minus the original", "bar", groups,
        [Series.of(m, [summary[m]["entropy_after"][g].get("diff") for g in groups])
         for m in models],
        ylabel="nats per token", hline=0.0,
        caption="escaped: a different ending; 0 = as confident on the new path as on the old; "
        "95% bootstrap CI over prompts; n = " + ", ".join(
            f"{m} {summary[m]['entropy_after']['escaped']['n']}/"
            f"{summary[m]['entropy_after']['returned']['n']}" for m in models))]


def diversity_figures(summary: dict[str, Any]) -> list[AnyFigure]:
    models = label_order(list(summary))
    keys = ["distinct_1", "distinct_2", "self_bleu", "pairwise_distance"]

    def series(m: str, keys: list[str]) -> Series:
        """The metrics with their CIs (a metric no prompt had is a bare NaN)."""
        return Series.of(m, [summary[m][k] for k in keys])

    figs: list[AnyFigure] = [Figure(
        "diversity", "Diversity of K samples per prompt", "bar", keys,
        [series(m, keys) for m in models],
        caption="means over prompts, 95% bootstrap CI over prompts; self-BLEU: higher = "
        "less diverse")]
    figs.append(Figure(
        "diversity_vendi", "Vendi score (effective number of distinct samples)", "bar",
        ["vendi"], [series(m, ["vendi"]) for m in models]))
    if all("frechet" in summary[m] for m in models):
        figs.append(Figure(
            "diversity_frechet", "Fréchet distance of sample embeddings to the reference",
            "bar", ["frechet"], [series(m, ["frechet"]) for m in models],
            caption=str(summary[models[0]].get("frechet_reference", ""))))
    if all("precision" in summary[m] for m in models):
        keys = ["precision", "recall"]
        figs.append(Figure(
            "diversity_coverage", "Precision and recall against the reference (k-NN)", "bar",
            keys, [series(m, keys) for m in models],
            ylabel="share", caption=f"k={summary[models[0]]['knn_k']} nearest neighbours; "
            "precision: share of samples inside the reference's balls (CI over prompts); "
            "recall: share of reference texts inside the samples' balls, i.e. coverage (CI "
            "over reference texts)"))
    return figs
