"""``difflens probe train`` and ``difflens control evaluate``: files, figures and summaries.

``run_probe_training`` writes ``OUT/probe.safetensors`` (+ ``probe.json``), the per-layer
AUC table (``OUT/data/probe_layers``) and its figure; ``summary.json`` has ``probe.layer``
and ``probe.auc``. ``run_control_evaluation`` writes the per-generation and per-cell tables,
the controllability curve and score traces, and merges ``controllers.<name>.<gain>.{...}``
into ``summary.json``. Finished cells are kept in ``OUT/cells`` so a rerun resumes.
"""

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from torch import Tensor

from difflens.capture.store import check_writable, write_json_atomic
from difflens.control.evaluate import ControlConfig, ControlEvaluation, Measure, evaluate_control
from difflens.control.probe import LabelledText, ProbeConfig, ProbeFit, StateProbe, train_probe
from difflens.models.loading import LoadedModel
from difflens.report.figures import AnyFigure, CustomFigure, Figure, Series, write_index
from difflens.report.tables import write_table

CONTROLLER_COLORS = {"none": "#555555", "open_loop": "#4c72b0", "proportional": "#dd8452",
                     "rollback": "#55a868"}


@dataclasses.dataclass(frozen=True)
class ControlRun:
    summary: dict[str, Any]
    figures: list[AnyFigure]


def _read_summary(path: Path) -> dict[str, Any]:
    import json

    return json.loads(path.read_text()) if path.is_file() else {}


def probe_summary(probe: StateProbe) -> dict[str, Any]:
    m = probe.metrics
    return {"layer": probe.layer, "auc": m.get("auc"), "auc_ci": m.get("auc_ci"),
            "auc_segment": m.get("auc_segment"), "threshold": probe.threshold,
            "state_norm": probe.state_norm, "n_examples": m.get("n_examples"),
            "source": m.get("source", ""), "model": probe.model.get("name")}


def probe_figure(layers: Sequence[dict[str, Any]], chosen: int) -> Figure:
    xs = [r["layer"] for r in layers]
    return Figure(
        name="probe_auc_by_layer", title=f"State probe: held-out AUC per layer (chosen: {chosen})",
        kind="line", x=xs,
        series=[Series("test, tokens", [r["auc_test"] for r in layers],
                       [r["auc_test_ci_low"] for r in layers],
                       [r["auc_test_ci_high"] for r in layers]),
                Series("test, segment means", [r["auc_test_segment"] for r in layers]),
                Series("validation, tokens", [r["auc_val"] for r in layers])],
        xlabel="layer", ylabel="ROC AUC", hline=0.5,
        caption="Token AUC: every labelled token scored on its own state; segment AUC: the "
                "mean score of each labelled segment. 95% CI over held-out groups.")


def run_probe_training(lm: LoadedModel, examples: Sequence[LabelledText], out: Path, *,
                       config: ProbeConfig = ProbeConfig(), threshold: float | None = None,
                       source: str = "", progress: Callable[[int], None] | None = None,
                       index: bool = True) -> tuple[ProbeFit, list[AnyFigure]]:
    """Train a probe into ``out`` (probe file, per-layer table, figure, summary)."""
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
        s = summary["probe"]
        write_index(out / "index.html", "difflens probe", (
            f"Logistic-regression state probe on {lm.identity.name}, trained on "
            f"{s['n_examples']} examples ({source or 'labelled text'})."), [fig],
            {"layer": s["layer"], "held-out token AUC": s["auc"], "AUC 95% CI": s["auc_ci"],
             "segment AUC": s["auc_segment"], "threshold": s["threshold"]})
    return fit, [fig]


# -- control ------------------------------------------------------------------------------


def _label(kind: str, gain: float) -> str:
    return "unsteered" if kind == "none" else f"{kind} g={gain:g}"


