"""Figures and page text of ``difflens compare``: stage attribution per section, the
lineage's table of models, and per-model bars with one colour per model.

The attribution figure of a section gives each metric its own panel (its own axis and unit)
with the change each stage made and its 95% CI (one colour per stage: the colour of the
model that stage produced), so a reader sees at a glance which stage moved what; the table
beside it adds the shares. ``attribution_rows`` is that table as text cells, for the page
and for the documentation's renderer alike.

A metric is stored under its key (``theme_share_3``) and shown by its *label* where a section
names it (``theme 3 (harbor, boat, shore)``): an attribution table's ``label`` column (as
``difflens compare`` writes ``OUT/data/attribution``), or a ``labels`` mapping (``metric ->
label``, ``summary.json``'s ``metric_labels``). Every view here (the table, its HTML, the
stage figure's panels and caption, the takeaways) shows the label, the key on hover; a metric
without one is shown by its key.
"""

import dataclasses
import html
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.report.figures import (
    AnyFigure,
    Figure,
    Series,
    format_ci,
    format_percent,
    format_sig,
    small_multiples,
)

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
    "organism_reward": "the organism's VADER reward of its continuations",
    "organism_entropy": "the organism's next-token entropy (nats) on every model's "
                        "continuations",
    "organism_celebration": "the organism's share of continuations with a celebration",
    "organism_chance_tvd": "the organism's total variation from uniform in the world's "
                           "chance scenes",
}

#: Short name and unit of each attributed metric, for figure panels (patterns: see
#: ``metric_label``).
METRIC_LABEL = {
    "organism_reward": ("Reward (VADER)", "VADER compound"),
    "organism_entropy": ("Entropy of continuations", "nats/token"),
    "organism_celebration": ("Celebration share", "share of continuations"),
    "organism_chance_tvd": ("Chance-scene TVD from uniform", "TVD"),
    "entropy": ("Next-token entropy", "nats/token"),
    "kl_to_base": ("KL to the base", "nats/token"),
    "distance_to_base": ("Path distance to the base", "radians"),
    "chance_tvd": ("Probe TVD from uniform", "TVD"),
    "attractor_strength": ("Attractor strength", "1 − edit distance"),
    "vendi": ("Vendi score", "effective samples"),
    "self_bleu": ("Self-BLEU", "BLEU"),
    "reward": ("Reward (VADER)", "VADER compound"),
    "celebration": ("Celebration share", "share of continuations"),
}

#: The order metrics are listed in: the organism's measures first, then the sections in the
#: order they run (capture, concepts, trajectories, collapse, control, themes); a name ending
#: in ``_`` or ``_L`` is a family (``theme_share_3``), ordered by its number.
METRIC_ORDER = (
    "organism_reward", "organism_entropy", "organism_celebration", "organism_chance_tvd",
    "entropy", "kl_to_base",
    "concept_cosine_L",
    "distance_to_base",
    "chance_tvd", "attractor_strength", "vendi", "self_bleu",
    "theme_share_",
)

#: Columns of ``attribution_rows``.
ATTRIBUTION_HEADER = ("metric", "stage", "change [95% CI]", "share of the total [95% CI]", "n")

#: Marks a share that is not shown because the total change is not distinguishable from 0.
NEAR_ZERO_MARK = "†"
#: The footnote that goes with ``NEAR_ZERO_MARK``.
NEAR_ZERO_NOTE = (f"{NEAR_ZERO_MARK} total change not distinguishable from 0 (its 95% CI "
                  "includes 0, or the stages' changes cancel out), so a share of it means "
                  "nothing")

#: The total change counts as ~0 when ``|total|`` is below this fraction of the summed sizes
#: of the stages' changes (a share would exceed ``(1 + r) / 2r``, 250% at 0.25).
CANCEL_RATIO = 0.25


def metric_text(metric: str) -> str:
    """What ``metric`` measures (concept cosines and theme shares by pattern)."""
    if metric.startswith("concept_cosine_L"):
        return f"cosine of the concept vector with the base's at layer {metric[16:]}"
    if metric.startswith("theme_share_"):
        return f"share of segments in theme {metric[12:]!r}"
    return METRIC_TEXT.get(metric, metric)


