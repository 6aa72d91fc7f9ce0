"""How varied are a model's samples? distinct-n, self-BLEU, embedding spread, Vendi, Fréchet.

All metrics are computed per prompt over its K samples (except the Fréchet distance, which
compares a model's pooled sample embeddings with a reference set, "FID for text"), then
averaged over prompts with bootstrap CIs over prompts.

- distinct-n: unique n-grams / all n-grams (whitespace words, lower-cased) of the K samples.
- self-BLEU: mean sentence BLEU (sacrebleu, effective order) of each sample against the other
  K - 1; higher = more alike.
- mean pairwise embedding distance: mean 1 - cos over pairs of samples.
- Vendi score: exp of the Shannon entropy of the eigenvalues of K/n, with K the cosine
  similarity matrix (Friedman & Dieng 2023): the effective number of distinct samples,
  between 1 (all the same) and n (all orthogonal).
- Fréchet distance: |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^1/2) between Gaussians fitted
  to two sets of embeddings. Its CI is the spread of a prompt bootstrap re-centred on the
  estimate (resampling with replacement biases the distance upward). With fewer samples than
  dimensions it carries a large small-sample bias, so compare models against the same
  reference at the same sample count, and read a model's own second draw as the floor.
- k-NN precision and recall (Kynkäänniemi et al. 2019) against the same reference: each set
  is a union of balls, one per point, reaching its k-th nearest neighbour in its own set.
  Precision is the share of a model's samples inside the reference's balls (does it write
  what the reference writes?), recall the share of reference texts inside the model's balls
  (does it cover what the reference covers? "fewer genres" lowers recall). CIs bootstrap
  prompts (the model's samples) and reference texts, with both sets of balls held fixed.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from difflens._types import Embedder
from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    quantile,
    replicate_means,
    replicate_ratios,
)
from difflens.analysis.embeddings import embed
from difflens.errors import InputError


def _words(text: str) -> list[str]:
    return text.lower().split()


def distinct_n(texts: Sequence[str], n: int = 2) -> float:
    """Unique n-grams / all n-grams over ``texts`` (NaN when there are none)."""
    grams = [tuple(w[i:i + n]) for w in map(_words, texts) for i in range(len(w) - n + 1)]
    return len(set(grams)) / len(grams) if grams else float("nan")


def self_bleu(texts: Sequence[str]) -> float:
    """Mean sentence BLEU (0..1) of each text against all the others."""
    from sacrebleu.metrics import BLEU

    if len(texts) < 2:
        return float("nan")
    bleu = BLEU(effective_order=True)
    scores = [bleu.sentence_score(t, [o for j, o in enumerate(texts) if j != i]).score
              for i, t in enumerate(texts)]
    return float(np.mean(scores)) / 100.0


def _check_unit_rows(emb: np.ndarray, what: str) -> None:
    """Refuse rows that are not L2-normalised: both measures read ``emb @ emb.T`` as the
    cosine similarity, and raw rows would give a wrong number silently (a Vendi score of 0
    for large norms). All-zero rows (a text an encoder gave nothing for, as
    ``embed`` leaves them) pass."""
    norms = np.linalg.norm(np.asarray(emb, dtype=np.float64), axis=1)
    bad = np.flatnonzero((norms > 0) & (np.abs(norms - 1.0) > 1e-3))
    if len(bad):
        raise InputError(
            f"{what} needs unit-length embeddings, but row {bad[0]} has norm "
            f"{norms[bad[0]]:.4g} ({len(bad)} of {len(norms)} rows are off); normalise them "
            f"first: emb / np.linalg.norm(emb, axis=1, keepdims=True)")


def pairwise_distance(emb: Float[np.ndarray, "n dim"]) -> float:
    """Mean 1 - cosine over distinct pairs of L2-normalised embeddings (other rows are
    refused with an InputError)."""
    _check_unit_rows(emb, "pairwise_distance")
    n = len(emb)
    if n < 2:
        return float("nan")
    sim = emb @ emb.T
    return float(1.0 - (sim.sum() - np.trace(sim)) / (n * (n - 1)))


def vendi_score(emb: Float[np.ndarray, "n dim"]) -> float:
    """exp(entropy of the eigenvalues of K / n), K the cosine similarity matrix of
    L2-normalised embeddings (other rows are refused with an InputError)."""
    _check_unit_rows(emb, "vendi_score")
    n = len(emb)
    if n == 0:
        return float("nan")
    ev = np.linalg.eigvalsh((emb @ emb.T).astype(np.float64) / n)
    ev = ev[ev > 1e-12]
    return float(np.exp(-(ev * np.log(ev)).sum()))


def frechet_distance(a: Float[np.ndarray, "n dim"], b: Float[np.ndarray, "m dim"]) -> float:
    """Fréchet distance between Gaussians fitted to two embedding sets (needs >= 2 each)."""
    if len(a) < 2 or len(b) < 2:
        return float("nan")
    a, b = a.astype(np.float64), b.astype(np.float64)
    mu = a.mean(0) - b.mean(0)
    ac, bc = a - a.mean(0), b - b.mean(0)
    n, m = len(a), len(b)
    if min(n, m) <= a.shape[1]:
        # Fewer texts than dimensions (the usual case): Sa Sb has the nonzero eigenvalues of
        # (Ac Bc^T)(Bc Ac^T) / ((n-1)(m-1)), so Tr (Sa Sb)^1/2 is the sum of the singular
        # values of Ac Bc^T (n x m) over sqrt((n-1)(m-1)): exact, with no square roots of
        # the rank-deficient covariance's round-off eigenvalues, and 30x faster at 80 x 384.
        cross = np.linalg.svd(ac @ bc.T, compute_uv=False).sum() / np.sqrt((n - 1) * (m - 1))
    else:
        # Tr (Sa Sb)^1/2 = sum of sqrt eigenvalues of Sa^1/2 Sb Sa^1/2 (symmetric, PSD).
        sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
        w, v = np.linalg.eigh(sa)
        root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
        cross = np.sqrt(np.clip(np.linalg.eigvalsh(root @ sb @ root), 0, None)).sum()
    trace_a, trace_b = (ac * ac).sum() / (n - 1), (bc * bc).sum() / (m - 1)
    return float(mu @ mu + trace_a + trace_b - 2 * cross)


def _kth_radius(x: np.ndarray, k: int) -> np.ndarray:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    from sklearn.neighbors import NearestNeighbors

    dist, _ = NearestNeighbors(n_neighbors=k + 1).fit(x).kneighbors(x)
    return dist[:, k]


def _covered(points: np.ndarray, centres: np.ndarray, radii: np.ndarray) -> np.ndarray:
    """Whether each point lies in at least one ball (centre, radius)."""
    from sklearn.metrics import pairwise_distances

    return (pairwise_distances(points, centres) <= radii[None, :]).any(axis=1)


@dataclasses.dataclass(frozen=True)
class PrecisionRecall:
    """k-NN precision and recall of a sample set against a reference set."""

    precision: float
    recall: float
    in_reference: np.ndarray
    """Per sample: inside the reference's balls (precision is its mean)."""
    covered_reference: np.ndarray
    """Per reference text: inside the samples' balls (recall is its mean)."""
    k: int


