"""Outputs of ``difflens concepts``: separation, comparison and steering figures, the
lineage figures of a model set, and the page's intro and headline. Data in (layers, the
comparison's rows, steering rows, each estimate ``{value, ci_low, ci_high, n, resampled}``
with its context), figures out: it reads a
``ConceptComparison`` or
``LineageCosines`` and runs no model."""

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.concept_stats import ConceptComparison, LineageCosines
from difflens.report.figures import COLORS, AnyFigure, CustomFigure, Figure, Series, format_ci


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """A few lines for the report's table."""
    out: dict[str, Any] = {"items (train / held-out)":
                           f"{summary['n_train']} / {summary['n_test']}"}
    for k, rows in summary.get("separation_auc", {}).items():
        if rows:
            best = max(rows, key=lambda r: r["value"])
            out[f"{k}: best held-out AUC"] = (
                f"{best['value']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}] at layer "
                f"{best['layer']} (n={best['n']})")
    for k, v in summary.get("unsteered_p_match", {}).items():
        out[f"{k}: P(matching answer), unsteered"] = format_ci(
            v["value"], [v["ci_low"], v["ci_high"]], v["n"])
    cos = [r for r in summary.get("cosine_by_layer") or []
           if r["value"] == r["value"]]  # not NaN
    if cos:
        low = min(cos, key=lambda r: r["value"])
        out["lowest cos(base, tuned)"] = (f"{low['value']:.3f} [{low['ci_low']:.3f}, "
                                          f"{low['ci_high']:.3f}] at layer {low['layer']}")
    lineage = summary.get("lineage") or []
    for k, rows in summary.get("cosine_vs_base", {}).items():
        finite = [r for r in rows if r["value"] == r["value"]]  # not NaN
        if finite:
            low = min(finite, key=lambda r: r["value"])
            out[f"{k}: lowest cos with {lineage[0] if lineage else 'the base'}"] = (
                f"{low['value']:.3f} [{low['ci_low']:.3f}, {low['ci_high']:.3f}] at layer "
                f"{low['layer']} (n={low['n']})")
    for k, v in summary.get("settling_layer", {}).items():
        out[f"{k}: settling layer (cos to the next layer ≥ {v['threshold']:g})"] = (
            f"{v['value']} [{v['ci_low']}, {v['ci_high']}] (n={v['n']}; None: never)")
    return out


def intro_html(summary: dict[str, Any]) -> str:
    """The page's intro, with a table of the steered generations."""
    gens = summary.get("generations") or []
    text = (f"Concept vectors from {summary['n_items']} contrastive items of "
            f"<code>{html.escape(summary['dataset']['name'])}</code> "
            f"({summary['dataset']['format']} format, {summary['n_train']} train, "
            f"{summary['n_test']} held out), read at the <b>{summary['position']}</b> token, "
            f"method {summary['method']}. All intervals are 95% bootstrap CIs over items.")
    if gens:
        rows = "".join(
            f"<tr><td>{html.escape(g['model'])}</td><td>{g['layer']}</td><td>{g['alpha']:+g}"
            f"</td><td>{html.escape(g['prompt'][-80:])}</td><td>{html.escape(g['text'])}"
            f"</td></tr>" for g in gens)
        text += ("<h3>Steered generations (greedy)</h3><table><tr><th>model</th><th>layer"
                 "</th><th>α</th><th>prompt (end)</th><th>continuation</th></tr>"
                 f"{rows}</table>")
    return text


def separation_figures(layers: Sequence[int], n_test: int, cmp: ConceptComparison
                        ) -> list[AnyFigure]:
    """Held-out AUC and the vector norm, by layer."""
    figs: list[AnyFigure] = []
    if cmp.separation:
        figs.append(Figure(
            "separation_auc", "Held-out separation by layer (AUC of the projection)", "line",
            list(layers),
            [Series(k, [r["value"] for r in rows], [r["ci_low"] for r in rows],
                    [r["ci_high"] for r in rows]) for k, rows in cmp.separation.items()],
            xlabel="layer (0 = embeddings)", ylabel="AUC", hline=0.5,
            caption=f"matching vs non-matching variant of {n_test} held-out items, "
                    "projected on the train vector; dashed: chance"))
    figs.append(Figure(
        "vector_norm", "Concept vector norm by layer", "line", list(layers),
        [Series(k, v) for k, v in cmp.norms.items()], xlabel="layer", ylabel="‖v‖"))
    return figs


