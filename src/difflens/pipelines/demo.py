"""The demo: ``difflens compare`` on the organism's lineage (base -> SFT -> RL), with the
world's own inputs, and the organism's measured properties attributed to their stages.

Loads the shipped organism (or builds the one asked for, ``difflens.organism.build``), then
writes what ``run_compare`` writes (every section under ``OUT/<section>``,
``OUT/data/attribution.*``, ``OUT/figures``) plus the organism's own block:
``summary.json`` keys ``organism`` (each model's reward, entropy, celebration share and chance
TVD, each an estimate ``{value, ci_low, ci_high, n, resampled}``, the RL-from-base model
included), ``organism_build``, ``sft_question`` (does SFT on curated samples collapse the
chance scenes, and how much does RL add?) and ``attribution.organism_<metric>.<stage>``;
``OUT/index.html`` is the report.
"""

import shutil
import time
from pathlib import Path
from typing import Any

import pandas as pd

from difflens._io import check_writable, write_json_atomic
from difflens.analysis.attribution import Attribution, attribute
from difflens.analysis.bootstrap import Estimate
from difflens.models import ModelSet, load_model
from difflens.organism.build import (
    LINEAGE,
    PROPERTY_LABELS,
    Organism,
    OrganismConfig,
    load_organism,
)
from difflens.organism.measure import UNITS
from difflens.pipelines.compare import (
    N_BOOT,
    CompareConfig,
    CompareRun,
    run_compare,
    write_compare_index,
)
from difflens.pipelines.compare_inputs import organism_inputs
from difflens.report.demo import (
    HEADLINE_NAMES,
    MEAN_KEY,
    demo_headline,
    demo_intro,
    demo_takeaways,
    explore_links,
    organism_figures,
)
from difflens.report.tables import write_table

HEADLINE_KEYS = tuple(HEADLINE_NAMES)
#: Organism measurement (``measurements.parquet``) -> headline key.
MEASURED = {"reward": "reward", "entropy": "entropy", "celebration": "celebration_share",
            "chance_tvd": "chance_tvd"}
#: Every organism model in the order the demo shows it: the lineage, then RL from the base.
MODELS = (*LINEAGE, "rl-from-base")


def organism_summary(props: dict[str, Any], models: tuple[str, ...] = MODELS
                     ) -> dict[str, Any]:
    """``{model: {reward_mean, reward_n, entropy_mean, entropy_n, celebration_share,
    celebration_share_n, chance_tvd, chance_tvd_n, chance_tvd_by_kind}}``, by lineage name:
    each headline measure (``MEAN_KEY``) an estimate ``{value,
    ci_low, ci_high, n, resampled}``, with its ``n`` also under ``<key>_n``. ``props`` are
    ``Organism.properties<difflens.organism.build.Organism.properties>``."""
    out: dict[str, Any] = {}
    for name in models:
        label = PROPERTY_LABELS[name]
        if label not in props:  # a build of an older format
            continue
        row: dict[str, Any] = {}
        for key in HEADLINE_KEYS:
            v = props[label][key]
            row[MEAN_KEY[key]] = {**{k: v[k] for k in ("value", "ci_low", "ci_high", "n")},
                                  "resampled": v.get("resampled") or UNITS[key]}
            row[f"{key}_n"] = v["n"]
        row["chance_tvd_by_kind"] = {k: v["tvd"]["value"]
                                     for k, v in props[label]["chance_by_kind"].items()}
        out[name] = row
    return out


def organism_attribution(org: Organism, seed: int) -> dict[str, Attribution]:
    """Each measured property along base -> sft -> rl, paired over the same openings,
    texts and chance scenes."""
    units = org.measurements()
    labels = {PROPERTY_LABELS[n]: n for n in LINEAGE}
    out = {}
    for metric, key in MEASURED.items():
        rows = units[(units.metric == metric) & units.model.isin(list(labels))]
        wide = rows.pivot(index="unit", columns="model", values="value")
        out[f"organism_{metric}"] = attribute(
            {labels[c]: wide[c].to_numpy() for c in wide.columns}, LINEAGE, seed=seed,
            n_boot=N_BOOT, resampled=UNITS[key])
    return out


def sft_question(attributions: dict[str, Attribution]) -> dict[str, Any]:
    """Does SFT on curated samples collapse the chance scenes, and how much does RL add?
    Answered from the chance-TVD attribution, whatever it says: ``sft_delta`` and
    ``rl_delta`` are the stages' changes (estimates over the scenes), ``rl_share`` RL's
    share of the total."""
    a = attributions["organism_chance_tvd"]
    rows = {r["stage"]: r for r in a.table.to_dict("records")}
    sft, rl = rows["sft"], rows["rl"]

    def moved(r: dict[str, Any]) -> bool:
        return not r["ci_low"] <= 0 <= r["ci_high"]

    verdict = ("yes: SFT on curated samples moves the chance scenes away from uniform"
               if moved(sft) and sft["delta"] > 0 else
               "no: SFT on curated samples leaves the chance scenes where the base has them"
               " (its CI includes 0)" if not moved(sft) else
               "no: SFT moves the chance scenes towards uniform")
    def change(r: dict[str, Any]) -> dict[str, Any]:
        return Estimate(value=r["delta"], ci_low=r["ci_low"], ci_high=r["ci_high"],
                        n=int(r["n"]), resampled=a.resampled).to_json()

    return {"sft_delta": change(sft), "rl_delta": change(rl),
            "rl_share": None if rl["share"] != rl["share"] else rl["share"],
            "n_scenes": int(sft["n"]), "answer": verdict}


