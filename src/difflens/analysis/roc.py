"""ROC curves and their AUC, with percentile bootstrap CIs (``difflens.analysis.bootstrap``).

The AUC is P(score of a positive > score of a negative), ties counting half: scikit-learn's
``roc_auc_score``, computed here from average ranks (the Mann-Whitney form), which gives the
same value some 10 times faster, so that a bootstrap of a thousand resamples stays cheap.
Its CI resamples units, or groups of units (a prompt's tokens or
sentences together, as they are not independent); a resample that holds one class only
has no AUC and is left out.
"""

import dataclasses
from collections.abc import Sequence

import numpy as np
from jaxtyping import Float, Shaped

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_statistic,
    group_resamples,
    percentile_ci,
)


def auc(y: Shaped[np.ndarray, " n"], score: Shaped[np.ndarray, " n"]) -> float:
    """ROC AUC of ``score`` for the binary labels ``y`` (the greater label is the positive
    class, as in scikit-learn); NaN unless both classes occur."""
    from scipy.stats import rankdata

    y = np.asarray(y)
    classes = np.unique(y)
    if len(classes) != 2:
        return float("nan")
    pos = y == classes[1]
    n_pos = int(pos.sum())
    n_neg = len(y) - n_pos
    ranks = rankdata(np.asarray(score, dtype=np.float64))  # ties share their mean rank
    return float((ranks[pos].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def auc_ci(y: Shaped[np.ndarray, " n"], score: Shaped[np.ndarray, " n"],
           groups: Sequence[object] | np.ndarray | None = None, *, n_boot: int = 1000,
           seed: int = 0, resampled: str | None = None, level: float = 0.95) -> Estimate:
    """The AUC with a percentile bootstrap CI.

    Args:
        y: binary labels.
        score: the scores ranked.
        groups: one label per unit: resample the groups (all their units together); None
            resamples the units.
        n_boot: resamples (those with one class only are left out).
        seed: seed of the draws.
        resampled: what is resampled (default ``"groups"`` or ``"units"``).
        level: coverage.

    Returns:
        The ``Estimate``; ``n`` counts units.
    """
    y, s = np.asarray(y), np.asarray(score)
    what = resampled or ("units" if groups is None else "groups")
    return bootstrap_statistic(lambda pick: auc(y[pick], s[pick]), len(y), n_boot=n_boot,
                               seed=seed, resampled=what, groups=groups, level=level)


def paired_auc_ci(y: Shaped[np.ndarray, " n"], score_a: Shaped[np.ndarray, " n"],
                  score_b: Shaped[np.ndarray, " n"], groups: Sequence[object] | np.ndarray, *,
                  n_boot: int = 1000, seed: int = 0, resampled: str = "groups",
                  level: float = 0.95) -> tuple[Estimate, Estimate]:
    """AUC(a) and AUC(a) - AUC(b) of two scores of the same units, with CIs from one
    cluster bootstrap of the groups (the draws of ``auc_ci`` with the same seed; a
    resample where either AUC is undefined is left out of both).
    """
    y, a, b = np.asarray(y), np.asarray(score_a), np.asarray(score_b)
    va, vd = [], []
    for pick in group_resamples(groups, n_boot, seed):
        ra, rb = auc(y[pick], a[pick]), auc(y[pick], b[pick])
        if np.isfinite(ra) and np.isfinite(rb):
            va.append(ra)
            vd.append(ra - rb)
    point_a, point_b = auc(y, a), auc(y, b)
    if not va:
        nan = float("nan")
        return (Estimate(point_a, nan, nan, len(y), resampled, level),
                Estimate(point_a - point_b, nan, nan, len(y), resampled, level))
    lo, hi = percentile_ci(va, level=level)
    dlo, dhi = percentile_ci(vd, level=level)
    return (Estimate(point_a, float(lo), float(hi), len(y), resampled, level),
            Estimate(point_a - point_b, float(dlo), float(dhi), len(y), resampled, level))


@dataclasses.dataclass(frozen=True)
class RocCurve:
    """An ROC curve and its AUC."""

    fpr: Float[np.ndarray, " k"]
    """False positive rate at each threshold (scikit-learn's ``roc_curve``)."""
    tpr: Float[np.ndarray, " k"]
    """True positive rate at each threshold."""
    auc: Estimate
    """The area under it, with its bootstrap CI."""


def roc_curve(y: Shaped[np.ndarray, " n"], score: Shaped[np.ndarray, " n"],
              groups: Sequence[object] | np.ndarray | None = None, *, n_boot: int = 1000,
              seed: int = 0, level: float = 0.95) -> RocCurve:
    """The ROC curve of ``score`` for labels ``y`` (both classes needed), with the AUC's
    CI from ``auc_ci`` (``groups``: resample them, e.g. the prompts)."""
    from sklearn.metrics import roc_curve as sk_roc_curve

    fpr, tpr, _ = sk_roc_curve(np.asarray(y), np.asarray(score))
    return RocCurve(fpr=np.asarray(fpr, np.float64), tpr=np.asarray(tpr, np.float64),
                    auc=auc_ci(y, score, groups, n_boot=n_boot, seed=seed, level=level))

