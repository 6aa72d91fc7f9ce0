"""The steps of ``difflens discover`` on one pair (base, tuned): the Activation Difference
Lens (mean differences, logit lens, Patchscope, steering, causal check), diff mining, the
log-odds baseline, amplification and the hypothesis, each adding its part to the pair's
summary and its tables (``Pair.frames``). ``pipelines/discover.py`` runs them per pair and
writes the outputs; the statistics are in ``analysis/discover.py``."""

import dataclasses
import functools
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch

from difflens.analysis import discover as D
from difflens.analysis.bootstrap import bootstrap_mean, bootstrap_paired
from difflens.analysis.diversity import distinct_n
from difflens.capture.activation_diff import (
    IDENTITY_PROMPTS,
    activation_difference,
    continuation_nll,
    logit_lens,
    mean_states,
    patched_losses,
    patchscope,
)
from difflens.capture.logit_diff import logit_diff_records, word_completions
from difflens.control.steering import steering
from difflens.models.encoders import embedder
from difflens.models.loading import LoadedModel
from difflens.pipelines.discover_config import DiscoverConfig
from difflens.sampling.backend import amplified
from difflens.sampling.generate import GenerationConfig, generate


def token_texts(lm: LoadedModel) -> list[str]:
    """Each token's text, with ``""`` for a piece inside a word when the tokenizer marks
    word starts (``▁the``, ``Ġthe``): such a piece (``ig`` of ``▁l ig h t h ou se``) names
    no word, so no method lists it."""
    vocab = int(lm.model.get_output_embeddings().weight.shape[0])
    n = min(len(lm.tokenizer), vocab)
    texts = list(lm.tokenizer.batch_decode([[i] for i in range(n)])) + [""] * (vocab - n)
    pieces = lm.tokenizer.convert_ids_to_tokens(list(range(n)))
    marked = sum(isinstance(x, str) and x.startswith(("▁", "Ġ")) for x in pieces)
    if marked > n // 10:  # the tokenizer marks word starts: drop the inner pieces
        texts = [t if isinstance(x, str) and x.startswith(("▁", "Ġ")) else ""
                 for t, x in zip(texts, pieces + [""] * (vocab - n), strict=True)]
    return texts


def complete_words(p: "Pair", tokens: Sequence[int]) -> dict[int, str]:
    """Each token's readable text: a word-starting token as the word the tuned model
    completes it to (``capture.logit_diff.word_completions``), cached per run."""
    cache: dict[int, str] = p.extra.setdefault("completions", {})
    todo = sorted({int(t) for t in tokens} - set(cache))
    cache |= {t: "" for t in todo if not p.tokens[t]}  # a piece inside a word
    todo = [t for t in todo if p.tokens[t]]
    if todo:
        cache |= word_completions(p.tuned, todo, batch_size=p.config.batch_size)
    return {int(t): cache[int(t)] for t in tokens}


def word_of(p: "Pair", token: int) -> str | None:
    """A token's word: its completion when one was made, else its own text."""
    return D.as_word(p.extra.get("completions", {}).get(int(token), p.tokens[int(token)]))


def ranked_words(p: "Pair", scores: np.ndarray, n: int) -> list[tuple[str, float]]:
    """The first ``n`` distinct words of the tokens ranked by ``scores`` (higher first),
    each token read as its completed word."""
    order = np.argsort(-np.asarray(scores), kind="stable")[:10 * n + 100]
    words = complete_words(p, order.tolist())
    return D.dedupe_words([words[int(t)] for t in order], np.asarray(scores)[order], n)


def _est(e: Any) -> dict[str, Any]:
    return dict(e.to_json())


# -- one pair -------------------------------------------------------------------------------


@dataclasses.dataclass
class Pair:
    base: LoadedModel
    tuned: LoadedModel
    names: tuple[str, str]
    texts: list[str]
    openings: list[str]
    finetune: list[str] | None
    config: DiscoverConfig
    tokens: list[str]
    bar: Any
    frames: dict[str, pd.DataFrame] = dataclasses.field(default_factory=dict)
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)
    shared: dict[Any, Any] = dataclasses.field(default_factory=dict)
    """What one model gives every pair it is in (its mean states, own samples and greedy
    openings), by ``(what, id(model))``: a lineage reads each model once."""

    def once(self, what: str, lm: LoadedModel, make: Callable[[], Any]) -> Any:
        key = (what, id(lm))
        if key not in self.shared:
            self.shared[key] = make()
        return self.shared[key]


