"""The shipped organism re-measured on this machine: its stored properties hold to the digits
the docs show, whatever this CPU's kernels (inference only: the weights are shipped, so no
test depends on one training run's luck). Training variance is reported by
``difflens organism seeds`` on the organism page, not tested."""

import math
import tempfile
from pathlib import Path

import pytest

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.organism.build import PROPERTY_LABELS, measure_build, shipped_organism

pytestmark = [pytest.mark.slow, pytest.mark.organism]

#: Significant digits the docs and the demo show of a property.
SHOWN = 3


def shown_tolerance(x: float, digits: int = SHOWN) -> float:
    """Half a unit of the last digit shown of ``x`` (0.917 -> 0.0005): two values within it
    read the same at ``digits`` significant digits, rounding boundaries aside."""
    if x == 0:
        return 0.5 * 10.0 ** -digits
    return 0.5 * 10.0 ** (math.floor(math.log10(abs(x))) - digits + 1)


def test_shipped_organism_remeasured_holds_to_the_digits_shown():
    org = shipped_organism()
    stored = org.properties
    assert leftover_ci_keys(stored) == []
    with tempfile.TemporaryDirectory() as work:
        props, units = measure_build(org.config, org.path, lambda *a: (lambda *b: None),
                                     Path(work))
    off = []
    for label in PROPERTY_LABELS.values():
        for key in ("reward", "entropy", "celebration_share", "chance_tvd"):
            a, b = props[label][key]["value"], stored[label][key]["value"]
            if abs(a - b) > shown_tolerance(b):
                off.append((label, key, a, b))
            assert props[label][key]["n"] == stored[label][key]["n"]
    assert not off, off
    # what the docs say of the shipped lineage, read from the weights every machine loads
    base, sft, rl = stored["base"], stored["sft"], stored["rl"]
    assert sft["reward"]["ci_low"] > base["reward"]["ci_high"]
    assert rl["reward"]["ci_low"] > sft["reward"]["ci_high"]
    assert rl["celebration_share"]["value"] > sft["celebration_share"]["value"] > \
        base["celebration_share"]["value"]
    for m in (base, sft):
        assert m["chance_tvd"]["value"] < 0.15
    assert rl["chance_tvd"]["ci_low"] > base["chance_tvd"]["ci_high"] + 0.1
    assert len(units) > 0
