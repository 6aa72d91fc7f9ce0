"""The model organism: a reduced build end to end, the cache, presets, CLI and demo."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import comb
from scipy.stats import entropy
from syrupy.extensions.json import JSONSnapshotExtension
from typer.testing import CliRunner

import difflens as dl
from difflens.cli.main import app
from difflens.models import loading
from difflens.organism import build as B
from difflens.organism import world as W
from difflens.organism.truth import organism_measure
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


def _ari(a, b) -> float:
    """Adjusted Rand index by pair counting (Hubert & Arabie), written out."""
    table = pd.crosstab(pd.Series(a), pd.Series(b)).to_numpy()
    pairs = comb(table, 2).sum()
    rows, cols = comb(table.sum(1), 2).sum(), comb(table.sum(0), 2).sum()
    expected = rows * cols / comb(table.sum(), 2)
    return float((pairs - expected) / ((rows + cols) / 2 - expected))


def _check_capture_and_organism(out: Path, summary: dict) -> None:
    data = out / "data"
    # capture: each headline mean is the mean of the per-token table the demo wrote
    per_token = pd.read_parquet(data / "per_token.parquet")
    for col, v in summary["pair"].items():
        assert v["mean"] == pytest.approx(per_token[col].astype(float).mean(), rel=1e-9), col
        assert v["n"] == len(per_token) == summary["capture"]["n_tokens"]
    # organism: the world's chance outcomes (uniform by construction) and the mean TVD
    chance = pd.read_parquet(data / "chance.parquet")
    outcomes = {kind: outs for outs, kind in W.CHANCE_SLOTS.values()}
    for (model, kind), g in chance.groupby(["model", "kind"]):
        assert sorted(g.outcome) == sorted(outcomes[kind])
        assert g.uniform.tolist() == pytest.approx([1 / len(outcomes[kind])] * len(g))
        assert g.p.sum() == pytest.approx(1.0)
        tvd = summary["organism"][model]["chance_tvd_by_kind"][kind]
        assert g.tvd_mean.tolist() == pytest.approx([tvd] * len(g))
        # the TVD of the mean distribution is at most the mean TVD (convexity)
        assert 0.5 * np.abs(g.p - g.uniform).sum() <= tvd + 1e-9


def _check_collapse(out: Path, col: dict) -> None:
    # probe summaries from the per-answer probabilities, by hand
    answers = pd.read_parquet(out / "collapse" / "data" / "probe_answers.parquet")
    for (probe, model), g in answers.groupby(["probe", "model"]):
        per = g.groupby("phrasing")
        ent = per.p.apply(lambda p: entropy(p, base=2))
        tvd = per.p.apply(lambda p: 0.5 * np.abs(p - 1 / len(p)).sum())
        outside = per.p_raw.apply(lambda p: 1 - p.sum())
        got = col["probes"][probe][model]
        assert got["n_phrasings"] == per.ngroups
        assert got["entropy_bits"] == pytest.approx(ent.mean(), abs=1e-9), (probe, model)
        assert got["tvd_uniform"] == pytest.approx(tvd.mean(), abs=1e-9), (probe, model)
        assert got["outside_mass"] == pytest.approx(outside.mean(), abs=1e-9), (probe, model)
        assert got["answered"] is bool(outside.mean() <= 0.95)
    # rank correlation of the two models' mean answer probabilities, by scipy
    from scipy.stats import kendalltau, spearmanr

    for probe, r in col["probes"]["rank_correlation"].items():
        mean = answers[answers.probe == probe].groupby(["model", "answer"]).p.mean()
        order = sorted(set(answers[answers.probe == probe].answer))
        x = [mean[("base", a)] for a in order]
        y = [mean[("tuned", a)] for a in order]
        assert r["spearman"] == pytest.approx(spearmanr(x, y).statistic), probe
        assert r["kendall"] == pytest.approx(kendalltau(x, y).statistic), probe
    assert "coin" not in col["probes"]["rank_correlation"]  # two answers: no ordering
    # the de-collapse sampler's perplexity under the base, from its per-text NLL table
    dec = pd.read_parquet(out / "collapse" / "data" / "decollapse.parquet")
    for name, g in dec.groupby("set"):
        want = float(np.exp(g.nll.dropna().mean()))
        assert col["decollapse"]["sets"][name]["ppl_under_scorer"] == pytest.approx(want)
    att = pd.read_parquet(out / "collapse" / "data" / "attractors.parquet")
    for model, g in att.groupby("model"):
        assert col["attractors"][model]["strength"] == pytest.approx(1 - g.edit_distance.mean())
        assert col["attractors"][model]["exact_rate"] == pytest.approx(g.exact.mean())
        assert col["attractors"][model]["n"] == len(g)
    for model in ("base", "tuned"):  # distinct-n by hand from the samples, mean over prompts
        samples = pd.read_parquet(out / "collapse" / "data" / f"samples_{model}.parquet")
        for n in (1, 2):
            def distinct(texts: pd.Series, n: int = n) -> float:
                grams = [tuple(w[i:i + n]) for w in texts.str.lower().str.split()
                         for i in range(len(w) - n + 1)]
                return len(set(grams)) / len(grams)

            want = samples.groupby("prompt_id").text.apply(distinct).mean()
            assert col["diversity"][model][f"distinct_{n}"] == pytest.approx(want), (model, n)
    tokens = pd.read_parquet(out / "collapse" / "data" / "divergence_tokens.parquet")
    assert col["divergence"]["n_tokens"] == len(tokens)
    per_text = tokens.groupby("text_id")[["kl_tuned_base", "kl_base_tuned", "top1_agree"]].mean()
    assert col["divergence"]["n_texts"] == len(per_text)
    for c in per_text:  # the mean over texts of each text's mean
        assert col["divergence"][f"{c}_mean"] == pytest.approx(per_text[c].mean(), rel=1e-6), c
    temp = pd.read_parquet(out / "collapse" / "data" / "temperature.parquet")
    gap = (temp.entropy_bits - temp.base_entropy).abs().groupby(temp["T"]).mean()
    tvd_base = temp.groupby("T").tvd_base.mean()
    assert col["temperature"]["best_T"] == pytest.approx(gap.idxmin())
    assert col["temperature"]["residual_tvd"] == pytest.approx(tvd_base[gap.idxmin()])
    assert col["temperature"]["tvd_at_1"] == pytest.approx(tvd_base[1.0])


def _check_control(out: Path, ctl: dict) -> None:
    # bad rates recounted from the generations; the independent one by the world's
    # labeller; no steering moves nothing
    gens = pd.read_parquet(out / "control" / "data" / "generations.parquet")
    world_bad = np.array(organism_measure()(gens.text.tolist()))
    tau = ctl["probe"]["threshold"]
    for (kind, gain), idx in gens.groupby(["controller", "gain"]).groups.items():
        g = gens.loc[idx]
        cell = ctl["controllers"][kind][f"{gain:g}"]
        assert cell["n"] == len(g)
        assert cell["bad_rate"] == pytest.approx((g.region > tau).mean()), (kind, gain)
        assert cell["bad_rate_independent"] == pytest.approx(world_bad[idx].mean()), (kind, gain)
    assert ctl["controllers"]["none"]["0"]["kl"] < 1e-6
    kls = [ctl["controllers"]["open_loop"][g]["kl"] for g in ("0.25", "0.5", "1")]
    assert kls == sorted(kls) and kls[0] > 1e-6


def _check_themes(out: Path, th: dict) -> None:
    # ARI and celebration share against the world's own sentence labels
    segs = pd.read_parquet(out / "themes" / "data" / "segments.parquet")
    true = np.array([W.label_sentence(t) for t in segs.text])
    known = (true != "unknown") & (segs.theme.to_numpy() != -1)
    assert th["organism"]["n_segments_labelled"] == known.sum()
    assert th["organism"]["ari"] == pytest.approx(_ari(true[known], segs.theme.to_numpy()[known]))
    for model in ("base", "tuned"):
        mine = true[segs.model.to_numpy() == model]
        assert th["organism"]["celebration_share"][model]["mean"] == pytest.approx(
            np.mean(mine == "celebration"))
    assert th["n_themes"] == len(pd.read_parquet(out / "themes" / "data" / "themes.parquet"))


def _check_trajectories(out: Path, summary: dict) -> None:
    # base-tuned geodesic at continuation index 0, from the sphere points
    traj = pd.read_parquet(out / "trajectories" / "data" / "trajectories.parquet")
    first = traj[traj.segment.str.startswith("continuation") & (traj.step == 0)]
    both = first[first.model == "base"].merge(first[first.model == "tuned"],
                                              on=["prompt_id", "segment"])
    dots = (both[["x_x", "y_x", "z_x"]].to_numpy() * both[["x_y", "y_y", "z_y"]].to_numpy())
    d = np.arccos(np.clip(dots.sum(1), -1, 1))
    row = summary["trajectories"]["continuation"]["distance_by_index"][0]
    assert row["n"] == len(d) and row["mean"] == pytest.approx(d.mean(), abs=1e-6)


def _check_demo_against_its_data(out: Path, summary: dict) -> None:
    """Numbers of summary.json recomputed from the data files the demo wrote, by hand, and
    against the story world's ground truth."""
    _check_capture_and_organism(out, summary)
    _check_collapse(out, summary["collapse"])
    _check_control(out, summary["control"])
    _check_themes(out, summary["themes"])
    _check_trajectories(out, summary)


