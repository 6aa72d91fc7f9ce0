"""``difflens compare``: every instrument on a model set (a lineage such as base -> SFT ->
RL, or a pair), one report, and the change each stage made to each headline metric.

Sections (``SECTIONS``) run into ``OUT/<section>/`` (their figures in ``OUT/<section>/
figures``) with the section's own pipeline; each section's stage figure is
``OUT/figures/stages_<section>``:

- ``capture``: every model scores the same texts, once each (one ``difflens.capture.capture``
  of the whole set into ``OUT/capture/store``, statistics only); per-token KL of each
  adjacent pair and of each model against the base, from the models' full log-probs in the
  same batch, and each model's entropy;
- ``concepts``, ``trajectories``, ``collapse``, ``themes``: their pipelines on the whole set;
- ``control``: a state probe trained on each model's own states and every controller
  evaluated on it, per model.

A two-model set runs each section on its ``ModelPair`` (labels
``base``/``tuned``, exactly today's pair results); the attribution then names the stage
after the second model. ``OUT/summary.json`` holds each section's summary under its name,
the models (``models``: name, position, identity) and ``attribution.<metric>.<stage>``: the
change each stage made as an estimate, ``{value, ci_low, ci_high, n, resampled}`` (a 95%
paired bootstrap CI over the same prompts, texts or items), with its ``share`` of the total
beside it (``difflens.analysis.attribution``). ``OUT/data/attribution`` holds the same
rows as a table (``section``, ``metric``, ``label`` and ``COLUMNS``: ``delta``, ``ci_low``,
``ci_high``, ``share``, ...).

A metric keeps its key (``theme_share_3``: the key of ``attribution``, stable for code and
stored runs) and is shown by its label where its section names it (a section's
``SectionResult.labels``; the themes section names each ``theme_share_<t>`` ``theme <t>
(<its words>)``, e.g. ``theme 3 (harbor, boat, shore)``, from the themes' own names):
``summary.json``'s ``metric_labels`` (``{metric: label}``, every attributed metric; the key
itself where no section names it) and the table's ``label`` column hold it, and the page's
tables, stage figures, takeaways and headline show it.

Where the themes section ran, ``themes_moved`` lists the themes whose share of segments moved
most from the base to the last model (at most ``THEMES_MOVED``, largest ``|change|`` first):
each ``{theme, name, label, metric, from, to, change, levels}``, with ``change`` the total
change of the theme's share (last model minus base) as an estimate ``{value, ci_low,
ci_high, n, resampled}`` (95% paired bootstrap CI over prompts) and ``levels`` the share of
each of the two models (``{base: 0.12, rl: 0.41}``).

``compare`` is the one call from Python; ``run_compare`` is the same without the
defaults and without the page.
"""

import dataclasses
import functools
import html
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from difflens._io import check_writable, write_json_atomic
from difflens.analysis.attribution import COLUMNS, Attribution, attribute
from difflens.analysis.bootstrap import Estimate, bootstrap_mean
from difflens.analysis.divergence import summarize_pair_stats
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair
from difflens.models.wrapping import Models, as_model_set
from difflens.pipelines.compare_config import (  # the inputs and options; re-exported
    SECTIONS,
    CompareConfig,
    CompareInputs,
)
from difflens.report.compare import (
    attribution_figure,
    attribution_html,
    lineage_html,
    pair_colors,
    per_model_figure,
    probe_gain_note,
    stage_takeaways,
)
from difflens.report.figures import (
    AnyFigure,
    Figure,
    Section,
    Series,
    format_ci,
    use_lineage_colors,
)
from difflens.report.tables import write_table

#: The bootstrap replicates of every attribution.
N_BOOT = 1000
#: The most themes ``themes_moved`` lists.
THEMES_MOVED = 5


@dataclasses.dataclass(frozen=True)
class CompareRun:
    summary: dict[str, Any]
    sections: list[Section]
    attribution: pd.DataFrame
    """Every attribution row: ``section``, ``metric``, ``label`` and ``COLUMNS``."""


