"""The concepts pipeline behind ``difflens concepts`` and the demo's "Concepts" section.

``run_concepts`` extracts concept vectors (activations are cached in
``OUT/activations`` so that ``extract``, ``compare`` and ``steer`` on the same output folder
run the models once), compares them, measures the steering dose-response, and writes
``OUT/summary.json``, ``OUT/vectors.safetensors``, tables as Parquet + CSV under
``OUT/data``, figures as HTML + PNG under ``OUT/figures`` and ``OUT/index.html`` (the
figures and the page are drawn by ``difflens.report.concepts``).

The target is one model, a pair (``base``/``tuned``) or a model set (a lineage, base first:
every model is extracted, compared and steered under its own name, and the ``compare`` step
adds each later model's cosine with the base and its attribution to the lineage's stages).
"""

import dataclasses
import functools
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._config import option
from difflens._io import check_writable, write_json_atomic
from difflens.analysis.attribution import Attribution
from difflens.analysis.bootstrap import bootstrap_mean
from difflens.analysis.concept_stats import LineageCosines, attribution_metric, best_layer
from difflens.analysis.summary_spelling import ESTIMATE_KEYS, respell
from difflens.capture.concepts import (
    ConceptExtraction,
    compare_concepts,
    cosine_vs_base,
    extract_concepts,
)
from difflens.control.steering import dose_response, greedy_texts, steering
from difflens.errors import InputError
from difflens.inputs.ab_items import ABDataset, tokenize_items
from difflens.models.layers import parse_layer_list
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.models.wrapping import Models, as_models
from difflens.pipelines.result import InstrumentResult
from difflens.report.concepts import (
    behaviours_figure,
    compare_figures,
    consecutive_figure,
    dose_figure,
    headline,
    intro_html,
    lineage_figures,
    separation_figures,
)
from difflens.report.figures import COLORS, AnyFigure, use_lineage_colors, write_index
from difflens.report.tables import write_table

STEPS = ("extract", "compare", "steer")


@dataclasses.dataclass(frozen=True)
class ConceptsResult(InstrumentResult):
    """What ``run_concepts`` wrote: the summary, the figures, the extraction."""

    extraction: ConceptExtraction | None = None
    attributions: dict[str, Attribution] = dataclasses.field(default_factory=dict)
    """A model set's attribution of the cosine with the base to the lineage's stages, by
    metric (``concept_cosine_L<layer>``); empty for one model or a pair, or without the
    ``compare`` step."""
    attribution_table: pd.DataFrame | None = None
    """The same as one table, a row per layer and stage (``metric``, ``layer`` and
    ``COLUMNS``), as in ``data/attribution_concepts``;
    None where ``attributions`` is empty."""


ConceptsRun = ConceptsResult  # the name of earlier releases


DEFAULT_ALPHAS = (-4.0, -2.0, -1.0, 0.0, 1.0, 2.0, 4.0)
#: ``vector``: alpha multiplies the concept vector itself (the CAA convention; alpha=1 adds
#: the mean matching-minus-non-matching difference). ``residual``: the vector is rescaled to
#: the mean norm of the residual stream at that layer (over all items' read positions), so
#: alpha=0.1 adds 10% of a typical state's norm, comparable across layers and models.
ALPHA_UNITS = ("vector", "residual")