def test_cli_build_info_and_demo(tmp_path, snapshot, monkeypatch):
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
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    res = runner.invoke(app, ["demo", "--small", "--out", str(blocker / "demo")])
    assert res.exit_code == 2 and "is not writable" in res.output
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--small", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    _check_demo_against_its_data(out, summary)
    # the demo ends with the command that opens its runs in the explorer, and it works: every
    # folder is a run the explorer serves, with the organism pair for the live views
    import shlex

    import difflens.explore

    line = next(x for x in res.stdout.splitlines() if x.startswith("difflens explore "))
    args = shlex.split(line)[1:]
    served = {}
    monkeypatch.setattr(difflens.explore, "serve", lambda folders, config, live=None:
                        served.update(folders=list(folders), live=live))
    assert runner.invoke(app, args).exit_code == 0
    assert [Path(f) for f in served["folders"]][1:3] == [out / "trajectories", out / "collapse"]
    assert set(served["live"].models) == {"base", "tuned"}
    # `organism info` reads the same build the demo used
    assert info["path"] == summary["organism_build"]["path"]
    for label in ("base", "tuned"):
        assert info["properties"][label]["reward_mean"] == summary["organism"][label]["reward_mean"]
    # Every number of the small demo (timings left out), to 6 significant digits: a change
    # of any result shows up here. After a deliberate change, rerun with --snapshot-update
    # and explain the diff.
    assert summary_numbers(summary) == snapshot(extension_class=JSONSnapshotExtension)
    page = (out / "index.html").read_text()
    assert "Headline figures" in page and "plotly" in page.lower()
    concepts = summary["concepts"]
    assert concepts["n_items"] == 60 and "Concepts: kind vs cruel" in page
    assert [r["layer"] for r in concepts["cosine_by_layer"]] == concepts["layers"]
    assert set(concepts["steering"]) == {"base", "tuned"}
    assert (out / "concepts" / "figures" / "pca.png").stat().st_size > 1000
    traj = summary["trajectories"]
    assert traj["n_prompts"] == 8 and "Trajectories" in page
    assert traj["jumps"]["top_tokens"]
    assert (out / "trajectories" / "figures" / "sphere_0.png").stat().st_size > 1000
    col = summary["collapse"]
    assert "Mode collapse" in page
    assert set(col["probes"]) == {"d6", "number10", "coin", "qa", "rank_correlation"}
    assert (out / "collapse" / "figures" / "tree.png").stat().st_size > 1000
    ctl = summary["control"]
    assert "Control" in page
    assert set(ctl["controllers"]) == {"none", "open_loop", "proportional", "rollback"}
    assert (out / "control" / "figures" / "controllability.png").stat().st_size > 1000
    assert (out / "control" / "probe.safetensors").is_file()
    th = summary["themes"]
    assert "Themes" in page and th["n_prompts"] == 24 and th["k_samples"] == 8
    assert th["n_themes"] >= 4
    assert (out / "themes" / "figures" / "theme_map.png").stat().st_size > 1000
    for name in ("headline_reward", "kl_by_position", "layer_cosine", "rl_curves"):
        assert (out / "figures" / f"{name}.html").is_file()
        assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    for table in ("per_token", "layers", "chance", "rl_curves"):
        assert (out / "data" / f"{table}.parquet").is_file()
        assert (out / "data" / f"{table}.csv").is_file()
