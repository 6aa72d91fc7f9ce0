"""Divergence along text: per-token entropy, KL both ways, top-1 agreement and log-probs.

The corpus is prompts with continuations, sampled from either model (seeded) or read from a
file. Every ``prompt + continuation`` is captured with ``capture``
(full next-token distributions of both models, in a resumable run store), and the rows that
predict continuation tokens are kept, indexed by ``t``, the continuation token's index.
Summaries average per text first, so the bootstrap CIs are over texts, not tokens.
"""

import dataclasses
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import jsonl_objects
from difflens.analysis.bootstrap import bootstrap_ci, nanmean_estimate
from difflens.analysis.contexts import context_summary, ngram_contexts
from difflens.capture import capture
from difflens.capture.cumulative_paths import sample_continuations
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair, models_of

PAIR_COLUMNS = ("kl_tuned_base", "kl_base_tuned", "top1_agree")


@dataclasses.dataclass(frozen=True)
class Corpus:
    """Prompts and continuations, each tagged with where the continuation came from."""

    prompts: list[str]
    continuations: list[str]
    sources: list[str]


def read_corpus(path: str | Path) -> Corpus:
    """A JSONL file with ``prompt`` and ``continuation`` fields (``source`` optional)."""
    p = Path(path)
    if not p.is_file():
        raise InputError(f"corpus file {p} does not exist")
    prompts, conts, sources = [], [], []
    for where, obj in jsonl_objects(p):
        if (not isinstance(obj, dict) or not isinstance(obj.get("prompt"), str)
                or not isinstance(obj.get("continuation"), str) or not obj["prompt"].strip()
                or not obj["continuation"].strip()):
            raise InputError(f"{where}: expected {{\"prompt\": text, \"continuation\": text}} "
                             f"with both non-empty")
        prompts.append(obj["prompt"])
        conts.append(obj["continuation"])
        sources.append(str(obj.get("source", "file")))
    if not prompts:
        raise InputError(f"{p} holds no items")
    return Corpus(prompts, conts, sources)


def sample_corpus(model_or_pair: LoadedModel | ModelPair, prompts: Sequence[str], *,
                  sources: Sequence[str] | None = None, max_new_tokens: int = 40,
                  seed: int = 0, temperature: float = 1.0, batch_size: int = 16) -> Corpus:
    """One sampled continuation per prompt from each model in ``sources`` (default: all),
    prompt ``p``'s seeded ``seed + 1000 * p``, sampled ``batch_size`` prompts at a time."""
    models = models_of(model_or_pair)
    sources = list(sources or models)
    unknown = sorted(set(sources) - set(models))
    if unknown:
        raise InputError(f"unknown source(s) {unknown}; choose among {sorted(models)}")
    out = Corpus([], [], [])
    for label in sources:
        lm = models[label]
        ids = [lm.tokenizer(p)["input_ids"] for p in prompts]
        for p, conts in zip(prompts, sample_continuations(lm, ids, 1, max_new_tokens, seed,
                                                          temperature, batch_size),
                              strict=True):
            text = lm.tokenizer.decode(conts[0], skip_special_tokens=True)
            if text.strip():
                out.prompts.append(p)
                out.continuations.append(text)
                out.sources.append(label)
    return out


