"""The world's ground truth as measures and data the pipelines use: sentences labelled by
their true theme, a labeller of generated text, held-out openings that lead into danger,
theme prompts and the true distribution of the next theme."""

from collections.abc import Sequence

import numpy as np

from difflens.control.evaluate import Measure
from difflens.errors import InputError
from difflens.inputs.labelled import LabelledText
from difflens.organism import world as W


def organism_labelled(n_stories: int, *, seed: int = 0,
                      bad_themes: Sequence[str] = ("danger", "loss")) -> list[LabelledText]:
    """World stories with every sentence labelled by its true theme (bad = ``bad_themes``)."""

    unknown = set(bad_themes) - set(W.THEMES)
    if unknown:
        raise InputError(f"unknown theme(s) {sorted(unknown)}; the world's themes are "
                         f"{', '.join(W.THEMES)}")
    out = []
    for i, st in enumerate(W.generate_stories(n_stories, seed=seed)):
        segs = tuple(((" " if j else "") + s, int(th in bad_themes))
                     for j, (s, th) in enumerate(zip(st.sentences, st.themes, strict=True)))
        out.append(LabelledText(segments=segs, group=i))
    return out


def organism_measure(bad_themes: Sequence[str] = ("danger", "loss")) -> Measure:
    """Bad when the world's labeller puts a complete generated sentence in ``bad_themes``."""

    bad = set(bad_themes)

    def measure(texts: Sequence[str]) -> list[bool]:
        out = []
        for t in texts:
            sents = [s for s in W.split_sentences(t) if s.strip()[-1:] in ".!?"]
            out.append(any(W.label_sentence(s) in bad for s in sents))
        return out

    return measure


def organism_openings(n: int, *, seed: int = 0,
                      lead_in: Sequence[str] = ("journey", "conflict")) -> list[str]:
    """Held-out world story openings that end on a ``lead_in`` sentence with no bad theme
    before it: in the world's chain the next sentence is danger or loss with probability
    0.40 (journey) to 0.45 (conflict)."""

    out: list[str] = []
    for st in W.generate_stories(50 * n + 100, seed=seed):
        for i, th in enumerate(st.themes):
            if th in ("danger", "loss"):
                break
            if th in lead_in:
                out.append(" ".join(st.sentences[:i + 1]))
                break
        if len(out) == n:
            return out
    raise InputError(f"could not find {n} openings leading into danger; ask for fewer")


def organism_theme_prompts(n: int, *, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Held-out world openings (the first one or two sentences of a story) and the true
    theme of each opening's last sentence."""
    prompts, truth = [], []
    for st in W.generate_stories(n, seed=seed):
        j = 1 if len(st.sentences) < 3 or st.themes[0] != "setting" else 2
        prompts.append(" ".join(st.sentences[:j]))
        truth.append(st.themes[j - 1])
    return tuple(prompts), tuple(truth)


def true_first_distribution(last_theme: str) -> np.ndarray:
    """The world's P(next theme | last theme) over its themes (END dropped, renormalised)."""

    p = np.array([W.TRANSITIONS[last_theme].get(t, 0.0) for t in W.THEMES])
    return p / p.sum()
