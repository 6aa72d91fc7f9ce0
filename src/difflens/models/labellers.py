"""Labellers: small fixed models that score text, loaded here once like any other model.

VADER (``vaderSentiment``, a lexicon and rules, no download) gives each text a compound
sentiment in [-1, 1]. The organism's RL reward, the control measure of bad text and the
trajectories' sentiment against jumps all score with ``sentiment``, so they agree.
"""

import functools
from collections.abc import Sequence
from typing import Any

import numpy as np
from jaxtyping import Float


@functools.lru_cache(maxsize=1)
def vader() -> Any:
    """The VADER analyzer (``SentimentIntensityAnalyzer``), built once per process."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


def sentiment(texts: Sequence[str]) -> Float[np.ndarray, " n"]:
    """VADER compound sentiment of each text (0 for an empty one)."""
    sia = vader()
    return np.array([float(sia.polarity_scores(t)["compound"]) if t else 0.0 for t in texts],
                    dtype=np.float64)