@dataclasses.dataclass(frozen=True)
class TextDivergence:
    tokens: pd.DataFrame
    """One row per continuation token: text_id, source, t, token, context (``copy``,
    ``repeat`` or ``novel``: ``ngram_contexts``),
    ``<model>_entropy``, ``<model>_logprob`` and, for a pair, kl_tuned_base, kl_base_tuned,
    top1_agree."""
    corpus: Corpus

    @property
    def metrics(self) -> list[str]:
        return [c for c in self.tokens.columns
                if c.endswith(("_entropy", "_logprob")) or c in PAIR_COLUMNS]

    def summary(self, *, seed: int = 0) -> dict[str, Any]:
        """``{<metric>_mean, n_texts, n_tokens, by_source: {...}, contexts, units}``: each
        ``<metric>_mean`` is the mean over texts of each text's mean, an estimate
        (``{value, ci_low, ci_high, n, resampled: "texts"}``, ``n`` the texts with a finite
        mean)."""
        def block(df: pd.DataFrame) -> dict[str, Any]:
            per_text = df.groupby("text_id")[self.metrics].mean()
            row: dict[str, Any] = {"n_texts": len(per_text), "n_tokens": len(df)}
            for m in self.metrics:
                row[f"{m}_mean"] = nanmean_estimate(per_text[m].to_numpy(dtype=np.float64),
                                                    seed=seed, resampled="texts").to_json()
            return row

        out = block(self.tokens)
        out["by_source"] = {str(s): block(g) for s, g in self.tokens.groupby("source")}
        if "context" in self.tokens:
            out["contexts"] = self.contexts(seed=seed)
        out["units"] = "nats; log-probs are of the continuation's actual tokens"
        return out

    def contexts(self, *, seed: int = 0) -> dict[str, Any]:
        """Which contexts collapse: the entropy drop (base - tuned; for one model, its
        entropy) by copy / repeat / novel context (``difflens.analysis.contexts``)."""
        df = self.tokens
        if "base_entropy" in df and "tuned_entropy" in df:
            df = df.assign(entropy_drop=df.base_entropy - df.tuned_entropy)
            return context_summary(df, "entropy_drop", seed=seed)
        col = next(c for c in df.columns if c.endswith("_entropy"))
        return context_summary(df, col, seed=seed)

    def by_position(self, *, max_t: int = 64, seed: int = 0) -> pd.DataFrame:
        """Mean and 95% CI of every metric at each continuation index ``t``."""
        rows = []
        for t, g in self.tokens[self.tokens.t < max_t].groupby("t"):
            row: dict[str, Any] = {"t": int(t), "n": len(g)}
            for m in self.metrics:
                x = g[m].to_numpy(dtype=np.float64)
                row[m] = float(np.nanmean(x))
                row[f"{m}_lo"], row[f"{m}_hi"] = bootstrap_ci(x, seed=seed, n_boot=200)
            rows.append(row)
        return pd.DataFrame(rows)


def text_divergence(model_or_pair: LoadedModel | ModelPair, corpus: Corpus, *,
                    store: str | Path, progress: bool = False,
                    on_done: Callable[[], None] | None = None,
                    batch_size: int = 32) -> TextDivergence:
    """Per-token statistics of ``corpus`` under one model or a pair (see the module)."""
    models = models_of(model_or_pair)
    tok = next(iter(models.values())).tokenizer
    texts = [p + c for p, c in zip(corpus.prompts, corpus.continuations, strict=True)]
    run = capture(model_or_pair, texts, store=store, layers=[0], positions="last",
                  batch_size=batch_size,
                  progress=progress)
    cols = ["prompt_idx", "pos", "token"] + [f"{m}_{k}" for m in models
                                             for k in ("entropy", "logprob_next")]
    if isinstance(model_or_pair, ModelPair):
        cols += list(PAIR_COLUMNS)
    stats = run.stats(cols)
    n_prompt = np.array([len(tok(p)["input_ids"]) for p in corpus.prompts])
    n_all = run.prompts["n_tokens"].to_numpy()
    idx = stats["prompt_idx"].to_numpy()
    t = stats["pos"].to_numpy() - (n_prompt[idx] - 1)
    keep = (t >= 0) & (stats["pos"].to_numpy() < n_all[idx] - 1)
    df = stats[keep].copy()
    df.insert(1, "t", t[keep])
    df.insert(1, "source", [corpus.sources[i] for i in df["prompt_idx"]])
    # The token a row predicts is the next one; name it so.
    tokens_all = stats.groupby("prompt_idx")["token"].apply(list)
    df["token"] = [tokens_all[i][p + 1] for i, p in zip(df["prompt_idx"], df["pos"],
                                                        strict=True)]
    contexts = {i: ngram_contexts(tokens_all[i], int(n_prompt[i])) for i in tokens_all.index}
    df["context"] = [contexts[i][p + 1 - int(n_prompt[i])]
                     for i, p in zip(df["prompt_idx"], df["pos"], strict=True)]
    df = df.rename(columns={"prompt_idx": "text_id",
                            **{f"{m}_logprob_next": f"{m}_logprob" for m in models}})
    if "top1_agree" in df:
        df["top1_agree"] = df["top1_agree"].astype(float)
    if on_done is not None:
        on_done()
    return TextDivergence(tokens=df.drop(columns=["pos"]).reset_index(drop=True), corpus=corpus)
