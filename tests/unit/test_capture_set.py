"""Capture of a model set: every pair asked for from one forward pass per model, the pair
columns' names, statistics without hidden states, and the keys of single-model and pair
captures unchanged."""


import numpy as np
import pandas as pd
import pytest
import torch

import difflens as dl
from difflens.capture import plan as plan_mod
from difflens.capture.stats import next_token_stats, pair_stats, set_token_stats
from difflens.models import ModelSet
from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_lineage, tiny_model

TEXTS = [*EXAMPLE_PROMPTS, "and", "the fox went to the forest and the rabbit was afraid"]


@pytest.fixture
def lineage() -> ModelSet:
    return tiny_lineage(0)


def test_set_token_stats_equals_each_pair_on_its_own():
    torch.manual_seed(0)
    logits = {m: torch.randn(40, 50) * 3 for m in ("a", "b", "c")}
    nxt = torch.randint(-1, 50, (40,))
    per_model, per_pair = set_token_stats(logits, nxt, 3, pairs=[("a", "b"), ("c", "a")])
    assert list(per_pair) == [("a", "b"), ("c", "a")]
    for (x, y), got in per_pair.items():
        want = pair_stats(logits[x], logits[y])  # x as base, y as tuned
        assert torch.equal(got.kl_tuned_base, want.kl_tuned_base)
        assert torch.equal(got.kl_base_tuned, want.kl_base_tuned)
        assert torch.equal(got.top1_agree, want.top1_agree)
    alone, pair = next_token_stats({"base": logits["a"], "tuned": logits["b"]}, nxt, 3)
    assert pair is not None and torch.equal(pair.kl_tuned_base,
                                            per_pair[("a", "b")].kl_tuned_base)
    assert torch.equal(alone["base"].entropy, per_model["a"].entropy)
    assert torch.equal(alone["tuned"].topk_ids, per_model["b"].topk_ids)
    assert torch.equal(alone["base"].logprob_next.isnan(), nxt < 0)
    with pytest.raises(ValueError, match="names a model without logits"):
        set_token_stats(logits, nxt, pairs=[("a", "z")])


def test_a_set_capture_holds_each_pair_as_its_own_pair_capture(lineage, tmp_path):
    pairs = [("base", "sft"), ("base", "rl"), ("sft", "rl")]
    store = dl.capture(lineage, TEXTS, store=tmp_path / "set", layers="1,3", pairs=pairs,
                       batch_size=4)
    assert store.labels == ["base", "sft", "rl"] and store.pairs == pairs
    cols = set(store.stats().columns)
    for a, b in pairs:
        assert {f"{a}-vs-{b}:kl_tuned_base", f"{a}-vs-{b}:kl_base_tuned",
                f"{a}-vs-{b}:top1_agree"} <= cols
        alone = dl.capture(lineage.pair(a, b), TEXTS, store=tmp_path / f"{a}-{b}",
                           layers="1,3", batch_size=4)
        assert alone.pairs == [("base", "tuned")]
        pd.testing.assert_frame_equal(store.pair_stats(a, b), alone.pair_stats("base", "tuned"),
                                      check_exact=True)
        for i in (0, len(TEXTS) - 1):
            assert torch.equal(store.hidden(i, 3, b), alone.hidden(i, 3, "tuned"))
    assert "kl_tuned_base" not in cols  # the bare names are a ModelPair's own
    with pytest.raises(dl.StoreError, match=r"no statistics of the pair \(rl, base\)"):
        store.pair_stats("rl", "base")


def test_set_layer_maps_capture_each_models_own_layer(tmp_path):
    base = tiny_model(0, n_layers=2, name="shallow")
    deep = tiny_model(1, n_layers=4, tokenizer=base.tokenizer, name="deep")
    models = ModelSet({"shallow": base, "deep": deep}, layer_maps={"deep": {1: 2, 2: 4}})
    store = dl.capture(models, TEXTS[:4], store=tmp_path / "set", layers="1,2")
    pair = dl.capture(models.pair("shallow", "deep"), TEXTS[:4], store=tmp_path / "pair",
                      layers="1,2")
    for layer in (1, 2):
        assert torch.equal(store.hidden(2, layer, "deep"), pair.hidden(2, layer, "tuned"))
    assert store.manifest["layer_map"] == {"deep": {"1": 2, "2": 4}}


