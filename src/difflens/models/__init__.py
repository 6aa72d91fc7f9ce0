"""Models: loading, identities, layer discovery and pairs."""

from difflens.models.layers import LayerSpec, find_layers
from difflens.models.loading import (
    LoadedModel,
    LoadSpec,
    ModelIdentity,
    cache_dir,
    known_presets,
    load_model,
    wrap_model,
)
from difflens.models.pair import ModelPair, check_same_tokenizer

__all__ = [
    "LayerSpec",
    "LoadSpec",
    "LoadedModel",
    "ModelIdentity",
    "ModelPair",
    "cache_dir",
    "check_same_tokenizer",
    "find_layers",
    "known_presets",
    "load_model",
    "wrap_model",
]