def controllability_figure(cells: pd.DataFrame, independent_name: str) -> CustomFigure:
    """Bad rate (probe, and the independent measure) against the fluency cost, per controller."""
    kinds = [k for k in CONTROLLER_COLORS if k in set(cells["controller"])]
    base = cells[cells["controller"] == "none"]

    def curve(kind: str) -> pd.DataFrame:
        df = cells[cells["controller"] == kind]
        return pd.concat([base, df]).sort_values("gain") if kind != "none" else df

    measures = [("bad_rate", "probe", "solid")]
    if independent_name:
        measures.append(("bad_rate_independent", independent_name, "dot"))

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        for kind in kinds:
            df = curve(kind)
            for col, what, dash in measures:
                err = None
                if f"{col}_ci_low" in df:
                    err = {"type": "data", "symmetric": False,
                           "array": (df[f"{col}_ci_high"] - df[col]).clip(lower=0).tolist(),
                           "arrayminus": (df[col] - df[f"{col}_ci_low"]).clip(lower=0).tolist()}
                fig.add_scatter(x=df["ppl_ratio"], y=df[col], error_y=err,
                                mode="lines+markers+text" if dash == "solid" else "lines+markers",
                                text=[f"{g:g}" for g in df["gain"]], textposition="top right",
                                name=f"{kind} ({what})",
                                line={"color": CONTROLLER_COLORS[kind], "dash": dash})
        fig.update_layout(title="Controllability: bad rate against fluency cost",
                          xaxis_title="perplexity under the unsteered model / unsteered's",
                          yaxis_title="fraction of generations entering the bad region",
                          template="plotly_white", height=480)
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 4.8))
        for kind in kinds:
            df = curve(kind)
            for col, what, dash in measures:
                yerr = None
                if f"{col}_ci_low" in df:
                    yerr = [np.clip(df[col] - df[f"{col}_ci_low"], 0, None),
                            np.clip(df[f"{col}_ci_high"] - df[col], 0, None)]
                ax.errorbar(df["ppl_ratio"], df[col], yerr=yerr, marker="o", capsize=3,
                            ls="-" if dash == "solid" else ":", color=CONTROLLER_COLORS[kind],
                            label=f"{kind} ({what})")
                if dash == "solid":
                    for x, y, g in zip(df["ppl_ratio"], df[col], df["gain"], strict=True):
                        ax.annotate(f"{g:g}", (x, y), fontsize=7, xytext=(3, 3),
                                    textcoords="offset points")
        ax.set(title="Controllability: bad rate against fluency cost",
               xlabel="perplexity ratio (under the unsteered model)",
               ylabel="fraction entering the bad region")
        ax.legend(fontsize=7)
        fig.tight_layout()
        return fig

    return CustomFigure("controllability", "Controllability curve", draw_plotly, draw_matplotlib,
                        caption="Each point is one gain (labelled); solid: judged by the probe "
                                "on the unsteered model's reading of the text; dotted: judged "
                                f"independently ({independent_name or 'none'}). 95% CIs over "
                                "prompts.")


def trace_figure(gens: pd.DataFrame, threshold: float, picks: Sequence[tuple[str, float]],
                 max_tokens: int) -> Figure:
    """Mean probe score per generated token (the monitor's measurement), steered vs not."""
    xs = list(range(max_tokens))
    series = []
    for kind, gain in picks:
        df = gens[(gens["controller"] == kind) & (gens["gain"] == gain)]
        mat = np.full((len(df), max_tokens), np.nan)
        for i, sc in enumerate(df["scores"]):
            sc = list(sc)[:max_tokens]
            mat[i, :len(sc)] = sc
        with np.errstate(all="ignore"):
            mean = np.nanmean(mat, 0)
            n = np.isfinite(mat).sum(0)
            se = np.nanstd(mat, 0) / np.sqrt(np.maximum(n, 1))
        series.append(Series(_label(kind, gain), mean.tolist(), (mean - 1.96 * se).tolist(),
                             (mean + 1.96 * se).tolist()))
    return Figure(name="score_traces", title="Probe score per generated token",
                  kind="line", x=xs, series=series, xlabel="generated token",
                  ylabel="probe score (measured during generation)", hline=threshold,
                  caption="Mean over generations with a normal 95% band; dashed: threshold. "
                          "Scores are measured before the controller acts at that position.")