def organism_block(org: Organism) -> tuple[dict[str, Any], dict[str, Attribution]]:
    """The demo summary's organism part, read from the build's stored measurements (no
    model runs): ``organism`` (each model's headline estimates), ``attribution``
    (``organism_<metric>``) and ``sft_question``; with the attributions. On the shipped
    organism it is the same on every machine: what the demo prints as its headline."""
    attributions = organism_attribution(org, org.config.seed)
    return ({"organism": organism_summary(org.properties),
             "attribution": {k: a.summary() for k, a in attributions.items()},
             "sft_question": sft_question(attributions)}, attributions)


def demo_config(seed: int, small: bool = False) -> CompareConfig:
    """The demo's section options, by their command-line names, on each section's
    ``quick()`` preset (the reduced organism gets smaller ones)."""
    if small:
        return CompareConfig(
            seed=seed, collapse={"samples": 4, "max_new_tokens": 16},
            concepts={"alphas": (-0.5, 0.0, 0.5), "n_generations": 1},
            trajectories={"samples": 2, "max_new_tokens": 10, "method": "pca",
                          "min_count": 2},
            control={"max_new_tokens": 16, "samples": 1,
                     "controllers": (("open_loop", (0.5, 1.0)), ("rollback", (1.0,)))},
            themes={"samples": 4, "max_new_tokens": 24, "k_min": 3, "k_max": 6},
            discover={"samples": 1, "max_new_tokens": 12, "alphas": (0.0, 2.0),
                      "strengths": (1.0, 4.0), "scales": (1.0, 2.0), "n_boot": 200})
    return CompareConfig(
        seed=seed, collapse={"samples": 8, "max_new_tokens": 40, "prob_caps": ()},
        concepts={"alphas": (-0.5, -0.25, 0.0, 0.25, 0.5), "n_generations": 1},
        trajectories={"samples": 4, "max_new_tokens": 30, "method": "pca"},
        control={"max_new_tokens": 40, "samples": 2},
        # the world has 10 themes; k is still chosen by silhouette, within 6..14
        themes={"samples": 8, "max_new_tokens": 48, "k_min": 6, "k_max": 14})


def run_demo(out: Path, *, config: OrganismConfig | None = None, small: bool = False,
             progress: bool = False) -> dict[str, Any]:
    """Run the whole demo into ``out`` and return the summary: on the shipped organism
    (``config`` None), or on the build of ``config`` (built first when not cached)."""
    check_writable(out)  # fail in a second, not after a 5-minute organism build
    t0 = time.perf_counter()
    org = load_organism(config, small=small, progress=progress)
    t_build = time.perf_counter() - t0
    cfg = org.config
    models = ModelSet({name: load_model(org.model_path(name), device="cpu")
                       for name in LINEAGE})
    sizes: dict[str, Any] = (
        {"n_texts": 12, "n_concept_items": 60, "n_trajectory_prompts": 6,
         "n_collapse_prompts": 5, "n_control_prompts": 4, "n_theme_prompts": 24}
        if small else {})
    inputs = organism_inputs(out, cfg.seed, **sizes)
    run = run_compare(models, out, inputs, config=demo_config(cfg.seed, small),
                      progress=progress)
    summary = dict(run.summary)
    props = org.properties
    block, attributions = organism_block(org)
    summary["organism"] = block["organism"]
    summary["attribution"] = {**block["attribution"], **summary["attribution"]}
    table = pd.concat([a.table.assign(section="organism", metric=k)
                       for k, a in attributions.items()] + [run.attribution],
                      ignore_index=True)
    write_table(table, out / "data", "attribution")
    summary["sft_question"] = block["sft_question"]
    summary["organism_build"] = {"path": str(org.path), "times_s": org.build_info["times_s"],
                                 "organism_id": org.organism_id, "shipped": org.shipped,
                                 "base_val_loss": props["base_val_loss"],
                                 "base_params": org.build_info["base"]["params"],
                                 "build_seconds": t_build}
    summary["total_seconds"] = time.perf_counter() - t0
    write_json_atomic(out / "summary.json", summary)

    curves = {"rl": pd.read_csv(org.path / "rl_from_sft_curves.csv"),
              "rl-from-base": pd.read_csv(org.path / "rl_curves.csv")}
    figures = organism_figures(props, summary["organism"], table[table.section == "organism"],
                               curves)
    for fig in figures:
        fig.save(out / "figures")
    shutil.copy(org.path / "training_curves.png", out / "figures" / "training_curves.png")
    takeaways = demo_takeaways(summary)
    command, links = explore_links(str(out), models.names,
                                   models=(str(org.model_path("base")),
                                           str(org.model_path(LINEAGE[-1]))))
    write_compare_index(
        out, CompareRun(summary=summary, sections=run.sections, attribution=table),
        "difflens demo: the organism's lineage, base → SFT → RL", intro=demo_intro(summary),
        figures=figures, headline=demo_headline(summary),
        images=[("Training curves", out / "figures" / "training_curves.png")],
        takeaways=takeaways, links=links, explore_command=command)
    return summary
