"""Which prompts will get a low-entropy continuation? Predicted from the prompt's states.

The target is, per prompt, the mean next-token entropy of a model along its own continuation.
The probe is a ridge regression on the final prompt token's hidden state, its layer and
penalty chosen inside each training fold (leave-one-out ridge scores on the training part),
so every prediction is out of fold. Two baselines get the same folds, each a 1-D linear
fit: the model's next-token entropy at the end of the prompt (its uncertainty before the
first token), and the prompt's length in tokens. Scores: Spearman's rho and R^2 of the
out-of-fold predictions, each with a 95% bootstrap CI over prompts, and the probe's rho
minus the best baseline's, paired over the same prompts.
"""

import dataclasses
from collections.abc import Mapping
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from difflens.analysis.bootstrap import Estimate, percentile_ci, resample_indices
from difflens.errors import InputError

ALPHAS = tuple(float(a) for a in np.logspace(-2, 5, 15))


def _ridge_fold(states: Mapping[int, np.ndarray], y: np.ndarray, train: np.ndarray,
                test: np.ndarray) -> tuple[np.ndarray, int]:
    """Predictions for ``test`` from the layer whose ridge fits ``train`` best (LOO)."""
    from sklearn.linear_model import RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    best: tuple[float, int, Any] | None = None
    for layer, X in states.items():
        model = make_pipeline(StandardScaler(), RidgeCV(alphas=ALPHAS))
        model.fit(X[train], y[train])
        score = float(model[-1].best_score_)
        if best is None or score > best[0]:
            best = (score, layer, model)
    assert best is not None
    return best[2].predict(states[best[1]][test]), best[1]


def _linear_fold(x: np.ndarray, y: np.ndarray, train: np.ndarray, test: np.ndarray
                 ) -> np.ndarray:
    slope, icept = np.polyfit(x[train], y[train], 1) if np.ptp(x[train]) > 0 else (0.0, float(
        y[train].mean()))
    return slope * x[test] + icept


def _scores(y: np.ndarray, pred: np.ndarray, idx: np.ndarray) -> tuple[float, float]:
    from scipy.stats import spearmanr

    yy, pp = y[idx], pred[idx]
    rho = float(spearmanr(yy, pp).statistic) if np.ptp(pp) > 0 and np.ptp(yy) > 0 else 0.0
    r2 = float(1 - ((yy - pp) ** 2).sum() / max(((yy - yy.mean()) ** 2).sum(), 1e-300))
    return rho, r2


def _estimate(value: float, replicates: np.ndarray, n: int) -> dict[str, Any]:
    lo, hi = percentile_ci(replicates)
    return Estimate(value=value, ci_low=float(lo), ci_high=float(hi), n=n,
                    resampled="prompts").to_json()


@dataclasses.dataclass(frozen=True)
class EntropyPrediction:
    table: pd.DataFrame
    """One row per prompt: target, probe, the baselines' predictions, fold, probe layer."""
    summary: dict[str, Any]
    """``{n_prompts, n_folds, probe: {spearman, r2, layers}, baselines: {name: {spearman,
    r2}}, probe_minus_best_baseline: {value, ci_low, ci_high, n, resampled, baseline}}``:
    ``spearman``, ``r2`` and the difference of the Spearman rhos are estimates
    (``{value, ci_low, ci_high, n, resampled: "prompts"}``)."""


def predict_entropy(states: Mapping[int, Float[np.ndarray, "n d"]],
                    target: Float[np.ndarray, " n"],
                    baselines: Mapping[str, Float[np.ndarray, " n"]], *, n_folds: int = 5,
                    seed: int = 0, n_boot: int = 1000) -> EntropyPrediction:
    """Out-of-fold predictions of ``target`` from ``states`` (ridge) and from each 1-D
    baseline, with their scores (see the module)."""
    y = np.asarray(target, np.float64)
    n = len(y)
    if n < 2 * n_folds:
        raise InputError(f"entropy prediction needs at least {2 * n_folds} prompts for "
                         f"{n_folds} folds, got {n}; give more prompts")
    rng = np.random.default_rng(seed)
    fold = np.empty(n, int)
    fold[rng.permutation(n)] = np.arange(n) % n_folds
    preds = {"probe": np.zeros(n), **{k: np.zeros(n) for k in baselines}}
    layer_of = np.zeros(n, int)
    for f in range(n_folds):
        train, test = np.flatnonzero(fold != f), np.flatnonzero(fold == f)
        preds["probe"][test], layer_of[test] = _ridge_fold(states, y, train, test)
        for name, x in baselines.items():
            preds[name][test] = _linear_fold(np.asarray(x, np.float64), y, train, test)
    boots = resample_indices(n, n_boot, rng)
    result: dict[str, Any] = {"n_prompts": n, "n_folds": n_folds, "baselines": {}}
    boot_rho: dict[str, np.ndarray] = {}
    for name, pred in preds.items():
        rho, r2 = _scores(y, pred, np.arange(n))
        bs = np.array([_scores(y, pred, b) for b in boots])
        boot_rho[name] = bs[:, 0]
        row: dict[str, Any] = {"spearman": _estimate(rho, bs[:, 0], n),
                               "r2": _estimate(r2, bs[:, 1], n)}
        if name == "probe":
            row["layers"] = sorted({int(v) for v in layer_of})
            result["probe"] = row
        else:
            result["baselines"][name] = row
    if baselines:
        best = max(baselines, key=lambda k: result["baselines"][k]["spearman"]["value"])
        d = boot_rho["probe"] - boot_rho[best]
        diff = (result["probe"]["spearman"]["value"]
                - result["baselines"][best]["spearman"]["value"])
        result["probe_minus_best_baseline"] = _estimate(diff, d, n) | {"baseline": best}
    table = pd.DataFrame({"target": y, "fold": fold, "probe_layer": layer_of,
                          **{f"pred_{k}": v for k, v in preds.items()}})
    return EntropyPrediction(table=table, summary=result)