def _gen_config(c: DiscoverConfig, seed: int | None = None, temperature: float = 1.0
                ) -> GenerationConfig:
    return GenerationConfig(max_new_tokens=c.max_new_tokens, temperature=temperature,
                            seed=c.seed if seed is None else seed, batch_size=c.batch_size,
                            sampler="inverse_cdf")


def _rows(p: Pair) -> tuple[list[str], list[tuple[int, int]]]:
    """Each opening ``samples`` times, each row its own stream (paired across models and
    alphas: the same row draws the same uniforms)."""
    rows = [o for o in p.openings for _ in range(p.config.samples)]
    return rows, [(1, p.config.seed + i) for i in range(len(rows))]


def _sample(p: Pair, lm: LoadedModel, backend: Any = None,
            temperature: float = 1.0) -> tuple[list[str], list[list[int]], list[list[int]]]:
    rows, streams = _rows(p)
    gen = generate(lm, rows, _gen_config(p.config, temperature=temperature), streams=streams,
                   backend=backend)
    return gen.texts(lm.tokenizer), gen.prompt_ids, gen.token_ids


def _adl(p: Pair, summary: dict[str, Any]) -> None:
    c, base, tuned = p.config, p.base, p.tuned
    layer = tuned.layers.normalize(c.layer) if c.layer is not None else tuned.n_layers // 2
    tick = p.bar("ADL: mean states", 2 * len(p.texts))
    means = [p.once("means", lm, functools.partial(
        mean_states, lm, p.texts, k=c.positions, batch_size=c.batch_size,
        progress=lambda n: tick(n, ""))) for lm in (base, tuned)]
    ad = activation_difference(*means)
    delta = ad.mean_delta(layer)
    norm = float(ad.tuned_norm[ad.layers.index(layer)])
    rel = float(delta.norm()) / max(norm, 1e-12)
    # every layer: the size of the mean difference and what the tuned lens reads in it
    rows = []
    for i, lay in enumerate(ad.layers):
        d = ad.mean_delta(lay)
        lens = logit_lens(tuned, d[None], lay)[0]
        words = ranked_words(p, lens.numpy(), 5) if float(d.norm()) > 0 else []
        rows.append({"layer": lay, "delta_norm": float(d.norm()),
                     "tuned_norm": float(ad.tuned_norm[i]), "base_norm": float(ad.base_norm[i]),
                     "relative_norm": float(d.norm()) / max(float(ad.tuned_norm[i]), 1e-12),
                     "lens_words": " ".join(w for w, _ in words)})
    p.frames["adl_layers"] = pd.DataFrame(rows)
    p.frames["adl_positions"] = pd.DataFrame(
        [{"layer": lay, "position": j, "n_texts": int(ad.counts[j]),
          "delta_norm": float(ad.delta[i, j].norm()),
          "relative_norm": float(ad.delta[i, j].norm()) / max(float(ad.tuned_norm[i]), 1e-12)}
         for i, lay in enumerate(ad.layers) for j in range(ad.k)])
    p.extra["adl_delta"] = ad
    out: dict[str, Any] = {"layer": layer, "positions": c.positions, "n_texts": len(p.texts),
                           "relative_norm": rel, "delta_norm": float(delta.norm()),
                           "tuned_mean_norm": norm, "bos_left_out": ad.bos}
    if rel < 1e-6:
        out |= {"top_words": [], "note": "delta is zero: the two models' states are the same "
                                         "on these texts"}
        summary["adl"] = out
        return
    # logit lens of +-delta (mean over positions, and each position) through both models
    lens_rows = []
    lens_top: dict[str, list[tuple[str, float]]] = {}
    for model_name, lm in (("tuned", tuned), ("base", base)):
        for sign in (1, -1):
            lp = logit_lens(lm, sign * delta[None], layer)[0].numpy()
            key = f"{model_name}_{'plus' if sign > 0 else 'minus'}"
            lens_top[key] = ranked_words(p, lp, c.n_words)
            lens_rows += [{"lens": key, "position": "mean", "rank": r, "word": w,
                           "logprob": s} for r, (w, s) in enumerate(lens_top[key])]
    per_pos = ad.at(layer)
    for j in range(per_pos.shape[0]):
        lp = logit_lens(tuned, per_pos[j][None], layer)[0].numpy()
        lens_rows += [{"lens": "tuned_plus", "position": str(j), "rank": r, "word": w,
                       "logprob": s} for r, (w, s) in enumerate(ranked_words(p, lp, 10))]
    p.frames["adl_lens"] = pd.DataFrame(lens_rows)
    # Patchscope: delta scaled to multiples of the tuned model's mean norm
    unit = delta / delta.norm()
    vecs = torch.stack([unit * s * norm for s in c.scales])
    lp = patchscope(tuned, vecs, layer, batch_size=c.batch_size).numpy()
    cand = {int(t) for row in lp.reshape(-1, lp.shape[-1])
            for t in np.argsort(-row, kind="stable")[:c.n_words]}
    readable = complete_words(p, sorted(cand))
    texts = [readable.get(i, t) for i, t in enumerate(p.tokens)]
    choice = D.choose_patchscope(lp, c.scales, texts, prompts=IDENTITY_PROMPTS, k=c.n_words)
    p.frames["adl_patchscope"] = pd.DataFrame(
        [{"scale": choice.scales[s], "rank": r, "token": t, "word": D.as_word(texts[t]),
          "probability": pr, "chosen": s == choice.chosen}
         for s, agreed in enumerate(choice.agreed) for r, (t, pr) in enumerate(agreed)],
        columns=["scale", "rank", "token", "word", "probability", "chosen"])
    patch_words = list(dict.fromkeys(
        w for t, _ in choice.agreed[choice.chosen] if (w := D.as_word(texts[t])))) \
        if choice.chosen >= 0 else []
    lens_words = [w for w, _ in lens_top["tuned_plus"]]
    score: dict[str, float] = {}
    for ws in (lens_words, patch_words):
        for r, w in enumerate(ws):
            score[w] = score.get(w, 0.0) + 1.0 / (1 + r)
    top = sorted(score, key=lambda w: (-score[w], w))[:c.n_words]
    out |= {"top_words": top, "lens": {k: [w for w, _ in v] for k, v in lens_top.items()},
            "patchscope": {"scales": list(choice.scales),
                           "chosen_scale": (choice.scales[choice.chosen] if choice.chosen >= 0
                                            else None),
                           "words": patch_words,
                           "rule": "the scale with the most word tokens in every identity "
                                   "prompt's top k, words of the prompts themselves left "
                                   "out (ties: the smaller scale)"},
            "combined_rule": "words ranked by 1/(1+rank) summed over the tuned logit lens "
                             "of +delta and the Patchscope at its chosen scale"}
    out["steering"] = _steer(p, layer, unit, norm)
    if p.finetune:
        out["causal"] = _causal(p, layer, delta)
    else:
        out["causal"] = {"note": "not measured: give the fine-tuning texts (--finetune-texts)"}
    summary["adl"] = out