class SectionResult(NamedTuple):
    """What a section's runner returns to ``run_compare``."""

    summary: dict[str, Any]
    """The section's summary (``summary.json``'s key of the section's name)."""
    figures: list[AnyFigure]
    attributions: dict[str, Attribution]
    """Its attributed metrics, by key (``theme_share_3``)."""
    intro: str
    """The section's intro on the page (HTML)."""
    labels: Mapping[str, str] = {}
    """How the page shows a metric of ``attributions`` (``theme 3 (harbor, boat, shore)``);
    one left out is shown by its key."""
    top_level: Mapping[str, Any] = {}
    """Keys the section adds to compare's own summary (the themes section's
    ``themes_moved``)."""


def _target(models: ModelSet) -> ModelPair | ModelSet:
    """The pair of a two-model set (today's pipelines, labels base/tuned), else the set."""
    return models.pair(*models.names) if len(models) == 2 else models


def _as_set(models: ModelSet) -> ModelSet:
    """The set a section that reads per-model results runs on: a two-model set named as
    the pair's labels (base/tuned: the pair's own outputs, plus the set's per-model keys)."""
    if len(models) != 2:
        return models
    return ModelSet.from_pair(models.pair(*models.names))


def _renamed(attributions: Mapping[str, Attribution], models: ModelSet
             ) -> dict[str, Attribution]:
    """Stage names of a section's attributions as the set names its models."""
    labels = _labels(models)
    out = {}
    for metric, a in attributions.items():
        table = a.table.assign(**{c: a.table[c].map(lambda x: labels.get(x, x))
                                  for c in ("stage", "from", "to")})
        out[metric] = dataclasses.replace(
            a, table=table, levels={labels.get(k, k): v for k, v in a.levels.items()})
    return out


def _labels(models: ModelSet) -> dict[str, str]:
    """Section label -> model name (a pair's sections say base/tuned)."""
    if len(models) == 2:
        return dict(zip(("base", "tuned"), models.names, strict=True))
    return {n: n for n in models.names}


def run_compare(models: ModelSet, out: Path, inputs: CompareInputs, *,
                config: CompareConfig | None = None, progress: bool = False
                ) -> CompareRun:
    """Run the chosen sections of ``config`` on ``models`` into ``out``; write every
    section's outputs, ``OUT/summary.json`` (the sections' summaries, ``models``,
    ``attribution``) and ``OUT/data/attribution.*``. The page is the caller's
    (``write_compare_index``)."""
    check_writable(out)
    config = CompareConfig() if config is None else config  # built when run, not at import
    colors = use_lineage_colors(list(_labels(models)))
    summary: dict[str, Any] = {"models": models.describe(), "lineage": list(models.names),
                               "sections": list(config.sections)}
    sections: list[Section] = []
    tables: list[pd.DataFrame] = []
    stages: dict[str, dict[str, Any]] = {}  # attribution.<metric>.<stage>
    labels: dict[str, str] = {}  # metric_labels: metric -> how the page shows it
    top_level: dict[str, Any] = {}
    seconds: dict[str, float] = {}
    runners: dict[str, Callable[..., Result]] = {
               "capture": _capture, "concepts": _concepts, "trajectories": _trajectories,
               "collapse": _collapse, "control": _control, "themes": _themes,
               "discover": functools.partial(_discover, moved=top_level)}
    for name in SECTIONS:
        if name not in config.sections:
            continue
        t0 = time.perf_counter()
        result = SectionResult(*runners[name](models, out / name, inputs, config, progress))
        summary[name] = result.summary
        seconds[f"{name}_s"] = time.perf_counter() - t0
        table = _attribution_table(name, result.attributions, result.labels)
        stages |= {metric: a.summary() for metric, a in result.attributions.items()}
        labels |= dict(zip(table["metric"], table["label"], strict=True))
        top_level |= result.top_level
        figures = list(result.figures)
        if not table.empty:
            tables.append(table)
            figure = attribution_figure(f"stages_{name}", f"{name}: the change each stage made",
                                        table)  # each panel titled by the table's label
            figure.save(out / "figures")  # the section's own figures are in OUT/<section>
            figures = [figure, *figures]
        sections.append(Section(name.capitalize(),
                                result.intro + attribution_html(table, list(models.names)),
                                figures, stage_takeaways(table) if not table.empty else []))
    attribution = (pd.concat(tables, ignore_index=True) if tables
                   else pd.DataFrame(columns=["section", "metric", "label", *COLUMNS]))
    summary["attribution"] = stages
    summary["metric_labels"] = labels
    summary |= top_level
    summary["colors"] = colors
    summary["seconds"] = seconds
    write_table(attribution, out / "data", "attribution")
    write_json_atomic(out / "summary.json", summary)
    return CompareRun(summary=summary, sections=sections, attribution=attribution)


