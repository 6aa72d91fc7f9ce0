"""Model sets: NAME=MODEL parsing, the shared-tokenizer and shape checks (on loaded models
and on tokenizers/configs alone), the pairs a set hands out, and its stored description."""

from pathlib import Path

import pytest
import torch

from difflens.errors import InputError
from difflens.models.model_set import ModelSet, check_model_set, parse_model_specs
from difflens.models.pair import ModelPair
from difflens.models.tiny import bigram_model, tiny_model

WORDS = ["red", "green", "blue", "cat", "dog"]


def _bigram(words: list[str], seed: int, name: str):
    vocab = 4 + len(words)
    torch.manual_seed(seed)
    return bigram_model(words, torch.randn(vocab, vocab), name=name)


@pytest.fixture
def lineage() -> ModelSet:
    return ModelSet(
        {n: _bigram(WORDS, i, f"bigram-{n}") for i, n in enumerate(["base", "sft", "dpo"])}
    )


def test_parse_model_specs_keeps_lineage_order():
    assert list(parse_model_specs(["base=org/b", "sft=./s=1", " dpo = p "]).items()) == [
        ("base", "org/b"),
        ("sft", "./s=1"),
        ("dpo", "p"),
    ]


@pytest.mark.parametrize(
    ("specs", "match"),
    [
        (["base=B", "sftS"], r"given as NAME=MODEL .* got 'sftS'"),
        (["base=B", "=S"], r"model spec '=S' has an empty name"),
        (["base=B", "sft="], r"model spec 'sft=' names no model"),
        (["base=B", "base=C"], r"model name 'base' is given twice \(B and C\)"),
        (["base=B"], r"a model set needs at least 2 models .* got 1"),
        (["base=B", "s.f.t=S"], r"model name 's.f.t' is not usable"),
    ],
)
def test_parse_model_specs_refuses_with_one_line(specs, match):
    with pytest.raises(InputError, match=match) as info:
        parse_model_specs(specs)
    assert "\n" not in str(info.value)


def test_set_iterates_and_pairs_in_lineage_order(lineage):
    base, sft, dpo = (lineage.models[n] for n in ("base", "sft", "dpo"))
    assert lineage.names == ("base", "sft", "dpo") and len(lineage) == 3
    assert lineage.base is base
    assert list(lineage.adjacent()) == [("base", "sft"), ("sft", "dpo")]
    assert list(lineage.against_base()) == [("base", "sft"), ("base", "dpo")]
    stage = lineage.adjacent()[("sft", "dpo")]
    assert (stage.base, stage.tuned, stage.layer_map) == (sft, dpo, None)
    assert lineage.against_base()[("base", "dpo")] == ModelPair(base, dpo)
    with pytest.raises(InputError, match="no model named 'ppo' .* base, sft, dpo"):
        lineage.pair("base", "ppo")


def test_describe_records_identity_and_position(lineage):
    described = lineage.describe()
    assert [(d["name"], d["position"]) for d in described] == [("base", 0), ("sft", 1), ("dpo", 2)]
    for d in described:
        assert d["identity"] == lineage.models[d["name"]].identity.to_dict()
        assert d["layer_map"] is None
    # three different planted tables: three different weights hashes, one tokenizer hash
    assert len({d["identity"]["weights_sha256"] for d in described}) == 3
    assert len({d["identity"]["tokenizer_sha256"] for d in described}) == 1


def test_two_model_set_round_trips_a_pair(pair):
    s = ModelSet.from_pair(pair)
    assert s.names == ("base", "tuned")
    assert s.pair("base", "tuned") == pair
    assert s.adjacent() == {("base", "tuned"): pair} == s.against_base()
    deeper = tiny_model(1, n_layers=6, name="deeper")
    mapped = ModelPair(pair.base, deeper, layer_map={0: 0, 2: 3, -1: -1})
    back = ModelSet.from_pair(mapped, names=("b", "d")).pair("b", "d")
    assert back.layer_map == {0: 0, 2: 3, 4: 6}
    assert back.tuned_layer(2) == mapped.tuned_layer(2) == 3


