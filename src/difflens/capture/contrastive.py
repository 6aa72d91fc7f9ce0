"""Batched forward passes over both variants of contrastive A/B items, sharing their prefix.

The matching and non-matching variants of an item differ only in their last few tokens.
``forward_ab`` runs the shared prefix of a batch of items once (left-padded, asking the
model for the logits of the last position only), repeats its KV cache for the two variants,
and runs only the differing suffixes on top of it, with scoped hooks recording the residual
stream at the read positions. It returns, per item, the states of both variants at every
requested layer and the log-probability of each variant's answer tokens. ``share_prefix=False``
runs both full sequences instead (the reference the tests compare with).
"""

import dataclasses
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from difflens.capture.engine import forward_batch
from difflens.inputs.ab_items import TokenizedItem
from difflens.models.batching import accepts, cache_keyword, pad_batch, returned_cache, takes_cache
from difflens.models.hooks import record_layers
from difflens.models.loading import LoadedModel


@dataclasses.dataclass(frozen=True)
class ABBatch:
    """States and answer log-probs of a batch of items, both variants."""

    hidden: Float[Tensor, "batch 2 layer d_model"]
    """Residual stream at each variant's read position (variant 0 matches the behaviour)."""
    logp: Float[Tensor, "batch 2"]
    """log P(answer tokens after the shared prefix | prefix), per variant."""


def _batches(items: Sequence[TokenizedItem], max_tokens: int, max_items: int
             ) -> Iterator[list[int]]:
    order = sorted(range(len(items)), key=lambda i: -max(map(len, items[i].ids)))
    cur: list[int] = []
    width = 0
    for i in order:
        w = max(width, max(map(len, items[i].ids)))
        if cur and (len(cur) >= max_items or 2 * w * (len(cur) + 1) > max_tokens):
            yield cur
            cur, w = [], max(map(len, items[i].ids))
        cur.append(i)
        width = w
    if cur:
        yield cur


def _suffix_logp(first: Tensor, logits: Tensor, suffix: Sequence[int]) -> Tensor:
    """Sum of log-probs of ``suffix``: its first token from ``first``, the rest from ``logits``."""
    lp0 = torch.log_softmax(first.float(), -1)[suffix[0]]
    if len(suffix) == 1:
        return lp0
    lp = torch.log_softmax(logits[: len(suffix) - 1].float(), -1)
    tgt = torch.tensor(suffix[1:], device=lp.device)
    return lp0 + lp.gather(1, tgt[:, None]).sum()


def _gather(rec: dict[int, Tensor], items: Sequence[TokenizedItem], layers: Sequence[int],
            d_model: int, col: Callable[[TokenizedItem, int], int]) -> Tensor:
    """Rows ``2b + v`` of the recorded states at column ``col(item, v)``: [batch 2 layer d]."""
    if not layers:
        return torch.zeros(len(items), 2, 0, d_model)
    return torch.stack([
        torch.stack([rec[layer][2 * b + v, col(it, v)] for layer in layers])
        for b, it in enumerate(items) for v in (0, 1)
    ]).view(len(items), 2, len(layers), -1)


def _forward_shared(lm: LoadedModel, items: Sequence[TokenizedItem], layers: Sequence[int]
                    ) -> ABBatch:
    model = lm.model
    prefixes = [it.ids[0][: it.shared] for it in items]
    ids, mask, pos = pad_batch(prefixes, "left", lm.device)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": True}
    if accepts(model, "position_ids"):
        kwargs["position_ids"] = pos
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    first = out.logits[:, -1]
    cache = returned_cache(out)
    cache.batch_repeat_interleave(2)
    suffixes = [it.ids[v][it.shared:] for it in items for v in (0, 1)]
    s_ids, s_mask, _ = pad_batch(suffixes, "right", lm.device)
    plen = torch.tensor([it.shared for it in items for _ in (0, 1)], device=lm.device)
    s_pos = plen[:, None] + torch.arange(s_ids.shape[1], device=lm.device)[None]
    kwargs = {"input_ids": s_ids, "attention_mask": torch.cat([mask.repeat_interleave(2, 0),
                                                               s_mask], 1),
              cache_keyword(model): cache, "use_cache": True}
    if accepts(model, "position_ids"):
        kwargs["position_ids"] = s_pos
    with record_layers(lm, layers, device=lm.device) as rec:
        logits = model(**kwargs).logits
    hidden = _gather(rec, items, layers, lm.d_model, lambda it, v: it.read[v] - it.shared)
    logp = torch.stack([
        _suffix_logp(first[b], logits[2 * b + v], suffixes[2 * b + v])
        for b in range(len(items)) for v in (0, 1)
    ]).view(len(items), 2)
    return ABBatch(hidden=hidden.float(), logp=logp)


def _forward_full(lm: LoadedModel, items: Sequence[TokenizedItem], layers: Sequence[int]
                  ) -> ABBatch:
    seqs = [it.ids[v] for it in items for v in (0, 1)]
    res = forward_batch(lm, seqs, layers)
    hidden = _gather(res.hidden, items, layers, lm.d_model, lambda it, v: it.read[v])
    logps = []
    for b, it in enumerate(items):
        for v in (0, 1):
            seq = it.ids[v]
            lg = res.logits[2 * b + v]
            logps.append(_suffix_logp(lg[it.shared - 1], lg[it.shared:], seq[it.shared:]))
    return ABBatch(hidden=hidden.float(), logp=torch.stack(logps).view(len(items), 2))


def forward_ab(
    lm: LoadedModel,
    items: Sequence[TokenizedItem],
    layers: Sequence[int],
    *,
    share_prefix: bool = True,
    max_batch_tokens: int = 8192,
    batch_size: int = 32,
    on_batch: Callable[[int], None] | None = None,
) -> ABBatch:
    """States at the read positions and answer log-probs of both variants of every item.

    Args:
        lm: the model (hooks are scoped to each pass; the model is not changed).
        items: tokenized items (see ``tokenize_items``).
        layers: normalised layer indices to record.
        share_prefix: run each item's shared prefix once and reuse its KV cache for the two
            answers; needs a model that takes and returns a KV cache.
        max_batch_tokens: most padded tokens (both variants) in one pass.
        batch_size: most items in one pass.
        on_batch: called with the number of items after each batch (progress).

    Returns:
        The results in the order of ``items``.
    """
    if not items:
        raise ValueError("no items")
    hidden: list[Tensor | None] = [None] * len(items)
    logp: list[Tensor | None] = [None] * len(items)
    shared = share_prefix and takes_cache(lm.model)
    with torch.inference_mode():
        for idx in _batches(items, max_batch_tokens, batch_size):
            chunk = [items[i] for i in idx]
            res = (_forward_shared if shared else _forward_full)(lm, chunk, layers)
            for k, i in enumerate(idx):
                hidden[i], logp[i] = res.hidden[k], res.logp[k]
            if on_batch is not None:
                on_batch(len(idx))
    return ABBatch(hidden=torch.stack(hidden),  # type: ignore[arg-type]
                   logp=torch.stack(logp))  # type: ignore[arg-type]
