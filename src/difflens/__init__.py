"""difflens: see what alignment fine-tuning changed in a language model.

The public API, by stage: load models (:func:`load_model`, :class:`ModelPair`), capture
activations and next-token statistics (:func:`capture`), and read them back
(:class:`RunStore`).
"""

from difflens.capture import (
    CaptureConfig,
    PairStats,
    RunStore,
    TokenStats,
    capture,
    pair_stats,
    read_prompts,
    record_layers,
    token_stats,
)
from difflens.errors import InputError, StoreError
from difflens.models import (
    LayerSpec,
    LoadedModel,
    ModelIdentity,
    ModelPair,
    find_layers,
    load_model,
    wrap_model,
)

__version__ = "0.1.0"

__all__ = [
    "CaptureConfig",
    "InputError",
    "LayerSpec",
    "LoadedModel",
    "ModelIdentity",
    "ModelPair",
    "PairStats",
    "RunStore",
    "StoreError",
    "TokenStats",
    "capture",
    "find_layers",
    "load_model",
    "pair_stats",
    "read_prompts",
    "record_layers",
    "token_stats",
    "wrap_model",
]
