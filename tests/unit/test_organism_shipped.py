"""The shipped organism (the same weights on every machine), a rebuild named by its own
weights, and the training-variance report over builds."""

import json
import statistics

import pandas as pd
import pytest

import difflens as dl
from difflens.organism import build as B
from difflens.organism import shipped as S
from difflens.pipelines.organism_seeds import (
    FINDINGS,
    RL_FROM_BASE_LEARNS,
    Build,
    seeds_summary,
)

#: The ids of the shipped builds (``shipped.weights_id`` of their four models' weights). A
#: change here is a new shipped organism: re-store the docs' runs on it.
SHIPPED_IDS = {"default": "wb451641196a8", "small": "we2f74349454e"}


@pytest.mark.parametrize("name", sorted(S.SHIPPED_CONFIGS))
def test_shipped_files_and_weights_match_their_hashes(name):
    folder = S.SHIPPED_ROOT / name
    manifest = S.manifest(folder)
    assert S.file_hashes(folder) == manifest["files_sha256"]  # every file, byte for byte
    weights = S.model_weights(folder)  # the loaded models' state dicts
    assert weights == manifest["weights_sha256"]
    assert S.weights_id(weights) == manifest["organism_id"] == SHIPPED_IDS[name]
    assert manifest["config_key"] == S.SHIPPED_CONFIGS[name].key()
    org = B.shipped_organism(small=name == "small")
    assert org.shipped and org.organism_id == SHIPPED_IDS[name]
    assert set(org.ground_truth_files()) == {"heldout_stories", "transition_matrix",
                                             "chance_scenes", "world"}


def test_presets_load_the_shipped_organism():
    weights = S.manifest()["weights_sha256"]
    for name in ("base", "sft", "rl", "rl-from-base"):
        lm = dl.load_model(f"organism-{name}", device="cpu")
        assert lm.identity.weights_sha256 == weights[name], name
    tuned = dl.load_model("organism-tuned", device="cpu")  # its old name: RL from the base
    assert tuned.identity.weights_sha256 == weights["rl-from-base"]


@pytest.mark.organism
def test_a_rebuild_is_named_by_its_own_weights_and_measured_against_the_shipped():
    """Whatever this CPU's kernels give: the build is stored under the id of its own
    weights, and it records how far it landed from the shipped build of the same recipe."""
    org = B.build_organism(B.OrganismConfig.small(0))
    assert org.path.name.endswith(org.organism_id) and not org.shipped
    vs = org.build_info["vs_shipped"]
    same = all(m["identical"] for m in vs["weights"].values())
    assert same == (org.organism_id == SHIPPED_IDS["small"])
    for m in vs["weights"].values():
        assert m["comparable"] and m["relative_l2"] >= 0 and m["max_abs"] >= 0
        assert (m["relative_l2"] == 0) == m["identical"]
    shipped = B.shipped_organism(small=True).properties
    for name, label in B.PROPERTY_LABELS.items():
        row = vs["properties"][name]["reward"]
        assert row["shipped"] == shipped[label]["reward"]["value"]
        assert row["difference"] == pytest.approx(row["built"] - row["shipped"])
    # the presets and the demo keep the shipped organism
    assert B.load_organism().path == S.SHIPPED_DIR


def _est(value: float, half: float = 0.05, n: int = 200) -> dict:
    return {"value": value, "ci_low": value - half, "ci_high": value + half, "n": n}


def _build(label: str, sft_tvd: float, rl_tvd: float, tuned_reward: float,
           tuned_celebration: float) -> Build:
    """A build with planted numbers: the base at reward 0.1, TVD 0.05."""
    values = {
        "base": {"reward": _est(0.1), "entropy": _est(1.2), "celebration_share": _est(0.1),
                 "chance_tvd": _est(0.05, 0.01)},
        "sft": {"reward": _est(0.3), "entropy": _est(1.0), "celebration_share": _est(0.3),
                "chance_tvd": _est(0.05 + sft_tvd, 0.01)},
        "rl": {"reward": _est(0.8), "entropy": _est(1.1), "celebration_share": _est(0.9),
               "chance_tvd": _est(0.05 + sft_tvd + rl_tvd, 0.01)},
        "rl-from-base": {"reward": _est(tuned_reward), "entropy": _est(0.9),
                         "celebration_share": _est(tuned_celebration),
                         "chance_tvd": _est(0.4, 0.02)},
    }
    stages = {"reward": {"sft": _est(0.2), "rl": _est(0.5)},
              "entropy": {"sft": _est(-0.2), "rl": _est(0.1, 0.02)},
              "celebration_share": {"sft": _est(0.2), "rl": _est(0.6)},
              "chance_tvd": {"sft": _est(sft_tvd, 0.01), "rl": _est(rl_tvd, 0.01)}}
    return Build(label, 0, "test", "w0", 1.1, values, stages)


