"""difflens: see what alignment fine-tuning changed in a language model.

The public API, by stage: load models (:func:`load_model`, :class:`ModelPair`), capture
activations and next-token statistics (:func:`capture`), and read them back
(:class:`RunStore`); concept vectors from contrastive A/B items (:func:`load_ab_dataset`,
:func:`extract_concepts`, :func:`compare_concepts`) and steering with them
(:func:`steering`, :func:`dose_response`).
"""

from difflens.analysis.concepts import (
    ConceptComparison,
    ConceptExtraction,
    ConceptVectors,
    compare_concepts,
    extract_concepts,
    load_vectors,
)
from difflens.analysis.trajectories import SphereProjection, trajectory_stats
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
from difflens.capture.abdata import ABDataset, ABItem, load_ab_dataset
from difflens.control.steering import dose_response, steering
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
    "ABDataset",
    "ABItem",
    "CaptureConfig",
    "ConceptComparison",
    "ConceptExtraction",
    "ConceptVectors",
    "InputError",
    "LayerSpec",
    "LoadedModel",
    "ModelIdentity",
    "ModelPair",
    "PairStats",
    "RunStore",
    "SphereProjection",
    "StoreError",
    "TokenStats",
    "capture",
    "compare_concepts",
    "dose_response",
    "extract_concepts",
    "find_layers",
    "load_ab_dataset",
    "load_model",
    "load_vectors",
    "pair_stats",
    "read_prompts",
    "record_layers",
    "steering",
    "token_stats",
    "trajectory_stats",
    "wrap_model",
]