def compare(models: "ModelSet | Models", out: str | Path, *,
            inputs: CompareInputs | None = None, config: CompareConfig | None = None,
            tokenizer: Any = None, title: str | None = None, progress: bool = False
            ) -> CompareRun:
    """Every instrument on ``models`` into ``out``, with the report page ``OUT/index.html``.

    Args:
        models: a ``ModelSet`` (lineage order, base first), a ``ModelPair``, or
            plain ``transformers`` models as a ``{name: model}`` mapping or a ``(base,
            tuned)`` tuple, with their shared ``tokenizer``.
        out: the output folder.
        inputs: what the sections run on; default: the inputs that ship with difflens
            (``builtin_inputs``).
        config: the sections to run and each one's config (default: every section, each
            its config's ``quick()`` preset).
        tokenizer: the tokenizer of plain ``transformers`` models.
        title: the page's title (default: the lineage, ``base → sft → dpo``).
        progress: show progress bars.
    """
    from difflens.pipelines.compare_inputs import builtin_inputs

    model_set = as_model_set(models, tokenizer=tokenizer)
    config = CompareConfig() if config is None else config
    out = Path(out)
    source = "difflens's built-in inputs" if inputs is None else "the given inputs"
    run = run_compare(model_set, out, builtin_inputs() if inputs is None else inputs,
                      config=config, progress=progress)
    names = " → ".join(model_set.names)
    write_compare_index(out, run, title or f"difflens compare: {names}",
                        intro=f"<p>Every instrument on {names}, with {source}.</p>",
                        takeaways=overview_takeaways(run.attribution)
                        or [f"sections: {', '.join(config.sections)}"])
    return run


def write_compare_index(out: Path, run: CompareRun, title: str, intro: str = "",
                        figures: Sequence[AnyFigure] = (), headline: Mapping[str, Any] | None
                        = None, **kwargs: Any) -> None:
    """The report page: the lineage, then each section's attribution and figures."""
    from difflens.report.figures import write_index

    page_intro = intro + lineage_html(run.summary["models"], run.summary["colors"])
    write_index(out / "index.html", title, page_intro, list(figures),
                dict(headline or _headline(run)), sections=run.sections, **kwargs)


def _shown(row: "Mapping[str, Any] | pd.Series") -> str:
    """How the page names the metric of an attribution row (a record or a table's row): its
    ``label``, else its key."""
    label = row.get("label")
    return label if isinstance(label, str) and label else str(row["metric"])


def _headline(run: CompareRun) -> dict[str, Any]:
    """Every stage's change with its CI, each metric by its label; a change that is not
    defined (a layer whose vectors are the same in every model has no cosine change: NaN)
    is left out."""
    out: dict[str, Any] = {}
    for r in run.attribution.to_dict("records"):
        if not np.isfinite(r["delta"]):
            continue
        out[f"{_shown(r)}: {r['from']} → {r['to']}"] = format_ci(
            r["delta"], [r["ci_low"], r["ci_high"]], int(r["n"]))
    return out


