"""difflens: see what alignment fine-tuning changed in a language model.

The public API, by stage: load models (:func:`load_model`, :class:`ModelPair`; a
:class:`LoadSpec` records how, to load them again elsewhere), capture
activations and next-token statistics (:func:`capture`), and read them back
(:class:`RunStore`); concept vectors from contrastive A/B items (:func:`load_ab_dataset`,
:func:`extract_concepts`, :func:`compare_concepts`) and steering with them
(:func:`steering`, :class:`SteeringVector`, :func:`dose_response`); and the one
generation path (:func:`generate`, :class:`GenerationConfig`).
"""

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
from difflens.capture.concepts import (
    ConceptComparison,
    ConceptExtraction,
    ConceptVectors,
    compare_concepts,
    extract_concepts,
    load_vectors,
)
from difflens.control.steering import SteeringVector, dose_response, steering
from difflens.errors import InputError, StoreError
from difflens.inputs.ab_items import ABDataset, ABItem, load_ab_dataset
from difflens.models import (
    LayerSpec,
    LoadedModel,
    LoadSpec,
    ModelIdentity,
    ModelPair,
    find_layers,
    load_model,
    wrap_model,
)

# The organism registers its presets (``organism-base``, ``organism-tuned``) with
# ``load_model``; importing it here makes them known wherever difflens is used.
from difflens.organism import build as _organism_build  # noqa: E402,F401
from difflens.sampling.generate import Generation, GenerationConfig, generate

__version__ = "0.1.0"

__all__ = [
    "ABDataset",
    "ABItem",
    "CaptureConfig",
    "ConceptComparison",
    "ConceptExtraction",
    "ConceptVectors",
    "Generation",
    "GenerationConfig",
    "InputError",
    "LayerSpec",
    "LoadSpec",
    "LoadedModel",
    "ModelIdentity",
    "ModelPair",
    "PairStats",
    "RunStore",
    "SphereProjection",
    "SteeringVector",
    "StoreError",
    "TokenStats",
    "capture",
    "compare_concepts",
    "dose_response",
    "extract_concepts",
    "find_layers",
    "generate",
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
