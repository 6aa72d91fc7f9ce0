"""Sentiment along the paths: each token's score by a labeller (VADER in the pipelines),
weighted by the jump the token causes, and the correlation between jump and sentiment.
"""

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import Estimate, bootstrap_weights, percentile_ci
from difflens.analysis.trajectory_distance import ratio_ci
from difflens.analysis.trajectory_table import readable_token

WordScorer = Callable[[list[str]], np.ndarray]
"""Scores texts, one number each (a labeller such as ``difflens.models.labellers.sentiment``,
VADER's compound score); the statistics here take its scores, never load it."""


def token_sentiment(tokens: Sequence[Any], score_words: WordScorer) -> np.ndarray:
    """``score_words`` of each token's readable word, each distinct token scored once (0 for
    an unknown token, None, or an empty word)."""
    codes, uniques = pd.factorize(pd.Series(list(tokens), dtype=object), use_na_sentinel=True)
    words = [readable_token(t).strip() if isinstance(t, str) else "" for t in uniques]
    scores = np.zeros(len(uniques) + 1)  # the last slot scores missing tokens as 0
    if words:
        scores[:-1] = np.asarray(score_words(words), dtype=np.float64)
        scores[:-1][[not w for w in words]] = 0.0
    return scores[np.where(codes < 0, len(uniques), codes)]


def sentiment_stats(j: pd.DataFrame, models: Sequence[str], n_boot: int, seed: int
                    ) -> dict[str, Any]:
    """Jump-weighted mean sentiment per model and the jump-sentiment correlation, with CIs
    that resample prompts.

    Args:
        j: one row per jump: ``prompt_id``, ``model``, ``jump`` and the token's
            ``sentiment`` (``token_sentiment``).
        models: the model labels.
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{jump_weighted: {model: estimate}, correlation: {model: estimate},
        mean_unweighted: {model: {mean, n}}}``, each estimate ``{value, ci_low, ci_high, n,
        resampled: "prompts"}`` with ``n`` the jumps (Pearson's r for the correlation).
    """
    out: dict[str, Any] = {"jump_weighted": {}, "correlation": {}, "mean_unweighted": {}}
    for m in models:
        s = j[j.model == m]
        if s.empty:
            continue
        prompts = {p: i for i, p in enumerate(s.prompt_id.unique())}
        pi = s.prompt_id.map(prompts).to_numpy()
        x, y = s.jump.to_numpy(), s.sentiment.to_numpy()
        sums = np.zeros((len(prompts), 6))
        np.add.at(sums, pi, np.stack([x * y, x, y, x * x, y * y, np.ones_like(x)], 1))
        w = bootstrap_weights(len(prompts), n_boot, seed)
        jw = sums[:, 0].sum() / sums[:, 1].sum()
        lo, hi = ratio_ci(sums[:, [0]], sums[:, [1]], w)
        out["jump_weighted"][m] = Estimate(value=float(jw), ci_low=float(lo[0]),
                                           ci_high=float(hi[0]), n=len(x),
                                           resampled="prompts").to_json()
        out["mean_unweighted"][m] = {"mean": float(y.mean()), "n": len(y)}

        def corr(t: np.ndarray) -> np.ndarray:
            t = np.atleast_2d(t)
            n = t[:, 5]
            cov = t[:, 0] / n - (t[:, 1] / n) * (t[:, 2] / n)
            vx = t[:, 3] / n - (t[:, 1] / n) ** 2
            vy = t[:, 4] / n - (t[:, 2] / n) ** 2
            with np.errstate(invalid="ignore", divide="ignore"):
                return np.asarray(cov / np.sqrt(vx * vy))

        r = float(corr(sums.sum(0))[0])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # no variance: r is undefined
            lo2, hi2 = percentile_ci(corr(w @ sums), omit_nan=True)
        out["correlation"][m] = Estimate(value=r, ci_low=float(lo2), ci_high=float(hi2),
                                         n=len(x), resampled="prompts").to_json()
    return out
