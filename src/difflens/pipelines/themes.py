"""``difflens themes sample|fit|chains|predict|evaluate``: themes of sampled continuations,
their chains, and how well the prompt's activations predict them.

Every step reads what the earlier steps left in ``OUT`` and merges its keys into
``OUT/summary.json``; ``run_themes`` with ``ThemesConfig(steps=STEPS)`` (the default) runs them all.

- ``sample``: K continuations per prompt per model (batched, seeded), stored with token ids
  and text in ``OUT/samples/<model>/`` one part per batch, so a rerun resumes;
- ``fit``: segments -> embeddings -> themes (``OUT/themes.safetensors`` + ``.json``);
- ``chains``: theme chains per continuation and per-prompt distributions;
- ``predict``: probes per layer, the chain transformer and the baselines, split by prompt;
- ``evaluate``: for the organism, the world's ground truth (ARI, transition matrix, KL to
  the true next-theme distribution, base vs tuned shift), and the report.

Two more steps run only when asked (they are not in ``STEPS``, so ``all`` and the
demo leave them out):

- ``consistency``: themes fitted on a second, independent sample set of the same prompts
  (another seed), and the ARI between the two fits on both sets' segments
  (``consistency.resample_ari``, CI over prompts);
- ``generalisation``: the first-theme predictors with each group of prompts held out in turn
  (``ThemesConfig.groups``, default the organism's start themes), against random folds of
  the same sizes (``prediction.generalisation``).

This module holds the run (and re-exports ``ThemesConfig``, defined in
``theme_config`` so that every step module can import it); the
steps' work is in ``theme_steps`` (sample, segments, chains),
``theme_prediction`` (predict) and
``theme_truth`` (evaluate), the figures and the page in
``difflens.report.themes``.
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from difflens._io import check_writable, write_json_atomic
from difflens.analysis.summary_spelling import respell
from difflens.analysis.themes import (
    OUTLIER,
    ChainDistributions,
    ThemeModel,
    chain_distributions,
    chat_labeller,
    fit_themes,
    load_theme_model,
)
from difflens.errors import InputError
from difflens.models.encoders import embedder
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.models.wrapping import Models, as_models
from difflens.pipelines.result import InstrumentResult
from difflens.pipelines.theme_config import EXTRA_STEPS, STEPS, ThemesConfig
from difflens.pipelines.theme_prediction import predict_generalisation, predict_themes
from difflens.pipelines.theme_steps import (
    chain_summary,
    chains_of,
    resample_seed,
    sample_continuations,
    segments_of,
    stored_themes,
    theme_consistency,
)
from difflens.pipelines.theme_truth import organism_validation
from difflens.report.figures import AnyFigure, write_index
from difflens.report.tables import write_table
from difflens.report.themes import (
    calibration_figure,
    consistency_figure,
    flow_figure,
    generalisation_figure,
    headline,
    intro_html,
    layer_sweep_figure,
    theme_map_figure,
)


@dataclasses.dataclass(frozen=True)
class ThemesResult(InstrumentResult):
    """What ``run_themes`` wrote: the merged summary and this run's figures."""


ThemesRun = ThemesResult  # the name of earlier releases


# -- the run ------------------------------------------------------------------------------


