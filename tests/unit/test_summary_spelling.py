"""The one spelling of an estimate in summary.json, and the migration of the older ones."""

import collections
import json
import math
from pathlib import Path

import pytest

from difflens.analysis.bootstrap import Estimate
from difflens.analysis.summary_spelling import is_estimate, leftover_ci_keys, respell

RESULTS = Path(__file__).resolve().parents[2] / "docs" / "results"


def _est(value, lo, hi, n=None):
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": n, "resampled": ""}


@pytest.mark.parametrize(("old", "new"), [
    # 1. mean_ci's {"mean", "ci95", "n"}
    ({"mean": 0.5, "ci95": [0.4, 0.6], "n": 10}, _est(0.5, 0.4, 0.6, 10)),
    # 2. one estimate's leaves with context keys beside them
    ({"layer": 3, "cosine": 0.9, "ci_low": 0.8, "ci_high": 0.95, "n": 42},
     {**_est(0.9, 0.8, 0.95, 42), "layer": 3}),
    ({"delta": -0.1, "ci_low": -0.2, "ci_high": 0.0, "share": 0.5, "n": 7},
     {**_est(-0.1, -0.2, 0.0, 7), "share": 0.5}),
    ({"cos": 0.7, "layer": 1, "next_layer": 2, "ci_low": 0.6, "ci_high": 0.8, "n": 5},
     {**_est(0.7, 0.6, 0.8, 5), "layer": 1, "next_layer": 2}),
    ({"layer": None, "ci_low": None, "ci_high": None, "n": 9, "threshold": 0.9},
     {**_est(None, None, None, 9), "threshold": 0.9}),
    ({"T": 2.3, "base": 0.9, "ci95": [2.2, 2.4], "n_prompts": 24},
     {**_est(2.3, 2.2, 2.4), "base": 0.9, "n_prompts": 24}),
    # 3. sibling CI keys
    ({"bad_rate": 0.3, "bad_rate_ci_low": 0.2, "bad_rate_ci_high": 0.4, "n": 12},
     {"bad_rate": _est(0.3, 0.2, 0.4), "n": 12}),
    ({"vendi": 3.0, "vendi_ci95": [2.5, 3.5]}, {"vendi": _est(3.0, 2.5, 3.5)}),
    ({"auc": 0.8, "auc_ci": [0.7, 0.9], "layer": 2}, {"auc": _est(0.8, 0.7, 0.9), "layer": 2}),
    ({"sft_delta": 0.1, "sft_ci": [0.0, 0.2], "n_scenes": 5},
     {"sft_delta": _est(0.1, 0.0, 0.2), "n_scenes": 5}),
    ({"reward_mean": 0.2, "reward_ci95": [0.1, 0.3], "reward_n": 200},
     {"reward_mean": _est(0.2, 0.1, 0.3, 200), "reward_n": 200}),
    ({"chance_tvd": 0.08, "chance_tvd_ci95": [0.07, 0.09], "chance_tvd_n": 200},
     {"chance_tvd": _est(0.08, 0.07, 0.09, 200), "chance_tvd_n": 200}),
    # a dict-level CI that only repeated a sibling's goes
    ({"strength": 0.1, "strength_ci95": [0.05, 0.15], "ci_low": 0.05, "ci_high": 0.15, "n": 9},
     {"strength": _est(0.1, 0.05, 0.15), "n": 9}),
])
def test_each_older_spelling_becomes_one_estimate(old, new):
    assert respell(old) == new
    assert respell(new) == new  # the one spelling is left as it is
    assert not leftover_ci_keys(respell(old))


def test_an_estimate_reads_back_from_its_json():
    e = Estimate(value=0.5, ci_low=0.4, ci_high=0.6, n=10, resampled="prompts")
    assert respell(e.to_json()) == e.to_json() and is_estimate(e.to_json())
    assert Estimate.from_json(respell({"mean": 0.5, "ci95": [0.4, 0.6], "n": 10})) == \
        Estimate(value=0.5, ci_low=0.4, ci_high=0.6, n=10, resampled="")


def _numbers(obj, out):
    if isinstance(obj, dict):
        for v in obj.values():
            _numbers(v, out)
    elif isinstance(obj, list):
        for v in obj:
            _numbers(v, out)
    elif isinstance(obj, int | float) and not isinstance(obj, bool) and math.isfinite(obj):
        out[obj] += 1
    return out


@pytest.mark.parametrize("run", sorted(p.name for p in RESULTS.iterdir()
                                       if (p / "summary.json").is_file()))
def test_every_stored_run_respells_completely_and_invents_no_number(run):
    old = json.loads((RESULTS / run / "summary.json").read_text())
    new = respell(old)
    assert leftover_ci_keys(new) == []
    # every number of the respelled summary was in the old one (an estimate's n copied
    # from a sibling K_n is counted once more); only repeated CIs may go
    have, had = _numbers(new, collections.Counter()), _numbers(old, collections.Counter())
    invented = [x for x in have if have[x] > had[x] and x not in had]
    assert invented == []
