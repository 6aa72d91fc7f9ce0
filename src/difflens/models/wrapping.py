"""What every entry point accepts as models, wrapped on entry: a ``LoadedModel``, a
``ModelPair``, a ``ModelSet``, or plain ``transformers`` models with their
``tokenizer=`` (one model, a ``(base, tuned)`` tuple, or a ``{name: model}`` mapping in
lineage order). The user's model objects are wrapped, never changed."""

from collections.abc import Mapping
from typing import Any

import torch

from difflens.errors import InputError
from difflens.models.loading import LoadedModel, wrap_model
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair

#: What the entry points take, for their signatures.
Models = Any
"""A ``LoadedModel``, ``ModelPair``, ``ModelSet``, a plain ``transformers``
causal LM, a ``(base, tuned)`` tuple or a ``{name: model}`` mapping of either kind."""

_EXPECTED = ("a LoadedModel (difflens.load_model), a ModelPair, a ModelSet, or a plain "
             "transformers model with tokenizer=...")


def is_hf_model(obj: object) -> bool:
    """A ``transformers`` model (or any torch module with a config and input embeddings)."""
    return (isinstance(obj, torch.nn.Module) and hasattr(obj, "config")
            and hasattr(obj, "get_input_embeddings"))


def as_loaded(model: object, *, tokenizer: Any = None, name: str | None = None) -> LoadedModel:
    """``model`` as a ``LoadedModel``: as it is, or a plain ``transformers`` model wrapped
    with ``tokenizer`` (its name: ``name``, else the config's ``_name_or_path``, else its
    class)."""
    if isinstance(model, LoadedModel):
        return model
    if is_hf_model(model):
        if tokenizer is None:
            raise InputError(f"a plain {type(model).__name__} needs its tokenizer: pass "
                             f"tokenizer=AutoTokenizer.from_pretrained(...) beside it")
        cfg = model.config  # type: ignore[attr-defined]
        label = name or str(getattr(cfg, "_name_or_path", "") or "") or type(model).__name__
        return wrap_model(model, tokenizer, name=label)
    raise InputError(f"expected {_EXPECTED}; got {type(model).__name__}")


def as_models(target: Models, *, tokenizer: Any = None
              ) -> LoadedModel | ModelPair | ModelSet:
    """``target`` as a ``LoadedModel``, ``ModelPair`` or ``ModelSet``.

    Plain ``transformers`` models are wrapped with ``tokenizer`` (models of one lineage
    share it). A ``(base, tuned)`` tuple becomes a pair, a ``{name: model}`` mapping a set
    (at least two models, the first the base)."""
    if isinstance(target, LoadedModel | ModelPair | ModelSet):
        return target
    if isinstance(target, Mapping):
        return ModelSet({str(n): as_loaded(m, tokenizer=tokenizer, name=str(n))
                         for n, m in target.items()})
    if isinstance(target, tuple | list):
        if len(target) != 2:
            raise InputError(f"a tuple of models is a (base, tuned) pair; got {len(target)} "
                             f"models (give a {{name: model}} mapping for a longer lineage)")
        base, tuned = target
        return ModelPair(as_loaded(base, tokenizer=tokenizer, name="base"),
                         as_loaded(tuned, tokenizer=tokenizer, name="tuned"))
    return as_loaded(target, tokenizer=tokenizer)


def as_model_set(target: Models, *, tokenizer: Any = None) -> ModelSet:
    """``target`` as a ``ModelSet`` (a pair becomes the two-model set base, tuned)."""
    models = as_models(target, tokenizer=tokenizer)
    if isinstance(models, ModelSet):
        return models
    if isinstance(models, ModelPair):
        return ModelSet.from_pair(models)
    raise InputError("this needs at least two models: a ModelSet, a ModelPair, a (base, "
                     "tuned) tuple or a {name: model} mapping")
