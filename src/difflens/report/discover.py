"""Figures and the page of ``difflens discover``: data in, files out, no model."""

import html
from collections.abc import Mapping
from typing import Any

import pandas as pd

from difflens.report.figures import AnyFigure, CustomFigure, Figure, Series, format_ci

METHOD_NAMES = {"adl": "Activation Difference Lens", "mining": "diff mining",
                "amplify": "amplification", "logodds": "log-odds of own samples (baseline)"}


def _ci(e: Mapping[str, Any] | None) -> str:
    if not e:
        return "n/a"
    return format_ci(e["value"], [e["ci_low"], e["ci_high"]], e.get("n"))


def headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    d = summary["discover"]
    out: dict[str, Any] = {"models": f"{summary['names'][0]} -> {summary['names'][1]}",
                           "hypothesis": ", ".join(d["hypothesis"]["words"]) or
                           d["hypothesis"]["note"]}
    for m in ("adl", "mining", "amplify", "logodds"):
        if m in d:
            out[f"{METHOD_NAMES[m]}: top words"] = ", ".join(d[m]["top_words"][:10]) or \
                d[m].get("note", "none")
    causal = d.get("adl", {}).get("causal", {})
    if "delta_effect" in causal:
        out["ADL causal check (random - delta loss, nats/token)"] = _ci(causal["delta_effect"])
    return out


def discover_intro(summary: Mapping[str, Any]) -> str:
    d = summary["discover"]
    hyp = d["hypothesis"]
    parts = [f"<p>What changed from <b>{html.escape(summary['names'][0])}</b> to "
             f"<b>{html.escape(summary['names'][1])}</b>, found on {summary['n_texts']} "
             f"unrelated texts and {summary['n_openings']} neutral openings without being told "
             f"where to look. {html.escape(hyp['note'])}.</p>"]
    if hyp["words"]:
        rows = "".join(f"<tr><td><b>{html.escape(w)}</b></td><td>"
                       f"{html.escape(', '.join(hyp['support'][w]))}</td></tr>"
                       for w in hyp["words"])
        parts.append(f"<h3>Hypothesis</h3><table><tr><td>word</td><td>listed by</td></tr>"
                     f"{rows}</table>")
    if hyp.get("themes"):
        parts.append("<p>Themes whose share moved most (compare's themes section): " +
                     "; ".join(html.escape(str(t.get("label", t))) for t in hyp["themes"])
                     + "</p>")
    if hyp.get("examples"):
        parts.append("<h3>Examples</h3><ul>" + "".join(
            f"<li><i>{html.escape(e['source'])}</i>: {html.escape(e['text'])}</li>"
            for e in hyp["examples"]) + "</ul>")
    rows = "".join(f"<tr><td>{METHOD_NAMES[m]}</td><td>"
                   f"{html.escape(', '.join(d[m]['top_words']) or d[m].get('note', ''))}"
                   f"</td></tr>" for m in ("adl", "mining", "amplify", "logodds") if m in d)
    parts.append(f"<h3>Each method's top words</h3><table>{rows}</table>")
    steer = d.get("adl", {}).get("steering")
    if steer:
        ex = "".join(f"<tr><td>{m}</td><td>{html.escape(e['opening'])}</td><td>"
                     f"{html.escape(e['unsteered'])}</td><td>{html.escape(e['steered'])}</td>"
                     f"</tr>" for m in ("tuned", "base") for e in steer[m]["examples"])
        parts.append(f"<h3>Steering with delta</h3><p>{html.escape(steer['rule'])}.</p><table>"
                     f"<tr><td>model</td><td>opening</td><td>unsteered</td><td>steered</td>"
                     f"</tr>{ex}</table>")
    return "".join(parts)


def _bar_words(name: str, title: str, words: list[str], values: list[float],
               ylabel: str, lo: list[float] | None = None, hi: list[float] | None = None,
               caption: str = "") -> Figure:
    return Figure(name, title, "bar", words, [Series("tuned", values, lo, hi)], xlabel="word",
                  ylabel=ylabel, caption=caption)


