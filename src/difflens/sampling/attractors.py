"""Attractor tests: perturb a greedy completion half-way, regenerate, and compare the endings.

For each prompt, each model writes a temperature-0 completion of ``max_new_tokens`` tokens.
At several positions (fractions of the completion, snapped to the start of a word) it is
perturbed in two ways:

- ``replace``: the word's first token becomes the model's most likely *other* token there;
- ``insert``: a phrase (default ``" Suddenly,"``) is inserted before the word.

From each perturbed prefix the model regenerates greedily with the budget the original had
left, so a completion that ignores the perturbation ends on the very same tokens. The
*ending* is the last ``ending_tokens`` generated tokens (default a quarter of the budget);
perturbations are placed before it, so it is always regenerated text. Closeness of the new
ending to the original one is measured by exact match, normalised token edit distance and
sentence-embedding cosine; the final complete sentences are also compared as text. The
**attractor strength** of a model is 1 - the mean normalised edit distance of the endings
(1: every perturbation returns to the very same ending), with a bootstrap CI over prompts.
``chance`` is the same score between the original endings of *different* prompts: how
alike the endings are with no perturbation at all (a model that ends every story the same
way scores high here too).

**Confidence after an escape**: along every regenerated path the model's next-token entropy
is kept, and compared with the original path's entropy over the same positions. For the
perturbations that escaped (a different ending), a new path as confident as the old one
(difference near 0) means the model collapses onto another attractor rather than becoming
unsure.
"""

import dataclasses
import re
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from difflens.analysis.bootstrap import bootstrap_ratio
from difflens.errors import InputError
from difflens.models.encoders import DEFAULT_ENCODER, Encoder, embed_texts
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.sampling.generate import GenerationConfig, generate

KINDS = ("replace", "insert")
_SENT = re.compile(r"(?<=[.!?])\s+")


def greedy_ids(lm: LoadedModel, seqs: Sequence[Sequence[int]], budgets: Sequence[int],
               batch_size: int = 32) -> tuple[list[list[int]], list[list[float]]]:
    """Greedy continuation ids of each sequence (KV cache, left-padded batches), cut at EOS
    and at its own budget, and the model's entropy (nats) at each of those tokens."""
    gen = generate(lm, seqs, GenerationConfig(max_new_tokens=max(1, max(budgets)),
                                              temperature=0.0, batch_size=batch_size),
                   keep_entropy=True)
    ents = gen.entropies or [[] for _ in seqs]
    return ([row[:b] for row, b in zip(gen.token_ids, budgets, strict=True)],
            [h[:b] for h, b in zip(ents, budgets, strict=True)])


def final_sentence(text: str, min_words: int = 3) -> str:
    """The last complete sentence of at least ``min_words`` words (a trailing fragment cut by
    the token budget is skipped), else the last such sentence, else the stripped text."""
    sents = [s.strip() for s in _SENT.split(text.strip()) if s.strip()]
    complete = [s for s in sents if s[-1] in ".!?"]
    for group in (complete, sents):
        for sent in reversed(group):
            if len(sent.split()) >= min_words:
                return sent
    return text.strip()


def edit_distance(a: Sequence[int], b: Sequence[int]) -> float:
    """Levenshtein distance between token sequences / the longer length (0 when both empty)."""
    if not a and not b:
        return 0.0
    prev = list(range(len(b) + 1))
    for i, x in enumerate(a, 1):
        cur = [i] + [0] * len(b)
        for j, y in enumerate(b, 1):
            cur[j] = min(prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (x != y))
        prev = cur
    return prev[-1] / max(len(a), len(b))


def _word_starts(lm: LoadedModel, ids: Sequence[int]) -> list[int]:
    """Token indices (> 0) where a new word starts."""
    pieces = lm.tokenizer.convert_ids_to_tokens(list(ids))
    starts = [k for k, p in enumerate(pieces)
              if k > 0 and p and (p[0] in "Ġ▁ \n" or not p[0].isalnum())]
    return starts or list(range(1, len(ids)))