@dataclasses.dataclass(frozen=True)
class ConceptsConfig:
    """Every setting of a concepts run; each default is here only (the CLI's options and
    ``compare.toml``'s ``[concepts]`` table are these fields, under their flag names)."""

    steps: tuple[str, ...] = option(STEPS, flag="--steps", cli=False, help="Steps to run: "
                                    "extract, compare, steer (the CLI's verb chooses them).")
    layers: str | tuple[int, ...] = option("all", flag="--layers", parse=parse_layer_list,
                                           help="'all' or a list like 0,3,5.")
    position: str = option("answer", flag="--position", help="answer (the answer letter) | "
                           "last.")
    method: str = option("mean_diff", flag="--method", help="mean_diff (CAA) | pca.")
    chat: bool | None = option(None, flag="--chat/--no-chat", help="Wrap in the chat "
                               "template (default: if the tokenizer has one).")
    test_fraction: float = option(0.2, flag="--test-fraction", help="Held-out share of "
                                  "items.")
    seed: int = option(0, flag="--seed", help="Seed of the split and the bootstraps.")
    steer_layers: tuple[int, ...] = option((), flag="--steer-layers", help="Layers to steer "
                                           "(default: the best + 1/3, 2/3 depth).")
    alphas: tuple[float, ...] = option(DEFAULT_ALPHAS, flag="--alphas", help="Steering "
                                       "multipliers.")
    alpha_unit: str = option("vector", flag="--alpha-unit", help="vector (alpha x the concept "
                             "vector, CAA) | residual (alpha x the layer's mean residual "
                             "norm, along the vector).")
    n_generations: int = option(3, flag="--n-generations", help="Steered greedy generations "
                                "to show.")
    max_new_tokens: int = option(24, flag="--max-new-tokens", help="Tokens per steered "
                                 "generation.")
    batch_size: int = option(32, flag="--batch-size", help="Most inputs per forward pass.")
    n_boot: int = option(500, flag="--n-boot", help="Bootstrap resamples of each CI.")
    settle_threshold: float = option(0.9, flag="--settle-threshold", help="compare: the least "
                                     "cosine between consecutive layers' vectors that counts "
                                     "as settled (the settling layer).")

    def __post_init__(self) -> None:
        from difflens.capture.concepts import METHODS
        from difflens.inputs.ab_items import POSITIONS

        if self.position not in POSITIONS:
            raise InputError(f"--position must be one of {', '.join(POSITIONS)}, got "
                             f"{self.position!r}")
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, got "
                             f"{self.method!r}")
        if self.alpha_unit not in ALPHA_UNITS:
            raise InputError(f"--alpha-unit must be one of {', '.join(ALPHA_UNITS)}, got "
                             f"{self.alpha_unit!r}")
        if not -1.0 <= self.settle_threshold <= 1.0:
            raise InputError(f"--settle-threshold is a cosine, in [-1, 1]; got "
                             f"{self.settle_threshold}")
        if not 0 <= self.test_fraction < 1:
            raise InputError(f"--test-fraction must be in [0, 1), got {self.test_fraction}")
        bad = [s for s in self.steps if s not in STEPS]
        if bad:
            raise InputError(f"unknown step {bad[0]!r}; steps are {', '.join(STEPS)}")

    @classmethod
    def quick(cls) -> "ConceptsConfig":
        """``difflens compare``'s setting: the last token's state (the built-in items are
        free text, with no answer letter), 30% held out, alpha in units of the residual
        norm (comparable across the lineage's models), two generations."""
        return cls(position="last", test_fraction=0.3, alpha_unit="residual",
                   n_generations=2)


def steering_vector(ex: ConceptExtraction, label: str, layer: int, unit: str) -> Any:
    """The vector that alpha multiplies, in ``unit`` (see ``ALPHA_UNITS``)."""
    v = ex.vectors.layer(label, layer)
    if unit == "vector":
        return v
    j = ex.layers.index(layer)
    scale = float(ex.acts[label][:, :, j].norm(dim=-1).mean())
    norm = float(v.norm())
    if norm == 0.0:
        raise InputError(f"the concept vector of {label} at layer {layer} is zero; choose "
                         f"another layer to steer")
    return v * (scale / norm)


def default_steer_layers(n_layers: int, separation: Sequence[dict[str, Any]]) -> list[int]:
    """The best-separating layer plus the layers at 1/3 and 2/3 depth."""
    layers = {max(1, round(n_layers / 3)), max(1, round(2 * n_layers / 3))}
    if separation:
        layers.add(best_layer(separation))
    return sorted(layers)


