"""``difflens compare``: every instrument on a model set (a lineage such as base -> SFT ->
RL, or a pair), one report, and the change each stage made to each headline metric.

Sections (``SECTIONS``) run into ``OUT/<section>/`` (their figures in ``OUT/<section>/
figures``) with the section's own pipeline; each section's stage figure is
``OUT/figures/stages_<section>``:

- ``capture``: every model scores the same texts; per-token KL of each adjacent pair and of
  each model against the base, and each model's entropy (:func:`difflens.capture.capture`);
- ``concepts``, ``trajectories``, ``collapse``, ``themes``: their pipelines on the whole set;
- ``control``: a state probe trained on each model's own states and every controller
  evaluated on it, per model.

A two-model set runs each section on its :class:`~difflens.models.pair.ModelPair` (labels
``base``/``tuned``, exactly today's pair results); the attribution then names the stage
after the second model. ``OUT/summary.json`` holds each section's summary under its name,
the models (``models``: name, position, identity) and ``attribution.<metric>.<stage>.
{delta, ci_low, ci_high, share, n}``: the change each stage made with a 95% paired bootstrap
CI over the same prompts or items (:mod:`difflens.analysis.attribution`).
"""

import dataclasses
import inspect
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import check_writable, rich_progress, write_json_atomic
from difflens.analysis.attribution import COLUMNS, Attribution, attribute
from difflens.analysis.divergence import mean_ci, summarize_pair_stats
from difflens.errors import InputError
from difflens.inputs.labelled import LabelledText
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair
from difflens.report.compare import (
    attribution_figure,
    attribution_html,
    lineage_html,
    pair_colors,
    per_model_figure,
    stage_takeaways,
)
from difflens.report.figures import AnyFigure, Figure, Section, Series, use_lineage_colors
from difflens.report.tables import write_table

SECTIONS = ("capture", "concepts", "trajectories", "collapse", "control", "themes")
COLLAPSE_STEPS = ("probes", "temperature", "attractors", "diversity")
#: The bootstrap replicates of every attribution.
N_BOOT = 1000


@dataclasses.dataclass(frozen=True)
class CompareInputs:
    """What the sections run on: the built-in defaults (:mod:`difflens.inputs.builtin`) or
    a world's own texts (the organism's)."""

    texts: tuple[str, ...]
    """Capture: texts every model scores (KL and entropy per token)."""
    prompts: tuple[str, ...]
    """Collapse: prompts for attractors and diversity."""
    trajectory_prompts: tuple[str, ...]
    concept_items: str
    """Concepts: an A/B item file (JSONL)."""
    control_examples: tuple[LabelledText, ...]
    """Control: labelled texts the state probe learns (1 = the behaviour to steer away)."""
    control_prompts: tuple[str, ...]
    theme_prompts: tuple[str, ...]
    probes: str | None = None
    """Collapse: a probe file (None: the built-in probes)."""
    reference: tuple[str, ...] | None = None
    reference_name: str = ""
    tree_prompt: str = ""
    theme_truth: Any = None
    """Themes: the world's true theme chains (the organism), or None."""
    control_measure: Callable[[Sequence[str]], list[bool]] | None = None
    control_measure_name: str = ""
    control_source: str = ""
    names: Mapping[str, str] = dataclasses.field(default_factory=dict)
    """Each input's description for the page (``texts``, ``concepts``, ...)."""


