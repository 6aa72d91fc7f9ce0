"""Sentence embeddings as the analyses see them: texts through an ``Embedder``
callable, then L2-normalised. Nothing here loads a model; a name (all-MiniLM-L6-v2, a hub id,
a folder) becomes an embedder in ``difflens.models.encoders.embedder``.
"""

from collections.abc import Sequence

import numpy as np
from jaxtyping import Float

from difflens._types import Embedder
from difflens.errors import InputError


def unit_rows(emb: np.ndarray) -> Float[np.ndarray, "n dim"]:
    """``emb`` as float32 with every row scaled to unit length (all-zero rows stay zero)."""
    emb = np.asarray(emb, dtype=np.float32)
    norm = np.linalg.norm(emb, axis=1, keepdims=True)
    return emb / np.where(norm > 0, norm, 1.0)


def embed(texts: Sequence[str], encoder: Embedder) -> Float[np.ndarray, "n dim"]:
    """L2-normalised float32 embeddings of ``texts`` by the callable ``encoder``."""
    if not callable(encoder):
        raise InputError(f"the analyses take an embedder (a callable texts -> array), got "
                         f"{encoder!r}; turn an encoder name into one with "
                         f"difflens.models.encoders.embedder(name)")
    if not len(texts):
        return np.zeros((0, 0), dtype=np.float32)
    return unit_rows(encoder(list(texts)))
