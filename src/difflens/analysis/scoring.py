"""Exact probabilities of continuations, chained over their tokens (no sampling).

``score_continuations`` gives log P(continuation | prefix) for every candidate, computed
from logits in batched forward passes; ``outcome_distribution`` renormalises them over a
closed answer set and reports the mass that falls outside it.
"""

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import torch

from difflens.capture.engine import forward_batch
from difflens.models.loading import LoadedModel


def score_continuations(
    lm: LoadedModel, prefix: str, continuations: Sequence[str], *, batch_size: int = 64
) -> list[float]:
    """log P(c | prefix) for each continuation ``c`` (summed over its tokens).

    The prefix is tokenized with the model's special tokens; each continuation's tokens are
    those that ``prefix + c`` adds to the prefix's tokens, so byte-level BPE merges across
    the boundary are handled. Raises ValueError if the prefix's tokens change.
    """
    tok = lm.tokenizer
    pre = tok(prefix, add_special_tokens=True)["input_ids"]
    seqs, starts = [], []
    for c in continuations:
        ids = tok(prefix + c, add_special_tokens=True)["input_ids"]
        if ids[: len(pre)] != pre or len(ids) == len(pre):
            raise ValueError(f"continuation {c!r} changes the prefix's tokens; add a leading "
                             f"separator so that it starts a new token")
        seqs.append(ids)
        starts.append(len(pre))
    out: list[float] = []
    for i in range(0, len(seqs), batch_size):
        chunk = seqs[i:i + batch_size]
        res = forward_batch(lm, chunk, [])
        for b, ids in enumerate(chunk):
            sl = res.sequence(b, len(ids))
            lp = torch.log_softmax(res.logits[b, sl].float(), -1)
            s = starts[i + b]
            tgt = torch.tensor(ids[s:], device=lp.device)
            out.append(float(lp[s - 1:len(ids) - 1].gather(1, tgt[:, None]).sum()))
    return out


@dataclasses.dataclass(frozen=True)
class OutcomeDistribution:
    """A model's exact distribution over a closed set of answers."""

    outcomes: tuple[str, ...]
    probs: tuple[float, ...]
    """Renormalised over ``outcomes``."""
    mass_outside: float
    """1 - the total probability of all valid answers before renormalising."""

    @property
    def tvd_uniform(self) -> float:
        u = 1.0 / len(self.probs)
        return 0.5 * float(sum(abs(p - u) for p in self.probs))

    @property
    def entropy_bits(self) -> float:
        return float(-sum(p * math.log2(p) for p in self.probs if p > 0))

    @property
    def top(self) -> tuple[str, float]:
        i = int(np.argmax(self.probs))
        return self.outcomes[i], self.probs[i]


def outcome_distribution(
    lm: LoadedModel, prefix: str, outcomes: Sequence[str], *, template: str = " {}"
) -> OutcomeDistribution:
    """Exact distribution over ``outcomes`` after ``prefix``, each written as ``template``."""
    lps = np.array(score_continuations(lm, prefix, [template.format(o) for o in outcomes]))
    total = float(np.exp(lps).sum())
    probs = np.exp(lps - lps.max())
    probs /= probs.sum()
    return OutcomeDistribution(outcomes=tuple(outcomes), probs=tuple(float(p) for p in probs),
                               mass_outside=max(0.0, 1.0 - total))
