"""Per-token next-token statistics, computed from full distributions.

Pure functions over rows of logits (one row per token position). Everything is computed
in float32 in row chunks, so memory stays bounded for large vocabularies.
"""

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from jaxtyping import Float, Int
from torch import Tensor

#: Bytes of float32 scratch one chunk of rows may use (a few copies of [rows, vocab]).
CHUNK_BYTES = 64 * 2**20


def _chunks(n_rows: int, vocab: int, models: int = 1) -> list[slice]:
    """Row slices whose float32 scratch (4 copies of [rows, vocab] per model) fits CHUNK_BYTES.

    The chunks are part of the result: a row's reductions may be split over threads or
    blocks differently when it shares its chunk with other rows (a large vocabulary, more
    than one thread), so the stored bits depend on them; keep them as they are."""
    step = max(1, CHUNK_BYTES // (4 * 4 * max(vocab, 1) * models))
    return [slice(i, min(i + step, n_rows)) for i in range(0, n_rows, step)]


def log_probs(logits: Float[Tensor, "rows vocab"],
              out: Float[Tensor, "rows vocab"] | None = None) -> Float[Tensor, "rows vocab"]:
    """``log_softmax`` in float32 (into ``out`` when given)."""
    if out is None:
        return torch.log_softmax(logits.float(), dim=-1)
    return torch.log_softmax(logits.float(), dim=-1, out=out)


class Scratch:
    """Float32 ``[rows, vocab]`` buffers that ``set_token_stats`` reuses from chunk to
    chunk and, when the caller keeps one, from call to call. On a CPU a fresh buffer of
    that size is new memory each time, and its page faults cost more than the arithmetic
    (about 2x the whole statistics on a 8k vocabulary); the values are the same either
    way (the same kernels write into them)."""

    def __init__(self) -> None:
        self._bufs: dict[tuple[str, torch.device], Tensor] = {}

    def get(self, name: str, rows: int, vocab: int, device: torch.device) -> Tensor:
        """A contiguous ``[rows, vocab]`` float32 buffer named ``name`` on ``device``."""
        buf = self._bufs.get((name, device))
        if buf is None or buf.shape[0] < rows or buf.shape[1] != vocab:
            buf = torch.empty((rows, vocab), device=device)
            self._bufs[(name, device)] = buf
        return buf[:rows]


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
    is_pair = "base" in logits and "tuned" in logits
    per_model, pairs = set_token_stats(logits, next_ids, top_k,
                                       pairs=[("base", "tuned")] if is_pair else [])
    return per_model, pairs.get(("base", "tuned"))


def set_token_stats(
    logits: Mapping[str, Float[Tensor, "rows vocab"]],
    next_ids: Int[Tensor, " rows"],
    top_k: int = 5,
    *,
    pairs: Sequence[tuple[str, str]] = (),
    scratch: Scratch | None = None,
) -> tuple[dict[str, TokenStats], dict[tuple[str, str], PairStats]]:
    """Statistics of any number of models over the same rows, and of the ``pairs`` among
    them, with one log-softmax per model and row.

    Every statistic is computed from the full next-token distributions (the whole
    vocabulary, in float32), chunk by chunk, on the device the first model's logits are
    on; the results come back to the CPU once, at the end.

    Args:
        logits: label -> next-token logits (``rows`` positions each).
        next_ids: the id that follows each position, or -1 where none does.
        top_k: how many top tokens to keep.
        pairs: ``(a, b)`` label pairs; for each, ``a`` plays the base and ``b`` the tuned
            model of ``PairStats`` (``kl_tuned_base`` is KL(b ‖ a)).
        scratch: buffers to reuse across calls (a capture keeps one); default: fresh ones,
            reused across this call's chunks.

    Returns:
        ``(per_model, per_pair)``: ``TokenStats`` per label, ``PairStats`` per pair.
    """
    labels = list(logits)
    if not labels:
        raise ValueError("no logits given")
    n, vocab = logits[labels[0]].shape
    for label, lg in logits.items():
        if lg.shape != (n, vocab):
            raise ValueError(f"logit shapes differ: {labels[0]} {(n, vocab)}, {label} "
                             f"{tuple(lg.shape)}")
    for a, b in pairs:
        if a not in logits or b not in logits:
            raise ValueError(f"pair ({a!r}, {b!r}) names a model without logits; have {labels}")
    k = min(top_k, vocab)
    device = logits[labels[0]].device
    nxt_all = next_ids.to(device)
    # results stay on the device until the end: one copy to the CPU, not one per chunk
    ent = {m: torch.empty(n, device=device) for m in labels}
    lp_next = {m: torch.full((n,), float("nan"), device=device) for m in labels}
    top_ids = {m: torch.empty((n, k), dtype=torch.long, device=device) for m in labels}
    top_lp = {m: torch.empty((n, k), device=device) for m in labels}
    kl_ba = {pr: torch.empty(n, device=device) for pr in pairs}
    kl_ab = {pr: torch.empty(n, device=device) for pr in pairs}
    agree = {pr: torch.empty(n, dtype=torch.long, device=device) for pr in pairs}
    in_pairs = {m for pr in pairs for m in pr}
    scratch = Scratch() if scratch is None else scratch
    for sl in _chunks(n, vocab, len(labels)):
        nxt = nxt_all[sl]
        has = nxt >= 0
        rows = torch.arange(nxt.shape[0], device=device)[has]
        size = nxt.shape[0]
        prod = scratch.get("prod", size, vocab, device)
        lps, probs, top1 = {}, {}, {}
        for m in labels:
            # the models of a set may take their inputs on different devices
            lp = log_probs(logits[m][sl].to(device), out=scratch.get(f"lp:{m}", size, vocab,
                                                                     device))
            p = torch.exp(lp, out=scratch.get(f"p:{m}", size, vocab, device))
            ent[m][sl] = -torch.mul(p, lp, out=prod).sum(-1)
            lp_next[m][sl][has] = lp[rows, nxt[has]]
            v, i = lp.topk(k, dim=-1)
            top_ids[m][sl], top_lp[m][sl] = i, v
            if m in in_pairs:
                lps[m], probs[m], top1[m] = lp, p, lp.argmax(-1)
        for a, b in pairs:
            diff = torch.sub(lps[b], lps[a], out=scratch.get("diff", size, vocab, device))
            kl_ba[(a, b)][sl] = torch.mul(probs[b], diff, out=prod).sum(-1).clamp_min(0)
            kl_ab[(a, b)][sl] = (-torch.mul(probs[a], diff, out=prod).sum(-1)).clamp_min(0)
            agree[(a, b)][sl] = (top1[a] == top1[b]).long()
    per_model = {m: TokenStats(entropy=ent[m].cpu(), logprob_next=lp_next[m].cpu(),
                               topk_ids=top_ids[m].cpu(), topk_logprobs=top_lp[m].cpu())
                 for m in labels}
    per_pair = {pr: PairStats(kl_tuned_base=kl_ba[pr].cpu(), kl_base_tuned=kl_ab[pr].cpu(),
                              top1_agree=agree[pr].cpu()) for pr in pairs}
    return per_model, per_pair


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