@dataclasses.dataclass(frozen=True)
class CompareConfig:
    """Which sections run and every section's options (a ``compare.toml`` table each)."""

    sections: tuple[str, ...] = SECTIONS
    seed: int = 0
    capture: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of :func:`difflens.capture.capture` (e.g. ``store_dtype``)."""
    concepts: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of :func:`difflens.pipelines.concepts.run_concepts`."""
    trajectories: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Keyword arguments of :func:`difflens.pipelines.trajectories.run_trajectories`."""
    collapse: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of :class:`difflens.pipelines.collapse.CollapseConfig` (and ``steps``)."""
    control: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of :class:`difflens.control.evaluate.ControlConfig` (``max_new_tokens``,
    ``batch_size`` for its generation)."""
    themes: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    """Fields of :class:`difflens.pipelines.theme_config.ThemesConfig`."""

    def __post_init__(self) -> None:
        bad = [s for s in self.sections if s not in SECTIONS]
        if bad:
            raise InputError(f"unknown section(s) {bad}; sections are {', '.join(SECTIONS)}")
        for section in SECTIONS:
            check_options(section, getattr(self, section), "CompareConfig")


def _option_names(section: str) -> set[str]:
    from difflens.capture import capture
    from difflens.control.evaluate import ControlConfig
    from difflens.pipelines.collapse import CollapseConfig
    from difflens.pipelines.concepts import run_concepts
    from difflens.pipelines.theme_config import ThemesConfig
    from difflens.pipelines.trajectories import run_trajectories

    def kwargs(fn: Callable[..., Any], drop: Sequence[str]) -> set[str]:
        return {p.name for p in inspect.signature(fn).parameters.values()
                if p.kind == p.KEYWORD_ONLY and p.name not in drop}

    return {
        "capture": kwargs(capture, ("store", "progress", "engine")),
        "concepts": kwargs(run_concepts, ("progress", "index")),
        "trajectories": kwargs(run_trajectories, ("progress", "index", "metadata")),
        "collapse": {f.name for f in dataclasses.fields(CollapseConfig)} - {"prompts"}
        | {"steps"},
        "control": ({f.name for f in dataclasses.fields(ControlConfig)} - {"generation"})
        | {"max_new_tokens", "batch_size"},
        "themes": {f.name for f in dataclasses.fields(ThemesConfig)} - {"prompts", "truth"},
    }[section]


def check_options(section: str, options: Mapping[str, Any], where: str) -> None:
    """Refuse an option the section does not have, naming ``where`` and the valid ones."""
    unknown = sorted(set(options) - _option_names(section))
    if unknown:
        raise InputError(f"{where}: [{section}] has no option {', '.join(unknown)}; its options "
                         f"are {', '.join(sorted(_option_names(section)))}")


def read_compare_config(path: str | Path) -> dict[str, Any]:
    """Read ``compare.toml``: one table per section (``[collapse]``, ``[concepts]``, ...)
    with that section's options, and optional top-level ``sections`` and ``seed``.

    Returns keyword arguments of :class:`CompareConfig`. Raises :class:`InputError` with the
    file (and line, for a syntax error) on anything it cannot use.
    """
    import tomllib

    p = Path(path)
    if not p.is_file():
        raise InputError(f"{p}: no such config file; write one table per section, e.g. "
                         f"[collapse] k_samples = 8")
    try:
        raw = tomllib.loads(p.read_text())
    except tomllib.TOMLDecodeError as exc:
        raise InputError(f"{p}: not valid TOML: {exc}") from None
    out: dict[str, Any] = {}
    for key, value in raw.items():
        if key in SECTIONS:
            if not isinstance(value, dict):
                raise InputError(f"{p}: {key} must be a table ([{key}]) of options")
            check_options(key, value, str(p))
            out[key] = {k: tuple(v) if isinstance(v, list) else v for k, v in value.items()}
        elif key == "sections":
            if not isinstance(value, list):
                raise InputError(f"{p}: sections must be a list, e.g. sections = "
                                 f"[\"collapse\", \"concepts\"]")
            out["sections"] = tuple(value)
        elif key == "seed":
            out["seed"] = int(value)
        else:
            raise InputError(f"{p}: unknown key {key!r}; use sections, seed or a table per "
                             f"section ({', '.join(SECTIONS)})")
    return out


@dataclasses.dataclass(frozen=True)
class CompareRun:
    summary: dict[str, Any]
    sections: list[Section]
    attribution: pd.DataFrame
    """Every attribution row: ``section``, ``metric`` and :data:`~difflens.analysis.
    attribution.COLUMNS`."""


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
                config: CompareConfig = CompareConfig(), progress: bool = False
                ) -> CompareRun:
    """Run the chosen sections of ``config`` on ``models`` into ``out``; write every
    section's outputs, ``OUT/summary.json`` (the sections' summaries, ``models``,
    ``attribution``) and ``OUT/data/attribution.*``. The page is the caller's
    (:func:`write_compare_index`)."""
    check_writable(out)
    colors = use_lineage_colors(list(_labels(models)))
    summary: dict[str, Any] = {"models": models.describe(), "lineage": list(models.names),
                               "sections": list(config.sections)}
    sections: list[Section] = []
    tables: list[pd.DataFrame] = []
    seconds: dict[str, float] = {}
    runners = {"capture": _capture, "concepts": _concepts, "trajectories": _trajectories,
               "collapse": _collapse, "control": _control, "themes": _themes}
    for name in SECTIONS:
        if name not in config.sections:
            continue
        t0 = time.perf_counter()
        section_summary, figures, attributions, intro = runners[name](
            models, out / name, inputs, config, progress)
        summary[name] = section_summary
        seconds[f"{name}_s"] = time.perf_counter() - t0
        table = _attribution_table(name, attributions)
        if not table.empty:
            tables.append(table)
            stages = attribution_figure(f"stages_{name}", f"{name}: the change each stage made",
                                        table)
            stages.save(out / "figures")  # the section's own figures are in OUT/<section>
            figures = [stages, *figures]
        sections.append(Section(name.capitalize(), intro + attribution_html(table), figures,
                                stage_takeaways(table) if not table.empty else []))
    attribution = (pd.concat(tables, ignore_index=True) if tables
                   else pd.DataFrame(columns=["section", "metric", *COLUMNS]))
    summary["attribution"] = {
        metric: {str(r["stage"]): {"delta": _f(r["delta"]), "ci_low": _f(r["ci_low"]),
                                   "ci_high": _f(r["ci_high"]), "share": _f(r["share"]),
                                   "n": int(r["n"])}
                 for r in g.to_dict("records")}
        for metric, g in attribution.groupby("metric", sort=False)}
    summary["colors"] = colors
    summary["seconds"] = seconds
    write_table(attribution, out / "data", "attribution")
    write_json_atomic(out / "summary.json", summary)
    return CompareRun(summary=summary, sections=sections, attribution=attribution)


def write_compare_index(out: Path, run: CompareRun, title: str, intro: str = "",
                        figures: Sequence[AnyFigure] = (), headline: Mapping[str, Any] | None
                        = None, **kwargs: Any) -> None:
    """The report page: the lineage, then each section's attribution and figures."""
    from difflens.report.figures import write_index

    page_intro = intro + lineage_html(run.summary["models"], run.summary["colors"])
    write_index(out / "index.html", title, page_intro, list(figures),
                dict(headline or _headline(run)), sections=run.sections, **kwargs)


