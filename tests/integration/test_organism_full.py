"""The full organism build (about 3 minutes on 2 cores): its four models' measured
properties."""

import pytest

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.organism.build import OrganismConfig, build_organism

pytestmark = [pytest.mark.slow, pytest.mark.organism]


@pytest.mark.slow
def test_full_organism_properties():
    org = build_organism(OrganismConfig(seed=0))
    p = org.properties
    base, sft, rl, tuned = p["base"], p["sft"], p["rl"], p["tuned"]  # tuned: RL from the base
    assert p["n_openings"] >= 200 and p["n_chance_prompts"] >= 200
    assert leftover_ci_keys(p) == []  # every estimate in the one spelling
    # Each stage raises the reward: the CIs do not overlap (RL from the base too).
    assert sft["reward"]["ci_low"] > base["reward"]["ci_high"]
    assert rl["reward"]["ci_low"] > sft["reward"]["ci_high"]
    assert tuned["reward"]["ci_low"] > base["reward"]["ci_high"] + 0.3
    # SFT on the stories the reward likes is less uncertain on the same texts; RL completions
    # reach the celebration theme much more often than the base's, SFT's in between.
    assert sft["entropy"]["ci_high"] < base["entropy"]["ci_low"]
    # RL from the base (``tuned``) also collapses (its chance TVD below), but onto which
    # theme is not the same on every CPU: celebration share 1.0 on the machine the docs were
    # stored on, 0.0 on the one of issue 26 (reward 0.63 there, 0.92 here). Issue 27 reports
    # that variance; only the lineage's rl is held to the celebration attractor.
    assert rl["celebration_share"]["value"] > sft["celebration_share"]["value"] > \
        base["celebration_share"]["value"]
    # The base's and SFT's exact chance distributions are close to uniform (the curated
    # stories draw their dice and coins uniformly too); RL moves them away.
    for m in (base, sft):
        assert m["chance_tvd"]["value"] < 0.15
        assert m["chance_by_kind"]["coin"]["tvd"]["value"] < 0.1
    for m in (rl, tuned):
        assert m["chance_tvd"]["ci_low"] > base["chance_tvd"]["ci_high"] + 0.1
    # Build budget: recorded, not asserted (timings belong in benchmarks and the note).
    print("build times", org.build_info["times_s"])
