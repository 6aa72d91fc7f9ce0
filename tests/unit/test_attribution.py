"""Stage attribution: planted stage changes recovered with paired bootstrap CIs, on synthetic
arrays and on a three-model lineage of planted bigram models run through the real forward
pass (next-token entropy after each prompt)."""

import numpy as np
import pytest
import torch

from difflens.analysis.attribution import COLUMNS, attribute
from difflens.analysis.bootstrap import bootstrap_ci
from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.capture.prompt_end import prompt_ends
from difflens.errors import InputError
from difflens.models.model_set import ModelSet
from difflens.models.tiny import bigram_model

LINEAGE = ["base", "sft", "dpo"]


def _lineage_values(
    n: int, deltas: tuple[float, float], *, seed: int = 0, unit_sd: float = 5.0, noise: float = 0.1
) -> dict[str, np.ndarray]:
    """Three models on the same units: a large shared per-unit level plus planted shifts."""
    rng = np.random.default_rng(seed)
    unit = rng.normal(0, unit_sd, n)
    base = unit + rng.normal(0, noise, n)
    sft = unit + deltas[0] + rng.normal(0, noise, n)
    dpo = unit + deltas[0] + deltas[1] + rng.normal(0, noise, n)
    return {"base": base, "sft": sft, "dpo": dpo}


def test_planted_deltas_and_shares_are_recovered_with_paired_cis():
    v = _lineage_values(2000, (2.0, 0.5))
    att = attribute(v, LINEAGE, seed=1, resampled="prompts")
    t = att.table.set_index("stage")
    assert list(att.table.columns) == list(COLUMNS)
    assert list(t.index) == ["sft", "dpo"] and list(t["from"]) == ["base", "sft"]
    # the point estimates are the mean paired differences, computed here independently
    assert t.loc["sft", "delta"] == pytest.approx(np.mean(v["sft"] - v["base"]), abs=1e-12)
    assert t.loc["dpo", "delta"] == pytest.approx(np.mean(v["dpo"] - v["sft"]), abs=1e-12)
    assert att.total == pytest.approx(np.mean(v["dpo"] - v["base"]), abs=1e-12)
    for stage, truth, share in (("sft", 2.0, 0.8), ("dpo", 0.5, 0.2)):
        row = t.loc[stage]
        assert row["ci_low"] < truth < row["ci_high"]
        # paired: the shared per-unit level (sd 5) cancels; unpaired CIs would be ~0.6 wide
        assert row["ci_high"] - row["ci_low"] < 0.05
        assert row["share"] == pytest.approx(share, abs=0.01)
        assert row["share_ci_low"] < share < row["share_ci_high"]
        assert row["n"] == 2000
    assert t["delta"].sum() == pytest.approx(att.total, abs=1e-12)
    # the summary's spelling: each stage an estimate (its change), its share beside it
    assert att.summary() == {
        s: {"value": float(t.loc[s, "delta"]), "ci_low": float(t.loc[s, "ci_low"]),
            "ci_high": float(t.loc[s, "ci_high"]), "n": 2000, "resampled": "prompts",
            "share": float(t.loc[s, "share"]), "share_low": float(t.loc[s, "share_ci_low"]),
            "share_high": float(t.loc[s, "share_ci_high"])}
        for s in ("sft", "dpo")
    }
    assert leftover_ci_keys(att.summary()) == []
    assert att.notes == () and (att.n, att.n_dropped) == (2000, 0)


def test_same_seed_same_result_other_seed_same_estimates():
    v = _lineage_values(300, (1.0, -0.4), seed=4)
    a, b, c = (attribute(v, LINEAGE, seed=s) for s in (7, 7, 8))
    assert a.table.equals(b.table)
    assert np.allclose(a.table["delta"], c.table["delta"], rtol=0, atol=0)
    assert not np.allclose(a.table["ci_low"], c.table["ci_low"], rtol=0, atol=0)


def test_ci_covers_the_planted_delta_about_95_percent_of_the_time():
    hits = []
    for rep in range(200):
        v = _lineage_values(60, (1.0, 0.0), seed=100 + rep, unit_sd=2.0, noise=1.0)
        row = attribute(v, LINEAGE, seed=rep, n_boot=500).table.iloc[0]
        hits.append(row["ci_low"] <= 1.0 <= row["ci_high"])
    assert 0.88 <= np.mean(hits) <= 0.99


