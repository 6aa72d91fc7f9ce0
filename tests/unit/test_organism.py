"""The model organism: a reduced build end to end, the cache, presets, CLI and demo."""

import json

import pytest
from syrupy.extensions.json import JSONSnapshotExtension
from typer.testing import CliRunner

import difflens as dl
from difflens.cli.main import app
from difflens.models import loading
from difflens.organism import build as B
from difflens.report.summary_numbers import summary_numbers


@pytest.fixture
def small_cfg():
    return B.OrganismConfig.small(seed=0)


def test_small_build_is_complete_and_cached(small_cfg):
    org = B.build_organism(small_cfg)
    assert org.path == B.organism_dir(small_cfg)
    for name in ("base", "tuned"):
        lm = dl.load_model(org.path / name, device="cpu")
        assert lm.identity.architecture == "LlamaForCausalLM"
    gt = org.ground_truth_files()
    assert set(gt) == {"heldout_stories", "transition_matrix", "chance_scenes", "world"}
    with open(gt["heldout_stories"]) as f:
        first = json.loads(f.readline())
    assert len(first["sentences"]) == len(first["themes"])
    props = org.properties
    for label in ("base", "tuned"):
        for key in ("reward", "entropy", "celebration_share", "chance_tvd"):
            assert props[label][key]["n"] > 0 and len(props[label][key]["ci95"]) == 2
    curves = json.loads((org.path / "rl_curves.json").read_text())
    assert len(curves["reward"]) == small_cfg.rl_steps == len(curves["kl"])
    assert (org.path / "training_curves.png").stat().st_size > 1000
    stamp = (org.path / "build.json").stat().st_mtime_ns
    again = B.build_organism(small_cfg)
    assert (again.path / "build.json").stat().st_mtime_ns == stamp


def test_build_is_deterministic(small_cfg, tmp_path, monkeypatch):
    a = B.build_organism(small_cfg)
    wa = (a.path / "base" / "model.safetensors").read_bytes()
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "other"))
    b = B.build_organism(small_cfg)
    assert (b.path / "base" / "model.safetensors").read_bytes() == wa
    assert a.properties["tuned"]["reward"] == b.properties["tuned"]["reward"]


