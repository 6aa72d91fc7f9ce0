"""Padding token-id lists into a batch, and asking a model's ``forward`` what it accepts."""

import inspect
from collections.abc import Sequence
from typing import Any

import torch

from difflens._types import AttentionMask, TokenIds


def pad_batch(
    seqs: Sequence[Sequence[int]], side: str, device: torch.device | str
) -> tuple[TokenIds, AttentionMask, TokenIds]:
    """Pad token-id lists into ``(ids, attention_mask, position_ids)`` on ``device``.

    ``side`` is ``"left"`` (for generation: every row ends at the last column) or
    ``"right"``. Padding ids are 0 and masked; positions count the row's own tokens.
    """
    width = max(len(s) for s in seqs)
    ids = torch.zeros((len(seqs), width), dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for b, s in enumerate(seqs):
        sl = slice(0, len(s)) if side == "right" else slice(width - len(s), width)
        ids[b, sl] = torch.tensor(s)
        mask[b, sl] = 1
    pos = (mask.cumsum(-1) - 1).clamp_min(0)
    return ids.to(device), mask.to(device), pos.to(device)


def accepts(model: Any, name: str, *, unknown: bool = True) -> bool:
    """Whether ``model.forward`` names the parameter ``name`` (``unknown`` when its
    signature cannot be read)."""
    try:
        return name in inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return unknown


def cache_keyword(model: Any) -> str:
    """The keyword under which ``model.forward`` takes a KV cache, and under which its output
    returns one: ``"cache"`` from transformers 5.24 on, ``"past_key_values"`` before (5.24
    still accepts the old name with a deprecation warning, and 5.40 removes it). Every call
    that passes or reads a cache asks here, so the rename is handled in one place."""
    return "cache" if accepts(model, "cache", unknown=False) else "past_key_values"


def takes_cache(model: Any) -> bool:
    """Whether ``model.forward`` takes a KV cache (under either name; True when its signature
    cannot be read)."""
    return accepts(model, cache_keyword(model))


def returned_cache(output: Any) -> Any:
    """The KV cache a forward pass with ``use_cache=True`` returned, under either name."""
    for name in ("cache", "past_key_values"):
        cache = output.get(name) if hasattr(output, "get") else getattr(output, name, None)
        if cache is not None:
            return cache
    raise ValueError("the model returned no KV cache; pass use_cache=True to a model that "
                     "supports one")
