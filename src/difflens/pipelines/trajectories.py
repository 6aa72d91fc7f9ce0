"""The two trajectory pipelines: from models (``run``) and from a file (``import``)."""

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import check_writable, write_parquet_atomic
from difflens.analysis.trajectories import SphereProjection, faithfulness, trajectory_stats
from difflens.capture.cumulative_paths import build_paths
from difflens.errors import InputError
from difflens.inputs.trajectory_files import check_table, read_trajectories
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair
from difflens.report.figures import AnyFigure
from difflens.report.tables import write_table
from difflens.report.trajectories import page_intro, summarize, write_outputs


@dataclasses.dataclass(frozen=True)
class TrajectoriesRun:
    summary: dict[str, Any]
    figures: list[AnyFigure]
    table: pd.DataFrame


def _labels(table: pd.DataFrame) -> tuple[str, str]:
    models = list(dict.fromkeys(table.model))
    if {"base", "tuned"} <= set(models):
        return ("base", "tuned")
    if len(models) >= 2:
        return (str(models[0]), str(models[1]))
    return (str(models[0]), str(models[0]))


def run_trajectories(
    target: LoadedModel | ModelPair,
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
) -> TrajectoriesRun:
    """Paths from the models, projected together, compared on the sphere and in full.

    ``rank_segments`` (``all``, ``prompt`` or ``continuation``) picks the jumps that the
    token ranking and the sentiment use, as in :func:`import_trajectories`. ``metadata``
    (one dict per prompt, e.g. the other fields of a JSONL prompt file) is written with
    each prompt's id and text to ``data/prompts.parquet``, where the explorer's atlas can
    colour points by it.
    """
    if metadata is not None and len(metadata) != len(prompts):
        raise InputError(f"metadata has {len(metadata)} rows for {len(prompts)} prompts; give "
                         f"one per prompt")
    from difflens._io import rich_progress

    check_writable(out)
    if rank_segments not in ("all", "prompt", "continuation"):
        raise InputError(f"rank segments must be all, prompt or continuation, got "
                         f"{rank_segments!r}")
    n_models = 2 if isinstance(target, ModelPair) else 1
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
    models = _labels(table)
    sphere = trajectory_stats(table, models=models, min_count=min_count, first_n=first_n,
                              rank_segments=rank_segments, seed=seed)
    full = trajectory_stats(table, full_points, models=models, min_count=min_count,
                            first_n=first_n, rank_segments=rank_segments, seed=seed)
    faith = faithfulness(full_points, table[["x", "y", "z"]].to_numpy(), seed=seed)
    summary = summarize(sphere, full, n_prompts=len(prompts), layer=paths.layer,
                        faithfulness=faith, extra={
                            "projection_method": method, "continuations": continuations,
                            "max_new_tokens": max_new_tokens, "seed": seed,
                            "models": list(models), "rank_segments": rank_segments})
    out.mkdir(parents=True, exist_ok=True)
    write_table(paths.continuations, out / "data", "continuations")
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
        "difflens trajectories", page_intro(summary), n_spheres=3) if index else []
    return TrajectoriesRun(summary=summary, figures=figures, table=table)


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
                              rank_segments=rank_segments, seed=seed)
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