def run_concepts(
    models: "LoadedModel | ModelPair | ModelSet | Models",
    dataset: ABDataset,
    out: Path,
    config: ConceptsConfig = ConceptsConfig(),
    *,
    progress: bool = False,
    index: bool = True,
    tokenizer: Any = None,
) -> ConceptsResult:
    """Run ``config.steps`` of the concepts pipeline on ``dataset`` into ``out``.

    ``config.settle_threshold``: the least consecutive-layer cosine that counts as settled
    (``settling_layer`` in the summary, written by the ``compare`` step).

    Every estimate of the summary is ``{value, ci_low, ci_high, n, resampled}`` (with what
    it is of, ``layer``, ``alpha``, ..., beside it); the tables under ``data/`` name each
    value's column after what it is (``auc``, ``cos``, ``p_match``, ...).

    For a ``ModelSet`` every per-model output is keyed by the model's name, the summary
    holds ``lineage`` (the names, base first) and the ``compare`` step adds
    ``cosine_vs_base`` (``{model: [{value, ci_low, ci_high, n, resampled, layer}]}``, the
    cosine with the base, for every model after the base) and ``attribution``
    (``{concept_cosine_L<layer>: {stage: {value, ci_low, ci_high, n, resampled, share}}}``),
    the tables ``data/cosine_vs_base`` and ``data/attribution_concepts`` and their two
    figures (``cosine_vs_base``).
    """
    target = as_models(models, tokenizer=tokenizer)
    from difflens._io import rich_progress

    c = config
    steps, layers, position, method, chat = c.steps, c.layers, c.position, c.method, c.chat
    test_fraction, seed, alphas, alpha_unit = c.test_fraction, c.seed, c.alphas, c.alpha_unit
    batch_size, n_boot, settle_threshold = c.batch_size, c.n_boot, c.settle_threshold
    check_writable(out)
    by_name = models_of(target)
    lineage = list(target.names) if isinstance(target, ModelSet) else []
    if lineage and any(k not in COLORS for k in lineage):
        use_lineage_colors(lineage)  # unless a report has already coloured this lineage
    attribution_table: pd.DataFrame | None = None
    lc: LineageCosines | None = None
    with rich_progress(progress) as bar:
        tick = bar("extract", len(dataset) * len(by_name))
        ex = extract_concepts(target, dataset, layers=layers, position=position, method=method,
                              chat=chat, test_fraction=test_fraction, seed=seed,
                              batch_size=batch_size, cache_dir=out / "activations",
                              progress=lambda n: tick(n, ""))
        ex.vectors.save(out / "vectors.safetensors")
        summary: dict[str, Any] = _previous(out, ex.key, method, test_fraction, seed)
        summary |= {
            "extraction_key": ex.key, "test_fraction": test_fraction, "seed": seed,
            "dataset": {"name": dataset.name, "path": dataset.path, "format": dataset.format,
                        "n_skipped": len(dataset.skipped)},
            "n_items": len(dataset), "n_train": len(ex.train), "n_test": len(ex.test),
            "layers": list(ex.layers), "position": position, "method": method,
            "chat": ex.chat, "n_truncated": ex.n_truncated,
            "models": {k: m.identity.name for k, m in by_name.items()},
            **({"lineage": lineage} if lineage else {}),
            "unsteered_p_match": {k: bootstrap_mean(
                ex.p_match(k)[ex.test if len(ex.test) else ex.train], seed=seed,
                resampled="items").to_json() for k in ex.labels},
        }
        data = out / "data"
        figures: list[AnyFigure] = []
        items = pd.DataFrame({"item": np.arange(len(dataset)),
                              "source": [i.source for i in dataset.items],
                              "split": np.where(np.isin(np.arange(len(dataset)), ex.test),
                                                "test", "train")})
        for k in ex.labels:
            items[f"{k}_p_match"] = ex.p_match(k)
        write_table(items, data, "items")
        cmp = compare_concepts(ex, n_boot=n_boot, seed=seed,
                               settle_threshold=settle_threshold)
        summary["separation_auc"] = {k: rows for k, rows in cmp.separation.items()}
        summary["vector_norm"] = cmp.norms
        figures += separation_figures(ex.layers, len(ex.test), cmp)
        write_table(pd.DataFrame([dict(table_row(r, "auc"), model=k)
                                  for k, rows in cmp.separation.items() for r in rows]),
                    data, "separation")
        if "compare" in steps:
            summary["cosine_by_layer"] = cmp.cosine_by_layer
            summary["pca_explained"] = cmp.pca_explained
            figures += compare_figures(ex.layers, cmp)
            if cmp.cosine_by_layer:
                write_table(pd.DataFrame([table_row(r, "cos") for r in cmp.cosine_by_layer]),
                            data, "cosine_by_layer")
            write_table(pd.DataFrame([dict(table_row(r, "cos"), model=k)
                                      for k, rows in cmp.heatmaps.items() for r in rows]),
                        data, "layer_cosines")
            write_table(pd.DataFrame(cmp.pca), data, "pca")
            summary["settling_layer"] = cmp.settling
            summary["consecutive_cosine"] = cmp.consecutive
            if cmp.consecutive:
                figures.append(consecutive_figure(cmp, settle_threshold))
                write_table(pd.DataFrame([dict(table_row(r, "cos"), model=k) for k, rows in
                                          cmp.consecutive.items() for r in rows]),
                            data, "consecutive_cosine")
            if lineage:
                lc = cosine_vs_base(ex, lineage, n_boot=n_boot, seed=seed)
                attribution_table = _lineage_outputs(lc, summary, data, figures)
        generations: list[dict[str, Any]] = []
        if "steer" in steps:
            if not len(ex.test):
                raise InputError("steering is measured on held-out items; use --test-fraction "
                                 "> 0")
            summary["steering"] = {}
            summary["alpha_unit"] = alpha_unit
            summary["steering_best_layer"] = {}
            for k, lm in by_name.items():
                chosen = (list(c.steer_layers) if c.steer_layers
                          else default_steer_layers(lm.n_layers, cmp.separation.get(k, [])))
                chosen = [lm.layers.normalize(x) for x in chosen]
                vecs = {x: steering_vector(ex, k, x, alpha_unit) for x in chosen}
                toks, _ = tokenize_items(lm.tokenizer, [dataset.items[i] for i in ex.test],
                                         dataset.format, chat=ex.chat[k], position=position,
                                         max_length=lm.max_length)
                step = bar(f"steer {k}", len(chosen) * len(alphas))
                rows = dose_response(lm, toks, vecs, alphas, n_boot=n_boot, seed=seed,
                                     batch_size=batch_size,
                                     on_step=functools.partial(step, 1, ""))
                summary["steering"][k] = {str(x): [
                    {**{f: r[f] for f in ESTIMATE_KEYS}, "alpha": r["alpha"]}
                    for r in rows if r["layer"] == x] for x in chosen}
                best = (best_layer(cmp.separation[k]) if cmp.separation.get(k) else chosen[0])
                summary["steering_best_layer"][k] = best if best in chosen else chosen[0]
                write_table(pd.DataFrame([dict(table_row(r, "p_match"), model=k)
                                          for r in rows]), data, f"steering_{k}")
                figures.append(dose_figure(k, rows, alpha_unit))
                generations += _generations(lm, k, dataset, ex, vecs[summary[
                    "steering_best_layer"][k]], summary["steering_best_layer"][k], alphas,
                    c.n_generations, c.max_new_tokens, c.batch_size)
            if generations:
                write_table(pd.DataFrame(generations), data, "generations")
                summary["generations"] = generations
    for fig in figures:
        fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    if index:
        write_index(out / "index.html", f"difflens concepts: {dataset.name}",
                    intro_html(summary), figures, headline(summary))
    return ConceptsResult(out=out, summary_json=summary, figures=figures, extraction=ex,
                          attributions={attribution_metric(layer): a
                                        for layer, a in lc.attribution.items()} if lc else {},
                          attribution_table=attribution_table)


