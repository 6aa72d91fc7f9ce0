"""Steering: add ``alpha * v`` to the residual stream at one layer, inside a scoped hook.

Layer numbering is the capture numbering: layer 0 is the input of block 0, layer ``i`` the
output of block ``i - 1`` and the last layer the input of the LM head. The vector is added
at every position a forward pass processes, so generating with a KV cache gives the same
result as recomputing the whole sequence: each position is steered once, when it is first
computed. The hook is removed on exit, also after an exception; the model's weights are
never touched.
"""

import dataclasses
import functools
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from typing import Any

import torch
from torch import Tensor

from difflens._types import Vector
from difflens.capture.concepts import ConceptVectors
from difflens.errors import InputError
from difflens.models.hooks import register_residual_hook
from difflens.models.loading import LoadedModel
from difflens.sampling.generate import GenerationConfig
from difflens.sampling.generate import generate as _generate


def _add(hidden: Tensor, delta: Tensor) -> Tensor:
    # a device map may run this layer on another device than the inputs
    return hidden + delta.to(hidden.device, hidden.dtype)


@contextmanager
def steering(lm: LoadedModel, vectors: Mapping[int, Vector],
             alpha: float = 1.0) -> Iterator[None]:
    """Add ``alpha * vectors[layer]`` to the residual stream at each given layer.

    Args:
        lm: the model to steer (its weights are not changed).
        vectors: captured layer -> vector of size ``d_model``.
        alpha: the multiplier (0 changes nothing, bit for bit).

    Example:
        >>> with steering(lm, {6: v}, alpha=4.0):
        ...     texts = greedy_texts(lm, ["Once upon a time"])
    """
    handles = []
    try:
        for layer, vec in vectors.items():
            vec = torch.as_tensor(vec)
            if vec.ndim != 1 or vec.shape[0] != lm.d_model:
                raise InputError(f"a steering vector for {lm.identity.name} must have "
                                 f"{lm.d_model} entries, got shape {tuple(vec.shape)}")
            delta = (alpha * vec.float()).to(lm.device)
            handles.append(register_residual_hook(lm, layer, functools.partial(_add, delta=delta)))
        yield
    finally:
        for h in handles:
            h.remove()


@dataclasses.dataclass(frozen=True, eq=False)
class SteeringVector:
    """One vector per captured layer and where it came from; ``with v.apply(lm, alpha):``
    adds ``alpha * v[layer]`` at each of its layers inside a scoped hook.

    Supports ``+``, ``-`` (same layers), unary ``-``, scalar ``*`` and ``/``.
    """

    vectors: dict[int, Vector]
    """Captured layer -> vector."""
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)
    """Models, items, position, method: what made the vector."""

    def __post_init__(self) -> None:
        if not self.vectors:
            raise InputError("a steering vector needs at least one layer")
        shapes = [tuple(torch.as_tensor(v).shape) for v in self.vectors.values()]
        if len(set(shapes)) != 1 or len(shapes[0]) != 1:
            raise InputError(f"a steering vector has one 1-D vector per layer, all of one "
                             f"width; got shapes {shapes}")

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.vectors))

    def __getitem__(self, layer: int) -> Vector:
        if layer not in self.vectors:
            raise InputError(f"this steering vector has no layer {layer} (layers: "
                             f"{list(self.layers)})")
        return self.vectors[layer]

    def apply(self, lm: LoadedModel, alpha: float = 1.0) -> AbstractContextManager[None]:
        """Scoped steering of ``lm`` (its weights are never changed)."""
        return steering(lm, self.vectors, alpha)

    def unit(self) -> "SteeringVector":
        """Each layer's vector scaled to norm 1."""
        return self._map(lambda v: v / v.norm().clamp_min(1e-12), "unit")

    def _map(self, fn: Callable[[Tensor], Tensor], what: str) -> "SteeringVector":
        op = f"{what}({self.provenance.get('op', 'v')})"
        return SteeringVector({k: fn(torch.as_tensor(v).float()) for k, v in self.vectors.items()},
                              {**self.provenance, "op": op})

    def _combine(self, other: "SteeringVector", op: Callable[[Tensor, Tensor], Tensor],
                 sym: str) -> "SteeringVector":
        if set(self.vectors) != set(other.vectors):
            raise InputError(f"cannot combine steering vectors of layers {list(self.layers)} "
                             f"and {list(other.layers)}")
        return SteeringVector(
            {k: op(torch.as_tensor(v).float(), torch.as_tensor(other.vectors[k]).float())
             for k, v in self.vectors.items()},
            {"op": f"({self.provenance.get('op', 'a')} {sym} {other.provenance.get('op', 'b')})",
             "operands": [self.provenance, other.provenance]})

    def __add__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, torch.add, "+")

    def __sub__(self, other: "SteeringVector") -> "SteeringVector":
        return self._combine(other, torch.sub, "-")

    def __neg__(self) -> "SteeringVector":
        return self._map(torch.neg, "-")

    def __mul__(self, k: float | int) -> "SteeringVector":
        return self._map(lambda v: v * float(k), f"{k} *")

    __rmul__ = __mul__

    def __truediv__(self, k: float | int) -> "SteeringVector":
        return self._map(lambda v: v / float(k), f"1/{k} *")

    @classmethod
    def from_concepts(cls, concepts: ConceptVectors, label: str = "model",
                      layers: Sequence[int] | None = None) -> "SteeringVector":
        """The vectors ``concepts`` holds for model ``label`` (default: every layer)."""
        if label not in concepts.vectors:
            raise InputError(f"no vectors for model {label!r}; these are for "
                             f"{sorted(concepts.vectors)}")
        chosen = concepts.layers if layers is None else tuple(layers)
        return cls({layer: concepts.layer(label, layer) for layer in chosen},
                   {"model": concepts.models.get(label, {}), "n_items": concepts.n_items,
                    "position": concepts.position, "method": concepts.method,
                    "dataset": concepts.dataset,
                    "module_paths": dict(zip(concepts.layers, concepts.module_paths[label],
                                             strict=True))})


