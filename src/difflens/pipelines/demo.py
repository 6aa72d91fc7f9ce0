"""The demo: build the organism if needed, run capture and every analysis, write a report.

Writes ``OUT/index.html`` (self-contained), ``OUT/summary.json`` with the headline
figures, ``OUT/data/*.parquet`` (+ CSV), ``OUT/figures/*.html`` and ``*.png``, and the
capture store ``OUT/capture``. The organism's figures and the page's intro and headline
are drawn by :mod:`difflens.report.demo`; each section's by its own report module.
"""

import json
import shutil
from pathlib import Path
from typing import Any

import pandas as pd

from difflens._io import check_writable, write_bytes_atomic, write_json_atomic
from difflens.analysis.divergence import summarize_pair_stats
from difflens.capture import capture
from difflens.capture.store import layer_divergence
from difflens.inputs.ab_items import load_ab_dataset
from difflens.models import LoadedModel, ModelPair, load_model
from difflens.organism import world as W
from difflens.organism.build import Organism, OrganismConfig, build_organism
from difflens.organism.truth import organism_theme_prompts
from difflens.pipelines.collapse import CollapseConfig, CollapseRun, run_collapse
from difflens.pipelines.concepts import ConceptsRun, run_concepts
from difflens.pipelines.control import ControlRun, run_control_evaluation, run_probe_training
from difflens.pipelines.themes import ThemesConfig, ThemesRun, run_themes
from difflens.pipelines.trajectories import TrajectoriesRun, run_trajectories
from difflens.report.collapse import intro_html as collapse_intro
from difflens.report.concepts import intro_html as concepts_intro
from difflens.report.control import control_intro
from difflens.report.demo import (
    demo_figures,
    demo_headline,
    demo_intro,
    demo_takeaways,
    explore_links,
)
from difflens.report.figures import Section, write_index
from difflens.report.tables import write_table
from difflens.report.themes import intro_html as themes_intro
from difflens.report.trajectories import intro_html as trajectories_intro

N_CONCEPT_ITEMS = 400
HEADLINE_KEYS = ("reward", "entropy", "celebration_share", "chance_tvd")
#: The summary key of each headline's mean (the issue's names); ``_ci95``/``_n`` follow it.
MEAN_KEY = {"reward": "reward_mean", "entropy": "entropy_mean",
            "celebration_share": "celebration_share", "chance_tvd": "chance_tvd"}
#: Each chance kind's outcomes in their natural order (the JSON files sort keys).
OUTCOME_ORDER = {kind: list(outs) for outs, kind in W.CHANCE_SLOTS.values()}


def organism_summary(props: dict[str, Any]) -> dict[str, Any]:
    """``{base|tuned: {reward_mean, reward_ci95, reward_n, entropy_mean, ...,
    celebration_share, celebration_share_ci95, ..., chance_tvd, ...}}``."""
    out: dict[str, Any] = {}
    for label in ("base", "tuned"):
        row: dict[str, Any] = {}
        for key in HEADLINE_KEYS:
            v = props[label][key]
            row[MEAN_KEY[key]], row[f"{key}_ci95"], row[f"{key}_n"] = v["mean"], v["ci95"], v["n"]
        row["chance_tvd_by_kind"] = {k: v["tvd"]["mean"]
                                     for k, v in props[label]["chance_by_kind"].items()}
        out[label] = row
    return out


