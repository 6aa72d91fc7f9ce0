"""Exact probabilities of continuations, chained over their tokens (no sampling).

``continuation_logprobs`` gives log P(continuation | prefix) for every candidate, at one
or more temperatures, from logits: the prefix runs once and its KV cache is repeated for a
batch of candidates, so only the candidates' own tokens are computed. With ``boundary=True``
each candidate must also *end* there: its probability is multiplied by the probability that
the next token does not continue the word (it starts with neither a letter nor a digit, or
is a special token), so that " 1" does not also count " 10". ``outcome_distribution``
renormalises the scores over a closed answer set and reports the mass that falls outside it.
"""

import copy
import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float
from torch import Tensor

from difflens.capture.engine import forward_batch
from difflens.errors import InputError
from difflens.models.batching import accepts, cache_keyword, returned_cache, takes_cache
from difflens.models.loading import LoadedModel

_BOUNDARY_MASKS: dict[int, tuple[Any, Tensor]] = {}


def boundary_mask(lm: LoadedModel) -> Tensor:
    """[vocab] bool: True where a token ends a word (starts with no letter or digit)."""
    tok = lm.tokenizer
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    hit = _BOUNDARY_MASKS.get(id(tok))
    if hit is not None and hit[0] is tok and hit[1].shape[0] == vocab:
        return hit[1]
    n = min(len(tok), vocab)
    texts = tok.batch_decode([[i] for i in range(n)])
    special = set(tok.all_special_ids)
    mask = torch.ones(vocab, dtype=torch.bool)
    for i, t in enumerate(texts):
        if i not in special and t and t[0].isalnum():
            mask[i] = False
    _BOUNDARY_MASKS[id(tok)] = (tok, mask)
    return mask


def _tokenize(lm: LoadedModel, prefix: str, continuations: Sequence[str],
              add_special_tokens: bool) -> tuple[list[int], list[list[int]]]:
    tok = lm.tokenizer
    pre = list(tok(prefix, add_special_tokens=add_special_tokens)["input_ids"])
    if not pre:
        raise InputError("the prompt tokenizes to nothing; give it some text")
    suffixes = []
    for c in continuations:
        ids = tok(prefix + c, add_special_tokens=add_special_tokens)["input_ids"]
        if ids[: len(pre)] != pre or len(ids) == len(pre):
            raise InputError(f"answer {c!r} changes the prompt's last tokens (or is empty); "
                             f"add a leading separator (e.g. a space in the template) so that "
                             f"it starts a new token")
        suffixes.append(list(ids[len(pre):]))
    return pre, suffixes


def _rows_shared(lm: LoadedModel, pre: list[int], suffixes: Sequence[list[int]],
                 boundary: bool, batch_size: int) -> list[Tensor]:
    """Per candidate, the logits rows predicting each of its tokens (+ the one after it)."""
    model, dev = lm.model, lm.device
    kwargs: dict[str, Any] = {"input_ids": torch.tensor([pre], device=dev), "use_cache": True}
    if accepts(model, "logits_to_keep"):
        kwargs["logits_to_keep"] = 1
    out = model(**kwargs)
    first, cache0 = out.logits[0, -1].float(), returned_cache(out)
    rows: list[Tensor] = []
    p = len(pre)
    for i in range(0, len(suffixes), batch_size):
        chunk = suffixes[i:i + batch_size]
        need = [s if boundary else s[:-1] for s in chunk]
        width = max(len(s) for s in need)
        if width == 0:
            rows += [first[None] for _ in chunk]
            continue
        b = len(chunk)
        ids = torch.zeros(b, width, dtype=torch.long, device=dev)
        mask = torch.zeros(b, p + width, dtype=torch.long, device=dev)
        mask[:, :p] = 1
        for j, s in enumerate(need):
            ids[j, :len(s)] = torch.tensor(s, device=dev)
            mask[j, p:p + len(s)] = 1
        cache = copy.deepcopy(cache0)
        cache.batch_repeat_interleave(b)
        kw: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                              cache_keyword(model): cache, "use_cache": True}
        if accepts(model, "position_ids"):
            kw["position_ids"] = (p + torch.arange(width, device=dev))[None].expand(b, -1)
        logits = model(**kw).logits.float()
        rows += [torch.cat([first[None], logits[j, :len(s)]]) for j, s in enumerate(need)]
    return rows


def _rows_full(lm: LoadedModel, pre: list[int], suffixes: Sequence[list[int]],
               boundary: bool, batch_size: int) -> list[Tensor]:
    rows: list[Tensor] = []
    p = len(pre)
    for i in range(0, len(suffixes), batch_size):
        chunk = suffixes[i:i + batch_size]
        res = forward_batch(lm, [pre + s for s in chunk], [])
        for b, s in enumerate(chunk):
            lg = res.logits[b, res.sequence(b, p + len(s))].float()
            rows.append(lg[p - 1:p + len(s) - (0 if boundary else 1)])
    return rows