def _lineage_outputs(lc: LineageCosines, summary: dict[str, Any], data: Path,
                     figures: list[AnyFigure]) -> pd.DataFrame:
    """Put a model set's cosines with the base and their attribution into the summary, the
    tables and the figures; return the attribution table (one row per layer and stage)."""
    summary["cosine_vs_base"] = lc.rows
    summary["attribution"] = lc.attribution_summary()
    write_table(pd.DataFrame([dict(table_row(r, "cosine"), model=k)
                              for k, rows in lc.rows.items() for r in rows]),
                data, "cosine_vs_base")
    table = pd.concat([a.table.assign(metric=attribution_metric(layer), layer=layer)
                       for layer, a in lc.attribution.items()], ignore_index=True)
    table = table[["metric", "layer", *[c for c in table.columns
                                        if c not in ("metric", "layer")]]]
    write_table(table, data, "attribution_concepts")
    figures += lineage_figures(lc)
    return table


def table_row(row: dict[str, Any], name: str) -> dict[str, Any]:
    """A summary row (an estimate with its context) as a row of the ``data/`` tables: the
    context first, then the value under ``name`` (``auc``, ``cos``, ...), ``ci_low``,
    ``ci_high`` and ``n``, as the tables have always had them."""
    context = {k: v for k, v in row.items() if k not in ESTIMATE_KEYS}
    return {**context, name: row["value"], "ci_low": row["ci_low"], "ci_high": row["ci_high"],
            "n": row["n"]}


