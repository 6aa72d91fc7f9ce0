"""Which stage of a training pipeline made a change: a per-unit metric along a lineage
(base -> SFT -> preference-tuned), split into the change each stage made and its share.

For models ``m_0 .. m_K`` in lineage order and a metric measured on the same units (prompts,
items) for every model, model ``m``'s level is the mean over units (or, with denominators,
the ratio of sums ``sum num / sum den``). Stage ``k`` (named after the model it produces)
changed the level by ``delta_k = level(m_k) - level(m_{k-1})``; the deltas add up to the
total change ``level(m_K) - level(m_0)``, and ``share_k = delta_k / total``.

The 95% CIs come from one percentile bootstrap that resamples the units jointly: every
replicate draws the same units for every model (a paired bootstrap), so what the units
share (a hard prompt is hard for every model) cancels out of the deltas. The draws are
``bootstrap_weights`` of the seed, so the result is
reproducible, and a two-model lineage gives the pair's usual CI of the mean difference.
"""

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from difflens.analysis.bootstrap import bootstrap_weights, percentile_ci, replicate_ratios
from difflens.errors import InputError

#: Columns of ``Attribution.table``, one row per stage.
COLUMNS = (
    "stage",
    "from",
    "to",
    "delta",
    "ci_low",
    "ci_high",
    "share",
    "share_ci_low",
    "share_ci_high",
    "n",
    "total",
    "total_ci_low",
    "total_ci_high",
    "resampled",
)


@dataclasses.dataclass(frozen=True)
class Attribution:
    """The change each stage of a lineage made to one metric, with paired bootstrap CIs."""

    table: pd.DataFrame
    """One row per stage (see ``COLUMNS``): ``stage`` is the model the stage produced,
    ``from``/``to`` the models it joins, ``delta`` its change with ``ci_low``/``ci_high``,
    ``share`` the fraction of the total change it made with ``share_ci_low``/
    ``share_ci_high`` (NaN when not defined: see ``notes``), ``n`` the units used;
    ``total`` with ``total_ci_low``/``total_ci_high`` the whole lineage's change (the same
    on every row: what a reader needs to judge the shares) and ``resampled`` what the
    units are."""
    levels: dict[str, float]
    """Each model's level of the metric on the units used, in lineage order."""
    total: float
    """Last model's level minus the first's (the sum of the deltas)."""
    total_ci: tuple[float, float]
    """Its 95% bootstrap CI."""
    n: int
    """Units used: those with a finite value (and denominator) for every model."""
    n_dropped: int
    """Units left out because some model's value was missing (NaN or infinite)."""
    notes: tuple[str, ...]
    """What the reader must know: dropped units, an undefined share or share CI."""
    seed: int
    n_boot: int
    resampled: str = ""
    """What the bootstrap resampled (``"prompts"``, ``"items"``, ``"texts"``, ...)."""

    def summary(self) -> dict[str, dict[str, Any]]:
        """``{stage: {value, ci_low, ci_high, n, resampled, share, share_low,
        share_high}}`` (the share's 95% CI: ``share_low``, ``share_high``) for the
        ``attribution.<metric>.<stage>`` keys of a stored summary: each stage's change as an
        estimate (``to_json``'s keys, ``value``
        the change) with its share of the total beside it; a number that is not finite is
        ``None`` (JSON-safe)."""
        return {str(r["stage"]): stage_estimate(r, self.resampled)
                for r in self.table.to_dict("records")}


def stage_estimate(row: Mapping[str, Any], resampled: str = "") -> dict[str, Any]:
    """One row of ``Attribution.table`` as ``{value, ci_low, ci_high, n, resampled,
    share, share_low, share_high}`` (the summary's spelling of a stage; not finite:
    ``None``, e.g. the share CI of a total whose CI includes 0)."""
    return {"value": _json_float(row["delta"]), "ci_low": _json_float(row["ci_low"]),
            "ci_high": _json_float(row["ci_high"]), "n": int(row["n"]),
            "resampled": resampled, "share": _json_float(row["share"]),
            "share_low": _json_float(row.get("share_ci_low")),
            "share_high": _json_float(row.get("share_ci_high"))}


def _json_float(x: Any) -> float | None:
    x = float(x)
    return None if not math.isfinite(x) else x