def _patchscope_figure(df: pd.DataFrame | None) -> CustomFigure | None:
    if df is None or df.empty:
        return None
    words = list(dict.fromkeys(df.sort_values("probability", ascending=False)["word"]))[:20]
    scales = sorted(df["scale"].unique())
    grid = [[float(df[(df["scale"] == s) & (df["word"] == w)]["probability"].sum())
             for s in scales] for w in words]

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure(go.Heatmap(z=grid, x=[f"{s:g}" for s in scales], y=words,
                                   colorscale="Blues", colorbar={"title": "P"}))
        fig.update_layout(xaxis_title="scale (x mean norm)", template="plotly_white",
                          height=max(360, 22 * len(words)))
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, max(3, 0.3 * len(words))))
        im = ax.imshow(grid, aspect="auto", cmap="Blues")
        ax.set_xticks(range(len(scales)), [f"{s:g}" for s in scales])
        ax.set_yticks(range(len(words)), words)
        ax.set(xlabel="scale (x mean norm)", title="Patchscope: agreed tokens by scale")
        fig.colorbar(im, ax=ax, label="P")
        fig.tight_layout()
        return fig

    return CustomFigure("adl_patchscope", "Patchscope: tokens every identity prompt agrees on, "
                        "by scale", draw_plotly, draw_matplotlib,
                        caption="Mean probability over the identity prompts of each agreed "
                                "word token, with delta patched at the last token at each "
                                "scale of the tuned model's mean state norm.")


def discover_figures(summary: Mapping[str, Any], frames: Mapping[str, pd.DataFrame]
                     ) -> list[AnyFigure]:
    d = summary["discover"]
    figs: list[AnyFigure] = []
    layers = frames.get("adl_layers")
    if layers is not None and len(layers):
        figs.append(Figure("adl_layers", "ADL: size of the mean difference by layer", "line",
                           list(layers["layer"]), [Series("tuned", list(layers[
                               "relative_norm"]))], xlabel="layer",
                           ylabel="|delta| / mean |h_tuned|",
                           caption="The mean of h_tuned - h_base over the first positions, "
                                   "relative to the tuned model's mean state norm."))
    ps = _patchscope_figure(frames.get("adl_patchscope"))
    if ps is not None:
        figs.append(ps)
    up = frames.get("mining_up")
    if up is not None and len(up):
        w = up.dropna(subset=["word"]).drop_duplicates("word").head(20)
        figs.append(_bar_words("mining_counts", "Diff mining: tokens the fine-tune raised most",
                               list(w["word"]), list(w["count"].astype(float)),
                               "positions in the top k",
                               caption="Positions of the texts at which each token was among "
                                       "the top k by log p_tuned - log p_base."))
    lo = d.get("logodds", {}).get("log_odds") or []
    if lo:
        figs.append(_bar_words("logodds", "Baseline: words more frequent in the tuned model's "
                               "own samples", [r["word"] for r in lo],
                               [r["value"] for r in lo], "log-odds ratio",
                               [r["ci_low"] for r in lo], [r["ci_high"] for r in lo],
                               caption="95% bootstrap CIs over samples."))
    amp = d.get("amplify")
    if amp:
        alphas = [r["alpha"] for r in amp["alphas"]]
        series = [Series.of("perplexity under base", [r["perplexity_base"]
                                                      for r in amp["alphas"]])]
        figs.append(Figure("amplify_perplexity", "Amplification: perplexity under the base",
                           "line", alphas, series, xlabel="alpha", ylabel="perplexity"))
        if amp["alphas"][0]["hypothesis_rate"] is not None:
            figs.append(Figure("amplify_rate", "Amplification: samples holding a hypothesis "
                               "word", "line", alphas,
                               [Series.of("share", [r["hypothesis_rate"]
                                                    for r in amp["alphas"]])],
                               xlabel="alpha", ylabel="share of samples",
                               caption="Hypothesis words: "
                                       + ", ".join(amp["hypothesis_words"][:10])))
        if amp["growth"]:
            g = amp["growth"]
            figs.append(_bar_words("amplify_words", "Amplification: words that grow with alpha",
                                   [r["word"] for r in g], [r["value"] for r in g],
                                   "share of samples, largest - smallest alpha",
                                   [r["ci_low"] for r in g], [r["ci_high"] for r in g]))
    return figs


__all__ = ["METHOD_NAMES", "discover_figures", "discover_intro", "headline"]
