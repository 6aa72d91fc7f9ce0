"""The de-collapse sampler's statistics: each sample set's perplexity under a scorer, beside
its diversity.

The sampler (``difflens collapse diversity --prob-caps``) samples the tuned model with each
probability cap (no token above the cap); every sample set, the models' own and the capped
ones, is scored by one model (the base). A set's perplexity is ``exp`` of the mean over its
texts of each text's mean negative log-prob per token, with a 95% bootstrap CI over texts
(the CI of the mean NLL, exponentiated).
"""

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.bootstrap import Estimate, nanmean_estimate

#: The diversity estimates each set's row carries beside its perplexity.
DIVERSITY_KEYS = ("distinct_2", "self_bleu", "vendi", "precision", "recall")


def text_nll(tokens: pd.DataFrame, n_texts: int) -> np.ndarray:
    """Per text (``text_id`` 0 .. ``n_texts - 1``), the mean negative log-prob of its tokens
    under the scorer: the one ``<model>_logprob`` column of a
    ``TextDivergence`` token table (NaN for a text
    without tokens)."""
    logprob = next(c for c in tokens.columns if c.endswith("_logprob"))
    nll = -tokens.groupby("text_id")[logprob].mean()
    return nll.reindex(range(n_texts)).to_numpy()


def perplexity(nll: Sequence[float] | np.ndarray, *, seed: int = 0) -> Estimate:
    """``exp`` of the mean per-text NLL, with the exponentiated CI of that mean over texts
    (``n``: the texts with a finite NLL)."""
    m = nanmean_estimate(nll, seed=seed, resampled="texts")
    return Estimate(value=float(np.exp(m.value)), ci_low=float(np.exp(m.ci_low)),
                    ci_high=float(np.exp(m.ci_high)), n=m.n, resampled=m.resampled)


def decollapse_summary(table: pd.DataFrame, diversity: Mapping[str, Mapping[str, Any]], *,
                       model: str, scorer: str, caps: Sequence[float], seed: int = 0
                       ) -> dict[str, Any]:
    """``{model, scorer, caps, sets: {set: {ppl_under_scorer, n_texts, distinct_2,
    self_bleu, vendi, precision, recall}}}``.

    Args:
        table: one row per text, with its ``set`` and ``nll`` (``text_nll``).
        diversity: every set's diversity summary row
            (``summary``), in the order of
            the sets.
        model: the capped model.
        scorer: the model whose NLL the perplexity is.
        caps: the sampler's caps.
        seed: bootstrap seed.

    ``ppl_under_scorer`` is an estimate (``perplexity``), the diversity keys are the
    diversity summary's own.
    """
    result: dict[str, Any] = {"model": model, "scorer": scorer, "caps": list(caps),
                              "sets": {}}
    for label, source in diversity.items():
        ppl = perplexity(table.loc[table.set == label, "nll"].to_numpy(np.float64), seed=seed)
        row: dict[str, Any] = {"ppl_under_scorer": ppl.to_json(), "n_texts": ppl.n}
        row |= {k: v for k, v in source.items() if k in DIVERSITY_KEYS}
        result["sets"][label] = row
    return result
