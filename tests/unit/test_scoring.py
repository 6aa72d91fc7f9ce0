"""Exact continuation scores equal a direct computation from logits."""

import math

import numpy as np
import pytest
import torch
from scipy.special import logsumexp
from scipy.stats import entropy

from difflens.capture.scoring import (
    OutcomeDistribution,
    outcome_distribution,
    score_continuations,
)


def test_scores_match_direct_logprobs(tiny):
    prefix, conts = "the fox went to the", [" forest", " forest to find", " dark"]
    got = score_continuations(tiny, prefix, conts)
    for c, lp in zip(conts, got, strict=True):
        ids = tiny.tokenizer(prefix + c, return_tensors="pt")["input_ids"]
        n_pre = len(tiny.tokenizer(prefix)["input_ids"])
        with torch.no_grad():
            logp = tiny.model(ids).logits[0].log_softmax(-1)
        direct = sum(float(logp[t - 1, ids[0, t]]) for t in range(n_pre, ids.shape[1]))
        assert abs(lp - direct) < 1e-4


def test_outcome_distribution_matches_a_direct_softmax(tiny):
    prefix, outcomes = "the coin came up", ["heads", "forest", "fox"]
    dist = outcome_distribution(tiny, prefix, outcomes)
    # independent: one full forward pass per answer (each is one word = one token here),
    # log-softmax of the last position's logits in numpy/scipy
    pre = tiny.tokenizer(prefix)["input_ids"]
    raw = []
    for o in outcomes:
        ids = tiny.tokenizer(f"{prefix} {o}")["input_ids"]
        assert ids[:-1] == pre
        with torch.no_grad():
            row = tiny.model(torch.tensor([ids])).logits[0, -2].double().numpy()
        raw.append(math.exp(row[ids[-1]] - logsumexp(row)))
    p = np.array(raw) / sum(raw)
    assert np.allclose(dist.probs, p, rtol=0, atol=1e-6)
    assert dist.mass_outside == pytest.approx(1 - sum(raw), abs=1e-6)
    assert dist.tvd_uniform == pytest.approx(0.5 * np.abs(p - 1 / 3).sum(), abs=1e-6)
    assert dist.entropy_bits == pytest.approx(entropy(p, base=2), abs=1e-6)
    assert dist.top == (outcomes[int(p.argmax())], pytest.approx(p.max(), abs=1e-6))


def test_outcome_distribution_of_known_logprobs():
    # P = 0.1, 0.2, 0.3 over the answers: renormalised 1/6, 1/3, 1/2; 0.4 falls outside
    dist = OutcomeDistribution.from_logprobs(["a", "b", "c"], np.log([0.1, 0.2, 0.3]))
    assert dist.probs == pytest.approx((1 / 6, 1 / 3, 1 / 2), abs=1e-12)
    assert dist.mass_outside == pytest.approx(0.4, abs=1e-12)
    assert dist.tvd_uniform == pytest.approx(1 / 6, abs=1e-12)  # (1/6 + 0 + 1/6) / 2
    assert dist.entropy_bits == pytest.approx(
        (1 / 6) * math.log2(6) + (1 / 3) * math.log2(3) + (1 / 2) * 1, abs=1e-12)
    assert dist.max_entropy_bits == pytest.approx(math.log2(3))
    assert dist.top == ("c", pytest.approx(0.5, abs=1e-12))


def test_prefix_changing_continuation_is_rejected(tiny):
    with pytest.raises(ValueError, match="changes the prompt's last tokens"):
        score_continuations(tiny, "the fox", [""])