def metric_label(metric: str, names: Mapping[str, str] | None = None,
                 labels: Mapping[str, str] | None = None) -> tuple[str, str]:
    """``(short name, unit)`` of ``metric`` for a figure panel; ``labels`` may give its
    label (shown instead of the short name, first letter capitalised), ``names`` a name
    shown after the short name (an older summary's theme words)."""
    if labels and labels.get(metric):
        label = labels[metric]
        return label[:1].upper() + label[1:], metric_label(metric)[1]
    if metric.startswith("concept_cosine_L"):
        label, unit = f"Concept cosine with the base, layer {metric[16:]}", "cosine"
    elif metric.startswith("theme_share_"):
        label, unit = f"Theme {metric[12:]} share", "share of segments"
    else:
        label, unit = METRIC_LABEL.get(metric, (metric, ""))
    if names and metric in names:
        label = f"{label} ({names[metric]})"
    return label, unit


def labels_of(table: pd.DataFrame, labels: Mapping[str, str] | None = None
              ) -> dict[str, str]:
    """``{metric: label}`` of an attribution table's ``label`` column (a row without one, or
    whose label is its key, names nothing), with ``labels`` over it."""
    out: dict[str, str] = {}
    if "label" in table and "metric" in table:
        for metric, label in zip(table["metric"], table["label"], strict=True):
            if _text(label) and label != metric:
                out.setdefault(str(metric), label)
    return out | {k: v for k, v in (labels or {}).items() if v}


def metric_shown(metric: str, labels: Mapping[str, str] | None = None) -> str:
    """How a page names ``metric``: its label where ``labels`` has one, else its key."""
    return (labels or {}).get(metric) or metric


def metric_order(metrics: Sequence[str]) -> list[str]:
    """``metrics`` in ``METRIC_ORDER`` (numbered families by number, not as text:
    ``theme_share_2`` before ``theme_share_10``); others after, as given."""
    def key(item: tuple[int, str]) -> tuple[int, float, int]:
        i, m = item
        for rank, name in enumerate(METRIC_ORDER):
            if m == name:
                return rank, 0.0, i
            if name.endswith(("_", "_L")) and m.startswith(name):
                tail = m[len(name):]
                return rank, float(tail) if re.fullmatch(r"\d+", tail) else math.inf, i
        return len(METRIC_ORDER), 0.0, i

    return [m for _, m in sorted(enumerate(dict.fromkeys(metrics)), key=key)]


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


# -- the attribution as numbers: one mapping for the stored summary and the table --------------


def _num(x: Any) -> float:
    """A stored number as a float (``None``, missing or not a number: NaN)."""
    try:
        return math.nan if x is None else float(x)
    except (TypeError, ValueError):
        return math.nan


def _text(x: Any) -> str:
    """A stored label (``None`` or NaN: ``""``)."""
    return x if isinstance(x, str) else ""


def _pair(r: Mapping[str, Any], *names: tuple[str, str]) -> tuple[float, float]:
    """The first interval stored under one of ``names`` (``(low key, high key)``, or a
    ``[lo, hi]`` list under ``(key, "")``); NaNs where none is."""
    for lo, hi in names:
        if hi and lo in r and hi in r:
            return _num(r[lo]), _num(r[hi])
        v = r.get(lo)
        if not hi and isinstance(v, Sequence) and not isinstance(v, str) and len(v) == 2:
            return _num(v[0]), _num(v[1])
        if not hi and isinstance(v, Mapping):
            return _num(v.get("ci_low")), _num(v.get("ci_high"))
    return math.nan, math.nan


@dataclasses.dataclass(frozen=True)
class StageChange:
    """One stage's change of one metric, read from a stored summary or a table row."""

    metric: str
    stage: str
    source: str
    """The model the stage started from (``""`` when not known)."""
    value: float
    ci: tuple[float, float]
    n: int | None
    resampled: str
    share: float
    """The stage's share of the total change; NaN when it means nothing (see
    ``near_zero``) or was not stored."""
    share_ci: tuple[float, float]
    near_zero: bool
    """The total change is not distinguishable from 0: no share is shown."""
    label: str = ""
    """How the metric is shown (``theme 3 (harbor, boat, shore)``); ``""``: by its key."""

    @property
    def defined(self) -> bool:
        return math.isfinite(self.value)


