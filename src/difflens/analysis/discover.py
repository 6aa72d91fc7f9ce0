"""The statistics of ``discover``: from what the passes read to ranked words, topics, a
hypothesis and its grades. Pure: texts, token strings and arrays in, no model.

Stated rules (each is a default a user can read here):

- **A word** is a token or a text piece of letters (an apostrophe or hyphen inside), at
  least two of them, lower-cased, with a tokenizer's leading-space mark removed. Methods
  rank tokens; only word-like tokens that are not English stop words (scikit-learn's list:
  ``the``, ``and``, ``they``, ...) make a method's ``top_words``: a fine-tune's topic is in
  its content words.
- **A match** of a found word and a planted word: equal, equal up to a plural ``s``/``es``,
  or the found word is a sub-word piece of four letters or more that starts the planted word
  (``lighth`` matches ``lighthouse``).
- **Patchscope's scale**: the scale at which the most word tokens are in the top ``k`` of
  every identity prompt, leaving out the words the prompts themselves hold (ties: the
  smaller scale).
- **The hypothesis**: the words at least two methods list (by the sum of ``1/(1+rank)``
  over the methods), at most ``n``; without agreement, none, and it says so.
"""

import dataclasses
import functools
import math
import re
import warnings
from collections import Counter
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_paired,
    percentile_ci,
    resample_indices,
)

_WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]{2,}")
_LEADING = ("Ġ", "▁", "Ċ")


@functools.lru_cache(maxsize=1)
def _stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def as_word(token_text: str) -> str | None:
    """The word a token or text piece spells (see the module's rules), or None (also for
    a stop word)."""
    t = token_text
    for mark in _LEADING:
        t = t.replace(mark, " ")
    t = t.strip().lower()
    return t if len(t) >= 2 and _WORD.fullmatch(t) and t not in _stop_words() else None


def content_words(text: str) -> list[str]:
    """The words of a text that are not stop words, in order."""
    stop = _stop_words()
    return [w for w in text_words(text) if w not in stop]


def text_words(text: str) -> list[str]:
    """The words of a text, in order (lower-cased)."""
    return _WORD.findall(text.lower())


def words_match(found: str, planted: str) -> bool:
    """Whether a found word names a planted word (the module's matching rule)."""
    f, p = found.lower(), planted.lower()
    if f == p or f in (p + "s", p + "es") or p in (f + "s", f + "es"):
        return True
    return len(f) >= 4 and p.startswith(f)


def planted_share(top_words: Sequence[str], planted: Sequence[str], n: int = 20) -> float:
    """Share of the first ``n`` found words that match a planted word (NaN when none was
    found: a method that says nothing is not scored as wrong or right)."""
    top = list(top_words)[:n]
    if not top:
        return math.nan
    return sum(any(words_match(w, p) for p in planted) for w in top) / len(top)


def dedupe_words(tokens: Sequence[str], scores: Sequence[float] | np.ndarray, n: int = 20
                 ) -> list[tuple[str, float]]:
    """The first ``n`` distinct words of tokens ranked by score (higher first); tokens that
    spell no word are skipped."""
    seen: dict[str, float] = {}
    for i in np.argsort(-np.asarray(scores, dtype=float), kind="stable"):
        w = as_word(tokens[i])
        if w is not None and w not in seen:
            seen[w] = float(scores[i])
            if len(seen) == n:
                break
    return list(seen.items())


# -- Patchscope ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class PatchscopeChoice:
    scales: tuple[float, ...]
    agreed: list[list[tuple[int, float]]]
    """Per scale: (token id, mean probability over prompts) of the word tokens in every
    prompt's top ``k`` and not in the unpatched top ``k``, best first."""
    chosen: int
    """Index of the chosen scale (the rule in the module docstring); -1 when none agrees."""


