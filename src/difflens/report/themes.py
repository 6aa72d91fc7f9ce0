"""Outputs of ``difflens themes``: the theme map, chain flows, predictor figures and the
page's intro and headline. Data in (summaries, embeddings, chain distributions), figures out."""

from typing import Any

import numpy as np

from difflens.analysis.themes import ChainDistributions, ThemeConsistency, ThemeModel
from difflens.report.figures import COLORS, CustomFigure, Figure, Series, format_number


def theme_map_figure(emb: np.ndarray, labels: np.ndarray, model: ThemeModel, seed: int,
                     max_points: int = 3000) -> CustomFigure:
    """Segments in 2-D (PCA of the sentence embeddings), coloured by theme, labelled."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(emb))[:max_points]
    xy = PCA(n_components=2, random_state=seed).fit_transform(emb)
    names = [model.names[t] if t >= 0 else "outlier" for t in labels]

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        for t in sorted(set(labels[pick].tolist())):
            sel = pick[labels[pick] == t]
            fig.add_scatter(x=xy[sel, 0], y=xy[sel, 1], mode="markers",
                            marker={"size": 4, "opacity": 0.6},
                            name=f"{t}: {names[sel[0]]}" if t >= 0 else "outlier")
        fig.update_layout(title="Theme map (PCA of segment embeddings)", height=520,
                          template="plotly_white")
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 6))
        for t in sorted(set(labels[pick].tolist())):
            sel = pick[labels[pick] == t]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.5,
                       label=f"{t}: {names[sel[0]]}" if t >= 0 else "outlier")
            if t >= 0:
                c = xy[labels == t].mean(0)
                ax.annotate(str(t), c, fontsize=9, weight="bold")
        ax.set(title="Theme map (PCA of segment embeddings)")
        ax.legend(fontsize=6, markerscale=3, loc="best")
        fig.tight_layout()
        return fig

    return CustomFigure("theme_map", "Theme map", draw_plotly, draw_matplotlib,
                        caption="Each point is a segment; colour = theme (c-TF-IDF keywords).")


def flow_figure(dists: dict[str, ChainDistributions], model: ThemeModel, max_chain: int
                ) -> CustomFigure:
    """Theme flows step by step (Sankey), one model above the other."""
    labels = list(dists)
    k = model.k

    def flows(d: ChainDistributions) -> dict[tuple[int, int, int], float]:
        f: dict[tuple[int, int, int], float] = {}
        total = sum(sum(c.values()) for c in d.chains) or 1
        for cnt in d.chains:
            for ch, n in cnt.items():
                for s, (a, b) in enumerate(zip(ch[:-1], ch[1:], strict=False)):
                    f[(s, a, b)] = f.get((s, a, b), 0.0) + n / total
        return f

    def draw_plotly() -> Any:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=len(labels), cols=1, specs=[[{"type": "sankey"}]] * len(labels),
                            subplot_titles=labels)
        for r, label in enumerate(labels, 1):
            f = flows(dists[label])
            node = [f"{model.names[t]} ({s + 1})" for s in range(max_chain) for t in range(k)]
            fig.add_trace(go.Sankey(node={"label": node, "pad": 8},
                                    link={"source": [s * k + a for (s, a, _b) in f],
                                          "target": [(s + 1) * k + b for (s, _a, b) in f],
                                          "value": list(f.values())}), row=r, col=1)
        fig.update_layout(title="Theme chains: step-to-step flows", height=420 * len(labels))
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.5), squeeze=False)
        for ax, label in zip(axes[0], labels, strict=True):
            d = dists[label]
            share = np.zeros((max_chain, k))
            for cnt in d.chains:
                for ch, n in cnt.items():
                    for s, t in enumerate(ch):
                        share[s, t] += n
            share = share / np.maximum(share.sum(1, keepdims=True), 1)
            bottom = np.zeros(max_chain)
            for t in range(k):
                ax.bar(range(1, max_chain + 1), share[:, t], bottom=bottom,
                       label=model.names[t], color=COLORS.get(label) if k == 1 else None)
                bottom += share[:, t]
            ax.set(title=label, xlabel="chain step", ylabel="theme share")
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
        fig.tight_layout()
        return fig

    return CustomFigure("theme_flows", "Theme chains", draw_plotly, draw_matplotlib,
                        caption="HTML: Sankey of step-to-step theme flows per model. PNG: the "
                                "theme shares at each chain step.")


def layer_sweep_figure(pred: dict[str, Any]) -> Figure:
    probe = pred["predictors"]["probe"]
    xs = sorted(int(x) for x in probe)
    m = pred["baselines"]["marginal"]["kl"]["value"]
    kl = [probe[str(x)]["kl"] for x in xs]
    return Figure(name="layer_sweep", title="First-theme KL by layer (softmax probe)",
                  kind="line", x=xs,
                  series=[Series("probe", [r["value"] for r in kl], [r["ci_low"] for r in kl],
                                 [r["ci_high"] for r in kl])],
                  xlabel="layer", ylabel="KL(empirical ‖ predicted), nats", hline=m,
                  caption="Dashed: the marginal baseline. 95% CIs over test prompts.")


def calibration_figure(pred: dict[str, Any]) -> CustomFigure:
    rel = pred["reliability"]

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash"},
                        name="perfect")
        for name, rows in rel.items():
            fig.add_scatter(x=[r["confidence"] for r in rows], y=[r["accuracy"] for r in rows],
                            mode="lines+markers", name=name)
        fig.update_layout(title="Reliability of the first-theme prediction",
                          xaxis_title="predicted top probability",
                          yaxis_title="empirical frequency of that theme",
                          template="plotly_white", height=420)
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.plot([0, 1], [0, 1], ls="--", color="#888")
        for name, rows in rel.items():
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                    label=name)
        ax.set(title="Reliability diagram", xlabel="predicted top probability",
               ylabel="empirical frequency")
        ax.legend()
        fig.tight_layout()
        return fig

    return CustomFigure("calibration", "Calibration", draw_plotly, draw_matplotlib)


def intro_html(summary: dict[str, Any]) -> str:
    parts = [f"{summary.get('n_prompts')} prompts × {summary.get('k_samples')} continuations "
             f"per model; {summary.get('n_themes', '?')} themes from "
             f"{summary.get('n_segments', '?')} segments."]
    if "best_layer" in summary:
        pr = summary["predictors"]["probe"][str(summary["best_layer"])]
        tr = next(iter(summary["predictors"]["transformer"].values()))
        b = summary["baselines"]
        kl, gain = pr["kl"], pr["kl_gain"]
        parts.append(
            f"First-theme KL on held-out prompts: probe (layer {summary['best_layer']}) "
            f"{kl['value']:.3f} [{kl['ci_low']:.3f}, {kl['ci_high']:.3f}], transformer "
            f"{tr['kl']['value']:.3f}, marginal {b['marginal']['kl']['value']:.3f}, sentence "
            f"embedding {b['sentence_embedding']['kl']['value']:.3f}. The probe's paired gain "
            f"over the marginal: {format_number(gain['value'])} "
            f"[{format_number(gain['ci_low'])}, {format_number(gain['ci_high'])}] nats "
            f"(n={pr['n_test']} test prompts)"
            + ("; no better than the marginal baseline (its CI includes 0)."
               if gain["ci_low"] <= 0 <= gain["ci_high"] else "."))
    if "organism" in summary:
        o = summary["organism"]
        parts.append(f"Organism: ARI {o['ari']:.3f}, transition TVD {o['transition_tvd']:.3f}.")
    c = summary.get("consistency")
    if c:
        r = c["resample_ari"]
        parts.append(f"Themes fitted on two independent sample sets agree with ARI "
                     f"{r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                     f"(n={r['n_prompts']} prompts, {r['n_segments']} segments; k = "
                     f"{c['k'][0]} and {c['k'][1]}).")
    g = summary.get("prediction", {}).get("generalisation")
    if g:
        gs, rs = g["group_split"], g["random_split"]
        kl = gs["probe"]["kl"]
        parts.append(f"Held-out groups: probe KL {kl['value']:.3f} "
                     f"[{kl['ci_low']:.3f}, {kl['ci_high']:.3f}], "
                     f"marginal {gs['marginal']['kl']['value']:.3f}, sentence embedding "
                     f"{gs['sentence_embedding']['kl']['value']:.3f}; random folds of the same "
                     f"sizes: probe {rs['probe']['kl']['value']:.3f} (n={g['n_prompts']} "
                     f"prompts, {g['n_groups']} groups).")
    return " ".join(parts)


def consistency_figure(cons: ThemeConsistency, fit_a: ThemeModel, fit_b: ThemeModel
                       ) -> CustomFigure:
    """Where the segments of both sample sets fall under the two fits (row-normalised)."""
    table = cons.contingency.astype(np.float64)
    share = table / np.maximum(table.sum(1, keepdims=True), 1)
    rows = [f"A{t}: {fit_a.names[t]}" for t in range(fit_a.k)]
    cols = [f"B{t}: {fit_b.names[t]}" for t in range(fit_b.k)]
    title = (f"Themes of two independent sample sets: ARI {cons.ari:.3f} "
             f"[{cons.ci_low:.3f}, {cons.ci_high:.3f}]")

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=share, x=cols, y=rows, colorscale="Blues", zmin=0, zmax=1,
                                   text=table.astype(int), hovertemplate="%{y} / %{x}: "
                                   "%{z:.2f} (%{text} segments)<extra></extra>"))
        fig.update_layout(title=title, template="plotly_white", height=200 + 30 * len(rows),
                          xaxis_title="theme of fit B", yaxis_title="theme of fit A")
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(2 + 0.6 * len(cols), 1.5 + 0.45 * len(rows)))
        im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1, aspect="auto")
        ax.set_xticks(range(len(cols)), cols, rotation=60, ha="right", fontsize=7)
        ax.set_yticks(range(len(rows)), rows, fontsize=7)
        ax.set(title=title, xlabel="theme of fit B", ylabel="theme of fit A")
        ax.title.set_fontsize(9)
        fig.colorbar(im, ax=ax, label="share of fit A's theme")
        fig.tight_layout()
        return fig

    return CustomFigure("theme_consistency", "Theme consistency across resamples",
                        draw_plotly, draw_matplotlib,
                        caption=f"{cons.n_segments} segments of both sample sets "
                                f"({cons.n_prompts} prompts), assigned by both fits; each row "
                                "is a theme of fit A, split by the theme fit B gives the same "
                                "segments. One dark cell per row: the two fits cut alike.")


def generalisation_figure(gen: dict[str, Any]) -> Figure:
    """Mean first-theme KL per held-out group: the probe, the baselines, and the probe of
    the random split on the same prompts."""
    per = gen["group_split"]["per_group"]
    xs = [f"{g} (n={r['n']})" for g, r in per.items()]
    cols = (("probe_kl", "probe, group held out"),
            ("probe_kl_random_split", "probe, random folds"),
            ("sentence_embedding_kl", "sentence embedding, group held out"),
            ("marginal_kl", "marginal of the other groups"))
    return Figure(name="theme_generalisation", title="First-theme KL on each held-out group",
                  kind="bar", x=xs,
                  series=[Series(label, [r[col] for r in per.values()]) for col, label in cols],
                  xlabel="held-out group", ylabel="KL(empirical ‖ predicted), nats",
                  caption="Each group's prompts are predicted by predictors trained on the "
                          "other groups; the random folds have the same sizes. CIs of the "
                          "pooled values are in the summary.")


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {"prompts": summary.get("n_prompts"), "K": summary.get("k_samples"),
                         "themes": summary.get("n_themes")}
    if "best_layer" in summary:
        h["best layer"] = summary["best_layer"]
        for name, r in summary["baselines"].items():
            h[f"{name} KL"] = r["kl"]["value"]
    if "organism" in summary:
        h["ARI"] = summary["organism"]["ari"]
    return h