def test_missing_units_are_dropped_for_every_model():
    v = _lineage_values(50, (1.0, 0.5), seed=2)
    holed = {m: x.copy() for m, x in v.items()}
    holed["sft"][3] = np.nan
    holed["dpo"][7] = np.inf
    att = attribute(holed, LINEAGE, seed=0)
    kept = np.setdiff1d(np.arange(50), [3, 7])
    ref = attribute({m: x[kept] for m, x in v.items()}, LINEAGE, seed=0)
    assert (att.n, att.n_dropped) == (48, 2)
    assert att.notes == ("2 of 50 units dropped: missing for some model",)
    assert att.table.equals(ref.table)


def test_a_total_of_zero_leaves_shares_undefined():
    x = np.random.default_rng(0).normal(size=40)
    att = attribute({"base": x, "sft": x + 1.0, "dpo": x.copy()}, LINEAGE, seed=0)
    t = att.table.set_index("stage")
    assert t.loc["sft", "delta"] == pytest.approx(1.0) and t.loc["dpo", "delta"] == (
        pytest.approx(-1.0)
    )
    assert t["share"].isna().all() and t["share_ci_low"].isna().all()
    assert any("~0" in n for n in att.notes)
    assert att.summary()["sft"]["share"] is None


def test_a_total_whose_ci_includes_zero_gives_no_share_ci():
    v = _lineage_values(30, (0.05, 0.0), seed=3, unit_sd=1.0, noise=1.0)
    att = attribute(v, LINEAGE, seed=0)
    assert att.total_ci[0] <= 0 <= att.total_ci[1]
    assert att.table["share"].notna().all()  # a nonzero total: shares are defined
    assert att.table["share_ci_low"].isna().all()
    assert any("includes 0" in n for n in att.notes)


def test_the_table_carries_the_total_with_its_ci_and_what_was_resampled():
    """Every row has the lineage's total change and its CI (what a reader needs to judge a
    share: a total whose CI includes 0 makes every share meaningless) and the units."""
    v = _lineage_values(400, (0.3, -0.29), seed=6, unit_sd=1.0, noise=0.05)
    att = attribute(v, LINEAGE, seed=2, resampled="prompts")
    t = att.table
    assert (t["total"] == att.total).all()
    assert att.total == pytest.approx(t["delta"].sum(), abs=1e-12)
    assert (t["total_ci_low"] == att.total_ci[0]).all()
    assert (t["total_ci_high"] == att.total_ci[1]).all()
    assert att.total_ci[0] < 0.01 < att.total_ci[1]  # the planted total, 0.3 - 0.29
    assert list(t["resampled"]) == ["prompts", "prompts"]
    # the stored summary's spelling: the change an estimate, the share and its CI beside it
    assert set(att.summary()["sft"]) == {"value", "ci_low", "ci_high", "n", "resampled",
                                         "share", "share_low", "share_high"}


def test_ratio_of_sums_with_denominators():
    rng = np.random.default_rng(5)
    tokens = rng.integers(1, 30, 200).astype(np.float64)
    per_token = rng.normal(0, 0.2, 200)
    rates = {"base": 1.0, "sft": 1.5, "dpo": 1.5}  # planted per-token levels
    # the noise grows with the prompt length, so a mean of per-unit ratios would differ
    num = {m: (r + per_token * tokens / 15) * tokens for m, r in rates.items()}
    att = attribute(num, LINEAGE, denominators=tokens, seed=0)
    for m in LINEAGE:
        assert att.levels[m] == pytest.approx(num[m].sum() / tokens.sum(), abs=1e-12)
    assert att.levels["base"] != pytest.approx(np.mean(num["base"] / tokens), abs=1e-3)
    t = att.table.set_index("stage")
    assert t.loc["sft", "delta"] == pytest.approx(0.5, abs=1e-12)
    assert t.loc["dpo", "delta"] == pytest.approx(0.0, abs=1e-12)
    assert t.loc["sft", "share"] == pytest.approx(1.0)
    per_model = attribute(num, LINEAGE, denominators={m: tokens for m in LINEAGE}, seed=0)
    assert per_model.table.equals(att.table)