def greedy_texts(lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 30,
                 chat: bool = False, batch_size: int = 32) -> list[str]:
    """Greedy continuations of ``prompts`` in batches of ``batch_size``, as text without the
    prompt.

    Use inside ``steering`` to get steered generations.
    """
    gen = _generate(lm, prompts, GenerationConfig(max_new_tokens=max_new_tokens,
                                                  temperature=0.0, batch_size=batch_size,
                                                  chat=chat))
    return gen.texts(lm.tokenizer)


def generate(lm: LoadedModel, prompts: Sequence[str], *, max_new_tokens: int = 30,
             chat: bool = False) -> list[str]:
    """Deprecated (0.1 name): ``greedy_texts``; ``difflens.generate`` is the full
    generation path."""
    warnings.warn("difflens.control.generate is deprecated; use greedy_texts (or "
                  "difflens.generate)", DeprecationWarning, stacklevel=2)
    return greedy_texts(lm, prompts, max_new_tokens=max_new_tokens, chat=chat)


def dose_response(
    lm: LoadedModel,
    items: Sequence[Any],
    vectors: Mapping[int, Vector],
    alphas: Sequence[float],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    batch_size: int = 32,
    on_step: Callable[[], None] | None = None,
) -> list[dict[str, Any]]:
    """P(matching answer) of A/B items under steering, per layer and multiplier.

    Args:
        lm: the model.
        items: tokenized items (``tokenize_items``), usually
            the held-out ones.
        vectors: layer -> steering vector; each layer is steered on its own.
        alphas: multipliers of the vector.
        n_boot: bootstrap resamples for the CI over items.
        seed: bootstrap seed.
        batch_size: items per forward pass.
        on_step: called after each (layer, alpha).

    Returns:
        Rows ``{value, ci_low, ci_high, n, resampled, layer, alpha}``: ``value`` is
        P(matching), normalised over the two answers and averaged over items, with a
        percentile bootstrap 95% CI over the items (the summaries' one spelling of an
        estimate, with its layer and multiplier beside it).
    """
    from difflens.analysis.bootstrap import bootstrap_mean
    from difflens.capture.contrastive import forward_ab

    rows = []
    for layer, vec in vectors.items():
        for alpha in alphas:
            with steering(lm, {layer: vec}, alpha):
                res = forward_ab(lm, items, [], batch_size=batch_size)
            lp = res.logp.double()
            p = torch.sigmoid(lp[:, 0] - lp[:, 1]).numpy()
            est = bootstrap_mean(p, n_boot=n_boot, seed=seed, resampled="items")
            rows.append({**est.to_json(), "layer": int(layer), "alpha": float(alpha)})
            if on_step is not None:
                on_step()
    return rows
