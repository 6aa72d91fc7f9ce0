"""Trajectories of a model set: paths of every model on one sphere, the distance per token
index of every pair, the per-prompt distance to the base, and the figures."""

import copy
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.analysis.trajectory_table import lineage_pairs
from difflens.models.loading import LoadedModel, wrap_model
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair
from difflens.models.tiny import tiny_model
from difflens.pipelines.trajectories import TrajectoriesConfig, TrajectoriesRun, run_trajectories
from difflens.report.figures import COLORS

PROMPTS = ["the fox went to the forest to find a friend",
           "the rabbit was afraid of the dark forest",
           "once upon a time there was a little fox"]


def _changed(base: LoadedModel, name: str, scale: float) -> LoadedModel:
    """A copy of ``base`` whose block-0 MLP output is scaled: its states differ from the
    first block on."""
    m = copy.deepcopy(base.model)
    with torch.no_grad():
        m.model.layers[0].mlp.down_proj.weight.mul_(scale)
    return wrap_model(m, base.tokenizer, name=name)


def _set_with_a_copy() -> ModelSet:
    """base, a (base changed), b (an exact copy of a's weights)."""
    base = tiny_model(0, n_layers=2)
    a = _changed(base, "a", 3.0)
    b = wrap_model(copy.deepcopy(a.model), base.tokenizer, name="b")
    return ModelSet({"base": base, "a": a, "b": b})


def _run(target: object, out: Path, index: bool = True) -> TrajectoriesRun:
    config = TrajectoriesConfig(continuations=1, max_new_tokens=3, method="pca", min_count=1)
    return run_trajectories(target, PROMPTS, out, config, index=index)  # type: ignore[arg-type]


def _rows(summary: dict, pair: str, kind: str) -> dict[int, dict]:
    return {r["index"]: r for r in summary["distance_pairs"][pair][kind]["distance_by_index"]}


def test_a_copy_is_at_distance_zero_and_as_far_from_the_base(tmp_path: Path):
    run = _run(_set_with_a_copy(), tmp_path / "run", index=False)
    s = run.summary()
    assert s["models"] == ["base", "a", "b"]
    assert [m["name"] for m in s["model_set"]] == ["base", "a", "b"]
    assert leftover_ci_keys(s) == []
    for block in (s, s["full"]):
        assert list(block["distance_pairs"]) == ["base-vs-a", "base-vs-b", "a-vs-b"]
        assert block["distance_pairs"]["a-vs-b"]["models"] == ["a", "b"]
        copy_rows = _rows(block, "a-vs-b", "prompt")
        ba, bb = _rows(block, "base-vs-a", "prompt"), _rows(block, "base-vs-b", "prompt")
        assert copy_rows and set(copy_rows) == set(ba) == set(bb)
        for i, r in copy_rows.items():
            assert abs(r["value"]) <= 1e-6 and abs(r["ci_high"]) <= 1e-6, (i, r)
            assert r["n"] == ba[i]["n"] == len([p for p in PROMPTS if len(p.split()) >= i])
            for f in ("value", "ci_low", "ci_high", "n"):
                assert ba[i][f] == pytest.approx(bb[i][f], abs=1e-9)
        # a differs from the base (the test can tell the copy from the base)
        assert max(r["value"] for r in ba.values()) > 1e-3
        # same weights, same seeds: the copies also sample the same continuations
        assert all(abs(r["value"]) <= 1e-6 for r in _rows(block, "a-vs-b", "continuation")
                   .values())
    # independent: per prompt, the mean angle between the base's and a model's states at
    # each prompt token, from the stored table and states
    t = run.table[run.table.segment == "prompt"]
    states = pd.read_parquet(tmp_path / "run" / "data" / "states.parquet")
    vec = np.stack(states.state.to_numpy()).astype(np.float64)
    want = {}
    for m in ("a", "b"):
        j = t[t.model == "base"].merge(t[t.model == m], on=["prompt_id", "step"])
        u, v = vec[j.state_ref_x.to_numpy()], vec[j.state_ref_y.to_numpy()]
        cos = (u * v).sum(1) / np.linalg.norm(u, axis=1) / np.linalg.norm(v, axis=1)
        want[m] = pd.Series(np.arccos(np.clip(cos, -1, 1))).groupby(j.prompt_id.to_numpy()).mean()
    d = run.distance_to_base_by_prompt
    assert d is not None and list(d.columns) == ["prompt_id", "model", "distance"]
    assert list(dict.fromkeys(d.model)) == ["base", "a", "b"]
    by = d.pivot(index="prompt_id", columns="model", values="distance")
    assert by.index.tolist() == [0, 1, 2]
    assert (by["base"] == 0.0).all()
    assert by["a"].to_numpy() == pytest.approx(want["a"].to_numpy(), abs=1e-5)
    assert by["b"].to_numpy() == pytest.approx(by["a"].to_numpy(), abs=1e-9)
    assert (by["a"] > 1e-3).all()
    stored = pd.read_parquet(tmp_path / "run" / "data" / "distance_to_base_by_prompt.parquet")
    pd.testing.assert_frame_equal(stored, d)


