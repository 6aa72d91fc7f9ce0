"""Concept vectors: loaders, the shared-prefix A/B engine, planted ground truth, steering."""

import copy
import json
import random
import re
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch

from difflens.analysis.concept_stats import paired_auc
from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.capture.concepts import (
    compare_concepts,
    extract_concepts,
    load_vectors,
)
from difflens.capture.contrastive import forward_ab
from difflens.control.steering import greedy_texts, steering
from difflens.errors import InputError
from difflens.inputs.ab_items import ABDataset, ABItem, load_ab_dataset, tokenize_items
from difflens.models.loading import wrap_model
from difflens.models.pair import ModelPair
from difflens.models.tiny import tiny_model, word_tokenizer
from difflens.sampling.backend import HFBackend

SHARED = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "evals"
FILLER = [f"w{i}" for i in range(40)]
A_WORDS = [f"a{i}" for i in range(30)]
B_WORDS = [f"b{i}" for i in range(30)]


def _shared(rel: str, require: Callable[[bool, str], None]) -> Path:
    path = SHARED / rel
    require(path.is_file(), f"shared eval data not found at {path}: put the project's shared/ "
                            f"folder beside the repo (../shared/data)")
    return path


# -- loaders ------------------------------------------------------------------------------


@pytest.mark.parametrize("rel, fmt, n, first_match", [
    ("anthropic/advanced-ai-risk/human_generated_evals/corrigible-neutral-HHH.jsonl",
     "anthropic", 340, " (B)"),
    ("anthropic/advanced-ai-risk/human_generated_evals/power-seeking-inclination.jsonl",
     "anthropic", 998, None),
    ("caa/generate/sycophancy/generate_dataset.json", "caa", 1000, None),
    ("caa/test/survival-instinct/test_dataset_ab.json", "caa", 50, None),
    ("anthropic/persona/agreeableness.jsonl", "persona", 1000, " Yes"),
])
def test_loaders_read_the_real_shared_files(rel: str, fmt: str, n: int, first_match: str | None,
                                            require):
    path = _shared(rel, require)
    ds = load_ab_dataset(path)
    assert ds.format == fmt and len(ds) == n and not ds.skipped
    text = path.read_text()
    raw = (json.loads(text) if rel.endswith(".json")
           else [json.loads(line) for line in text.splitlines()])
    assert ds.items[7].matching == raw[7]["answer_matching_behavior"]
    assert ds.items[7].not_matching == raw[7]["answer_not_matching_behavior"]
    if first_match is not None:
        assert ds.items[0].matching == first_match
    assert ds.items[3].source.endswith((":4", "item 3"))


def test_rendering_puts_the_letter_at_the_read_position(stories_path: Path, require):
    from difflens.models import load_model

    lm = load_model(stories_path, device="cpu")
    for rel in ("caa/test/sycophancy/test_dataset_ab.json",
                "anthropic/advanced-ai-risk/human_generated_evals/myopic-reward.jsonl"):
        ds = load_ab_dataset(_shared(rel, require), max_items=20)
        toks, _ = tokenize_items(lm.tokenizer, ds.items, ds.format, chat=False,
                                 position="answer", max_length=lm.max_length)
        for item, t in zip(ds.items, toks, strict=True):
            letters = [lm.tokenizer.decode([t.ids[v][t.read[v]]]).strip() for v in (0, 1)]
            assert letters == [item.matching.strip()[1], item.not_matching.strip()[1]]
            assert t.shared <= min(t.read)
        layers = list(range(lm.n_layers + 1))
        shared = forward_ab(lm, toks, layers, batch_size=7)
        full = forward_ab(lm, toks, layers, share_prefix=False, batch_size=5)
        assert torch.allclose(shared.hidden, full.hidden, atol=1e-5)
        assert torch.allclose(shared.logp, full.logp, atol=1e-5)


