"""Per-token next-token statistics, computed from full distributions.

Pure functions over rows of logits (one row per token position). Everything is computed
in float32 in row chunks, so memory stays bounded for large vocabularies.
"""

import dataclasses

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Bytes of float32 scratch one chunk of rows may use (a few copies of [rows, vocab]).
CHUNK_BYTES = 64 * 2**20


def _chunks(n_rows: int, vocab: int) -> list[slice]:
    step = max(1, CHUNK_BYTES // (4 * 4 * max(vocab, 1)))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def log_probs(logits: Float[Tensor, "rows vocab"]) -> Float[Tensor, "rows vocab"]:
    """``log_softmax`` in float32."""
    return torch.log_softmax(logits.float(), dim=-1)


@dataclasses.dataclass(frozen=True)
class TokenStats:
    """Next-token statistics of one model at each row (token position)."""

    entropy: Float[Tensor, " rows"]
    """Entropy in nats of the next-token distribution."""
    logprob_next: Float[Tensor, " rows"]
    """Log-prob of the token that actually follows (NaN where none follows)."""
    topk_ids: Int[Tensor, "rows k"]
    topk_logprobs: Float[Tensor, "rows k"]


@dataclasses.dataclass(frozen=True)
class PairStats:
    """Divergence between two models' next-token distributions at each row."""

    kl_tuned_base: Float[Tensor, " rows"]
    """KL(tuned ‖ base) in nats."""
    kl_base_tuned: Float[Tensor, " rows"]
    """KL(base ‖ tuned) in nats."""
    top1_agree: Int[Tensor, " rows"]
    """1 where both models' most likely next token is the same."""


def token_stats(
    logits: Float[Tensor, "rows vocab"], next_ids: Int[Tensor, " rows"], top_k: int = 5
) -> TokenStats:
    """Entropy, log-prob of the actual next token (``next_ids < 0``: none) and top-k.

    Args:
        logits: next-token logits, one row per position.
        next_ids: the id that follows each position, or -1 where none does.
        top_k: how many top tokens to keep.
    """
    n, vocab = logits.shape
    k = min(top_k, vocab)
    ent = torch.empty(n)
    lp_next = torch.full((n,), float("nan"))
    top_ids = torch.empty((n, k), dtype=torch.long)
    top_lp = torch.empty((n, k))
    for sl in _chunks(n, vocab):
        lp = log_probs(logits[sl]).cpu()
        ent[sl] = -(lp.exp() * lp).sum(-1)
        nxt = next_ids[sl].cpu()
        has = nxt >= 0
        rows = torch.arange(lp.shape[0])[has]
        lp_next[sl][has] = lp[rows, nxt[has]]
        v, i = lp.topk(k, dim=-1)
        top_ids[sl], top_lp[sl] = i, v
    return TokenStats(entropy=ent, logprob_next=lp_next, topk_ids=top_ids, topk_logprobs=top_lp)


def pair_stats(
    base_logits: Float[Tensor, "rows vocab"], tuned_logits: Float[Tensor, "rows vocab"]
) -> PairStats:
    """KL in both directions and top-1 agreement, from the full distributions."""
    if base_logits.shape != tuned_logits.shape:
        raise ValueError(
            f"logit shapes differ: base {tuple(base_logits.shape)}, tuned "
            f"{tuple(tuned_logits.shape)}"
        )
    n, vocab = base_logits.shape
    kl_tb, kl_bt = torch.empty(n), torch.empty(n)
    agree = torch.empty(n, dtype=torch.long)
    for sl in _chunks(n, vocab):
        lb, lt = log_probs(base_logits[sl]), log_probs(tuned_logits[sl])
        diff = lt - lb
        kl_tb[sl] = (lt.exp() * diff).sum(-1).clamp_min(0).cpu()
        kl_bt[sl] = (lb.exp() * -diff).sum(-1).clamp_min(0).cpu()
        agree[sl] = (lb.argmax(-1) == lt.argmax(-1)).long().cpu()
    return PairStats(kl_tuned_base=kl_tb, kl_base_tuned=kl_bt, top1_agree=agree)
