"""Summaries of how a pair diverges: per-token KL with bootstrap CIs, and per layer."""

from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import nanmean_estimate


def summarize_pair_stats(stats: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Mean KL both ways, top-1 agreement and each model's entropy over the tokens of
    ``stats``: ``{column: {value, ci_low, ci_high, n, resampled: "tokens"}}``."""
    cols = ["kl_tuned_base", "kl_base_tuned", "top1_agree", "base_entropy", "tuned_entropy"]
    missing = [c for c in cols if c not in stats]
    if missing:
        raise ValueError(f"not a pair's statistics table: missing columns {missing}")
    return {c: nanmean_estimate(stats[c].to_numpy(dtype=np.float64), seed=seed,
                                resampled="tokens").to_json() for c in cols}
