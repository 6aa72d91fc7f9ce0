"""The ``predict`` step of ``difflens themes``: prompt states per layer (read by
``prompt_ends``), a softmax probe per layer, the chain
transformer and the baselines, trained and scored split by prompt; and the
``generalisation`` step: the same probe and baselines with each group of prompts held out
in turn, against random folds of the same sizes."""

from collections.abc import Sequence
from typing import Any

import numpy as np

from difflens.analysis.bootstrap import bootstrap_paired
from difflens.analysis.theme_predict import (
    ChainTransformer,
    evaluate_prediction,
    fit_probe_cv,
    kl_rows,
    markov_logprob,
)
from difflens.analysis.themes import OUTLIER, ChainDistributions
from difflens.capture.prompt_end import prompt_ends
from difflens.errors import InputError
from difflens.models.encoders import embed_texts
from difflens.models.layers import parse_layers
from difflens.models.loading import LoadedModel
from difflens.pipelines.theme_config import ThemesConfig


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
    ends = prompt_ends(lm, config.prompts, layers, last=config.m_act, chat=config.chat)
    final, last, mask = ends.states, ends.last, ends.last_mask
    assert mask is not None
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
    ct = ChainTransformer(k=k, max_chain=config.max_chain, seed=config.seed,
                          steps=config.transformer_steps).fit(
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


def _folds_predict(final: dict[int, np.ndarray], emb: np.ndarray, P: np.ndarray,
                   w: np.ndarray, usable: np.ndarray, fold: np.ndarray, seed: int
                   ) -> dict[str, Any]:
    """Out-of-fold first-theme predictions of every usable prompt: for each fold, the probe
    (its layer chosen on a validation quarter of the training prompts), the sentence-embedding
    probe and the marginal, all trained on the other folds."""
    n, k = len(usable), P.shape[1]
    pred = {name: np.zeros((n, k)) for name in ("probe", "marginal", "sentence_embedding")}
    layer_of: dict[str, int] = {}
    for f in np.unique(fold):
        te, tr = usable[fold == f], usable[fold != f]
        rows = np.flatnonzero(fold == f)
        rng = np.random.default_rng(seed)
        perm = rng.permutation(tr)
        half, rest = perm[: max(2, len(tr) // 4)], perm[max(2, len(tr) // 4):]
        val = {}
        for layer, X in final.items():
            vp = fit_probe_cv(X[rest], P[rest], w[rest], seed=seed)
            val[layer] = float(np.average(kl_rows(P[half], vp.predict(X[half])),
                                          weights=w[half]))
        best = min(val, key=lambda lay: val[lay])
        layer_of[str(f)] = int(best)
        pred["probe"][rows] = fit_probe_cv(final[best][tr], P[tr], w[tr],
                                           seed=seed).predict(final[best][te])
        pred["sentence_embedding"][rows] = fit_probe_cv(emb[tr], P[tr], w[tr],
                                                        seed=seed).predict(emb[te])
        pred["marginal"][rows] = np.average(P[tr], axis=0, weights=w[tr])
    return {"pred": pred, "layers": layer_of}


def predict_generalisation(lm: LoadedModel, config: ThemesConfig, dist: ChainDistributions,
                           groups: Sequence[str]) -> dict[str, Any]:
    """How well first themes are predicted for prompts of a group never seen in training.

    Each group is held out in turn (the probe, the sentence-embedding probe and the
    marginal are trained on the other groups); the same is done with random folds of the
    same sizes (the group labels permuted, seeded). Both are scored on every usable prompt
    with ``evaluate_prediction`` (CIs over prompts);
    ``gap`` is the probe's KL under the group split minus under the random split, paired by
    prompt."""
    usable = np.flatnonzero(dist.n_samples > 0)
    g = np.asarray(groups, dtype=object)[usable]
    names, counts = np.unique(g, return_counts=True)
    if len(names) < 2:
        raise InputError(f"the generalisation step needs prompts from at least 2 groups, got "
                         f"{len(names)} ({', '.join(map(str, names))})")
    if len(usable) < 6:
        raise InputError(f"only {len(usable)} prompts have non-empty chains; the "
                         f"generalisation step needs at least 6 (sample more prompts)")
    layers = parse_layers(config.layers, lm)
    final = prompt_ends(lm, config.prompts, layers, chat=config.chat).states
    emb = embed_texts(list(config.prompts), config.encoder)
    P, w = dist.first, dist.n_samples.astype(np.float64)
    fold = np.searchsorted(names, g)
    shuffled = np.random.default_rng(config.seed).permutation(fold)
    out: dict[str, Any] = {"n_prompts": int(len(usable)), "n_groups": int(len(names)),
                           "groups": {str(a): int(c) for a, c in zip(names, counts,
                                                                     strict=True)}}
    kl_probe: dict[str, np.ndarray] = {}
    kl_other: dict[str, np.ndarray] = {}
    for split, f in (("group_split", fold), ("random_split", shuffled)):
        res = _folds_predict(final, emb, P, w, usable, f, config.seed)
        pr = res["pred"]
        block: dict[str, Any] = {}
        for name in ("probe", "sentence_embedding", "marginal"):
            m = evaluate_prediction(pr[name], dist, usable, None, n_boot=config.n_boot,
                                    seed=config.seed,
                                    reference=None if name == "marginal" else pr["marginal"])
            block[name] = _strip(m)
        block["layers"] = ({str(names[int(k)]): v for k, v in res["layers"].items()}
                           if split == "group_split" else res["layers"])
        out[split] = block
        kl_probe[split] = kl_rows(dist.first[usable], pr["probe"])
        kl_other = {name: kl_rows(dist.first[usable], pr[name])
                    for name in ("sentence_embedding", "marginal")} \
            if split == "group_split" else kl_other
    # per held-out group: each predictor's mean KL on its prompts, and the probe's under
    # the random split on the same prompts
    out["group_split"]["per_group"] = {
        str(names[j]): {"n": int((fold == j).sum()),
                        "probe_kl": float(kl_probe["group_split"][fold == j].mean()),
                        "probe_kl_random_split": float(kl_probe["random_split"][fold == j].mean()),
                        **{f"{name}_kl": float(kl[fold == j].mean())
                           for name, kl in kl_other.items()}}
        for j in range(len(names))}
    gap = bootstrap_paired(kl_probe["group_split"], kl_probe["random_split"],
                           n_boot=config.n_boot, seed=config.seed, resampled="prompts")
    out["gap"] = gap.to_json()
    return out
