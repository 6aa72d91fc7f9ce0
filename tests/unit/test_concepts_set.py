"""Concept vectors of a model set (a lineage): each later model's vector against the base's
per layer, which stage changed it, and the same outputs as a pair for a two-model set."""

import copy
import json
import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.capture.concepts import cosine_vs_base, extract_concepts
from difflens.inputs.ab_items import ABDataset, ABItem
from difflens.models import ModelPair, ModelSet
from difflens.models.loading import LoadedModel, wrap_model
from difflens.models.tiny import tiny_model, word_tokenizer
from difflens.pipelines.concepts import ConceptsConfig, run_concepts
from difflens.report.figures import COLORS, CustomFigure, Figure

FILLER = [f"w{i}" for i in range(30)]
A_WORDS = [f"a{i}" for i in range(20)]
B_WORDS = [f"b{i}" for i in range(20)]
N_LAYERS = 3


@pytest.fixture(autouse=True)
def _keep_colors() -> Iterator[None]:
    """A set's run colours its models in the shared palette; give it back afterwards."""
    saved = dict(COLORS)
    yield
    COLORS.clear()
    COLORS.update(saved)


@pytest.fixture
def no_figure_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """Draw no figure files (slow; :func:`test_a_set_draws_its_lineage_figures` checks them)."""
    for cls in (Figure, CustomFigure):
        monkeypatch.setattr(cls, "save", lambda self, out: None)


def _base() -> LoadedModel:
    tok = word_tokenizer(FILLER + A_WORDS + B_WORDS)
    return tiny_model(0, n_layers=N_LAYERS, d_model=32, tokenizer=tok, name="tiny-base")


def _moved(lm: LoadedModel, name: str, seed: int = 5) -> LoadedModel:
    """A copy of ``lm`` whose answer words' embeddings move apart along new random
    directions (a_j by +w_j, b_j by -w_j): the matching - non-matching difference, and so
    the concept vector, turns at every layer (the embeddings are ~0.02 in size, w_j ~1)."""
    model = copy.deepcopy(lm.model)
    tok = lm.tokenizer
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        for a, b in zip(A_WORDS, B_WORDS, strict=True):
            w = torch.randn(emb.shape[1], generator=gen)
            emb[tok.convert_tokens_to_ids(a)] += w
            emb[tok.convert_tokens_to_ids(b)] -= w
    return wrap_model(model, tok, name=name)


def _copy(lm: LoadedModel, name: str) -> LoadedModel:
    return wrap_model(copy.deepcopy(lm.model), lm.tokenizer, name=name)


def _items(n: int = 48, seed: int = 0) -> ABDataset:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        j = rng.randrange(len(A_WORDS))
        prompt = " ".join(rng.choices(FILLER, k=rng.randint(3, 7)))
        items.append(ABItem(prompt=prompt, matching=f" {A_WORDS[j]}",
                            not_matching=f" {B_WORDS[j]}", source=f"synthetic:{i + 1}"))
    return ABDataset(name="planted", path="synthetic", format="plain", items=tuple(items))


@pytest.fixture(scope="module")
def lineage() -> ModelSet:
    """base -> sft (the concept vector turned) -> rl (an exact copy of sft: no change)."""
    base = _base()
    sft = _moved(base, "tiny-sft")
    return ModelSet({"base": base, "sft": sft, "rl": _copy(sft, "tiny-rl")})


def test_the_cosine_change_is_attributed_to_the_stage_that_made_it(
        tmp_path: Path, lineage: ModelSet, no_figure_files: None):
    ds = _items()
    run = run_concepts(lineage, ds, tmp_path, ConceptsConfig(
        steps=("extract", "compare"), test_fraction=0.25, n_boot=200), index=False)
    s = run.summary()
    layers = list(range(N_LAYERS + 1))
    assert s["lineage"] == ["base", "sft", "rl"] and s["layers"] == layers
    assert set(s["separation_auc"]) == set(s["vector_norm"]) == {"base", "sft", "rl"}
    assert set(s["cosine_vs_base"]) == {"sft", "rl"}
    n_train = s["n_train"]
    for k in ("sft", "rl"):
        rows = s["cosine_vs_base"][k]
        assert [r["layer"] for r in rows] == layers
        for r in rows:  # the planted turn: well below 1 at every layer, with a tight CI
            assert r["value"] < 0.9 and r["ci_low"] <= r["value"] <= r["ci_high"] < 0.95
            assert r["n"] == n_train and r["resampled"] == "items"
    assert s["cosine_vs_base"]["rl"] == s["cosine_vs_base"]["sft"]  # rl is sft's copy
    assert leftover_ci_keys(s) == []  # every estimate in the one spelling

    assert set(s["attribution"]) == {f"concept_cosine_L{x}" for x in layers}
    for x in layers:
        att = s["attribution"][f"concept_cosine_L{x}"]
        assert list(att) == ["sft", "rl"]
        sft, rl = att["sft"], att["rl"]
        cos = s["cosine_vs_base"]["sft"][x]["value"]
        assert sft["value"] == pytest.approx(cos - 1.0, abs=1e-12)
        assert sft["ci_low"] <= sft["value"] <= sft["ci_high"] < -0.05
        assert sft["share"] == pytest.approx(1.0)
        assert sft["n"] == n_train and sft["resampled"] == "items"
        assert abs(rl["value"]) < 1e-9 and rl["ci_low"] <= 0.0 <= rl["ci_high"]
        # paired: every replicate resamples the same items for sft and rl, so it is 0 too
        assert abs(rl["ci_low"]) < 1e-9 and abs(rl["ci_high"]) < 1e-9
        assert rl["share"] == pytest.approx(0.0, abs=1e-9)

    # the tables: one row per layer and stage, as returned
    table = pd.read_csv(tmp_path / "data" / "attribution_concepts.csv")
    assert run.attribution_table is not None
    assert len(table) == len(run.attribution_table) == 2 * len(layers)
    assert list(run.attributions) == [f"concept_cosine_L{x}" for x in layers]
    assert run.attributions["concept_cosine_L1"].summary() == s["attribution"][
        "concept_cosine_L1"]
    assert list(table.columns[:2]) == ["metric", "layer"]
    got = table[(table.metric == "concept_cosine_L2") & (table.stage == "sft")].iloc[0]
    assert got.delta == pytest.approx(s["attribution"]["concept_cosine_L2"]["sft"]["value"])
    cos_table = pd.read_csv(tmp_path / "data" / "cosine_vs_base.csv")
    assert set(cos_table.model) == {"sft", "rl"} and len(cos_table) == 2 * len(layers)

    # every model's activations are cached under its name and read back by a rerun
    calls: list[int] = []
    again = extract_concepts(lineage, ds, test_fraction=0.25, cache_dir=tmp_path / "activations",
                             progress=calls.append)
    assert calls == [len(ds)] * 3
    assert all(torch.equal(again.acts[k], run.extraction.acts[k]) for k in lineage.names)
    assert sorted(p.name for p in (tmp_path / "activations").iterdir()) == [
        "base.safetensors", "rl.safetensors", "sft.safetensors"]


