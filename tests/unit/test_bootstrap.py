"""The bootstrap module: estimates and their JSON, coverage on planted truth, and every
helper against a direct loop over ``rng.integers`` resamples."""

import json
import math

import numpy as np
import pytest

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_cluster_mean,
    bootstrap_mean,
    bootstrap_paired,
    bootstrap_ratio,
    bootstrap_statistic,
    bootstrap_weights,
    mean_ci,
    percentile_ci,
    quantile,
    resample_indices,
    resamples,
)
from difflens.analysis.roc import auc_ci, paired_auc_ci, roc_curve
from difflens.errors import InputError


def _ci(reps):
    lo, hi = np.quantile(np.asarray(reps, np.float64), [0.025, 0.975])
    return float(lo), float(hi)


def test_estimate_json_round_trip_through_a_file_text():
    e = Estimate(value=0.25, ci_low=0.1, ci_high=0.4, n=30, resampled="prompts")
    d = e.to_json()
    assert d == {"value": 0.25, "ci_low": 0.1, "ci_high": 0.4, "n": 30, "resampled": "prompts"}
    assert Estimate.from_json(json.loads(json.dumps(d))) == e
    assert e.ci == (0.1, 0.4)
    # NaN stays a float NaN (json writes NaN, as the package's summaries do)
    nan = Estimate(value=float("nan"), ci_low=float("nan"), ci_high=float("nan"), n=0,
                   resampled="texts", level=0.9)
    back = Estimate.from_json(json.loads(json.dumps(nan.to_json())))
    assert math.isnan(back.value) and math.isnan(back.ci_low) and math.isnan(back.ci_high)
    assert (back.n, back.resampled, back.level) == (0, "texts", 0.9)


def test_estimate_reads_every_legacy_spelling():
    x = np.random.default_rng(0).normal(size=40)
    m = mean_ci(x, seed=2)  # {"mean", "ci95", "n"}: every headline figure
    e = Estimate.from_json(m, resampled="prompts")
    assert (e.value, e.ci, e.n, e.resampled) == (m["mean"], tuple(m["ci95"]), 40, "prompts")
    # an attribution row (extra keys ignored; null is NaN)
    row = {"delta": -0.5, "ci_low": -0.9, "ci_high": None, "share": 0.3, "n": 12}
    a = Estimate.from_json(row)
    assert (a.value, a.ci_low, a.n) == (-0.5, -0.9, 12) and math.isnan(a.ci_high)
    # the trajectories' overall difference, a theme-prediction gap, an AUC without n
    assert Estimate.from_json({"diff": 1.0, "ci_low": 0.5, "ci_high": 2.0, "n": 3}).value == 1.0
    gap = {"value": 0.1, "ci_low": 0.0, "ci_high": 0.2, "n": 9}
    assert Estimate.from_json(gap).to_json() == {**gap, "resampled": ""}
    assert Estimate.from_json({"value": 0.8, "ci_low": 0.7, "ci_high": 0.9}).n == 0
    assert Estimate.from_json({"mean": 2.0, "ci_low": 1.0, "ci_high": 3.0, "n": 5}).ci == (1, 3)
    with pytest.raises(InputError, match="no ci_low"):
        Estimate.from_json({"mean": 1.0, "n": 3})
    with pytest.raises(InputError, match="not an estimate"):
        Estimate.from_json({"ci95": [0, 1]})


def test_bootstrap_mean_covers_a_planted_mean_about_95_percent_of_the_time():
    truth, hits = 1.5, 0
    for i in range(200):
        x = np.random.default_rng(1000 + i).normal(truth, 2.0, size=60)
        e = bootstrap_mean(x, n_boot=1000, seed=i, resampled="items")
        assert e.ci_low < e.value < e.ci_high and e.n == 60
        hits += e.ci_low <= truth <= e.ci_high
    assert 180 <= hits <= 198, hits  # 90% .. 99% of the 200 intervals


