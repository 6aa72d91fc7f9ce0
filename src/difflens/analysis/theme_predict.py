"""Predict a prompt's theme distribution, and its chains, from the prompt's activations.

Predictors (all trained on training prompts only; the split is by prompt):

- ``SoftmaxProbe``: a linear softmax on one layer's final-token state, trained with
  cross-entropy against each prompt's empirical first-theme distribution (soft labels,
  L2 penalty chosen on a validation part of the training prompts);
- ``ChainTransformer``: a 2-layer transformer over the last ``m`` states of one layer
  that predicts the next theme autoregressively (themes + an end token), so it gives a
  distribution over chains; beam search lists the top chains with their probabilities;
- baselines: the marginal first-theme distribution of the training prompts, and the softmax
  probe on the prompt's *sentence embedding* (its text, not the model's states).

Chains of the probe and the baselines are scored with their first-theme distribution and
the training prompts' theme transition matrix (a Markov chain). Metrics, each with a
percentile bootstrap CI over test prompts: KL(empirical || predicted) of the first theme,
top-1 and top-3 agreement with the empirical mode, the mean chain log-likelihood, and the
expected calibration error (ECE; confidence = the predicted top probability, accuracy = the
empirical frequency of that theme); each an estimate ``{value, ci_low, ci_high, n,
resampled}`` in the summaries.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from jaxtyping import Float

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_statistic,
    bootstrap_weights,
    percentile_ci,
    replicate_means,
)
from difflens.analysis.themes import ChainDistributions

EPS = 1e-9


def _scale(X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation per feature; a constant feature keeps scale 1 (so a value
    never seen in training does not blow up)."""
    sd = X.std(0)
    return X.mean(0), np.where(sd > 1e-6, sd, 1.0)


def _standardize(X: np.ndarray, mu: np.ndarray, sd: np.ndarray) -> torch.Tensor:
    return torch.tensor((X - mu) / sd, dtype=torch.float32)


@dataclasses.dataclass
class SoftmaxProbe:
    """Linear softmax with soft labels; ``predict`` returns distributions over themes."""

    l2: float = 1e-2
    W: torch.Tensor | None = None
    mu: np.ndarray | None = None
    sd: np.ndarray | None = None

    def fit(self, X: Float[np.ndarray, "n d"], P: Float[np.ndarray, "n k"],
            weight: np.ndarray | None = None) -> "SoftmaxProbe":
        self.mu, self.sd = _scale(X)
        x = _standardize(X, self.mu, self.sd)
        p = torch.tensor(P, dtype=torch.float32)
        w = torch.ones(len(X)) if weight is None else torch.tensor(weight, dtype=torch.float32)
        w = w / w.sum()
        torch.manual_seed(0)
        lin = torch.nn.Linear(x.shape[1], P.shape[1])
        torch.nn.init.zeros_(lin.weight)
        with torch.no_grad():
            lin.bias.copy_(torch.log((p * w[:, None]).sum(0) + 1e-4))
        opt = torch.optim.LBFGS(lin.parameters(), max_iter=200, line_search_fn="strong_wolfe")

        def closure() -> torch.Tensor:
            opt.zero_grad()
            loss = -(w[:, None] * p * torch.log_softmax(lin(x), -1)).sum() + \
                self.l2 * lin.weight.pow(2).sum()
            loss.backward()
            return loss

        opt.step(closure)
        self.W = torch.cat([lin.weight.detach(), lin.bias.detach()[:, None]], 1)
        return self

    def predict(self, X: Float[np.ndarray, "n d"]) -> Float[np.ndarray, "n k"]:
        assert self.W is not None and self.mu is not None and self.sd is not None
        x = _standardize(X, self.mu, self.sd)
        logits = x @ self.W[:, :-1].T + self.W[:, -1]
        return torch.softmax(logits, -1).numpy().astype(np.float64)