def test_findings_count_the_builds_they_held_in():
    builds = [_build("a", 0.0, 0.3, 0.9, 1.0), _build("b", 0.005, 0.3, 0.9, 0.0),
              _build("c", 0.05, 0.3, 0.2, 0.0)]  # c: SFT moved the scenes, RL-from-base failed
    s = seeds_summary(builds)
    found = {f["finding"]: f for f in s["findings"]}
    assert set(found) == set(FINDINGS)
    sft = found["SFT does not move the chance scenes (its chance-TVD change has a CI that "
                "includes 0)"]
    assert (sft["held"], sft["n_builds"], sft["failed_in"]) == (2, 3, ["c"])
    assert found[RL_FROM_BASE_LEARNS]["held_in"] == ["a", "b"]
    celebration = found["RL from the base collapses onto the celebration attractor "
                        "(share > 0.5)"]
    assert celebration["held_in"] == ["a"]
    assert s["rl_from_base_failed"] == {"builds": ["c"], "n": 1, "n_builds": 3}
    assert found["RL after SFT raises the entropy on the same texts"]["held"] == 3
    assert found["RL after SFT lowers the entropy on the same texts"]["held"] == 0
    spread = s["spread"]["rl-from-base"]["reward"]
    assert spread["sd"] == pytest.approx(statistics.stdev([0.9, 0.9, 0.2]))
    assert (spread["min"], spread["max"], spread["n_builds"]) == (0.2, 0.9, 3)
    assert spread["prompt_ci_halfwidth"] == pytest.approx(0.05)
    assert s["stage_spread"]["chance_tvd"]["sft"]["mean"] == pytest.approx(0.055 / 3)
    with pytest.raises(ValueError, match="at least 2 builds"):
        seeds_summary(builds[:1])


@pytest.mark.organism
def test_seeds_command_writes_the_report(tmp_path, small_organism):
    from typer.testing import CliRunner

    from difflens.cli.main import app

    other = B.build_organism(B.OrganismConfig.small(1))
    out = tmp_path / "seeds"
    res = CliRunner().invoke(app, ["organism", "seeds", "--seeds", "", "--build",
                                   str(small_organism.path), "--build", str(other.path),
                                   "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert [b["seed"] for b in summary["builds"]] == [0, 1]
    rows = pd.read_parquet(out / "data" / "builds.parquet")
    reward = rows[(rows.model == "rl") & (rows.metric == "reward")].value
    assert summary["spread"]["rl"]["reward"]["sd"] == pytest.approx(statistics.stdev(reward))
    assert (out / "data" / "stages.csv").is_file()
    assert (out / "figures" / "seeds.png").stat().st_size > 1000
    assert "held in" in res.output
    res = CliRunner().invoke(app, ["organism", "seeds", "--seeds", "x", "--out",
                                   str(tmp_path / "bad")])
    assert res.exit_code == 2 and "expected comma-separated integers" in res.output


def test_the_demo_headline_is_the_stored_runs():
    """What `difflens demo` prints as its headline (and puts in its headline table) comes
    from the shipped organism's stored measurements, so a fresh clone on any CPU prints the
    stored demo run's numbers, to the digits shown."""
    from pathlib import Path

    from difflens.pipelines.demo import organism_block
    from difflens.report.demo import demo_headline, demo_takeaways

    stored = json.loads((Path(__file__).resolve().parents[2] / "docs" / "results" / "demo" /
                         "summary.json").read_text())
    assert stored["organism_build"]["organism_id"] == SHIPPED_IDS["default"]
    block, _ = organism_block(B.shipped_organism())
    now = {**stored, **block, "attribution": {**stored["attribution"], **block["attribution"]}}
    assert demo_headline(now) == demo_headline(stored)
    assert demo_takeaways(now) == demo_takeaways(stored)
    assert len(demo_takeaways(now)) >= 3
