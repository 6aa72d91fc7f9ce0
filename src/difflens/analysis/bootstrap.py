"""Percentile bootstrap CIs: the one module that draws resamples and takes their quantiles.

Every figure with a CI in difflens is a percentile bootstrap: resample the units (prompts,
items, texts, tokens, groups of them) with replacement, recompute the statistic on each
resample, and take the ``(1 - level) / 2`` and ``1 - (1 - level) / 2`` quantiles of the
replicates. The draws are seeded (``numpy.random.default_rng(seed).integers``), so a CI is
reproducible, and two statistics computed with the same seed and unit count resample the
same units (a paired bootstrap).

Pieces, lowest first:

- draws: ``resample_indices`` (all at once), ``resamples`` (one at a time, the same
  draws), ``bootstrap_weights`` (the draws as counts, for vectorised sums) and
  ``group_resamples`` (cluster resamples: groups drawn, their units together);
- replicates from weights: ``replicate_means`` and ``replicate_ratios``;
- quantiles: ``quantile`` and ``percentile_ci``, the only calls of
  ``numpy.quantile`` in difflens;
- one ``Estimate`` (value, CI, n, what was resampled) from ``bootstrap_mean``,
  ``bootstrap_paired``, ``bootstrap_ratio``, ``bootstrap_cluster_mean`` and
  ``bootstrap_statistic`` (any statistic of a resample);
- the summaries' older forms: ``bootstrap_ci`` (a mean's CI) and ``mean_ci``
  (``{"mean", "ci95", "n"}``).
"""

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, Literal

import numpy as np
from jaxtyping import Float, Int, Shaped

from difflens.errors import InputError

Seed = int | np.random.Generator
"""A seed, or a generator whose stream the draws continue (for a site that draws other
things from the same stream)."""

QuantileMethod = Literal["linear", "inverted_cdf"]
"""The quantile definitions in use (``numpy.quantile``'s names): ``linear`` everywhere but
for statistics on a grid (a layer index), which take ``inverted_cdf``, an observed value."""

#: Keys that hold the value in the summaries' older spellings, in order of preference.
_VALUE_KEYS = ("value", "delta", "diff", "mean")


def _float(v: Any) -> float:
    """A JSON number as float (``None``, as some summaries write NaN, is NaN)."""
    return float("nan") if v is None else float(v)


@dataclasses.dataclass(frozen=True)
class Estimate:
    """A statistic with its percentile bootstrap CI."""

    value: float
    """The statistic on all units (NaN where there are none)."""
    ci_low: float
    """Lower end of the CI: the ``(1 - level) / 2`` quantile of the replicates (NaN where no
    replicate is finite)."""
    ci_high: float
    """Upper end of the CI: the ``1 - (1 - level) / 2`` quantile of the replicates."""
    n: int
    """Units the statistic was computed on (0 where a legacy summary did not record it)."""
    resampled: str
    """What the bootstrap resampled: ``"prompts"``, ``"items"``, ``"texts"``, ``"tokens"``,
    ... (empty where a legacy summary did not record it)."""
    level: float = 0.95
    """Coverage the CI was built for."""

    @property
    def ci(self) -> tuple[float, float]:
        """``(ci_low, ci_high)``."""
        return (self.ci_low, self.ci_high)

    def to_json(self) -> dict[str, Any]:
        """``{value, ci_low, ci_high, n, resampled}`` (plus ``level`` where it is not 0.95);
        NaN stays a float NaN, as every summary of difflens writes it."""
        out: dict[str, Any] = {"value": float(self.value), "ci_low": float(self.ci_low),
                               "ci_high": float(self.ci_high), "n": int(self.n),
                               "resampled": self.resampled}
        if self.level != 0.95:
            out["level"] = float(self.level)
        return out

    @classmethod
    def from_json(cls, d: Mapping[str, Any], *, resampled: str = "") -> "Estimate":
        """Read ``to_json``'s form or a legacy spelling of a summary.

        Legacy spellings: ``{"mean", "ci95": [lo, hi], "n"}`` and ``{"value" | "delta" |
        "diff" | "mean", "ci_low", "ci_high", "n"}`` (other keys beside them are ignored;
        ``null`` reads as NaN; a missing ``n`` as 0).

        Args:
            d: the summary's dict.
            resampled: what was resampled, where ``d`` does not say.

        Raises:
            InputError: ``d`` has no value key or no CI.
        """
        key = next((k for k in _VALUE_KEYS if k in d), None)
        if key is None:
            raise InputError(f"not an estimate: none of {list(_VALUE_KEYS)} among the keys "
                             f"{sorted(d)}")
        if "ci_low" in d and "ci_high" in d:
            lo, hi = d["ci_low"], d["ci_high"]
        elif "ci95" in d and len(d["ci95"]) == 2:
            lo, hi = d["ci95"]
        else:
            raise InputError(f"not an estimate: no ci_low/ci_high or ci95 among the keys "
                             f"{sorted(d)}")
        return cls(value=_float(d[key]), ci_low=_float(lo), ci_high=_float(hi),
                   n=int(d.get("n", 0) or 0), resampled=str(d.get("resampled", resampled)),
                   level=_float(d.get("level", 0.95)))


