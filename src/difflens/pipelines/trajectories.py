"""The two trajectory pipelines: from models (``run``) and from a file (``import``).

``run`` takes one model, a pair or a model set (a lineage: base, then its tuned
descendants); a set's paths share one sphere, and every pair of its models is compared.
"""

import dataclasses
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from difflens._config import option
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
from difflens.pipelines.result import InstrumentResult
from difflens.report.figures import COLORS, use_lineage_colors
from difflens.report.tables import write_table
from difflens.report.trajectories import page_intro, summarize, write_outputs

RANK_SEGMENTS = ("all", "prompt", "continuation")
METHODS = ("umap", "pca")


@dataclasses.dataclass(frozen=True)
class TrajectoriesConfig:
    """Every setting of a trajectories run; each default is here only (the CLI's options and
    ``compare.toml``'s ``[trajectories]`` table are these fields, under their flag names)."""

    layer: int | None = option(None, flag="--layer", help="Layer (default: the middle; 0 = "
                               "embeddings).")
    continuations: int = option(4, flag="--samples", help="Sampled continuations per prompt "
                                "(and model).")
    max_new_tokens: int = option(40, flag="--max-new-tokens", help="Tokens per continuation.")
    method: str = option("umap", flag="--method", help="Projection: umap | pca.")
    min_count: int = option(5, flag="--min-count", help="Least occurrences for a token to be "
                            "ranked.")
    first_n: int | None = option(None, flag="--first-n", help="Rank tokens in the first N "
                                 "continuation steps only.")
    rank_segments: str = option("all", flag="--rank-segments", help="Jumps used for token "
                                "ranking and sentiment: all | prompt | continuation.")
    seed: int = option(0, flag="--seed", help="Seed of sampling, projection and bootstraps.")
    batch_size: int = option(16, flag="--batch-size", help="Rows sampled together and texts "
                             "read back in one forward pass (does not change the result).")

    #: Python names of earlier releases -> option names (read with a warning).
    RENAMED: ClassVar[dict[str, str]] = {"continuations": "samples"}

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be umap or pca, got {self.method!r}")
        if self.rank_segments not in RANK_SEGMENTS:
            raise InputError(f"--rank-segments must be all, prompt or continuation, got "
                             f"{self.rank_segments!r}")
        if self.batch_size < 1:
            raise InputError(f"--batch-size must be >= 1, got {self.batch_size}")
        if self.continuations < 0 or self.max_new_tokens < 0:
            raise InputError(f"--samples and --max-new-tokens must be >= 0, got "
                             f"{self.continuations} and {self.max_new_tokens}")

    @classmethod
    def quick(cls) -> "TrajectoriesConfig":
        """``difflens compare``'s lighter setting: 30 tokens per continuation."""
        return cls(max_new_tokens=30)


@dataclasses.dataclass(frozen=True)
class TrajectoriesResult(InstrumentResult):
    """What ``run_trajectories`` (and ``import_trajectories``) wrote."""

    table: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)
    """Every point: prompt, model, segment, token index, sphere coordinates, ``state_ref``."""
    distance_to_base_by_prompt: pd.DataFrame | None = None
    """A model set's run: ``prompt_id, model, distance``, each model's mean full-dimension
    distance to the base along each prompt's tokens (the per-prompt values of a lineage
    attribution;
    ``distance_to_base_by_prompt``). None for one
    model or a pair."""


TrajectoriesRun = TrajectoriesResult  # the name of earlier releases


def _labels(table: pd.DataFrame) -> tuple[str, str]:
    models = list(dict.fromkeys(table.model))
    if {"base", "tuned"} <= set(models):
        return ("base", "tuned")
    if len(models) >= 2:
        return (str(models[0]), str(models[1]))
    return (str(models[0]), str(models[0]))


def run_trajectories(
    models: "LoadedModel | ModelPair | ModelSet | Models",
    prompts: Sequence[str],
    out: Path,
    config: TrajectoriesConfig = TrajectoriesConfig(),
    *,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    progress: bool = False,
    index: bool = True,
    tokenizer: Any = None,
) -> TrajectoriesResult:
    """Paths from the models, projected together, compared on the sphere and in full.

    ``config.rank_segments`` (``all``, ``prompt`` or ``continuation``) picks the jumps that
    the token ranking and the sentiment use, as in ``import_trajectories``. ``metadata``
    (one dict per prompt, e.g. the other fields of a JSONL prompt file) is written with
    each prompt's id and text to ``data/prompts.parquet``, where the explorer's atlas can
    colour points by it.

    A ``ModelSet`` labels each model's paths by its name;
    the single-pair statistics compare the base with the last model, and
    ``distance_pairs`` (on the sphere and under ``full``) gives the distance per token index
    of every pair of models. The per-prompt distance of each model to the base is returned
    as ``distance_to_base_by_prompt`` and written to ``data/``.
    """
    target = as_models(models, tokenizer=tokenizer)
    prompts = list(prompts)
    c = config
    if metadata is not None and len(metadata) != len(prompts):
        raise InputError(f"metadata has {len(metadata)} rows for {len(prompts)} prompts; give "
                         f"one per prompt")
    from difflens._io import rich_progress

    check_writable(out)
    lineage = list(target.names) if isinstance(target, ModelSet) else None
    n_models = len(models_of(target))
    with rich_progress(progress) as bar:
        tick = bar("paths", len(prompts) * n_models)
        paths = build_paths(target, prompts, layer=c.layer, continuations=c.continuations,
                            max_new_tokens=c.max_new_tokens, seed=c.seed,
                            progress=lambda n: tick(n, ""), cache_dir=out / "paths",
                            batch_size=c.batch_size)
        done = bar(f"project ({c.method})", 1)
        proj = SphereProjection(method=c.method, dim=2, random_state=c.seed)
        xyz = proj.fit_transform(paths.points.astype(np.float32))
        done(1, "")
    table = paths.table.assign(x=xyz[:, 0], y=xyz[:, 1], z=xyz[:, 2],
                               row=np.arange(len(xyz)))
    table = check_table(table)
    full_points = paths.points[table.row.to_numpy()]
    labels: tuple[str, ...] = _labels(table) if lineage is None else tuple(lineage)
    pairs = lineage_pairs(lineage) if lineage is not None else []
    sphere = trajectory_stats(table, models=labels, pairs=pairs, min_count=c.min_count,
                              first_n=c.first_n, rank_segments=c.rank_segments, seed=c.seed,
                              score_words=sentiment)
    full = trajectory_stats(table, full_points, models=labels, pairs=pairs,
                            min_count=c.min_count, first_n=c.first_n,
                            rank_segments=c.rank_segments, seed=c.seed, score_words=sentiment)
    faith = faithfulness(full_points, table[["x", "y", "z"]].to_numpy(), seed=c.seed)
    summary = summarize(sphere, full, n_prompts=len(prompts), layer=paths.layer,
                        faithfulness=faith, extra={
                            "projection_method": c.method, "continuations": c.continuations,
                            "max_new_tokens": c.max_new_tokens, "seed": c.seed,
                            "models": list(labels), "rank_segments": c.rank_segments}
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
    return TrajectoriesResult(out=out, summary_json=summary, figures=figures, table=table,
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
    return TrajectoriesResult(out=out, summary_json=summary, figures=figures, table=table)