def test_a_pair_and_its_two_model_set_give_the_same_distances(tmp_path: Path):
    base = tiny_model(0, n_layers=2)
    pair = ModelPair(base, _changed(base, "tuned", 3.0))
    p = _run(pair, tmp_path / "pair", index=False)
    s = _run(ModelSet.from_pair(pair), tmp_path / "set", index=False)
    assert "distance_pairs" not in p.summary() and "model_set" not in p.summary()
    assert p.distance_to_base_by_prompt is None
    for ps, ss in ((p.summary(), s.summary()), (p.summary()["full"], s.summary()["full"])):
        for kind in ("prompt", "continuation"):
            got = ss["distance_pairs"]["base-vs-tuned"][kind]["distance_by_index"]
            assert got and got == ps[kind]["distance_by_index"]
    # every key of the pair's summary has the same value in the set's (NaN as NaN)
    def dump(v: object) -> str:
        return json.dumps(v, sort_keys=True)

    pair_keys = {k for k in p.summary() if k != "full"}
    assert {k: dump(s.summary()[k]) for k in pair_keys} == {k: dump(p.summary()[k])
                                                         for k in pair_keys}
    full = {k: v for k, v in s.summary()["full"].items() if k != "distance_pairs"}
    assert dump(full) == dump(p.summary()["full"])
    assert s.distance_to_base_by_prompt is not None
    assert s.distance_to_base_by_prompt.model.unique().tolist() == ["base", "tuned"]


def test_set_figures_draw_every_pair_and_every_model(tmp_path: Path):
    base = tiny_model(0, n_layers=2)
    ms = ModelSet({"base": base, "sft": _changed(base, "sft", 2.0),
                   "rl": _changed(base, "rl", 4.0)})
    run = _run(ms, tmp_path / "run")
    out = tmp_path / "run"
    for kind in ("prompt", "continuation"):
        for ext in ("html", "png"):
            assert (out / "figures" / f"distance_pairs_{kind}.{ext}").stat().st_size > 1000
        assert not (out / "figures" / f"distance_{kind}.png").exists()
    assert (out / "figures" / "spheres.html").is_file()
    assert (out / "index.html").is_file()
    table = pd.read_parquet(out / "data" / "distance_pairs.parquet")
    assert set(table.pair) == {"base-vs-sft", "base-vs-rl", "sft-vs-rl"}
    assert set(table.space) == {"sphere", "full"}
    fig = next(f for f in run.figures if f.name == "distance_pairs_prompt").plotly()
    lines = {tr.name: tr.line for tr in fig.data if tr.name}
    assert list(lines) == ["base-vs-sft", "base-vs-rl", "sft-vs-rl"]
    assert lines["base-vs-sft"].color == COLORS["sft"] != lines["base-vs-rl"].color
    assert lines["base-vs-rl"].color == COLORS["rl"] == lines["sft-vs-rl"].color
    assert lines["base-vs-sft"].dash == lines["base-vs-rl"].dash == "solid"
    assert lines["sft-vs-rl"].dash == "dash"
    assert len(fig.data) == 6  # each line with its CI band
    spheres = next(f for f in run.figures if f.name == "spheres").plotly()
    shown = [tr for tr in spheres.data if tr.type == "scatter3d" and tr.visible]
    models = list(dict.fromkeys(tr.name.split()[0] for tr in shown))
    assert models == ["base", "sft", "rl"]
    assert [tr.line.color for tr in shown if tr.name.endswith("prompt")] == [
        COLORS[m] for m in models]


def test_lineage_pairs_are_every_unordered_pair_in_lineage_order():
    assert lineage_pairs(["b", "s", "d", "r"]) == [
        ("b", "s"), ("b", "d"), ("b", "r"), ("s", "d"), ("s", "r"), ("d", "r")]
    assert lineage_pairs(["x"]) == []


def test_a_deeper_model_of_a_set_reads_the_layer_its_map_matches():
    from difflens.capture.cumulative_paths import build_paths
    from difflens.errors import InputError

    base = tiny_model(0, n_layers=2)
    deep = tiny_model(1, n_layers=4, name="deep")
    ms = ModelSet({"base": base, "deep": deep}, layer_maps={"deep": {1: 3}})
    paths = build_paths(ms, PROMPTS[:2], layer=1, continuations=0)
    assert paths.layer == 1 and list(dict.fromkeys(paths.table.model)) == ["base", "deep"]
    # independent: the deep model alone at layer 3, and not at layer 1
    for layer, same in ((3, True), (1, False)):
        alone = build_paths(deep, PROMPTS[:2], layer=layer, continuations=0)
        got = paths.points[(paths.table.model == "deep").to_numpy()]
        assert np.allclose(got, alone.points, atol=1e-6) == same
    with pytest.raises(InputError, match="no layer matching layer 2"):
        build_paths(ms, PROMPTS[:1], layer=2, continuations=0)
