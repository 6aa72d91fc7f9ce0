"""Trajectories: paths, projection, vectorised statistics, the importer and the CLI."""

import copy
import gzip
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis.sphere import (
    SphereProjection,
    cumulative_mean_path,
    faithfulness,
    geodesic,
)
from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.analysis.trajectories import trajectory_stats
from difflens.analysis.trajectory_table import readable_token
from difflens.capture.cumulative_paths import build_paths
from difflens.cli.main import app
from difflens.errors import InputError
from difflens.inputs.trajectory_files import check_table, read_trajectories
from difflens.models.labellers import sentiment
from difflens.models.loading import wrap_model
from difflens.models.pair import ModelPair
from difflens.models.tiny import tiny_model

GPTJ = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "trajectories"
        / "gptj-vs-ppo-gptj" / "trajectories_from_figs.jsonl.gz")


def test_cumulative_mean_path_is_the_mean_of_unit_vectors():
    v = torch.tensor([[3.0, 0.0], [0.0, 2.0], [-5.0, 0.0]])
    y = cumulative_mean_path(v)
    assert torch.allclose(y, torch.tensor([[1.0, 0.0], [0.5, 0.5], [0.0, 1 / 3]]))


def _planted_pair(token: str = "forest"):
    """tuned = base with the embedding of one word changed: before that word appears, both
    models compute exactly the same states."""
    base = tiny_model(0, n_layers=3)
    m = copy.deepcopy(base.model)
    tid = base.tokenizer.convert_tokens_to_ids(token)
    with torch.no_grad():
        m.get_input_embeddings().weight[tid] += 0.5
    return ModelPair(base, wrap_model(m, base.tokenizer, name="tuned"))


def test_planted_pair_paths_agree_until_the_planted_token_and_differ_after():
    pair = _planted_pair()
    prompts = ["the fox went to the forest to find a friend",
               "the rabbit was afraid of the dark forest", "once upon a time there was a fox"]
    paths = build_paths(pair, prompts, continuations=0)
    t = paths.table.assign(row=np.arange(len(paths.table)), x=0.0, y=0.0, z=0.0)
    t = check_table(t)
    st = trajectory_stats(t, paths.points[t.row.to_numpy()], min_count=1, n_boot=50,
                          score_words=sentiment)
    by_prompt = t[t.model == "base"].merge(t[t.model == "tuned"], on=["prompt_id", "step"])
    d = geodesic(paths.points[by_prompt.row_x], paths.points[by_prompt.row_y])
    for p, text in enumerate(prompts):
        words = ["<bos>"] + text.split()
        k = words.index("forest") if "forest" in words else len(words)
        dp = d[by_prompt.prompt_id.to_numpy() == p]
        assert np.all(dp[:k] == 0.0), (p, dp)
        assert np.all(dp[k:] > 1e-4), (p, dp)
    rows = st.distance_by_index["prompt"]
    assert rows[0]["value"] == 0.0 and rows[0]["n"] == 3
    assert rows[4]["value"] == 0.0 and rows[-1]["value"] > 0


def _synthetic_table(n_prompts: int = 30, steps: int = 12, seed: int = 0):
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(n_prompts):
        for model in ("base", "tuned"):
            for seg in ("prompt", "continuation:0", "continuation:1"):
                pts = rng.normal(size=(steps, 3))
                pts /= np.linalg.norm(pts, axis=1, keepdims=True)
                for s in range(steps):
                    rows.append({"prompt_id": p, "model": model, "segment": seg, "step": s,
                                 "token": f"t{rng.integers(0, 6)}", "x": pts[s, 0],
                                 "y": pts[s, 1], "z": pts[s, 2]})
    return check_table(pd.DataFrame(rows))