def _write(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n")
    return path


def test_bad_items_give_one_line_naming_file_and_line(tmp_path: Path):
    good = json.dumps({"question": "q?", "answer_matching_behavior": " (A)",
                       "answer_not_matching_behavior": " (B)"})
    bad_json = _write(tmp_path / "a.jsonl", [good, "{not json", good])
    with pytest.raises(InputError, match=r"a\.jsonl:2: not valid JSON .*--skip-bad"):
        load_ab_dataset(bad_json)
    ds = load_ab_dataset(bad_json, skip_bad=True)
    assert len(ds) == 2 and len(ds.skipped) == 1 and "a.jsonl:2" in ds.skipped[0]

    missing = _write(tmp_path / "b.jsonl", [good, json.dumps({"question": "q?",
                                                             "answer_matching_behavior": " (A)"})])
    with pytest.raises(InputError, match=r"b\.jsonl:2: missing field "
                                         r"'answer_not_matching_behavior'"):
        load_ab_dataset(missing)
    same = _write(tmp_path / "c.jsonl", [json.dumps({"prompt": "x", "matching": " y",
                                                    "not_matching": "y"})])
    with pytest.raises(InputError, match=r"c\.jsonl:1: both answers are 'y'"):
        load_ab_dataset(same)
    arr = tmp_path / "d.json"
    arr.write_text('[{"question": "q", "answer_matching_behavior": "(A)",\n "x": }]')
    with pytest.raises(InputError, match=r"d\.json:2: not valid JSON"):
        load_ab_dataset(arr)
    with pytest.raises(InputError, match="does not exist"):
        load_ab_dataset(tmp_path / "nope.jsonl")
    with pytest.raises(InputError, match="unknown dataset format"):
        load_ab_dataset(bad_json, format="csv")
    with pytest.raises(InputError, match="unknown item fields"):
        load_ab_dataset(_write(tmp_path / "e.jsonl", [json.dumps({"text": "x"})]))
    for msg in (str(e) for e in [InputError("a\nb")]):
        assert "\n" not in msg


# -- the planted model ----------------------------------------------------------------------


def _planted(k: int = 2, scale: float = 3.0, seed: int = 0):
    """A tiny Llama where a_i and b_i share an embedding, so layers < k cannot tell them
    apart, and block ``k - 1`` adds +scale*u after an ``a`` word and -scale*u after a ``b``
    word (plus small word-specific noise): the behaviour direction u is planted at layer k."""
    tok = word_tokenizer(FILLER + A_WORDS + B_WORDS)
    lm = tiny_model(seed, n_layers=4, d_model=32, tokenizer=tok)
    emb = lm.model.get_input_embeddings().weight
    with torch.no_grad():
        for a, b in zip(A_WORDS, B_WORDS, strict=True):
            emb[tok.convert_tokens_to_ids(b)] = emb[tok.convert_tokens_to_ids(a)]
    gen = torch.Generator().manual_seed(seed + 1)
    u = torch.randn(32, generator=gen)
    u /= u.norm()
    noise = 0.3 * scale * torch.randn(len(tok), 32, generator=gen) / 32**0.5
    sign = torch.zeros(len(tok))
    sign[tok.convert_tokens_to_ids(A_WORDS)] = 1.0
    sign[tok.convert_tokens_to_ids(B_WORDS)] = -1.0
    seen: dict[str, torch.Tensor] = {}

    def stash(_m, args, kwargs):
        seen["ids"] = kwargs.get("input_ids", args[0] if args else None)

    def plant(_m, _a, _k, out):
        ids = seen["ids"]
        add = sign[ids][..., None] * scale * u + (sign[ids] != 0)[..., None] * noise[ids]
        return (out[0] + add, *out[1:]) if isinstance(out, tuple) else out + add

    lm.model.register_forward_pre_hook(stash, with_kwargs=True)
    lm.model.model.layers[k - 1].register_forward_hook(plant, with_kwargs=True)
    return lm, u


def _items(n: int, seed: int = 0) -> ABDataset:
    rng = random.Random(seed)
    items = []
    for i in range(n):
        j = rng.randrange(len(A_WORDS))
        prompt = " ".join(rng.choices(FILLER, k=rng.randint(3, 9)))
        items.append(ABItem(prompt=prompt, matching=f" {A_WORDS[j]}",
                            not_matching=f" {B_WORDS[j]}", source=f"synthetic:{i + 1}"))
    return ABDataset(name="planted", path="synthetic", format="plain", items=tuple(items))


def test_planted_direction_is_recovered_and_separation_starts_at_layer_k():
    k = 2
    lm, u = _planted(k)
    ex = extract_concepts(lm, _items(200), test_fraction=0.3, seed=0, batch_size=16)
    cmp = compare_concepts(ex, n_boot=200)
    v = ex.vectors.layer("model", k)
    assert float(torch.nn.functional.cosine_similarity(v, u, dim=0)) > 0.95
    auc = {r["layer"]: r["value"] for r in cmp.separation["model"]}
    assert all(auc[x] == 0.5 for x in range(k))  # a_i and b_i are indistinguishable there
    assert all(auc[x] > 0.95 for x in range(k, lm.n_layers + 1))
    assert all(float(ex.vectors.layer("model", x).norm()) == 0.0 for x in range(k))
    rows = cmp.separation["model"]
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] and r["n"] == 60 for r in rows)
    assert all(r["resampled"] == "items" for r in rows)


