"""Trajectories on the sphere: how the paths of two (or more) models compare.

A trajectory table (``difflens.analysis.trajectory_table``) holds the cumulative-mean
paths of every model (``difflens.analysis.sphere``), one row per point.
``trajectory_stats`` measures everything the trajectories report says about one point
set (the sphere's coordinates, or the full-dimension cumulative means, where the geodesic is
the angle between the vectors), each statistic vectorised over the whole table, with counts
and bootstrap CIs that resample prompts (the paths of one prompt are not independent):

- the distance between two models' paths per token index
  (``difflens.analysis.trajectory_distance``);
- the jumps: tokens ranked by the jump they cause, and the models' mean-jump difference per
  index (``difflens.analysis.trajectory_jumps``);
- the direction of movement (``difflens.analysis.trajectory_direction``);
- sentiment weighted by jumps (``difflens.analysis.trajectory_sentiment``).

Every value with a CI is an estimate, ``{value, ci_low, ci_high, n, resampled}``.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.sphere import SphereProjection
from difflens.analysis.trajectory_direction import direction_stats
from difflens.analysis.trajectory_distance import distance_by_index
from difflens.analysis.trajectory_jumps import jump_difference, rank_tokens
from difflens.analysis.trajectory_sentiment import (
    WordScorer,
    sentiment_stats,
    token_sentiment,
)
from difflens.analysis.trajectory_table import path_jumps, point_columns, readable_tokens
from difflens.errors import InputError

__all__ = ["SphereProjection", "TrajectoryStats", "trajectory_stats"]


@dataclasses.dataclass(frozen=True)
class TrajectoryStats:
    """What ``trajectory_stats`` measured on one point set (sphere or full dimension)."""

    distance_by_index: dict[str, list[dict[str, Any]]]
    """``prompt`` / ``continuation`` -> ``[{value, ci_low, ci_high, n, resampled, index}]``
    (radians; ``distance_by_index``)."""
    jumps_by_index: dict[str, list[dict[str, Any]]]
    """Model -> mean jump per step index (all segments): ``[{index, mean, n}]``."""
    top_tokens: list[dict[str, Any]]
    """The tokens with the largest mean jump, each an estimate of it with the token
    (``rank_tokens``)."""
    bottom_tokens: list[dict[str, Any]]
    top_tokens_adjusted: list[dict[str, Any]]
    """Ranked by jump relative to the mean jump at the same step (the ``value`` is then a
    ratio): early steps of a cumulative mean always move more, and this removes that."""
    bottom_tokens_adjusted: list[dict[str, Any]]
    sentiment: dict[str, Any]
    """``sentiment_stats``."""
    jumps: pd.DataFrame
    """One row per ranked jump: prompt_id, model, segment, step, token (readable),
    token_raw (the tokenizer's string), jump, sentiment, jump_rel."""
    jump_difference: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Mean jump per index, tuned minus base
    (``jump_difference``)."""
    direction: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Turns between consecutive moves and the models' move cosines
    (``direction_stats``)."""
    distance_pairs: dict[tuple[str, str], dict[str, list[dict[str, Any]]]] = (
        dataclasses.field(default_factory=dict))
    """``(a, b)`` -> ``prompt`` / ``continuation`` -> rows as in ``distance_by_index``: the
    distance per token index of every pair asked for (a model set's lineage pairs); empty
    unless ``trajectory_stats`` is given ``pairs``."""


def trajectory_stats(
    df: pd.DataFrame,
    points: np.ndarray | None = None,
    *,
    models: Sequence[str] = ("base", "tuned"),
    pairs: Sequence[tuple[str, str]] = (),
    min_count: int = 20,
    first_n: int | None = None,
    top_k: int = 15,
    rank_segments: str = "all",
    n_boot: int = 500,
    seed: int = 0,
    score_words: WordScorer | None = None,
) -> TrajectoryStats:
    """Distances per token index, jumps and tokens ranked by jump, sentiment, the models'
    mean-jump difference per index and the direction of movement.

    Args:
        df: a trajectory table (``check_table``).
        points: one row per table row (default: the table's x, y, z); pass the
            full-dimension cumulative means to measure in the full dimension.
        models: the model labels, base first: the two of a pair, or a model set's names in
            lineage order. Per-model statistics (jumps by index, sentiment, turn angle)
            cover each label; the two-model comparisons (``distance_by_index``,
            ``jump_difference``, the move cosine) compare the first with the last.
        pairs: ``(a, b)`` label pairs whose distance per token index is also measured
            (``distance_pairs``), e.g. every pair of a model set.
        min_count: tokens seen fewer times are not ranked.
        first_n: use only the first N steps of continuations for the token ranking and the
            sentiment (prompts are used whole).
        top_k: how many top and bottom tokens to report.
        rank_segments: ``all``, ``prompt`` or ``continuation``: which segments' jumps the
            token ranking and the sentiment use.
        n_boot: bootstrap resamples (over prompts).
        seed: bootstrap seed.
        score_words: scores each ranked token's word for the sentiment statistics
            (``difflens.models.labellers.sentiment``, VADER, in the pipelines); without
            one, ``sentiment`` is empty.
    """
    df = df.reset_index(drop=True)
    pts = df[point_columns(df)].to_numpy(np.float64) if points is None else np.asarray(points)
    if len(pts) != len(df):
        raise InputError(f"{len(pts)} points for {len(df)} table rows")
    models = tuple(models)
    compared = (models[0], models[-1])
    distance = {kind: distance_by_index(df, pts, compared, kind, n_boot=n_boot, seed=seed)
                for kind in ("prompt", "continuation")}
    distance_pairs = {(a, b): {kind: distance_by_index(df, pts, (a, b), kind, n_boot=n_boot,
                                                       seed=seed)
                               for kind in ("prompt", "continuation")}
                      for a, b in pairs}
    jump = path_jumps(df, pts)
    tok = "token_raw" if "token_raw" in df.columns else "token"  # rank the tokenizer's tokens
    j = (df[["prompt_id", "model", "segment", "step", tok]].rename(columns={tok: "token"})
         .assign(jump=jump))
    j = j[np.isfinite(jump)]
    agg = j.groupby(["model", "step"]).jump.agg(["mean", "count"])
    by_index = {m: [{"index": int(s), "mean": float(r["mean"]), "n": int(r["count"])}
                    for (mm, s), r in agg.iterrows() if mm == m] for m in models}
    ranked = j[j.token.notna()]
    if rank_segments not in ("all", "prompt", "continuation"):
        raise InputError(f"rank segments must be all, prompt or continuation, got "
                         f"{rank_segments!r}")
    if rank_segments != "all":
        is_prompt = ranked.segment == "prompt"
        ranked = ranked[is_prompt if rank_segments == "prompt" else ~is_prompt]
    if first_n is not None:
        ranked = ranked[(ranked.segment == "prompt") | (ranked.step < first_n)]
    ranked = ranked.assign(sentiment=token_sentiment(ranked.token.tolist(), score_words)
                           if score_words is not None else np.nan)
    kind = np.where(j.segment == "prompt", "p", "c")
    step_mean = j.groupby([kind, j.step]).jump.transform("mean")
    ranked = ranked.assign(jump_rel=(ranked.jump / step_mean.loc[ranked.index]).to_numpy())
    top, bottom = rank_tokens(ranked, min_count, top_k, n_boot, seed)
    top_a, bottom_a = rank_tokens(ranked, min_count, top_k, n_boot, seed, col="jump_rel")
    sentiment = (sentiment_stats(ranked, models, n_boot, seed) if score_words is not None
                 else {"jump_weighted": {}, "correlation": {}, "mean_unweighted": {}})
    return TrajectoryStats(distance_by_index=distance, jumps_by_index=by_index, top_tokens=top,
                           bottom_tokens=bottom, top_tokens_adjusted=top_a,
                           bottom_tokens_adjusted=bottom_a, sentiment=sentiment,
                           jumps=readable_tokens(ranked),
                           jump_difference=jump_difference(df, jump, compared,
                                                           n_boot=n_boot, seed=seed),
                           direction=direction_stats(df, pts, models, n_boot=n_boot,
                                                     seed=seed),
                           distance_pairs=distance_pairs)