def test_vectorised_statistics_equal_a_per_path_loop():
    t = _synthetic_table()
    st = trajectory_stats(t, min_count=1, n_boot=50, score_words=sentiment)
    # per-path loop: distance by index and jumps
    for kind in ("prompt", "continuation"):
        sums: dict[int, list[float]] = {}
        for (_p, seg), g in t.groupby(["prompt_id", "segment"]):
            if (seg == "prompt") != (kind == "prompt"):
                continue
            a = g[g.model == "base"].sort_values("step")
            b = g[g.model == "tuned"].sort_values("step")
            for (_, ra), (_, rb) in zip(a.iterrows(), b.iterrows(), strict=True):
                pa, pb = ra[["x", "y", "z"]].to_numpy(float), rb[["x", "y", "z"]].to_numpy(float)
                sums.setdefault(int(ra.step), []).append(
                    float(np.arccos(np.clip(pa @ pb, -1, 1))))
        got = {r["index"]: r for r in st.distance_by_index[kind]}
        for s, vals in sums.items():
            assert got[s]["value"] == pytest.approx(np.mean(vals), abs=1e-9)
            assert got[s]["n"] == len(vals) and got[s]["resampled"] == "prompts"
            assert got[s]["ci_low"] <= got[s]["value"] <= got[s]["ci_high"]
    jumps = []
    for _, g in t.groupby(["prompt_id", "model", "segment"]):
        pts = g.sort_values("step")[["x", "y", "z"]].to_numpy(float)
        jumps += list(np.arccos(np.clip((pts[1:] * pts[:-1]).sum(1), -1, 1)))
    assert st.jumps.jump.sum() == pytest.approx(sum(jumps))
    tok = st.top_tokens[0]
    manual = st.jumps[st.jumps.token == tok["token"]].jump.mean()
    assert tok["value"] == pytest.approx(manual) and tok["resampled"] == "occurrences"


def test_sentiment_weights_jumps():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    t = _synthetic_table(10)
    t["token"] = np.where(t.step % 2 == 0, "Ġhappy", "Ġthe")
    st = trajectory_stats(t, min_count=1, n_boot=50, score_words=sentiment)
    # independent: VADER on the words themselves, and each path's jumps by a loop; the jump
    # into step s (from step s - 1) belongs to the token at step s
    vader = SentimentIntensityAnalyzer()
    happy, the = (vader.polarity_scores(w)["compound"] for w in ("happy", "the"))
    assert happy > 0.5 and the == 0.0
    for model in ("base", "tuned"):
        num = den = 0.0
        for _, g in t[t.model == model].groupby(["prompt_id", "segment"]):
            g = g.sort_values("step")
            pts = g[["x", "y", "z"]].to_numpy(float)
            for s in range(1, len(g)):
                jump = float(np.arccos(np.clip(pts[s] @ pts[s - 1], -1, 1)))
                num += jump * (happy if g.step.iloc[s] % 2 == 0 else the)
                den += jump
        got = st.sentiment["jump_weighted"][model]
        assert got["value"] == pytest.approx(num / den, abs=1e-9)
        assert got["n"] == 10 * 3 * 11  # prompts x segments x jumps (steps 1..11)
        # steps 2, 4, ..., 10 of 1..11 are "happy"
        assert st.sentiment["mean_unweighted"][model]["mean"] == pytest.approx(5 / 11 * happy)


def test_pca_projection_is_faithful_on_known_structure():
    rng = np.random.default_rng(0)
    # points on a great circle of a 3-D subspace of 40-D, plus a little noise
    ang = rng.uniform(0, 2 * np.pi, 600)
    basis = np.linalg.qr(rng.normal(size=(40, 3)))[0]
    x = np.stack([np.cos(ang), np.sin(ang), 0.3 * rng.normal(size=600)], 1) @ basis.T
    x += 0.01 * rng.normal(size=x.shape)
    proj = SphereProjection(method="pca", dim=2)
    xyz = proj.fit_transform(x)
    assert np.allclose(np.linalg.norm(xyz, axis=1), 1.0)
    good = faithfulness(x, xyz, n_pairs=3000)
    assert good["value"] > 0.9 and good["ci_low"] <= good["value"] <= good["ci_high"]
    assert good["resampled"] == "point pairs" and 2900 < good["n"] <= 3000
    shuffled = faithfulness(x, xyz[rng.permutation(600)], n_pairs=3000)
    assert abs(shuffled["value"]) < 0.1
    four = SphereProjection(method="pca", dim=3).fit_transform(x)
    assert four.shape == (600, 4) and np.allclose(np.linalg.norm(four, axis=1), 1.0)
    assert np.allclose(proj.transform(x[:5]), xyz[:5])
    with pytest.raises(InputError, match="haversine output is the 2-sphere only"):
        SphereProjection(method="umap", dim=3).fit(x)
    with pytest.raises(InputError, match="not fitted"):
        SphereProjection().transform(x)


