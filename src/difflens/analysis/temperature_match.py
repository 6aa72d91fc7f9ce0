"""Where does the tuned model, sampled hotter, become as diverse as the base at T = 1?

The exact-probe temperature sweep (``temperature_sweep``) asks
whether a temperature explains the tuned model's answer distributions. This is the same
question for free text: the tuned model is sampled at several temperatures and the base at
1, a diversity metric is computed per prompt, and the meeting temperature is where the tuned
model's mean curve crosses the base's mean (linear interpolation in log T between grid
points). Its 95% CI resamples prompts; a resample whose curve never crosses counts as
"no meeting" and is reported as a share.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    replicate_means,
)
from difflens.errors import InputError


@dataclasses.dataclass(frozen=True)
class TemperatureMatch:
    """Meeting temperatures of the tuned model's diversity curves with the base."""

    curves: pd.DataFrame
    """One row per metric and temperature: tuned mean, ci_low, ci_high, base (mean at T=1),
    n_prompts."""
    meet: dict[str, dict[str, Any]]
    """metric -> the meeting temperature as an estimate, ``{value, ci_low, ci_high, n,
    resampled: "prompts"}``, with ``no_meeting_share``, ``base``, ``tuned_at_1`` and
    ``n_prompts`` beside it; the value (and its CI) is NaN when the tuned curve does not cross
    the base within the grid."""

    def summary(self) -> dict[str, Any]:
        return {"meet": self.meet,
                "temperatures": sorted({float(t) for t in self.curves["T"]})}


def crossing(temps: np.ndarray, gap: np.ndarray) -> float:
    """The first temperature where ``gap`` (tuned - base, per temperature) changes sign,
    interpolated linearly in log T; NaN when it never does."""
    logt = np.log(temps)
    if gap[0] == 0:
        return float(temps[0])
    for i in range(len(gap) - 1):
        a, b = gap[i], gap[i + 1]
        if b == 0:
            return float(temps[i + 1])
        if np.sign(a) != np.sign(b):
            return float(np.exp(logt[i] + (logt[i + 1] - logt[i]) * a / (a - b)))
    return float("nan")


def meeting_temperature(tuned: pd.DataFrame, base: pd.DataFrame, metrics: Sequence[str], *,
                        seed: int = 0, n_boot: int = 1000) -> TemperatureMatch:
    """Meeting temperature of each metric.

    Args:
        tuned: one row per prompt_id and T with a column per metric.
        base: one row per prompt_id (the base at T = 1) with the same metric columns.
        metrics: the columns to match.
        seed: bootstrap seed (prompts are resampled).
        n_boot: bootstrap resamples.
    """
    temps = np.sort(tuned["T"].unique()).astype(np.float64)
    if len(temps) < 2:
        raise InputError(f"the free-text temperature check needs at least 2 temperatures, "
                         f"got {list(temps)}; pass e.g. 0.5,1,2")
    prompts = np.sort(base["prompt_id"].unique())
    rows: list[dict[str, Any]] = []
    meet: dict[str, dict[str, Any]] = {}
    w = bootstrap_weights(len(prompts), n_boot, seed)
    for metric in metrics:
        grid = (tuned.pivot_table(index="prompt_id", columns="T", values=metric)
                .reindex(index=prompts, columns=temps).to_numpy(np.float64))
        b = base.set_index("prompt_id")[metric].reindex(prompts).to_numpy(np.float64)
        ok = np.isfinite(grid).all(axis=1) & np.isfinite(b)
        grid, b, wm = grid[ok], b[ok], w[:, ok]
        if not len(b):
            raise InputError(f"no prompt has a finite {metric} at every temperature; sample "
                             f"longer continuations or more samples per prompt")
        boot_t = replicate_means(wm, grid)  # [n_boot, T]
        boot_b = replicate_means(wm, b)
        mean_t, mean_b = grid.mean(axis=0), float(b.mean())
        lo, hi = percentile_ci(boot_t)
        rows += [{"metric": metric, "T": float(t), "tuned": float(m), "ci_low": float(x),
                  "ci_high": float(y), "base": mean_b, "n_prompts": int(ok.sum())}
                 for t, m, x, y in zip(temps, mean_t, lo, hi, strict=True)]
        boots = np.array([crossing(temps, boot_t[i] - boot_b[i]) for i in range(len(boot_t))])
        found = boots[np.isfinite(boots)]
        t1 = np.flatnonzero(np.isclose(temps, 1.0))
        point = crossing(temps, mean_t - mean_b)
        t_lo, t_hi = (percentile_ci(found) if len(found) and np.isfinite(point)
                      else (float("nan"), float("nan")))
        meet[metric] = Estimate(value=point, ci_low=float(t_lo), ci_high=float(t_hi),
                                n=int(ok.sum()), resampled="prompts").to_json() | {
            "no_meeting_share": float(1 - len(found) / len(boots)),
            "base": mean_b, "tuned_at_1": float(mean_t[t1[0]]) if len(t1) else float("nan"),
            "n_prompts": int(ok.sum())}
    return TemperatureMatch(curves=pd.DataFrame(rows), meet=meet)
