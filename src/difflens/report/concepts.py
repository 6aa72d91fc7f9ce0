"""The concepts pipeline behind ``difflens concepts`` and the demo's "Concepts" section.

:func:`run_concepts` extracts concept vectors (activations are cached in
``OUT/activations`` so that ``extract``, ``compare`` and ``steer`` on the same output folder
run the models once), compares them, measures the steering dose-response, and writes
``OUT/summary.json``, ``OUT/vectors.safetensors``, tables as Parquet + CSV under
``OUT/data``, figures as HTML + PNG under ``OUT/figures`` and ``OUT/index.html``.
"""

import dataclasses
import functools
import html
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.concepts import (
    ConceptComparison,
    ConceptExtraction,
    best_layer,
    compare_concepts,
    extract_concepts,
)
from difflens.analysis.divergence import mean_ci
from difflens.capture.abdata import ABDataset, tokenize_items
from difflens.capture.store import check_writable, write_json_atomic
from difflens.control.steering import dose_response, generate, steering
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair
from difflens.report.figures import COLORS, AnyFigure, CustomFigure, Figure, Series, write_index
from difflens.report.tables import write_table

STEPS = ("extract", "compare", "steer")


@dataclasses.dataclass(frozen=True)
class ConceptsRun:
    """What :func:`run_concepts` wrote: the summary and the figures (for other reports)."""

    summary: dict[str, Any]
    figures: list[AnyFigure]
    extraction: ConceptExtraction
DEFAULT_ALPHAS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
#: ``vector``: alpha multiplies the concept vector itself (the CAA convention; alpha=1 adds
#: the mean matching-minus-non-matching difference). ``residual``: the vector is rescaled to
#: the mean norm of the residual stream at that layer (over all items' read positions), so
#: alpha=0.1 adds 10% of a typical state's norm, comparable across layers and models.
ALPHA_UNITS = ("vector", "residual")


def steering_vector(ex: ConceptExtraction, label: str, layer: int, unit: str) -> Any:
    """The vector that alpha multiplies, in ``unit`` (see :data:`ALPHA_UNITS`)."""
    v = ex.vectors.layer(label, layer)
    if unit == "vector":
        return v
    j = ex.layers.index(layer)
    scale = float(ex.acts[label][:, :, j].norm(dim=-1).mean())
    norm = float(v.norm())
    if norm == 0.0:
        raise InputError(f"the concept vector of {label} at layer {layer} is zero; choose "
                         f"another layer to steer")
    return v * (scale / norm)


def default_steer_layers(n_layers: int, separation: Sequence[dict[str, Any]]) -> list[int]:
    """The best-separating layer plus the layers at 1/3 and 2/3 depth."""
    layers = {max(1, round(n_layers / 3)), max(1, round(2 * n_layers / 3))}
    if separation:
        layers.add(best_layer(separation))
    return sorted(layers)


