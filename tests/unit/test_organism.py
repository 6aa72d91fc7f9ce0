"""The model organism: a reduced build end to end, the cache, presets, CLI and demo."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy.special import comb
from scipy.stats import entropy
from typer.testing import CliRunner

import difflens as dl
from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.cli.main import app
from difflens.models import presets
from difflens.organism import build as B
from difflens.organism import training as T
from difflens.organism import world as W
from difflens.organism.truth import organism_measure
from difflens.report.summary_numbers import summary_numbers


@pytest.fixture
def small_cfg():
    return B.OrganismConfig.small(seed=0)


pytestmark = pytest.mark.organism


def test_small_build_is_complete_and_cached(small_organism, small_cfg):
    org = small_organism
    # stored under the config's folder name and its own weights' id
    assert org.path.name == f"{B.organism_dir(small_cfg).name}-{org.organism_id}"
    assert org.build_info["weights_sha256"]["base"] == dl.load_model(
        org.path / "base", device="cpu").identity.weights_sha256
    for name in ("base", "tuned", "sft", "rl"):
        lm = dl.load_model(org.path / name, device="cpu")
        assert lm.identity.architecture == "LlamaForCausalLM"
    gt = org.ground_truth_files()
    assert set(gt) == {"heldout_stories", "transition_matrix", "chance_scenes", "world"}
    with open(gt["heldout_stories"]) as f:
        first = json.loads(f.readline())
    assert len(first["sentences"]) == len(first["themes"])
    props = org.properties
    for label in ("base", "tuned", "sft", "rl"):
        for key in ("reward", "entropy", "celebration_share", "chance_tvd"):
            assert props[label][key]["n"] > 0 and leftover_ci_keys(props[label][key]) == []
            assert props[label][key]["ci_low"] <= props[label][key]["ci_high"]
    curves = json.loads((org.path / "rl_curves.json").read_text())
    assert len(curves["reward"]) == small_cfg.rl_steps == len(curves["kl"])
    curves = json.loads((org.path / "rl_from_sft_curves.json").read_text())
    assert len(curves["reward"]) == small_cfg.rl_steps
    # every model measured on the same units, for paired attribution
    units = org.measurements()
    per = units.groupby(["metric", "model"]).unit.apply(lambda u: tuple(sorted(u)))
    for metric in ("reward", "entropy", "celebration", "chance_tvd"):
        assert len({per[(metric, m)] for m in ("base", "tuned", "sft", "rl")}) == 1, metric
    assert (org.path / "training_curves.png").stat().st_size > 1000
    stamp = (org.path / "build.json").stat().st_mtime_ns
    again = B.build_organism(small_cfg)
    assert (again.path / "build.json").stat().st_mtime_ns == stamp


def test_build_is_deterministic(small_organism, small_cfg, tmp_path, monkeypatch):
    a = small_organism
    wa = (a.path / "base" / "model.safetensors").read_bytes()
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "other"))
    b = B.build_organism(small_cfg)
    assert (b.path / "base" / "model.safetensors").read_bytes() == wa
    assert b.organism_id == a.organism_id
    assert a.properties["tuned"]["reward"] == b.properties["tuned"]["reward"]


def test_half_finished_build_is_not_taken_for_finished(small_cfg, monkeypatch):
    target = B.organism_dir(small_cfg)
    (target / "base").mkdir(parents=True)  # e.g. a build killed half-way by an old version
    (target.parent / f"{target.name}-w000000000000" / "base").mkdir(parents=True)
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


def test_presets_resolve_to_the_organism(small_organism, monkeypatch):
    org = small_organism
    monkeypatch.setattr(B, "shipped_organism", lambda *a, **k: org)
    base = dl.load_model("organism-base", device="cpu")
    tuned = dl.load_model("organism-tuned", device="cpu")
    assert base.identity.name == "organism-base"
    assert base.identity.weights_sha256 != tuned.identity.weights_sha256
    dl.ModelPair(base, tuned)  # same tokenizer
    # the lineage's presets; organism-tuned keeps its meaning: RL from the base
    shas = {name: dl.load_model(f"organism-{name}", device="cpu").identity.weights_sha256
            for name in ("sft", "rl", "rl-from-base")}
    assert shas["rl-from-base"] == tuned.identity.weights_sha256
    assert len({*shas.values(), base.identity.weights_sha256}) == 4
    assert {"organism-base", "organism-tuned", "organism-sft", "organism-rl",
            "organism-rl-from-base"} <= set(presets.known_presets())


def test_sft_curates_the_stories_the_reward_likes():
    """The SFT set is the top fraction of a fresh pool by the RL reward: planted truth of
    the world is that celebration stories score high and danger and loss stories low."""
    cfg = B.OrganismConfig(sft_pool=400, sft_keep=0.25)
    kept, info = B.curated_stories(cfg)
    assert info["pool"] == 400 and info["kept"] == len(kept) == 100
    vader = T._vader()
    rewards = [B.reward_of_story(vader, st) for st in kept]
    assert min(rewards) == pytest.approx(info["reward_threshold"])
    assert info["reward_kept_mean"] > info["reward_pool_mean"]
    assert info["theme_share_kept"]["celebration"] > info["theme_share_pool"]["celebration"]
    assert info["theme_share_kept"]["danger"] < info["theme_share_pool"]["danger"]


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


NAMES = ("base", "sft", "rl")


def _check_capture_and_organism(out: Path, summary: dict) -> None:
    data = out / "capture" / "data"
    # capture: each pair's headline means are the means of the per-token table it wrote
    assert set(summary["capture"]["pairs"]) == {"base-vs-sft", "base-vs-rl", "sft-vs-rl"}
    for key, pair in summary["capture"]["pairs"].items():
        a, b = key.split("-vs-")
        per_token = pd.read_parquet(data / f"per_token_{a}-vs-{b}.parquet")
        for col, v in pair.items():
            assert v["value"] == pytest.approx(per_token[col].astype(float).mean(), rel=1e-9)
            assert v["n"] == len(per_token)
    # organism: each model's measured chance TVD is the mean over the scenes it was measured
    # on, and each stage's change is the difference of those means (paired: same scenes)
    org = B.Organism(Path(summary["organism_build"]["path"]), B.OrganismConfig.small(0))
    units = org.measurements()
    labels = {"base": "base", "sft": "sft", "rl": "rl", "rl-from-base": "tuned"}
    for metric, key in (("chance_tvd", "chance_tvd"), ("reward", "reward_mean")):
        means = units[units.metric == metric].groupby("model").value.mean()
        for name, label in labels.items():
            assert summary["organism"][name][key]["value"] == pytest.approx(means[label]), \
                (metric, name)
        att = summary["attribution"][f"organism_{metric}"]
        assert att["sft"]["value"] == pytest.approx(means["sft"] - means["base"])
        assert att["rl"]["value"] == pytest.approx(means["rl"] - means["sft"])
    # the world's chance outcomes are uniform by construction; the TVD of the mean
    # distribution is at most the mean TVD (convexity)
    outcomes = {kind: outs for outs, kind in W.CHANCE_SLOTS.values()}
    for label in labels.values():
        for kind, v in org.properties[label]["chance_by_kind"].items():
            p = np.array(list(v["mean_distribution"].values()))
            assert sorted(v["mean_distribution"]) == sorted(outcomes[kind])
            assert p.sum() == pytest.approx(1.0)
            assert 0.5 * np.abs(p - 1 / len(p)).sum() <= v["tvd"]["value"] + 1e-9
    sq = summary["sft_question"]
    assert sq["sft_delta"] == {k: pytest.approx(v) if isinstance(v, float) else v for k, v in
                               summary["attribution"]["organism_chance_tvd"]["sft"].items()
                               if not k.startswith("share")}


def _check_collapse(out: Path, col: dict) -> None:
    # probe summaries from the per-answer probabilities, by hand
    answers = pd.read_parquet(out / "collapse" / "data" / "probe_answers.parquet")
    assert sorted(set(answers.model)) == sorted(NAMES)
    for (probe, model), g in answers.groupby(["probe", "model"]):
        per = g.groupby("phrasing")
        ent = per.p.apply(lambda p: entropy(p, base=2))
        tvd = per.p.apply(lambda p: 0.5 * np.abs(p - 1 / len(p)).sum())
        outside = per.p_raw.apply(lambda p: 1 - p.sum())
        got = col["probes"][probe][model]
        assert got["n_phrasings"] == per.ngroups
        for key, want in (("entropy_bits", ent), ("tvd_uniform", tvd), ("outside_mass", outside)):
            assert got[key]["value"] == pytest.approx(want.mean(), abs=1e-9), (probe, model, key)
        assert got["answered"] is bool(outside.mean() <= 0.95)
    # rank correlation of each later model's mean answer probabilities with the base's
    from scipy.stats import kendalltau, spearmanr

    for model in NAMES[1:]:
        for probe, r in col["probes"]["rank_correlation"][model].items():
            mean = answers[answers.probe == probe].groupby(["model", "answer"]).p.mean()
            order = sorted(set(answers[answers.probe == probe].answer))
            x = [mean[("base", a)] for a in order]
            y = [mean[(model, a)] for a in order]
            assert r["spearman"]["value"] == pytest.approx(spearmanr(x, y).statistic), probe
            assert r["kendall"]["value"] == pytest.approx(kendalltau(x, y).statistic), probe
        assert "coin" not in col["probes"]["rank_correlation"][model]  # two answers
    att = pd.read_parquet(out / "collapse" / "data" / "attractors.parquet")
    for model, g in att.groupby("model"):
        got = col["attractors"][model]
        assert got["strength"]["value"] == pytest.approx(1 - g.edit_distance.mean())
        assert got["exact_rate"]["value"] == pytest.approx(g.exact.mean())
        assert col["attractors"][model]["n"] == len(g)
    for model in NAMES:  # distinct-n by hand from the samples, mean over prompts
        samples = pd.read_parquet(out / "collapse" / "data" / f"samples_{model}.parquet")
        for n in (1, 2):
            def distinct(texts: pd.Series, n: int = n) -> float:
                grams = [tuple(w[i:i + n]) for w in texts.str.lower().str.split()
                         for i in range(len(w) - n + 1)]
                return len(set(grams)) / len(grams) if grams else float("nan")

            want = samples.groupby("prompt_id").text.apply(distinct).mean()
            got = col["diversity"][model][f"distinct_{n}"]
            assert got["value"] == pytest.approx(want), (model, n)
    for model in NAMES[1:]:  # each later model's temperature sweep against the base
        temp = pd.read_parquet(out / "collapse" / "data" / f"temperature_{model}.parquet")
        gap = (temp.entropy_bits - temp.base_entropy).abs().groupby(temp["T"]).mean()
        tvd_base = temp.groupby("T").tvd_base.mean()
        t = col["temperature"][model]
        assert t["best_T"] == pytest.approx(gap.idxmin())
        assert t["residual_tvd"]["value"] == pytest.approx(tvd_base[gap.idxmin()])
        assert t["tvd_at_1"]["value"] == pytest.approx(tvd_base[1.0])


def _check_control(out: Path, control: dict) -> None:
    # bad rates recounted from the generations; the independent one by the world's
    # labeller; no steering moves nothing; per model, each with its own probe
    for model in NAMES:
        ctl = control[model]
        gens = pd.read_parquet(out / "control" / model / "data" / "generations.parquet")
        world_bad = np.array(organism_measure()(gens.text.tolist()))
        tau = ctl["probe"]["threshold"]
        for (kind, gain), idx in gens.groupby(["controller", "gain"]).groups.items():
            g = gens.loc[idx]
            cell = ctl["controllers"][kind][f"{gain:g}"]
            assert cell["n"] == len(g)
            assert cell["bad_rate"]["value"] == pytest.approx((g.region > tau).mean()), \
                (kind, gain)
            assert cell["bad_rate_independent"]["value"] == pytest.approx(world_bad[idx].mean())
        assert ctl["controllers"]["none"]["0"]["kl"]["value"] < 1e-6
        kls = [ctl["controllers"]["open_loop"][g]["kl"]["value"] for g in ("0.5", "1")]
        assert kls == sorted(kls) and kls[0] > 1e-6


def _check_themes(out: Path, th: dict, attribution: dict) -> None:
    # ARI and celebration share against the world's own sentence labels
    segs = pd.read_parquet(out / "themes" / "data" / "segments.parquet")
    true = np.array([W.label_sentence(t) for t in segs.text])
    known = (true != "unknown") & (segs.theme.to_numpy() != -1)
    assert th["organism"]["n_segments_labelled"] == known.sum()
    assert th["organism"]["ari"] == pytest.approx(_ari(true[known], segs.theme.to_numpy()[known]))
    for model in NAMES:  # each model's own ARI, on its own labelled segments
        mine = known & (segs.model.to_numpy() == model)
        assert th["organism"]["ari_by_model"][model] == pytest.approx(
            _ari(true[mine], segs.theme.to_numpy()[mine]))
    for model in NAMES:
        mine = true[segs.model.to_numpy() == model]
        assert th["organism"]["celebration_share"][model]["value"] == pytest.approx(
            np.mean(mine == "celebration"))
    assert th["n_themes"] == len(pd.read_parquet(out / "themes" / "data" / "themes.parquet"))
    # theme shares: each model's share of (non-outlier) segments, pooled over prompts
    labelled = segs[segs.theme >= 0]
    for t in range(th["n_themes"]):
        share = labelled.groupby("model").theme.apply(lambda x, t=t: (x == t).mean())
        rows = attribution[f"theme_share_{t}"]
        assert rows["sft"]["value"] == pytest.approx(share["sft"] - share["base"], abs=1e-12)
        assert rows["rl"]["value"] == pytest.approx(share["rl"] - share["sft"], abs=1e-12)


def _check_trajectories(out: Path, summary: dict) -> None:
    # base-vs-rl geodesic at continuation index 0, from the sphere points
    traj = pd.read_parquet(out / "trajectories" / "data" / "trajectories.parquet")
    first = traj[traj.segment.str.startswith("continuation") & (traj.step == 0)]
    both = first[first.model == "base"].merge(first[first.model == "rl"],
                                              on=["prompt_id", "segment"])
    dots = (both[["x_x", "y_x", "z_x"]].to_numpy() * both[["x_y", "y_y", "z_y"]].to_numpy())
    d = np.arccos(np.clip(dots.sum(1), -1, 1))
    row = summary["trajectories"]["distance_pairs"]["base-vs-rl"]["continuation"][
        "distance_by_index"][0]
    assert row["n"] == len(d) and row["value"] == pytest.approx(d.mean(), abs=1e-6)


def _check_demo_against_its_data(out: Path, summary: dict) -> None:
    """Numbers of summary.json recomputed from the data files the demo wrote, by hand, and
    against the story world's ground truth."""
    _check_capture_and_organism(out, summary)
    _check_collapse(out, summary["collapse"])
    _check_control(out, summary["control"])
    _check_themes(out, summary["themes"], summary["attribution"])
    _check_trajectories(out, summary)


