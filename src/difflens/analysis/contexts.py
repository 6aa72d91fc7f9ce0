"""Which contexts collapse? The entropy drop against copying and repetition.

A tuned model is often most confident where it copies: a name from the prompt, a phrase it
wrote a moment ago. Each continuation token is put in one of three contexts by the n-gram
(default n = 2) that it completes:

- ``copy``: the n-gram occurs in the prompt;
- ``repeat``: not in the prompt, but earlier in the continuation;
- ``novel``: neither.

For a pair the measure is the entropy drop, ``base_entropy - tuned_entropy`` (nats) of the
distributions that predict the token; for one model, its entropy. Means per context average
over tokens with a 95% bootstrap CI that resamples texts (tokens of a text are not
independent), as do the differences from ``novel``. Each is an estimate,
``{value, ci_low, ci_high, n, resampled: "texts"}``, whose ``n`` counts the tokens averaged.
"""

from collections.abc import Hashable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    replicate_ratios,
)

CONTEXTS = ("copy", "repeat", "novel")


def ngram_contexts(ids: Sequence[Hashable], start: int, *, n: int = 2) -> list[str]:
    """The context of each token ``ids[start:]`` (token ids or strings): ``copy`` when the
    n-gram ending at it occurs in ``ids[:start]``, ``repeat`` when it occurs earlier after
    ``start`` (ending at a continuation token), else ``novel`` (also when fewer than n tokens
    precede it)."""
    seen_prompt = {tuple(ids[j - n + 1:j + 1]) for j in range(n - 1, start)}
    seen_cont: set[tuple[Hashable, ...]] = set()
    out = []
    for i in range(start, len(ids)):
        if i < n - 1:
            out.append("novel")
            continue
        gram = tuple(ids[i - n + 1:i + 1])
        out.append("copy" if gram in seen_prompt else "repeat" if gram in seen_cont
                   else "novel")
        seen_cont.add(gram)
    return out


def context_summary(tokens: pd.DataFrame, measure: str, *, seed: int = 0,
                    n_boot: int = 1000) -> dict[str, Any]:
    """Mean ``measure`` per context, and each context minus ``novel``, with CIs over texts.

    Args:
        tokens: one row per continuation token with ``text_id``, ``context`` and ``measure``.
        measure: the column to average (e.g. ``entropy_drop``).

    Returns:
        ``{measure, n_texts, by_context: {context: {value, ci_low, ci_high, n, resampled,
        n_tokens, share}}, minus_novel: {copy|repeat: {value, ci_low, ci_high, n,
        resampled}}}`` (a context without tokens has only ``n_tokens`` and ``share``); ``n``
        counts the tokens averaged (for a difference, the tokens of both contexts).
    """
    df = tokens[np.isfinite(tokens[measure].to_numpy(np.float64))]
    texts = np.sort(df.text_id.unique())
    w = bootstrap_weights(len(texts), n_boot, seed)
    boot: dict[str, np.ndarray] = {}
    out: dict[str, Any] = {"measure": measure, "n_texts": len(texts), "by_context": {}}
    for ctx in CONTEXTS:
        part = df[df.context == ctx]
        sums = part.groupby("text_id")[measure].sum().reindex(texts, fill_value=0.0)
        counts = part.groupby("text_id").size().reindex(texts, fill_value=0)
        n = int(counts.sum())
        row: dict[str, Any] = {"n_tokens": n, "share": n / max(1, len(df))}
        if n:
            boot[ctx] = replicate_ratios(w, sums.to_numpy(np.float64),
                                         counts.to_numpy(np.float64))
            lo, hi = percentile_ci(boot[ctx], omit_nan=True)
            row = Estimate(value=float(sums.sum() / n), ci_low=float(lo), ci_high=float(hi),
                           n=n, resampled="texts").to_json() | row
        out["by_context"][ctx] = row
    out["minus_novel"] = {}
    for ctx in ("copy", "repeat"):
        if ctx in boot and "novel" in boot:
            d = boot[ctx] - boot["novel"]
            lo, hi = percentile_ci(d, omit_nan=True)
            by = out["by_context"]
            out["minus_novel"][ctx] = Estimate(
                value=by[ctx]["value"] - by["novel"]["value"], ci_low=float(lo),
                ci_high=float(hi), n=by[ctx]["n"] + by["novel"]["n"],
                resampled="texts").to_json()
    return out