def run_demo(out: Path, *, config: OrganismConfig | None = None, n_stories: int = 200,
             n_concept_items: int = N_CONCEPT_ITEMS, n_trajectory_prompts: int = 40,
             n_collapse_prompts: int = 24, n_control_prompts: int = 32,
             n_theme_prompts: int = 300, theme_samples: int = 16,
             progress: bool = False) -> dict[str, Any]:
    """Run the whole demo into ``out`` and return the summary."""
    check_writable(out)  # fail in a second, not after a 2-minute organism build
    org: Organism = build_organism(config, progress=progress)
    props, cfg = org.properties, org.config
    base = load_model(org.base_path, device="cpu")
    tuned = load_model(org.tuned_path, device="cpu")
    stories = [json.loads(line)["text"] for line in
               (org.path / "ground_truth" / "heldout_stories.jsonl").read_text().splitlines()]
    stories = stories[:n_stories]
    store = capture(ModelPair(base, tuned), stories, store=out / "capture", progress=progress,
                    store_dtype="float16")
    stats = store.stats(["prompt_idx", "pos", "token", "base_entropy", "tuned_entropy",
                         "kl_tuned_base", "kl_base_tuned", "top1_agree"])
    pair = summarize_pair_stats(stats, seed=cfg.seed)
    layers = layer_divergence(store)

    data = out / "data"
    write_table(stats, data, "per_token")
    write_table(pd.DataFrame(layers), data, "layers")
    chance_rows = []
    for label in ("base", "tuned"):
        for kind, v in props[label]["chance_by_kind"].items():
            dist = v["mean_distribution"]
            chance_rows += [{"model": label, "kind": kind, "outcome": o, "p": p,
                             "uniform": 1 / len(dist), "tvd_mean": v["tvd"]["mean"],
                             "mass_outside_mean": v["mass_outside"]["mean"]}
                            for o, p in dist.items()]
    write_table(pd.DataFrame(chance_rows), data, "chance")
    curves = pd.read_csv(org.path / "rl_curves.csv")
    write_table(curves, data, "rl_curves")

    figures = demo_figures(props, stats, layers, curves, cfg.seed, keys=HEADLINE_KEYS,
                           outcome_order=OUTCOME_ORDER)
    for fig in figures:
        fig.save(out / "figures")
    shutil.copy(org.path / "training_curves.png", out / "figures" / "training_curves.png")

    summary: dict[str, Any] = {
        "organism": organism_summary(props),
        "organism_build": {"path": str(org.path), "times_s": org.build_info["times_s"],
                           "base_val_loss": props["base_val_loss"],
                           "base_params": org.build_info["base"]["params"]},
        "pair": pair,
        "layers": layers,
        "capture": {"path": str(store.path), "n_prompts": store.n_prompts,
                    "n_tokens": store.n_tokens},
    }
    concepts = _concepts_section(out / "concepts", base, tuned, cfg.seed, n_concept_items,
                                 progress)
    summary["concepts"] = concepts.summary
    trajectories = _trajectories_section(out / "trajectories", base, tuned, cfg.seed,
                                         n_trajectory_prompts, progress)
    summary["trajectories"] = trajectories.summary
    collapse = _collapse_section(out / "collapse", base, tuned, cfg.seed, n_collapse_prompts,
                                 progress)
    summary["collapse"] = collapse.summary
    control = _control_section(out / "control", base, cfg.seed, n_control_prompts, progress)
    summary["control"] = control.summary
    themes = _themes_section(out / "themes", base, tuned, cfg.seed, n_theme_prompts,
                             theme_samples, progress)
    summary["themes"] = themes.summary
    write_json_atomic(out / "summary.json", summary)
    intro = demo_intro(props, summary["organism"])
    headline = demo_headline(props, pair, concepts.summary, HEADLINE_KEYS)
    takeaways = demo_takeaways(summary, MEAN_KEY)
    command, links = explore_links(str(out), models=(str(org.base_path), str(org.tuned_path)))
    write_index(out / "index.html", "difflens demo: base vs RL-tuned organism", intro, figures,
                headline, images=[("Training curves", out / "figures" / "training_curves.png")],
                takeaways=takeaways["Overview"], links=links, explore_command=command,
                sections=[Section(heading, text, run.figures, takeaways[heading])
                          for heading, text, run in (
                              ("Concepts: kind vs cruel", concepts_intro(concepts.summary),
                               concepts),
                              ("Trajectories", trajectories_intro(trajectories.summary),
                               trajectories),
                              ("Mode collapse", collapse_intro(collapse.summary), collapse),
                              ("Control", control_intro(control.summary), control),
                              ("Themes", themes_intro(themes.summary), themes))])
    return summary


def _collapse_section(out: Path, base: LoadedModel, tuned: LoadedModel, seed: int,
                      n_prompts: int, progress: bool) -> CollapseRun:
    """Every collapse step on the organism: the world's own chance scenes are the probes
    (their true distribution is uniform), held-out story text is the Fréchet reference."""
    out.mkdir(parents=True, exist_ok=True)
    probe_file = out / "world_chance_probes.jsonl"
    scenes = W.chance_prompts(40, seed=seed + 17)
    write_bytes_atomic(probe_file, "".join(json.dumps(
        {"probe": sc.kind, "phrasing": f"scene{i}", "prompt": sc.prefix,
         "answers": list(sc.outcomes)}) + "\n" for i, sc in enumerate(scenes)).encode())
    stories = W.generate_stories(n_prompts + 200, seed=seed + 13)
    openings = tuple(st.sentences[0] for st in stories[:n_prompts])
    reference = tuple(" ".join(st.sentences[1:4]) for st in stories[n_prompts:]
                      if len(st.sentences) > 1)
    config = CollapseConfig(prompts=openings, probes=str(probe_file), tree_prompt=openings[0],
                            max_new_tokens=40, k_samples=8, reference=reference,
                            prob_caps=(0.5, 0.25),
                            reference_name="held-out world stories (sentences 2-4)",
                            seed=seed)
    return run_collapse(ModelPair(base, tuned), out, config=config, progress=progress,
                        index=False)