def compare_figures(layers: Sequence[int], cmp: ConceptComparison) -> list[AnyFigure]:
    """cos(base, tuned) by layer, the layer x layer cosines and the PCA."""
    figs: list[AnyFigure] = []
    if cmp.cosine_by_layer:
        rows = cmp.cosine_by_layer
        figs.append(Figure(
            "cosine_by_layer", "cos(base vector, tuned vector) by layer", "line",
            [r["layer"] for r in rows],
            [Series("tuned", [r["value"] for r in rows], [r["ci_low"] for r in rows],
                    [r["ci_high"] for r in rows])],
            xlabel="layer (0 = embeddings)", ylabel="cosine",
            caption=f"mean-difference vectors of {rows[0]['n']} train items; band: 95% "
                    "bootstrap CI over items"))
    figs.append(heatmap_figure(layers, cmp))
    figs.append(pca_figure(cmp))
    return figs


def lineage_figures(lc: LineageCosines) -> list[AnyFigure]:
    """A model set's figures: each later model's cosine with the base per layer (one line
    per model, in lineage order), and each stage's change of that cosine per layer."""
    layers = list(lc.layers)
    base = lc.lineage[0]
    n = next(iter(lc.rows.values()))[0]["n"] if layers else 0
    cosine = Figure(
        "cosine_vs_base", f"cos({base} vector, model vector) by layer", "line", layers,
        [Series(k, [r["value"] for r in rows], [r["ci_low"] for r in rows],
                [r["ci_high"] for r in rows]) for k, rows in lc.rows.items()],
        xlabel="layer (0 = embeddings)", ylabel=f"cosine with {base}", hline=1.0,
        caption=f"each later model's mean-difference vector of {n} train items against "
                f"{base}'s; band: 95% bootstrap CI over items, both vectors recomputed from "
                "the resampled items (data/cosine_vs_base)")
    tables = {layer: a.table.set_index("stage") for layer, a in lc.attribution.items()}
    stages = list(lc.lineage[1:])
    stage_names = ", ".join(f"{s} = {a} → {s}"
                            for a, s in zip(lc.lineage[:-1], stages, strict=True))
    attribution = Figure(
        "attribution_concepts", f"Which stage changed the cosine with {base}, by layer",
        "line", layers,
        [Series(s, [float(tables[x].loc[s, "delta"]) for x in layers],
                [float(tables[x].loc[s, "ci_low"]) for x in layers],
                [float(tables[x].loc[s, "ci_high"]) for x in layers]) for s in stages],
        xlabel="layer (0 = embeddings)", ylabel="Δ cosine with the base", hline=0.0,
        caption=f"one line per stage, named by the model it produced ({stage_names}); the "
                "stages' changes add up to the last model's cosine minus 1. Band: 95% paired "
                f"bootstrap CI (the same {n} train items resampled for every model; "
                "data/attribution_concepts)")
    return [cosine, attribution]