#: Every number of the small demo on the shipped reduced organism (timings left out).
DEMO_SMALL_NUMBERS = Path(__file__).parent / "data" / "demo_small_numbers.json"
#: How far a number may move when another CPU runs the same weights: relative and absolute
#: tolerance, i.e. 3 significant digits. Measured (issue 27) on the shipped reduced organism,
#: 7,981 numbers of this demo: with ATEN_CPU_CAPABILITY=avx2 (this machine's default kernels
#: are AVX512) 523 moved by more than 1e-6 and 30 (a trained theme probe's KL and ECE) by
#: more than 1e-4 relative; with 1 thread instead of 2, 13 and 2; none by more than 1e-3
#: relative or 1e-4 absolute.
REL, ABS = 1e-3, 1e-4


def same_numbers(summary: dict, stored: Path) -> None:
    """Every number of ``summary`` at the same path as in ``stored``, within ``REL``/``ABS``
    (no more digits than inference on another CPU keeps); DIFFLENS_UPDATE_NUMBERS=1
    rewrites ``stored`` instead."""
    import math
    import os

    now = summary_numbers(summary, digits=8)
    if os.environ.get("DIFFLENS_UPDATE_NUMBERS"):
        stored.parent.mkdir(exist_ok=True)
        stored.write_text(json.dumps(now, indent=1, sort_keys=True) + "\n")
    before = json.loads(stored.read_text())
    assert sorted(set(before) ^ set(now)) == [], sorted(set(before) ^ set(now))[:10]

    def close(a, b) -> bool:
        if isinstance(a, str) or isinstance(b, str):
            return a == b
        return math.isclose(a, b, rel_tol=REL, abs_tol=ABS)

    off = [(p, before[p], now[p]) for p in sorted(before) if not close(before[p], now[p])]
    assert not off, off[:10]
    assert leftover_ci_keys(summary) == []