def test_half_finished_build_is_not_taken_for_finished(small_cfg, monkeypatch):
    target = B.organism_dir(small_cfg)
    (target / "base").mkdir(parents=True)  # e.g. a build killed half-way by an old version
    assert B.find_organism(small_cfg) is None

    real = B.rl_tune

    def boom(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(B, "rl_tune", boom)
    with pytest.raises(KeyboardInterrupt):
        B.build_organism(small_cfg)
    assert B.find_organism(small_cfg) is None
    assert not [p for p in target.parent.iterdir() if p.name.startswith(".tmp-build-")]
    monkeypatch.setattr(B, "rl_tune", real)
    assert B.build_organism(small_cfg).properties


def test_presets_resolve_to_the_organism(small_cfg, monkeypatch):
    org = B.build_organism(small_cfg)
    monkeypatch.setattr(B, "build_organism", lambda *a, **k: org)
    base = dl.load_model("organism-base", device="cpu")
    tuned = dl.load_model("organism-tuned", device="cpu")
    assert base.identity.name == "organism-base"
    assert base.identity.weights_sha256 != tuned.identity.weights_sha256
    dl.ModelPair(base, tuned)  # same tokenizer
    assert {"organism-base", "organism-tuned"} <= set(loading.known_presets())


def test_config_validation():
    with pytest.raises(ValueError, match="d_model must be positive"):
        B.OrganismConfig(d_model=0)
    with pytest.raises(ValueError, match="rl_samples must be at least 2"):
        B.OrganismConfig(rl_samples=1)
    assert B.OrganismConfig().key() != B.OrganismConfig(seed=1).key()


def test_cli_build_info_and_demo(tmp_path, snapshot):
    runner = CliRunner()
    res = runner.invoke(app, ["organism", "info", "--small"])
    assert res.exit_code == 2 and "run: difflens organism build --small" in res.output
    res = runner.invoke(app, ["organism", "build", "--small"])
    assert res.exit_code == 0, res.output
    assert "built organism" in res.output
    res = runner.invoke(app, ["organism", "build", "--small"])
    assert "cached organism" in res.output
    info = json.loads(runner.invoke(app, ["organism", "info", "--small", "--json"]).output)
    assert set(info["models"]) == {"base", "tuned"}
    assert "reward_mean" in info["properties"]["tuned"]
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    res = runner.invoke(app, ["demo", "--small", "--out", str(blocker / "demo")])
    assert res.exit_code == 2 and "is not writable" in res.output
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--small", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    # Every number of the small demo (timings left out), to 6 significant digits: a change
    # of any result shows up here. After a deliberate change, rerun with --snapshot-update
    # and explain the diff.
    assert summary_numbers(summary) == snapshot(extension_class=JSONSnapshotExtension)
    for label in ("base", "tuned"):
        for key in ("reward_mean", "entropy_mean", "celebration_share", "chance_tvd"):
            assert isinstance(summary["organism"][label][key], float), key
            assert len(summary["organism"][label][key.removesuffix("_mean") + "_ci95"]) == 2
    assert 0 <= summary["organism"]["tuned"]["celebration_share"] <= 1
    page = (out / "index.html").read_text()
    assert "Headline figures" in page and "plotly" in page.lower()
    concepts = summary["concepts"]
    assert concepts["n_items"] == 60 and "Concepts: kind vs cruel" in page
    assert [r["layer"] for r in concepts["cosine_by_layer"]] == concepts["layers"]
    assert set(concepts["steering"]) == {"base", "tuned"}
    assert (out / "concepts" / "figures" / "pca.png").stat().st_size > 1000
    traj = summary["trajectories"]
    assert traj["n_prompts"] == 8 and "Trajectories" in page
    assert traj["continuation"]["distance_by_index"] and traj["jumps"]["top_tokens"]
    assert (out / "trajectories" / "figures" / "sphere_0.png").stat().st_size > 1000
    col = summary["collapse"]
    assert "Mode collapse" in page
    assert set(col["probes"]) == {"d6", "number10", "coin", "qa"}
    for label in ("base", "tuned"):
        assert {"entropy_bits", "tvd_uniform", "top_answer", "top_prob",
                "outside_mass"} <= set(col["probes"]["d6"][label])
        assert {"strength", "ci_low", "ci_high"} <= set(col["attractors"][label])
        assert {"distinct_2", "self_bleu", "vendi", "frechet"} <= set(col["diversity"][label])
    assert {"best_T", "residual_tvd"} <= set(col["temperature"])
    assert col["divergence"]["kl_tuned_base_mean"] >= 0
    assert (out / "collapse" / "figures" / "tree.png").stat().st_size > 1000
    ctl = summary["control"]
    assert "Control" in page and ctl["probe"]["layer"] >= 0
    assert {"none", "open_loop", "proportional", "rollback"} <= set(ctl["controllers"])
    assert {"bad_rate", "bad_rate_ci_low", "bad_rate_ci_high", "bad_rate_independent",
            "ppl_ratio", "kl", "speed_ratio"} <= set(ctl["controllers"]["proportional"]["1"])
    assert (out / "control" / "figures" / "controllability.png").stat().st_size > 1000
    assert (out / "control" / "probe.safetensors").is_file()
    th = summary["themes"]
    assert "Themes" in page and th["n_prompts"] == 24 and th["k_samples"] == 8
    assert 0 <= th["organism"]["ari"] <= 1 and th["n_themes"] >= 4
    assert (out / "themes" / "figures" / "theme_map.png").stat().st_size > 1000
    for name in ("headline_reward", "kl_by_position", "layer_cosine", "rl_curves"):
        assert (out / "figures" / f"{name}.html").is_file()
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    for table in ("per_token", "layers", "chance", "rl_curves"):
        assert (out / "data" / f"{table}.parquet").is_file()
        assert (out / "data" / f"{table}.csv").is_file()
