"""Figures and page text of ``difflens compare``: stage attribution per section, the
lineage's table of models, and per-model bars with one colour per model.

The attribution figure of a section shows, per metric, the change each stage made with its
95% CI (one colour per stage: the colour of the model that stage produced), so a reader sees
at a glance which stage moved what; the table beside it adds the shares.
"""

import html
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.report.figures import AnyFigure, Figure, Series, format_ci

#: What each attributed metric is, for captions and the page.
METRIC_TEXT = {
    "entropy": "mean next-token entropy (nats) on the same texts",
    "kl_to_base": "mean per-token KL(model ‖ base) on the same texts",
    "chance_tvd": "total variation from the true (uniform) chance distribution",
    "attractor_strength": "attractor strength (1 − normalised edit distance after a "
                          "perturbation)",
    "vendi": "Vendi score of K samples per prompt",
    "self_bleu": "self-BLEU of K samples per prompt",
    "distance_to_base": "full-dimension distance of the path to the base's, per prompt",
    "reward": "VADER reward of the continuation",
    "celebration": "share of continuations with a celebration",
}


def metric_text(metric: str) -> str:
    """What ``metric`` measures (concept cosines and theme shares by pattern)."""
    if metric.startswith("concept_cosine_L"):
        return f"cosine of the concept vector with the base's at layer {metric[16:]}"
    if metric.startswith("theme_share_"):
        return f"share of segments in theme {metric[12:]!r}"
    return METRIC_TEXT.get(metric, metric)


def pair_colors(names: Sequence[str]) -> dict[str, str]:
    """Colours of the pairs ``a-vs-b`` of a lineage in every figure: a model against the base
    takes that model's colour; other pairs (adjacent stages) take the palette's tail."""
    from difflens.report.figures import COLORS, LINEAGE_PALETTE

    out: dict[str, str] = {}
    spare = list(LINEAGE_PALETTE[len(names) - 1:]) or list(LINEAGE_PALETTE)
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            key = f"{a}-vs-{b}"
            out[key] = (COLORS.get(b, "#999999") if a == names[0]
                        else spare[len(out) % len(spare)])
    COLORS.update(out)
    return out


def attribution_figure(name: str, title: str, table: pd.DataFrame) -> Figure:
    """Each stage's change of each metric (x) with its 95% CI, one series per stage."""
    metrics = list(dict.fromkeys(table["metric"]))
    series = []
    for stage in dict.fromkeys(table["stage"]):
        rows = table[table["stage"] == stage].set_index("metric").reindex(metrics)
        series.append(Series(str(stage), rows["delta"].tolist(), rows["ci_low"].tolist(),
                             rows["ci_high"].tolist()))
    n = sorted({int(v) for v in table["n"]})
    return Figure(name, title, "bar", metrics, series, xlabel="metric",
                  ylabel="change made by the stage", hline=0.0,
                  caption=("Each bar is the change a stage made (the named model minus the "
                           "one before it), with a 95% paired bootstrap CI over the same "
                           f"units; n = {', '.join(map(str, n))} units."))


def attribution_html(table: pd.DataFrame) -> str:
    """The attribution table: metric, stage, change with CI, share of the total change."""
    if table.empty:
        return ""
    head = ("<table class='attribution'><tr><th>metric</th><th>stage</th><th>change "
            "[95% CI]</th><th>share of the total</th><th>n</th></tr>")
    rows = []
    for r in table.to_dict("records"):
        share = ("—" if not np.isfinite(r["share"]) else
                 f"{r['share']:.0%}" + ("" if not np.isfinite(r["share_ci_low"]) else
                                        f" [{r['share_ci_low']:.0%}, {r['share_ci_high']:.0%}]"))
        rows.append(
            f"<tr><td title='{html.escape(metric_text(r['metric']))}'>"
            f"{html.escape(str(r['metric']))}</td><td>{html.escape(str(r['from']))} → "
            f"{html.escape(str(r['to']))}</td><td>"
            f"{html.escape(format_ci(r['delta'], [r['ci_low'], r['ci_high']]))}</td>"
            f"<td>{share}</td><td>{int(r['n'])}</td></tr>")
    return head + "".join(rows) + "</table>"


def lineage_html(models: Sequence[Mapping[str, Any]], colors: Mapping[str, str]) -> str:
    """The models of the set in lineage order, each with its colour and identity."""
    cells = []
    for m in models:
        ident = m["identity"]
        swatch = (f"<span style='display:inline-block;width:.9em;height:.9em;background:"
                  f"{colors.get(m['name'], '#999')}'></span>")
        cells.append(f"<li>{swatch} <b>{html.escape(m['name'])}</b> "
                     f"(stage {m['position']}): {html.escape(str(ident.get('name')))} "
                     f"<code>{html.escape(str(ident.get('weights_sha256', ''))[:12])}</code></li>")
    return "<ol class='lineage'>" + "".join(cells) + "</ol>"


def stage_takeaways(table: pd.DataFrame, limit: int = 4) -> list[str]:
    """At most ``limit`` lines, for the metrics a stage moved most clearly (largest change
    over its CI width): which stage moved it most, with the CI, and whose CIs include 0."""
    lines = []
    finite = table[np.isfinite(table["delta"].astype(float))]
    width = (finite["ci_high"] - finite["ci_low"]).abs().clip(lower=1e-12)
    clarity = (finite["delta"].abs() / width).groupby(finite["metric"]).max()
    for metric in clarity.sort_values(ascending=False).index[:limit]:
        rows = finite[finite["metric"] == metric]
        top = rows.loc[rows["delta"].abs().idxmax()]
        zero = [str(r["stage"]) for r in rows.to_dict("records")
                if r["stage"] != top["stage"] and r["ci_low"] <= 0 <= r["ci_high"]]
        share = (f", {top['share']:.0%} of the total" if np.isfinite(top["share"]) else "")
        rest = f"; {', '.join(zero)}: CI includes 0" if zero else ""
        lines.append(f"{metric}: the {top['from']} → {top['to']} stage moved it most, "
                     f"{format_ci(top['delta'], [top['ci_low'], top['ci_high']])}{share}"
                     f" (n = {int(top['n'])}){rest}")
    return lines


def per_model_figure(name: str, title: str, values: Mapping[str, Mapping[str, Any]],
                     ylabel: str, caption: str = "") -> AnyFigure:
    """One bar per model (lineage order) with its 95% CI: ``{model: estimate}`` (``value``,
    ``ci_low``, ``ci_high``)."""
    models = list(values)
    series = [Series(m, [values[m]["value"]], [values[m]["ci_low"]], [values[m]["ci_high"]])
              for m in models]
    return Figure(name, title, "bar", [ylabel], series, ylabel=ylabel, caption=caption)
