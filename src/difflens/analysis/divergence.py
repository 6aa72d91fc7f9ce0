"""Summaries of how a pair diverges: per-token KL with bootstrap CIs, and per layer."""

from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pandas as pd


def bootstrap_ci(
    values: np.ndarray, *, seed: int = 0, n_boot: int = 1000, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean (seeded, reproducible)."""
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return (float("nan"), float("nan"))
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, len(x), size=(n_boot, len(x)))].mean(axis=1)
    lo, hi = np.quantile(means, [(1 - level) / 2, 1 - (1 - level) / 2])
    return (float(lo), float(hi))


def bootstrap_weights(n: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n] resampling counts: row b counts how often each of n units was drawn.

    Weighted sums ``w @ x`` give every bootstrap replicate of a sum at once (vectorised
    bootstraps of means, ratios and cluster resamples).
    """
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, n, size=(n_boot, n))
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return w


def group_resamples(groups: Sequence[object] | np.ndarray, n_boot: int, seed: int
                    ) -> Iterator[np.ndarray]:
    """``n_boot`` cluster-bootstrap resamples of the units: each draws the groups (prompts,
    stories) with replacement and yields the indices of all their units together."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield np.concatenate([members[g] for g in rng.integers(0, len(uniq), len(uniq))])


def mean_ci(values: Sequence[float] | np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95", "n"}`` of the finite values: the form of every headline figure."""
    x = np.asarray(values, dtype=np.float64)
    return {"mean": float(np.nanmean(x)), "ci95": list(bootstrap_ci(x, seed=seed)),
            "n": int(np.isfinite(x).sum())}


def summarize_pair_stats(stats: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Mean KL both ways, top-1 agreement and each model's entropy, with n and 95% CIs."""
    cols = ["kl_tuned_base", "kl_base_tuned", "top1_agree", "base_entropy", "tuned_entropy"]
    missing = [c for c in cols if c not in stats]
    if missing:
        raise ValueError(f"not a pair's statistics table: missing columns {missing}")
    return {c: mean_ci(stats[c].to_numpy(dtype=np.float64), seed=seed) for c in cols}


