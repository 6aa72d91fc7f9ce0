"""jaxtyping aliases: the one vocabulary of dimension names used across difflens.

Dimension names: ``batch`` (sequences in a forward pass), ``seq`` (token positions),
``rows`` (stored token rows), ``layer``, ``d_model`` and ``vocab``.
"""

from collections.abc import Callable, Sequence

import numpy as np
from jaxtyping import Bool, Float, Int
from torch import Tensor

TokenIds = Int[Tensor, "batch seq"]
AttentionMask = Int[Tensor, "batch seq"]
Logits = Float[Tensor, "batch seq vocab"]
LogProbs = Float[Tensor, "*rows vocab"]
Hidden = Float[Tensor, "batch seq d_model"]
HiddenRows = Float[Tensor, "rows d_model"]
PerToken = Float[Tensor, "*rows"]
TokenMask = Bool[Tensor, "batch seq"]
NextLogits = Float[Tensor, "batch vocab"]
"""Next-token logits of each row of a batch (the last position)."""
Vector = Float[Tensor, " d_model"]
"""One residual-stream direction (a steering vector's layer, a probe's weight)."""
Embedder = Callable[[Sequence[str]], np.ndarray]
"""A sentence embedder: texts -> one row per text (``n dim``). The analyses take one of these,
never an encoder name; ``difflens.models.encoders.embedder`` turns a name into one."""

__all__ = [
    "AttentionMask",
    "Embedder",
    "Hidden",
    "HiddenRows",
    "LogProbs",
    "Logits",
    "NextLogits",
    "PerToken",
    "TokenIds",
    "TokenMask",
    "Vector",
]