def run_concepts(
    target: LoadedModel | ModelPair,
    dataset: ABDataset,
    out: Path,
    *,
    steps: Sequence[str] = STEPS,
    layers: str | Sequence[int] = "all",
    position: str = "answer",
    method: str = "mean_diff",
    chat: bool | None = None,
    test_fraction: float = 0.2,
    seed: int = 0,
    steer_layers: Sequence[int] | None = None,
    alphas: Sequence[float] = DEFAULT_ALPHAS,
    alpha_unit: str = "vector",
    n_generations: int = 3,
    max_new_tokens: int = 24,
    batch_size: int = 32,
    n_boot: int = 500,
    progress: bool = False,
    index: bool = True,
) -> ConceptsRun:
    """Run the asked ``steps`` of the concepts pipeline into ``out``."""
    from difflens.organism.build import rich_progress

    if alpha_unit not in ALPHA_UNITS:
        raise InputError(f"alpha unit must be one of {', '.join(ALPHA_UNITS)}, got "
                         f"{alpha_unit!r}")
    bad = [s for s in steps if s not in STEPS]
    if bad:
        raise InputError(f"unknown step {bad[0]!r}; steps are {', '.join(STEPS)}")
    check_writable(out)
    models = target.models if isinstance(target, ModelPair) else {"model": target}
    with rich_progress(progress) as bar:
        tick = bar("extract", len(dataset) * len(models))
        ex = extract_concepts(target, dataset, layers=layers, position=position, method=method,
                              chat=chat, test_fraction=test_fraction, seed=seed,
                              batch_size=batch_size, cache_dir=out / "activations",
                              progress=lambda n: tick(n, ""))
        ex.vectors.save(out / "vectors.safetensors")
        summary: dict[str, Any] = _previous(out, ex.key, method, test_fraction, seed)
        summary |= {
            "extraction_key": ex.key, "test_fraction": test_fraction, "seed": seed,
            "dataset": {"name": dataset.name, "path": dataset.path, "format": dataset.format,
                        "n_skipped": len(dataset.skipped)},
            "n_items": len(dataset), "n_train": len(ex.train), "n_test": len(ex.test),
            "layers": list(ex.layers), "position": position, "method": method,
            "chat": ex.chat, "n_truncated": ex.n_truncated,
            "models": {k: m.identity.name for k, m in models.items()},
            "unsteered_p_match": {k: mean_ci(ex.p_match(k)[ex.test if len(ex.test) else
                                                           ex.train], seed=seed)
                                  for k in ex.labels},
        }
        data = out / "data"
        figures: list[AnyFigure] = []
        items = pd.DataFrame({"item": np.arange(len(dataset)),
                              "source": [i.source for i in dataset.items],
                              "split": np.where(np.isin(np.arange(len(dataset)), ex.test),
                                                "test", "train")})
        for k in ex.labels:
            items[f"{k}_p_match"] = ex.p_match(k)
        write_table(items, data, "items")
        cmp = compare_concepts(ex, n_boot=n_boot, seed=seed)
        summary["separation_auc"] = {k: rows for k, rows in cmp.separation.items()}
        summary["vector_norm"] = cmp.norms
        figures += _separation_figures(ex, cmp)
        write_table(pd.DataFrame([dict(r, model=k) for k, rows in cmp.separation.items()
                                  for r in rows]), data, "separation")
        if "compare" in steps:
            summary["cosine_by_layer"] = cmp.cosine_by_layer
            summary["pca_explained"] = cmp.pca_explained
            figures += _compare_figures(ex, cmp)
            if cmp.cosine_by_layer:
                write_table(pd.DataFrame(cmp.cosine_by_layer), data, "cosine_by_layer")
            write_table(pd.DataFrame([dict(r, model=k) for k, rows in cmp.heatmaps.items()
                                      for r in rows]), data, "layer_cosines")
            write_table(pd.DataFrame(cmp.pca), data, "pca")
        generations: list[dict[str, Any]] = []
        if "steer" in steps:
            if not len(ex.test):
                raise InputError("steering is measured on held-out items; use --test-fraction "
                                 "> 0")
            summary["steering"] = {}
            summary["alpha_unit"] = alpha_unit
            summary["steering_best_layer"] = {}
            for k, lm in models.items():
                chosen = (list(steer_layers) if steer_layers
                          else default_steer_layers(lm.n_layers, cmp.separation.get(k, [])))
                chosen = [lm.layers.normalize(x) for x in chosen]
                vecs = {x: steering_vector(ex, k, x, alpha_unit) for x in chosen}
                toks, _ = tokenize_items(lm.tokenizer, [dataset.items[i] for i in ex.test],
                                         dataset.format, chat=ex.chat[k], position=position,
                                         max_length=lm.max_length)
                step = bar(f"steer {k}", len(chosen) * len(alphas))
                rows = dose_response(lm, toks, vecs, alphas, n_boot=n_boot, seed=seed,
                                     batch_size=batch_size,
                                     on_step=functools.partial(step, 1, ""))
                summary["steering"][k] = {str(x): [
                    {f: r[f] for f in ("alpha", "p_match", "ci_low", "ci_high", "n")}
                    for r in rows if r["layer"] == x] for x in chosen}
                best = (best_layer(cmp.separation[k]) if cmp.separation.get(k) else chosen[0])
                summary["steering_best_layer"][k] = best if best in chosen else chosen[0]
                write_table(pd.DataFrame([dict(r, model=k) for r in rows]), data,
                            f"steering_{k}")
                figures.append(_dose_figure(k, rows, alpha_unit))
                generations += _generations(lm, k, dataset, ex, vecs[summary[
                    "steering_best_layer"][k]], summary["steering_best_layer"][k], alphas,
                    n_generations, max_new_tokens)
            if generations:
                write_table(pd.DataFrame(generations), data, "generations")
                summary["generations"] = generations
    for fig in figures:
        fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    if index:
        write_index(out / "index.html", f"difflens concepts: {dataset.name}",
                    intro_html(summary), figures, headline(summary))
    return ConceptsRun(summary=summary, figures=figures, extraction=ex)


def _previous(out: Path, key: str, method: str, test_fraction: float, seed: int
              ) -> dict[str, Any]:
    """The summary an earlier step wrote into ``out`` for the same extraction and split, so
    that ``compare`` then ``steer`` into one folder keeps both steps' keys."""
    import json

    path = out / "summary.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = (isinstance(old, dict) and old.get("extraction_key") == key
            and old.get("method") == method and old.get("test_fraction") == test_fraction
            and old.get("seed") == seed)
    return old if same else {}


