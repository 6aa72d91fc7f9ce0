"""The full organism build (about 2 minutes on 2 cores): its measured properties."""

import pytest

from difflens.organism.build import OrganismConfig, build_organism


@pytest.mark.slow
def test_full_organism_properties():
    org = build_organism(OrganismConfig(seed=0))
    p = org.properties
    base, tuned = p["base"], p["tuned"]
    assert p["n_openings"] >= 200 and p["n_chance_prompts"] >= 200
    # The tuned reward clearly exceeds the base: the CIs do not overlap.
    assert tuned["reward"]["ci95"][0] > base["reward"]["ci95"][1] + 0.3
    # The tuned model's entropy on the same continuations is lower.
    assert tuned["entropy"]["mean"] < base["entropy"]["mean"]
    # Tuned completions reach the celebration theme much more often.
    assert tuned["celebration_share"]["mean"] > base["celebration_share"]["mean"] + 0.4
    # The base model's exact chance distributions are close to uniform.
    assert base["chance_tvd"]["mean"] < 0.15
    assert base["chance_by_kind"]["coin"]["tvd"]["mean"] < 0.1
    # Build budget: recorded, not asserted (timings belong in benchmarks and the note).
    print("build times", org.build_info["times_s"])
