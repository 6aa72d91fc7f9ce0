"""The ``predict`` step of ``difflens themes``: prompt states per layer, a softmax probe
per layer, the chain transformer and the baselines, trained and scored split by prompt."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from difflens.analysis.embeddings import embed_texts
from difflens.analysis.theme_predict import (
    ChainTransformer,
    evaluate_prediction,
    fit_probe_cv,
    kl_rows,
    markov_logprob,
)
from difflens.analysis.themes import OUTLIER, ChainDistributions
from difflens.capture.engine import forward_batch
from difflens.errors import InputError
from difflens.models.layers import parse_layers
from difflens.models.loading import LoadedModel
from difflens.pipelines.theme_config import ThemesConfig
from difflens.sampling.generate import encode_prompts


def prompt_states(lm: LoadedModel, prompts: Sequence[str], layers: Sequence[int], m: int,
                  chat: bool, batch_size: int = 32
                  ) -> tuple[dict[int, np.ndarray], dict[int, np.ndarray], np.ndarray]:
    """Final-token states per layer [n, d], the last ``m`` states per layer [n, m, d]
    (right-aligned) and their mask [n, m]."""
    seqs = encode_prompts(lm, prompts, chat)
    final = {layer: np.zeros((len(seqs), lm.d_model), np.float32) for layer in layers}
    last = {layer: np.zeros((len(seqs), m, lm.d_model), np.float32) for layer in layers}
    mask = np.zeros((len(seqs), m), dtype=bool)
    for s in range(0, len(seqs), batch_size):
        chunk = seqs[s:s + batch_size]
        out = forward_batch(lm, chunk, layers)
        for b, ids in enumerate(chunk):
            n = len(ids)
            take = min(m, n)
            mask[s + b, m - take:] = True
            for layer in layers:
                h = out.hidden[layer][b, out.sequence(b, n)].float().cpu().numpy()
                final[layer][s + b] = h[-1]
                last[layer][s + b, m - take:] = h[-take:]
    return final, last, mask


def predict_themes(lm: LoadedModel, config: ThemesConfig, dist: ChainDistributions,
                   chains: list[list[tuple[int, ...]]]) -> dict[str, Any]:
    """Train every predictor on the training prompts and score it on the test prompts."""
    usable = np.flatnonzero(dist.n_samples > 0)
    if len(usable) < 6:
        raise InputError(f"only {len(usable)} prompts have non-empty chains; predictors need "
                         f"at least 6 (sample more prompts)")
    rng = np.random.default_rng(config.seed)
    perm = rng.permutation(usable)
    n_test = max(2, round(config.test_fraction * len(usable)))
    test, train = np.sort(perm[:n_test]), np.sort(perm[n_test:])
    k = dist.first.shape[1]
    layers = parse_layers(config.layers, lm)
    final, last, mask = prompt_states(lm, config.prompts, layers, config.m_act, config.chat)
    P, w = dist.first, dist.n_samples.astype(np.float64)
    T = np.zeros_like(dist.transitions)
    for i in train:
        for ch in chains[i]:
            ch = tuple(t for t in ch if t != OUTLIER)
            if ch:
                prev = k
                for t in ch:
                    T[prev, t] += 1
                    prev = t
                T[prev, k] += 1

    def chain_ll(first: np.ndarray) -> np.ndarray:
        out = []
        for row, i in enumerate(test):
            lps = [markov_logprob(first[row], T, tuple(t for t in ch if t != OUTLIER),
                                  config.max_chain) for ch in chains[i]
                   if any(t != OUTLIER for t in ch)]
            out.append(float(np.mean(lps)))
        return np.asarray(out)

    marginal = np.average(P[train], axis=0, weights=w[train])
    mpred = np.tile(marginal, (len(test), 1))
    predictors: dict[str, Any] = {"probe": {}}
    rows: list[dict[str, Any]] = []
    val_kl = {}
    test_pred: dict[int, np.ndarray] = {}
    reliability: dict[str, Any] = {}
    for layer in layers:
        probe = fit_probe_cv(final[layer][train], P[train], w[train], seed=config.seed)
        test_pred[layer] = probe.predict(final[layer][test])
        res = evaluate_prediction(test_pred[layer], dist, test, chain_ll(test_pred[layer]),
                                  n_boot=config.n_boot, seed=config.seed, reference=mpred)
        reliability[f"probe {layer}"] = res["reliability"]
        predictors["probe"][str(layer)] = _strip(res)
        # validation KL inside the training prompts (choose the layer without the test set)
        half = train[: max(2, len(train) // 4)]
        rest = np.setdiff1d(train, half)
        vp = fit_probe_cv(final[layer][rest], P[rest], w[rest], seed=config.seed)
        val_kl[layer] = float(np.average(kl_rows(P[half], vp.predict(final[layer][half])),
                                         weights=w[half]))
    best = min(val_kl, key=lambda lay: val_kl[lay])
    baselines = {"marginal": _strip(evaluate_prediction(
        mpred, dist, test, chain_ll(mpred), n_boot=config.n_boot, seed=config.seed))}
    emb = embed_texts(list(config.prompts), config.encoder)
    ep = fit_probe_cv(emb[train], P[train], w[train], seed=config.seed)
    epred = ep.predict(emb[test])
    baselines["sentence_embedding"] = _strip(evaluate_prediction(
        epred, dist, test, chain_ll(epred), n_boot=config.n_boot, seed=config.seed,
        reference=mpred))
    ct = ChainTransformer(k=k, max_chain=config.max_chain, seed=config.seed).fit(
        last[best][train], mask[train], [chains[i] for i in train])
    tpred = ct.first(last[best][test], mask[test])
    pairs = [(row, ch) for row, i in enumerate(test) for ch in chains[i]
             if any(t != OUTLIER for t in ch)]
    lps = ct.chain_logprob(last[best][test], mask[test], [r for r, _ in pairs],
                           [tuple(t for t in ch if t != OUTLIER) for _, ch in pairs])
    per = np.array([np.mean([lp for (r, _), lp in zip(pairs, lps, strict=True) if r == row])
                    for row in range(len(test))])
    res = evaluate_prediction(tpred, dist, test, per, n_boot=config.n_boot, seed=config.seed,
                              reference=mpred)
    predictors["transformer"] = {str(best): _strip(res)}
    beams = ct.beam(last[best][test[:5]], mask[test[:5]])
    bpred = test_pred[best]
    reliability = {"probe": reliability[f"probe {best}"], "transformer": res["reliability"]}
    for row, i in enumerate(test):
        rows.append({"prompt_idx": int(i), "empirical": P[i].tolist(),
                     "probe": bpred[row].tolist(), "transformer": tpred[row].tolist(),
                     "marginal": marginal.tolist(), "sentence_embedding": epred[row].tolist(),
                     "n_samples": int(w[i])})
    return {"predictors": predictors, "baselines": baselines, "best_layer": int(best),
            "transformer_layer": int(best), "validation_kl": {str(a): b for a, b in
                                                              val_kl.items()},
            "top_chains": [{"prompt_idx": int(test[j]), "chains": [
                {"chain": list(ch), "p": p} for ch, p in b]} for j, b in enumerate(beams)],
            "rows": rows, "reliability": reliability, "train": train.tolist(),
            "test": test.tolist()}


def _strip(m: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in m.items() if k != "reliability"}
