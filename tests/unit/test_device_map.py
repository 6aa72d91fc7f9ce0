"""Big models: loading with a device map (disk offload on a CPU), 8/4-bit refusal, the
LoadSpec that reloads a model elsewhere, and the CLI flags that reach ``load_model``."""

import json
from typing import Any

import pandas as pd
import pytest
import torch
from safetensors.torch import load_file, save_file
from typer.testing import CliRunner

import difflens as dl
from difflens.errors import DifflensWarning
from difflens.models import loading, placement

#: Blocks 1 and 2 and the LM head offloaded to the disk; the rest on the CPU.
BLOCKS_ON_DISK = {
    "model.embed_tokens": "cpu", "model.layers.0": "cpu", "model.layers.1": "disk",
    "model.layers.2": "disk", "model.layers.3": "cpu", "model.norm": "cpu",
    "model.rotary_emb": "cpu", "lm_head": "disk",
}
#: The input embedding offloaded too: inputs must still go to its execution device.
EMBEDDING_ON_DISK = {**BLOCKS_ON_DISK, "model.embed_tokens": "disk"}


def _meta(lm: dl.LoadedModel) -> set[str]:
    return {n for n, p in lm.model.named_parameters() if p.device.type == "meta"}


@pytest.mark.parametrize("device_map", [BLOCKS_ON_DISK, EMBEDDING_ON_DISK, "auto"],
                         ids=["blocks-on-disk", "embedding-on-disk", "auto"])
def test_device_map_captures_the_same_states_as_the_plain_load(tiny_folder, tmp_path, prompts,
                                                               device_map):
    plain = dl.load_model(tiny_folder, device="cpu")
    mapped = dl.load_model(tiny_folder, device_map=device_map)
    if isinstance(device_map, dict):  # the offload really happened, and only there
        disk = tuple(m + "." for m, d in device_map.items() if d == "disk")
        names = {n for n, _ in mapped.model.named_parameters()}
        assert _meta(mapped) == {n for n in names if n.startswith(disk)} != set()
    assert mapped.device == torch.device("cpu")
    assert mapped.identity == plain.identity

    a = dl.capture(plain, prompts, store=tmp_path / "plain", layers="all")
    b = dl.capture(mapped, prompts, store=tmp_path / "mapped", layers="all")
    assert b.layers == a.layers == list(range(plain.n_layers + 1))
    for i in range(len(prompts)):
        for layer in a.layers:
            # Offloading moves weights, not arithmetic: bit-identical states.
            assert torch.equal(a.hidden(i, layer), b.hidden(i, layer)), (i, layer)
    pd.testing.assert_frame_equal(a.stats(), b.stats(), check_exact=True)
    assert b.manifest["models"] == a.manifest["models"]


def test_hooks_record_and_steer_offloaded_blocks(tiny_folder):
    plain = dl.load_model(tiny_folder, device="cpu")
    mapped = dl.load_model(tiny_folder, device_map=BLOCKS_ON_DISK)
    ids = torch.tensor([[2, 5, 7, 9, 11, 4]])
    with torch.no_grad():
        ref = plain.model(ids, output_hidden_states=True)
        layers = range(mapped.n_layers + 1)
        with dl.record_layers(mapped, layers) as rec:
            mapped.model(ids)
    for layer in layers:
        assert rec[layer].device == torch.device("cpu")
        assert torch.equal(rec[layer], ref.hidden_states[layer]), layer
    with torch.no_grad(), dl.record_layers(mapped, [0, 2], device="meta") as moved:
        mapped.model(ids)
    assert {k: (v.device.type, v.shape) for k, v in moved.items()} == {
        k: ("meta", rec[k].shape) for k in (0, 2)}

    g = torch.Generator().manual_seed(0)
    vecs = {layer: torch.randn(plain.d_model, generator=g) for layer in (0, 2, 3, 4)}
    outs = []
    for lm in (plain, mapped):  # layer 2 and 3: outputs of the offloaded blocks 1 and 2
        with torch.no_grad(), dl.steering(lm, vecs, alpha=2.0):
            outs.append(lm.model(ids).logits)
    assert not torch.allclose(outs[0], ref.logits)  # the steering did change something
    assert torch.equal(outs[0], outs[1])


def test_offloaded_weights_are_hashed_from_the_disk(tiny_folder, tiny, tmp_path):
    mapped = dl.load_model(tiny_folder, device_map=BLOCKS_ON_DISK)
    assert "model.layers.1.mlp.up_proj.weight" in _meta(mapped)
    assert mapped.identity.weights_sha256 == tiny.identity.weights_sha256
    # One changed weight in an offloaded block changes the hash.
    changed = tmp_path / "changed"
    changed.mkdir()
    for f in tiny_folder.iterdir():
        (changed / f.name).write_bytes(f.read_bytes())
    weights = load_file(changed / "model.safetensors")
    weights["model.layers.1.mlp.up_proj.weight"][0, 0] += 1e-3
    save_file(weights, changed / "model.safetensors", metadata={"format": "pt"})
    other = dl.load_model(changed, device_map=BLOCKS_ON_DISK)
    assert "model.layers.1.mlp.up_proj.weight" in _meta(other)
    assert other.identity.weights_sha256 != tiny.identity.weights_sha256
    assert other.identity.weights_sha256 == dl.load_model(changed, device="cpu").identity \
        .weights_sha256


