"""``difflens control train-probe`` and ``difflens control evaluate``: files, figures and summaries.

``run_probe_training`` writes ``OUT/probe.safetensors`` (+ ``probe.json``), the per-layer
AUC table (``OUT/data/probe_layers``) and its figure; ``summary.json`` has ``probe.layer``
and ``probe.auc`` (an estimate, ``{value, ci_low, ci_high, n, resampled}``, as every value
with a CI in these summaries). ``run_control_evaluation`` writes the per-generation and
per-cell tables, the controllability curve and score traces, and merges
``controllers.<name>.<gain>.{...}`` into ``summary.json``. Finished cells are kept in
``OUT/cells`` so a rerun resumes. With a
``SelfJudgeConfig`` it also scores every complete sentence
of the unsteered generations by the model's own answer to a judge question
(``OUT/data/self_judge``, ``summary.json`` ``self_judge.auc``). The figures and pages are
drawn by ``difflens.report.control``.
"""

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from torch import Tensor

from difflens._io import check_writable, write_json_atomic
from difflens.analysis.summary_spelling import ESTIMATE_KEYS, respell
from difflens.control.evaluate import ControlConfig, ControlEvaluation, Measure, evaluate_control
from difflens.control.self_judge import SelfJudgeConfig, judge_sentences, self_judge_summary
from difflens.control.state_probe import ProbeConfig, ProbeFit, StateProbe, train_probe
from difflens.errors import InputError
from difflens.inputs.labelled import LabelledText
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.models.wrapping import Models, as_loaded, as_models
from difflens.pipelines.result import InstrumentResult
from difflens.report.compare import per_model_figure
from difflens.report.control import (
    control_headline,
    control_intro,
    controllability_figure,
    example_trace_figure,
    probe_figure,
    probe_headline,
    probe_intro,
    self_judge_figure,
    trace_figure,
    trace_picks,
)
from difflens.report.figures import AnyFigure, write_index
from difflens.report.tables import write_table


@dataclasses.dataclass(frozen=True)
class ControlResult(InstrumentResult):
    """What ``run_control_evaluation`` (one model) or ``run_control`` (every model
    of a set, ``OUT/<model>`` each) wrote."""


ControlRun = ControlResult  # the name of earlier releases


@dataclasses.dataclass(frozen=True)
class ControlInputs:
    """What ``run_control`` runs on."""

    examples: tuple[LabelledText, ...]
    """Labelled texts the state probe learns (1 = the behaviour to steer away from)."""
    prompts: tuple[str, ...]
    """Prompts every controller continues."""
    independent: Measure | None = None
    """A second judge of the continuations (None: the probe's verdict only)."""
    independent_name: str = ""
    source: str = ""
    """What the examples are, for the page."""


def _read_summary(path: Path) -> dict[str, Any]:
    """The summary an earlier command wrote into the folder (in the one spelling, also when
    an older difflens wrote it), or an empty one."""
    import json

    return respell(json.loads(path.read_text())) if path.is_file() else {}


def probe_summary(probe: StateProbe) -> dict[str, Any]:
    """The summary's ``probe`` block: layer, ``auc`` (an estimate), segment AUC, threshold,
    ...; a probe file of an older difflens (``auc`` and ``auc_ci``) reads the same."""
    m = respell({k: probe.metrics.get(k) for k in ("auc", "auc_ci", "mlp_auc")
                 if k in probe.metrics})
    out = {"layer": probe.layer, "auc": m.get("auc"),
           "auc_segment": probe.metrics.get("auc_segment"), "threshold": probe.threshold,
           "state_norm": probe.state_norm, "n_examples": probe.metrics.get("n_examples"),
           "source": probe.metrics.get("source", ""), "model": probe.model.get("name")}
    if probe.mlp is not None:  # a logistic probe's block is unchanged
        out["kind"] = probe.kind
        out["mlp_auc"] = m.get("mlp_auc")
    return out


def run_probe_training(lm: "LoadedModel | Models", examples: Sequence[LabelledText], out: Path,
                       *, config: ProbeConfig = ProbeConfig(), threshold: float | None = None,
                       source: str = "", progress: Callable[[int], None] | None = None,
                       index: bool = True, tokenizer: Any = None
                       ) -> tuple[ProbeFit, list[AnyFigure]]:
    """Train a probe into ``out`` (probe file, per-layer table, figure, summary). A plain
    ``transformers`` model comes with its ``tokenizer``."""
    lm = as_loaded(lm, tokenizer=tokenizer)
    check_writable(out)
    fit = train_probe(lm, examples, config=config, threshold=threshold, progress=progress,
                      source=source)
    fit.probe.save(out / "probe.safetensors")
    write_table(pd.DataFrame(fit.layers), out / "data", "probe_layers")
    fig = probe_figure(fit.layers, fit.probe.layer)
    fig.save(out / "figures")
    summary = _read_summary(out / "summary.json")
    summary["probe"] = probe_summary(fit.probe)
    write_json_atomic(out / "summary.json", summary)
    if index:
        write_index(out / "index.html", "difflens probe",
                    probe_intro(lm.identity.name, summary["probe"], source), [fig],
                    probe_headline(summary["probe"]))
    return fit, [fig]


# -- control ------------------------------------------------------------------------------