def choose_patchscope(logprobs: Float[np.ndarray, "scale prompt vocab"],
                      scales: Sequence[float], token_texts: Sequence[str], *,
                      prompts: Sequence[str] = (), k: int = 20) -> PatchscopeChoice:
    """Tokens the identity prompts agree on at each scale, and the chosen scale."""
    def top(lp: np.ndarray) -> list[set[int]]:
        return [set(np.argsort(-row, kind="stable")[:k].tolist()) for row in lp]

    own = {w for p in prompts for w in text_words(p)}
    agreed, best, best_n = [], -1, 0
    for s, lp in enumerate(logprobs):
        common = set.intersection(*top(lp))
        words = [t for t in common if t < len(token_texts)
                 and (w := as_word(token_texts[t])) is not None and w not in own]
        p = np.exp(lp).mean(0)
        ranked = sorted(((t, float(p[t])) for t in words), key=lambda x: -x[1])
        agreed.append(ranked)
        if len(ranked) > best_n:
            best, best_n = s, len(ranked)
    return PatchscopeChoice(tuple(float(x) for x in scales), agreed, best)


# -- diff mining --------------------------------------------------------------------------


def token_counts(records: pd.DataFrame, direction: str = "up") -> pd.DataFrame:
    """Per token: positions where it was in the direction's top ``k`` (``count``), texts
    (``n_texts``), its mean change (``mean_diff``) and its text of largest change
    (``best_text``, ``best_diff``), most counted first."""
    r = records[records["direction"] == direction]
    if r.empty:
        return pd.DataFrame(columns=["token", "count", "n_texts", "mean_diff", "best_text",
                                     "best_diff"])
    g = r.groupby("token")
    best = r.loc[r["diff"].abs().groupby(r["token"]).idxmax()].set_index("token")
    out = pd.DataFrame({"count": g.size(), "n_texts": g["text"].nunique(),
                        "mean_diff": g["diff"].mean(), "best_text": best["text"],
                        "best_diff": best["diff"]}).reset_index()
    return out.sort_values(["count", "mean_diff"], ascending=[False, direction == "down"],
                           kind="stable").reset_index(drop=True)


@dataclasses.dataclass(frozen=True)
class Topics:
    tokens: list[list[tuple[int, float]]]
    """Per topic: (token id, weight), heaviest first."""
    texts: list[list[int]]
    """Per topic: the texts it weighs most, heaviest first."""
    weight: list[float]
    """Each topic's share of the summed text weights."""


def nmf_topics(records: pd.DataFrame, n_texts: int, *, n_topics: int = 5, seed: int = 0,
               n_tokens: int = 10, n_examples: int = 3) -> Topics:
    """NMF (scikit-learn) of the text x token matrix of ``up`` counts into topics."""
    from sklearn.decomposition import NMF
    from sklearn.exceptions import ConvergenceWarning

    r = records[records["direction"] == "up"]
    if r.empty:
        return Topics([], [], [])
    toks = np.sort(r["token"].unique())
    col = {t: j for j, t in enumerate(toks)}
    m = np.zeros((n_texts, len(toks)))
    np.add.at(m, (r["text"].to_numpy(), r["token"].map(col).to_numpy()), 1.0)
    k = max(1, min(n_topics, len(toks), int((m.sum(1) > 0).sum())))
    model = NMF(n_components=k, init="nndsvda", random_state=seed, max_iter=2000)
    with warnings.catch_warnings():  # a topic split that stops early is still a split
        warnings.simplefilter("ignore", ConvergenceWarning)
        w = model.fit_transform(m)
    h = model.components_
    total = w.sum() or 1.0
    return Topics(
        tokens=[[(int(toks[j]), float(h[c, j])) for j in np.argsort(-h[c], kind="stable")
                 [:n_tokens] if h[c, j] > 0] for c in range(k)],
        texts=[[int(i) for i in np.argsort(-w[:, c], kind="stable")[:n_examples]
                if w[i, c] > 0] for c in range(k)],
        weight=[float(w[:, c].sum() / total) for c in range(k)])


# -- the baseline: log-odds of words in the models' own samples ---------------------------


def _count_matrix(texts: Sequence[str], vocab: Mapping[str, int]) -> np.ndarray:
    m = np.zeros((len(texts), len(vocab)))
    for i, t in enumerate(texts):
        for w, c in Counter(text_words(t)).items():
            if w in vocab:
                m[i, vocab[w]] = c
    return m