def continuation_logprobs(
    lm: LoadedModel,
    prefix: str,
    continuations: Sequence[str],
    *,
    temperatures: Sequence[float] = (1.0,),
    boundary: bool = False,
    add_special_tokens: bool = True,
    share_prefix: bool = True,
    batch_size: int = 64,
) -> Float[np.ndarray, "n_continuations n_temperatures"]:
    """log P(c | prefix) of every continuation at every temperature (softmax(logits / T)).

    Args:
        lm: the model (not changed).
        prefix: the text before the continuations.
        continuations: candidate texts; their tokens are those that ``prefix + c`` adds to the
            prefix's tokens, so byte-level merges across the boundary are handled.
        temperatures: each gives one column.
        boundary: also multiply by P(the next token ends the word), so a candidate that is
            the start of a longer word or number is not counted for it.
        add_special_tokens: tokenize the prefix with the model's special tokens (BOS); a
            chat-templated prefix already has them.
        share_prefix: run the prefix once and extend its KV cache (default), or run every
            full sequence (the reference; equal to float precision).
        batch_size: candidates per forward pass.

    Raises:
        InputError: when a continuation is empty or changes the prefix's tokens.
    """
    if not continuations:
        raise InputError("no answers to score; the answer set is empty")
    if any(t <= 0 for t in temperatures):
        raise InputError(f"temperatures must be > 0, got {list(temperatures)}")
    pre, suffixes = _tokenize(lm, prefix, continuations, add_special_tokens)
    shared = share_prefix and takes_cache(lm.model)
    with torch.inference_mode():
        rows = (_rows_shared if shared else _rows_full)(lm, pre, suffixes, boundary, batch_size)
        mask = boundary_mask(lm).to(rows[0].device) if boundary else None
        out = np.empty((len(suffixes), len(temperatures)))
        for j, temp in enumerate(temperatures):
            for i, (r, s) in enumerate(zip(rows, suffixes, strict=True)):
                lp = torch.log_softmax(r.double() / temp, -1)
                total = lp[torch.arange(len(s)), torch.tensor(s, device=lp.device)].sum()
                if mask is not None:
                    total = total + torch.logsumexp(lp[len(s), mask[: lp.shape[1]]], 0)
                out[i, j] = float(total)
    return out


def score_continuations(
    lm: LoadedModel, prefix: str, continuations: Sequence[str], *, batch_size: int = 64
) -> list[float]:
    """log P(c | prefix) for each continuation ``c`` (summed over its tokens, T = 1)."""
    lp = continuation_logprobs(lm, prefix, continuations, batch_size=batch_size)
    return [float(x) for x in lp[:, 0]]


@dataclasses.dataclass(frozen=True)
class OutcomeDistribution:
    """A model's exact distribution over a closed set of answers."""

    outcomes: tuple[str, ...]
    probs: tuple[float, ...]
    """Renormalised over ``outcomes``."""
    mass_outside: float
    """1 - the total probability of all valid answers before renormalising."""

    @classmethod
    def from_logprobs(cls, outcomes: Sequence[str], logprobs: Sequence[float] | np.ndarray
                      ) -> "OutcomeDistribution":
        lps = np.asarray(logprobs, dtype=np.float64)
        probs = np.exp(lps - lps.max())
        probs /= probs.sum()
        return cls(outcomes=tuple(outcomes), probs=tuple(float(p) for p in probs),
                   mass_outside=float(min(1.0, max(0.0, 1.0 - np.exp(lps).sum()))))

    @property
    def tvd_uniform(self) -> float:
        u = 1.0 / len(self.probs)
        return 0.5 * float(sum(abs(p - u) for p in self.probs))

    @property
    def entropy_bits(self) -> float:
        return float(-sum(p * math.log2(p) for p in self.probs if p > 0))

    @property
    def max_entropy_bits(self) -> float:
        """log2 of the number of answers: the entropy of the uniform distribution."""
        return math.log2(len(self.probs))

    @property
    def top(self) -> tuple[str, float]:
        i = int(np.argmax(self.probs))
        return self.outcomes[i], self.probs[i]


def outcome_distribution(
    lm: LoadedModel, prefix: str, outcomes: Sequence[str], *, template: str = " {}",
    boundary: bool = False, add_special_tokens: bool = True,
) -> OutcomeDistribution:
    """Exact distribution over ``outcomes`` after ``prefix``, each written as ``template``."""
    lps = continuation_logprobs(lm, prefix, [template.format(o) for o in outcomes],
                                boundary=boundary, add_special_tokens=add_special_tokens)
    return OutcomeDistribution.from_logprobs(outcomes, lps[:, 0])