# -- draws ----------------------------------------------------------------------------------


def _rng(seed: Seed) -> np.random.Generator:
    return seed if isinstance(seed, np.random.Generator) else np.random.default_rng(seed)


def resample_indices(n: int, n_boot: int, seed: Seed) -> Int[np.ndarray, "n_boot n"]:
    """``n_boot`` resamples of ``n`` units at once: row ``b`` holds the drawn unit indices
    (one ``rng.integers(0, n, size=(n_boot, n))`` call)."""
    return _rng(seed).integers(0, n, size=(n_boot, n))


def resamples(n: int, n_boot: int, seed: Seed) -> Iterator[Int[np.ndarray, " n"]]:
    """The draws of ``resample_indices``, one resample at a time (for a statistic that
    is not vectorised): ``n_boot`` calls of ``rng.integers(0, n, n)``."""
    rng = _rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, n)


def bootstrap_weights(n: int, n_boot: int, seed: Seed) -> Float[np.ndarray, "n_boot n"]:
    """``[n_boot, n]`` resampling counts: row b counts how often each of n units was drawn
    (the draws of ``resample_indices``).

    Weighted sums ``w @ x`` give every bootstrap replicate of a sum at once (vectorised
    bootstraps of means, ratios and cluster resamples).
    """
    idx = resample_indices(n, n_boot, seed)
    w = np.zeros((n_boot, n))
    np.add.at(w, (np.arange(n_boot)[:, None], idx), 1.0)
    return w


def group_resamples(groups: Sequence[object] | np.ndarray, n_boot: int, seed: Seed
                    ) -> Iterator[Int[np.ndarray, " m"]]:
    """``n_boot`` cluster-bootstrap resamples of the units: each draws the groups (prompts,
    stories) with replacement (in sorted order of the group labels, as ``resamples``
    draws units) and yields the indices of all their units together."""
    uniq, inv = np.unique(np.asarray(groups), return_inverse=True)
    members = [np.flatnonzero(inv == g) for g in range(len(uniq))]
    for pick in resamples(len(uniq), n_boot, seed):
        yield np.concatenate([members[g] for g in pick])


# -- replicates from weights ----------------------------------------------------------------