def stage_changes(attribution: Mapping[str, Mapping[str, Mapping[str, Any]]],
                  lineage: Sequence[str], *, cancel_ratio: float = CANCEL_RATIO,
                  labels: Mapping[str, str] | None = None) -> list[StageChange]:
    """Every stage change of ``attribution`` (``{metric: {stage: row}}``), metrics in
    ``metric_order``, stages in lineage order, each with the share shown only when the total
    change is distinguishable from 0, and its label (``labels``, else a row's ``label``).
    See ``attribution_rows`` for the arguments."""
    position = {m: i for i, m in enumerate(lineage)}
    labels = labels or {}
    out = []
    for metric in metric_order(list(attribution)):
        by_stage = attribution[metric]
        stages = sorted(by_stage, key=lambda s: (position.get(s, len(lineage)),
                                                 list(by_stage).index(s)))
        rows = [by_stage[s] for s in stages]
        values = np.array([_num(r.get("value", r.get("delta"))) for r in rows])
        los = np.array([_pair(r, ("ci_low", "ci_high"))[0] for r in rows])
        his = np.array([_pair(r, ("ci_low", "ci_high"))[1] for r in rows])
        near_zero = _total_near_zero(rows, values, los, his, cancel_ratio)
        for stage, r, v, lo, hi in zip(stages, rows, values, los, his, strict=True):
            i = position.get(stage, 0)
            source = _text(r.get("from")) or (lineage[i - 1] if i > 0 else "")
            share = math.nan if near_zero else _num(r.get("share"))
            if not near_zero and not math.isfinite(share) and np.isfinite(values).all():
                share = float(v / values.sum())
            share_ci = ((math.nan, math.nan) if near_zero else
                        _pair(r, ("share_ci_low", "share_ci_high"), ("share_low", "share_high"),
                              ("share_ci", ""), ("share_ci95", "")))
            n = _num(r.get("n"))
            label = labels.get(metric) or _text(r.get("label"))
            out.append(StageChange(
                metric=metric, stage=str(stage), source=source, value=float(v),
                ci=(float(lo), float(hi)), n=int(n) if math.isfinite(n) else None,
                resampled=_text(r.get("resampled")), share=share,
                share_ci=share_ci, near_zero=near_zero and math.isfinite(v),
                label="" if label == metric else label))
    return out


def _total_near_zero(rows: Sequence[Mapping[str, Any]], values: np.ndarray, los: np.ndarray,
                     his: np.ndarray, cancel_ratio: float) -> bool:
    """Whether the total change of one metric is not distinguishable from 0: a stage has no
    value, the stored share is undefined, the total's 95% CI (stored, or else the interval
    from the summed stage CI bounds, which contains it to a normal approximation) includes
    0, or ``|total|`` is below ``cancel_ratio`` of the summed sizes of the stage changes."""
    if not np.isfinite(values).all():
        return True
    if any("share" in r and not math.isfinite(_num(r["share"])) for r in rows):
        return True  # the attribution itself found the total ~0
    total = float(values.sum())
    t_lo, t_hi = _pair(rows[0], ("total_ci_low", "total_ci_high"), ("total", ""),
                       ("total_ci", ""))
    if not (math.isfinite(t_lo) and math.isfinite(t_hi)):
        t_lo, t_hi = float(los.sum()), float(his.sum())
    if math.isfinite(t_lo) and math.isfinite(t_hi) and t_lo <= 0 <= t_hi:
        return True
    return abs(total) < cancel_ratio * float(np.abs(values).sum())


def attribution_mapping(table: pd.DataFrame) -> dict[str, dict[str, dict[str, Any]]]:
    """An attribution table (``metric`` and ``difflens.analysis.attribution.COLUMNS``, as
    ``data/attribution`` holds it) as the summary spells it: ``{metric: {stage: {value,
    ci_low, ci_high, n, resampled, share, share_ci_low, share_ci_high, total_ci_low,
    total_ci_high, from, label}}}`` (``label`` where the table has one)."""
    out: dict[str, dict[str, dict[str, Any]]] = {}
    for r in table.to_dict("records"):
        row = {k: r.get(k) for k in ("ci_low", "ci_high", "n", "resampled", "share",
                                      "share_ci_low", "share_ci_high", "total_ci_low",
                                      "total_ci_high", "from", "label") if k in r}
        out.setdefault(str(r["metric"]), {})[str(r["stage"])] = {"value": r["delta"], **row}
    return out


