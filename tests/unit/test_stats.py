"""Per-token statistics on distributions whose answers are known."""

import math

import numpy as np
import torch
from scipy.special import rel_entr

from difflens import pair_stats, token_stats
from difflens.analysis import bootstrap_ci
from difflens.capture import stats as stats_mod


def test_uniform_entropy_and_logprob():
    logits = torch.zeros(3, 8)
    st = token_stats(logits, torch.tensor([1, 7, -1]), top_k=2)
    assert torch.allclose(st.entropy, torch.full((3,), math.log(8)))
    assert torch.allclose(st.logprob_next[:2], torch.full((2,), -math.log(8)))
    assert math.isnan(st.logprob_next[2])
    assert st.topk_ids.shape == (3, 2)


def test_point_mass_and_known_kl():
    p = torch.tensor([[0.5, 0.5]]).log()
    q = torch.tensor([[0.9, 0.1]]).log()
    ps = pair_stats(base_logits=q, tuned_logits=p)
    expect = 0.5 * math.log(0.5 / 0.9) + 0.5 * math.log(0.5 / 0.1)
    assert abs(ps.kl_tuned_base.item() - expect) < 1e-6
    reverse = 0.9 * math.log(0.9 / 0.5) + 0.1 * math.log(0.1 / 0.5)
    assert abs(ps.kl_base_tuned.item() - reverse) < 1e-6
    sharp = token_stats(torch.tensor([[100.0, 0.0, 0.0]]), torch.tensor([0]))
    assert sharp.entropy.item() < 1e-6 and sharp.logprob_next.item() > -1e-6


def test_per_row_kl_and_top1_agreement_match_numpy():
    base = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.3, 0.45, 0.25], [0.2, 0.2, 0.6]])
    tuned = np.array([[0.5, 0.3, 0.2], [0.6, 0.3, 0.1], [0.1, 0.8, 0.1], [0.25, 0.5, 0.25]])
    ps = pair_stats(base_logits=torch.tensor(np.log(base), dtype=torch.float32),
                    tuned_logits=torch.tensor(np.log(tuned), dtype=torch.float32))
    # argmax per row: base 0, 2, 1, 2; tuned 0, 0, 1, 1
    assert ps.top1_agree.tolist() == [1, 0, 1, 0]
    assert np.allclose(ps.kl_tuned_base.numpy(), rel_entr(tuned, base).sum(1), atol=1e-6)
    assert np.allclose(ps.kl_base_tuned.numpy(), rel_entr(base, tuned).sum(1), atol=1e-6)


def test_chunking_does_not_change_results(monkeypatch):
    torch.manual_seed(0)
    logits = torch.randn(50, 300)
    nxt = torch.randint(0, 300, (50,))
    whole = token_stats(logits, nxt)
    monkeypatch.setattr(stats_mod, "CHUNK_BYTES", 300 * 4 * 4 * 3)  # 3 rows a chunk
    chunked = token_stats(logits, nxt)
    assert torch.equal(whole.entropy, chunked.entropy)
    assert torch.equal(whole.topk_ids, chunked.topk_ids)


def test_bootstrap_ci_covers_the_mean_and_is_seeded():
    x = np.random.default_rng(1).normal(2.0, 1.0, size=400)
    lo, hi = bootstrap_ci(x, seed=3)
    assert lo < x.mean() < hi and hi - lo < 0.3
    assert bootstrap_ci(x, seed=3) == (lo, hi)


def test_pair_summary_is_one_estimate_per_column_over_tokens():
    import pandas as pd

    from difflens.analysis.divergence import summarize_pair_stats
    from difflens.analysis.summary_spelling import leftover_ci_keys

    rng = np.random.default_rng(0)
    cols = ["kl_tuned_base", "kl_base_tuned", "top1_agree", "base_entropy", "tuned_entropy"]
    df = pd.DataFrame({c: rng.exponential(size=40) for c in cols})
    df.loc[3, "kl_tuned_base"] = np.nan  # a token nothing follows
    s = summarize_pair_stats(df, seed=2)
    assert leftover_ci_keys(s) == [] and set(s) == set(cols)
    kl = s["kl_tuned_base"]
    finite = df.kl_tuned_base.dropna().to_numpy()
    assert abs(kl["value"] - finite.mean()) < 1e-12
    assert kl["n"] == 39 and kl["resampled"] == "tokens"
    assert (kl["ci_low"], kl["ci_high"]) == bootstrap_ci(finite, seed=2)
    assert s["top1_agree"]["n"] == 40