@dataclasses.dataclass(frozen=True)
class AttractorResult:
    table: pd.DataFrame
    """One row per model, prompt and perturbation: position, kind, the perturbed word, the
    original and new endings, exact, edit_distance, same_final_sentence, cosine, and the mean
    entropy of the regenerated path and of the original path over the same positions."""
    originals: pd.DataFrame
    """One row per model and prompt: the original greedy completion, its ending and final
    sentence."""
    chance: dict[str, float]
    """model -> 1 - mean edit distance between endings of different prompts."""

    def summary(self, *, seed: int = 0, n_boot: int = 2000) -> dict[str, Any]:
        """``{model: {n, n_prompts, strength, exact_rate, final_sentence_rate, cosine, chance,
        by_kind, entropy_after}}``: ``strength`` .. ``cosine`` are means over the
        perturbations (``n``) with bootstrap CIs over prompts, as estimates (``{value,
        ci_low, ci_high, n, resampled: "prompts"}``)."""
        out: dict[str, Any] = {}
        for model, g in self.table.groupby("model", sort=False):
            per = g.groupby("prompt_id")
            row: dict[str, Any] = {"n": len(g), "n_prompts": per.ngroups}
            sums = per.size().to_numpy(dtype=np.float64)
            for key, col, sign in (("strength", "edit_distance", -1), ("exact_rate", "exact", 1),
                                   ("final_sentence_rate", "same_final_sentence", 1),
                                   ("cosine", "cosine", 1)):
                est = bootstrap_ratio(per[col].sum().to_numpy(dtype=np.float64), sums,
                                      n_boot=n_boot, seed=seed, resampled="prompts")
                if sign < 0:
                    est = dataclasses.replace(est, value=1 - est.value, ci_low=1 - est.ci_high,
                                              ci_high=1 - est.ci_low)
                row[key] = dataclasses.replace(est, n=len(g)).to_json()
            row["chance"] = self.chance.get(str(model), float("nan"))
            row["by_kind"] = {str(k): float(1 - gk.edit_distance.mean())
                              for k, gk in g.groupby("kind")}
            row["entropy_after"] = _entropy_after(g, seed, n_boot)
            out[str(model)] = row
        return out


def _entropy_after(g: pd.DataFrame, seed: int, n_boot: int) -> dict[str, Any]:
    """Confidence after an escape: the model's mean entropy on the regenerated path against
    the original path over the same positions, for perturbations that escaped (a different
    ending) and that returned (the same ending); paired differences with a bootstrap CI over
    prompts. ``new``, ``original`` and ``diff`` are estimates (``{value, ci_low, ci_high, n,
    resampled: "prompts"}``, ``n`` the perturbations)."""
    out: dict[str, Any] = {}
    g = g[np.isfinite(g.entropy_new) & np.isfinite(g.entropy_original)]
    for name, part in (("escaped", g[g.exact == 0]), ("returned", g[g.exact == 1])):
        per = part.groupby("prompt_id")
        row: dict[str, Any] = {"n": len(part), "n_prompts": per.ngroups}
        if len(part):
            sizes = per.size().to_numpy(np.float64)
            for key, col in (("new", part.entropy_new),
                             ("original", part.entropy_original),
                             ("diff", part.entropy_new - part.entropy_original)):
                est = bootstrap_ratio(col.groupby(part.prompt_id).sum().to_numpy(np.float64),
                                      sizes, n_boot=n_boot, seed=seed, resampled="prompts")
                row[key] = dataclasses.replace(est, n=len(part)).to_json()
        out[name] = row
    out["units"] = "nats per token (greedy path, the model's own distribution at T = 1)"
    return out


