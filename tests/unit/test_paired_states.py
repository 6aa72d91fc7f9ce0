"""Paired states on disk: padding and BOS left out, the text batch size and the shard size
do not change the tokens, and ``batch_at`` is a seeded stream that visits every token once
per epoch."""

import torch

from difflens.capture.paired_states import PairedStates, StateRows, capture_paired_states
from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_pair


def _all(states: PairedStates) -> StateRows:
    rows = list(states.batches(1000))
    return StateRows(*(torch.cat([r.__dict__[k] for r in rows])
                       for k in ("base", "tuned", "text", "position", "token")))


def test_capture_and_stream(tmp_path):
    pair = tiny_pair(0, planted_block=1, scale=3.0)
    texts = list(EXAMPLE_PROMPTS)
    a = capture_paired_states(pair.base, pair.tuned, texts, 2, tmp_path / "a", batch_size=3,
                              shard_tokens=17)
    b = capture_paired_states(pair.base, pair.tuned, texts, 2, tmp_path / "b", batch_size=10,
                              shard_tokens=1000)
    n_words = sum(len(t.split()) for t in texts)
    assert a.n_tokens == b.n_tokens == n_words and len(a.shards) > 2 and len(b.shards) == 1
    ra, rb = _all(a), _all(b)
    assert torch.equal(ra.text, rb.text) and torch.equal(ra.token, rb.token)
    assert int(ra.position.min()) == 1  # the BOS is left out
    torch.testing.assert_close(ra.tuned, rb.tuned, atol=1e-5, rtol=1e-5)
    assert float((ra.tuned - ra.base).norm()) > 0
    s = a.with_stream(8, seed=1)
    steps = -(-a.n_tokens // 8)
    epoch = torch.cat([s.batch_at(i)[0] for i in range(steps)])[:a.n_tokens]
    assert torch.equal(torch.sort(epoch.sum(-1)).values, torch.sort(ra.base.sum(-1)).values)
    again = a.with_stream(8, seed=1)
    assert all(torch.equal(again.batch_at(i)[1], s.batch_at(i)[1]) for i in (5, 0, 9))
    assert not torch.equal(a.with_stream(8, seed=2).batch_at(0)[0], s.batch_at(0)[0])
    assert capture_paired_states(pair.base, pair.tuned, texts, 2, tmp_path / "a").key == a.key