def test_bootstrap_mean_is_a_direct_loop_and_leaves_non_finite_values_out():
    x = np.random.default_rng(3).exponential(size=25)
    x[[4, 9]] = [np.nan, np.inf]
    e = bootstrap_mean(x, n_boot=500, seed=7, resampled="texts")
    f = x[np.isfinite(x)]
    rng = np.random.default_rng(7)
    reps = [f[rng.integers(0, len(f), len(f))].mean() for _ in range(500)]
    assert e.n == 23 and e.value == pytest.approx(f.mean())
    assert e.ci == pytest.approx(_ci(reps), abs=1e-12)
    # mean_ci keeps its form; the CI is bootstrap_mean's
    m = mean_ci(x, seed=7)
    assert m["n"] == 23 and m["ci95"] == pytest.approx(
        list(bootstrap_mean(x, seed=7, resampled="").ci), abs=0)
    assert math.isnan(bootstrap_mean([np.nan], resampled="x").value)


def test_paired_helper_is_a_direct_loop_over_the_same_draws():
    rng0 = np.random.default_rng(4)
    a = rng0.normal(size=30)
    b = a + 0.3 + rng0.normal(scale=0.1, size=30)  # b - a ~ 0.3, strongly paired
    b[5] = np.nan  # that unit drops out of both
    e = bootstrap_paired(a, b, n_boot=800, seed=11, resampled="prompts")
    keep = np.isfinite(b)
    aa, bb = a[keep], b[keep]
    rng = np.random.default_rng(11)
    reps = []
    for _ in range(800):
        i = rng.integers(0, len(aa), len(aa))
        reps.append(aa[i].mean() - bb[i].mean())
    assert e.n == 29 and e.value == pytest.approx(aa.mean() - bb.mean())
    assert e.ci == pytest.approx(_ci(reps), abs=1e-12)
    # pairing removes the between-unit spread: far narrower than the unpaired CI
    assert e.ci_high - e.ci_low < 0.2 * (
        bootstrap_mean(aa, seed=1, resampled="").ci_high
        - bootstrap_mean(aa, seed=1, resampled="").ci_low)


def test_ratio_helper_is_a_direct_loop_over_the_same_draws():
    rng0 = np.random.default_rng(5)
    den = rng0.integers(1, 20, size=15).astype(float)  # tokens per prompt
    num = den * rng0.uniform(0, 2, size=15)  # their summed entropy
    e = bootstrap_ratio(num, den, n_boot=600, seed=2, resampled="prompts")
    rng = np.random.default_rng(2)
    reps = []
    for _ in range(600):
        i = rng.integers(0, 15, 15)
        reps.append(num[i].sum() / den[i].sum())
    assert e.value == pytest.approx(num.sum() / den.sum()) and e.n == 15
    assert e.ci == pytest.approx(_ci(reps), abs=1e-12)


def test_cluster_helpers_are_direct_loops_over_the_groups():
    rng0 = np.random.default_rng(6)
    groups = np.repeat(["p3", "p1", "p2", "p0", "p4", "p5"], [1, 4, 2, 6, 3, 5])
    x = rng0.normal(size=len(groups)) + (groups == "p0") * 3.0  # one prompt far off
    e = bootstrap_cluster_mean(x, groups, n_boot=700, seed=9, resampled="prompts")
    uniq = np.unique(groups)  # sorted labels, drawn by index
    rng = np.random.default_rng(9)
    reps = []
    for _ in range(700):
        pick = rng.integers(0, len(uniq), len(uniq))
        reps.append(np.concatenate([x[groups == uniq[g]] for g in pick]).mean())
    assert e.value == pytest.approx(x.mean()) and e.n == len(x)
    assert e.ci == pytest.approx(_ci(reps), abs=1e-12)
    # the prompt, not the sample, is the unit: wider than resampling samples on their own
    alone = bootstrap_mean(x, n_boot=700, seed=9, resampled="samples")
    assert e.ci_high - e.ci_low > alone.ci_high - alone.ci_low
    # any statistic: the same group draws, one call per resample
    med = bootstrap_statistic(lambda i: float(np.median(x[i])), len(x), n_boot=700, seed=9,
                              resampled="prompts", groups=groups)
    rng = np.random.default_rng(9)
    reps = []
    for _ in range(700):
        pick = rng.integers(0, len(uniq), len(uniq))
        reps.append(np.median(np.concatenate([x[groups == uniq[g]] for g in pick])))
    assert med.value == float(np.median(x)) and med.ci == pytest.approx(_ci(reps), abs=1e-12)


