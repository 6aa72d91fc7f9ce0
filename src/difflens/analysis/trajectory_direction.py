"""Where the paths of a trajectory table head: the turn between consecutive moves, and the
cosine between two models' moves at the same step.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.sphere import geodesic
from difflens.analysis.trajectory_distance import index_means
from difflens.analysis.trajectory_table import paired_rows, same_path_as_previous


def _angles(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angle between the rows of ``a`` and ``b`` (radians); NaN where either is zero."""
    zero = (np.linalg.norm(a, axis=-1) == 0) | (np.linalg.norm(b, axis=-1) == 0)
    return np.where(zero, np.nan, geodesic(a, b)) if len(a) else np.zeros(0)


def direction_stats(df: pd.DataFrame, points: np.ndarray, models: Sequence[str], *,
                    n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """Where the paths head: the turn between consecutive moves, and the two models' moves.

    The move into step ``t`` is ``Y_t - Y_{t-1}`` in the points' own dimension. The **turn**
    at step ``t`` is the angle between the moves into ``t - 1`` and into ``t`` (from step
    2 on; 0 = straight on, pi/2 = a right angle, pi = back). The **move cosine** at step
    ``t`` is cos(move of base, move of tuned) at the same prompt, segment and step. Means
    per step index and overall, with 95% CIs that resample prompts; a zero move (the path
    did not move) has no direction and is left out.

    ``models`` lists the labels in lineage order (base first): the turn is measured for
    each, the move cosine between the first and the last (a pair's base and tuned).

    Returns:
        ``{turn_angle: {model: {by_index, overall}}, move_cosine: {prompt|continuation:
        {by_index, overall}}}``; each ``by_index`` row is an estimate with its index,
        ``{value, ci_low, ci_high, n, resampled: "prompts", index}``, each ``overall`` an
        estimate (``index_means``).
    """
    same = same_path_as_previous(df)
    move = np.full(points.shape, np.nan)
    move[same] = points[same] - points[np.flatnonzero(same) - 1]
    turn_ok = same & np.r_[False, same[:-1]] if len(df) else same
    turn = np.full(len(df), np.nan)
    at = np.flatnonzero(turn_ok)
    turn[at] = _angles(move[at - 1], move[at])
    out: dict[str, Any] = {"turn_angle": {}, "move_cosine": {}}
    pid, step = df.prompt_id.to_numpy(), df.step.to_numpy()
    for m in dict.fromkeys(models):
        sel = (df.model == m).to_numpy()
        rows, overall = index_means(pid[sel], step[sel], turn[sel], n_boot=n_boot, seed=seed)
        if rows:
            out["turn_angle"][str(m)] = {"by_index": rows, "overall": overall}
    for kind in ("prompt", "continuation"):
        ra, rb = paired_rows(df, (models[0], models[-1]), kind)
        ra, rb = ra[same[ra]], rb[same[rb]]
        cos = np.cos(_angles(move[ra], move[rb]))
        rows, overall = index_means(pid[ra], step[ra], cos, n_boot=n_boot, seed=seed)
        if rows:
            out["move_cosine"][kind] = {"by_index": rows, "overall": overall}
    return out
