"""The public API: what ``import difflens`` does (and does not do), the top-level names, and
plain ``transformers`` models accepted with ``tokenizer=`` at every entry point."""

import copy
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import difflens as dl
from difflens.inputs.labelled import LabelledText
from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_model, tiny_pair


def test_import_builds_no_preset_table_and_imports_no_organism():
    code = ("import sys, difflens\n"
            "assert 'difflens.organism.build' not in sys.modules\n"
            "from difflens.models.presets import known_presets\n"
            "assert 'organism-base' in known_presets() and 'organism-rl' in known_presets()\n"
            "assert 'difflens.organism.build' not in sys.modules\n"
            "assert 'difflens.pipelines.compare' not in sys.modules\n")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr


def test_top_level_names():
    from difflens.analysis.bootstrap import Estimate
    from difflens.control.state_probe import StateProbe, train_probe
    from difflens.models.model_set import ModelSet
    from difflens.pipelines.compare import compare

    assert dl.ModelSet is ModelSet and dl.compare is compare and dl.Estimate is Estimate
    assert dl.train_probe is train_probe and dl.StateProbe is StateProbe
    assert set(dl.__all__) <= set(dir(dl))
    with pytest.raises(AttributeError, match="has no attribute 'nope'"):
        dl.nope  # noqa: B018


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_capture_takes_a_plain_hf_model_and_its_tokenizer(tmp_path):
    lm = tiny_model(0)
    hf_model, hf_tokenizer = lm.model, lm.tokenizer
    before, training = _state(hf_model), hf_model.training
    prompts = list(EXAMPLE_PROMPTS[:3])
    store = dl.capture(hf_model, prompts, store=tmp_path / "plain", tokenizer=hf_tokenizer)
    wrapped = dl.capture(lm, prompts, store=tmp_path / "wrapped")
    pd.testing.assert_frame_equal(store.stats(), wrapped.stats())
    assert torch.equal(store.hidden(0, 2), wrapped.hidden(0, 2))
    # the user's model is read, never changed: same weights, mode, and no hook left on it
    after = hf_model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert hf_model.training == training
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in hf_model.modules())


def test_a_plain_model_without_its_tokenizer_is_one_line(tmp_path):
    hf_model = tiny_model(0).model
    with pytest.raises(dl.InputError) as exc:
        dl.capture(hf_model, ["the fox"], store=tmp_path / "x")
    assert str(exc.value) == ("a plain LlamaForCausalLM needs its tokenizer: pass "
                              "tokenizer=AutoTokenizer.from_pretrained(...) beside it")
    with pytest.raises(dl.InputError, match="a tuple of models is a \\(base, tuned\\) pair"):
        dl.capture((hf_model,) * 3, ["the fox"], store=tmp_path / "y")
    with pytest.raises(dl.InputError, match="expected a LoadedModel"):
        dl.capture("not a model", ["the fox"], store=tmp_path / "z")  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def plain_pair():
    pair = tiny_pair(0, planted_block=2, scale=3.0)
    return pair, (pair.base.model, pair.tuned.model), pair.base.tokenizer


def test_collapse_takes_plain_models(plain_pair, tmp_path):
    from difflens.pipelines.collapse import CollapseConfig, run_collapse

    pair, plain, tok = plain_pair
    cfg = CollapseConfig(steps=("probes",), probe_names=("d6",), k_samples=2, max_new_tokens=4)
    a = run_collapse(plain, (), tmp_path / "plain", cfg, index=False, tokenizer=tok)
    b = run_collapse(pair, (), tmp_path / "pair", cfg, index=False)
    # as JSON: a rank correlation of a constant answer is NaN in both, and NaN != NaN
    assert json.dumps(a.summary()["probes"], sort_keys=True) == json.dumps(
        b.summary()["probes"], sort_keys=True)
    assert a.estimate("probes.d6.tuned.tvd_uniform") == b.estimate(
        "probes.d6.tuned.tvd_uniform")


def test_trajectories_take_plain_models(plain_pair, tmp_path):
    from difflens.pipelines.trajectories import TrajectoriesConfig, run_trajectories

    pair, plain, tok = plain_pair
    prompts = ["the fox went to the forest", "once upon a time there was a fox"]
    cfg = TrajectoriesConfig(continuations=1, max_new_tokens=4, method="pca", min_count=1)
    a = run_trajectories(plain, prompts, tmp_path / "plain", cfg, tokenizer=tok, index=False)
    b = run_trajectories(pair, prompts, tmp_path / "pair", cfg, index=False)
    pd.testing.assert_frame_equal(a.table, b.table)