def heatmap_figure(layer_ids: Sequence[int], cmp: ConceptComparison) -> CustomFigure:
    labels = list(cmp.heatmaps)
    layers = list(layer_ids)
    mats = {}
    for k, rows in cmp.heatmaps.items():
        m = np.full((len(layers), len(layers)), np.nan)
        for r in rows:
            m[layers.index(r["layer_i"]), layers.index(r["layer_j"])] = r["value"]
        mats[k] = m

    def draw_plotly() -> Any:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=len(labels), subplot_titles=labels)
        for c, k in enumerate(labels, start=1):
            fig.add_heatmap(z=mats[k], x=layers, y=layers, zmin=-1, zmax=1,
                            colorscale="RdBu_r", showscale=c == len(labels),
                            hovertemplate="layer %{y} vs %{x}: cos %{z:.3f}<extra></extra>",
                            row=1, col=c)
            fig.update_xaxes(title_text="layer", row=1, col=c)
            fig.update_yaxes(title_text="layer", autorange="reversed", row=1, col=c)
        fig.update_layout(title="Layer × layer cosine of the concept vectors",
                          template="plotly_white", height=440)
        return fig

    def draw_mpl() -> Any:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.4), squeeze=False)
        im = None
        for ax, k in zip(axes[0], labels, strict=True):
            im = ax.imshow(mats[k], vmin=-1, vmax=1, cmap="RdBu_r",
                           extent=(layers[0] - .5, layers[-1] + .5, layers[-1] + .5,
                                   layers[0] - .5))
            ax.set(title=k, xlabel="layer", ylabel="layer")
        if im is not None:
            fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8, label="cosine")
        fig.suptitle("Layer × layer cosine of the concept vectors")
        return fig

    return CustomFigure("layer_cosines", "Layer × layer cosine of the concept vectors",
                        draw_plotly, draw_mpl,
                        caption="per model; the CIs of every cell are in data/layer_cosines")


def pca_figure(cmp: ConceptComparison) -> CustomFigure:
    df = pd.DataFrame(cmp.pca).dropna(subset=["pc1"])  # zero vectors are not in the PCA
    ev = cmp.pca_explained
    titles = [f"{'normalised (unit vectors)' if n else 'raw'}: PC1 {ev[key][0]['value']:.0%}"
              f", PC2 {ev[key][1]['value'] if len(ev[key]) > 1 else 0:.0%}"
              for n, key in ((False, "raw"), (True, "normalised"))]

    def draw_plotly() -> Any:
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=1, cols=2, subplot_titles=titles)
        for c, norm in enumerate((False, True), start=1):
            for k, g in df[df.normalised == norm].groupby("model", sort=False):
                fig.add_scatter(x=g.pc1, y=g.pc2, mode="lines+markers+text", name=str(k),
                                text=[str(x) for x in g.layer], textposition="top center",
                                line={"color": COLORS.get(str(k))}, showlegend=c == 1,
                                row=1, col=c)
            fig.update_xaxes(title_text="PC1", row=1, col=c)
            fig.update_yaxes(title_text="PC2", row=1, col=c)
        fig.update_layout(title="PCA of the concept vectors across layers",
                          template="plotly_white", height=460)
        return fig

    def draw_mpl() -> Any:
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, 2, figsize=(11, 4.6))
        for ax, norm, title in zip(axes, (False, True), titles, strict=True):
            for k, g in df[df.normalised == norm].groupby("model", sort=False):
                ax.plot(g.pc1, g.pc2, marker="o", label=str(k), color=COLORS.get(str(k)))
                for x, y, layer in zip(g.pc1, g.pc2, g.layer, strict=True):
                    ax.annotate(str(layer), (x, y), fontsize=7)
            ax.set(title=title, xlabel="PC1", ylabel="PC2")
            ax.legend()
        fig.suptitle("PCA of the concept vectors across layers")
        fig.tight_layout()
        return fig

    return CustomFigure(
        "pca", "PCA of the concept vectors across layers (raw vs normalised)", draw_plotly,
        draw_mpl, caption="one point per layer, both models in one PCA; numbers are layers. "
        "Normalised: each vector scaled to unit length before the PCA, so that the growth of "
        "the residual norm with depth does not decide PC1. Layers whose vector is exactly zero "
        "are left out. Explained-variance CIs are in summary.json (pca_explained).")


def dose_figure(label: str, rows: list[dict[str, Any]], unit: str) -> Figure:
    """P(matching answer) against alpha, one line per layer, from
    ``dose_response``'s rows."""
    df = pd.DataFrame(rows)
    alphas = sorted(df.alpha.unique())
    series = []
    for layer, g in df.groupby("layer"):
        g = g.set_index("alpha").loc[alphas]
        series.append(Series(f"layer {layer}", g["value"].tolist(), g.ci_low.tolist(),
                             g.ci_high.tolist()))
    return Figure(f"steering_{label}", f"Steering dose-response ({label})", "line", alphas,
                  series, xlabel=("α (multiple of the concept vector)" if unit == "vector" else
                                  "α (multiple of the layer's mean residual norm)"),
                  ylabel="P(matching answer)", hline=0.5,
                  caption=f"held-out items (n={rows[0]['n']}); band: 95% bootstrap CI")