def _stack(by_model: Mapping[str, Any], lineage: Sequence[str], what: str) -> np.ndarray:
    rows = []
    for m in lineage:
        x = np.asarray(by_model[m], np.float64)
        if x.ndim != 1:
            raise InputError(
                f"{what} of {m!r} must be one value per unit (1-D), got shape {x.shape}"
            )
        rows.append(x)
    lengths = {m: len(x) for m, x in zip(lineage, rows, strict=True)}
    if len(set(lengths.values())) > 1:
        raise InputError(
            f"{what} must cover the same units for every model, got lengths "
            f"{lengths}; measure every model on the same prompts or items"
        )
    return np.stack(rows)


def attribute(
    values_by_model: Mapping[str, Float[np.ndarray, " n"]],
    lineage: Sequence[str],
    *,
    denominators: Mapping[str, Float[np.ndarray, " n"]] | Float[np.ndarray, " n"] | None = None,
    seed: int = 0,
    n_boot: int = 1000,
    level: float = 0.95,
    share_rtol: float = 1e-6,
    resampled: str = "",
) -> Attribution:
    """Split the change of a per-unit metric along ``lineage`` into its stages.

    Args:
        values_by_model: model name -> the metric on each unit, shape ``[n]``, the same
            units in the same order for every model (NaN where a unit is missing). With
            ``denominators`` these are the numerators of a ratio of sums.
        lineage: the models in training order, base first (at least two; other keys of
            ``values_by_model`` are ignored).
        denominators: for a metric that is a ratio of sums (e.g. mean per-token entropy
            with units = prompts: token-entropy sums over token counts): one ``[n]`` array
            shared by all models, or one per model; ``None``: plain means.
        seed: seed of the bootstrap draws.
        n_boot: bootstrap replicates (memory: ``n_boot * n`` float64 weights).
        level: CI level.
        share_rtol: the total counts as ~0 (shares undefined) when ``|total|`` is at most
            this times the summed size of the stage changes (or within float rounding of
            the levels).
        resampled: what the units are (``"prompts"``, ``"texts"``, ...), recorded for the
            summary.

    Returns:
        An ``Attribution``: one table row per stage, the levels, the total and notes.

    Raises:
        InputError: fewer than two models, a name missing or repeated, arrays of other
            shapes or lengths, or no unit with a value for every model.
    """
    lineage = list(lineage)
    if len(lineage) < 2:
        raise InputError(f"attribution needs a lineage of at least 2 models, got {lineage}")
    if len(set(lineage)) != len(lineage):
        raise InputError(f"the lineage names a model twice: {lineage}")
    missing = [m for m in lineage if m not in values_by_model]
    if missing:
        raise InputError(
            f"no values for {missing}: values_by_model holds {sorted(values_by_model)}"
        )
    if n_boot < 1 or not 0 < level < 1:
        raise InputError(f"n_boot must be >= 1 and level in (0, 1), got {n_boot} and {level}")
    num = _stack(values_by_model, lineage, "values")
    if denominators is None:
        den = np.ones_like(num)
    elif isinstance(denominators, Mapping):
        absent = [m for m in lineage if m not in denominators]
        if absent:
            raise InputError(
                f"no denominators for {absent}: give one array per model of the "
                f"lineage, or one array for all"
            )
        den = _stack(denominators, lineage, "denominators")
    else:
        den = _stack({m: denominators for m in lineage}, lineage, "denominators")
    if den.shape != num.shape:
        raise InputError(
            f"denominators cover {den.shape[1]} units, values {num.shape[1]}; "
            f"give both for the same units"
        )
    keep = np.isfinite(num).all(axis=0) & np.isfinite(den).all(axis=0)
    n_all, n = num.shape[1], int(keep.sum())
    if n == 0:
        raise InputError(
            f"no unit has a finite value for every model of {lineage} (of "
            f"{n_all} units); check the inputs"
        )
    num, den = num[:, keep], den[:, keep]
    if (den < 0).any() or (den.sum(axis=1) <= 0).any():
        raise InputError("denominators must be >= 0 with a positive sum for every model")
    notes = []
    if n < n_all:
        notes.append(f"{n_all - n} of {n_all} units dropped: missing for some model")

    levels = num.sum(axis=1) / den.sum(axis=1)  # [models]
    w = bootstrap_weights(n, n_boot, seed)  # [n_boot, n], the same draws for every model
    boot = replicate_ratios(w, num.T, den.T)  # [n_boot, models]
    return attribute_levels(levels, boot, lineage, n=n, n_dropped=n_all - n, seed=seed,
                            level=level, share_rtol=share_rtol, notes=notes,
                            resampled=resampled)


