"""Summaries of how a pair diverges: per-token KL with bootstrap CIs, and per layer."""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import Estimate, bootstrap_mean


def nanmean_estimate(values: Sequence[float] | np.ndarray, *, seed: int = 0,
                     resampled: str) -> Estimate:
    """The mean of ``values`` with the CI of :func:`~difflens.analysis.bootstrap.bootstrap_mean`
    (``n`` counts the finite values); the value is ``numpy.nanmean`` of all of them, so an
    infinite value makes it infinite while the CI and ``n`` leave it out."""
    x = np.asarray(values, dtype=np.float64)
    est = bootstrap_mean(x, seed=seed, resampled=resampled)
    return dataclasses.replace(est, value=float(np.nanmean(x)))


def summarize_pair_stats(stats: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Mean KL both ways, top-1 agreement and each model's entropy over the tokens of
    ``stats``: ``{column: {value, ci_low, ci_high, n, resampled: "tokens"}}``."""
    cols = ["kl_tuned_base", "kl_base_tuned", "top1_agree", "base_entropy", "tuned_entropy"]
    missing = [c for c in cols if c not in stats]
    if missing:
        raise ValueError(f"not a pair's statistics table: missing columns {missing}")
    return {c: nanmean_estimate(stats[c].to_numpy(dtype=np.float64), seed=seed,
                                resampled="tokens").to_json() for c in cols}