def test_compare_takes_a_mapping_of_plain_models(plain_pair, tmp_path):
    pair, (base, tuned), tok = plain_pair
    texts = tuple(EXAMPLE_PROMPTS)
    from difflens.pipelines.compare_config import CompareConfig, CompareInputs

    inputs = CompareInputs(texts=texts, prompts=texts[:2], trajectory_prompts=texts[:2],
                           concept_items="", control_examples=(), control_prompts=(),
                           theme_prompts=())
    cfg = CompareConfig(sections=("capture",))
    run = dl.compare({"base": base, "dpo": tuned}, tmp_path / "plain", inputs=inputs,
                     config=cfg, tokenizer=tok)
    ref = dl.compare(dl.ModelSet({"base": pair.base, "dpo": pair.tuned}), tmp_path / "set",
                     inputs=inputs, config=cfg)
    assert run.summary["attribution"] == ref.summary["attribution"]
    assert [m["name"] for m in run.summary["models"]] == ["base", "dpo"]
    assert (tmp_path / "plain" / "index.html").is_file()
    stored = json.loads((tmp_path / "plain" / "summary.json").read_text())
    assert stored["models"][1]["identity"]["weights_sha256"] == \
        pair.tuned.identity.weights_sha256


def test_probe_training_takes_a_plain_model(tmp_path):
    from difflens.control.state_probe import ProbeConfig
    from difflens.pipelines.control import run_probe_training

    lm = tiny_model(0)
    rng = np.random.default_rng(0)
    words = sorted({w for p in EXAMPLE_PROMPTS for w in p.split()})
    examples = []
    for i in range(40):
        ws = rng.choice(words, 8)
        examples.append(LabelledText(
            segments=tuple(((" " if j else "") + w, int(w in ("fox", "forest")))
                           for j, w in enumerate(ws)), group=i))
    cfg = ProbeConfig(n_boot=50)  # the CIs are not compared: few resamples
    fit, _ = run_probe_training(copy.deepcopy(lm.model), examples, tmp_path / "plain",
                                config=cfg, tokenizer=lm.tokenizer, index=False)
    ref, _ = run_probe_training(lm, examples, tmp_path / "ref", config=cfg, index=False)
    assert fit.probe.layer == ref.probe.layer
    torch.testing.assert_close(fit.probe.weight, ref.probe.weight)


def test_concepts_take_plain_models(plain_pair, tmp_path):
    from difflens.inputs.ab_items import ABDataset, ABItem
    from difflens.pipelines.concepts import ConceptsConfig, run_concepts

    pair, plain, tok = plain_pair
    rng = np.random.default_rng(0)
    words = sorted({w for p in EXAMPLE_PROMPTS for w in p.split()})
    items = tuple(ABItem(prompt=" ".join(rng.choice(words, 5)), matching=" fox",
                         not_matching=" forest", source=f"synthetic:{i}") for i in range(16))
    ds = ABDataset(name="planted", path="synthetic", format="plain", items=items)
    cfg = ConceptsConfig(steps=("extract", "compare"), n_boot=50)
    a = run_concepts(plain, ds, tmp_path / "plain", cfg, tokenizer=tok, index=False)
    b = run_concepts(pair, ds, tmp_path / "pair", cfg, index=False)
    assert a.summary()["cosine_by_layer"] == b.summary()["cosine_by_layer"]


@pytest.mark.parametrize("entry", ["themes", "control"])
def test_every_pipeline_entry_wraps_plain_models(entry, tmp_path):
    """The entries whose full runs are tested elsewhere wrap what they are given first: a
    plain model without its tokenizer is refused by the wrapping, before anything runs."""
    from difflens.control.state_probe import StateProbe
    from difflens.pipelines.control import run_control_evaluation
    from difflens.pipelines.theme_config import ThemesConfig
    from difflens.pipelines.themes import run_themes

    hf_model = tiny_model(0).model
    probe = StateProbe(weight=torch.zeros(32), bias=0.0, layer=1, threshold=0.5,
                       state_norm=1.0, model={})
    calls = {
        "themes": lambda: run_themes(hf_model, ("the fox",), tmp_path / "t", ThemesConfig()),
        "control": lambda: run_control_evaluation(hf_model, probe, ["the fox"], tmp_path / "c"),
    }
    with pytest.raises(dl.InputError, match="needs its tokenizer"):
        calls[entry]()
    assert not any(Path(tmp_path).iterdir())
