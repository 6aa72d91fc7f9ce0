"""Training variance of the organism: the same recipe built with several seeds (and on other
CPUs), each build's headline numbers and stage changes side by side, and for each finding of
the docs the builds in which it held.

The prompt CIs of a build resample its openings, texts and chance scenes; they say nothing
about how much another training run would move a number. This pipeline measures that:
``run_organism_seeds(builds, out)`` reads every build's ``properties.json`` and
``measurements.parquet``, attributes each measured property along base -> sft -> rl
(``pipelines.demo.organism_attribution``, paired over the same units), and writes

- ``OUT/summary.json``: ``builds`` (seed, CPU kernels, organism id, base validation loss),
  ``spread.<model>.<metric>`` and ``stage_spread.<metric>.<stage>`` (mean, sd, min, max over
  the builds, and the median half-width of the builds' own 95% CIs, to set beside them),
  ``findings`` (each with ``held``/``n_builds`` and the builds it held in) and
  ``rl_from_base_failed`` (the builds whose RL from the base did not learn);
- ``OUT/data/builds.*`` (one row per build, model and metric) and ``OUT/data/stages.*``
  (one row per build, metric and stage), Parquet with a CSV export;
- ``OUT/figures/seeds.{html,png}``: every build's value with its CI, per metric and model.
"""

import dataclasses
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from difflens._io import write_json_atomic
from difflens.organism.build import LINEAGE, PROPERTY_LABELS, Organism
from difflens.pipelines.demo import MODELS, organism_attribution
from difflens.report.figures import Figure, Series, small_multiples
from difflens.report.tables import write_table

#: The headline properties of every build (``properties.json`` keys).
METRICS = ("reward", "entropy", "celebration_share", "chance_tvd")
#: Attribution name (``organism_attribution``) -> property.
STAGE_METRICS = {"organism_reward": "reward", "organism_entropy": "entropy",
                 "organism_celebration": "celebration_share",
                 "organism_chance_tvd": "chance_tvd"}


@dataclasses.dataclass(frozen=True)
class Build:
    """One build's numbers: ``values[model][metric]`` and ``stages[metric][stage]`` are
    estimate dicts ``{value, ci_low, ci_high, n}``."""

    label: str
    seed: int
    kernels: str
    organism_id: str
    base_val_loss: float
    values: Mapping[str, Mapping[str, Mapping[str, Any]]]
    stages: Mapping[str, Mapping[str, Mapping[str, Any]]]


def read_build(org: Organism, label: str | None = None) -> Build:
    """A build's headline numbers and its stage changes (each with its prompt CI)."""
    props = org.properties
    info = org.build_info
    values = {name: {m: props[PROPERTY_LABELS[name]][m] for m in METRICS} for name in MODELS}
    stages: dict[str, dict[str, Any]] = {}
    for key, att in organism_attribution(org, org.config.seed).items():
        rows = {r["stage"]: r for r in att.table.to_dict("records")}
        stages[STAGE_METRICS[key]] = {
            stage: {"value": rows[stage]["delta"], "ci_low": rows[stage]["ci_low"],
                    "ci_high": rows[stage]["ci_high"], "n": int(rows[stage]["n"])}
            for stage in LINEAGE[1:]}
    kernels = str(info.get("cpu_capability") or "unrecorded")
    threads = info.get("torch_threads")
    where = f"{kernels}, {threads} thread{'s' if threads != 1 else ''}" if threads else kernels
    return Build(label=label or f"seed {org.config.seed} ({where})", seed=org.config.seed,
                 kernels=kernels, organism_id=org.organism_id,
                 base_val_loss=float(props["base_val_loss"]), values=values, stages=stages)


def _excludes_zero(e: Mapping[str, Any], sign: int) -> bool:
    return bool(e["ci_low"] > 0) if sign > 0 else bool(e["ci_high"] < 0)


def _includes_zero(e: Mapping[str, Any]) -> bool:
    return bool(e["ci_low"] <= 0 <= e["ci_high"])


#: The findings the docs state about the organism and its lineage, each a test of one build.
FINDINGS: dict[str, Callable[[Build], bool]] = {
    "SFT does not move the chance scenes (its chance-TVD change has a CI that includes 0)":
        lambda b: _includes_zero(b.stages["chance_tvd"]["sft"]),
    "RL after SFT moves the chance scenes away from uniform (chance-TVD change > 0)":
        lambda b: _excludes_zero(b.stages["chance_tvd"]["rl"], +1),
    "SFT raises the reward":
        lambda b: _excludes_zero(b.stages["reward"]["sft"], +1),
    "RL after SFT raises the reward further":
        lambda b: _excludes_zero(b.stages["reward"]["rl"], +1),
    "SFT raises the celebration share":
        lambda b: _excludes_zero(b.stages["celebration_share"]["sft"], +1),
    "RL after SFT raises the celebration share further":
        lambda b: _excludes_zero(b.stages["celebration_share"]["rl"], +1),
    "SFT lowers the entropy on the same texts":
        lambda b: _excludes_zero(b.stages["entropy"]["sft"], -1),
    "RL after SFT raises the entropy on the same texts":
        lambda b: _excludes_zero(b.stages["entropy"]["rl"], +1),
    "RL after SFT lowers the entropy on the same texts":
        lambda b: _excludes_zero(b.stages["entropy"]["rl"], -1),
    "the base and SFT are near uniform on the chance scenes (TVD < 0.15)":
        lambda b: max(b.values["base"]["chance_tvd"]["value"],
                      b.values["sft"]["chance_tvd"]["value"]) < 0.15,
    "RL from the base learns (reward CI above the base's by 0.3)":
        lambda b: b.values["rl-from-base"]["reward"]["ci_low"]
        > b.values["base"]["reward"]["ci_high"] + 0.3,
    "RL from the base collapses onto the celebration attractor (share > 0.5)":
        lambda b: b.values["rl-from-base"]["celebration_share"]["value"] > 0.5,
    "RL from the base collapses the chance scenes (TVD above the base's by 0.1)":
        lambda b: b.values["rl-from-base"]["chance_tvd"]["ci_low"]
        > b.values["base"]["chance_tvd"]["ci_high"] + 0.1,
}
#: The finding whose failure counts as "RL from the base did not learn".
RL_FROM_BASE_LEARNS = "RL from the base learns (reward CI above the base's by 0.3)"


