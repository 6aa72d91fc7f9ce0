"""The engine behind generation: KV-cached forward passes of one batch.

``generate`` and ``probability_tree`` talk to a ``Backend`` only, so a second engine (vLLM, a
sharded model on a Ray cluster) is added here, in one place. ``HFBackend`` runs a Hugging Face
causal LM with a ``DynamicCache``; it owns the one call into the model's ``forward`` with a
cache, so the keyword's name (``cache`` from transformers 5.24, ``past_key_values`` before)
is chosen once, here.
"""

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

from jaxtyping import Int
from torch import Tensor

from difflens._types import AttentionMask, NextLogits, TokenIds
from difflens.models.batching import accepts, cache_keyword
from difflens.models.loading import LoadedModel


@runtime_checkable
class Backend(Protocol):
    """KV-cached forward passes of one batch of rows."""

    def prefill(self, ids: TokenIds, mask: AttentionMask,
                positions: Int[Tensor, "batch seq"]) -> NextLogits:
        """Run the prompts (left-padded) and return the next-token logits (float32)."""
        ...

    def step(self, ids: Int[Tensor, "batch 1"], mask: AttentionMask,
             positions: Int[Tensor, "batch 1"]) -> NextLogits:
        """Feed one token per row (``mask`` covers every cached column and the new one)."""
        ...

    def crop(self, n: int) -> None:
        """Drop the last ``n`` cached positions of every row."""
        ...

    def select_rows(self, rows: Int[Tensor, " batch"]) -> None:
        """Keep (and repeat) the cached rows ``rows``, in that order."""
        ...


class HFBackend:
    """A Hugging Face causal LM with a ``DynamicCache`` (one per batch)."""

    def __init__(self, lm: LoadedModel) -> None:
        from transformers import DynamicCache

        self.model = lm.model
        self.cache = DynamicCache()
        self._cache_kw = cache_keyword(lm.model)
        self._positions = accepts(lm.model, "position_ids")
        self._keep = accepts(lm.model, "logits_to_keep", unknown=False)

    def _forward(self, ids: Tensor, mask: Tensor, positions: Tensor) -> Tensor:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                  self._cache_kw: self.cache, "use_cache": True}
        if self._positions:
            kwargs["position_ids"] = positions
        if self._keep:
            kwargs["logits_to_keep"] = 1
        return self.model(**kwargs).logits[:, -1].float()

    def prefill(self, ids: TokenIds, mask: AttentionMask,
                positions: Int[Tensor, "batch seq"]) -> NextLogits:
        return self._forward(ids, mask, positions)

    def step(self, ids: Int[Tensor, "batch 1"], mask: AttentionMask,
             positions: Int[Tensor, "batch 1"]) -> NextLogits:
        return self._forward(ids, mask, positions)

    def crop(self, n: int) -> None:
        if n > 0:
            # a negative count removes that many positions (old and new Cache APIs)
            self.cache.crop(-n)

    def select_rows(self, rows: Int[Tensor, " batch"]) -> None:
        self.cache.batch_select_indices(rows)


def backend_for(lm: LoadedModel) -> Backend:
    """The engine for ``lm`` (today always ``HFBackend``)."""
    return HFBackend(lm)


class AmplifiedBackend:
    """Logit-difference amplification: two models on the same rows, whose next-token
    logits are combined as ``l_tuned + alpha * (l_tuned - l_base)``. ``alpha = 0`` is the
    tuned model itself; a behaviour the fine-tune made a little likelier becomes much
    likelier as ``alpha`` grows. Both caches are kept in step (crop, select rows); the two
    models must share the tokenizer (a ``ModelPair`` checks it)."""

    def __init__(self, tuned: Backend, base: Backend, alpha: float) -> None:
        self.tuned, self.base, self.alpha = tuned, base, float(alpha)

    def _mix(self, tuned: NextLogits, base: NextLogits) -> NextLogits:
        return tuned + self.alpha * (tuned - base.to(tuned.device))

    def prefill(self, ids: TokenIds, mask: AttentionMask,
                positions: Int[Tensor, "batch seq"]) -> NextLogits:
        return self._mix(self.tuned.prefill(ids, mask, positions),
                         self.base.prefill(ids, mask, positions))

    def step(self, ids: Int[Tensor, "batch 1"], mask: AttentionMask,
             positions: Int[Tensor, "batch 1"]) -> NextLogits:
        return self._mix(self.tuned.step(ids, mask, positions),
                         self.base.step(ids, mask, positions))

    def crop(self, n: int) -> None:
        self.tuned.crop(n)
        self.base.crop(n)

    def select_rows(self, rows: Int[Tensor, " batch"]) -> None:
        self.tuned.select_rows(rows)
        self.base.select_rows(rows)


def amplified(tuned: LoadedModel, base: LoadedModel, alpha: float) -> Callable[[], Backend]:
    """A backend factory for ``generate(tuned, ..., backend=amplified(tuned, base, a))``:
    sampling from ``l_tuned + a * (l_tuned - l_base)`` through the one generation path."""
    return lambda: AmplifiedBackend(HFBackend(tuned), HFBackend(base), alpha)


__all__ = ["AmplifiedBackend", "Backend", "HFBackend", "amplified", "backend_for"]
