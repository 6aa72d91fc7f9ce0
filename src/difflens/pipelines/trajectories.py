"""The two trajectory pipelines: from models (``run``) and from a file (``import``).

``run`` takes one model, a pair or a model set (a lineage: base, then its tuned
descendants); a set's paths share one sphere, and every pair of its models is compared.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import check_writable, write_parquet_atomic
from difflens.analysis.sphere import SphereProjection, faithfulness
from difflens.analysis.trajectories import trajectory_stats
from difflens.analysis.trajectory_distance import distance_to_base_by_prompt
from difflens.analysis.trajectory_table import lineage_pairs
from difflens.capture.cumulative_paths import build_paths
from difflens.errors import InputError
from difflens.inputs.trajectory_files import check_table, read_trajectories
from difflens.models.labellers import sentiment
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.models.wrapping import Models, as_models
from difflens.report.figures import COLORS, AnyFigure, use_lineage_colors
from difflens.report.tables import write_table
from difflens.report.trajectories import page_intro, summarize, write_outputs


@dataclasses.dataclass(frozen=True)
class TrajectoriesRun:
    summary: dict[str, Any]
    figures: list[AnyFigure]
    table: pd.DataFrame
    distance_to_base_by_prompt: pd.DataFrame | None = None
    """A model set's run: ``prompt_id, model, distance``, each model's mean full-dimension
    distance to the base along each prompt's tokens (the per-prompt values of a lineage
    attribution;
    :func:`~difflens.analysis.trajectory_distance.distance_to_base_by_prompt`). None for one
    model or a pair."""


def _labels(table: pd.DataFrame) -> tuple[str, str]:
    models = list(dict.fromkeys(table.model))
    if {"base", "tuned"} <= set(models):
        return ("base", "tuned")
    if len(models) >= 2:
        return (str(models[0]), str(models[1]))
    return (str(models[0]), str(models[0]))


def run_trajectories(
    target: "LoadedModel | ModelPair | ModelSet | Models",
    prompts: list[str],
    out: Path,
    *,
    layer: int | None = None,
    continuations: int = 4,
    max_new_tokens: int = 40,
    method: str = "umap",
    seed: int = 0,
    min_count: int = 5,
    first_n: int | None = None,
    rank_segments: str = "all",
    metadata: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = False,
    index: bool = True,
    tokenizer: Any = None,
) -> TrajectoriesRun:
    """Paths from the models, projected together, compared on the sphere and in full.

    ``rank_segments`` (``all``, ``prompt`` or ``continuation``) picks the jumps that the
    token ranking and the sentiment use, as in :func:`import_trajectories`. ``metadata``
    (one dict per prompt, e.g. the other fields of a JSONL prompt file) is written with
    each prompt's id and text to ``data/prompts.parquet``, where the explorer's atlas can
    colour points by it.

    A :class:`~difflens.models.model_set.ModelSet` labels each model's paths by its name;
    the single-pair statistics compare the base with the last model, and
    ``distance_pairs`` (on the sphere and under ``full``) gives the distance per token index
    of every pair of models. The per-prompt distance of each model to the base is returned
    as ``distance_to_base_by_prompt`` and written to ``data/``.
    """
    target = as_models(target, tokenizer=tokenizer)
    if metadata is not None and len(metadata) != len(prompts):
        raise InputError(f"metadata has {len(metadata)} rows for {len(prompts)} prompts; give "
                         f"one per prompt")
    from difflens._io import rich_progress

    check_writable(out)
    if rank_segments not in ("all", "prompt", "continuation"):
        raise InputError(f"rank segments must be all, prompt or continuation, got "
                         f"{rank_segments!r}")
    lineage = list(target.names) if isinstance(target, ModelSet) else None
    n_models = len(models_of(target))
    with rich_progress(progress) as bar:
        tick = bar("paths", len(prompts) * n_models)
        paths = build_paths(target, prompts, layer=layer, continuations=continuations,
                            max_new_tokens=max_new_tokens, seed=seed,
                            progress=lambda n: tick(n, ""), cache_dir=out / "paths")
        done = bar(f"project ({method})", 1)
        proj = SphereProjection(method=method, dim=2, random_state=seed)
        xyz = proj.fit_transform(paths.points.astype(np.float32))
        done(1, "")
    table = paths.table.assign(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2],
                               row=np.arange(len(xyz)))
    table = check_table(table)
    full_points = paths.points[table.row.to_numpy()]
    models: tuple[str, ...] = _labels(table) if lineage is None else tuple(lineage)
    pairs = lineage_pairs(lineage) if lineage is not None else []
    sphere = trajectory_stats(table, models=models, pairs=pairs, min_count=min_count,
                              first_n=first_n, rank_segments=rank_segments, seed=seed,
                              score_words=sentiment)
    full = trajectory_stats(table, full_points, models=models, pairs=pairs,
                            min_count=min_count, first_n=first_n, rank_segments=rank_segments,
                            seed=seed, score_words=sentiment)
    faith = faithfulness(full_points, table[["x", "y", "z"]].to_numpy(), seed=seed)
    summary = summarize(sphere, full, n_prompts=len(prompts), layer=paths.layer,
                        faithfulness=faith, extra={
                            "projection_method": method, "continuations": continuations,
                            "max_new_tokens": max_new_tokens, "seed": seed,
                            "models": list(models), "rank_segments": rank_segments}
                        | ({"model_set": target.describe()}
                           if isinstance(target, ModelSet) else {}))
    out.mkdir(parents=True, exist_ok=True)
    write_table(paths.continuations, out / "data", "continuations")
    to_base = None
    if lineage is not None:
        to_base = distance_to_base_by_prompt(table, full_points, lineage)
        write_table(to_base, out / "data", "distance_to_base_by_prompt")
        if any(n not in COLORS for n in lineage):
            use_lineage_colors(lineage)  # a report that set the colours keeps its own
    meta = pd.DataFrame(list(metadata) if metadata is not None else [{}] * len(prompts))
    write_table(pd.concat([pd.DataFrame({"prompt_id": np.arange(len(prompts)),
                                         "prompt": prompts}),
                           meta.rename(columns={"prompt_id": "file_prompt_id",
                                                "prompt": "file_prompt"})], axis=1),
                out / "data", "prompts")
    # the full-dimension cumulative means, referenced by the table's state_ref column
    states = pd.DataFrame({"row": np.arange(len(full_points))})
    states["state"] = list(full_points.astype(np.float32))
    write_parquet_atomic(out / "data" / "states.parquet", states)
    # full_points follow the rows of the (sorted) table, so row i of the table has state i
    table = table.assign(state_ref=np.arange(len(table))).drop(columns=["row"])
    figures = write_outputs(
        out, table, sphere, full, summary, {str(i): p for i, p in enumerate(prompts)},
        "difflens trajectories", page_intro(summary), n_spheres=3,
        lineage=lineage) if index else []
    return TrajectoriesRun(summary=summary, figures=figures, table=table,
                           distance_to_base_by_prompt=to_base)


def import_trajectories(path: Path, out: Path, *, name_pattern: str | None = None,
                        models: dict[str, str] | None = None, min_count: int = 20,
                        first_n: int | None = None, max_prompts: int | None = None,
                        rank_segments: str = "all", seed: int = 0) -> TrajectoriesRun:
    """Read a trajectory file and run the sphere statistics on it."""
    from difflens.inputs.trajectory_files import DEFAULT_PATTERN

    check_writable(out)
    imp = read_trajectories(path, name_pattern=name_pattern or DEFAULT_PATTERN, models=models,
                            max_prompts=max_prompts)
    table = imp.table
    labels = _labels(table)
    sphere = trajectory_stats(table, models=labels, min_count=min_count, first_n=first_n,
                              rank_segments=rank_segments, seed=seed, score_words=sentiment)
    summary = summarize(sphere, None, n_prompts=int(table.prompt_id.nunique()), layer=None,
                        faithfulness=None, extra={
                            "source": imp.source, "n_traces": imp.n_traces,
                            "n_empty_traces": imp.n_empty,
                            "n_token_mismatch": imp.n_token_mismatch,
                            "models_compared": list(labels), "rank_segments": rank_segments,
                            "note": "imported sphere coordinates only: no full-dimension "
                                    "states, so no faithfulness or full-dimension statistics"})
    figures = write_outputs(out, table, sphere, None, summary, imp.titles,
                            f"difflens trajectories: {Path(path).name}", page_intro(summary))
    return TrajectoriesRun(summary=summary, figures=figures, table=table)