def settling_text(label: str, est: Mapping[str, Any]) -> str:
    """Where ``label``'s concept vector settles, or that it does not within the layers
    measured (a value of None: no layer's cosine with the next reached the threshold)."""
    if est.get("value") is None:
        return f"{label} does not settle within the layers measured"
    lo, hi = est.get("ci_low"), est.get("ci_high")
    ci = f" [{lo}, {hi}]" if lo is not None and hi is not None else " (no CI: some "\
        "resamples did not settle)"
    return f"{label} settles at layer {est['value']}{ci}"


def consecutive_figure(cmp: ConceptComparison, threshold: float) -> Figure:
    """cos(v_l, v_next) by layer for each model, with the settling threshold."""
    labels = list(cmp.consecutive)
    rows0 = cmp.consecutive[labels[0]]
    settled = "; ".join(settling_text(k, v) for k, v in cmp.settling.items())
    return Figure(
        "consecutive_cosine", "Consecutive-layer cosine of the concept vector", "line",
        [r["layer"] for r in rows0],
        [Series(k, [r["value"] for r in rows], [r["ci_low"] for r in rows],
                [r["ci_high"] for r in rows]) for k, rows in cmp.consecutive.items()],
        xlabel="layer l (cosine with the next extracted layer)", ylabel="cos(v_l, v_next)",
        hline=threshold,
        caption=f"dashed: the threshold {threshold:g}; {settled} (the first layer from which "
                f"every later cosine stays at or above it; 95% CI over {rows0[0]['n']} train "
                "items resampled)")


def behaviours_figure(behaviours: dict[str, dict[str, Any]]) -> CustomFigure:
    """cos(base vector, tuned vector) by layer, one curve (and CI band) per behaviour."""
    named = {k: v["cosine_by_layer"] for k, v in behaviours.items() if v["cosine_by_layer"]}
    layers = sorted({r["layer"] for rows in named.values() for r in rows})
    cols = {}
    for k, rows in named.items():
        by = {r["layer"]: r for r in rows}
        cols[k] = {f: [by[x][f] if x in by else np.nan for x in layers]
                   for f in ("value", "ci_low", "ci_high")}
    palette = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3",
               "#8c8c8c", "#ccb974", "#64b5cd"]
    color = {k: palette[i % len(palette)] for i, k in enumerate(named)}
    title = "cos(base vector, tuned vector) by layer, per behaviour"

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        for k, c in cols.items():
            fig.add_scatter(x=layers + layers[::-1], y=c["ci_high"] + c["ci_low"][::-1],
                            fill="toself", line={"width": 0}, opacity=0.2, showlegend=False,
                            fillcolor=color[k], hoverinfo="skip")
            fig.add_scatter(x=layers, y=c["value"], name=k, mode="lines+markers",
                            line={"color": color[k]})
        fig.update_layout(title=title, xaxis_title="layer (0 = embeddings)",
                          yaxis_title="cosine", template="plotly_white", height=420,
                          xaxis={"tickmode": "array", "tickvals": layers})
        return fig

    def draw_mpl() -> Any:
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.2))
        for k, c in cols.items():
            ax.plot(layers, c["value"], marker=".", label=k, color=color[k])
            ax.fill_between(layers, c["ci_low"], c["ci_high"], alpha=0.2, color=color[k])
        ax.set(title=title, xlabel="layer (0 = embeddings)", ylabel="cosine", xticks=layers)
        ax.legend()
        fig.tight_layout()
        return fig

    ns = ", ".join(f"{k} {rows[0]['n']}" for k, rows in named.items())
    return CustomFigure(
        "cosine_by_behaviour", title, draw_plotly, draw_mpl,
        caption=f"mean-difference vectors of each dataset's train items ({ns}); band: 95% "
                "bootstrap CI over items (data/cosine_by_behaviour)")
