"""Models: loading, identities, layer discovery, pairs and model sets."""

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
from difflens.models.model_set import ModelSet, check_model_set, parse_model_specs
from difflens.models.pair import ModelPair, check_same_tokenizer

__all__ = [
    "LayerSpec",
    "LoadSpec",
    "LoadedModel",
    "ModelIdentity",
    "ModelPair",
    "ModelSet",
    "cache_dir",
    "check_model_set",
    "check_same_tokenizer",
    "find_layers",
    "known_presets",
    "load_model",
    "parse_model_specs",
    "wrap_model",
]
