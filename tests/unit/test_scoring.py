"""Exact continuation scores equal a direct computation from logits."""

import math

import pytest
import torch

from difflens.capture.scoring import outcome_distribution, score_continuations


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


def test_outcome_distribution_is_normalised(tiny):
    dist = outcome_distribution(tiny, "the coin came up", ["heads", "forest", "fox"])
    assert math.isclose(sum(dist.probs), 1.0, rel_tol=1e-6)
    assert 0 <= dist.mass_outside <= 1 and 0 <= dist.tvd_uniform <= 1
    assert dist.top[0] in dist.outcomes
    assert dist.entropy_bits <= math.log2(3) + 1e-9


def test_prefix_changing_continuation_is_rejected(tiny):
    with pytest.raises(ValueError, match="changes the prompt's last tokens"):
        score_continuations(tiny, "the fox", [""])