def test_the_lineage_order_decides_the_stages(lineage: ModelSet):
    """The same extraction read as sft -> rl -> base: now the first stage (rl, a copy) made
    no change and the last stage (back to base) made all of it."""
    ex = extract_concepts(lineage, _items(), test_fraction=0.25)
    lc = cosine_vs_base(ex, ["sft", "rl", "base"], n_boot=100)
    for x in ex.layers:
        t = lc.attribution[x].table.set_index("stage")
        assert abs(t.loc["rl", "delta"]) < 1e-9
        assert t.loc["base", "ci_high"] < -0.05
        assert lc.rows["rl"][x]["value"] == pytest.approx(1.0, abs=1e-9)


def test_a_two_model_set_gives_the_pair_outputs(tmp_path: Path, no_figure_files: None):
    base = _base()
    pair = ModelPair(base, _moved(base, "tiny-tuned"))
    options = ConceptsConfig(test_fraction=0.25, n_boot=100, steer_layers=(2,),
                             alphas=(-1.0, 0.0, 1.0), n_generations=1, max_new_tokens=3)
    ds = _items(40)
    as_pair = run_concepts(pair, ds, tmp_path / "pair", options)
    as_set = run_concepts(ModelSet.from_pair(pair), ds, tmp_path / "set", options)
    p, s = as_pair.summary(), as_set.summary()
    assert not {"lineage", "cosine_vs_base", "attribution"} & set(p)
    assert leftover_ci_keys(p) == [] and leftover_ci_keys(s) == []
    assert as_pair.attribution_table is None and as_pair.attributions == {}
    for key in ("separation_auc", "vector_norm", "cosine_by_layer", "unsteered_p_match",
                "steering", "settling_layer", "pca_explained"):
        assert key in p
    # every key the pair writes, the set writes with the same value (NaN-aware)
    assert {k: json.dumps(s[k], sort_keys=True) for k in p} == {
        k: json.dumps(p[k], sort_keys=True) for k in p}
    # the set's cosine with the base is the pair's cos(base, tuned), CI included
    for mine, theirs in zip(s["cosine_vs_base"]["tuned"], p["cosine_by_layer"], strict=True):
        assert mine["layer"] == theirs["layer"] and mine["n"] == theirs["n"]
        np.testing.assert_allclose([mine["value"], mine["ci_low"], mine["ci_high"]],
                                   [theirs["value"], theirs["ci_low"], theirs["ci_high"]],
                                   atol=1e-9)
    names_pair = {f.name for f in as_pair.figures}
    assert {f.name for f in as_set.figures} == names_pair | {"cosine_vs_base",
                                                            "attribution_concepts"}


def test_a_set_draws_its_lineage_figures(tmp_path: Path, lineage: ModelSet):
    run = run_concepts(lineage, _items(), tmp_path, ConceptsConfig(
        steps=("extract", "compare", "steer"), test_fraction=0.25, n_boot=50, steer_layers=(2,),
        alphas=(0.0, 1.0), n_generations=1, max_new_tokens=2))
    figures = tmp_path / "figures"
    for name in ("cosine_vs_base", "attribution_concepts", "steering_base", "steering_sft",
                 "steering_rl"):
        assert (figures / f"{name}.png").stat().st_size > 1000
        assert (figures / f"{name}.html").is_file()
    by_name = {f.name: f for f in run.figures}
    cos_fig, att_fig = by_name["cosine_vs_base"], by_name["attribution_concepts"]
    assert [x.label for x in cos_fig.series] == ["sft", "rl"]  # lineage order, model colours
    assert [x.label for x in att_fig.series] == ["sft", "rl"]
    assert COLORS["sft"] != COLORS["rl"] and COLORS["base"] not in (COLORS["sft"],
                                                                    COLORS["rl"])
    assert set(run.summary()["steering"]) == {"base", "sft", "rl"}
    assert (tmp_path / "index.html").is_file()
    assert "sft: lowest cos with base" in (tmp_path / "index.html").read_text()