def knn_precision_recall(samples: Float[np.ndarray, "n dim"],
                         reference: Float[np.ndarray, "m dim"], *, k: int = 3
                         ) -> PrecisionRecall:
    """k-NN precision and recall (Kynkäänniemi et al. 2019) of ``samples`` against
    ``reference``, with Euclidean distances between embeddings."""
    if len(samples) <= k or len(reference) <= k:
        raise InputError(f"k-NN precision and recall with k={k} need more than {k} samples "
                         f"and reference texts, got {len(samples)} and {len(reference)}; "
                         f"sample more or lower k")
    a, b = np.asarray(samples, np.float64), np.asarray(reference, np.float64)
    inside = _covered(a, b, _kth_radius(b, k))
    covered = _covered(b, a, _kth_radius(a, k))
    return PrecisionRecall(precision=float(inside.mean()), recall=float(covered.mean()),
                           in_reference=inside, covered_reference=covered, k=k)


@dataclasses.dataclass(frozen=True)
class DiversityResult:
    per_prompt: pd.DataFrame
    """One row per model and prompt: distinct_1, distinct_2, self_bleu, pairwise_distance,
    vendi, n_samples."""
    frechet: dict[str, dict[str, Any]]
    """model -> ``{frechet, n_samples, n_reference, precision, recall, k}``; ``frechet``,
    ``precision`` and ``recall`` are estimates (``{value, ci_low, ci_high, n, resampled}``;
    ``n`` counts the model's samples, or for recall the reference texts)."""
    reference: str
    """What the Fréchet reference set is."""
    encoder: str

    def summary(self, *, seed: int = 0, n_boot: int = 1000) -> dict[str, Any]:
        """``{model: {n_prompts, k_samples, distinct_1, distinct_2, self_bleu,
        pairwise_distance, vendi, frechet, frechet_reference, precision, recall, knn_k}}``.

        Each metric is an estimate, ``{value, ci_low, ci_high, n, resampled}``: the
        per-prompt metrics are means over the prompts where they are finite (``n``), with CIs
        over prompts (a metric no prompt has is a bare NaN); ``frechet``, ``precision`` and
        ``recall`` as in ``frechet``.
        """
        out: dict[str, Any] = {}
        for model, g in self.per_prompt.groupby("model", sort=False):
            row: dict[str, Any] = {"n_prompts": len(g),
                                   "k_samples": int(g.n_samples.median())}
            for col in ("distinct_1", "distinct_2", "self_bleu", "pairwise_distance", "vendi"):
                x = g[col].to_numpy(dtype=np.float64)
                x = x[np.isfinite(x)]
                row[col] = float("nan")
                if len(x):
                    lo, hi = percentile_ci(
                        replicate_means(bootstrap_weights(len(x), n_boot, seed), x))
                    row[col] = Estimate(value=float(x.mean()), ci_low=float(lo),
                                        ci_high=float(hi), n=len(x),
                                        resampled="prompts").to_json()
            f = self.frechet.get(str(model))
            if f is not None:
                row["frechet"] = f["frechet"]
                row["frechet_reference"] = self.reference
                for key in ("precision", "recall"):
                    if key in f:
                        row[key] = f[key]
                if "k" in f:
                    row["knn_k"] = f["k"]
            out[str(model)] = row
        return out


