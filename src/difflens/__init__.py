"""difflens: see what alignment fine-tuning changed in a language model.

The public API, by stage: load models (``load_model``, ``ModelPair``; a
``LoadSpec`` records how, to load them again elsewhere), capture
activations and next-token statistics (``capture``), and read them back
(``RunStore``); concept vectors from contrastive A/B items (``load_ab_dataset``,
``extract_concepts``, ``compare_concepts``) and steering with them
(``steering``, ``SteeringVector``, ``dose_response``); the one
generation path (``generate``, ``GenerationConfig``); model sets and the full
comparison (``ModelSet``, ``compare``); the state probe (``train_probe``,
``StateProbe``); and every value with its CI (``Estimate``).

Plain ``transformers`` models are accepted wherever a loaded model is, with a
``tokenizer=`` keyword (``wrap_model`` runs on entry). Nothing is registered at import:
presets (``organism-base``, ...) resolve when they are loaded, and the heavier entries
(``compare``, ``train_probe``, ``StateProbe``) import their modules on first
use.
"""

import importlib
from typing import TYPE_CHECKING, Any

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
    ModelSet,
    find_layers,
    load_model,
    wrap_model,
)
from difflens.sampling.generate import Generation, GenerationConfig, generate

if TYPE_CHECKING:
    from difflens.analysis.bootstrap import Estimate
    from difflens.control.state_probe import StateProbe, train_probe
    from difflens.pipelines.compare import compare

#: Public names whose modules are imported on first use: name -> module.
_LAZY: dict[str, str] = {
    "Estimate": "difflens.analysis.bootstrap",
    "StateProbe": "difflens.control.state_probe",
    "train_probe": "difflens.control.state_probe",
    "compare": "difflens.pipelines.compare",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'difflens' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


__version__ = "0.1.0"

__all__ = [
    "ABDataset",
    "ABItem",
    "CaptureConfig",
    "ConceptComparison",
    "ConceptExtraction",
    "ConceptVectors",
    "Estimate",
    "Generation",
    "GenerationConfig",
    "InputError",
    "LayerSpec",
    "LoadSpec",
    "LoadedModel",
    "ModelIdentity",
    "ModelPair",
    "ModelSet",
    "PairStats",
    "RunStore",
    "SphereProjection",
    "StateProbe",
    "SteeringVector",
    "StoreError",
    "TokenStats",
    "capture",
    "compare",
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
    "train_probe",
    "trajectory_stats",
    "wrap_model",
]
