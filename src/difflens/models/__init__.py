"""Models: loading, identities, layer discovery, pairs and model sets."""

from difflens.models.identity import ModelIdentity
from difflens.models.layers import LayerSpec, find_layers
from difflens.models.loading import LoadedModel, LoadSpec, load_model, wrap_model
from difflens.models.model_set import ModelSet, check_model_set, parse_model_specs
from difflens.models.pair import ModelPair, check_same_tokenizer
from difflens.models.presets import cache_dir, known_presets, register_folder_preset

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
    "register_folder_preset",
    "wrap_model",
]
