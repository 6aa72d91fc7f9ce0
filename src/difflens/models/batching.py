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