def overview_takeaways(attribution: pd.DataFrame) -> list[str]:
    """Per section, how many of its stage changes have a 95% CI that excludes 0, and the
    one whose CI lies furthest from 0 (in units of its CI's half-width), by its label."""
    out = []
    for section, rows in attribution.groupby("section", sort=False):
        rows = rows[np.isfinite(rows["delta"].astype(float))]
        if rows.empty:
            continue
        clear = rows[(rows.ci_low > 0) | (rows.ci_high < 0)]
        line = (f"{section}: {len(clear)} of {len(rows)} stage changes have a 95% CI that "
                f"excludes 0")
        if len(clear):
            half = ((clear.ci_high - clear.ci_low) / 2).where(lambda h: h > 0, np.nan)
            top = clear.loc[(clear.delta.abs() / half).fillna(np.inf).idxmax()]
            line += (f"; clearest: {_shown(top)}, {top['from']} → {top['to']} "
                     f"{format_ci(top.delta, [top.ci_low, top.ci_high], int(top.n))}")
        out.append(line)
    return out


def _attribution_table(section: str, attributions: Mapping[str, Attribution],
                       labels: Mapping[str, str] | None = None) -> pd.DataFrame:
    """A section's attribution rows: ``section``, ``metric``, ``label`` (``labels``' label
    of the metric, else its key) and ``COLUMNS``."""
    labels = labels or {}
    rows = [a.table.assign(metric=metric, section=section, label=labels.get(metric) or metric)
            for metric, a in attributions.items()]
    if not rows:
        return pd.DataFrame(columns=["section", "metric", "label", *COLUMNS])
    return pd.concat(rows, ignore_index=True)[["section", "metric", "label", *COLUMNS]]


def _attribute(per_unit: pd.DataFrame, lineage: Sequence[str], seed: int,
               denominator: str | None = None, *, resampled: str) -> Attribution:
    """Attribution of a long table ``unit, model, value[, denominator]`` (model names);
    ``resampled`` says what the units are (``"prompts"``, ``"texts"``, ...)."""
    # with a denominator, a unit a model has nothing on counts 0 of 0 (it adds nothing to that
    # model's ratio of sums); without one, it is missing and dropped for every model
    fill = 0.0 if denominator is not None else None
    wide = per_unit.pivot_table(index="unit", columns="model", values="value", aggfunc="sum",
                                fill_value=fill)
    den = None
    if denominator is not None:
        d = per_unit.pivot_table(index="unit", columns="model", values=denominator,
                                 aggfunc="sum", fill_value=0.0).reindex(wide.index)
        den = {m: d[m].to_numpy(np.float64) for m in lineage}
    return attribute({m: wide[m].to_numpy(np.float64) for m in lineage}, lineage,
                     denominators=den, seed=seed, n_boot=N_BOOT, resampled=resampled)


#: A section runner's return: a ``SectionResult``, or its first four fields as a tuple.
Result = SectionResult | tuple[dict[str, Any], list[AnyFigure], dict[str, Attribution], str]


# -- capture -------------------------------------------------------------------------------