def replicate_means(w: Float[np.ndarray, "n_boot n"], x: Shaped[np.ndarray, "n ..."]
                    ) -> Float[np.ndarray, "n_boot ..."]:
    """The mean of ``x`` over each weighted resample, ``(w @ x) / w.sum(1)``; columns of
    ``w`` may be a subset of the drawn units (then each replicate averages the drawn units
    among them)."""
    x = np.asarray(x, dtype=np.float64)
    total = w.sum(axis=1).reshape((-1,) + (1,) * (x.ndim - 1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((w @ x) / total)


def replicate_ratios(w: Float[np.ndarray, "n_boot n"], num: Shaped[np.ndarray, "n ..."],
                     den: Shaped[np.ndarray, "n ..."]) -> Float[np.ndarray, "n_boot ..."]:
    """``sum(num) / sum(den)`` over each weighted resample, ``(w @ num) / (w @ den)``: a
    mean over the sub-units of resampled units (per-prompt sums over per-prompt counts).
    NaN where a resample holds no denominator."""
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.asarray((w @ np.asarray(num, np.float64)) / (w @ np.asarray(den, np.float64)))


# -- quantiles ------------------------------------------------------------------------------


def quantile(x: Any, q: float | Sequence[float], *, axis: int | None = None,
             method: QuantileMethod = "linear", omit_nan: bool = False) -> np.ndarray:
    """``numpy.quantile`` (``numpy.nanquantile`` with ``omit_nan``): the one call of either
    in difflens. An all-NaN slice gives NaN without a warning."""
    if not omit_nan:
        return np.asarray(np.quantile(x, q, axis=axis, method=method))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # all-NaN slice: NaN
        return np.asarray(np.nanquantile(x, q, axis=axis, method=method))


def _tails(level: float) -> list[float]:
    """The two quantiles of a ``level`` CI, as decimals (0.95 -> 0.025, 0.975 exactly)."""
    if not 0 < level < 1:
        raise InputError(f"a CI level is in (0, 1), got {level}")
    return [round((1 - level) / 2, 12), round(1 - (1 - level) / 2, 12)]


def percentile_ci(replicates: Any, *, level: float = 0.95, axis: int | None = 0,
                  method: QuantileMethod = "linear", omit_nan: bool = False
                  ) -> tuple[np.ndarray, np.ndarray]:
    """The percentile CI of bootstrap replicates along ``axis``.

    Args:
        replicates: ``[n_boot, ...]`` (or any array with the replicates along ``axis``).
        level: coverage; the quantiles are ``(1 - level) / 2`` and ``1 - (1 - level) / 2``.
        axis: the replicates' axis (None: all values).
        method: the quantile definition (``numpy.quantile``'s ``method``).
        omit_nan: ignore NaN replicates (a resample without the statistic); otherwise a NaN
            replicate makes the CI NaN.

    Returns:
        ``(low, high)``, each of the replicates' shape without ``axis`` (0-d for a vector).
    """
    q = quantile(replicates, _tails(level), axis=axis, method=method, omit_nan=omit_nan)
    return np.asarray(q[0]), np.asarray(q[1])


# -- estimates ------------------------------------------------------------------------------


def _estimate(value: float, reps: np.ndarray, n: int, resampled: str, level: float,
              omit_nan: bool = True) -> Estimate:
    reps = np.asarray(reps, np.float64)
    if not len(reps) or (omit_nan and not np.isfinite(reps).any()):
        return Estimate(float(value), math.nan, math.nan, n, resampled, level)
    lo, hi = percentile_ci(reps, level=level, omit_nan=omit_nan)
    return Estimate(float(value), float(lo), float(hi), n, resampled, level)


def bootstrap_mean(values: Sequence[float] | Shaped[np.ndarray, " n"], *, n_boot: int = 1000,
                   seed: Seed = 0, resampled: str, level: float = 0.95) -> Estimate:
    """The mean of the finite values with its CI (non-finite values are left out before the
    draws, and ``n`` counts the finite ones).

    The replicates are ``x[resample_indices(n, n_boot, seed)].mean(1)``.
    """
    x = np.asarray(values, dtype=np.float64)
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, resampled, level)
    reps = x[resample_indices(len(x), n_boot, seed)].mean(axis=1)
    return _estimate(float(x.mean()), reps, len(x), resampled, level, omit_nan=False)


def bootstrap_paired(a: Shaped[np.ndarray, " n"], b: Shaped[np.ndarray, " n"], *,
                     n_boot: int = 1000, seed: Seed = 0, resampled: str,
                     level: float = 0.95) -> Estimate:
    """``mean(a) - mean(b)`` over units measured twice (aligned arrays), every replicate
    drawing the same units for both; units where either is non-finite are left out.

    The replicates are ``replicate_means(bootstrap_weights(n, n_boot, seed), a - b)``.
    """
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise InputError(f"a paired bootstrap needs two aligned vectors, got shapes {a.shape} "
                         f"and {b.shape}")
    d = (a - b)[np.isfinite(a) & np.isfinite(b)]
    if len(d) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, resampled, level)
    reps = replicate_means(bootstrap_weights(len(d), n_boot, seed), d)
    return _estimate(float(d.mean()), reps, len(d), resampled, level, omit_nan=False)


def bootstrap_ratio(num: Shaped[np.ndarray, " n"], den: Shaped[np.ndarray, " n"], *,
                    n_boot: int = 1000, seed: Seed = 0, resampled: str,
                    level: float = 0.95) -> Estimate:
    """``sum(num) / sum(den)`` with its CI, resampling units (the rows): a mean over the
    sub-units of each unit (e.g. per-prompt sums over per-prompt token counts). A resample
    whose denominator sums to 0 is left out (a NaN numerator makes the CI NaN); ``n`` counts
    units.
    """
    num, den = np.asarray(num, np.float64), np.asarray(den, np.float64)
    if num.shape != den.shape or num.ndim != 1:
        raise InputError(f"a ratio needs aligned numerators and denominators, got shapes "
                         f"{num.shape} and {den.shape}")
    if len(num) == 0:
        return Estimate(math.nan, math.nan, math.nan, 0, resampled, level)
    w = bootstrap_weights(len(num), n_boot, seed)
    reps = replicate_ratios(w, num, den)[w @ den != 0]
    with np.errstate(invalid="ignore", divide="ignore"):
        value = float(num.sum() / den.sum())
    return _estimate(value, reps, len(num), resampled, level, omit_nan=False)