@pytest.mark.slow
def test_umap_projection_is_faithful_on_known_structure():
    rng = np.random.default_rng(0)
    centers = rng.normal(size=(5, 30)) * 4
    x = np.concatenate([c + rng.normal(size=(80, 30)) for c in centers])
    label = np.repeat(np.arange(5), 80)
    xyz = SphereProjection(method="umap", random_state=0).fit_transform(x)
    assert np.allclose(np.linalg.norm(xyz, axis=1), 1.0, atol=1e-6)
    # UMAP keeps clusters, not global distances: clusters stay apart on the sphere ...
    i, k = rng.integers(0, 400, 3000), rng.integers(0, 400, 3000)
    d = geodesic(xyz[i], xyz[k])
    same = label[i] == label[k]
    assert d[~same].mean() > 2 * d[same].mean()
    # ... and the rank correlation with full-dimension angles is clearly positive
    assert faithfulness(x, xyz, n_pairs=3000)["value"] > 0.3
    # reproducible from the seed (exact neighbours), also above UMAP's 4,096-point switch
    big = np.concatenate([x] * 11)[:4200] + 1e-3 * rng.normal(size=(4200, 30))
    a = SphereProjection(method="umap", random_state=1, n_epochs=20).fit_transform(big)
    b = SphereProjection(method="umap", random_state=1, n_epochs=20).fit_transform(big)
    assert np.array_equal(a, b)


def test_readable_gpt2_tokens():
    assert readable_token("Ġgoing") == " going"
    assert readable_token("ĊĊ") == "\n\n"
    assert readable_token("'m") == "'m"
    assert readable_token("\u2581Once") == " Once"


