"""The full organism build (about 3 minutes on 2 cores): its four models' measured
properties."""

import pytest

from difflens.organism.build import OrganismConfig, build_organism


@pytest.mark.slow
def test_full_organism_properties():
    org = build_organism(OrganismConfig(seed=0))
    p = org.properties
    base, sft, rl, tuned = p["base"], p["sft"], p["rl"], p["tuned"]  # tuned: RL from the base
    assert p["n_openings"] >= 200 and p["n_chance_prompts"] >= 200
    # Each stage raises the reward: the CIs do not overlap (RL from the base too).
    assert sft["reward"]["ci95"][0] > base["reward"]["ci95"][1]
    assert rl["reward"]["ci95"][0] > sft["reward"]["ci95"][1]
    assert tuned["reward"]["ci95"][0] > base["reward"]["ci95"][1] + 0.3
    # SFT on the stories the reward likes is less uncertain on the same texts; RL completions
    # reach the celebration theme much more often than the base's, SFT's in between.
    assert sft["entropy"]["ci95"][1] < base["entropy"]["ci95"][0]
    assert tuned["celebration_share"]["mean"] > base["celebration_share"]["mean"] + 0.4
    assert rl["celebration_share"]["mean"] > sft["celebration_share"]["mean"] > \
        base["celebration_share"]["mean"]
    # The base's and SFT's exact chance distributions are close to uniform (the curated
    # stories draw their dice and coins uniformly too); RL moves them away.
    for m in (base, sft):
        assert m["chance_tvd"]["mean"] < 0.15
        assert m["chance_by_kind"]["coin"]["tvd"]["mean"] < 0.1
    for m in (rl, tuned):
        assert m["chance_tvd"]["ci95"][0] > base["chance_tvd"]["ci95"][1] + 0.1
    # Build budget: recorded, not asserted (timings belong in benchmarks and the note).
    print("build times", org.build_info["times_s"])