def test_shared_prefix_equals_full_forward_and_batching_does_not_matter(monkeypatch):
    from difflens.capture import contrastive

    lm, _ = _planted(2)
    ds = _items(30, seed=3)
    toks, _ = tokenize_items(lm.tokenizer, ds.items, "plain", chat=False, position="last")
    layers = list(range(lm.n_layers + 1))
    # the shared-prefix engine must really run (it once fell back to full passes silently,
    # when transformers 5.24 renamed the forward's cache keyword)
    real, calls = contrastive._forward_shared, []
    monkeypatch.setattr(contrastive, "_forward_shared",
                        lambda *a, **k: calls.append(1) or real(*a, **k))
    shared = forward_ab(lm, toks, layers, batch_size=8)
    assert calls, "forward_ab fell back to full forward passes"
    full = forward_ab(lm, toks, layers, share_prefix=False, batch_size=8)
    single = forward_ab(lm, toks, layers, batch_size=1)
    for other in (full, single):
        assert torch.allclose(shared.hidden, other.hidden, atol=1e-5)
        assert torch.allclose(shared.logp, other.logp, atol=1e-5)
    # the log-probs are those of the answer token after the shared prompt
    ids = toks[0].ids[0]
    with torch.no_grad():
        logits = lm.model(torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits[len(ids) - 2], -1)[ids[-1]]
    assert abs(float(lp) - float(shared.logp[0, 0])) < 1e-5


def test_identical_pair_gives_cosine_one_at_every_layer():
    lm, _ = _planted(2)
    twin = wrap_model(copy.deepcopy(lm.model), lm.tokenizer, name="twin")
    ex = extract_concepts(ModelPair(lm, twin), _items(60), test_fraction=0.25)
    cmp = compare_concepts(ex, n_boot=100)
    for r in cmp.cosine_by_layer:
        if r["layer"] >= 2:
            assert r["value"] == pytest.approx(1.0, abs=1e-6)
            assert r["ci_low"] == pytest.approx(1.0, abs=1e-6)
        else:
            assert np.isnan(r["value"])  # both vectors are exactly zero there


def test_pca_method_and_vector_files(tmp_path: Path):
    lm, u = _planted(2)
    ex = extract_concepts(lm, _items(80), method="pca", test_fraction=0.0)
    v = ex.vectors.layer("model", 2)
    assert float(torch.nn.functional.cosine_similarity(v, u, dim=0)) > 0.95
    assert ex.vectors.n_items == 80 and ex.vectors.position == "answer"
    assert ex.vectors.module_paths["model"][2] == "model.layers.1 (output)"
    assert ex.vectors.module_paths["model"][0] == "model.layers.0 (input)"
    assert ex.vectors.module_paths["model"][-1] == "lm_head (input)"
    path = tmp_path / "v.safetensors"
    ex.vectors.save(path)
    back = load_vectors(path)
    assert back.layers == ex.vectors.layers and back.method == "pca"
    assert torch.equal(back.vectors["model"], ex.vectors.vectors["model"])
    combo = (back + back * 2.0 - back) / 2.0
    assert torch.allclose(combo.vectors["model"], back.vectors["model"], atol=1e-6)
    with pytest.raises(InputError, match="not a difflens vector file|not a safetensors"):
        load_vectors(_write(tmp_path / "x.safetensors", ["junk"]))


def test_activation_cache_is_reused(tmp_path: Path):
    lm, _ = _planted(2)
    ds = _items(40)
    a = extract_concepts(lm, ds, cache_dir=tmp_path)
    calls = []
    b = extract_concepts(lm, ds, cache_dir=tmp_path, progress=calls.append)
    assert torch.equal(a.acts["model"], b.acts["model"]) and calls == [40]
    c = extract_concepts(lm, ds, cache_dir=tmp_path, position="answer", layers=[1, 2])
    assert c.acts["model"].shape[2] == 2


# -- steering -------------------------------------------------------------------------------