def headline(summary: dict[str, Any]) -> dict[str, Any]:
    """A few lines for the report's table."""
    out: dict[str, Any] = {"items (train / held-out)":
                           f"{summary['n_train']} / {summary['n_test']}"}
    for k, rows in summary.get("separation_auc", {}).items():
        if rows:
            best = max(rows, key=lambda r: r["auc"])
            out[f"{k}: best held-out AUC"] = (
                f"{best['auc']:.3f} [{best['ci_low']:.3f}, {best['ci_high']:.3f}] at layer "
                f"{best['layer']} (n={best['n']})")
    for k, v in summary.get("unsteered_p_match", {}).items():
        out[f"{k}: P(matching answer), unsteered"] = v
    cos = summary.get("cosine_by_layer") or []
    if cos:
        low = min(cos, key=lambda r: r["cos"])
        out["lowest cos(base, tuned)"] = (f"{low['cos']:.3f} [{low['ci_low']:.3f}, "
                                          f"{low['ci_high']:.3f}] at layer {low['layer']}")
    return out


def intro_html(summary: dict[str, Any]) -> str:
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


def _generations(lm: LoadedModel, label: str, dataset: ABDataset, ex: ConceptExtraction,
                 vec: Any, layer: int, alphas: Sequence[float], n: int, max_new_tokens: int
                 ) -> list[dict[str, Any]]:
    if n <= 0:
        return []
    prompts = [dataset.items[i].prompt for i in ex.test[:n]]
    chosen = sorted({min(alphas), 0.0, max(alphas)})
    rows = []
    for alpha in chosen:
        with steering(lm, {layer: vec}, alpha):
            texts = generate(lm, prompts, max_new_tokens=max_new_tokens, chat=ex.chat[label])
        rows += [{"model": label, "layer": layer, "alpha": alpha, "prompt": p, "text": t}
                 for p, t in zip(prompts, texts, strict=True)]
    return rows


def _separation_figures(ex: ConceptExtraction, cmp: ConceptComparison) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    if cmp.separation:
        figs.append(Figure(
            "separation_auc", "Held-out separation by layer (AUC of the projection)", "line",
            list(ex.layers),
            [Series(k, [r["auc"] for r in rows], [r["ci_low"] for r in rows],
                    [r["ci_high"] for r in rows]) for k, rows in cmp.separation.items()],
            xlabel="layer (0 = embeddings)", ylabel="AUC", hline=0.5,
            caption=f"matching vs non-matching variant of {len(ex.test)} held-out items, "
                    "projected on the train vector; dashed: chance"))
    figs.append(Figure(
        "vector_norm", "Concept vector norm by layer", "line", list(ex.layers),
        [Series(k, v) for k, v in cmp.norms.items()], xlabel="layer", ylabel="‖v‖"))
    return figs


def _compare_figures(ex: ConceptExtraction, cmp: ConceptComparison) -> list[AnyFigure]:
    figs: list[AnyFigure] = []
    if cmp.cosine_by_layer:
        rows = cmp.cosine_by_layer
        figs.append(Figure(
            "cosine_by_layer", "cos(base vector, tuned vector) by layer", "line",
            [r["layer"] for r in rows],
            [Series("tuned", [r["cos"] for r in rows], [r["ci_low"] for r in rows],
                    [r["ci_high"] for r in rows])],
            xlabel="layer (0 = embeddings)", ylabel="cosine",
            caption=f"mean-difference vectors of {rows[0]['n']} train items; band: 95% "
                    "bootstrap CI over items"))
    figs.append(_heatmap_figure(ex, cmp))
    figs.append(_pca_figure(ex, cmp))
    return figs


def _heatmap_figure(ex: ConceptExtraction, cmp: ConceptComparison) -> CustomFigure:
    labels = list(cmp.heatmaps)
    layers = list(ex.layers)
    mats = {}
    for k, rows in cmp.heatmaps.items():
        m = np.full((len(layers), len(layers)), np.nan)
        for r in rows:
            m[layers.index(r["layer_i"]), layers.index(r["layer_j"])] = r["cos"]
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


def _pca_figure(ex: ConceptExtraction, cmp: ConceptComparison) -> CustomFigure:
    df = pd.DataFrame(cmp.pca).dropna(subset=["pc1"])  # zero vectors are not in the PCA
    ev = cmp.pca_explained
    titles = [f"{'normalised (unit vectors)' if n else 'raw'}: PC1 {ev[key][0]['explained']:.0%}"
              f", PC2 {ev[key][1]['explained'] if len(ev[key]) > 1 else 0:.0%}"
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


def _dose_figure(label: str, rows: list[dict[str, Any]], unit: str) -> Figure:
    df = pd.DataFrame(rows)
    alphas = sorted(df.alpha.unique())
    series = []
    for layer, g in df.groupby("layer"):
        g = g.set_index("alpha").loc[alphas]
        series.append(Series(f"layer {layer}", g.p_match.tolist(), g.ci_low.tolist(),
                             g.ci_high.tolist()))
    return Figure(f"steering_{label}", f"Steering dose-response ({label})", "line", alphas,
                  series, xlabel=("α (multiple of the concept vector)" if unit == "vector" else
                                  "α (multiple of the layer's mean residual norm)"),
                  ylabel="P(matching answer)", hline=0.5,
                  caption=f"held-out items (n={rows[0]['n']}); band: 95% bootstrap CI")
