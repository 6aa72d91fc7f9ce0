"""Adapters as models: ``BASE+ADAPTER`` loads a peft adapter onto its base, equal to peft's
own ``merge_and_unload`` to float tolerance; the adapter is in the identity; a missing
folder, a folder that is no adapter, and an adapter for another base are one line."""

import copy
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difflens.cli.main import app
from difflens.errors import InputError
from difflens.models.loading import load_model
from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_model

peft = pytest.importorskip("peft", reason="peft is not installed: pip install peft")


def _adapter(lm, folder: Path, *, trained: bool = True) -> Path:  # type: ignore[no-untyped-def]
    """A LoRA adapter on ``lm``'s attention (random weights when ``trained``; peft's own
    init, a zero update, otherwise), saved to ``folder``."""
    config = peft.LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                             init_lora_weights=not trained)
    torch.manual_seed(1)
    model = peft.get_peft_model(copy.deepcopy(lm.model), config)
    if trained:
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.normal_(0, 0.5)
    model.save_pretrained(folder)
    return folder


def _logits(lm) -> torch.Tensor:  # type: ignore[no-untyped-def]
    ids = lm.tokenizer(list(EXAMPLE_PROMPTS[:4]), return_tensors="pt", padding=True)
    with torch.inference_mode():
        return lm.model(**ids).logits


def test_an_adapter_spec_equals_peft_merge_and_unload(tiny_folder: Path, tmp_path: Path):
    base = load_model(tiny_folder)
    folder = _adapter(base, tmp_path / "adapter")
    reference = peft.PeftModel.from_pretrained(copy.deepcopy(base.model), str(folder))
    reference = reference.merge_and_unload().eval()
    with torch.inference_mode():
        ref = reference(**base.tokenizer(list(EXAMPLE_PROMPTS[:4]), return_tensors="pt",
                                         padding=True)).logits
    spec = f"{tiny_folder}+{folder}"
    for merge in (False, True):
        lm = load_model(spec, merge_adapters=merge)
        assert torch.allclose(_logits(lm), ref, atol=1e-5), merge
        assert not torch.allclose(_logits(lm), _logits(base), atol=1e-3)  # it did something
        assert lm.identity.adapter == str(folder) and lm.identity.adapter_merged is merge
        assert lm.identity.adapter_sha256 and lm.identity.weights_sha256 != \
            base.identity.weights_sha256
        assert type(lm.model).__name__ == type(base.model).__name__  # a plain causal LM
        assert lm.n_layers == base.n_layers
        again = lm.spec.load()  # what another process (a Ray worker) loads
        assert torch.allclose(_logits(again), _logits(lm), atol=1e-6)
        assert again.identity == lm.identity


def test_a_zero_step_adapter_is_the_base(tiny_folder: Path, tmp_path: Path):
    base = load_model(tiny_folder)
    folder = _adapter(base, tmp_path / "zero", trained=False)
    lm = load_model(f"{tiny_folder}+{folder}")
    assert torch.equal(_logits(lm), _logits(base))
    assert lm.identity.adapter_sha256 is not None


def test_bad_adapters_are_one_line(tiny_folder: Path, tmp_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        load_model(f"{tiny_folder}+{tmp_path / 'missing'}")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no adapter_config.json"):
        load_model(f"{tiny_folder}+{tmp_path / 'empty'}")
    wide = tiny_model(d_model=64)  # an adapter made for another base: other shapes
    folder = _adapter(wide, tmp_path / "wide")
    with pytest.raises(InputError, match="does not fit the base"):
        load_model(f"{tiny_folder}+{folder}")
    runner = CliRunner()
    res = runner.invoke(app, ["discover", "--base", str(tiny_folder), "--tuned",
                              f"{tiny_folder}+{tmp_path / 'missing'}", "--out",
                              str(tmp_path / "out")])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "does not exist" in lines[0]
    assert not (tmp_path / "out").exists()


def test_a_zero_step_adapter_stage_changes_nothing_in_compare(tiny_folder: Path,
                                                              tmp_path: Path):
    """base -> zero (a zero-step adapter) -> lora (a trained one), as compare takes them by
    BASE+ADAPTER: every attribution of the zero stage is 0 with a CI that includes 0; the
    trained stage's KL to the base is above 0."""
    from difflens.models.model_set import ModelSet
    from difflens.pipelines.compare import run_compare
    from difflens.pipelines.compare_config import CompareConfig, CompareInputs

    base = load_model(tiny_folder)
    zero = _adapter(base, tmp_path / "zero", trained=False)
    lora = _adapter(base, tmp_path / "lora")
    models = ModelSet({"base": base, "zero": load_model(f"{tiny_folder}+{zero}"),
                       "lora": load_model(f"{tiny_folder}+{lora}")})
    texts = tuple(EXAMPLE_PROMPTS) * 2
    inputs = CompareInputs(texts=texts, prompts=texts[:4], trajectory_prompts=texts[:4],
                           concept_items="", control_examples=(), control_prompts=(),
                           theme_prompts=(), probes="")
    run = run_compare(models, tmp_path / "out", inputs,
                      config=CompareConfig(sections=("capture",)))
    att = run.summary["attribution"]
    assert set(att) >= {"entropy", "kl_to_base"}
    for metric, stages in att.items():
        zero_stage = stages["zero"]
        assert zero_stage["value"] == 0.0 and zero_stage["ci_low"] <= 0 <= \
            zero_stage["ci_high"], (metric, zero_stage)
    assert att["kl_to_base"]["lora"]["ci_low"] > 0


def test_a_weights_folder_without_a_tokenizer_loads_on_its_base(tiny_folder: Path,
                                                                  tmp_path: Path):
    """Full weights shipped without the base's tokenizer (``config.json`` and
    ``model.safetensors``): ``BASE+FOLDER`` is those weights with the base's tokenizer,
    the same logits as the full folder; another base's weights are one line."""
    base = load_model(tiny_folder)
    tuned = copy.deepcopy(base.model)
    with torch.no_grad():
        for p in tuned.parameters():
            p.add_(0.05)
    full = tmp_path / "full"
    tuned.save_pretrained(full)
    base.tokenizer.save_pretrained(full)
    weights = tmp_path / "weights"
    tuned.save_pretrained(weights)  # no tokenizer files
    assert not any("tokenizer" in p.name for p in weights.iterdir())
    lm = load_model(f"{tiny_folder}+{weights}")
    assert torch.equal(_logits(lm), _logits(load_model(full)))
    assert not torch.allclose(_logits(lm), _logits(base), atol=1e-3)
    assert lm.identity.adapter == str(weights) and lm.identity.adapter_sha256
    assert torch.equal(_logits(lm.spec.load()), _logits(lm))
    other = tmp_path / "other"
    tiny_model(d_model=64).model.save_pretrained(other)
    with pytest.raises(InputError, match="do not fit the base"):
        load_model(f"{tiny_folder}+{other}")