def test_bad_inputs_are_one_line_errors():
    v = _lineage_values(10, (1.0, 0.0))
    with pytest.raises(InputError, match="at least 2 models"):
        attribute(v, ["base"])
    with pytest.raises(InputError, match=r"no values for \['ppo'\]"):
        attribute(v, ["base", "ppo"])
    with pytest.raises(InputError, match="same units for every model"):
        attribute({**v, "dpo": v["dpo"][:9]}, LINEAGE)
    with pytest.raises(InputError, match="no unit has a finite value"):
        attribute({**v, "sft": np.full(10, np.nan)}, LINEAGE)


# -- a real lineage: planted bigram models through the project's forward pass -------------

WORDS = [f"w{i}" for i in range(10)]
SHARPENED = WORDS[:5]  # the sft stage sharpens the next-token rows of these words


def _entropy(rows: np.ndarray) -> np.ndarray:
    lp = rows - np.logaddexp.reduce(rows, axis=-1, keepdims=True)
    return -(np.exp(lp) * lp).sum(-1)


@pytest.fixture
def planted_lineage():
    vocab = 4 + len(WORDS)
    g = torch.Generator().manual_seed(0)
    base = torch.randn(vocab, vocab, generator=g, dtype=torch.float64)
    sft = base.clone()
    for w in SHARPENED:
        sft[4 + WORDS.index(w)] *= 3.0  # lower temperature: lower entropy after w
    # dpo reorders every row: another next-token distribution, the same entropy
    dpo = torch.stack([row[torch.randperm(vocab, generator=g)] for row in sft])
    tables = {"base": base, "sft": sft, "dpo": dpo}
    models = ModelSet({m: bigram_model(WORDS, t.float(), name=m) for m, t in tables.items()})
    rng = np.random.default_rng(0)
    prompts = [" ".join(rng.choice(WORDS, 3)) for _ in range(30)]
    return models, tables, prompts


def test_lineage_attributes_a_planted_sft_change_to_sft(planted_lineage):
    models, tables, prompts = planted_lineage
    entropy = {m: prompt_ends(lm, prompts, []).entropy for m, lm in models.models.items()}
    last = [4 + WORDS.index(p.split()[-1]) for p in prompts]
    planted = {m: _entropy(t.float().double().numpy()[last]) for m, t in tables.items()}
    for m in LINEAGE:  # the forward pass reads the planted tables
        assert np.allclose(entropy[m], planted[m], atol=1e-4)
    dpo_top1 = tables["dpo"][last].argmax(-1)
    assert (dpo_top1 != tables["sft"][last].argmax(-1)).any()  # dpo really changed the model
    change = planted["sft"] - planted["base"]
    assert (change[[p.split()[-1] in SHARPENED for p in prompts]] < -1e-3).all()

    att = attribute(entropy, models.names, seed=0)
    t = att.table.set_index("stage")
    assert t.loc["sft", "delta"] == pytest.approx(change.mean(), abs=1e-4)
    assert t.loc["sft", "ci_high"] < 0  # excludes 0
    assert abs(t.loc["dpo", "delta"]) < 1e-5
    assert t.loc["dpo", "ci_low"] <= 0 <= t.loc["dpo", "ci_high"]
    assert t.loc["sft", "share"] == pytest.approx(1.0, abs=1e-3)
    assert t.loc["dpo", "share"] == pytest.approx(0.0, abs=1e-3)
    assert (t["n"] == 30).all()


def test_two_model_set_gives_the_pair_s_mean_difference_and_ci(pair, prompts):
    models = ModelSet.from_pair(pair)
    ent = {m: prompt_ends(lm, prompts, []).entropy for m, lm in models.models.items()}
    diff = ent["tuned"] - ent["base"]
    assert np.abs(diff).max() > 1e-4  # the planted block changes the entropy
    att = attribute(ent, models.names, seed=3, n_boot=1000)
    row = att.table.iloc[0]
    assert (row["stage"], row["from"], row["to"]) == ("tuned", "base", "tuned")
    assert row["delta"] == pytest.approx(diff.mean(), abs=1e-12)
    assert (row["ci_low"], row["ci_high"]) == pytest.approx(
        bootstrap_ci(diff, seed=3, n_boot=1000), abs=1e-12
    )
    assert row["share"] == pytest.approx(1.0)