def test_no_layers_stores_the_statistics_alone(lineage, tmp_path):
    pair = lineage.pair("base", "rl")
    full = dl.capture(pair, TEXTS, store=tmp_path / "full", positions=[0, -1])
    bare = dl.capture(pair, TEXTS, store=tmp_path / "bare", layers=(), positions=[0, -1])
    assert not (tmp_path / "bare" / "tensors").exists() and bare.layers == []
    assert not bare.has_tensors and full.has_tensors and bare.key != full.key
    assert bare.stats().equals(full.stats())
    assert [bare.positions(i) for i in range(len(TEXTS))] == \
        [full.positions(i) for i in range(len(TEXTS))]
    with pytest.raises(dl.StoreError, match="stores no hidden states") as err:
        bare.hidden(0, 1)
    assert "\n" not in str(err.value)
    with pytest.raises(dl.StoreError, match="stores no full log-probs"):
        bare.logprobs(0)
    assert bare.describe()["n_tokens"] == full.n_tokens
    # full log-probs without states still get their tensor files
    lp = dl.capture(pair, TEXTS, store=tmp_path / "lp", layers=[], logprob_positions=[-1])
    pos, rows = lp.logprobs(3, "tuned")
    vocab = lineage.base.model.get_output_embeddings().weight.shape[0]
    assert pos == [len(lp.token_ids(3)) - 1] and tuple(rows.shape) == (1, vocab)
    assert torch.allclose(rows.exp().sum(-1), torch.ones(1))


def test_keys_of_single_model_and_pair_captures_do_not_change(lineage, tmp_path):
    cfg = plan_mod.CaptureConfig(layers=(0, 1))
    assert set(cfg.key_fields()) == {"layers", "positions", "store_dtype", "top_k",
                                     "logprob_positions", "truncate"}
    assert "pairs" not in cfg.to_json()
    pair = lineage.pair("base", "sft")
    plain = dl.capture(pair, TEXTS[:3], store=tmp_path / "plain", layers="0")
    same = dl.capture(pair, TEXTS[:3], store=tmp_path / "same", layers="0",
                      pairs=[("base", "tuned")])
    assert same.key == plain.key and "pairs" not in plain.manifest["config"]
    assert list(plain.manifest) == sorted(plain.manifest)  # no labels: sorted keys keep order
    none = dl.capture(pair, TEXTS[:3], store=tmp_path / "none", layers="0", pairs=[])
    assert none.key != plain.key and "kl_tuned_base" not in none.stats().columns
    single = dl.capture(lineage.base, TEXTS[:3], store=tmp_path / "one", layers="0", pairs=[])
    assert single.key == dl.capture(lineage.base, TEXTS[:3], store=tmp_path / "one2",
                                    layers="0").key
    a = dl.capture(lineage, TEXTS[:3], store=tmp_path / "a", layers="0",
                   pairs=[("base", "sft")])
    b = dl.capture(lineage, TEXTS[:3], store=tmp_path / "b", layers="0",
                   pairs=[("sft", "base")])
    assert a.key != b.key


@pytest.mark.parametrize(("pairs", "pattern"), [
    ([("base", "dpo")], r"names 'dpo', which is not a model here"),
    ([("sft", "sft")], "compares a model with itself"),
    ([("base", "sft"), ("base", "sft")], "is given twice"),
    (["base"], "each pair is two model labels"),
])
def test_bad_pairs_are_one_line(lineage, tmp_path, pairs, pattern):
    with pytest.raises(dl.InputError, match=pattern) as err:
        dl.capture(lineage, TEXTS[:2], store=tmp_path / "run", pairs=pairs)
    assert "\n" not in str(err.value)


def test_set_columns_are_in_the_order_of_the_labels_and_pairs(lineage, tmp_path):
    store = dl.capture(lineage, TEXTS[:3], store=tmp_path / "run", layers=(),
                       pairs=[("sft", "rl"), ("base", "rl")], top_k=2)
    cols = list(store.stats().columns)
    assert cols[:4] == ["prompt_idx", "pos", "token_id", "token"]
    assert cols[4:8] == ["base_entropy", "base_logprob_next", "base_topk_ids",
                         "base_topk_logprobs"]
    assert cols[-6:] == ["sft-vs-rl:kl_tuned_base", "sft-vs-rl:kl_base_tuned",
                         "sft-vs-rl:top1_agree", "base-vs-rl:kl_tuned_base",
                         "base-vs-rl:kl_base_tuned", "base-vs-rl:top1_agree"]
    st = store.stats()
    assert st["sft-vs-rl:top1_agree"].dtype == bool
    assert np.all(st["base-vs-rl:kl_tuned_base"].dropna() >= 0)