def settling_row(v: dict[str, Any]) -> dict[str, Any]:
    """A settling layer (``settling_layer.<model>``) as a row of ``data/settling_by_behaviour``
    (``layer, ci_low, ci_high, threshold, n, n_boot, n_boot_unsettled``)."""
    return {"layer": v["value"], "ci_low": v["ci_low"], "ci_high": v["ci_high"],
            "threshold": v["threshold"], "n": v["n"], "n_boot": v["n_boot"],
            "n_boot_unsettled": v["n_boot_unsettled"]}


def _previous(out: Path, key: str, method: str, test_fraction: float, seed: int
              ) -> dict[str, Any]:
    """The summary an earlier step wrote into ``out`` for the same extraction and split, so
    that ``compare`` then ``steer`` into one folder keeps both steps' keys."""
    import json

    path = out / "summary.json"
    try:
        old = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    same = (isinstance(old, dict) and old.get("extraction_key") == key
            and old.get("method") == method and old.get("test_fraction") == test_fraction
            and old.get("seed") == seed)
    return respell(old) if same else {}  # a summary of an older difflens: one spelling


def _generations(lm: LoadedModel, label: str, dataset: ABDataset, ex: ConceptExtraction,
                 vec: Any, layer: int, alphas: Sequence[float], n: int, max_new_tokens: int,
                 batch_size: int = 32) -> list[dict[str, Any]]:
    if n <= 0:
        return []
    prompts = [dataset.items[i].prompt for i in ex.test[:n]]
    chosen = sorted({min(alphas), 0.0, max(alphas)})
    rows = []
    for alpha in chosen:
        with steering(lm, {layer: vec}, alpha):
            texts = greedy_texts(lm, prompts, max_new_tokens=max_new_tokens, chat=ex.chat[label],
                                 batch_size=batch_size)
        rows += [{"model": label, "layer": layer, "alpha": alpha, "prompt": p, "text": t}
                 for p, t in zip(prompts, texts, strict=True)]
    return rows


@dataclasses.dataclass(frozen=True)
class BehavioursRun(InstrumentResult):
    """What ``compare_behaviours`` wrote: the summary, the figures and each dataset's
    own run (in ``OUT/<folder>``)."""

    runs: dict[str, ConceptsResult] = dataclasses.field(default_factory=dict)