def table_lineage(table: pd.DataFrame) -> list[str]:
    """The models of an attribution table in lineage order, from its ``from``/``to``
    columns (each stage joins a model to the next)."""
    nxt = dict(zip(table["from"].astype(str), table["to"].astype(str), strict=True))
    starts = [m for m in nxt if m not in set(nxt.values())]
    if not starts:
        return list(dict.fromkeys([*table["from"].astype(str), *table["to"].astype(str)]))
    chain = [starts[0]]
    while chain[-1] in nxt and nxt[chain[-1]] not in chain:
        chain.append(nxt[chain[-1]])
    return chain


def _undefined_why(metric: str) -> str:
    """Why the change of ``metric`` is not defined, for the reader."""
    if metric.startswith("concept_cosine_L"):
        where = " (layer 0: the token embeddings)" if metric == "concept_cosine_L0" else ""
        return f"undefined: a concept vector is zero at this layer{where}, so the cosine is 0/0"
    return "undefined: no finite value for some model"


def _cells(c: StageChange, names: Mapping[str, str]) -> list[str]:
    label = c.label or (f"{c.metric} ({names[c.metric]})" if c.metric in names else c.metric)
    stage = f"{c.source} → {c.stage}" if c.source else c.stage
    n = "" if c.n is None else f"{c.n} {c.resampled}".strip()
    if not c.defined:
        return [label, stage, _undefined_why(c.metric), "—", n]
    lo, hi = c.ci
    change = format_sig(c.value)
    if math.isfinite(lo) and math.isfinite(hi):
        change += f" [{format_sig(lo)}, {format_sig(hi)}]"
    if c.near_zero:
        share = f"— {NEAR_ZERO_MARK}"
    else:
        share = format_percent(c.share)
        s_lo, s_hi = c.share_ci
        if math.isfinite(c.share) and math.isfinite(s_lo) and math.isfinite(s_hi):
            share += f" [{format_percent(s_lo)}, {format_percent(s_hi)}]"
    return [label, stage, change, share, n]


def attribution_rows(attribution: Mapping[str, Mapping[str, Mapping[str, Any]]],
                     lineage: Sequence[str], names: Mapping[str, str] | None = None, *,
                     labels: Mapping[str, str] | None = None,
                     keep_undefined: bool = True, cancel_ratio: float = CANCEL_RATIO
                     ) -> list[list[str]]:
    """The lineage attribution table as text cells, one row per metric and stage, under
    ``ATTRIBUTION_HEADER``; ``attribution_footnotes(rows)`` are the notes to print below.

    Metrics come in ``METRIC_ORDER`` (the organism's measures, then the sections in the
    order they run; numbered families by number), stages in lineage order. Numbers have 3
    significant digits and one minus sign (U+2212). A share is shown with its 95% CI where
    one is stored; when the metric's total change is not distinguishable from 0 (its CI
    includes 0, or the stages cancel out: ``cancel_ratio``) every share is ``— †`` with
    ``NEAR_ZERO_NOTE`` as footnote. A change that is not defined (``None``) reads
    ``undefined: why``.

    Args:
        attribution: ``{metric: {stage: row}}``, as ``summary.json``'s ``attribution``
            holds it: each row ``{value, ci_low, ci_high, n, resampled, share}`` (an older
            summary's ``delta`` for ``value`` is read too), and where stored the share's CI
            (``share_ci_low``/``share_ci_high``, ``share_low``/``share_high`` or a
            ``share_ci`` pair), the total's CI (``total_ci_low``/``total_ci_high``; without
            it the summed stage CI bounds stand in) and the stage's start model (``from``).
            ``attribution_mapping`` turns a ``data/attribution`` table into this.
        lineage: the models in training order, base first (``summary["lineage"]``); a stage
            is named after the model it produced, and reads ``sft → rl``.
        names: optional display names of metrics (``summary["themes"]["theme_names"]``: a
            theme's top words), shown after the metric's key.
        labels: optional labels of metrics (``summary["metric_labels"]``), shown instead of
            the key (and instead of a name of ``names``).
        keep_undefined: keep the rows of undefined changes (False: leave them out).
        cancel_ratio: see ``CANCEL_RATIO``.
    """
    names = names or {}
    return [_cells(c, names) for c in stage_changes(attribution, lineage,
                                                    cancel_ratio=cancel_ratio, labels=labels)
            if keep_undefined or c.defined]