def _headline(run: CompareRun) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for r in run.attribution.to_dict("records"):
        out[f"{r['metric']}: {r['from']} → {r['to']}"] = {
            "mean": r["delta"], "ci95": [r["ci_low"], r["ci_high"]], "n": int(r["n"])}
    return out


def _f(x: Any) -> float | None:
    x = float(x)
    return None if not np.isfinite(x) else x


def _attribution_table(section: str, attributions: Mapping[str, Attribution]) -> pd.DataFrame:
    rows = [a.table.assign(metric=metric, section=section)
            for metric, a in attributions.items()]
    if not rows:
        return pd.DataFrame(columns=["section", "metric", *COLUMNS])
    return pd.concat(rows, ignore_index=True)[["section", "metric", *COLUMNS]]


def _attribute(per_unit: pd.DataFrame, lineage: Sequence[str], seed: int,
               denominator: str | None = None) -> Attribution:
    """Attribution of a long table ``unit, model, value[, denominator]`` (model names)."""
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
                     denominators=den, seed=seed, n_boot=N_BOOT)


Result = tuple[dict[str, Any], list[AnyFigure], dict[str, Attribution], str]


# -- capture -------------------------------------------------------------------------------


def _capture(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
             progress: bool) -> Result:
    """Every adjacent pair and every model against the base, on the same texts."""
    from difflens.capture import capture

    names = models.names
    pairs = {**models.against_base(), **models.adjacent()}
    options = {"store_dtype": "float16", **config.capture}
    per_text: list[pd.DataFrame] = []
    pair_summary: dict[str, Any] = {}
    by_position: list[pd.DataFrame] = []
    for (a, b), pair in pairs.items():
        store = capture(pair, list(inputs.texts), store=out / f"{a}-vs-{b}", progress=progress,
                        **options)
        stats = store.stats(["prompt_idx", "pos", "base_entropy", "tuned_entropy",
                             "kl_tuned_base", "kl_base_tuned", "top1_agree"])
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
    attributions = {m: _attribute(units[units.metric == m], names, config.seed, "tokens")
                    for m in ("entropy", "kl_to_base")}
    entropy = {}
    for m in names:
        rows = units[(units.metric == "entropy") & (units.model == m)]
        per = (rows.value / rows.tokens).to_numpy(np.float64)
        entropy[m] = mean_ci(per, seed=config.seed)
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
    from difflens.pipelines.collapse import CollapseConfig, run_collapse
    from difflens.report.collapse import intro_html

    options = dict(config.collapse)
    steps = tuple(options.pop("steps", COLLAPSE_STEPS))
    defaults: dict[str, Any] = {"k_samples": 8, "max_new_tokens": 40, "seed": config.seed,
                                "free_text_temperatures": ()}
    cfg = CollapseConfig(prompts=inputs.prompts, probes=inputs.probes,
                         reference=inputs.reference, reference_name=inputs.reference_name,
                         tree_prompt=inputs.tree_prompt or inputs.prompts[0],
                         **{**defaults, **options})
    run = run_collapse(_target(models), out, steps=steps, config=cfg, progress=progress,
                       index=False)
    labels = _labels(models)
    lineage = list(models.names)
    attributions: dict[str, Attribution] = {}
    data = out / "data"
    if "probes" in steps:
        ph = pd.read_parquet(data / "probes.parquet")
        units = pd.DataFrame({"unit": ph.probe + "/" + ph.phrasing, "model": ph.model.map(labels),
                              "value": ph.tvd_uniform})
        attributions["chance_tvd"] = _attribute(units, lineage, config.seed)
    if "attractors" in steps:
        att = pd.read_parquet(data / "attractors.parquet")
        g = att.groupby(["model", "prompt_id"])
        units = pd.DataFrame({"n": g.size(), "edit": g["edit_distance"].sum()}).reset_index()
        units = pd.DataFrame({"unit": units.prompt_id, "model": units.model.map(labels),
                              "value": units.n - units.edit, "n": units.n})
        attributions["attractor_strength"] = _attribute(units, lineage, config.seed, "n")
    if "diversity" in steps:
        div = pd.read_parquet(data / "diversity.parquet")
        for metric in ("vendi", "self_bleu"):
            units = pd.DataFrame({"unit": div.prompt_id, "model": div.model.map(labels),
                                  "value": div[metric]})
            attributions[metric] = _attribute(units, lineage, config.seed)
    return run.summary, run.figures, attributions, (
        intro_html(run.summary) if len(models) == 2 else
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
    options: dict[str, Any] = {"position": "last", "test_fraction": 0.3, "seed": config.seed,
                               "alpha_unit": "residual", "n_generations": 2,
                               **config.concepts}
    run = run_concepts(_as_set(models), dataset, out, progress=progress, index=False,
                       **options)
    attributions = _renamed(run.attributions, models)
    return run.summary, run.figures, attributions, intro_html(run.summary)


# -- trajectories --------------------------------------------------------------------------


def _trajectories(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
                  progress: bool) -> Result:
    from difflens.pipelines.trajectories import run_trajectories
    from difflens.report.trajectories import intro_html

    options: dict[str, Any] = {"continuations": 4, "max_new_tokens": 30, "method": "umap",
                               "seed": config.seed, "min_count": 5, **config.trajectories}
    run = run_trajectories(_as_set(models), list(inputs.trajectory_prompts), out,
                           progress=progress, **options)
    attributions: dict[str, Attribution] = {}
    per_prompt = run.distance_to_base_by_prompt
    if per_prompt is not None and len(per_prompt):
        labels = _labels(models)
        wide = per_prompt.pivot(index="prompt_id", columns="model", values="distance")
        attributions["distance_to_base"] = attribute(
            {labels[m]: wide[m].to_numpy(np.float64) for m in labels}, list(models.names),
            seed=config.seed, n_boot=N_BOOT)
    return run.summary, run.figures, attributions, intro_html(run.summary)


# -- control -------------------------------------------------------------------------------


def _control(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
             progress: bool) -> Result:
    """A probe trained on each model's own states, every controller evaluated on it."""
    from difflens.control.evaluate import ControlConfig
    from difflens.pipelines.control import run_control_evaluation, run_probe_training
    from difflens.sampling.generate import GenerationConfig

    options = dict(config.control)
    generation = GenerationConfig(max_new_tokens=int(options.pop("max_new_tokens", 40)),
                                  batch_size=int(options.pop("batch_size", 32)))
    defaults: dict[str, Any] = {
        "gains": (("open_loop", (0.5, 1.0)), ("proportional", (1.0, 2.0)),
                  ("rollback", (1.0,))), "k_samples": 2, "seed": config.seed}
    merged = {**defaults, **options}
    if isinstance(merged["gains"], Mapping):
        merged["gains"] = tuple((k, tuple(v)) for k, v in merged["gains"].items())
    cfg = ControlConfig(generation=generation, **merged)
    summary: dict[str, Any] = {}
    figures: list[AnyFigure] = []
    rows = []
    with rich_progress(progress) as bar:
        for name, lm in models.models.items():
            folder = out / name
            step = bar(f"control {name}: probe", len(inputs.control_examples))
            fit, probe_figs = run_probe_training(lm, list(inputs.control_examples), folder,
                                                 source=inputs.control_source,
                                                 progress=_ticks(step), index=False)
            step = bar(f"control {name}: generating",
                       len(inputs.control_prompts) * cfg.k_samples * len(cfg.controllers()))
            run = run_control_evaluation(lm, fit.probe, list(inputs.control_prompts), folder,
                                         config=cfg, independent=inputs.control_measure,
                                         independent_name=inputs.control_measure_name,
                                         progress=_ticks(step), index=False)
            summary[name] = run.summary
            rows.append(_uncontrolled(name, run.summary))
            if name == models.names[-1]:
                figures += [*probe_figs, *run.figures]
    values = {r["model"]: {"mean": r["mean"], "ci95": r["ci95"]} for r in rows}
    if values:
        figures.insert(0, per_model_figure(
            "control_uncontrolled", "Share of bad continuations without control, per model",
            values, "bad share", caption="Graded by each model's own probe; the figures below "
            f"are {models.names[-1]}'s."))
        figures[0].save(out / "figures")
    intro = (f"<p>A state probe trained on each model's own states "
             f"({inputs.control_source or 'built-in labelled texts'}) and every controller on "
             f"{len(inputs.control_prompts)} prompts, per model.</p>")
    return summary, figures, {}, intro


def _ticks(step: Callable[[int, str], None]) -> Callable[[int], None]:
    """A progress callback of ``n`` for a rich bar step that also takes a description."""
    return lambda n: step(n, "")


def _uncontrolled(name: str, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The uncontrolled cell of a model's control summary (``controllers.none.<gain>``):
    its bad rate by the model's own probe, with the CI."""
    cell = next(iter(summary["controllers"]["none"].values()))
    return {"model": name, "mean": cell["bad_rate"],
            "ci95": [cell["bad_rate_ci_low"], cell["bad_rate_ci_high"]]}


# -- themes --------------------------------------------------------------------------------


def _themes(models: ModelSet, out: Path, inputs: CompareInputs, config: CompareConfig,
            progress: bool) -> Result:
    from difflens.pipelines.theme_config import ThemesConfig
    from difflens.pipelines.themes import run_themes
    from difflens.report.themes import intro_html

    defaults: dict[str, Any] = {"k_samples": 8, "max_new_tokens": 48, "seed": config.seed}
    cfg = ThemesConfig(prompts=inputs.theme_prompts, truth=inputs.theme_truth,
                       **{**defaults, **config.themes})
    run = run_themes(_target(models), out, config=cfg, progress=progress, index=False)
    labels = _labels(models)
    segs = pd.read_parquet(out / "data" / "segments.parquet")
    attributions: dict[str, Attribution] = {}
    names = {t["theme"]: t["name"] for t in run.summary.get("themes", [])}
    prompt_col = "prompt_idx" if "prompt_idx" in segs else "prompt_id"
    segs = segs[segs["theme"] >= 0]
    counts = segs.groupby([prompt_col, "model"]).size()
    for theme in sorted(names):
        hits = segs[segs["theme"] == theme].groupby([prompt_col, "model"]).size()
        units = pd.DataFrame({"n": counts, "hits": hits}).fillna(0.0).reset_index()
        units = pd.DataFrame({"unit": units[prompt_col], "model": units.model.map(labels),
                              "value": units.hits, "n": units.n})
        key = f"theme_share_{theme}"
        attributions[key] = _attribute(units, list(models.names), config.seed, "n")
    run.summary["theme_names"] = {f"theme_share_{t}": n for t, n in names.items()}
    return run.summary, run.figures, attributions, intro_html(run.summary)
