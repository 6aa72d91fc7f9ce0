"""A model's identity: the one fingerprint of its weights and its tokenizer, recorded by
every stored artifact (cache keys, manifests, summaries)."""

import dataclasses
import hashlib
import json
from collections.abc import Mapping
from typing import Any

import torch

from difflens.models.placement import offloaded_weights


@dataclasses.dataclass(frozen=True)
class ModelIdentity:
    """What a stored artifact records about the model that produced it."""

    name: str
    """The name or path the user gave (or the preset name)."""
    revision: str | None
    """Hub revision, when one was asked for."""
    weights_sha256: str
    """SHA-256 over the state dict: every tensor's name, dtype, shape and bytes, in order."""
    tokenizer_sha256: str
    """SHA-256 of the tokenizer's serialised form (vocabulary, merges, special tokens)."""
    architecture: str
    """The model class, e.g. ``LlamaForCausalLM``."""
    n_layers: int
    """Number of decoder blocks."""
    d_model: int
    """Width of the residual stream."""
    dtype: str
    """The dtype the weights were loaded in."""
    layers_path: str
    """Module path of the decoder blocks, e.g. ``model.layers``."""
    adapter: str | None = None
    """The peft adapter applied to the base (``BASE+ADAPTER``), as given; None for none."""
    adapter_sha256: str | None = None
    """SHA-256 of the adapter folder's files (None for none, or a hub adapter)."""
    adapter_merged: bool = False
    """Whether the adapter was merged into the weights (``--merge-adapters``)."""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ModelIdentity":
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def weights_sha256(model: torch.nn.Module) -> str:
    """Hash a model's state dict: names, dtypes, shapes and raw bytes, in order.

    Tensors a device map offloaded (``meta`` in the model) are read one at a time from
    accelerate's weights map, so an offloaded model hashes like the plain load of the same
    weights.
    """
    h = hashlib.sha256()
    offloaded: dict[str, tuple[Mapping[str, Any], str]] | None = None
    for name, tensor in model.state_dict().items():
        if tensor.device.type == "meta":
            offloaded = offloaded_weights(model) if offloaded is None else offloaded
            if name not in offloaded:
                raise ValueError(f"weight {name} is on the meta device and no accelerate "
                                 f"offload hook holds it, so the weights cannot be hashed; "
                                 f"load the model with load_model")
            weights, key = offloaded[name]
            tensor = weights[key]
        t = tensor.detach().to("cpu").contiguous()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def tokenizer_sha256(tokenizer: Any) -> str:
    """Hash what decides how a tokenizer maps text to ids."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is not None:
        payload = backend.to_str()
    else:
        payload = json.dumps(sorted(tokenizer.get_vocab().items()))
    special = json.dumps(
        {k: str(v) for k, v in sorted(getattr(tokenizer, "special_tokens_map", {}).items())}
    )
    return hashlib.sha256((payload + special).encode()).hexdigest()