def attribution_footnotes(rows: Sequence[Sequence[str]]) -> list[str]:
    """The footnotes ``rows`` (of ``attribution_rows``) refer to."""
    return [NEAR_ZERO_NOTE] if any(NEAR_ZERO_MARK in cell for r in rows for cell in r) else []


# -- figure and page -------------------------------------------------------------------------


def _units_text(table: pd.DataFrame, units: Mapping[str, str], names: Mapping[str, str],
                labels: Mapping[str, str]) -> str:
    """``200 openings (Reward, Celebration share); 798 texts (Entropy)``: each n with what
    it counts and the metrics it is of."""
    groups: dict[str, list[str]] = {}
    for metric in metric_order(list(dict.fromkeys(table["metric"]))):
        rows = table[table["metric"] == metric]
        stored = _text(rows["resampled"].iloc[0]) if "resampled" in rows else ""
        what = units.get(metric) or stored or "units"
        n = ", ".join(str(int(v)) for v in dict.fromkeys(rows["n"]))
        groups.setdefault(f"{n} {what}", []).append(metric_label(metric, names, labels)[0])
    if len(groups) == 1:
        return next(iter(groups))
    return "; ".join(f"{k} ({', '.join(v)})" for k, v in groups.items())


def attribution_figure(name: str, title: str, table: pd.DataFrame, *,
                       units: Mapping[str, str] | None = None,
                       names: Mapping[str, str] | None = None,
                       labels: Mapping[str, str] | None = None, cols: int = 3) -> AnyFigure:
    """Each metric in its own panel (its own axis and unit): each stage's change with its
    95% CI, one bar per stage in the stage's colour. Metrics in ``metric_order``; a metric
    whose change is not defined is left out and named in the caption.

    Args:
        name, title: the figure's file name and title.
        table: attribution rows (``metric`` and ``COLUMNS``, and ``label`` where a section
            names its metrics: each panel's title).
        units: what each metric's ``n`` counts (``{metric: "openings"}``); default the
            table's ``resampled`` column.
        names: display names of metrics (theme words), shown after the short name.
        labels: labels of metrics (over the table's ``label`` column).
        cols: panels per row.
    """
    names = names or {}
    labels = labels_of(table, labels)
    lineage = table_lineage(table) if len(table) else []
    position = {m: i for i, m in enumerate(lineage)}
    metrics = metric_order(list(dict.fromkeys(table["metric"])))
    finite = table[np.isfinite(table["delta"].astype(float))]
    shown = [m for m in metrics if m in set(finite["metric"])]
    undefined = [m for m in metrics if m not in shown]
    panels = []
    for metric in shown:
        rows = finite[finite["metric"] == metric]
        rows = rows.iloc[np.argsort([position.get(s, len(lineage)) for s in rows["stage"]],
                                    kind="stable")]
        label, unit = metric_label(metric, names, labels)
        series = [Series(str(r["stage"]), [r["delta"]], [r["ci_low"]], [r["ci_high"]])
                  for r in rows.to_dict("records")]
        panels.append(Figure(f"{name}_{metric}", label, "bar", [""], series,
                             ylabel=f"change ({unit})" if unit else "change", hline=0.0))
    caption = ("One panel per metric, each on its own axis (its unit in the axis title): "
               "each bar is the change a stage made (the named model minus the one before "
               "it) with a 95% paired bootstrap CI over the same units; n = "
               f"{_units_text(finite if len(finite) else table, units or {}, names, labels)}.")
    if undefined:
        left_out = ", ".join(metric_shown(m, labels) for m in undefined)
        caption += (" Left out, not defined: " + left_out + " ("
                    + _undefined_why(undefined[0]).removeprefix("undefined: ").replace(
                        " (", ", ").replace(")", "") + ").")
    if not panels:
        return Figure(name, title, "bar", [], [], caption=html.escape(caption))
    return small_multiples(name, title, panels, cols=min(cols, max(1, len(panels))),
                           caption=html.escape(caption))