def _capture(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
             progress: bool) -> Result:
    """Every adjacent pair and every model against the base, on the same texts: one
    capture of the whole set (each model reads each text once), whose statistics hold
    every pair's KL, from the full next-token distributions. It stores no hidden states
    unless ``[capture]`` asks for layers."""
    from difflens.capture import capture

    names = models.names
    pairs = list(dict.fromkeys([*models.against_base(), *models.adjacent()]))
    options = {"layers": (), "store_dtype": "float16", **config.capture}
    asked = [tuple(p) for p in options.pop("pairs", None) or ()]
    store = capture(models, list(inputs.texts), store=out / "store", progress=progress,
                    pairs=pairs + [p for p in asked if p not in pairs], **options)
    per_text: list[pd.DataFrame] = []
    pair_summary: dict[str, Any] = {}
    by_position: list[pd.DataFrame] = []
    for a, b in pairs:
        # a pair's table under a pair capture's names: a is "base", b is "tuned"
        stats = store.pair_stats(a, b)
        write_table(stats, out / "data", f"per_token_{a}-vs-{b}")
        # "a-vs-b" in lineage order, as trajectories' distance_pairs; the pair's "tuned" is b
        pair_summary[f"{a}-vs-{b}"] = summarize_pair_stats(stats, seed=config.seed)
        g = stats.groupby("prompt_idx")
        n_tok = g.size()
        if a == names[0]:
            if not per_text:  # the base's entropy, once
                per_text.append(pd.DataFrame({"metric": "entropy", "unit": n_tok.index,
                                              "model": a, "value": g["base_entropy"].sum(),
                                              "tokens": n_tok}))
            per_text.append(pd.DataFrame({"metric": "entropy", "unit": n_tok.index, "model": b,
                                          "value": g["tuned_entropy"].sum(), "tokens": n_tok}))
            per_text.append(pd.DataFrame({"metric": "kl_to_base", "unit": n_tok.index,
                                          "model": b, "value": g["kl_tuned_base"].sum(),
                                          "tokens": n_tok}))
        by_pos = stats.groupby("pos")["kl_tuned_base"].agg(["mean", "count"]).reset_index()
        by_position.append(by_pos.assign(pair=f"{a}-vs-{b}"))
    units = pd.concat(per_text, ignore_index=True)
    base_kl = units[(units.metric == "entropy") & (units.model == names[0])].assign(
        metric="kl_to_base", value=0.0)  # the base's KL to itself
    units = pd.concat([units, base_kl], ignore_index=True)
    write_table(units, out / "data", "per_text")
    attributions = {m: _attribute(units[units.metric == m], names, config.seed, "tokens",
                                  resampled="texts")
                    for m in ("entropy", "kl_to_base")}
    entropy = {}
    for m in names:
        rows = units[(units.metric == "entropy") & (units.model == m)]
        per = (rows.value / rows.tokens).to_numpy(np.float64)
        entropy[m] = bootstrap_mean(per, seed=config.seed, resampled="texts").to_json()
    curve = pd.concat(by_position, ignore_index=True)
    write_table(curve, out / "data", "kl_by_position")
    pair_colors(names)
    cut = curve[curve["count"] >= 5]
    positions = sorted(set(cut.pos))
    series = [Series(p, cut[cut.pair == p].set_index("pos")["mean"].reindex(positions).tolist())
              for p in dict.fromkeys(cut.pair)]
    figures: list[AnyFigure] = [
        Figure("capture_kl_by_position", "Per-token KL of each pair by position", "line",
               positions, series, xlabel="token position", ylabel="mean KL (nats)",
               caption=f"Positions with at least 5 texts; {len(inputs.texts)} texts."),
        per_model_figure("capture_entropy", "Mean next-token entropy of each model", entropy,
                         "entropy (nats)", caption=f"Per-text means over the same "
                         f"{len(inputs.texts)} texts, 95% bootstrap CIs."),
    ]
    for fig in figures:
        fig.save(out / "figures")
    summary = {"pairs": pair_summary, "entropy": entropy, "n_texts": len(inputs.texts),
               "n_tokens": int(units[(units.metric == "entropy") & (units.model == names[0])]
                               .tokens.sum())}
    intro = (f"<p>Every model scores the same {len(inputs.texts)} texts "
             f"({inputs.names.get('texts', 'built-in texts')}); KL of each model against the "
             f"base and of each adjacent pair, per token.</p>")
    return summary, figures, attributions, intro


# -- collapse ------------------------------------------------------------------------------