def _steer(p: Pair, layer: int, unit: torch.Tensor, norm: float) -> dict[str, Any]:
    """Steer both models with delta, the strength searched per opening (the largest whose
    perplexity under the base stays within ``coherence_factor`` of the unsteered sample's),
    and with random vectors of the same norm at the strength chosen for delta."""
    c = p.config
    prompts = p.openings
    cfg = _gen_config(c, temperature=0.0)
    gen_rng = torch.Generator().manual_seed(c.seed + 17)
    rand = torch.randn(p.tuned.d_model, generator=gen_rng)
    rand = rand / rand.norm()
    out: dict[str, Any] = {"rule": f"per opening, the largest strength (x the tuned model's "
                                   f"mean state norm {norm:.3g}) whose greedy sample's "
                                   f"perplexity under the base is at most "
                                   f"{c.coherence_factor:g} x the unsteered sample's",
                           "strengths": list(c.strengths)}
    rows = []
    tick = p.bar("ADL: steering", 2 * (len(c.strengths) + 2))
    for model_name, lm in (("tuned", p.tuned), ("base", p.base)):
        plain = p.once("greedy", lm, functools.partial(generate, lm, prompts, cfg))
        tick(1, "")
        plain_nll = continuation_nll(p.base, plain.prompt_ids, plain.token_ids,
                                     batch_size=c.batch_size).numpy()
        plain_texts = plain.texts(lm.tokenizer)
        by_s = {}
        for s in c.strengths:
            with steering(lm, {layer: unit * norm}, alpha=s):
                g = generate(lm, prompts, cfg)
            nll = continuation_nll(p.base, g.prompt_ids, g.token_ids,
                                   batch_size=c.batch_size).numpy()
            by_s[s] = (g.texts(lm.tokenizer), nll)
            tick(1, "")
        chosen = []
        for i in range(len(prompts)):
            ok = [s for s in c.strengths if np.isfinite(by_s[s][1][i]) and np.isfinite(
                plain_nll[i]) and by_s[s][1][i] <= plain_nll[i] + np.log(c.coherence_factor)]
            chosen.append(max(ok) if ok else min(c.strengths))
        # random directions at each opening's chosen strength
        rand_texts = [""] * len(prompts)
        for s in sorted(set(chosen)):
            idx = [i for i, x in enumerate(chosen) if x == s]
            with steering(lm, {layer: rand * norm}, alpha=s):
                g = generate(lm, [prompts[i] for i in idx], cfg)
            for i, t in zip(idx, g.texts(lm.tokenizer), strict=True):
                rand_texts[i] = t
        tick(1, "")
        for i, prompt in enumerate(prompts):
            rows.append({"model": model_name, "opening": prompt, "strength": chosen[i],
                         "coherent": bool(by_s[chosen[i]][1][i] <= plain_nll[i]
                                          + np.log(c.coherence_factor)),
                         "steered": by_s[chosen[i]][0][i], "unsteered": plain_texts[i],
                         "random": rand_texts[i],
                         "steered_ppl_base": float(np.exp(by_s[chosen[i]][1][i])),
                         "unsteered_ppl_base": float(np.exp(plain_nll[i]))})
    df = pd.DataFrame(rows)
    p.frames["adl_steering"] = df
    for model_name in ("tuned", "base"):
        d = df[df["model"] == model_name]
        strength = d["strength"].to_numpy(float)
        out[model_name] = {"strength": _est(bootstrap_mean(strength, seed=c.seed,
                                                            resampled="openings")),
                           "examples": [{"opening": r.opening, "steered": r.steered,
                                         "unsteered": r.unsteered}
                                        for r in d.head(3).itertuples()]}
    if p.finetune:
        emb = embedder(c.encoder)
        ft = np.asarray(emb(p.finetune))
        for model_name in ("tuned", "base"):
            d = df[df["model"] == model_name]
            sims = {k: D.mean_similarity(np.asarray(emb(list(d[k]))), ft)
                    for k in ("steered", "unsteered", "random")}
            out[model_name]["similarity_to_finetune"] = {
                k: _est(bootstrap_mean(v, seed=c.seed, resampled="openings"))
                for k, v in sims.items()}
            out[model_name]["similarity_gain_vs_random"] = _est(bootstrap_paired(
                sims["steered"], sims["random"], seed=c.seed, resampled="openings"))
            out[model_name]["similarity_gain_vs_unsteered"] = _est(bootstrap_paired(
                sims["steered"], sims["unsteered"], seed=c.seed, resampled="openings"))
            p.frames["adl_steering"].loc[d.index, "similarity_steered"] = sims["steered"]
            p.frames["adl_steering"].loc[d.index, "similarity_random"] = sims["random"]
    return out