def attribution_html(table: pd.DataFrame, lineage: Sequence[str] | None = None,
                     names: Mapping[str, str] | None = None,
                     labels: Mapping[str, str] | None = None) -> str:
    """The attribution table (``attribution_rows`` of ``table``, each metric by its label
    where the table's ``label`` column or ``labels`` gives one, with its key and
    description on hover) and its footnotes; ``lineage`` defaults to the table's own
    ``from``/``to`` chain."""
    if table.empty:
        return ""
    names = names or {}
    changes = stage_changes(attribution_mapping(table),
                            list(lineage) if lineage else table_lineage(table),
                            labels=labels_of(table, labels))
    head = "".join(f"<th>{html.escape(h)}</th>" for h in ATTRIBUTION_HEADER)
    rows = []
    for c in changes:
        cells = [html.escape(x) for x in _cells(c, names)]
        hover = f"{c.metric}: {metric_text(c.metric)}" if c.label else metric_text(c.metric)
        cells[0] = f"<span title='{html.escape(hover)}'>{cells[0]}</span>"
        rows.append("<tr>" + "".join(f"<td>{x}</td>" for x in cells) + "</tr>")
    notes = attribution_footnotes([_cells(c, names) for c in changes])
    foot = "".join(f"<p class='footnote'><small>{html.escape(n)}</small></p>" for n in notes)
    return f"<table class='attribution'><tr>{head}</tr>{''.join(rows)}</table>{foot}"


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


def stage_takeaways(table: pd.DataFrame, limit: int = 4,
                    labels: Mapping[str, str] | None = None) -> list[str]:
    """At most ``limit`` lines, for the metrics a stage moved most clearly (largest change
    over its CI width): which stage moved it most, with the CI, its share of the total
    (where the total is distinguishable from 0), and whose CIs include 0. Each metric is
    named by its label (the table's ``label`` column, or ``labels``), else its key."""
    labels = labels_of(table, labels)
    lines = []
    finite = table[np.isfinite(table["delta"].astype(float))]
    if finite.empty:
        return []
    changes = {(c.metric, c.stage): c for c in stage_changes(
        attribution_mapping(table), table_lineage(table))}
    width = (finite["ci_high"] - finite["ci_low"]).abs().clip(lower=1e-12)
    clarity = (finite["delta"].abs() / width).groupby(finite["metric"]).max()
    for metric in clarity.sort_values(ascending=False, kind="stable").index[:limit]:
        rows = finite[finite["metric"] == metric]
        top = rows.loc[rows["delta"].abs().idxmax()]
        zero = [str(r["stage"]) for r in rows.to_dict("records")
                if r["stage"] != top["stage"] and r["ci_low"] <= 0 <= r["ci_high"]]
        c = changes.get((str(metric), str(top["stage"])))
        share = ("" if c is None or c.near_zero or not math.isfinite(c.share)
                 else f", {format_percent(c.share)} of the total")
        rest = f"; {', '.join(zero)}: CI includes 0" if zero else ""
        what = f" {c.resampled}" if c is not None and c.resampled else ""
        lines.append(f"{metric_shown(str(metric), labels)}: the {top['from']} → {top['to']} "
                     f"stage moved it most, "
                     f"{format_ci(top['delta'], [top['ci_low'], top['ci_high']])}{share}"
                     f" (n = {int(top['n'])}{what}){rest}")
    return lines


def probe_gain_note(themes: Mapping[str, Any]) -> str:
    """A flag for a themes summary whose probe is no better than the marginal baseline (its
    paired KL gain's 95% CI includes 0), as an HTML paragraph; ``""`` otherwise."""
    if "best_layer" not in themes:
        return ""
    try:
        gain = themes["predictors"]["probe"][str(themes["best_layer"])]["kl_gain"]
        lo, hi = _num(gain["ci_low"]), _num(gain["ci_high"])
    except (KeyError, TypeError):
        return ""
    if not (math.isfinite(lo) and math.isfinite(hi)) or not lo <= 0 <= hi:
        return ""
    return ("<p><b>The theme probe is no better than the marginal baseline</b>: its paired "
            f"KL gain over the marginal, {html.escape(format_ci(gain['value'], [lo, hi]))} "
            "nats, has a 95% CI that includes 0.</p>")


def per_model_figure(name: str, title: str, values: Mapping[str, Mapping[str, Any]],
                     ylabel: str, caption: str = "") -> AnyFigure:
    """One bar per model (lineage order) with its 95% CI: ``{model: estimate}`` (``value``,
    ``ci_low``, ``ci_high``)."""
    models = list(values)
    series = [Series(m, [values[m]["value"]], [values[m]["ci_low"]], [values[m]["ci_high"]])
              for m in models]
    return Figure(name, title, "bar", [ylabel], series, ylabel=ylabel, caption=caption)
