"""The one fingerprint, and refusing a store keyed by an older difflens."""

import json

import numpy as np
import pytest
import torch

import difflens as dl
from difflens._io import fingerprint
from difflens.sampling.generate import GenerationConfig


def test_fingerprint_is_canonical_and_content_keyed():
    assert fingerprint({"a": 1, "b": [1, 2]}) == fingerprint({"b": [1, 2], "a": 1})
    assert fingerprint([1, 2]) != fingerprint([2, 1])
    assert len(fingerprint("x", length=32)) == 32
    # big tensors that differ in the middle: their str() reprs are equal, the keys are not
    a = torch.zeros(10_000)
    b = a.clone()
    b[5_000] = 1.0
    assert str(a) == str(b)
    assert fingerprint(a) != fingerprint(b)
    assert fingerprint(a) == fingerprint(torch.zeros(10_000))
    assert fingerprint(np.arange(3)) != fingerprint(np.arange(3, dtype=np.float32))
    half = torch.ones(4, dtype=torch.bfloat16)  # no numpy dtype: hashed by its bytes
    assert fingerprint(half) != fingerprint(half.float())
    assert fingerprint(half) != fingerprint(torch.full((4,), 2.0, dtype=torch.bfloat16))
    assert fingerprint(GenerationConfig(seed=1)) != fingerprint(GenerationConfig(seed=2))


def test_a_store_keyed_by_an_older_version_is_refused_in_one_line(tiny, tmp_path):
    out = tmp_path / "run"
    dl.capture(tiny, ["the fox went to the forest"], store=out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["key_version"] == 2
    del manifest["key_version"]
    manifest["key"] = "0" * 32  # an old key for the same inputs
    (out / "manifest.json").write_text(json.dumps(manifest))
    store = dl.RunStore.open(out)  # still reads
    assert len(store.prompts) == 1
    with pytest.raises(dl.StoreError, match="keyed by an older difflens"):
        dl.capture(tiny, ["the fox went to the forest"], store=out)