def test_load_spec_reloads_the_same_model_from_another_directory(tiny_folder, tmp_path,
                                                                monkeypatch):
    monkeypatch.chdir(tiny_folder.parent)
    lm = dl.load_model(tiny_folder.name, device_map=json.dumps(BLOCKS_ON_DISK))
    spec = lm.spec
    assert spec == dl.LoadSpec(name_or_path=str(tiny_folder), dtype="float32",
                               device_map=BLOCKS_ON_DISK)
    data = json.loads(json.dumps(spec.to_dict()))  # what another process receives
    monkeypatch.chdir(tmp_path.parent)
    again = dl.LoadSpec.from_dict(data).load()
    assert again.spec == spec
    assert again.identity.weights_sha256 == lm.identity.weights_sha256
    assert _meta(again) == _meta(lm) != set()
    with pytest.warns(DifflensWarning, match="ignoring unknown keys future"):
        assert dl.LoadSpec.from_dict({**data, "future": 1}) == spec
    # the dtype a CPU default picked is recorded, so a GPU machine loads the same weights
    assert dl.load_model(tiny_folder, device="cpu").spec == dl.LoadSpec(
        name_or_path=str(tiny_folder), dtype="float32", device="cpu")
    assert loading.wrap_model(lm.model, lm.tokenizer, name="x").spec is None


def test_device_map_forms_and_their_errors(tmp_path):
    parse = placement.parse_device_map
    assert parse("auto") == "auto"
    assert parse(" balanced_low_0 ") == "balanced_low_0"
    assert parse("cpu") == "cpu"
    assert parse('{"model": 0, "lm_head": "disk"}') == {"model": 0, "lm_head": "disk"}
    f = tmp_path / "map.json"
    f.write_text(json.dumps(BLOCKS_ON_DISK))
    assert parse(str(f)) == BLOCKS_ON_DISK
    with pytest.raises(dl.InputError, match=r"^unknown device map 'atuo': give auto, "):
        parse("atuo")
    with pytest.raises(dl.InputError, match="is not valid JSON"):
        parse('{"model": }')
    with pytest.raises(dl.InputError, match="nope.json does not exist"):
        parse(str(tmp_path / "nope.json"))
    with pytest.raises(dl.InputError, match="entry 'lm_head': 'gpu' is not a device"):
        parse({"model": 0, "lm_head": "gpu"})
    f.write_text("[1, 2]")
    with pytest.raises(dl.InputError, match="holds no module path -> device object"):
        parse(str(f))


def test_quantization_without_bitsandbytes_or_gpu_is_one_line(tiny_folder, monkeypatch):
    monkeypatch.setattr(placement, "has_bitsandbytes", lambda: False)
    with pytest.raises(dl.InputError) as exc:
        dl.load_model(tiny_folder, quantization="8bit")
    assert str(exc.value) == ("8bit loading needs the bitsandbytes package, which runs on a "
                              "CUDA GPU: pip install bitsandbytes")
    monkeypatch.setattr(placement, "has_bitsandbytes", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(dl.InputError, match="^4bit loading runs on a CUDA GPU and the model "
                       "would load on cpu; load it without quantization here"):
        dl.load_model(tiny_folder, quantization="4bit")
    with pytest.raises(dl.InputError, match="unknown quantization '3bit': expected one of "
                       "8bit, 4bit"):
        dl.load_model(tiny_folder, quantization="3bit")


def test_cli_device_map_reaches_load_model(tiny_folder, tmp_path, monkeypatch):
    import difflens.models
    from difflens.cli.main import app

    real = difflens.models.load_model
    loaded: list[Any] = []

    def load_then_stop(name: str, **kwargs: Any) -> Any:
        loaded.append(real(name, **kwargs))
        raise dl.InputError("stopped after load_model")

    monkeypatch.setattr(difflens.models, "load_model", load_then_stop)
    prompts = tmp_path / "p.txt"
    prompts.write_text("the fox went to\n")
    dmap = tmp_path / "map.json"
    dmap.write_text(json.dumps(BLOCKS_ON_DISK))
    runner = CliRunner()
    for flag, expected in (("auto", "auto"), (str(dmap), BLOCKS_ON_DISK)):
        res = runner.invoke(app, ["trajectories", "run", "--base", str(tiny_folder),
                                  "--prompts", str(prompts), "--out", str(tmp_path / "o"),
                                  "--device-map", flag])
        assert res.exit_code == 2 and "stopped after load_model" in res.output, res.output
        assert loaded[-1].spec.device_map == expected
    assert "model.layers.1.mlp.up_proj.weight" in _meta(loaded[-1])
    res = runner.invoke(app, ["trajectories", "run", "--base", str(tiny_folder), "--prompts",
                              str(prompts), "--out", str(tmp_path / "o"), "--quantize", "2bit"])
    assert res.exit_code == 2
    assert res.stderr.strip() == "error: unknown quantization '2bit': expected one of 8bit, 4bit"


def test_unknown_dtype_in_a_spec_is_refused():
    with pytest.raises(dl.InputError, match="unknown dtype 'int8'"):
        dl.LoadSpec(name_or_path="x", dtype="int8")
    assert dl.LoadSpec(name_or_path="x", dtype="float64").dtype == "float64"
    with pytest.raises(dl.InputError, match="unknown quantization 'fp8'"):
        dl.LoadSpec(name_or_path="x", quantization="fp8")