def test_cli_build_info_and_demo(tmp_path, monkeypatch, organism_build):
    runner = CliRunner()
    res = runner.invoke(app, ["organism", "info", "--seed", "0", "--small"])  # empty cache
    assert res.exit_code == 2 and "run: difflens organism build --small" in res.output
    cache, build_output = organism_build  # `organism build --small` on an empty cache
    assert "built organism" in build_output
    monkeypatch.setenv("DIFFLENS_CACHE", str(cache))
    res = runner.invoke(app, ["organism", "build", "--small"])
    assert "cached organism" in res.output
    built = json.loads(runner.invoke(app, ["organism", "info", "--seed", "0", "--small",
                                           "--json"]).output)
    assert not built["shipped"] and built["organism_id"] in built["path"]
    # without --seed: the shipped (reduced) organism, the one the demo runs on
    info = json.loads(runner.invoke(app, ["organism", "info", "--small", "--json"]).output)
    assert info["shipped"] and set(info["models"]) == {"base", "sft", "rl", "rl-from-base"}
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    res = runner.invoke(app, ["demo", "--small", "--out", str(blocker / "demo")])
    assert res.exit_code == 2 and "is not writable" in res.output
    out = tmp_path / "demo"
    res = runner.invoke(app, ["demo", "--small", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    _check_demo_against_its_data(out, summary)
    # the demo ends with the command that opens it in the explorer, `difflens explore OUT`,
    # and it works: the explorer opens every section of the demo's folder
    import shlex

    import difflens.explore
    from difflens.explore.runs import open_runs

    line = next(x for x in res.stdout.splitlines() if x.startswith("difflens explore "))
    args = shlex.split(line)[1:]
    assert args == ["explore", str(out)]
    served = {}
    monkeypatch.setattr(difflens.explore, "serve", lambda folders, config, live=None:
                        served.update(folders=list(folders), live=live))
    assert runner.invoke(app, args).exit_code == 0
    assert [Path(f) for f in served["folders"]] == [out]
    opened = {r.root for r in open_runs([out])}
    assert {(out / s).resolve() for s in ("trajectories", "collapse", "themes")} <= opened
    # `organism info` reads the organism the demo used: the shipped one
    assert info["path"] == summary["organism_build"]["path"]
    assert summary["organism_build"]["organism_id"] == info["organism_id"]
    for label in ("base", "sft", "rl", "rl-from-base"):
        assert info["properties"][label]["reward_mean"] == summary["organism"][label]["reward_mean"]
    # the stored run records each model's identity and place in the lineage
    assert [(m["name"], m["position"]) for m in summary["models"]] == [
        ("base", 0), ("sft", 1), ("rl", 2)]
    assert summary["models"][2]["identity"]["weights_sha256"]
    # every attribution key the issue names, for every stage
    att = summary["attribution"]
    for metric in ("entropy", "kl_to_base", "chance_tvd", "attractor_strength", "vendi",
                   "self_bleu", "organism_chance_tvd", "organism_entropy",
                   "organism_celebration"):
        assert set(att[metric]) == {"sft", "rl"}, metric
        for row in att[metric].values():
            assert {"value", "ci_low", "ci_high", "share", "n", "resampled"} <= set(row)
    assert any(k.startswith("concept_cosine_L") for k in att)
    assert any(k.startswith("theme_share_") for k in att)
    # Every number of the small demo (timings left out), against the stored ones within
    # what inference on another CPU keeps (``same_numbers``): a change of any result shows
    # up here. After a deliberate change, rerun with DIFFLENS_UPDATE_NUMBERS=1 and explain
    # the diff.
    same_numbers(summary, DEMO_SMALL_NUMBERS)
    page = (out / "index.html").read_text()
    assert "Headline figures" in page and "plotly" in page.lower()
    concepts = summary["concepts"]
    assert concepts["n_items"] == 60 and "Concepts" in page
    assert [r["layer"] for r in concepts["cosine_vs_base"]["rl"]] == concepts["layers"]
    assert set(concepts["steering"]) == set(NAMES)
    assert (out / "concepts" / "figures" / "pca.png").stat().st_size > 1000
    traj = summary["trajectories"]
    assert traj["n_prompts"] == 6 and "Trajectories" in page
    assert traj["jumps"]["top_tokens"]
    assert (out / "trajectories" / "figures" / "sphere_0.png").stat().st_size > 1000
    col = summary["collapse"]
    assert "Collapse" in page
    assert set(col["probes"]) == {"d6", "number10", "coin", "qa", "rank_correlation"}
    ctl = summary["control"]
    assert "Control" in page
    for model in NAMES:
        assert set(ctl[model]["controllers"]) == {"none", "open_loop", "rollback"}
        assert (out / "control" / model / "probe.safetensors").is_file()
    th = summary["themes"]
    assert "Themes" in page and th["n_prompts"] == 24 and th["k_samples"] == 4
    assert th["n_themes"] >= 3
    assert (out / "themes" / "figures" / "theme_map.png").stat().st_size > 1000
    for name in ("figures/headline", "figures/chance_d6", "figures/stages_organism",
                 "figures/stages_collapse", "figures/rl_curves",
                 "capture/figures/capture_kl_by_position",
                 "control/figures/control_uncontrolled"):
        assert (out / f"{name}.html").is_file()
        assert (out / f"{name}.png").stat().st_size > 1000
    for table in ("attribution",):
        assert (out / "data" / f"{table}.parquet").is_file()
        assert (out / "data" / f"{table}.csv").is_file()