def test_bad_tables_give_one_line(tmp_path: Path):
    df = _synthetic_table(2).drop(columns=["z"])
    csv = tmp_path / "t.csv"
    df.to_csv(csv, index=False)
    with pytest.raises(InputError, match=r"t\.csv: missing column 'z'"):
        read_trajectories(csv)
    ragged = tmp_path / "r.jsonl"
    ragged.write_text(json.dumps({"sample_idx": 0, "title": "x", "traces": [
        {"name": "GPTJ Prompt", "tokens": ["a", "b"], "xyz": [[1, 0, 0], [0, 1]]}]}) + "\n")
    with pytest.raises(InputError, match=r"r\.jsonl:1: trace 'GPTJ Prompt' point 1 has 2 "
                                         r"coordinates, expected 3"):
        read_trajectories(ragged)
    odd = tmp_path / "o.jsonl"
    odd.write_text(json.dumps({"traces": [{"name": "weird", "xyz": [[1, 0, 0]]}]}) + "\n")
    with pytest.raises(InputError, match="does not match the name pattern"):
        read_trajectories(odd)
    res = CliRunner().invoke(app, ["trajectories", "import", str(ragged), "--out",
                                   str(tmp_path / "out")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert res.output.startswith("error: ") and "expected 3" in res.output


def test_importer_reads_the_shared_gptj_file(require):
    require(GPTJ.is_file(), f"shared trajectories not found at {GPTJ}: put the project's "
                            f"shared/ folder beside the repo (../shared/data)")
    imp = read_trajectories(GPTJ, max_prompts=50)
    t = imp.table
    assert t.prompt_id.nunique() == 50 and set(t.model) == {"base", "tuned"}
    assert set(t.segment) == {"prompt"} | {f"continuation:{i}" for i in range(5)}
    first = t[(t.prompt_id == "0") & (t.model == "base") & (t.segment == "prompt")]
    assert first.token.tolist()[:4] == ["I", "'m", "Ġgoing", "Ġto"]
    assert len(first) == 22 and np.allclose(first[["x", "y", "z"]].pow(2).sum(axis=1), 1, atol=1e-5)
    # continuation 1..4 tokens are copies of continuation 0's in that file: not trusted
    assert t[t.segment == "continuation:1"].token.isna().all()
    full = read_trajectories(GPTJ)
    assert (full.n_traces, full.n_empty, full.n_token_mismatch) == (12000, 24, 1171)
    assert full.table.prompt_id.nunique() == 1000
    with gzip.open(GPTJ, "rt") as f:
        line = json.loads(f.readline())
    assert full.titles["0"] == line["title"]
    # the analysis on the whole file (the figures of docs/examples/gptj-vs-ppo-gptj.md)
    st = trajectory_stats(full.table, rank_segments="continuation", n_boot=200,
                          score_words=sentiment)
    prompt = st.distance_by_index["prompt"]
    cont = st.distance_by_index["continuation"]
    assert prompt[0]["n"] == 1000 and prompt[0]["value"] == pytest.approx(1.422, abs=2e-3)
    assert cont[0]["n"] == 4988 and cont[0]["value"] < cont[10]["value"] < cont[19]["value"]
    jw = st.sentiment["jump_weighted"]
    assert jw["tuned"]["ci_low"] > jw["base"]["value"]
    assert len(st.top_tokens) == 15 and all(r["n"] >= 20 for r in st.top_tokens)


def test_cli_import_and_run(tmp_path: Path, pair_folders):
    runner = CliRunner()
    table = _synthetic_table(6)
    table.to_parquet(tmp_path / "t.parquet")
    res = runner.invoke(app, ["trajectories", "import", str(tmp_path / "t.parquet"), "--out",
                              str(tmp_path / "imp"), "--min-count", "2"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "imp" / "summary.json").read_text())
    assert s["n_prompts"] == 6 and s["projection"]["faithfulness_spearman"] is None
    assert leftover_ci_keys(s) == []
    # independent: base-tuned angle per prompt step, from the input table by a loop
    for kind, segs in (("prompt", ["prompt"]), ("continuation", ["continuation:0",
                                                                  "continuation:1"])):
        for step in (0, 5):
            d = []
            for p in range(6):
                for seg in segs:
                    at = table[(table.prompt_id == p) & (table.segment == seg)
                               & (table.step == step)].set_index("model")[["x", "y", "z"]]
                    d.append(np.arccos(np.clip(at.loc["base"] @ at.loc["tuned"], -1, 1)))
            row = s[kind]["distance_by_index"][step]
            assert row["index"] == step and row["n"] == len(d)
            assert row["value"] == pytest.approx(np.mean(d), abs=1e-9)
    assert set(s["sentiment"]["jump_weighted"]) == {"base", "tuned"}

    folders = pair_folders
    prompts = tmp_path / "p.txt"
    prompts.write_text("the fox went to the forest\nonce upon a time there was a fox\n")
    res = runner.invoke(app, ["trajectories", "run", "--base", str(folders["base"]),
                              "--tuned", str(folders["tuned"]), "--prompts", str(prompts),
                              "--samples", "2", "--max-new-tokens", "6", "--method",
                              "pca", "--out", str(tmp_path / "run"), "--min-count", "1"])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert s["layer"] == 2 and s["n_prompts"] == 2
    assert leftover_ci_keys(s) == []
    # independent: Spearman (scipy) of sphere vs full-dimension angles over all point pairs,
    # from the written data (the pipeline samples 20,000 pairs: close, not equal)
    from scipy.stats import spearmanr

    traj = pd.read_csv(tmp_path / "run" / "data" / "trajectories.csv")
    states = pd.read_parquet(tmp_path / "run" / "data" / "states.parquet").sort_values("row")
    # states.parquet rows are in the table's order (test_run_state_ref_points_at_each_rows_state)
    full = np.stack(states["state"].to_list()).astype(np.float64)
    sphere = traj[["x", "y", "z"]].to_numpy(np.float64)

    def angles(x: np.ndarray) -> np.ndarray:
        u = x / np.linalg.norm(x, axis=1, keepdims=True)
        i, k = np.triu_indices(len(u), 1)
        return np.arccos(np.clip((u[i] * u[k]).sum(1), -1, 1))

    rho = spearmanr(angles(full), angles(sphere)).statistic
    assert rho > 0.4  # PCA keeps much of the geometry (0.64 here)
    assert s["projection"]["faithfulness_spearman"]["value"] == pytest.approx(rho, abs=0.03)
    assert s["full"]["prompt"]["distance_by_index"][0]["value"] == pytest.approx(0, abs=1e-6)
    cont = pd.read_parquet(tmp_path / "run" / "data" / "continuations.parquet")
    assert set(cont.model) == {"base", "tuned"} and len(cont) <= 8
    for name in ("sphere_0", "distance_prompt", "sentiment"):
        assert (tmp_path / "run" / "figures" / f"{name}.png").stat().st_size > 1000
        assert (tmp_path / "run" / "figures" / f"{name}.html").is_file()
    assert (tmp_path / "run" / "data" / "trajectories.csv").is_file()


def test_run_state_ref_points_at_each_rows_state(tmp_path: Path, pair):
    from difflens.capture.cumulative_paths import build_paths as paths_of
    from difflens.pipelines.trajectories import TrajectoriesConfig, run_trajectories

    prompts = ["the fox went to the forest", "once upon a time there was a fox"]
    run = run_trajectories(pair, prompts, tmp_path / "run", TrajectoriesConfig(
        continuations=1, max_new_tokens=4, method="pca", min_count=1), index=False)
    # independent: the same paths again, looked up by (prompt, model, segment, step)
    paths = paths_of(pair, prompts, continuations=1, max_new_tokens=4, seed=0)
    want = {tuple(r): paths.points[i] for i, r in enumerate(
        paths.table[["prompt_id", "model", "segment", "step"]].itertuples(index=False))}
    states = pd.read_parquet(tmp_path / "run" / "data" / "states.parquet").set_index("row")
    for r in run.table.itertuples(index=False):
        got = states.loc[r.state_ref, "state"]
        key = (r.prompt_id, r.model, r.segment, r.step)
        assert np.allclose(got, want[key], atol=1e-6), key


def test_paths_resume_after_an_interruption_with_the_same_result(tmp_path: Path, pair):
    prompts = ["the fox went to", "once upon a time", "the rabbit was", "she rolled a die",
               "the coin came up"]
    clean = build_paths(pair, prompts, continuations=2, max_new_tokens=5, seed=3, chunk=2)
    calls = []

    def stop_after_three(n: int) -> None:
        calls.append(n)
        if len(calls) == 3:
            raise KeyboardInterrupt  # a kill in the middle of the second chunk of "base"

    with pytest.raises(KeyboardInterrupt):
        build_paths(pair, prompts, continuations=2, max_new_tokens=5, seed=3, chunk=2,
                    cache_dir=tmp_path, progress=stop_after_three)
    assert len(list(tmp_path.glob("base-*.continuations.parquet"))) == 1
    resumed = build_paths(pair, prompts, continuations=2, max_new_tokens=5, seed=3, chunk=2,
                          cache_dir=tmp_path)
    assert np.array_equal(resumed.points, clean.points)
    pd.testing.assert_frame_equal(resumed.table, clean.table)
    assert resumed.continuations.token_ids.map(list).tolist() == \
        clean.continuations.token_ids.map(list).tolist()
    # the same model, the same prompts and settings: continuations are the same for any chunk
    other = build_paths(pair, prompts, continuations=2, max_new_tokens=5, seed=3, chunk=5)
    assert np.array_equal(other.points, clean.points)


# -- issue 19: jump difference, direction, every sphere, --rank-segments, readable tokens ----


def _circle_table(steps_by_path: dict[tuple, np.ndarray]) -> tuple[pd.DataFrame, np.ndarray]:
    """Paths on a great circle whose consecutive points are the given angles apart."""
    rows = []
    for (p, model, seg), steps in steps_by_path.items():
        ang = np.r_[0.0, np.cumsum(steps)]
        for s, a in enumerate(ang):
            rows.append({"prompt_id": p, "model": model, "segment": seg, "step": s,
                         "token": f"t{s % 3}", "x": np.cos(a), "y": np.sin(a), "z": 0.0})
    df = pd.DataFrame(rows)
    df["row"] = np.arange(len(df))
    df = check_table(df)
    return df, df[["x", "y", "z"]].to_numpy(np.float64)


def test_jump_difference_recovers_planted_extra_jumps():
    from difflens.analysis.trajectory_jumps import jump_difference
    from difflens.analysis.trajectory_table import path_jumps

    rng = np.random.default_rng(0)
    delta, planted, n_steps = 0.2, {3, 6}, 9
    steps = {}
    for p in range(60):
        for seg in ("prompt", "continuation:0"):
            steps[(p, "base", seg)] = 0.1 + rng.uniform(0, 0.05, n_steps)
            steps[(p, "tuned", seg)] = (0.1 + rng.uniform(0, 0.05, n_steps)
                                        + delta * np.isin(np.arange(1, n_steps + 1), list(planted)))
    t, pts = _circle_table(steps)
    st = trajectory_stats(t, min_count=1, n_boot=300, score_words=sentiment)
    d = st.jump_difference
    assert d["paired"] and d["models"] == ["base", "tuned"] and d["n_prompts"] == 60
    # independent: the planted step sizes themselves (the jump into step i is steps[i - 1])
    want = {i: np.mean([v[i - 1] for k, v in steps.items() if k[1] == "tuned"])
            - np.mean([v[i - 1] for k, v in steps.items() if k[1] == "base"])
            for i in range(1, n_steps + 1)}
    rows = {r["index"]: r for r in d["by_index"]}
    assert set(rows) == set(want)
    for i, r in rows.items():
        assert r["value"] == pytest.approx(want[i], abs=1e-9) and r["n"] == 60
        assert r["n_jumps_base"] == r["n_jumps_tuned"] == 120
        if i in planted:
            assert abs(r["value"] - delta) < 0.01 and r["ci_low"] > 0.15
            assert r["ci_low"] <= delta <= r["ci_high"]
        else:
            assert abs(r["value"]) < 0.01 and r["ci_low"] < 0.01
    o = d["overall"]
    assert o["value"] == pytest.approx(np.mean(list(want.values())), abs=1e-12)
    assert abs(o["value"] - delta * 2 / 9) < 0.005 and o["ci_low"] < o["value"] < o["ci_high"]
    assert o["n"] == 60 * 9
    # no shared prompts: the same point estimates, each model's prompts resampled alone
    t2 = t.assign(prompt_id=np.where(t.model == "tuned", t.prompt_id + 1000, t.prompt_id))
    t2 = check_table(t2)
    u = jump_difference(t2, path_jumps(t2, t2[["x", "y", "z"]].to_numpy()), ("base", "tuned"),
                        n_boot=300)
    assert not u["paired"] and u["n_prompts"] == 120
    assert [r["value"] for r in u["by_index"]] == pytest.approx([rows[i]["value"]
                                                                 for i in sorted(rows)])
    # a prompt where only one model jumps at an index does not count there (paired): the
    # tuned paths of prompt 0 stop after 4 jumps, so prompt 0's base jumps leave index 5+
    short = {k: (v[:4] if k[:2] == (0, "tuned") else v) for k, v in steps.items()}
    t3, _ = _circle_table(short)
    r3 = {r["index"]: r for r in trajectory_stats(t3, min_count=1, n_boot=50, score_words=sentiment)
          .jump_difference["by_index"]}
    assert r3[4]["n"] == 60 and r3[5]["n"] == 59
    assert r3[5]["n_jumps_tuned"] == r3[5]["n_jumps_base"] == 118
    assert r3[5]["value"] == pytest.approx(
        np.mean([v[4] for k, v in steps.items() if k[1] == "tuned" and k[0]])
        - np.mean([v[4] for k, v in steps.items() if k[1] == "base" and k[0]]), abs=1e-12)
    one = trajectory_stats(t[t.model == "base"], models=("base", "base"), min_count=1,
                           n_boot=20, score_words=sentiment)
    assert one.jump_difference == {}


def test_direction_recovers_planted_turns_and_move_cosines():
    from difflens.analysis.trajectory_direction import direction_stats

    rng = np.random.default_rng(1)
    n_steps, dim = 8, 5
    beta = 0.1 + 0.15 * np.arange(n_steps + 1)  # tuned moves leave the base plane by beta_t
    rows, pts, alphas = [], [], {}
    for p in range(12):
        alpha = rng.uniform(0.2, 1.0)  # base turns by alpha at every step
        alphas[p] = alpha
        for seg in ("prompt", "continuation:0"):
            start = rng.normal(size=dim)
            for model in ("base", "tuned"):
                y = start.copy()
                for s in range(n_steps + 1):
                    if s:
                        u = np.zeros(dim)
                        u[0], u[1] = np.cos(s * alpha), np.sin(s * alpha)
                        if model == "tuned":
                            u = np.cos(beta[s]) * u
                            u[2] = np.sin(beta[s])
                        y = y + rng.uniform(0.5, 2.0) * u
                    if (p, model, seg, s) == (0, "base", "prompt", 5):
                        y = pts[-1].copy()  # the path stands still: a zero move
                    rows.append({"prompt_id": p, "model": model, "segment": seg, "step": s,
                                 "token": "x", "x": 0.0, "y": 0.0, "z": 1.0})
                    pts.append(y)
    t = pd.DataFrame(rows).assign(row=np.arange(len(rows)))
    t = check_table(t)
    points = np.asarray(pts)[t.row.to_numpy()]
    d = direction_stats(t, points, ("base", "tuned"), n_boot=100)
    base = {r["index"]: r for r in d["turn_angle"]["base"]["by_index"]}
    tuned = {r["index"]: r for r in d["turn_angle"]["tuned"]["by_index"]}
    assert set(base) == set(tuned) == set(range(2, n_steps + 1))
    a = np.array([alphas[p] for p in range(12)])
    for s in range(2, n_steps + 1):
        # base: the angle between consecutive moves is alpha; the zero move at step 5 of one
        # path takes out the turns at steps 5 and 6 there
        keep = np.ones(24, bool)
        if s in (5, 6):
            keep[0] = False  # (prompt 0, prompt segment) comes first
        want = np.repeat(a, 2)[keep].mean()
        assert base[s]["value"] == pytest.approx(want, abs=1e-9)
        assert base[s]["n"] == keep.sum()
        cos = (np.cos(beta[s - 1]) * np.cos(beta[s]) * np.cos(np.repeat(a, 2))
               + np.sin(beta[s - 1]) * np.sin(beta[s]))
        assert tuned[s]["value"] == pytest.approx(np.arccos(cos).mean(), abs=1e-9)
        assert tuned[s]["ci_low"] <= tuned[s]["value"] <= tuned[s]["ci_high"]
    for kind in ("prompt", "continuation"):
        mc = {r["index"]: r for r in d["move_cosine"][kind]["by_index"]}
        assert set(mc) == set(range(1, n_steps + 1))
        for s, r in mc.items():  # cos(base move, tuned move) = cos(beta_t) by construction
            assert r["value"] == pytest.approx(np.cos(beta[s]), abs=1e-9)
            assert r["n"] == (11 if (kind, s) == ("prompt", 5) else 12)
    overall = d["move_cosine"]["continuation"]["overall"]
    assert overall["value"] == pytest.approx(np.cos(beta[1:]).mean(), abs=1e-9)
    assert overall["n"] == 12 * n_steps
    assert leftover_ci_keys(d) == []


def test_spheres_figure_has_a_menu_entry_showing_each_prompts_paths():
    from difflens.report.trajectories import spheres_figure

    t = _synthetic_table(5, steps=6)
    fig = spheres_figure(t, {"2": "a title"}).plotly()
    buttons = fig.layout.updatemenus[0].buttons
    assert len(buttons) == 5
    for pid, b in zip(range(5), buttons, strict=True):
        visible = [tr for tr, v in zip(fig.data, b.args[0]["visible"], strict=True) if v]
        paths = visible[1:]  # the sphere itself is always shown
        assert visible[0].type == "surface"
        want = t[t.prompt_id == pid]
        assert len(paths) == want.groupby(["model", "segment"]).ngroups
        assert np.allclose(np.sort(np.concatenate([tr.x for tr in paths])),
                           np.sort(want.x.to_numpy()))
    assert "a title" in buttons[2].label


def _byte_level_tokenizer():
    """A GPT-2-style byte-level BPE tokenizer trained here (offline) on a few sentences."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    corpus = ["the fox came from the forest", "a letter from the fox to the rabbit",
              "from here to there and back from there", "the rabbit ran from the fox"] * 20
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=300, special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>",
                                   pad_token="<pad>")


def test_stored_tokens_are_readable_with_a_byte_level_tokenizer(tmp_path: Path):
    from difflens.pipelines.trajectories import TrajectoriesConfig, run_trajectories

    tok = _byte_level_tokenizer()
    assert "Ġfrom" in tok.get_vocab()
    base = tiny_model(0, n_layers=2, tokenizer=tok)
    tuned = wrap_model(copy.deepcopy(base.model), tok, name="tuned")
    with torch.no_grad():
        tuned.model.get_input_embeddings().weight.mul_(1.5)
    prompts = ["the fox came from the forest", "a letter from the fox",
               "the rabbit ran from the fox"]
    run = run_trajectories(ModelPair(base, tuned), prompts, tmp_path / "run",
                           TrajectoriesConfig(continuations=1, max_new_tokens=3, method="pca",
                                              min_count=1))
    traj = pd.read_parquet(tmp_path / "run" / "data" / "trajectories.parquet")
    # independent: the tokenizer's own decoding of each single token id, except a byte of a
    # longer character or a control byte (sampled continuations draw some), which keep the
    # tokenizer's string
    raw = tok.convert_ids_to_tokens(traj.token_id.tolist())
    decoded = [tok.decode([int(i)]) for i in traj.token_id]

    def shown(d: str, r: str) -> str:
        control = any(ord(c) < 32 and c not in "\t\n\r" or 127 <= ord(c) < 160 for c in d)
        return r if "\ufffd" in d or control else d

    assert traj.token_raw.tolist() == raw
    assert traj.token.tolist() == [shown(d, r) for d, r in zip(decoded, raw, strict=True)]
    assert sum("\ufffd" not in d for d in decoded) > 0.8 * len(decoded)
    assert (traj.token == " from").any() and not traj.token.str.contains("Ġ").any()
    jumps = pd.read_csv(tmp_path / "run" / "data" / "jumps.csv", keep_default_na=False)
    assert " from" in set(jumps.token) and not jumps.token.str.contains("Ġ").any()
    s = json.loads((tmp_path / "run" / "summary.json").read_text())
    ranked = s["jumps"]["top_tokens"] + s["full"]["jumps"]["bottom_tokens"]
    for r in ranked:
        text = tok.convert_tokens_to_string([r["token_raw"]])
        assert r["token"] == r["text"] == shown(text, r["token_raw"])
    assert not any("Ġ" in r["token"] for r in ranked)
    assert any(r["token_raw"].startswith("Ġ") for r in ranked)
    # the ranking still counts the tokenizer's tokens: n equals a count from the table
    r0 = s["jumps"]["top_tokens"][0]
    assert r0["n"] == int(((traj.token_raw == r0["token_raw"]) & (traj.step > 0)).sum())
    assert run.table.token.str.contains("Ġ").any()  # the library's table keeps the raw form
    # a written table imports again with the same ranking
    again = trajectory_stats(check_table(traj), min_count=1, n_boot=50, score_words=sentiment)
    assert [r["token"] for r in again.top_tokens] == [r["token"] for r in s["jumps"]["top_tokens"]]


def test_cli_run_takes_rank_segments(tmp_path: Path, pair_folders):
    runner = CliRunner()
    prompts = tmp_path / "p.txt"
    prompts.write_text("the fox went to the forest\nonce upon a time there was a fox\n")
    args = ["trajectories", "run", "--base", str(pair_folders["base"]), "--tuned",
            str(pair_folders["tuned"]), "--prompts", str(prompts), "--samples", "2",
            "--max-new-tokens", "5", "--method", "pca", "--min-count", "1"]
    for segments in ("prompt", "continuation"):
        out = tmp_path / segments
        res = runner.invoke(app, [*args, "--rank-segments", segments, "--out", str(out)])
        assert res.exit_code == 0, res.output
        s = json.loads((out / "summary.json").read_text())
        assert s["rank_segments"] == segments
        jumps = pd.read_csv(out / "data" / "jumps.csv", keep_default_na=False)
        assert set(jumps.segment == "prompt") == {segments == "prompt"}
        # independent: the top token's count of jumps in those segments, from the table
        traj = pd.read_csv(out / "data" / "trajectories.csv", keep_default_na=False)
        kept = traj[((traj.segment == "prompt") == (segments == "prompt")) & (traj.step > 0)]
        top = s["jumps"]["top_tokens"][0]
        assert top["n"] == int((kept.token_raw == top["token_raw"]).sum())
        assert (out / "figures" / "spheres.html").is_file()
        for name in ("jump_difference", "turn_angle", "move_cosine"):
            assert (out / "figures" / f"{name}.png").stat().st_size > 1000
    res = runner.invoke(app, [*args, "--rank-segments", "middle", "--out", str(tmp_path / "x")])
    assert res.exit_code == 2 and res.output.count("\n") == 1
    assert "--rank-segments must be all, prompt or continuation" in res.output


def test_spheres_menu_stops_at_its_cap_and_says_so():
    from difflens.report.trajectories import spheres_figure

    t = _synthetic_table(7, steps=3)
    fig = spheres_figure(t, {}, max_prompts=4)
    assert len(fig.plotly().layout.updatemenus[0].buttons) == 4
    assert "first 4 of 7 prompts" in fig.caption


def test_prompt_metadata_is_carried_to_the_run_and_colours_the_atlas(tmp_path: Path,
                                                                      pair_folders):
    from starlette.testclient import TestClient

    from difflens.explore.app import create_app
    from difflens.inputs.prompts import read_prompt_metadata

    prompts = tmp_path / "p.jsonl"
    rows = [{"prompt": "the fox went to the forest", "label": "forest", "rating": 3,
             "tags": ["a", "b"]},
            {"prompt": "once upon a time there was a fox", "label": "fairy", "rating": 5,
             "tags": []}]
    prompts.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert read_prompt_metadata(prompts) == [
        {"label": "forest", "rating": 3, "tags": '["a", "b"]'},
        {"label": "fairy", "rating": 5, "tags": "[]"}]
    out = tmp_path / "run"
    res = CliRunner().invoke(app, [
        "trajectories", "run", "--base", str(pair_folders["base"]), "--tuned",
        str(pair_folders["tuned"]), "--prompts", str(prompts), "--samples", "1",
        "--max-new-tokens", "4", "--method", "pca", "--min-count", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    meta = pd.read_parquet(out / "data" / "prompts.parquet")
    assert meta.prompt_id.tolist() == [0, 1] and meta.label.tolist() == ["forest", "fairy"]
    assert meta.prompt.tolist() == [r["prompt"] for r in rows]
    # the explorer's atlas offers the label as a colour and gives every point its prompt's
    data = TestClient(create_app([out])).get("/api/runs/0/atlas").json()
    traj = pd.read_parquet(out / "data" / "trajectories.parquet")
    assert data["n"] == len(traj) and "label" in data["colour_by"]

    def column(name: str) -> list:
        c = data["columns"][name]
        return ([c["levels"][k] for k in c["codes"]] if c["kind"] == "cat"
                else c["values"])

    want = {0: "forest", 1: "fairy"}
    assert column("label") == [want[int(p)] for p in column("prompt_id")]