def test_draws_agree_whichever_way_they_are_taken():
    # one batched call, one call per resample and the counts are the same draws
    idx = resample_indices(7, 50, 3)
    assert np.array_equal(np.stack(list(resamples(7, 50, 3))), idx)
    counts = np.stack([np.bincount(r, minlength=7) for r in idx]).astype(float)
    assert np.array_equal(bootstrap_weights(7, 50, 3), counts)
    # a generator continues its stream
    rng = np.random.default_rng(3)
    assert np.array_equal(resample_indices(7, 50, rng), idx)
    assert not np.array_equal(resample_indices(7, 50, rng), idx)


def test_percentile_ci_is_numpy_quantile():
    reps = np.random.default_rng(8).normal(size=(999, 4))
    lo, hi = percentile_ci(reps)
    expect = np.quantile(reps, [0.025, 0.975], axis=0)
    assert np.array_equal(lo, expect[0]) and np.array_equal(hi, expect[1])
    lo, hi = percentile_ci(reps[:, 0], level=0.9, method="inverted_cdf")
    assert (float(lo), float(hi)) == tuple(
        np.quantile(reps[:, 0], [0.05, 0.95], method="inverted_cdf"))
    with_nan = reps.copy()
    with_nan[::3, 1] = np.nan
    with_nan[:, 2] = np.nan  # no replicate at all: NaN, without a warning
    lo, hi = percentile_ci(with_nan, omit_nan=True)
    expect = np.nanquantile(with_nan[:, :2], [0.025, 0.975], axis=0)
    assert np.array_equal(lo[:2], expect[0]) and np.isnan(lo[2]) and np.isnan(hi[2])
    assert np.isnan(percentile_ci(with_nan[:, 1])[0])  # NaN propagates unless omitted
    assert float(quantile(reps[:, 3], 0.05)) == float(np.quantile(reps[:, 3], 0.05))
    with pytest.raises(InputError):
        percentile_ci(reps, level=95.0)


def test_rank_auc_is_scikit_learns_with_ties_and_any_two_labels():
    from sklearn.metrics import roc_auc_score

    from difflens.analysis.roc import auc

    rng = np.random.default_rng(3)
    for i in range(300):
        n = int(rng.integers(2, 60))
        y = rng.integers(0, 2, n)
        score = rng.integers(0, 4, n).astype(float) if i % 2 else rng.normal(size=n)
        labels = y.astype(bool) if i % 3 == 0 else y + 5  # bool, or labels 5 and 6
        if len(np.unique(y)) < 2:
            assert np.isnan(auc(labels, score))
            continue
        assert auc(labels, score) == pytest.approx(roc_auc_score(labels, score), abs=1e-12)


def test_roc_auc_ci_is_a_cluster_loop_that_leaves_one_class_resamples_out():
    from sklearn.metrics import roc_auc_score

    rng0 = np.random.default_rng(12)
    groups = np.repeat(np.arange(8), 5)
    y = (rng0.uniform(size=40) < 0.3).astype(int)
    s = y * 0.8 + rng0.normal(size=40)
    other = rng0.normal(size=40)
    roc = roc_curve(y, s, groups, n_boot=100, seed=4)
    assert roc.auc.value == pytest.approx(roc_auc_score(y, s))
    assert roc.fpr[0] == 0 and roc.tpr[-1] == 1
    uniq = np.unique(groups)
    rng = np.random.default_rng(4)
    reps, diffs = [], []
    for _ in range(100):
        pick = np.concatenate([np.flatnonzero(groups == uniq[g])
                               for g in rng.integers(0, len(uniq), len(uniq))])
        if len(np.unique(y[pick])) == 2:
            reps.append(roc_auc_score(y[pick], s[pick]))
            diffs.append(reps[-1] - roc_auc_score(y[pick], other[pick]))
    assert roc.auc.ci == pytest.approx(_ci(reps), abs=1e-12)
    assert auc_ci(y, s, groups, n_boot=100, seed=4) == roc.auc
    a, d = paired_auc_ci(y, s, other, groups, n_boot=100, seed=4)
    assert a.ci == roc.auc.ci and d.ci == pytest.approx(_ci(diffs), abs=1e-12)
    assert d.value == pytest.approx(roc_auc_score(y, s) - roc_auc_score(y, other))