def example_trace_figure(gens: pd.DataFrame, threshold: float,
                         picks: Sequence[tuple[str, float]]) -> Figure:
    """One prompt's first sample under each controller: the score trace token by token."""
    # the prompt where the unsteered generation reaches the highest sentence score
    base = gens[(gens["controller"] == "none") & (gens["sample"] == 0)]
    pi = int(base.sort_values("region", ascending=False)["prompt_idx"].iloc[0])
    series, width = [], 0
    for kind, gain in picks:
        row = gens[(gens["controller"] == kind) & (gens["gain"] == gain)
                   & (gens["prompt_idx"] == pi) & (gens["sample"] == 0)].iloc[0]
        series.append((_label(kind, gain), list(row["scores"])))
        width = max(width, len(row["scores"]))
    return Figure(name="score_trace_example", title=f"Score trace of prompt {pi}, sample 0",
                  kind="line", x=list(range(width)),
                  series=[Series(label, sc + [float("nan")] * (width - len(sc)))
                          for label, sc in series],
                  xlabel="generated token", ylabel="probe score", hline=threshold,
                  caption="The same prompt and random stream under each controller.")


def control_intro(summary: dict[str, Any]) -> str:
    c = summary.get("controllers", {})
    parts = []
    p = summary.get("probe")
    if p:
        parts.append(f"State probe at layer {p['layer']}: held-out token AUC {p['auc']:.3f}, "
                     f"segment AUC {p['auc_segment']:.3f}, threshold {p['threshold']:.3f}.")
    base = c.get("none", {}).get("0")
    if base:
        parts.append(f"Unsteered: bad rate {base['bad_rate']:.3f} [{base['bad_rate_ci_low']:.3f}"
                     f", {base['bad_rate_ci_high']:.3f}] by the probe, "
                     f"{base['bad_rate_independent']:.3f} by "
                     f"{summary.get('independent', 'the independent measure')} "
                     f"(n={base['n']}).")
    for kind, by_gain in c.items():
        if kind == "none":
            continue
        for g, r in by_gain.items():
            parts.append(f"{kind} g={g}: {r['bad_rate']:.3f} [{r['bad_rate_ci_low']:.3f}, "
                         f"{r['bad_rate_ci_high']:.3f}] / independent "
                         f"{r['bad_rate_independent']:.3f}, ppl ×{r['ppl_ratio']:.2f}, "
                         f"KL {r['kl']:.3f}, speed ×{r['speed_ratio']:.2f}.")
    return " ".join(parts)


def _picks(cells: pd.DataFrame) -> list[tuple[str, float]]:
    """The unsteered run and, per controller, its middle gain."""
    out: list[tuple[str, float]] = [("none", 0.0)]
    for kind in ("open_loop", "proportional", "rollback"):
        gains = sorted(cells[cells["controller"] == kind]["gain"])
        if gains:
            out.append((kind, float(gains[len(gains) // 2])))
    return out


def run_control_evaluation(lm: LoadedModel, probe: StateProbe, prompts: Sequence[str],
                           out: Path, *, config: ControlConfig = ControlConfig(),
                           independent: Measure | None = None, independent_name: str = "",
                           direction: Tensor | None = None,
                           progress: Callable[[int], None] | None = None,
                           index: bool = True) -> ControlRun:
    """Evaluate every controller into ``out`` and return the summary and figures."""
    check_writable(out)
    ev: ControlEvaluation = evaluate_control(
        lm, probe, prompts, config=config, independent=independent,
        independent_name=independent_name, direction=direction, store=out / "cells",
        progress=progress)
    data = out / "data"
    gens = ev.generations
    write_table(gens, data, "generations")
    write_table(ev.cells, data, "controllers")
    picks = _picks(ev.cells)
    figures: list[AnyFigure] = [
        controllability_figure(ev.cells, independent_name),
        trace_figure(gens, ev.threshold, picks, config.generation.max_new_tokens),
        example_trace_figure(gens, ev.threshold, picks)]
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
    write_json_atomic(out / "summary.json", summary)
    if index:
        base = summary["controllers"]["none"]["0"]
        write_index(out / "index.html", "difflens control", control_intro(summary), figures,
                    {"probe layer": probe.layer, "probe AUC": probe.metrics.get("auc"),
                     "unsteered bad rate": base["bad_rate"],
                     f"unsteered bad rate ({independent_name or 'independent'})":
                         base["bad_rate_independent"]})
    return ControlRun(summary=summary, figures=figures)