def run_control_evaluation(lm: "LoadedModel | Models", probe: StateProbe,
                           prompts: Sequence[str], out: Path, *,
                           config: ControlConfig = ControlConfig(),
                           independent: Measure | None = None, independent_name: str = "",
                           direction: Tensor | None = None,
                           progress: Callable[[int], None] | None = None,
                           index: bool = True,
                           self_judge: SelfJudgeConfig | None = None,
                           tokenizer: Any = None) -> ControlRun:
    """Evaluate every controller into ``out`` and return the summary and figures; with
    ``self_judge``, also the self-judge against the probe and the independent judge."""
    lm = as_loaded(lm, tokenizer=tokenizer)
    if self_judge is not None and independent is None:
        raise InputError("the self-judge is compared with an independent judge; give one "
                         "(--independent organism or lexicon)")
    check_writable(out)
    ev: ControlEvaluation = evaluate_control(
        lm, probe, prompts, config=config, independent=independent,
        independent_name=independent_name, direction=direction, store=out / "cells",
        progress=progress)
    data = out / "data"
    gens = ev.generations
    write_table(gens, data, "generations")
    write_table(ev.cells, data, "controllers")
    picks = trace_picks(ev.cells)
    figures: list[AnyFigure] = [
        controllability_figure(ev.cells, independent_name),
        trace_figure(gens, ev.threshold, picks, config.generation.max_new_tokens,
                     n_boot=config.n_boot, seed=config.seed),
        example_trace_figure(gens, ev.threshold, picks)]
    judged = None
    if self_judge is not None:
        assert independent is not None
        rows = judge_sentences(lm, gens[gens["controller"] == "none"], independent,
                               config=self_judge, prompts=prompts)
        write_table(rows, data, "self_judge")
        judged = self_judge_summary(rows, self_judge, n_boot=config.n_boot, seed=config.seed)
        figures.append(self_judge_figure(rows, independent_name, n_boot=config.n_boot,
                                         seed=config.seed))
    for fig in figures:
        fig.save(out / "figures")
    summary = _read_summary(out / "summary.json")
    summary["probe"] = probe_summary(probe)
    summary["model"] = lm.identity.name
    summary["threshold"] = ev.threshold
    summary["independent"] = independent_name
    summary["n_prompts"] = len(prompts)
    summary["controllers"] = ev.summary()
    summary["config"] = {"k_samples": config.k_samples,
                         "max_new_tokens": config.generation.max_new_tokens,
                         "temperature": config.generation.temperature,
                         "chat": config.generation.chat, "seed": config.seed,
                         "gains": {k: list(g) for k, g in config.gains},
                         "window": config.window, "max_rollbacks": config.max_rollbacks,
                         "steer_tokens": config.steer_tokens,
                         "direction": "probe" if direction is None else "given"}
    if judged is not None:
        summary["self_judge"] = judged
    write_json_atomic(out / "summary.json", summary)
    if index:
        write_index(out / "index.html", "difflens control", control_intro(summary), figures,
                    control_headline(summary, independent_name))
    return ControlResult(out=out, summary_json=summary, figures=figures)


# -- every model of a set ------------------------------------------------------------------


def run_control(models: "LoadedModel | ModelPair | ModelSet | Models", inputs: ControlInputs,
                out: Path, config: ControlConfig = ControlConfig(), *,
                probe: ProbeConfig = ProbeConfig(), progress: bool = False,
                index: bool = True, tokenizer: Any = None) -> ControlResult:
    """For every model: a state probe trained on the model's own states
    (``run_probe_training``, ``probe`` settings), then every controller of ``config``
    evaluated with it (``run_control_evaluation``), into ``OUT/<model>``.

    ``OUT/summary.json`` holds each model's control summary under its name, and the figure
    ``control_uncontrolled`` compares the models' bad share without control (each graded by
    its own probe); the other figures returned are the last model's.
    """
    from difflens._io import rich_progress

    check_writable(out)
    by_name = models_of(as_models(models, tokenizer=tokenizer))
    summary: dict[str, Any] = {}
    figures: list[AnyFigure] = []
    values: dict[str, dict[str, Any]] = {}
    last = list(by_name)[-1]
    with rich_progress(progress) as bar:
        for name, lm in by_name.items():
            folder = out / name
            step = bar(f"control {name}: probe", len(inputs.examples))
            fit, probe_figs = run_probe_training(lm, list(inputs.examples), folder,
                                                 config=probe, source=inputs.source,
                                                 progress=_ticks(step), index=index)
            step = bar(f"control {name}: generating",
                       len(inputs.prompts) * config.k_samples * len(config.controllers()))
            run = run_control_evaluation(lm, fit.probe, list(inputs.prompts), folder,
                                         config=config, independent=inputs.independent,
                                         independent_name=inputs.independent_name,
                                         progress=_ticks(step), index=index)
            summary[name] = run.summary()
            cell = next(iter(run.summary()["controllers"]["none"].values()))
            values[name] = {k: cell["bad_rate"][k] for k in ESTIMATE_KEYS}
            if name == last:
                figures += [*probe_figs, *run.figures]
    if values:
        figures.insert(0, per_model_figure(
            "control_uncontrolled", "Share of bad continuations without control, per model",
            values, "bad share", caption="Graded by each model's own probe; the figures below "
            f"are {last}'s."))
        figures[0].save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    return ControlResult(out=out, summary_json=summary, figures=figures)


def _ticks(step: Callable[[int, str], None]) -> Callable[[int], None]:
    """A progress callback of ``n`` for a rich bar step that also takes a description."""
    return lambda n: step(n, "")
