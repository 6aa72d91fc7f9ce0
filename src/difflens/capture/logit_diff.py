"""The forward passes of diff mining: at every token of every text, the tokens whose
log-probability the tuned model raised (and lowered) most against the base.

Both models read the same token ids once per batch; at each position the difference of
their log-softmaxes (``log p_tuned - log p_base``, so a per-position constant in the
logits cancels) is ranked and the ``top_k`` tokens of each direction are kept as records.
Counts, topics and examples are computed from the records in ``analysis/discover.py``.
"""

import dataclasses
from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from difflens.capture.engine import forward_batch
from difflens.errors import InputError
from difflens.models.loading import LoadedModel

#: Differences at or below this (nats) are no difference (identical models give exactly 0,
#: float rounding of equal models well below it).
MIN_DIFF = 1e-4


@dataclasses.dataclass(frozen=True)
class LogitDiffRecords:
    """Every (text, position, token) that was in a direction's ``top_k`` by
    ``log p_tuned - log p_base``."""

    records: pd.DataFrame
    """Columns ``text``, ``position``, ``token``, ``diff`` (nats), ``direction`` (``up`` or
    ``down``) and ``rank`` (0 = largest change at that position)."""
    n_texts: int
    n_positions: int
    """Positions read (predictions made) over all texts."""
    top_k: int


def logit_diff_records(base: LoadedModel, tuned: LoadedModel, texts: Sequence[str], *,
                       top_k: int = 20, batch_size: int = 16, max_tokens: int = 128,
                       progress: Callable[[int], None] | None = None) -> LogitDiffRecords:
    """Rank, at every position of ``texts`` (at most ``max_tokens`` each), the tokens by the
    change in log-probability from ``base`` to ``tuned``; keep each direction's ``top_k``
    where the change exceeds ``MIN_DIFF``."""
    if top_k < 1:
        raise InputError(f"top_k must be at least 1, got {top_k}")
    seqs = [list(tuned.tokenizer(t, add_special_tokens=True)["input_ids"])[:max_tokens]
            for t in texts]
    if not any(seqs):
        raise InputError("no text has any token; give texts with words in them")
    frames: list[dict[str, np.ndarray]] = []
    n_positions = 0
    for start in range(0, len(seqs), batch_size):
        idx = [i for i in range(start, min(start + batch_size, len(seqs))) if seqs[i]]
        batch = [seqs[i] for i in idx]
        lps = [torch.log_softmax(forward_batch(lm, batch, []).logits.float(), -1)
               for lm in (base, tuned)]
        diff = (lps[1] - lps[0].to(lps[1].device)).cpu()
        k = min(top_k, diff.shape[-1])
        for row, i in enumerate(idx):
            d = diff[row, :len(batch[row])]
            n_positions += d.shape[0]
            for direction, sign in (("up", 1.0), ("down", -1.0)):
                vals, toks = (sign * d).topk(k, dim=-1)
                pos = torch.arange(d.shape[0])[:, None].expand_as(toks)
                rank = torch.arange(k)[None, :].expand_as(toks)
                keep = vals > MIN_DIFF
                frames.append({"text": np.full(int(keep.sum()), i),
                               "position": pos[keep].numpy(), "token": toks[keep].numpy(),
                               "diff": (sign * vals[keep]).numpy().astype(np.float64),
                               "direction": np.full(int(keep.sum()), direction),
                               "rank": rank[keep].numpy()})
        if progress is not None:
            progress(len(idx))
    records = (pd.DataFrame({c: np.concatenate([f[c] for f in frames]) for c in frames[0]})
               if frames else pd.DataFrame(columns=["text", "position", "token", "diff",
                                                    "direction", "rank"]))
    return LogitDiffRecords(records=records, n_texts=len(seqs), n_positions=n_positions,
                            top_k=top_k)


__all__ = ["MIN_DIFF", "LogitDiffRecords", "logit_diff_records"]


_WORD_START = ("▁", "Ġ", " ")


def starts_word(lm: LoadedModel, token: int) -> bool:
    """Whether ``token`` begins a new word (a leading-space mark, as in ``▁l`` or ``Ġl``)."""
    piece = lm.tokenizer.convert_ids_to_tokens(int(token))
    return isinstance(piece, str) and piece.startswith(_WORD_START) and len(piece) > 1


def word_completions(lm: LoadedModel, tokens: Sequence[int], *, max_pieces: int = 5,
                     batch_size: int = 64) -> dict[int, str]:
    """The word each word-starting token grows into under ``lm``: greedy continuation after
    the token alone (after BOS when the tokenizer adds one), kept while the next piece does
    not start a new word, at most ``max_pieces`` more. A token that ends its word at once,
    or does not start one, is its own text. With a small vocabulary (stories260k's 512
    pieces spell ``lighthouse`` as ``▁l ig h t h ou se``) this turns a method's pieces into
    the words the model means by them."""
    from difflens.sampling.generate import GenerationConfig, generate

    tok = lm.tokenizer
    out = {int(t): tok.decode([int(t)]).strip() for t in tokens}
    starts = [int(t) for t in tokens if starts_word(lm, int(t))]
    if not starts:
        return out
    bos = tok.bos_token_id
    prefix = [bos] if bos is not None and tok("a")["input_ids"][:1] == [bos] else []
    gen = generate(lm, [prefix + [t] for t in starts],
                   GenerationConfig(max_new_tokens=max_pieces, temperature=0.0,
                                    batch_size=batch_size))
    for t, cont in zip(starts, gen.token_ids, strict=True):
        pieces = [t]
        for c in cont:
            piece = tok.convert_ids_to_tokens(int(c))
            if not isinstance(piece, str) or piece.startswith(_WORD_START) or \
                    not any(ch.isalpha() for ch in tok.decode([int(c)])):
                break
            pieces.append(int(c))
        else:
            if len(pieces) > max_pieces:  # never reached a word's end: keep the token
                continue
        out[t] = tok.decode(pieces).strip()
    return out


__all__ += ["starts_word", "word_completions"]