def behaviour_labels(paths: Sequence[str]) -> list[str]:
    """A short unique name per dataset file: its stem, or as many parent folders as it takes
    to tell files apart (``sycophancy/generate_dataset``)."""
    parts = [Path(p).with_suffix("").parts for p in paths]
    if len(set(parts)) != len(parts):
        raise InputError("the same dataset file is given twice; give each behaviour once")
    for k in range(1, max(len(p) for p in parts) + 1):
        names = ["/".join(p[-k:]) for p in parts]
        if len(set(names)) == len(names):
            return names
    return ["/".join(p) for p in parts]


def compare_behaviours(
    models: "LoadedModel | ModelPair | ModelSet | Models",
    datasets: Sequence[ABDataset],
    out: Path,
    config: ConceptsConfig = ConceptsConfig(),
    *,
    progress: bool = False,
    tokenizer: Any = None,
) -> BehavioursRun:
    """``compare`` on several datasets (one behaviour each), and their curves together.

    Each dataset gets its own run in ``OUT/<folder>`` (``run_concepts``, steps extract
    and compare, with ``config``). ``OUT`` holds ``summary.json`` (``behaviours.<name>``:
    the dataset, its ``cosine_by_layer``, ``consecutive_cosine`` and ``settling_layer``),
    the behaviour x layer tables ``data/cosine_by_behaviour`` and
    ``data/settling_by_behaviour`` (Parquet + CSV), the figure ``cosine_by_behaviour`` and
    ``index.html``.
    """
    import re

    if len(datasets) < 2:
        raise InputError("compare_behaviours needs two or more datasets; for one, use "
                         "run_concepts")
    check_writable(out)
    target = as_models(models, tokenizer=tokenizer)
    each = dataclasses.replace(config, steps=("extract", "compare"))
    labels = behaviour_labels([d.path for d in datasets])
    runs: dict[str, ConceptsResult] = {}
    summary: dict[str, Any] = {"behaviours": {}}
    cos_rows: list[dict[str, Any]] = []
    settle_rows: list[dict[str, Any]] = []
    for label, ds in zip(labels, datasets, strict=True):
        folder = re.sub(r"[^\w.-]+", "-", label)
        run = run_concepts(target, ds, out / folder, each, progress=progress)
        runs[label] = run
        s = run.summary()
        summary["behaviours"][label] = {
            "folder": folder, "dataset": s["dataset"], "n_items": s["n_items"],
            "n_train": s["n_train"], "cosine_by_layer": s.get("cosine_by_layer", []),
            "settling_layer": s.get("settling_layer", {}),
            "consecutive_cosine": s.get("consecutive_cosine", {})}
        cos_rows += [dict(table_row(r, "cos"), behaviour=label)
                     for r in s.get("cosine_by_layer", [])]
        settle_rows += [dict(settling_row(v), behaviour=label, model=k)
                        for k, v in s.get("settling_layer", {}).items()]
    first = next(iter(runs.values())).summary()
    summary |= {"layers": first["layers"], "models": first["models"],
                "position": first["position"], "method": first["method"],
                "seed": first["seed"], "test_fraction": first["test_fraction"],
                "settle_threshold": config.settle_threshold}
    data = out / "data"
    figures: list[AnyFigure] = []
    if cos_rows:
        write_table(pd.DataFrame(cos_rows), data, "cosine_by_behaviour")
        figures.append(behaviours_figure(summary["behaviours"]))
    if settle_rows:
        write_table(pd.DataFrame(settle_rows), data, "settling_by_behaviour")
    for fig in figures:
        fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    intro = (f"{len(labels)} behaviours, each compared in its own folder ("
             + ", ".join(f"<a href='{summary['behaviours'][k]['folder']}/index.html'>"
                         f"{k}</a>" for k in labels)
             + "). Bands: 95% bootstrap CIs over each dataset's train items.")
    head = {f"{k}: settling layer {m}": (f"{v['value']} [{v['ci_low']}, {v['ci_high']}] "
                                          f"(n={v['n']})")
            for k in labels for m, v in summary["behaviours"][k]["settling_layer"].items()}
    write_index(out / "index.html", "difflens concepts: several behaviours", intro, figures,
                head)
    return BehavioursRun(out=out, summary_json=summary, figures=figures, runs=runs)