def _collapse(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
              progress: bool) -> Result:
    from difflens.pipelines.collapse import run_collapse
    from difflens.report.collapse import intro_html

    cfg = dataclasses.replace(config.collapse, probes=inputs.probes, reference=inputs.reference,
                              reference_name=inputs.reference_name,
                              tree_prompt=inputs.tree_prompt or inputs.prompts[0])
    steps = cfg.steps
    run = run_collapse(_target(models), inputs.prompts, out, cfg, progress=progress,
                       index=False)
    labels = _labels(models)
    lineage = list(models.names)
    attributions: dict[str, Attribution] = {}
    data = out / "data"
    if "probes" in steps:
        ph = pd.read_parquet(data / "probes.parquet")
        units = pd.DataFrame({"unit": ph.probe + "/" + ph.phrasing, "model": ph.model.map(labels),
                              "value": ph.tvd_uniform})
        attributions["chance_tvd"] = _attribute(units, lineage, config.seed,
                                                resampled="probe prompts")
    if "attractors" in steps:
        att = pd.read_parquet(data / "attractors.parquet")
        g = att.groupby(["model", "prompt_id"])
        units = pd.DataFrame({"n": g.size(), "edit": g["edit_distance"].sum()}).reset_index()
        units = pd.DataFrame({"unit": units.prompt_id, "model": units.model.map(labels),
                              "value": units.n - units.edit, "n": units.n})
        attributions["attractor_strength"] = _attribute(units, lineage, config.seed, "n",
                                                        resampled="prompts")
    if "diversity" in steps:
        div = pd.read_parquet(data / "diversity.parquet")
        for metric in ("vendi", "self_bleu"):
            units = pd.DataFrame({"unit": div.prompt_id, "model": div.model.map(labels),
                                  "value": div[metric]})
            attributions[metric] = _attribute(units, lineage, config.seed,
                                              resampled="prompts")
    return run.summary(), run.figures, attributions, (
        intro_html(run.summary()) if len(models) == 2 else
        f"<p>Exact probe distributions, attractors and diversity of every model on the same "
        f"{len(inputs.prompts)} prompts; the temperature sweep matches each model to the "
        f"base.</p>")


# -- concepts ------------------------------------------------------------------------------


def _concepts(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
              progress: bool) -> Result:
    from difflens.inputs.ab_items import load_ab_dataset
    from difflens.pipelines.concepts import run_concepts
    from difflens.report.concepts import intro_html

    dataset = load_ab_dataset(inputs.concept_items)
    run = run_concepts(_as_set(models), dataset, out, config.concepts, progress=progress,
                       index=False)
    attributions = _renamed(run.attributions, models)
    return run.summary(), run.figures, attributions, intro_html(run.summary())


# -- trajectories --------------------------------------------------------------------------


def _trajectories(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
                  progress: bool) -> Result:
    from difflens.pipelines.trajectories import run_trajectories
    from difflens.report.trajectories import intro_html

    run = run_trajectories(_as_set(models), inputs.trajectory_prompts, out,
                           config.trajectories, progress=progress)
    attributions: dict[str, Attribution] = {}
    per_prompt = run.distance_to_base_by_prompt
    if per_prompt is not None and len(per_prompt):
        labels = _labels(models)
        wide = per_prompt.pivot(index="prompt_id", columns="model", values="distance")
        attributions["distance_to_base"] = attribute(
            {labels[m]: wide[m].to_numpy(np.float64) for m in labels}, list(models.names),
            seed=config.seed, n_boot=N_BOOT, resampled="prompts")
    return run.summary(), run.figures, attributions, intro_html(run.summary())


# -- control -------------------------------------------------------------------------------


def _control(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
             progress: bool) -> Result:
    """A probe trained on each model's own states, every controller evaluated on it."""
    from difflens.pipelines.control import ControlInputs, run_control

    run = run_control(models, ControlInputs(
        examples=inputs.control_examples, prompts=inputs.control_prompts,
        independent=inputs.control_measure, independent_name=inputs.control_measure_name,
        source=inputs.control_source), out, config.control, progress=progress, index=False)
    intro = (f"<p>A state probe trained on each model's own states "
             f"({inputs.control_source or 'built-in labelled texts'}) and every controller on "
             f"{len(inputs.control_prompts)} prompts, per model.</p>")
    return run.summary(), run.figures, {}, intro


# -- themes --------------------------------------------------------------------------------