def _causal(p: Pair, layer: int, delta: torch.Tensor) -> dict[str, Any]:
    c = p.config
    gen_rng = torch.Generator().manual_seed(c.seed + 29)
    rand = torch.randn((c.random_vectors, p.tuned.d_model), generator=gen_rng)
    rand = rand / rand.norm(dim=1, keepdim=True) * delta.norm()
    vecs = torch.cat([torch.zeros((1, p.tuned.d_model)), delta[None], rand])
    tick = p.bar("ADL: causal check", 1)
    patched, tuned_nll, base_nll = patched_losses(p.base, p.tuned, p.finetune or [], layer,
                                                  vecs, batch_size=max(1, c.batch_size // 2))
    tick(1, "")
    zero, with_delta = patched[0].numpy(), patched[1].numpy()
    random_mean = patched[2:].mean(0).numpy()
    p.frames["adl_causal"] = pd.DataFrame({"text": np.arange(len(zero)), "tuned": tuned_nll,
                                           "base": base_nll, "base_state": zero,
                                           "base_state_plus_delta": with_delta,
                                           "base_state_plus_random": random_mean})
    return {
        "loss_tuned": _est(bootstrap_mean(tuned_nll.numpy(), seed=c.seed, resampled="texts")),
        "loss_base": _est(bootstrap_mean(base_nll.numpy(), seed=c.seed, resampled="texts")),
        "loss_base_state_plus_delta": _est(bootstrap_mean(with_delta, seed=c.seed,
                                                          resampled="texts")),
        "loss_base_state_plus_random": _est(bootstrap_mean(random_mean, seed=c.seed,
                                                           resampled="texts")),
        "delta_effect": _est(bootstrap_paired(random_mean, with_delta, seed=c.seed,
                                              resampled="texts")),
        "n_random": c.random_vectors,
        "reading": "delta_effect: loss with random vectors of delta's norm minus loss with "
                   "delta, the tuned model's state replaced by the base's plus the vector at "
                   "every position (nats per token; above 0: delta carries the fine-tune)",
    }


def _texts(column: pd.Series) -> list[str]:
    return [w if isinstance(w, str) else "" for w in column]


def _mining(p: Pair, summary: dict[str, Any]) -> None:
    c = p.config
    tick = p.bar("mining: logit differences", len(p.texts))
    rec = logit_diff_records(p.base, p.tuned, p.texts, top_k=c.top_k, batch_size=c.batch_size,
                             max_tokens=c.max_tokens, progress=lambda n: tick(n, ""))
    raw = p.tuned.tokenizer.convert_ids_to_tokens
    r = rec.records.assign(token_text=lambda d: raw([int(t) for t in d["token"]]))
    p.extra["mining_records"] = r
    up, down = D.token_counts(rec.records, "up"), D.token_counts(rec.records, "down")
    for df in (up, down):
        df["token_text"] = raw([int(t) for t in df["token"]])
        head = complete_words(p, [int(t) for t in df["token"][:10 * c.n_words + 100]])
        df["word"] = [D.as_word(head.get(int(t), p.tokens[t])) for t in df["token"]]
    p.frames["mining_up"], p.frames["mining_down"] = up, down
    p.frames["mining_examples"] = _word_texts(p, r)
    top = D.dedupe_words(_texts(up["word"]), list(up["count"].astype(float)), c.n_words)
    topics = D.nmf_topics(rec.records, rec.n_texts, n_topics=c.n_topics, seed=c.seed)
    complete_words(p, [t for k in topics.tokens for t, _ in k])
    topic_rows: list[dict[str, Any]] = [{"topic": k, "weight": topics.weight[k],
                   "tokens": " ".join(w for t, _ in topics.tokens[k]
                                      if (w := word_of(p, t))),
                   "examples": [p.texts[i] for i in topics.texts[k]]}
                  for k in range(len(topics.tokens))]
    p.frames["mining_topics"] = pd.DataFrame(
        [{**t, "examples": " | ".join(t["examples"])} for t in topic_rows],
        columns=["topic", "weight", "tokens", "examples"])
    summary["mining"] = {
        "top_words": [w for w, _ in top],
        "counts": [int(x) for _, x in top],
        "down_words": [w for w, _ in D.dedupe_words(_texts(down["word"]),
                                                    list(down["count"].astype(float)), 10)],
        "topics": topic_rows, "n_texts": rec.n_texts, "n_positions": rec.n_positions,
        "top_k": c.top_k,
        **({} if top else {"note": "no token's log-probability changed on these texts"}),
    }


def _word_texts(p: Pair, r: pd.DataFrame, n_tokens: int = 100, n_texts: int = 5
                ) -> pd.DataFrame:
    """For the tokens raised at the most positions (each direction): the texts where the
    change was largest, the position and the text's tokens around it (the explorer opens
    these when a word is clicked)."""
    rows = []
    raw = p.tuned.tokenizer.convert_ids_to_tokens
    for direction in ("up", "down"):
        d = r[r["direction"] == direction]
        top = d["token"].value_counts().index[:n_tokens]
        best = (d[d["token"].isin(top)].assign(size=lambda x: x["diff"].abs())
                .sort_values("size", ascending=False, kind="stable")
                .drop_duplicates(["token", "text"]).groupby("token").head(n_texts))
        for row in best.itertuples():
            start, end = _char_span(p, int(row.text), int(row.position))
            rows.append({"direction": direction, "token": int(row.token),
                         "word": word_of(p, int(row.token)) or
                         str(raw(int(row.token))), "text": int(row.text),
                         "position": int(row.position), "char_start": start,
                         "char_end": end, "diff": float(row.diff),
                         "content": p.texts[int(row.text)]})
    return pd.DataFrame(rows, columns=["direction", "token", "word", "text", "position",
                                       "char_start", "char_end", "diff", "content"])


def _char_span(p: Pair, text: int, position: int) -> tuple[int, int]:
    """Characters of ``p.texts[text]`` that token ``position`` covers (the token just read
    when the candidate's change was measured); ``(-1, -1)`` without a fast tokenizer."""
    spans = p.extra.setdefault("spans", {})
    if text not in spans:
        try:
            enc = p.tuned.tokenizer(p.texts[text], add_special_tokens=True,
                                    return_offsets_mapping=True)
            spans[text] = [tuple(map(int, o)) for o in enc["offset_mapping"]]
        except (NotImplementedError, KeyError, TypeError, ValueError):
            spans[text] = []
    got = spans[text]
    return got[position] if position < len(got) else (-1, -1)


def _samples(p: Pair) -> dict[str, Any]:
    """The base's and the tuned model's own samples (the baseline's input; alpha 0 of
    amplification is the tuned sample)."""
    if "samples" not in p.extra:
        tick = p.bar("own samples", 2)
        base = p.once("samples", p.base, lambda: _sample(p, p.base))
        tick(1, "")
        tuned = p.once("samples", p.tuned, lambda: _sample(p, p.tuned))
        tick(1, "")
        p.extra["samples"] = {"base": base, "tuned": tuned}
    return dict(p.extra["samples"])


def _logodds(p: Pair, summary: dict[str, Any]) -> None:
    c = p.config
    s = _samples(p)
    df = D.log_odds_words(s["tuned"][0], s["base"][0], n=c.n_words, n_boot=c.n_boot,
                          seed=c.seed)
    p.frames["logodds"] = df
    summary["logodds"] = {
        "top_words": list(df["word"]),
        "log_odds": [{"word": r.word, "value": r.log_odds, "ci_low": r.ci_low,
                      "ci_high": r.ci_high, "n": int(r.n_tuned), "resampled": "samples"}
                     for r in df.itertuples()],
        "n_samples": len(s["tuned"][0]),
        **({} if len(df) else {"note": "no word is more frequent in the tuned model's samples "
                                       "with a CI above 0"}),
    }


def _amplify(p: Pair, summary: dict[str, Any], words: Sequence[str]) -> None:
    c = p.config
    s = _samples(p)
    by_alpha: dict[float, list[str]] = {}
    rows: list[dict[str, Any]] = []
    tick = p.bar("amplification", len(c.alphas))
    for a in sorted(c.alphas):
        if a == 0:
            texts, pids, toks = s["tuned"]
        else:
            texts, pids, toks = _sample(p, p.tuned, amplified(p.tuned, p.base, a))
        by_alpha[a] = texts
        nll = continuation_nll(p.base, pids, toks, batch_size=c.batch_size).numpy()
        rate = D.hypothesis_rate(texts, words) if words else np.full(len(texts), np.nan)
        ppl = bootstrap_mean(nll, seed=c.seed, resampled="samples")
        per_sample = np.array([distinct_n([t], 2) for t in texts], dtype=float)
        d2 = bootstrap_mean(per_sample, seed=c.seed, resampled="samples")
        rows.append({"alpha": a, "hypothesis_rate": _est(bootstrap_mean(
            rate, seed=c.seed, resampled="samples")) if words else None,
            "distinct_2": _est(d2), "distinct_2_pooled": distinct_n(texts, 2),
            "perplexity_base": {**_est(ppl), "value": float(np.exp(ppl.value)),
                                "ci_low": float(np.exp(ppl.ci_low)),
                                "ci_high": float(np.exp(ppl.ci_high))}})
        tick(1, "")
    # the words that grow, up to the largest alpha whose samples stay coherent (perplexity
    # under the base within coherence_factor of alpha 0's), as steering's strength is chosen
    alphas = sorted(by_alpha)
    ppls = [float(r["perplexity_base"]["value"]) for r in rows]
    coherent = [a for a, x in zip(alphas[1:], ppls[1:], strict=True)
                if x <= c.coherence_factor * ppls[0]]
    top_alpha = max(coherent) if coherent else alphas[min(1, len(alphas) - 1)]
    grow = D.growing_words({a: by_alpha[a] for a in (alphas[0], top_alpha)},
                           n=c.n_words, n_boot=c.n_boot, seed=c.seed)
    p.frames["amplify_words"] = grow
    p.frames["amplify_samples"] = pd.DataFrame(
        [{"alpha": a, "sample": i, "text": t} for a, ts in by_alpha.items()
         for i, t in enumerate(ts)])
    p.extra["amplified"] = by_alpha
    summary["amplify"] = {
        "top_words": list(grow["word"]), "alphas": rows, "hypothesis_words": list(words),
        "growth": [{"word": r.word, "value": r.growth, "ci_low": r.ci_low,
                    "ci_high": r.ci_high, "n": int(r.n), "resampled": "samples"}
                   for r in grow.itertuples()],
        "compared_alpha": top_alpha,
        "rule": f"words in more samples at alpha {top_alpha:g} (the largest whose perplexity "
                f"under the base is within {c.coherence_factor:g}x alpha "
                f"{min(c.alphas):g}'s) than at {min(c.alphas):g} (paired by sample, CI above "
                f"0)",
        **({} if len(grow) else {"note": "no word grows with amplification"}),
    }


def _examples(p: Pair, words: Sequence[str], n: int = 5) -> list[dict[str, str]]:
    """Texts where the models differ most on the hypothesis words, then amplified samples
    that hold them."""
    out: list[dict[str, str]] = []
    rec = p.extra.get("mining_records")
    if rec is not None and len(rec) and words:
        r = rec[(rec["direction"] == "up")]
        hits = {t for t in r["token"].unique()
                if (w := word_of(p, int(t))) is not None
                and any(D.words_match(w, h) or D.words_match(h, w) for h in words)}
        hit = r[r["token"].isin(hits)]
        for text in hit.sort_values("diff", ascending=False)["text"].drop_duplicates()[:n]:
            out.append({"source": "texts", "text": p.texts[int(text)]})
    amp = p.extra.get("amplified")
    if amp and words:
        top = amp[max(amp)]
        rate = D.hypothesis_rate(top, words)
        for t in [t for t, r in zip(top, rate, strict=True) if r][:n]:
            out.append({"source": f"amplified alpha {max(amp):g}", "text": t})
    return out[:2 * n]


def _whole_words(p: Pair, summary: Mapping[str, Any], methods: Sequence[str]
                 ) -> dict[str, list[str]]:
    """Each method's top words that occur as whole words in what the run read or wrote
    (the texts, the samples, the amplified and the steered texts): a token that only ever
    stood inside a word (``itt``) names nothing the hypothesis can say."""
    texts = list(p.texts) + [t for s in p.extra.get("samples", {}).values() for t in s[0]]
    texts += [t for ts in p.extra.get("amplified", {}).values() for t in ts]
    steer = p.frames.get("adl_steering")
    if steer is not None:
        texts += list(steer["steered"]) + list(steer["unsteered"])
    seen = {w for t in texts for w in D.text_words(t)}
    return {m: [w for w in summary[m]["top_words"] if w in seen] for m in methods
            if m in summary}


def run_pair(p: Pair, themes: Sequence[Mapping[str, Any]] = ()) -> dict[str, Any]:
    c = p.config
    summary: dict[str, Any] = {}
    t0 = time.perf_counter()
    if "adl" in c.methods:
        _adl(p, summary)
    if "mining" in c.methods:
        _mining(p, summary)
    _logodds(p, summary)
    first = D.agree(_whole_words(p, summary, ("adl", "mining", "logodds")))
    words = first.words or [w for m in ("adl", "mining", "logodds") if m in summary
                            for w in summary[m]["top_words"][:3]]
    if "amplify" in c.methods:
        _amplify(p, summary, words)
    hyp = D.agree(_whole_words(p, summary, ("adl", "mining", "amplify", "logodds")))
    summary["hypothesis"] = {**hyp.to_json(), "examples": _examples(p, hyp.words)}
    if themes:
        summary["hypothesis"]["themes"] = [dict(t) for t in themes]
    summary["models"] = {"base": p.base.identity.name, "tuned": p.tuned.identity.name}
    summary["names"] = list(p.names)
    summary["seconds"] = time.perf_counter() - t0
    return summary


__all__ = ["Pair", "run_pair", "token_texts"]