def fit_probe_cv(X: np.ndarray, P: np.ndarray, weight: np.ndarray, *, seed: int = 0,
                 grid: Sequence[float] = (1e-3, 1e-2, 1e-1, 1.0)) -> SoftmaxProbe:
    """Choose the L2 penalty on a validation quarter of the training prompts, then refit."""
    rng = np.random.default_rng(seed)
    idx = rng.permutation(len(X))
    nv = max(1, len(X) // 4)
    va, tr = idx[:nv], idx[nv:]
    best, best_kl = grid[0], np.inf
    for l2 in grid:
        pred = SoftmaxProbe(l2=l2).fit(X[tr], P[tr], weight[tr]).predict(X[va])
        k = float(np.average(kl_rows(P[va], pred), weights=weight[va]))
        if k < best_kl:
            best, best_kl = l2, k
    return SoftmaxProbe(l2=best).fit(X, P, weight)


def kl_rows(P: np.ndarray, Q: np.ndarray) -> np.ndarray:
    """KL(P_i || Q_i) per row (0 log 0 = 0)."""
    P = np.asarray(P, dtype=np.float64)
    Q = np.clip(np.asarray(Q, dtype=np.float64), EPS, None)
    with np.errstate(divide="ignore", invalid="ignore"):
        t = np.where(P > 0, P * (np.log(np.clip(P, EPS, None)) - np.log(Q)), 0.0)
    return t.sum(1)


# -- the chain transformer ----------------------------------------------------------------


class _ChainNet(torch.nn.Module):
    def __init__(self, d_in: int, k: int, m_act: int, max_chain: int, d: int = 64,
                 layers: int = 2, heads: int = 4, dropout: float = 0.1) -> None:
        super().__init__()
        self.k = k
        self.proj = torch.nn.Sequential(torch.nn.LayerNorm(d_in), torch.nn.Linear(d_in, d))
        self.tok = torch.nn.Embedding(k + 2, d)  # themes, END = k, BOS = k + 1
        self.pos = torch.nn.Parameter(torch.zeros(m_act + max_chain + 1, d))
        layer = torch.nn.TransformerEncoderLayer(d, heads, 2 * d, dropout=dropout,
                                                 batch_first=True, norm_first=True)
        self.body = torch.nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.head = torch.nn.Linear(d, k + 1)
        self.missing = torch.nn.Parameter(torch.zeros(d))

    def forward(self, acts: torch.Tensor, act_mask: torch.Tensor, toks: torch.Tensor
                ) -> torch.Tensor:
        """Logits over themes + END after each of ``toks`` (BOS first). Missing states of
        short prompts are zeros with a learned flag (no key masking, so no empty rows)."""
        a = self.proj(acts) + self.missing * (~act_mask)[..., None]
        t = self.tok(toks)
        x = torch.cat([a, t], 1)
        x = x + self.pos[:x.shape[1]]
        n = x.shape[1]
        causal = torch.triu(torch.ones(n, n, dtype=torch.bool), 1)
        h = self.body(x, mask=causal)
        return self.head(h[:, a.shape[1]:])


@dataclasses.dataclass
class ChainTransformer:
    """A 2-layer transformer over the last ``m`` states that predicts theme chains."""

    k: int
    max_chain: int = 3
    steps: int = 400
    lr: float = 3e-3
    weight_decay: float = 0.1
    dropout: float = 0.2
    seed: int = 0
    net: _ChainNet | None = None
    mu: np.ndarray | None = None
    sd: np.ndarray | None = None

    def _acts(self, A: np.ndarray, mask: np.ndarray) -> torch.Tensor:
        assert self.mu is not None and self.sd is not None
        return torch.tensor(np.where(mask[..., None], (A - self.mu) / self.sd, 0.0),
                            dtype=torch.float32)

    def _targets(self, chain: tuple[int, ...]) -> list[int]:
        c = list(chain[:self.max_chain])
        return c + [self.k] if len(chain) <= self.max_chain else c

    def fit(self, A: Float[np.ndarray, "n m d"], mask: np.ndarray,
            chains: Sequence[Sequence[tuple[int, ...]]]) -> "ChainTransformer":
        flat = A.reshape(-1, A.shape[-1])[mask.reshape(-1)]
        self.mu, self.sd = _scale(flat)
        torch.manual_seed(self.seed)
        self.net = _ChainNet(A.shape[-1], self.k, A.shape[1], self.max_chain,
                             dropout=self.dropout)
        rows = [(i, self._targets(ch)) for i, chs in enumerate(chains) for ch in chs if ch]
        if not rows:
            raise ValueError("no chains to train on")
        L = self.max_chain + 1
        prompt = torch.tensor([i for i, _ in rows])
        tgt = torch.full((len(rows), L), -100, dtype=torch.long)
        inp = torch.full((len(rows), L), self.k + 1, dtype=torch.long)
        for r, (_, t) in enumerate(rows):
            tgt[r, :len(t)] = torch.tensor(t)
            if len(t) > 1:
                inp[r, 1:len(t)] = torch.tensor(t[:-1])
        acts, am = self._acts(A, mask), torch.tensor(mask)
        opt = torch.optim.AdamW(self.net.parameters(), lr=self.lr, weight_decay=self.weight_decay)
        g = torch.Generator().manual_seed(self.seed)
        # early stopping: a fifth of the training prompts is held out from the updates
        held = torch.randperm(len(A), generator=g)[:max(1, len(A) // 5)]
        is_val = torch.isin(prompt, held)
        tr_rows = torch.nonzero(~is_val).flatten() if (~is_val).any() else torch.arange(len(rows))
        va_rows = torch.nonzero(is_val).flatten()

        def loss_of(b: torch.Tensor) -> torch.Tensor:
            logits = self.net(acts[prompt[b]], am[prompt[b]], inp[b])  # type: ignore[misc]
            return torch.nn.functional.cross_entropy(logits.reshape(-1, self.k + 1),
                                                     tgt[b].reshape(-1), ignore_index=-100)

        best, best_state = float("inf"), None
        for step in range(self.steps):
            self.net.train()
            b = tr_rows[torch.randint(0, len(tr_rows), (min(256, len(tr_rows)),), generator=g)]
            loss = loss_of(b)
            opt.zero_grad()
            loss.backward()
            opt.step()
            if len(va_rows) and (step % 20 == 19 or step == self.steps - 1):
                self.net.eval()
                with torch.no_grad():
                    v = float(loss_of(va_rows))
                if v < best:
                    best = v
                    best_state = {k: t.clone() for k, t in self.net.state_dict().items()}
        if best_state is not None:
            self.net.load_state_dict(best_state)
        self.net.eval()
        return self

    @torch.no_grad()
    def first(self, A: np.ndarray, mask: np.ndarray) -> np.ndarray:
        """P(first theme) per prompt (END excluded and renormalised)."""
        assert self.net is not None
        toks = torch.full((len(A), 1), self.k + 1, dtype=torch.long)
        logits = self.net(self._acts(A, mask), torch.tensor(mask), toks)[:, 0, :self.k]
        return torch.softmax(logits, -1).numpy().astype(np.float64)

    @torch.no_grad()
    def chain_logprob(self, A: np.ndarray, mask: np.ndarray, prompt_idx: Sequence[int],
                      chains: Sequence[tuple[int, ...]]) -> np.ndarray:
        """log p(chain cut at max_chain, with END when it ended) per (prompt, chain); the
        first step is renormalised over themes, as a chain is never empty."""
        assert self.net is not None
        L = self.max_chain + 1
        tg = [self._targets(c) for c in chains]
        inp = torch.full((len(chains), L), self.k + 1, dtype=torch.long)
        for r, t in enumerate(tg):
            if len(t) > 1:
                inp[r, 1:len(t)] = torch.tensor(t[:-1])
        pi = torch.tensor(list(prompt_idx))
        logits = self.net(self._acts(A, mask)[pi], torch.tensor(mask)[pi], inp)
        logits[:, 0, self.k] = -torch.inf
        lp = torch.log_softmax(logits, -1)
        return np.array([float(sum(lp[r, j, t] for j, t in enumerate(tt)))
                         for r, tt in enumerate(tg)])

    @torch.no_grad()
    def beam(self, A: np.ndarray, mask: np.ndarray, width: int = 5
             ) -> list[list[tuple[tuple[int, ...], float]]]:
        """Top chains (themes; END closes them) with probabilities, per prompt."""
        assert self.net is not None
        out = []
        acts, am = self._acts(A, mask), torch.tensor(mask)
        for i in range(len(A)):
            beams: list[tuple[tuple[int, ...], float, bool]] = [((), 0.0, False)]
            for step in range(self.max_chain + 1):
                cand = []
                for ch, lp, done in beams:
                    if done or step == self.max_chain:  # ended, or cut at max_chain
                        cand.append((ch, lp, True))
                        continue
                    toks = torch.tensor([[self.k + 1, *ch]])
                    logit = self.net(acts[i:i + 1], am[i:i + 1], toks)[0, -1]
                    if step == 0:
                        logit[self.k] = -torch.inf
                    lps = torch.log_softmax(logit, -1)
                    for t in torch.topk(lps, min(width, self.k + 1)).indices.tolist():
                        if t == self.k:
                            cand.append((ch, lp + float(lps[t]), True))
                        else:
                            cand.append(((*ch, t), lp + float(lps[t]), False))
                beams = sorted(cand, key=lambda c: -c[1])[:width]
            out.append([(ch, float(np.exp(lp))) for ch, lp, _ in beams])
        return out


# -- metrics ------------------------------------------------------------------------------


def markov_logprob(first: np.ndarray, trans_counts: np.ndarray, chain: tuple[int, ...],
                   max_chain: int) -> float:
    """log p(chain) with ``first`` for the first theme and training transitions after it
    (add-one smoothed; END when the chain ended within ``max_chain``)."""
    k = len(first)
    T = trans_counts[:k] + 1.0
    T = T / T.sum(1, keepdims=True)
    c = chain[:max_chain]
    lp = float(np.log(max(first[c[0]], EPS)))
    for a, b in zip(c[:-1], c[1:], strict=False):
        lp += float(np.log(T[a, b]))
    if len(chain) <= max_chain:
        lp += float(np.log(T[c[-1], k]))
    return lp


def ece(pred: np.ndarray, emp: np.ndarray, weight: np.ndarray, n_bins: int = 10
        ) -> tuple[float, list[dict[str, Any]]]:
    """Expected calibration error and the reliability bins."""
    conf = pred.max(1)
    acc = emp[np.arange(len(emp)), pred.argmax(1)]
    bins = np.minimum((conf * n_bins).astype(int), n_bins - 1)
    total, rows = weight.sum(), []
    e = 0.0
    for b in range(n_bins):
        sel = bins == b
        if not sel.any():
            continue
        w = weight[sel]
        c, a = float(np.average(conf[sel], weights=w)), float(np.average(acc[sel], weights=w))
        e += w.sum() / total * abs(a - c)
        rows.append({"bin": b, "confidence": c, "accuracy": a, "n": int(sel.sum())})
    return float(e), rows


def evaluate_prediction(pred: np.ndarray, dist: ChainDistributions, test: np.ndarray,
                        chain_lp: np.ndarray | None, *, n_boot: int = 1000, seed: int = 0,
                        reference: np.ndarray | None = None) -> dict[str, Any]:
    """Metrics on the test prompts with bootstrap CIs over them: ``n_test``, then ``kl``,
    ``top1``, ``top3``, ``chain_ll`` (with ``chain_lp``), ``kl_gain`` (with ``reference``)
    and ``ece``, each ``{value, ci_low, ci_high, n, resampled}``; ``reliability`` (the ECE's
    bins), ``entropy_error_spearman`` and ``mean_entropy``.

    Args:
        pred: predicted first-theme distributions of the test prompts.
        dist: the empirical distributions (all prompts); test: their indices.
        chain_lp: mean chain log-likelihood per test prompt (or None).
        reference: another predictor's distributions for the same prompts (the marginal):
            adds ``kl_gain``, its KL minus ours per prompt, with a paired CI.
    """
    emp = dist.first[test]
    kl = kl_rows(emp, pred)
    top1 = (pred.argmax(1) == emp.argmax(1)).astype(float)
    top3 = np.array([emp[i].argmax() in np.argsort(-pred[i])[:3] for i in range(len(test))],
                    dtype=float)
    ent = -(pred * np.log(np.clip(pred, EPS, None))).sum(1)
    w = bootstrap_weights(len(test), n_boot, seed)

    def ci(x: np.ndarray) -> dict[str, Any]:
        lo, hi = percentile_ci(replicate_means(w, x))
        return Estimate(value=float(x.mean()), ci_low=float(lo), ci_high=float(hi),
                        n=len(test), resampled="prompts").to_json()

    out: dict[str, Any] = {"n_test": int(len(test))}
    for name, x in (("kl", kl), ("top1", top1), ("top3", top3)):
        out[name] = ci(x)
    if chain_lp is not None:
        out["chain_ll"] = ci(chain_lp)
    if reference is not None:
        out["kl_gain"] = ci(kl_rows(emp, reference) - kl)
    e, rel = ece(pred, emp, np.ones(len(test)))
    est = bootstrap_statistic(lambda pick: ece(pred[pick], emp[pick], np.ones(len(pick)))[0],
                              len(test), n_boot=min(n_boot, 300), seed=seed,
                              resampled="prompts")
    out["ece"] = dataclasses.replace(est, value=e).to_json()
    out["reliability"] = rel
    out["entropy_error_spearman"] = _spearman(ent, kl)
    out["mean_entropy"] = float(ent.mean())
    return out


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    from scipy.stats import spearmanr

    if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
        return float("nan")
    return float(spearmanr(a, b).statistic)