def test_layer_maps_compose_between_later_models():
    base = tiny_model(0, n_layers=4, name="base")
    deep = tiny_model(1, n_layers=6, name="deep")
    deep2 = tiny_model(2, n_layers=6, name="deep2")
    s = ModelSet(
        {"base": base, "deep": deep, "deep2": deep2},
        layer_maps={"deep": {0: 0, 2: 3, -1: -1}, "deep2": {0: 0, 2: 4, 4: 6}},
    )
    # planted: base layer 2 is deep's 3 and deep2's 4, so deep's 3 is deep2's 4
    assert s.pair("deep", "deep2").layer_map == {0: 0, 3: 4, 6: 6}
    assert s.pair("deep", "base").layer_map == {0: 0, 3: 2, 6: 4}
    assert s.describe()[1]["layer_map"] == {"0": 0, "2": 3, "4": 6}


def test_set_refuses_other_shapes_without_a_layer_map():
    with pytest.raises(
        InputError,
        match=r"models 'base' and 'deep' .* base has 4 layers of "
        r"width 32, deep has 6 of width 32; pass layer_maps=",
    ):
        ModelSet({"base": tiny_model(0), "deep": tiny_model(1, n_layers=6)})
    with pytest.raises(InputError, match=r"layer_maps names \['base'\]"):
        ModelSet({"base": tiny_model(0), "sft": tiny_model(1)}, layer_maps={"base": {0: 0}})


def test_set_refuses_a_tokenizer_differing_in_one_token_with_one_line():
    other = ["red", "green", "blue", "cat", "emu"]  # the last word differs, same size
    ok = {"base": _bigram(WORDS, 0, "b"), "sft": _bigram(WORDS, 1, "s")}
    with pytest.raises(InputError) as info:
        ModelSet({**ok, "dpo": _bigram(other, 2, "d")})
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(
        "models 'base' and 'dpo' cannot be in one model set: their "
        "tokenizers differ: base has 9 tokens, dpo has 9; first "
        "differences: 'dog': 8 (base) vs None (dpo); 'emu': None (base) "
        "vs 8 (dpo)"
    )


def _save_light(tmp_path: Path, name: str, words: list[str], n_layers: int = 2) -> Path:
    """A folder with a tokenizer and a config but no weights."""
    lm = bigram_model(words, torch.zeros(4 + len(words), 4 + len(words)), n_layers=n_layers)
    folder = tmp_path / name
    lm.tokenizer.save_pretrained(folder)
    lm.model.config.save_pretrained(folder)
    return folder


def test_check_model_set_reads_tokenizers_and_configs_only(tmp_path):
    base = _save_light(tmp_path, "base", WORDS)
    sft = _save_light(tmp_path, "sft", WORDS)
    assert not list(base.glob("*.safetensors"))  # no weights to load
    check_model_set({"base": str(base), "sft": str(sft)})
    emu = _save_light(tmp_path, "emu", [*WORDS[:-1], "emu"])
    with pytest.raises(InputError) as info:
        check_model_set({"base": str(base), "sft": str(sft), "dpo": str(emu)})
    msg = str(info.value)
    assert "\n" not in msg
    assert "models 'base' and 'dpo'" in msg and "'dog': 8 (base) vs None (dpo)" in msg
    deep = _save_light(tmp_path, "deep", WORDS, n_layers=3)
    with pytest.raises(InputError, match="base has 2 layers of width 9, deep has 3 of width 9"):
        check_model_set({"base": str(base), "deep": str(deep)})
    check_model_set({"base": str(base), "deep": str(deep)}, layer_maps={"deep": {0: 0}})
    with pytest.raises(
        InputError,
        match=r"could not read the tokenizer and config of "
        r"sft=.*missing",
    ):
        check_model_set({"base": str(base), "sft": str(tmp_path / "missing")})