def attractor_test(
    model_or_pair: LoadedModel | ModelPair | ModelSet,
    prompts: Sequence[str],
    *,
    max_new_tokens: int = 48,
    positions: Sequence[float] = (0.2, 0.4, 0.6),
    kinds: Sequence[str] = KINDS,
    insert: str = " Suddenly,",
    ending_tokens: int | None = None,
    encoder: Encoder | None = DEFAULT_ENCODER,
    progress: Callable[[int], None] | None = None,
    batch_size: int = 32,
) -> AttractorResult:
    """Perturb every model's greedy completion of every prompt and regenerate (see module).

    Args:
        model_or_pair: one model or a pair (each is tested on its own completions).
        prompts: prompt texts.
        max_new_tokens: the completion's budget of generated tokens.
        positions: where to perturb, as fractions of the completion (positions inside the
            ending window are dropped).
        kinds: ``replace`` and/or ``insert``.
        insert: the phrase inserted by ``insert``.
        ending_tokens: length of the compared ending (default ``max(4, max_new_tokens // 4)``).
        encoder: sentence encoder for the cosine of endings, a name or folder or an embedder
            callable (see ``difflens.models.encoders.embedder``; None: skip the cosine).
        progress: called with 1 per model.
    """
    bad = sorted(set(kinds) - set(KINDS))
    if bad or not kinds:
        raise InputError(f"kinds must be among {', '.join(KINDS)}, got {list(kinds)}")
    if not prompts or any(not p.strip() for p in prompts):
        raise InputError("every prompt needs text")
    if not positions or not all(0 < f < 1 for f in positions):
        raise InputError(f"positions are fractions in (0, 1), got {list(positions)}")
    w = ending_tokens or max(4, max_new_tokens // 4)
    rows: list[dict[str, Any]] = []
    originals: list[dict[str, Any]] = []
    chance: dict[str, float] = {}
    for label, lm in models_of(model_or_pair).items():
        tok = lm.tokenizer
        pre = [list(tok(p)["input_ids"]) for p in prompts]
        base, base_h = greedy_ids(lm, pre, [max_new_tokens] * len(pre), batch_size=batch_size)
        ins = list(tok(insert, add_special_tokens=False)["input_ids"]) if insert else []
        jobs: list[tuple[int, str, int, list[int], int, str]] = []
        mine: list[dict[str, Any]] = []
        for p, (ids, comp) in enumerate(zip(pre, base, strict=True)):
            text = tok.decode(comp, skip_special_tokens=True)
            mine.append({"model": label, "prompt_id": p, "prompt": prompts[p],
                         "completion": text, "ending_ids": comp[-w:],
                         "ending": tok.decode(comp[-w:], skip_special_tokens=True),
                         "final_sentence": final_sentence(text)})
            starts = [k for k in _word_starts(lm, comp) if k < len(comp) - w]
            if not starts:
                continue
            at = sorted({starts[int(np.argmin([abs(s - f * len(comp)) for s in starts]))]
                         for f in positions})
            if "replace" in kinds:  # one pass gives the alternatives at every position
                with torch.inference_mode():
                    logits = lm.model(torch.tensor([ids + comp], device=lm.device)).logits[0]
            for k in at:
                if "replace" in kinds:
                    top2 = logits[len(ids) + k - 1].topk(2).indices.tolist()
                    alt = top2[1] if top2[0] == comp[k] else top2[0]
                    jobs.append((p, "replace", k, ids + comp[:k] + [alt],
                                 len(comp) - k - 1, tok.decode([alt])))
                if "insert" in kinds and ins:
                    jobs.append((p, "insert", k, ids + comp[:k] + ins, len(comp) - k, insert))
        regen, regen_h = greedy_ids(lm, [j[3] for j in jobs], [j[4] for j in jobs],
                                    batch_size=batch_size)
        for (p, kind, k, seq, _b, word), new, new_h in zip(jobs, regen, regen_h, strict=True):
            # the original path over the positions the new one regenerated: after the
            # replaced token, or from the insertion point
            old_h = base_h[p][k + 1 if kind == "replace" else k:][:len(new_h)]
            gen = seq[len(pre[p]):] + new
            new_text = tok.decode(gen, skip_special_tokens=True)
            orig = mine[p]
            n_ids = gen[-w:]
            rows.append({"model": label, "prompt_id": p, "kind": kind, "token_index": k,
                         "fraction": k / max(1, len(base[p])), "perturbation": word,
                         "original_ending": orig["ending"],
                         "new_ending": tok.decode(n_ids, skip_special_tokens=True),
                         "new_text": new_text, "exact": float(orig["ending_ids"] == n_ids),
                         "edit_distance": edit_distance(orig["ending_ids"], n_ids),
                         "same_final_sentence": float(
                             orig["final_sentence"] == final_sentence(new_text)),
                         "entropy_new": float(np.mean(new_h)) if new_h else np.nan,
                         "entropy_original": float(np.mean(old_h)) if old_h else np.nan})
        ends = [o["ending_ids"] for o in mine]
        pairs = [(i, (i + s) % len(ends)) for s in (1, 2, 3) for i in range(len(ends))
                 if len(ends) > s]
        chance[label] = (float(1 - np.mean([edit_distance(ends[i], ends[j])
                                             for i, j in pairs])) if pairs else float("nan"))
        originals += [{k: v for k, v in o.items() if k != "ending_ids"} for o in mine]
        if progress is not None:
            progress(1)
    table = pd.DataFrame(rows)
    if table.empty:
        raise InputError(f"no completion was long enough to perturb before its last {w} "
                         f"tokens; raise max_new_tokens or lower ending_tokens")
    if encoder is not None:
        a = embed_texts(table.original_ending.tolist(), encoder)
        b = embed_texts(table.new_ending.tolist(), encoder)
        table["cosine"] = (a * b).sum(1)
    else:
        table["cosine"] = np.nan
    return AttractorResult(table=table, originals=pd.DataFrame(originals), chance=chance)