def bootstrap_cluster_mean(values: Shaped[np.ndarray, " n"],
                           groups: Sequence[object] | np.ndarray, *, n_boot: int = 1000,
                           seed: Seed = 0, resampled: str, level: float = 0.95) -> Estimate:
    """The mean of the finite values, resampling their groups (a prompt's samples together):
    ``bootstrap_ratio`` of the per-group sums and counts, groups in sorted order (the
    draws of ``group_resamples``). ``n`` counts values."""
    x = np.asarray(values, np.float64)
    g = np.asarray(groups)
    if len(g) != len(x):
        raise InputError(f"one group per value: got {len(x)} values and {len(g)} groups")
    ok = np.isfinite(x)
    _, inv = np.unique(g, return_inverse=True)  # every group, with or without a finite value
    k = int(inv.max()) + 1 if len(inv) else 0
    sums = np.bincount(inv[ok], weights=x[ok], minlength=k)
    counts = np.bincount(inv[ok], minlength=k).astype(np.float64)
    est = bootstrap_ratio(sums, counts, n_boot=n_boot, seed=seed, resampled=resampled,
                          level=level)
    return dataclasses.replace(est, n=int(ok.sum()))


def bootstrap_statistic(statistic: Callable[[Int[np.ndarray, " m"]], float], n: int, *,
                        n_boot: int = 1000, seed: Seed = 0, resampled: str,
                        groups: Sequence[object] | np.ndarray | None = None,
                        level: float = 0.95) -> Estimate:
    """Any statistic of the units, with a CI over resamples of them (a loop, one call a
    resample: for statistics that are not weighted sums, e.g. an AUC, a rank correlation).

    Args:
        statistic: the statistic of the units at the given indices (with repeats).
        n: the number of units; the value is ``statistic(arange(n))``.
        n_boot: resamples.
        seed: seed of the draws (``resamples``, or ``group_resamples`` with
            ``groups``).
        resampled: what is resampled (the units, or with ``groups`` the groups).
        groups: one label per unit: resample the groups, all their units together.
        level: coverage.

    Non-finite replicates (a resample where the statistic is undefined, e.g. one class
    only) are left out; ``n`` of the estimate is ``n``.
    """
    draws = resamples(n, n_boot, seed) if groups is None else group_resamples(groups, n_boot,
                                                                                seed)
    reps = np.array([statistic(pick) for pick in draws], dtype=np.float64)
    reps = reps[np.isfinite(reps)]
    return _estimate(statistic(np.arange(n)), reps, n, resampled, level, omit_nan=False)


# -- the summaries' older forms -------------------------------------------------------------


def bootstrap_ci(values: Sequence[float] | np.ndarray, *, seed: int = 0, n_boot: int = 1000,
                 level: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean of the finite values (``bootstrap_mean``)."""
    return bootstrap_mean(values, n_boot=n_boot, seed=seed, resampled="", level=level).ci


def mean_ci(values: Sequence[float] | np.ndarray, *, seed: int = 0) -> dict[str, Any]:
    """``{"mean", "ci95", "n"}`` of the finite values: the form of every headline figure.

    ``mean`` is ``numpy.nanmean`` of ``values`` (as it always was: an infinite value makes
    it infinite, while the CI and ``n`` leave it out).
    """
    est = nanmean_estimate(values, seed=seed, resampled="")
    return {"mean": est.value, "ci95": list(est.ci), "n": est.n}


def nanmean_estimate(values: Sequence[float] | np.ndarray, *, seed: int = 0,
                     resampled: str) -> Estimate:
    """The mean of ``values`` with the CI of ``bootstrap_mean`` (``n`` counts the finite
    values); the value is ``numpy.nanmean`` of all of them, so an infinite value makes it
    infinite while the CI and ``n`` leave it out."""
    x = np.asarray(values, dtype=np.float64)
    est = bootstrap_mean(x, seed=seed, resampled=resampled)
    return dataclasses.replace(est, value=float(np.nanmean(x)))
