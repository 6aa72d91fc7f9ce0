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


def _chunks(n_rows: int, vocab: int, models: int = 1) -> list[slice]:
    """Row slices whose float32 scratch (4 copies of [rows, vocab] per model) fits CHUNK_BYTES."""
    step = max(1, CHUNK_BYTES // (4 * 4 * max(vocab, 1) * models))
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


def next_token_stats(
    logits: dict[str, Float[Tensor, "rows vocab"]],
    next_ids: Int[Tensor, " rows"],
    top_k: int = 5,
) -> tuple[dict[str, TokenStats], PairStats | None]:
    """Statistics of one or two models over the same rows, one log-softmax per model.

    Args:
        logits: label -> next-token logits (``rows`` positions each). With the labels
            ``base`` and ``tuned``, the pair statistics are computed too.
        next_ids: the id that follows each position, or -1 where none does.
        top_k: how many top tokens to keep.

    Returns:
        ``(per_model, pair)``: ``TokenStats`` per label, and ``PairStats`` (or
        ``None`` without a base/tuned pair).
    """
    labels = list(logits)
    n, vocab = logits[labels[0]].shape
    for label, lg in logits.items():
        if lg.shape != (n, vocab):
            raise ValueError(f"logit shapes differ: {labels[0]} {(n, vocab)}, {label} "
                             f"{tuple(lg.shape)}")
    k = min(top_k, vocab)
    ent = {m: torch.empty(n) for m in labels}
    lp_next = {m: torch.full((n,), float("nan")) for m in labels}
    top_ids = {m: torch.empty((n, k), dtype=torch.long) for m in labels}
    top_lp = {m: torch.empty((n, k)) for m in labels}
    is_pair = "base" in logits and "tuned" in logits
    kl_tb, kl_bt = torch.empty(n), torch.empty(n)
    agree = torch.empty(n, dtype=torch.long)
    nxt_all = next_ids.to(logits[labels[0]].device)
    for sl in _chunks(n, vocab, len(labels)):
        nxt = nxt_all[sl]
        has = nxt >= 0
        rows = torch.arange(nxt.shape[0], device=nxt.device)[has]
        lps, probs = {}, {}
        for m in labels:
            # the models of a pair may take their inputs on different devices
            lp = log_probs(logits[m][sl].to(nxt.device))
            p = lp.exp()
            lps[m], probs[m] = lp, p
            ent[m][sl] = -(p * lp).sum(-1).cpu()
            lp_next[m][sl][has.cpu()] = lp[rows, nxt[has]].cpu()
            v, i = lp.topk(k, dim=-1)
            top_ids[m][sl], top_lp[m][sl] = i.cpu(), v.cpu()
        if is_pair:
            diff = lps["tuned"] - lps["base"]
            kl_tb[sl] = (probs["tuned"] * diff).sum(-1).clamp_min(0).cpu()
            kl_bt[sl] = (-(probs["base"] * diff).sum(-1)).clamp_min(0).cpu()
            agree[sl] = (lps["base"].argmax(-1) == lps["tuned"].argmax(-1)).long().cpu()
    per_model = {m: TokenStats(entropy=ent[m], logprob_next=lp_next[m], topk_ids=top_ids[m],
                               topk_logprobs=top_lp[m]) for m in labels}
    if not is_pair:
        return per_model, None
    return per_model, PairStats(kl_tuned_base=kl_tb, kl_base_tuned=kl_bt, top1_agree=agree)


def token_stats(
    logits: Float[Tensor, "rows vocab"], next_ids: Int[Tensor, " rows"], top_k: int = 5
) -> TokenStats:
    """Entropy, log-prob of the actual next token (``next_ids < 0``: none) and top-k."""
    return next_token_stats({"model": logits}, next_ids, top_k)[0]["model"]


def pair_stats(
    base_logits: Float[Tensor, "rows vocab"], tuned_logits: Float[Tensor, "rows vocab"]
) -> PairStats:
    """KL in both directions and top-1 agreement, from the full distributions."""
    if base_logits.shape != tuned_logits.shape:
        raise ValueError(
            f"logit shapes differ: base {tuple(base_logits.shape)}, tuned "
            f"{tuple(tuned_logits.shape)}"
        )
    none = torch.full((base_logits.shape[0],), -1, dtype=torch.long)
    pair = next_token_stats({"base": base_logits, "tuned": tuned_logits}, none, 1)[1]
    assert pair is not None
    return pair