def log_odds_words(tuned_texts: Sequence[str], base_texts: Sequence[str], *, n: int = 20,
                   min_count: int = 3, n_boot: int = 1000, seed: int = 0,
                   prior: float = 0.5) -> pd.DataFrame:
    """Words ranked by the log-odds ratio of their rate in the tuned model's samples over
    the base's (each count smoothed by ``prior``), with a 95% bootstrap CI over samples
    (each model's samples resampled on their own). Rows: words seen ``min_count`` times in
    the tuned samples whose CI is above 0, by the CI's lower end; at most ``n``."""
    counts_t = Counter(w for t in tuned_texts for w in content_words(t))
    vocab_words = sorted(w for w, c in counts_t.items() if c >= min_count)
    cols = ["word", "log_odds", "ci_low", "ci_high", "n_tuned", "n_base", "count_tuned",
            "count_base"]
    if not vocab_words or not len(base_texts):
        return pd.DataFrame(columns=cols)
    vocab = {w: j for j, w in enumerate(vocab_words)}
    all_t = Counter(w for t in tuned_texts for w in text_words(t))
    all_b = Counter(w for t in base_texts for w in text_words(t))
    tot_t, tot_b = sum(all_t.values()), sum(all_b.values())
    mt, mb = _count_matrix(tuned_texts, vocab), _count_matrix(base_texts, vocab)
    len_t = np.array([len(text_words(t)) for t in tuned_texts], dtype=float)
    len_b = np.array([len(text_words(t)) for t in base_texts], dtype=float)

    def lor(ct: np.ndarray, nt: Any, cb: np.ndarray, nb: Any) -> np.ndarray:
        return (np.log((ct + prior) / (nt - ct + prior))
                - np.log((cb + prior) / (nb - cb + prior)))

    point = lor(mt.sum(0), np.float64(tot_t), mb.sum(0), np.float64(tot_b))
    it = resample_indices(len(tuned_texts), n_boot, seed)
    ib = resample_indices(len(base_texts), n_boot, seed + 1)
    reps = lor(mt[it].sum(1), len_t[it].sum(1)[:, None], mb[ib].sum(1),
               len_b[ib].sum(1)[:, None])
    lo, hi = percentile_ci(reps, axis=0)
    df = pd.DataFrame({"word": vocab_words, "log_odds": point, "ci_low": lo, "ci_high": hi,
                       "n_tuned": len(tuned_texts), "n_base": len(base_texts),
                       "count_tuned": mt.sum(0).astype(int),
                       "count_base": mb.sum(0).astype(int)})
    df = df[df["ci_low"] > 0].sort_values(["ci_low", "word"], ascending=[False, True])
    return df.head(n).reset_index(drop=True)[cols]


# -- amplification ------------------------------------------------------------------------


def word_presence(texts: Sequence[str]) -> list[set[str]]:
    """The content words each text holds."""
    return [set(content_words(t)) for t in texts]


