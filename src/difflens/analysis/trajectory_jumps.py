"""Jumps along the paths of a trajectory table: the tokens ranked by the jump they cause,
and the difference of two models' mean jump per token index.

The jump at step ``t`` is the geodesic from ``Y_{t-1}`` to ``Y_t``
(``path_jumps``), attributed to token ``t``.
"""

import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    replicate_ratios,
    resample_indices,
)
from difflens.analysis.trajectory_distance import cell_sums
from difflens.analysis.trajectory_table import display_token


def jump_difference(df: pd.DataFrame, jump: np.ndarray, models: tuple[str, str], *,
                    n_boot: int = 500, seed: int = 0) -> dict[str, Any]:
    """Mean jump per step index, tuned minus base, with 95% CIs.

    Where the models share prompts the comparison is paired: at each index only prompts
    where both models jump are used, and one bootstrap resamples those prompts for both
    models; otherwise each model's prompts are resampled on their own. Jumps of every
    segment are pooled, as in ``jumps.by_index``.

    Args:
        df: a trajectory table (default index).
        jump: one jump per row
            (``path_jumps``; NaN where there is none).
        models: the two labels (base first).
        n_boot: bootstrap resamples.
        seed: bootstrap seed.

    Returns:
        ``{models, paired, n_prompts, by_index: [{value, ci_low, ci_high, n, resampled,
        index, base, tuned, n_jumps_base, n_jumps_tuned}], overall: {value, ci_low,
        ci_high, n, resampled}}``: each row and ``overall`` is an estimate of the difference
        (``resampled: "prompts"``); ``n`` counts prompts; ``base`` / ``tuned`` are each
        model's mean jump at that index (named by their role, whatever the labels);
        ``overall`` averages the per-index differences weighted by ``n``, so a model whose
        paths are shorter is not credited with the large jumps every cumulative mean makes
        at its first steps.
    """
    if models[0] == models[1]:
        return {}
    ok = np.isfinite(jump) & df.model.isin(models).to_numpy()
    sub = df.loc[ok, ["prompt_id", "model", "step"]].assign(jump=jump[ok])
    has = [set(sub.prompt_id[sub.model == m]) for m in models]
    shared = has[0] & has[1]
    paired = bool(shared)
    if paired:
        sub = sub[sub.prompt_id.isin(shared)]
    if sub.empty or not all(has):
        return {}
    pi, prompts = pd.factorize(sub.prompt_id)
    idx = np.sort(sub.step.unique())
    si = np.searchsorted(idx, sub.step.to_numpy())
    mi = (sub.model == models[1]).to_numpy().astype(np.int64)
    s, c = cell_sums((mi, pi, si), (2, len(prompts), len(idx)), sub.jump.to_numpy())
    if paired:
        both = (c[0] > 0) & (c[1] > 0)  # a prompt counts at an index where both jump
        s, c = s * both, c * both
        n = both.sum(0)
        w = bootstrap_weights(len(prompts), n_boot, seed)
        wa = wb = w
    else:
        n = ((c[0] > 0) | (c[1] > 0)).sum(0)
        wa, wb = np.zeros((n_boot, len(prompts))), np.zeros((n_boot, len(prompts)))
        for wm, m, sd in ((wa, 0, seed), (wb, 1, seed + 1)):
            own = np.flatnonzero(c[m].sum(1) > 0)
            wm[:, own] = bootstrap_weights(len(own), n_boot, sd)
    with np.errstate(invalid="ignore", divide="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an index no resample contains
        mean = s.sum(1) / c.sum(1)  # [2, index]
        diff = mean[1] - mean[0]
        boots = replicate_ratios(wb, s[1], c[1]) - replicate_ratios(wa, s[0], c[0])
        lo, hi = percentile_ci(boots, omit_nan=True)
        keep = np.isfinite(diff)
        wk = np.where(keep, n, 0).astype(np.float64)
        overall = float((wk[keep] * diff[keep]).sum() / wk.sum())
        fin = np.isfinite(boots)
        ob = (np.where(fin, boots, 0.0) * wk).sum(1) / (fin * wk).sum(1)
        olo, ohi = percentile_ci(ob, omit_nan=True)
    rows = [Estimate(value=float(diff[k]), ci_low=float(lo[k]), ci_high=float(hi[k]),
                     n=int(n[k]), resampled="prompts").to_json()
            | {"index": int(x), "base": float(mean[0, k]), "tuned": float(mean[1, k]),
               "n_jumps_base": int(c[0, :, k].sum()), "n_jumps_tuned": int(c[1, :, k].sum())}
            for k, x in enumerate(idx) if keep[k]]
    return {"models": list(models), "paired": paired, "n_prompts": len(prompts),
            "by_index": rows,
            "overall": Estimate(value=overall, ci_low=float(olo), ci_high=float(ohi),
                                n=int(wk.sum()), resampled="prompts").to_json()}


def rank_tokens(j: pd.DataFrame, min_count: int, k: int, n_boot: int, seed: int,
                col: str = "jump") -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The ``k`` tokens with the largest and the smallest mean ``col`` (among tokens seen at
    least ``min_count`` times), each an estimate of its mean over its occurrences with a
    bootstrap CI over them: ``{value, ci_low, ci_high, n, resampled: "occurrences", token,
    token_raw, text}`` (``token``/``text``: readable; ``token_raw``: the tokenizer's)."""
    if j.empty:
        return [], []
    g = j.groupby("token")[col].agg(["mean", "count"])
    g = g[g["count"] >= min_count].sort_values("mean", ascending=False)
    rng = np.random.default_rng(seed)
    where = j.groupby("token").indices
    values = j[col].to_numpy()

    def rows(tokens: Sequence[str]) -> list[dict[str, Any]]:
        out = []
        for t in tokens:
            x = values[where[t]]
            lo, hi = percentile_ci(x[resample_indices(len(x), n_boot, rng)].mean(1))
            shown = display_token(t)
            out.append(Estimate(value=float(x.mean()), ci_low=float(lo), ci_high=float(hi),
                                n=len(x), resampled="occurrences").to_json()
                       | {"token": shown, "token_raw": t, "text": shown})
        return out

    return rows(list(g.index[:k])), rows(list(g.index[::-1][:k]))