def _spread(estimates: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    values = [float(e["value"]) for e in estimates]
    halves = [(float(e["ci_high"]) - float(e["ci_low"])) / 2 for e in estimates]
    return {"mean": statistics.fmean(values),
            "sd": statistics.stdev(values) if len(values) > 1 else 0.0,
            "min": min(values), "max": max(values), "n_builds": len(values),
            "prompt_ci_halfwidth": statistics.median(halves)}


def seeds_summary(builds: Sequence[Build]) -> dict[str, Any]:
    """The summary ``run_organism_seeds`` writes, from the builds' numbers."""
    if len(builds) < 2:
        raise ValueError(f"training variance needs at least 2 builds, got {len(builds)}")
    findings: list[dict[str, Any]] = []
    for text, test in FINDINGS.items():
        held = [b.label for b in builds if test(b)]
        findings.append({"finding": text, "held": len(held), "n_builds": len(builds),
                         "held_in": held,
                         "failed_in": [b.label for b in builds if b.label not in held]})
    failed = next(f for f in findings if f["finding"] == RL_FROM_BASE_LEARNS)["failed_in"]
    return {
        "n_builds": len(builds),
        "builds": [{"label": b.label, "seed": b.seed, "kernels": b.kernels,
                    "organism_id": b.organism_id, "base_val_loss": b.base_val_loss}
                   for b in builds],
        "spread": {m: {k: _spread([b.values[m][k] for b in builds]) for k in METRICS}
                   for m in MODELS},
        "stage_spread": {k: {s: _spread([b.stages[k][s] for b in builds])
                             for s in LINEAGE[1:]} for k in METRICS},
        "base_val_loss": {"values": [b.base_val_loss for b in builds],
                          "sd": statistics.stdev([b.base_val_loss for b in builds])},
        "findings": findings,
        "rl_from_base_failed": {"builds": failed, "n": len(failed),
                                "n_builds": len(builds)},
    }


def _frames(builds: Sequence[Build]) -> tuple[pd.DataFrame, pd.DataFrame]:
    rows = [{"build": b.label, "seed": b.seed, "kernels": b.kernels, "model": m, "metric": k,
             **{f: b.values[m][k][f] for f in ("value", "ci_low", "ci_high", "n")}}
            for b in builds for m in MODELS for k in METRICS]
    stage_rows = [{"build": b.label, "seed": b.seed, "kernels": b.kernels, "metric": k,
                   "stage": s, **b.stages[k][s]}
                  for b in builds for k in METRICS for s in LINEAGE[1:]]
    return pd.DataFrame(rows), pd.DataFrame(stage_rows)


def seeds_figure(builds: Sequence[Build]) -> Any:
    """Per metric, every build's value for every model with its prompt CI."""
    panels = [Figure(f"seeds_{k}", k.replace("_", " "), "bar", list(MODELS),
                     [Series.of(b.label, [b.values[m][k] for m in MODELS]) for b in builds],
                     ylabel=k.replace("_", " "), on_page=False) for k in METRICS]
    return small_multiples(
        "seeds", "The organism's headline numbers in every build (95% CIs over prompts)",
        panels, caption="One bar per build (seed and CPU kernels). Bars of one model that "
        "differ by more than their CIs are training variance the prompt CIs do not show.")


def run_organism_seeds(builds: Sequence[Organism], out: Path, *,
                       labels: Sequence[str] | None = None) -> dict[str, Any]:
    """Compare builds of the organism recipe (``builds``: finished builds, e.g. one per
    seed) and write ``OUT/summary.json``, ``OUT/data/{builds,stages}.*`` and
    ``OUT/figures/seeds.*``; returns the summary."""
    read = [read_build(org, None if labels is None else labels[i])
            for i, org in enumerate(builds)]
    summary = seeds_summary(read)
    out.mkdir(parents=True, exist_ok=True)
    values, stages = _frames(read)
    write_table(values, out / "data", "builds")
    write_table(stages, out / "data", "stages")
    seeds_figure(read).save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    return summary