def growing_words(samples: Mapping[float, Sequence[str]], *, n: int = 20, min_samples: int = 3,
                  n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Words whose share of samples grows from the smallest to the largest amplification.
    ``samples[alpha]`` are aligned: sample ``i`` of every alpha shares its prompt and random
    numbers, so the growth is a paired difference with a bootstrap CI over samples. Rows:
    words in at least ``min_samples`` samples at the largest alpha whose CI is above 0, by
    the growth; at most ``n``."""
    alphas = sorted(samples)
    cols = ["word", "growth", "ci_low", "ci_high", "n", "share_low", "share_high"]
    if len(alphas) < 2:
        return pd.DataFrame(columns=cols)
    lo_p, hi_p = word_presence(samples[alphas[0]]), word_presence(samples[alphas[-1]])
    counts = Counter(w for s in hi_p for w in s)
    rows = []
    for w, c in counts.items():
        if c < min_samples:
            continue
        a = np.array([w in s for s in hi_p], dtype=float)
        b = np.array([w in s for s in lo_p], dtype=float)
        if a.mean() <= b.mean():
            continue
        est = bootstrap_paired(a, b, n_boot=n_boot, seed=seed, resampled="samples")
        if est.ci_low > 0:
            rows.append({"word": w, "growth": est.value, "ci_low": est.ci_low,
                         "ci_high": est.ci_high, "n": est.n, "share_low": float(b.mean()),
                         "share_high": float(a.mean())})
    if not rows:
        return pd.DataFrame(columns=cols)
    df = pd.DataFrame(rows).sort_values(["growth", "word"], ascending=[False, True])
    return df.head(n).reset_index(drop=True)[cols]


def hypothesis_rate(texts: Sequence[str], words: Sequence[str]) -> np.ndarray:
    """Per text: 1 when it holds a word matching one of ``words``, else 0."""
    return np.array([float(any(words_match(t, w) or words_match(w, t) for w in words
                               for t in set(text_words(x)))) for x in texts])


# -- the hypothesis -----------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Hypothesis:
    words: list[str]
    """Words at least two methods list, by agreement score."""
    support: dict[str, list[str]]
    """Per word: the methods that list it."""
    note: str
    """What the hypothesis rests on, or why there is none."""

    def to_json(self) -> dict[str, Any]:
        return {"words": self.words, "support": self.support, "note": self.note}


def _same_word(a: str, b: str) -> bool:
    return a == b or a in (b + "s", b + "es") or b in (a + "s", a + "es")


def agree(method_words: Mapping[str, Sequence[str]], *, n: int = 10,
          min_methods: int = 2) -> Hypothesis:
    """The words the methods agree on (the module's rule)."""
    found = {m: list(ws) for m, ws in method_words.items() if ws}
    if not found:
        return Hypothesis([], {}, "no hypothesis: no method found a difference between the "
                                  "models on these texts (the tuned model reads as the base)")
    score: dict[str, float] = {}
    support: dict[str, list[str]] = {}
    for m, ws in found.items():
        for rank, w in enumerate(ws):
            key = next((k for k in score if _same_word(k, w)), w)
            if m not in support.get(key, []):
                score[key] = score.get(key, 0.0) + 1.0 / (1 + rank)
                support.setdefault(key, []).append(m)
    kept = sorted((w for w in score if len(support[w]) >= min_methods),
                  key=lambda w: (-len(support[w]), -score[w], w))[:n]
    if not kept:
        return Hypothesis([], {}, f"no hypothesis: {len(found)} method(s) found differences "
                                  f"({', '.join(found)}) but no word is listed by "
                                  f"{min_methods} of them")
    return Hypothesis(kept, {w: support[w] for w in kept},
                      f"{len(kept)} word(s) listed by at least {min_methods} of the "
                      f"{len(found)} methods that found a difference "
                      f"({', '.join(found)})")


# -- graders ------------------------------------------------------------------------------


def identification_rank(hypothesis: Float[np.ndarray, " dim"],
                        descriptions: Float[np.ndarray, "n dim"], truth: int) -> int:
    """Rank (1 = best) of the true description among all, by cosine to the hypothesis."""
    h = hypothesis / (np.linalg.norm(hypothesis) or 1.0)
    d = descriptions / np.maximum(np.linalg.norm(descriptions, axis=1, keepdims=True), 1e-12)
    sims = d @ h
    return int((sims > sims[truth]).sum()) + 1


def mean_similarity(a: Float[np.ndarray, "n dim"], b: Float[np.ndarray, "m dim"]
                    ) -> Float[np.ndarray, " n"]:
    """Per row of ``a``: its mean cosine to the rows of ``b``."""
    an = a / np.maximum(np.linalg.norm(a, axis=1, keepdims=True), 1e-12)
    bn = b / np.maximum(np.linalg.norm(b, axis=1, keepdims=True), 1e-12)
    return np.asarray(an @ bn.mean(0))


def paired_gain(a: Sequence[float], b: Sequence[float], *, seed: int = 0,
                resampled: str) -> Estimate:
    """mean(a - b) over aligned units, with its paired bootstrap CI."""
    return bootstrap_paired(np.asarray(a, float), np.asarray(b, float), seed=seed,
                            resampled=resampled)


__all__ = ["Hypothesis", "PatchscopeChoice", "Topics", "agree", "as_word",
           "choose_patchscope", "dedupe_words", "growing_words", "hypothesis_rate",
           "identification_rank", "log_odds_words", "mean_similarity", "nmf_topics",
           "paired_gain", "planted_share", "text_words", "token_counts", "word_presence",
           "words_match"]