def _precision_recall(emb: np.ndarray, owner: np.ndarray, ref: np.ndarray, k: int, seed: int,
                      n_boot: int) -> dict[str, Any]:
    """Precision (CI over prompts) and recall (CI over reference texts), balls held fixed."""
    pr = knn_precision_recall(emb, ref, k=k)
    n_p = int(owner.max()) + 1
    hits = np.bincount(owner, weights=pr.in_reference, minlength=n_p)
    sizes = np.bincount(owner, minlength=n_p)
    prec = percentile_ci(replicate_ratios(bootstrap_weights(n_p, n_boot, seed), hits, sizes))
    rec = percentile_ci(replicate_means(bootstrap_weights(len(ref), n_boot, seed + 1),
                                        pr.covered_reference))
    return {"precision": Estimate(value=pr.precision, ci_low=float(prec[0]),
                                  ci_high=float(prec[1]), n=len(emb),
                                  resampled="prompts").to_json(),
            "recall": Estimate(value=pr.recall, ci_low=float(rec[0]), ci_high=float(rec[1]),
                               n=len(ref), resampled="reference texts").to_json(),
            "k": k}


def diversity(samples: Mapping[str, Sequence[Sequence[str]]], *,
              reference: Sequence[str] | None = None, reference_name: str = "",
              encoder: Embedder, encoder_name: str = "custom", seed: int = 0,
              n_boot: int = 200,
              knn_k: int = 3, progress: Callable[[int], None] | None = None
              ) -> DiversityResult:
    """Diversity of each model's samples (``model -> [prompt][sample] texts``).

    Args:
        samples: K samples per prompt, per model.
        reference: texts for the Fréchet distance (e.g. held-out human text, or a second
            independent draw of the base's samples, whose distance is the noise floor). None:
            no Fréchet distance.
        reference_name: how the summary describes the reference.
        encoder: the sentence embedder, a callable ``texts -> array`` (rows are L2-normalised
            here); ``difflens.models.encoders.embedder`` makes one from a name.
        encoder_name: what the result records as its encoder.
        seed: bootstrap seed.
        n_boot: bootstrap resamples of prompts for the Fréchet CI.
        knn_k: the k of k-NN precision and recall against the reference.
        progress: called with 1 per model and prompt.
    """
    if not samples or not any(samples.values()):
        raise InputError("no samples to score")
    rows: list[dict[str, Any]] = []
    pooled: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    for model, per_prompt in samples.items():
        flat = [t for texts in per_prompt for t in texts]
        emb = embed(flat, encoder)
        owner = np.repeat(np.arange(len(per_prompt)), [len(t) for t in per_prompt])
        pooled[model] = (emb, owner)
        for p, texts in enumerate(per_prompt):
            e = emb[owner == p]
            rows.append({"model": model, "prompt_id": p, "n_samples": len(texts),
                         "distinct_1": distinct_n(texts, 1), "distinct_2": distinct_n(texts, 2),
                         "self_bleu": self_bleu(texts), "pairwise_distance": pairwise_distance(e),
                         "vendi": vendi_score(e)})
            if progress is not None:
                progress(1)
    frechet: dict[str, dict[str, Any]] = {}
    if reference is not None:
        ref = embed(list(reference), encoder)
        rng = np.random.default_rng(seed)
        for model, (emb, owner) in pooled.items():
            n_p = int(owner.max()) + 1 if len(owner) else 0
            boots = []
            for _ in range(n_boot):
                pick = rng.integers(0, n_p, n_p)
                idx = np.concatenate([np.flatnonzero(owner == p) for p in pick])
                boots.append(frechet_distance(emb[idx], ref[rng.integers(0, len(ref),
                                                                         len(ref))]))
            # Resampling with replacement repeats rows, which biases the distance upward,
            # so the raw percentile interval can sit above the estimate; the interval is
            # the bootstrap's spread around its median, re-centred on the estimate.
            theta = frechet_distance(emb, ref)
            q_lo, med, q_hi = quantile(boots, [0.025, 0.5, 0.975], omit_nan=True)
            frechet[model] = {"frechet": Estimate(
                value=theta, ci_low=max(0.0, float(theta - (med - q_lo))),
                ci_high=float(theta + (q_hi - med)), n=len(emb),
                resampled="prompts and reference texts").to_json(),
                "n_samples": len(emb), "n_reference": len(ref)}
            if len(emb) > knn_k and len(ref) > knn_k:
                frechet[model] |= _precision_recall(emb, owner, ref, knn_k, seed, n_boot)
    return DiversityResult(per_prompt=pd.DataFrame(rows), frechet=frechet,
                           reference=reference_name,
                           encoder=encoder_name)