def test_steering_with_alpha_zero_changes_nothing_bit_for_bit(tiny):
    ids = tiny.tokenizer("the fox went to the forest", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = tiny.model(ids).logits
        for layer in (0, 2, tiny.n_layers):
            with steering(tiny, {layer: torch.randn(tiny.d_model)}, alpha=0.0):
                out = tiny.model(ids).logits
            assert torch.equal(out, ref)
            with steering(tiny, {layer: torch.randn(tiny.d_model)}, alpha=3.0):
                assert not torch.equal(tiny.model(ids).logits, ref)
        assert torch.equal(tiny.model(ids).logits, ref)


def test_steering_hook_is_removed_after_an_exception(tiny):
    ids = tiny.tokenizer("the fox", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        ref = tiny.model(ids).logits
    with pytest.raises(RuntimeError, match="boom"), steering(tiny, {2: torch.ones(tiny.d_model)}):
        raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(tiny.model(ids).logits, ref)
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in tiny.model.modules())
    with pytest.raises(InputError, match="must have 32 entries"), steering(
            tiny, {2: torch.ones(5)}):
        pass


def test_steering_is_consistent_with_the_kv_cache(tiny):
    v = torch.randn(tiny.d_model)
    ids = tiny.tokenizer("the fox went to", return_tensors="pt")["input_ids"]
    with steering(tiny, {2: v}, alpha=2.0), torch.no_grad():
        cached = tiny.model.generate(ids, attention_mask=torch.ones_like(ids),
                                     max_new_tokens=8, do_sample=False, use_cache=True,
                                     pad_token_id=0)
        uncached = tiny.model.generate(ids, attention_mask=torch.ones_like(ids),
                                       max_new_tokens=8, do_sample=False, use_cache=False,
                                       pad_token_id=0)
        full = tiny.model(cached).logits
        engine = HFBackend(tiny)  # the one cached forward path of difflens
        n = cached.shape[1]
        engine.prefill(cached[:, :-1], torch.ones_like(cached[:, :-1]),
                       torch.arange(n - 1)[None])
        last = engine.step(cached[:, -1:], torch.ones_like(cached), torch.tensor([[n - 1]]))
    assert torch.equal(cached, uncached)
    assert torch.allclose(full[:, -1], last, atol=1e-5)
    plain = greedy_texts(tiny, ["the fox went to"], max_new_tokens=8)
    with steering(tiny, {2: v}, alpha=2.0):
        steered = greedy_texts(tiny, ["the fox went to"], max_new_tokens=8)
    assert steered[0] == tiny.tokenizer.decode(cached[0, ids.shape[1]:], skip_special_tokens=True)
    assert isinstance(plain[0], str)
    # the batched (left-padded) generation equals one prompt at a time
    two = ["the fox went to", "once upon a time there was a little fox"]
    with steering(tiny, {2: v}, alpha=2.0):
        batched = greedy_texts(tiny, two, max_new_tokens=6)
        singles = [greedy_texts(tiny, [p], max_new_tokens=6)[0] for p in two]
    assert batched == singles


def test_dose_response_at_alpha_zero_is_the_unsteered_probability():
    from difflens.control.steering import dose_response

    lm, _ = _planted(2)
    ds = _items(40)
    ex = extract_concepts(lm, ds, test_fraction=0.5)
    toks, _ = tokenize_items(lm.tokenizer, [ds.items[i] for i in ex.test], "plain",
                             chat=False, position="answer")
    rows = dose_response(lm, toks, {2: ex.vectors.layer("model", 2)}, [-1.0, 0.0, 1.0],
                         n_boot=100)
    zero = next(r for r in rows if r["alpha"] == 0.0)
    assert zero["value"] == pytest.approx(float(ex.p_match("model")[ex.test].mean()),
                                            abs=1e-5)
    assert {r["alpha"] for r in rows} == {-1.0, 0.0, 1.0} and all(r["n"] == 20 for r in rows)


def test_paired_auc_on_known_scores():
    pos = np.array([3.0, 4.0, 5.0, 6.0])
    neg = np.array([0.0, 1.0, 2.0, 3.5])
    auc = paired_auc(pos, neg, n_boot=200)
    assert auc.value == pytest.approx(15 / 16) and auc.n == 4 and auc.resampled == "items"
    assert 0.5 <= auc.ci_low <= auc.value <= auc.ci_high <= 1.0
    assert paired_auc(np.zeros(5), np.zeros(5), n_boot=50).value == 0.5


# -- issue 19: the settling layer, several behaviours ---------------------------------------


def test_settling_positions_on_known_cosines():
    from difflens.analysis.concept_stats import settling_positions

    cos = np.array([[0.2, 0.5, 0.95, 0.97, 0.99],   # crosses 0.9 for good at pair 2
                    [0.95, 0.5, 0.95, 0.91, 0.9],   # a dip at pair 1: settles after it
                    [0.95, 0.95, 0.95, 0.95, 0.5],  # the last pair is below: never
                    [0.91, 0.92, 0.93, 0.94, 0.95],  # settled from the start
                    [np.nan, np.nan, 0.95, 0.96, 0.97]])  # zero vectors count as below
    got = settling_positions(cos, 0.9)
    assert got[:2].tolist() == [2.0, 2.0] and np.isnan(got[2])
    assert got[3:].tolist() == [0.0, 2.0]
    assert settling_positions(cos[:1], 0.96).tolist() == [3.0]


def _extraction_with_vectors(directions: dict[str, np.ndarray], n_items: int, noise: float,
                             seed: int = 0):
    """A ConceptExtraction whose per-item differences are ``directions[label][layer]`` plus
    Gaussian noise: the vectors' layer-to-layer geometry is planted."""
    from difflens.capture.concepts import ConceptExtraction, ConceptVectors

    gen = torch.Generator().manual_seed(seed)
    acts = {}
    n_layers, d = next(iter(directions.values())).shape
    for k, dirs in directions.items():
        base = torch.randn(n_items, n_layers, d, generator=gen, dtype=torch.float64)
        diff = torch.as_tensor(dirs)[None] + noise * torch.randn(n_items, n_layers, d,
                                                                 generator=gen,
                                                                 dtype=torch.float64)
        acts[k] = torch.stack([base + diff, base], dim=1).float()
    train = np.arange(n_items)
    layers = tuple(range(n_layers))
    vectors = ConceptVectors(vectors={k: (a[:, 0] - a[:, 1]).mean(0) for k, a in acts.items()},
                             layers=layers, n_items=n_items, position="last",
                             method="mean_diff", module_paths={k: [] for k in acts})
    return ConceptExtraction(dataset=_items(n_items), layers=layers, position="last",
                             chat={k: False for k in acts}, acts=acts,
                             logp={k: torch.zeros(n_items, 2) for k in acts}, train=train,
                             test=np.zeros(0, np.int64), vectors=vectors)


def _rotating_then_fixed(n_layers: int, settle: int, d: int = 16, seed: int = 0) -> np.ndarray:
    """Unit directions per layer: before ``settle`` each layer turns by 80 degrees in its
    own plane; from ``settle`` on the direction stays put (cos 1 between layers)."""
    rng = np.random.default_rng(seed)
    dirs = np.zeros((n_layers, d))
    u = rng.normal(size=d)
    u /= np.linalg.norm(u)
    for layer in range(n_layers):
        if 0 < layer <= settle:
            w = rng.normal(size=d)
            w -= (w @ u) * u
            w /= np.linalg.norm(w)
            u = np.cos(np.radians(80)) * u + np.sin(np.radians(80)) * w
        dirs[layer] = 4.0 * u
    return dirs


def test_settling_layer_is_recovered_with_a_ci_over_items():
    dirs = {"base": _rotating_then_fixed(8, 5, seed=1), "tuned": _rotating_then_fixed(8, 2,
                                                                                     seed=2)}
    # independent: the planted consecutive cosines (cos 80 deg before, 1 after)
    for k, settle in (("base", 5), ("tuned", 2)):
        u = dirs[k] / np.linalg.norm(dirs[k], axis=1, keepdims=True)
        cos = (u[:-1] * u[1:]).sum(1)
        assert np.allclose(cos[:settle], np.cos(np.radians(80)))
        assert np.allclose(cos[settle:], 1.0)
    ex = _extraction_with_vectors(dirs, n_items=80, noise=0.5)
    cmp = compare_concepts(ex, n_boot=200, settle_threshold=0.9)
    for k, settle in (("base", 5), ("tuned", 2)):
        s = cmp.settling[k]
        assert (s["value"], s["ci_low"], s["ci_high"]) == (settle, settle, settle)
        assert s["threshold"] == 0.9 and s["n"] == 80 and s["n_boot"] == 200
        rows = cmp.consecutive[k]
        assert [r["layer"] for r in rows] == list(range(7))
        assert all(r["next_layer"] == r["layer"] + 1 for r in rows)
        assert rows[settle]["ci_low"] > 0.9 > rows[settle - 1]["ci_high"]
    # directions that keep turning up to the last layer never settle, in any resample
    turning = {"base": _rotating_then_fixed(8, 7, seed=4)}
    never = compare_concepts(_extraction_with_vectors(turning, n_items=40, noise=0.5),
                             n_boot=100, settle_threshold=0.9).settling["base"]
    assert never["value"] is None and never["ci_low"] is None and never["ci_high"] is None
    assert never["n_boot_unsettled"] == 100
    # a threshold below cos(80 deg) counts every layer as settled
    low = compare_concepts(ex, n_boot=50, settle_threshold=0.1).settling["base"]
    assert (low["value"], low["ci_low"], low["ci_high"]) == (0, 0, 0)
    with pytest.raises(InputError, match=r"settling threshold is a cosine, in \[-1, 1\]"):
        compare_concepts(ex, n_boot=10, settle_threshold=1.5)


def test_behaviour_labels_tell_files_apart():
    from difflens.pipelines.concepts import behaviour_labels

    assert behaviour_labels(["/d/kind.jsonl", "/d/brave.jsonl"]) == ["kind", "brave"]
    assert behaviour_labels(["caa/generate/sycophancy/generate_dataset.json",
                             "caa/generate/refusal/generate_dataset.json"]) == [
        "sycophancy/generate_dataset", "refusal/generate_dataset"]
    with pytest.raises(InputError, match="the same dataset file is given twice"):
        behaviour_labels(["a/x.jsonl", "a/x.jsonl"])


def test_several_behaviours_on_one_chart(tmp_path: Path):
    """Two behaviours on one planted pair: tuned differs from base only in the embeddings of
    the second behaviour's answer words, so the first behaviour's vectors are identical in
    both models (cos exactly 1) and the second's are rotated (cos < 1)."""
    import pandas as pd

    from difflens.pipelines.concepts import ConceptsConfig, compare_behaviours, run_concepts

    lm, _ = _planted(2)
    twin = wrap_model(copy.deepcopy(lm.model), lm.tokenizer, name="twin")
    tok = lm.tokenizer
    gen = torch.Generator().manual_seed(5)
    with torch.no_grad():
        emb = twin.model.get_input_embeddings().weight
        for a, b in zip(A_WORDS[15:], B_WORDS[15:], strict=True):
            w = torch.randn(32, generator=gen)
            emb[tok.convert_tokens_to_ids(a)] += w
            emb[tok.convert_tokens_to_ids(b)] -= w
    pair = ModelPair(lm, twin)

    def dataset(name: str, words: slice, seed: int) -> ABDataset:
        rng = random.Random(seed)
        items = []
        for i in range(60):
            j = rng.randrange(len(A_WORDS[words]))
            prompt = " ".join(rng.choices(FILLER, k=rng.randint(3, 9)))
            items.append(ABItem(prompt=prompt, matching=f" {A_WORDS[words][j]}",
                                not_matching=f" {B_WORDS[words][j]}", source=f"{name}:{i}"))
        return ABDataset(name=name, path=f"/data/{name}.jsonl", format="plain",
                         items=tuple(items))

    kept, moved = dataset("kept", slice(0, 15), 1), dataset("moved", slice(15, 30), 2)
    run = compare_behaviours(pair, [kept, moved], tmp_path / "out", ConceptsConfig(
        test_fraction=0.25, n_boot=100, settle_threshold=0.9))
    s = run.summary()
    assert list(s["behaviours"]) == ["kept", "moved"] and s["settle_threshold"] == 0.9
    assert leftover_ci_keys(s) == []  # every estimate in the one spelling
    kept_cos = {r["layer"]: r for r in s["behaviours"]["kept"]["cosine_by_layer"]}
    moved_cos = {r["layer"]: r for r in s["behaviours"]["moved"]["cosine_by_layer"]}
    for layer in range(2, lm.n_layers + 1):
        assert kept_cos[layer]["value"] == pytest.approx(1.0, abs=1e-6)
        assert moved_cos[layer]["value"] < 0.99 and moved_cos[layer]["ci_high"] < 1.0
    # the behaviour x layer table holds every behaviour's own rows
    table = pd.read_csv(tmp_path / "out" / "data" / "cosine_by_behaviour.csv")
    assert len(table) == 2 * (lm.n_layers + 1)
    got = table[(table.behaviour == "moved") & (table.layer == 3)].iloc[0]
    assert got.cos == pytest.approx(moved_cos[3]["value"])  # the table keeps its columns
    assert (tmp_path / "out" / "data" / "cosine_by_behaviour.parquet").is_file()
    assert (tmp_path / "out" / "figures" / "cosine_by_behaviour.png").stat().st_size > 1000
    settle = pd.read_csv(tmp_path / "out" / "data" / "settling_by_behaviour.csv")
    assert set(zip(settle.behaviour, settle.model, strict=True)) == {
        (b, m) for b in ("kept", "moved") for m in ("base", "tuned")}
    # each behaviour's folder is the single-dataset run's output
    single = run_concepts(pair, moved, tmp_path / "single", ConceptsConfig(
        steps=("extract", "compare"), test_fraction=0.25, n_boot=100), index=False)
    own = json.loads((tmp_path / "out" / "moved" / "summary.json").read_text())
    want = pd.DataFrame(single.summary()["cosine_by_layer"])
    pd.testing.assert_frame_equal(pd.DataFrame(own["cosine_by_layer"])[want.columns], want)
    assert own["settling_layer"] == single.summary()["settling_layer"]
    assert leftover_ci_keys(single.summary()) == []
    # identical vectors in both models settle at the same layer
    kept_settle = s["behaviours"]["kept"]["settling_layer"]
    assert kept_settle["base"] == kept_settle["tuned"]


def test_cli_compare_takes_several_datasets(tmp_path: Path, pair_folders):
    from typer.testing import CliRunner

    from difflens.cli.main import app

    words = "once upon a time there was little fox the went to forest find friend".split()
    rng = random.Random(0)
    files = []
    for name in ("one", "two"):
        lines = []
        for _ in range(20):
            a, b = rng.sample(words, 2)
            lines.append(json.dumps({"prompt": " ".join(rng.choices(words, k=4)),
                                     "matching": f" {a}", "not_matching": f" {b}"}))
        files.append(_write(tmp_path / f"{name}.jsonl", lines))
    runner = CliRunner()
    args = ["concepts", "compare", "--base", str(pair_folders["base"]), "--tuned",
            str(pair_folders["tuned"]), "--position", "last"]
    res = runner.invoke(app, [*args, "--dataset", str(files[0]), "--dataset", str(files[1]),
                              "--out", str(tmp_path / "two")])
    assert res.exit_code == 0, res.output
    s = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert list(s["behaviours"]) == ["one", "two"]
    for name in ("one", "two"):
        own = json.loads((tmp_path / "two" / name / "summary.json").read_text())
        assert own["cosine_by_layer"] == s["behaviours"][name]["cosine_by_layer"]
        assert set(own["settling_layer"]) == {"base", "tuned"}
    assert (tmp_path / "two" / "index.html").is_file()
    # one dataset: the same outputs as before, plus the settling layer
    res = runner.invoke(app, [*args, "--dataset", str(files[0]), "--out", str(tmp_path / "one"),
                              "--settle-threshold", "0.5"])
    assert res.exit_code == 0, res.output
    one = json.loads((tmp_path / "one" / "summary.json").read_text())
    assert "behaviours" not in one and one["cosine_by_layer"]
    assert one["settling_layer"]["base"]["threshold"] == 0.5
    assert (tmp_path / "one" / "figures" / "consecutive_cosine.png").is_file()
    for bad, msg in ((["--dataset", str(files[0]), "--dataset", str(files[0])],
                      "the same dataset file is given twice"),
                     (["--dataset", str(files[0]), "--settle-threshold", "2"],
                      r"--settle-threshold is a cosine, in \[-1, 1\]")):
        res = runner.invoke(app, [*args, *bad, "--out", str(tmp_path / "bad")])
        assert res.exit_code == 2 and res.output.count("\n") == 1, res.output
        assert re.search(msg, res.output)
    res = runner.invoke(app, ["concepts", "extract", "--base", str(pair_folders["base"]),
                              "--dataset", str(files[0]), "--dataset", str(files[1]),
                              "--out", str(tmp_path / "bad")])
    assert res.exit_code == 2 and "only `concepts compare` takes several" in res.output