def _control_section(out: Path, base: LoadedModel, seed: int, n_prompts: int,
                     progress: bool) -> ControlRun:
    """Monitoring and control of the base organism: a probe for the world's danger and loss
    sentences, and every controller on openings that lead towards danger, graded by the
    probe and independently by the world's theme labeller."""
    from difflens._io import rich_progress
    from difflens.control.evaluate import ControlConfig
    from difflens.organism.truth import organism_labelled, organism_measure, organism_openings
    from difflens.sampling.generate import GenerationConfig

    examples = organism_labelled(300, seed=seed + 101)
    k = 4
    config = ControlConfig(
        gains=(("open_loop", (0.25, 0.5, 1.0)), ("proportional", (0.5, 1.0, 2.0)),
               ("rollback", (0.5, 1.0))),
        k_samples=k, seed=seed, generation=GenerationConfig(max_new_tokens=40, batch_size=32))
    prompts = organism_openings(n_prompts, seed=seed + 99)
    with rich_progress(progress) as bar:
        step = bar("control: probe", len(examples))
        fit, probe_figs = run_probe_training(base, examples, out, source=(
            "300 world stories, every sentence labelled by its true theme; bad = danger, loss"),
            progress=lambda n: step(n, ""), index=False)
        step = bar("control: generating", len(prompts) * k * len(config.controllers()))
        run = run_control_evaluation(base, fit.probe, prompts, out, config=config,
                                     independent=organism_measure(),
                                     independent_name="world theme labeller",
                                     progress=lambda n: step(n, ""), index=False)
    return ControlRun(summary=run.summary, figures=[*probe_figs, *run.figures])


def _themes_section(out: Path, base: LoadedModel, tuned: LoadedModel, seed: int,
                    n_prompts: int, k_samples: int, progress: bool) -> ThemesRun:
    """Themes of both models' continuations of held-out world openings, chains, predictors
    on the base, and the world's ground truth."""
    prompts, truth = organism_theme_prompts(n_prompts, seed=seed + 555)
    # the world has 10 themes; k is still chosen by silhouette, within 6..14
    config = ThemesConfig(prompts=prompts, truth=truth, k_samples=k_samples,
                          max_new_tokens=48, seed=seed, k_min=6, k_max=14)
    return run_themes(ModelPair(base, tuned), out, config=config, progress=progress,
                      index=False)


def _trajectories_section(out: Path, base: LoadedModel, tuned: LoadedModel, seed: int,
                          n_prompts: int, progress: bool) -> TrajectoriesRun:
    """Paths of held-out openings and 4 sampled continuations per model, on one sphere."""
    stories = W.generate_stories(n_prompts, seed=seed + 11)
    openings = [st.sentences[0] for st in stories]
    return run_trajectories(ModelPair(base, tuned), openings, out, continuations=4,
                            max_new_tokens=30, method="umap", seed=seed, min_count=5,
                            progress=progress)


def _concepts_section(out: Path, base: LoadedModel, tuned: LoadedModel, seed: int,
                      n_items: int, progress: bool) -> ConceptsRun:
    """Concept vectors of the organism pair from the world's kind-vs-cruel items."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "kind_vs_cruel.jsonl"
    items = W.kind_cruel_items(n_items, seed=seed + 7)
    write_bytes_atomic(path, "".join(json.dumps(i) + "\n" for i in items).encode())
    dataset = load_ab_dataset(path)
    return run_concepts(ModelPair(base, tuned), dataset, out, position="last",
                        test_fraction=0.3, seed=seed, alpha_unit="residual",
                        alphas=(-0.5, -0.25, -0.1, 0.0, 0.1, 0.25, 0.5),
                        n_generations=2, progress=progress, index=False)