def attribute_levels(
    levels: Float[np.ndarray, " models"],
    boot: Float[np.ndarray, "n_boot models"],
    lineage: Sequence[str],
    *,
    n: int,
    n_dropped: int = 0,
    seed: int = 0,
    level: float = 0.95,
    share_rtol: float = 1e-6,
    notes: Sequence[str] = (),
    resampled: str = "",
) -> Attribution:
    """The attribution of any statistic whose paired bootstrap is already drawn.

    For a statistic that is not a mean of per-unit values (e.g. the cosine of each model's
    concept vector with the base's, recomputed from resampled items), draw the replicates
    with the same unit weights for every model and pass them here; ``attribute`` is this
    function applied to means (or ratios of sums).

    Args:
        levels: each model's statistic on all units, in lineage order.
        boot: the statistic on each bootstrap replicate, ``[n_boot, models]`` (NaN
            replicates are ignored); every row must resample the same units for every model.
        lineage: the models' names, in the order of the columns.
        n: units the statistic was computed on.
        n_dropped: units left out before (reported in the notes by the caller).
        seed: seed the replicates were drawn with (recorded).
        level: CI level.
        share_rtol: see ``attribute``.
        notes: notes to keep.
        resampled: what the replicates resampled (recorded for the summary).
    """
    lineage = list(lineage)
    levels = np.asarray(levels, np.float64)
    boot = np.asarray(boot, np.float64)
    if levels.shape != (len(lineage),) or boot.ndim != 2 or boot.shape[1] != len(lineage):
        raise InputError(
            f"levels {levels.shape} and replicates {boot.shape} must have one column per "
            f"model of {lineage}"
        )
    notes = list(notes)
    n_boot = boot.shape[0]
    deltas, boot_deltas = np.diff(levels), np.diff(boot, axis=1)
    total, boot_total = float(levels[-1] - levels[0]), boot[:, -1] - boot[:, 0]
    lo, hi = percentile_ci(boot_deltas, level=level, omit_nan=True)
    t_lo, t_hi = (float(v) for v in percentile_ci(boot_total, level=level, omit_nan=True))

    rounding = 64 * np.finfo(np.float64).eps * float(np.abs(levels).max())
    nan = np.full(len(deltas), np.nan)
    if abs(total) <= max(share_rtol * float(np.abs(deltas).sum()), rounding):
        share, s_lo, s_hi = nan, nan, nan
        notes.append(
            f"the total change {lineage[0]} -> {lineage[-1]} is ~0 ({total:.3g}), "
            f"so shares are undefined"
        )
    else:
        share = deltas / total
        if t_lo <= 0 <= t_hi:
            s_lo, s_hi = nan, nan
            notes.append(
                f"the total change's {level:.0%} CI [{t_lo:.3g}, {t_hi:.3g}] "
                f"includes 0, so the shares have no bounded CI"
            )
        else:
            with np.errstate(invalid="ignore", divide="ignore"):
                s_lo, s_hi = percentile_ci(boot_deltas / boot_total[:, None], level=level,
                                           omit_nan=True)
    table = pd.DataFrame(
        {
            "stage": lineage[1:],
            "from": lineage[:-1],
            "to": lineage[1:],
            "delta": deltas,
            "ci_low": lo,
            "ci_high": hi,
            "share": share,
            "share_ci_low": s_lo,
            "share_ci_high": s_hi,
            "n": np.full(len(deltas), n, np.int64),
            "total": np.full(len(deltas), total),
            "total_ci_low": np.full(len(deltas), t_lo),
            "total_ci_high": np.full(len(deltas), t_hi),
            "resampled": [resampled] * len(deltas),
        },
        columns=list(COLUMNS),
    )
    return Attribution(
        table=table,
        levels=dict(zip(lineage, levels.tolist(), strict=True)),
        total=total,
        total_ci=(t_lo, t_hi),
        n=n,
        n_dropped=n_dropped,
        notes=tuple(notes),
        seed=seed,
        n_boot=n_boot,
        resampled=resampled,
    )
