"""Outputs of ``difflens collapse``: each step's figures, the probability-tree table, and
the page's intro and headline. Data in (summaries, tables, trees), figures out.

The trees and probe results are read through the small protocols below, so that this
module needs none of the code that builds them from a model."""

from collections.abc import Mapping, Sequence
from typing import Any

import pandas as pd

from difflens.capture.outcomes import ProbeResults
from difflens.report.figures import COLORS, AnyFigure, CustomFigure, Figure, Series
from difflens.sampling.tree import ProbabilityTree, TreeNode


def label_order(models: Sequence[str]) -> list[str]:
    return sorted(models, key=lambda m: {"base": 0, "tuned": 1}.get(m, 2))


def intro_html(summary: dict[str, Any]) -> str:
    """A short reading guide for the index page and the demo section."""
    parts = ["Mode collapse, measured exactly where possible: answer distributions come from "
             "chained logits, not samples; every mean has a 95% bootstrap CI."]
    t = summary.get("temperature")
    if t:
        parts.append(f"Best-matching temperature for the tuned model: T={t['best_T']:.3g}; "
                     f"TVD from the base there {t['residual_tvd']:.3f} "
                     f"[{t['residual_tvd_ci95'][0]:.3f}, {t['residual_tvd_ci95'][1]:.3f}] vs "
                     f"{t['tvd_at_1']:.3f} at T=1 (n={t['n']} phrasings).")
    for m, a in summary.get("attractors", {}).items():
        parts.append(f"Attractor strength {m}: {a['strength']:.3f} [{a['ci_low']:.3f}, "
                     f"{a['ci_high']:.3f}] (chance {a['chance']:.3f}).")
    return " ".join(parts)


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {}
    d = summary.get("divergence", {})
    if "kl_tuned_base_mean" in d:
        h["KL(tuned‖base) per token"] = {"mean": d["kl_tuned_base_mean"],
                                          "ci95": d["kl_tuned_base_ci95"], "n": d["n_texts"]}
    for name, by_model in summary.get("probes", {}).items():
        for m, r in by_model.items():
            h[f"probe {name}, {m}: top answer"] = (
                f"{r['top_answer']} (p={r['top_prob']:.3f}); entropy {r['entropy_bits']:.2f} of "
                f"{r['max_entropy_bits']:.2f} bits; outside mass {r['outside_mass']:.3f}")
    for m, a in summary.get("attractors", {}).items():
        h[f"attractor strength, {m}"] = {"mean": a["strength"], "ci95": [a["ci_low"],
                                                                         a["ci_high"]],
                                         "n": a["n"]}
    for m, r in summary.get("diversity", {}).items():
        h[f"diversity, {m}"] = (f"distinct-2 {r['distinct_2']:.3f}, self-BLEU "
                                f"{r['self_bleu']:.3f}, Vendi {r['vendi']:.2f}, Fréchet "
                                f"{r.get('frechet', float('nan')):.4f}")
    return h


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


def probe_figures(results: ProbeResults, summary: dict[str, Any]) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    models = label_order(list(dict.fromkeys(results.phrasings.model)))
    names = list(summary)
    figs.append(Figure(
        "probes_tvd", "Distance from uniform of each probe's answers", "bar", names,
        [Series(m, [summary[n][m]["tvd_uniform"] for n in names],
                [summary[n][m]["tvd_uniform_ci95"][0] for n in names],
                [summary[n][m]["tvd_uniform_ci95"][1] for n in names]) for m in models],
        ylabel="TVD from uniform", caption="mean over phrasings; 95% bootstrap CI over "
        "phrasings; 0 = a fair draw"))
    for name in names:
        a = results.answers[results.answers.probe == name]
        answers = list(dict.fromkeys(a.answer))
        mean = a.groupby(["model", "answer"])["p"].mean()
        figs.append(Figure(
            f"probe_{name}", f"Exact answer distribution: {name} (mean over phrasings)", "bar",
            answers, [Series(m, [float(mean[(m, x)]) for x in answers]) for m in models],
            xlabel="answer", ylabel="probability", hline=1 / len(answers),
            caption="chained token probabilities, renormalised over the answers; dashed: "
            "uniform"))
    return figs


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
        [Series(m, [summary[m]["strength"], summary[m]["exact_rate"], summary[m]["cosine"]],
                [summary[m]["ci_low"], summary[m]["exact_rate_ci95"][0],
                 summary[m]["cosine_ci95"][0]],
                [summary[m]["ci_high"], summary[m]["exact_rate_ci95"][1],
                 summary[m]["cosine_ci95"][1]]) for m in models],
        ylabel="similarity of the new ending to the original",
        caption="95% bootstrap CI over prompts; chance (endings of different prompts): "
        + ", ".join(f"{m} {summary[m]['chance']:.3f}" for m in models))]


def diversity_figures(summary: dict[str, Any]) -> list[AnyFigure]:
    models = label_order(list(summary))
    keys = ["distinct_1", "distinct_2", "self_bleu", "pairwise_distance"]

    def ci(m: str, k: str, i: int) -> float:
        return float(summary[m].get(f"{k}_ci95", [summary[m][k]] * 2)[i])  # type: ignore[arg-type]

    figs: list[AnyFigure] = [Figure(
        "diversity", "Diversity of K samples per prompt", "bar", keys,
        [Series(m, [summary[m][k] for k in keys], [ci(m, k, 0) for k in keys],
                [ci(m, k, 1) for k in keys]) for m in models],
        caption="means over prompts, 95% bootstrap CI over prompts; self-BLEU: higher = "
        "less diverse")]
    figs.append(Figure(
        "diversity_vendi", "Vendi score (effective number of distinct samples)", "bar",
        ["vendi"], [Series(m, [summary[m]["vendi"]], [ci(m, "vendi", 0)], [ci(m, "vendi", 1)])
                    for m in models]))
    if all("frechet" in summary[m] for m in models):
        figs.append(Figure(
            "diversity_frechet", "Fréchet distance of sample embeddings to the reference",
            "bar", ["frechet"], [Series(m, [summary[m]["frechet"]],
                                        [summary[m]["frechet_ci95"][0]],
                                        [summary[m]["frechet_ci95"][1]]) for m in models],
            caption=str(summary[models[0]].get("frechet_reference", ""))))
    return figs