def run_themes(models: "LoadedModel | ModelPair | ModelSet | Models", prompts: Sequence[str],
               out: Path, config: ThemesConfig = ThemesConfig(), *, progress: bool = False,
               index: bool = True, tokenizer: Any = None) -> ThemesResult:
    """Run ``config.steps`` on ``prompts`` into ``out``; later steps reuse what earlier ones
    stored there. ``config.truth`` and ``config.groups``, where given, have one entry per
    prompt."""
    target = as_models(models, tokenizer=tokenizer)
    from difflens._io import rich_progress

    config = dataclasses.replace(config, prompts=tuple(prompts))
    steps = config.steps
    groups = config.groups if config.groups is not None else config.truth
    if "generalisation" in steps and groups is None:
        raise InputError("the generalisation step holds out groups of prompts; give "
                         "ThemesConfig.groups (one group per prompt) or use --organism N")
    if not config.prompts:
        raise InputError("no usable prompts; pass --prompts FILE with at least one prompt")
    by_name = models_of(target)
    check_writable(out)
    data, figdir = out / "data", out / "figures"
    spath = out / "summary.json"
    # an earlier step's summary (of an older difflens too: in the one spelling)
    summary: dict[str, Any] = respell(json.loads(spath.read_text())) if spath.is_file() else {}
    summary.update({"models": {k: m.identity.name for k, m in by_name.items()},
                    "n_prompts": len(config.prompts), "k_samples": config.k_samples})
    figures: list[AnyFigure] = []
    with rich_progress(progress) as rich_bar:
        def bar(desc: str, total: int) -> Callable[[int], None]:
            step = rich_bar(desc, total)
            return lambda n: step(n, "")

        samples: dict[str, pd.DataFrame] = {}
        need_samples = {*STEPS, *EXTRA_STEPS} & set(steps)
        if need_samples:
            for label, lm in by_name.items():
                samples[label] = sample_continuations(
                    lm, label, config, out / "samples",
                    bar(f"themes: sampling {label}", len(config.prompts))
                    if "sample" in steps else None)
            allsamp = pd.concat(samples.values(), ignore_index=True)
            write_table(allsamp.drop(columns=["token_ids"]), data, "samples")
            summary["n_continuations"] = int(len(allsamp))
            summary["empty_continuations"] = int((allsamp["text"].str.strip() == "").sum())
        segs = segments_of(samples, config, next(iter(by_name.values())))
        model_path = out / "themes.safetensors"
        if "fit" in steps:
            if segs.empty:
                raise InputError("every continuation is empty; no segments to fit themes on")
            advance = bar("themes: embed + cluster", 1)
            labeller = (chat_labeller(config.labeller_url, config.labeller_model)
                        if config.labeller_url else None)
            fit = fit_themes(segs["text"].tolist(), encoder=embedder(config.encoder),
                             encoder_name=(config.encoder if isinstance(config.encoder, str)
                                           else "callable"),
                             method=config.method, k_range=(config.k_min, config.k_max),
                             seed=config.seed, min_cluster_size=config.min_cluster_size,
                             labeller=labeller)
            fit.model.save(model_path)
            segs["theme"] = fit.labels
            advance(1)
            summary["n_themes"] = fit.model.k
            summary["n_segments"] = int(len(segs))
            summary["outlier_share"] = float((fit.labels == OUTLIER).mean())
            summary["silhouette"] = fit.model.silhouette
            summary["themes"] = [{"theme": t, "name": fit.model.names[t],
                                  "keywords": fit.model.keywords[t],
                                  "examples": fit.model.examples[t], "size": fit.model.sizes[t]}
                                 for t in range(fit.model.k)]
            write_table(pd.DataFrame(summary["themes"]).assign(
                keywords=lambda d: d["keywords"].map(", ".join),
                examples=lambda d: d["examples"].map(" | ".join)), data, "themes")
            figures.append(theme_map_figure(fit.embeddings, fit.labels, fit.model, config.seed))
        theme_model: ThemeModel | None = None
        if {"chains", "predict", "evaluate", "generalisation"} & set(steps) or "fit" in steps:
            theme_model = load_theme_model(model_path)
            if "theme" not in segs:
                segs["theme"] = stored_themes(data / "segments.parquet", segs)
            if segs["theme"].isna().any():  # not stored for these segments: assign them
                segs["theme"] = (theme_model.assign(segs["text"].tolist(),
                                                    encoder=embedder(config.encoder))
                                 if len(segs) else [])
            write_table(segs, data, "segments")
        dists: dict[str, ChainDistributions] = {}
        chains_by: dict[str, list[list[tuple[int, ...]]]] = {}
        if theme_model is not None and \
                {"chains", "predict", "evaluate", "generalisation"} & set(steps):
            k = theme_model.k
            for label, df in samples.items():
                chains_by[label] = chains_of(df, segs[segs["model"] == label], config)
                dists[label] = chain_distributions(chains_by[label], k, m=config.max_chain)
            if "chains" in steps:
                rows = [{"model": label, "prompt_idx": i, "sample": j,
                         "chain": " > ".join(theme_model.names[t] if t >= 0 else "outlier"
                                             for t in ch), "length": len(ch)}
                        for label, chs in chains_by.items()
                        for i, per in enumerate(chs) for j, ch in enumerate(per)]
                write_table(pd.DataFrame(rows), data, "chains")
                summary["chains"] = {label: chain_summary(d, chains_by[label], config)
                                     for label, d in dists.items()}
                figures.append(flow_figure(dists, theme_model, config.max_chain))
        if "predict" in steps and theme_model is not None:
            label, lm = next(iter(by_name.items()))
            advance = bar("themes: predictors", 1)
            pred = predict_themes(lm, config, dists[label], chains_by[label])
            advance(1)
            summary["predict_model"] = label
            summary["predictors"] = pred["predictors"]
            summary["baselines"] = pred["baselines"]
            summary["best_layer"] = pred["best_layer"]
            summary["transformer_layer"] = pred["transformer_layer"]
            summary["top_chains"] = pred["top_chains"]
            write_table(pd.DataFrame(pred["rows"]), data, "predictions")
            figures += [layer_sweep_figure(pred), calibration_figure(pred)]
        if "generalisation" in steps and theme_model is not None:
            assert groups is not None
            label, lm = next(iter(by_name.items()))
            advance = bar("themes: generalisation", 1)
            gen = predict_generalisation(lm, config, dists[label], groups)
            advance(1)
            summary.setdefault("prediction", {})["generalisation"] = {
                "model": label, **gen,
                "grouping": ("ThemesConfig.groups" if config.groups is not None
                             else "the world's theme of the prompt's last sentence")}
            figures.append(generalisation_figure(gen))
        if "consistency" in steps:
            label, lm = next(iter(by_name.items()))
            cons, fit_a, fit_b, both = theme_consistency(
                lm, label, samples[label], config, out / "samples",
                bar(f"themes: second sample set ({label})", len(config.prompts)))
            write_table(both, data, "consistency_segments")
            summary["consistency"] = {
                "model": label, "seeds": [config.seed, resample_seed(config)],
                "k": [fit_a.k, fit_b.k],
                "resample_ari": {**cons.estimate.to_json(), "n_segments": cons.n_segments,
                                 "n_prompts": cons.n_prompts}}
            figures.append(consistency_figure(cons, fit_a, fit_b))
        if "evaluate" in steps and theme_model is not None and config.truth is not None:
            pred_path = data / "predictions.parquet"
            preds = pd.read_parquet(pred_path) if pred_path.is_file() else None
            summary["organism"] = organism_validation(segs, theme_model, dists, chains_by,
                                                      config, preds)
    for fig in figures:
        fig.save(figdir)
    summary["config"] = {k: (v if k != "encoder" or isinstance(v, str) else "callable")
                         for k, v in dataclasses.asdict(config).items()
                         if k not in ("prompts", "truth", "groups", "steps")
                         and not (k == "resample_seed" and v is None)}
    write_json_atomic(spath, summary)
    if index:
        write_index(out / "index.html", "difflens themes", intro_html(summary), figures,
                    headline(summary))
    return ThemesResult(out=out, summary_json=summary, figures=figures)