def _themes(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
            progress: bool) -> Result:
    from difflens.pipelines.themes import run_themes
    from difflens.report.themes import intro_html

    cfg = dataclasses.replace(config.themes, prompts=inputs.theme_prompts, truth=inputs.theme_truth)
    run = run_themes(_target(models), inputs.theme_prompts, out, cfg, progress=progress,
                     index=False)
    labels = _labels(models)
    segs = pd.read_parquet(out / "data" / "segments.parquet")
    attributions: dict[str, Attribution] = {}
    summary = run.summary()
    names = {t["theme"]: t["name"] for t in summary.get("themes", [])}
    prompt_col = "prompt_idx" if "prompt_idx" in segs else "prompt_id"
    segs = segs[segs["theme"] >= 0]
    counts = segs.groupby([prompt_col, "model"]).size()
    for theme in sorted(names):
        hits = segs[segs["theme"] == theme].groupby([prompt_col, "model"]).size()
        units = pd.DataFrame({"n": counts, "hits": hits}).fillna(0.0).reset_index()
        units = pd.DataFrame({"unit": units[prompt_col], "model": units.model.map(labels),
                              "value": units.hits, "n": units.n})
        key = f"theme_share_{theme}"
        attributions[key] = _attribute(units, list(models.names), config.seed, "n",
                                       resampled="prompts")
    summary["theme_names"] = {f"theme_share_{t}": n for t, n in names.items()}
    keywords = {t["theme"]: t.get("keywords") or [] for t in summary.get("themes", [])}
    labels = {f"theme_share_{t}": theme_label(t, n, keywords.get(t, ()))
              for t, n in names.items()}
    return SectionResult(summary, run.figures, attributions,
                         intro_html(summary) + probe_gain_note(summary), labels,
                         {"themes_moved": themes_moved(attributions, names, labels)})


def _discover(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
              progress: bool, *, moved: Mapping[str, Any]) -> Result:
    """What each stage changed, found without being told where to look (``discover``):
    base against the last model, and each adjacent stage, with the themes whose share
    moved most (``themes_moved``, when the themes section ran first) in the hypothesis."""
    from difflens.pipelines.discover import run_discover
    from difflens.report.discover import discover_intro

    themes = [{"label": t["label"], "change": t["change"]}
              for t in moved.get("themes_moved", [])]
    run = run_discover(models, out, config.discover, themes=themes, progress=progress,
                       index=False)
    summary = run.summary()
    intro = discover_intro(summary)
    for stage, d in summary.get("stages", {}).items():
        words = ", ".join(d["hypothesis"]["words"]) or d["hypothesis"]["note"]
        intro += f"<p><b>{html.escape(stage)}</b>: {html.escape(words)}</p>"
    return SectionResult(summary, run.figures, {}, intro)


def theme_label(theme: int, name: str, keywords: Sequence[str] = ()) -> str:
    """How compare shows theme ``theme``: ``theme 3 (harbor, boat, shore)`` (its name; a
    name that is its top keywords is listed with commas), ``theme 3`` without one."""
    words = [str(w) for w in keywords[:3]]
    if words and name == " ".join(words):
        name = ", ".join(words)
    return f"theme {theme}" if not name or name == f"theme {theme}" else f"theme {theme} ({name})"


def themes_moved(attributions: Mapping[str, Attribution], names: Mapping[int, str],
                 labels: Mapping[str, str], limit: int = THEMES_MOVED) -> list[dict[str, Any]]:
    """The themes whose share moved most from the first model to the last, ``|change|``
    largest first (at most ``limit``; a change that is not defined is left out): the
    ``themes_moved`` of the compare summary (see the module's docstring)."""
    rows: list[dict[str, Any]] = []
    for theme, name in names.items():
        metric = f"theme_share_{theme}"
        a = attributions.get(metric)
        if a is None or not np.isfinite(a.total):
            continue
        first, last = next(iter(a.levels)), list(a.levels)[-1]
        change = Estimate(value=a.total, ci_low=a.total_ci[0], ci_high=a.total_ci[1], n=a.n,
                          resampled=a.resampled)
        rows.append({"theme": int(theme), "name": name, "label": labels.get(metric, metric),
                     "metric": metric, "from": first, "to": last, "change": change.to_json(),
                     "levels": {first: a.levels[first], last: a.levels[last]}})
    rows.sort(key=lambda r: -abs(r["change"]["value"]))
    return rows[:limit]
