"""Statistics per token index of a trajectory table: the distance between two models' paths
at each index, the mean of any per-row value at each index, and each model's distance to
the base per prompt.

Means per index pool the paths of a prompt, and their 95% CIs resample prompts (the paths of
one prompt are not independent). Every row is an estimate, ``{value, ci_low, ci_high, n,
resampled: "prompts", index}``, with ``n`` the values at that index.
"""

from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    replicate_ratios,
)
from difflens.analysis.sphere import geodesic
from difflens.analysis.trajectory_table import paired_rows


def ratio_ci(num: np.ndarray, den: np.ndarray, w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """CI of sum(num)/sum(den) per column, resampling rows (prompts) with weights ``w``
    (resamples without the column left out; NaN at an index no resample contains)."""
    return percentile_ci(replicate_ratios(w, num, den), omit_nan=True)


def cell_sums(cells: tuple[np.ndarray, ...], shape: tuple[int, ...], values: np.ndarray
              ) -> tuple[np.ndarray, np.ndarray]:
    """The sum and the count of ``values`` in each cell of an array of ``shape``, the cell of
    value ``k`` at ``cells[0][k], cells[1][k], ...``: ``np.add.at`` of the values and of 1,
    added in the same order (so to the same bits) by ``np.bincount``, many times faster."""
    flat = np.ravel_multi_index(cells, shape, mode="wrap")  # wrap: a -1 indexes as in add.at
    size = int(np.prod(shape))
    sums = np.bincount(flat, weights=values, minlength=size)  # int64 when empty
    counts = np.bincount(flat, minlength=size)
    return (sums.astype(np.float64, copy=False).reshape(shape),
            counts.astype(np.float64).reshape(shape))


def _rows(index: np.ndarray, mean: np.ndarray, lo: np.ndarray, hi: np.ndarray,
          count: np.ndarray) -> list[dict[str, Any]]:
    return [Estimate(value=float(mean[k]), ci_low=float(lo[k]), ci_high=float(hi[k]),
                     n=int(count[k]), resampled="prompts").to_json() | {"index": int(s)}
            for k, s in enumerate(index)]


def distance_by_index(df: pd.DataFrame, points: np.ndarray, models: tuple[str, str],
                      kind: str, *, n_boot: int, seed: int, max_index: int | None = None
                      ) -> list[dict[str, Any]]:
    """The geodesic between the two models' points at the same prompt, segment and step,
    averaged per step index (``kind``: ``prompt`` or ``continuation`` segments).

    Returns:
        ``[{value, ci_low, ci_high, n, resampled, index}]`` in radians, ``n`` the point
        pairs at that index; empty where the models share no point.
    """
    ra, rb = paired_rows(df, models, kind)
    if not len(ra):
        return []
    m = pd.DataFrame({"prompt_id": df.prompt_id.to_numpy()[ra],
                      "step": df.step.to_numpy()[ra],
                      "d": geodesic(points[ra], points[rb])})
    if max_index is not None:
        m = m[m.step < max_index]
    pi, prompts = pd.factorize(m.prompt_id)
    steps = np.sort(m.step.unique())
    si = np.searchsorted(steps, m.step.to_numpy())
    num, den = cell_sums((pi, si), (len(prompts), len(steps)), m.d.to_numpy())
    w = bootstrap_weights(len(prompts), n_boot, seed)
    lo, hi = ratio_ci(num, den, w)
    mean = num.sum(0) / den.sum(0)
    return _rows(steps, mean, lo, hi, den.sum(0))


def _ids(prompt_ids: np.ndarray) -> np.ndarray:
    """Prompt ids to factorize: integers as they are, anything else as Python objects (the
    same codes either way; integers as objects only factorize slower)."""
    ids = np.asarray(prompt_ids)
    return ids if ids.dtype.kind in "iu" else np.asarray(prompt_ids, dtype=object)


def index_means(prompt_ids: np.ndarray, steps: np.ndarray, values: np.ndarray, *,
                n_boot: int, seed: int) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mean of ``values`` per step index and overall, with 95% CIs that resample prompts.

    Returns:
        ``[{value, ci_low, ci_high, n, resampled, index}]`` (n: values at that index) and
        the overall estimate ``{value, ci_low, ci_high, n, resampled}`` (every value
        pooled). Non-finite values are left out.
    """
    ok = np.isfinite(values)
    if not ok.any():
        return [], {}
    pi, prompts = pd.factorize(_ids(prompt_ids)[ok])
    step = np.asarray(steps)[ok]
    idx = np.sort(np.unique(step))
    si = np.searchsorted(idx, step)
    num, den = cell_sums((pi, si), (len(prompts), len(idx) + 1), values[ok])
    num[:, -1], den[:, -1] = num[:, :-1].sum(1), den[:, :-1].sum(1)  # the pooled column
    w = bootstrap_weights(len(prompts), n_boot, seed)
    lo, hi = ratio_ci(num, den, w)
    mean = num.sum(0) / den.sum(0)
    count = den.sum(0)
    overall = Estimate(value=float(mean[-1]), ci_low=float(lo[-1]), ci_high=float(hi[-1]),
                       n=int(count[-1]), resampled="prompts").to_json()
    return _rows(idx, mean, lo, hi, count), overall


def distance_to_base_by_prompt(df: pd.DataFrame, points: np.ndarray, lineage: Sequence[str],
                               kind: str = "prompt") -> pd.DataFrame:
    """Per prompt, each model's mean distance to the first model of the lineage.

    At each step of the prompt's path (``kind="prompt"``: both models read the same tokens)
    the geodesic between the two models' points is taken; a prompt's value is the mean over
    its steps (over every continuation's steps for ``kind="continuation"``). These are the
    per-unit values a stage attribution (``difflens.analysis.attribution.attribute``)
    takes: the change from one stage to the next, paired over prompts.

    Args:
        df: a trajectory table.
        points: one row per table row (the full-dimension cumulative means for the
            full-dimension distance).
        lineage: the models' labels, base first.
        kind: ``prompt`` or ``continuation``.

    Returns:
        ``prompt_id, model, distance`` for every prompt of the table and every model, in
        lineage order; the base's own distance is 0 wherever it has a path, NaN marks a
        prompt without paths of both models.
    """
    df = df.reset_index(drop=True)
    points = np.asarray(points)
    prompts = np.sort(df.prompt_id.unique())
    base = lineage[0]
    is_prompt = (df.segment == "prompt").to_numpy()
    own = is_prompt if kind == "prompt" else ~is_prompt
    frames = []
    for m in lineage:
        if m == base:
            d = pd.Series(0.0, index=pd.unique(df.prompt_id[own & (df.model == base).to_numpy()]))
        else:
            ra, rb = paired_rows(df, (base, m), kind)
            d = (pd.Series(geodesic(points[ra], points[rb]))
                 .groupby(df.prompt_id.to_numpy()[ra]).mean())
        frames.append(pd.DataFrame({"prompt_id": prompts, "model": m,
                                    "distance": d.reindex(prompts).to_numpy(np.float64)}))
    return pd.concat(frames, ignore_index=True)
