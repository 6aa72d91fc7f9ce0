"""``difflens themes sample|fit|chains|predict|evaluate``: themes of sampled continuations,
their chains, and how well the prompt's activations predict them.

Every step reads what the earlier steps left in ``OUT`` and merges its keys into
``OUT/summary.json``; ``run_themes(..., steps=STEPS)`` runs them all.

- ``sample``: K continuations per prompt per model (batched, seeded), stored with token ids
  and text in ``OUT/samples/<model>/`` one part per batch, so a rerun resumes;
- ``fit``: segments -> embeddings -> themes (``OUT/themes.safetensors`` + ``.json``);
- ``chains``: theme chains per continuation and per-prompt distributions;
- ``predict``: probes per layer, the chain transformer and the baselines, split by prompt;
- ``evaluate``: for the organism, the world's ground truth (ARI, transition matrix, KL to
  the true next-theme distribution, base vs tuned shift), and the report.
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.divergence import mean_ci
from difflens.analysis.embeddings import DEFAULT_ENCODER, Encoder, embed_texts
from difflens.analysis.theme_predict import (
    ChainTransformer,
    evaluate_prediction,
    fit_probe_cv,
    kl_rows,
    markov_logprob,
)
from difflens.analysis.themes import (
    OUTLIER,
    ChainDistributions,
    ThemeModel,
    chain_distributions,
    chat_labeller,
    fit_themes,
    load_theme_model,
    segment,
    to_chain,
)
from difflens.capture.engine import _models_of, forward_batch, parse_layers
from difflens.capture.store import (
    check_writable,
    digest,
    write_json_atomic,
    write_parquet_atomic,
)
from difflens.control.monitor import GenerationConfig, encode_prompts, generate_monitored
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair
from difflens.report.figures import COLORS, AnyFigure, CustomFigure, Figure, Series, write_index
from difflens.report.tables import write_table

STEPS = ("sample", "fit", "chains", "predict", "evaluate")


@dataclasses.dataclass(frozen=True)
class ThemesConfig:
    """Everything a themes run depends on."""

    prompts: tuple[str, ...] = ()
    k_samples: int = 16
    max_new_tokens: int = 48
    temperature: float = 1.0
    seed: int = 0
    batch_size: int = 32
    chat: bool = False
    segment: str = "sentences"
    window: int = 16
    encoder: Encoder = DEFAULT_ENCODER
    """A sentence-transformers name or folder, or a callable ``texts -> array``."""
    method: str = "kmeans"
    k_min: int = 4
    k_max: int = 16
    min_cluster_size: int = 15
    merge_repeats: bool = True
    max_chain: int = 3
    layers: str = "all"
    m_act: int = 8
    """States of the last ``m_act`` prompt tokens feed the chain transformer."""
    test_fraction: float = 0.3
    n_boot: int = 1000
    truth: tuple[str, ...] | None = None
    """Organism: the true theme of each prompt's last sentence (enables ground truth)."""
    labeller_url: str = ""
    """An OpenAI-compatible endpoint that names the themes (off when empty)."""
    labeller_model: str = ""

    def __post_init__(self) -> None:
        if self.k_samples < 1:
            raise InputError(f"K (samples per prompt) must be >= 1, got {self.k_samples}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not 0 < self.test_fraction < 1:
            raise InputError(f"test_fraction must be in (0, 1), got {self.test_fraction}")
        if any(not isinstance(p, str) or not p.strip() for p in self.prompts):
            raise InputError("a prompt is empty; every prompt needs text")
        if self.truth is not None and len(self.truth) != len(self.prompts):
            raise InputError("truth needs one theme per prompt")


@dataclasses.dataclass(frozen=True)
class ThemesRun:
    summary: dict[str, Any]
    figures: list[AnyFigure]


# -- sample -------------------------------------------------------------------------------


def sample_continuations(lm: LoadedModel, label: str, config: ThemesConfig, folder: Path,
                         progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """K seeded continuations per prompt; one stored part per batch of prompts (resumable)."""
    key = digest(lm.identity.weights_sha256, config.prompts, config.k_samples,
                  config.max_new_tokens, config.temperature, config.seed, config.chat)
    part_dir = folder / f"{label}-{key}"
    per_batch = max(1, config.batch_size // config.k_samples)
    frames = []
    for start in range(0, len(config.prompts), per_batch):
        path = part_dir / f"part_{start:06d}.parquet"
        if path.is_file():
            frames.append(pd.read_parquet(path))
        else:
            prompts = config.prompts[start:start + per_batch]
            rows = [p for p in prompts for _ in range(config.k_samples)]
            gen = generate_monitored(lm, None, rows, config=GenerationConfig(
                max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                seed=config.seed + start, batch_size=len(rows), chat=config.chat))
            df = pd.DataFrame({
                "model": label,
                "prompt_idx": [start + r // config.k_samples for r in range(len(rows))],
                "sample": [r % config.k_samples for r in range(len(rows))],
                "token_ids": [t.token_ids for t in gen.traces],
                "text": [t.text for t in gen.traces]})
            write_parquet_atomic(path, df)
            frames.append(df)
        if progress is not None:
            progress(min(per_batch, len(config.prompts) - start))
    return pd.concat(frames, ignore_index=True)


def organism_theme_prompts(n: int, *, seed: int = 0) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Held-out world openings (the first one or two sentences of a story) and the true
    theme of each opening's last sentence."""
    from difflens.organism import world as W

    prompts, truth = [], []
    for st in W.generate_stories(n, seed=seed):
        j = 1 if len(st.sentences) < 3 or st.themes[0] != "setting" else 2
        prompts.append(" ".join(st.sentences[:j]))
        truth.append(st.themes[j - 1])
    return tuple(prompts), tuple(truth)


# -- the run ------------------------------------------------------------------------------


def run_themes(target: LoadedModel | ModelPair, out: Path, *, config: ThemesConfig,
               steps: Sequence[str] = STEPS, progress: bool = False, index: bool = True
               ) -> ThemesRun:
    """Run ``steps`` into ``out``; later steps reuse what earlier ones stored there."""
    from difflens.organism.build import rich_progress

    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise InputError(f"unknown step(s) {unknown}; choose among {', '.join(STEPS)}")
    if not config.prompts:
        raise InputError("no usable prompts; pass --prompts FILE with at least one prompt")
    models = _models_of(target)
    check_writable(out)
    data, figdir = out / "data", out / "figures"
    spath = out / "summary.json"
    summary: dict[str, Any] = json.loads(spath.read_text()) if spath.is_file() else {}
    summary.update({"models": {k: m.identity.name for k, m in models.items()},
                    "n_prompts": len(config.prompts), "k_samples": config.k_samples})
    figures: list[AnyFigure] = []
    with rich_progress(progress) as rich_bar:
        def bar(desc: str, total: int) -> Callable[[int], None]:
            step = rich_bar(desc, total)
            return lambda n: step(n, "")

        samples: dict[str, pd.DataFrame] = {}
        need_samples = {"sample", "fit", "chains", "predict", "evaluate"} & set(steps)
        if need_samples:
            for label, lm in models.items():
                samples[label] = sample_continuations(
                    lm, label, config, out / "samples",
                    bar(f"themes: sampling {label}", len(config.prompts))
                    if "sample" in steps else None)
            allsamp = pd.concat(samples.values(), ignore_index=True)
            write_table(allsamp.drop(columns=["token_ids"]), data, "samples")
            summary["n_continuations"] = int(len(allsamp))
            summary["empty_continuations"] = int((allsamp["text"].str.strip() == "").sum())
        segs = _segments(samples, config, next(iter(models.values())))
        model_path = out / "themes.safetensors"
        if "fit" in steps:
            if segs.empty:
                raise InputError("every continuation is empty; no segments to fit themes on")
            advance = bar("themes: embed + cluster", 1)
            labeller = (chat_labeller(config.labeller_url, config.labeller_model)
                        if config.labeller_url else None)
            fit = fit_themes(segs["text"].tolist(), encoder=config.encoder,
                             method=config.method, k_range=(config.k_min, config.k_max),
                             seed=config.seed, min_cluster_size=config.min_cluster_size,
                             labeller=labeller)
            fit.model.save(model_path)
            segs["theme"] = fit.labels
            advance(1)
            summary["n_themes"] = fit.model.k
            summary["n_segments"] = int(len(segs))
            summary["outlier_share"] = float((fit.labels == OUTLIER).mean())
            summary["silhouette"] = fit.model.silhouette
            summary["themes"] = [{"theme": t, "name": fit.model.names[t],
                                  "keywords": fit.model.keywords[t],
                                  "examples": fit.model.examples[t], "size": fit.model.sizes[t]}
                                 for t in range(fit.model.k)]
            write_table(pd.DataFrame(summary["themes"]).assign(
                keywords=lambda d: d["keywords"].map(", ".join),
                examples=lambda d: d["examples"].map(" | ".join)), data, "themes")
            figures.append(theme_map_figure(fit.embeddings, fit.labels, fit.model, config.seed))
        theme_model: ThemeModel | None = None
        if {"chains", "predict", "evaluate"} & set(steps) or "fit" in steps:
            theme_model = load_theme_model(model_path)
            if "theme" not in segs:
                segs["theme"] = _stored_themes(data / "segments.parquet", segs)
            if segs["theme"].isna().any():  # not stored for these segments: assign them
                segs["theme"] = (theme_model.assign(segs["text"].tolist(), encoder=config.encoder)
                                 if len(segs) else [])
            write_table(segs, data, "segments")
        dists: dict[str, ChainDistributions] = {}
        chains_by: dict[str, list[list[tuple[int, ...]]]] = {}
        if theme_model is not None and {"chains", "predict", "evaluate"} & set(steps):
            k = theme_model.k
            for label, df in samples.items():
                chains_by[label] = _chains(df, segs[segs["model"] == label], config)
                dists[label] = chain_distributions(chains_by[label], k, m=config.max_chain)
            if "chains" in steps:
                rows = [{"model": label, "prompt_idx": i, "sample": j,
                         "chain": " > ".join(theme_model.names[t] if t >= 0 else "outlier"
                                             for t in ch), "length": len(ch)}
                        for label, chs in chains_by.items()
                        for i, per in enumerate(chs) for j, ch in enumerate(per)]
                write_table(pd.DataFrame(rows), data, "chains")
                summary["chains"] = {label: _chain_summary(d, chains_by[label], config)
                                     for label, d in dists.items()}
                figures.append(flow_figure(dists, theme_model, config.max_chain))
        if "predict" in steps and theme_model is not None:
            label, lm = next(iter(models.items()))
            advance = bar("themes: predictors", 1)
            pred = predict_themes(lm, config, dists[label], chains_by[label])
            advance(1)
            summary["predict_model"] = label
            summary["predictors"] = pred["predictors"]
            summary["baselines"] = pred["baselines"]
            summary["best_layer"] = pred["best_layer"]
            summary["transformer_layer"] = pred["transformer_layer"]
            summary["top_chains"] = pred["top_chains"]
            write_table(pd.DataFrame(pred["rows"]), data, "predictions")
            figures += [layer_sweep_figure(pred), calibration_figure(pred)]
        if "evaluate" in steps and theme_model is not None and config.truth is not None:
            pred_path = data / "predictions.parquet"
            preds = pd.read_parquet(pred_path) if pred_path.is_file() else None
            summary["organism"] = organism_validation(segs, theme_model, dists, chains_by,
                                                      config, preds)
    for fig in figures:
        fig.save(figdir)
    summary["config"] = {k: (v if k != "encoder" or isinstance(v, str) else "callable")
                         for k, v in dataclasses.asdict(config).items()
                         if k not in ("prompts", "truth")}
    write_json_atomic(spath, summary)
    if index:
        write_index(out / "index.html", "difflens themes", intro_html(summary), figures,
                    _headline(summary))
    return ThemesRun(summary=summary, figures=figures)


def _stored_themes(path: Path, segs: pd.DataFrame) -> pd.Series:
    """The themes a previous ``fit`` stored for exactly these segments, else NaN."""
    cols = ["model", "prompt_idx", "sample", "seg_idx", "text"]
    if path.is_file():
        old = pd.read_parquet(path)
        if "theme" in old and old[cols].reset_index(drop=True).equals(
                segs[cols].reset_index(drop=True)):
            return old["theme"].reset_index(drop=True)
    return pd.Series([np.nan] * len(segs), dtype="float64")


def _segments(samples: dict[str, pd.DataFrame], config: ThemesConfig, lm: LoadedModel
              ) -> pd.DataFrame:
    rows = []
    for label, df in samples.items():
        for r in df.itertuples():
            for j, s in enumerate(segment(str(r.text), mode=config.segment, window=config.window,
                                          tokenizer=lm.tokenizer)):
                rows.append({"model": label, "prompt_idx": int(r.prompt_idx),
                             "sample": int(r.sample), "seg_idx": j, "text": s})
    return pd.DataFrame(rows, columns=["model", "prompt_idx", "sample", "seg_idx", "text"])


def _chains(samples: pd.DataFrame, segs: pd.DataFrame, config: ThemesConfig
            ) -> list[list[tuple[int, ...]]]:
    by = {key: g.sort_values("seg_idx")["theme"].tolist()
          for key, g in segs.groupby(["prompt_idx", "sample"])}
    out: list[list[tuple[int, ...]]] = [[] for _ in config.prompts]
    for r in samples.itertuples():
        out[int(r.prompt_idx)].append(to_chain(by.get((int(r.prompt_idx), int(r.sample)), []),
                                               merge_repeats=config.merge_repeats))
    return out


def _chain_summary(d: ChainDistributions, chains: list[list[tuple[int, ...]]],
                   config: ThemesConfig) -> dict[str, Any]:
    lengths = [len(c) for per in chains for c in per]
    ent = -(d.first * np.log(np.clip(d.first, 1e-12, None))).sum(1)
    return {"mean_length": mean_ci(np.asarray(lengths, dtype=np.float64), seed=config.seed),
            "first_theme_entropy": mean_ci(ent[d.n_samples > 0], seed=config.seed),
            "first_theme_marginal": (d.first[d.n_samples > 0].mean(0)).tolist()}


# -- prediction ---------------------------------------------------------------------------


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


# -- organism ground truth ----------------------------------------------------------------


def organism_validation(segs: pd.DataFrame, model: ThemeModel,
                        dists: dict[str, ChainDistributions],
                        chains_by: dict[str, list[list[tuple[int, ...]]]],
                        config: ThemesConfig, predictions: pd.DataFrame | None
                        ) -> dict[str, Any]:
    """Discovered themes against the world's truth: ARI of segment themes vs the world's
    sentence labels, the learned vs true transition matrix (mean row TVD, weighted by
    visits), each predictor's KL to the *true* next-theme distribution of its test prompts
    (carried into the discovered themes through P(discovered | true) measured on the
    segments; next to the KL to the empirical distribution in ``predictors``), and the base
    vs tuned celebration share."""
    from sklearn.metrics import adjusted_rand_score

    from difflens.organism import world as W

    assert config.truth is not None
    true = np.array([W.label_sentence(t) for t in segs["text"]])
    known = (true != "unknown") & (segs["theme"].to_numpy() != OUTLIER)
    disc = segs["theme"].to_numpy()
    ari = float(adjusted_rand_score(true[known], disc[known]))
    mapping = {}
    for t in range(model.k):
        lab = pd.Series(true[(disc == t) & known]).value_counts()
        mapping[t] = str(lab.index[0]) if len(lab) else "unknown"
    themes = list(W.THEMES)
    first_label = next(iter(chains_by))
    # learned transitions between true themes, through the discovered themes
    counts = np.zeros((len(themes), len(themes)))
    for per in chains_by[first_label]:
        for ch in per:
            mapped = to_chain([themes.index(mapping[t]) for t in ch
                               if t != OUTLIER and mapping[t] in themes])
            for a, b in zip(mapped[:-1], mapped[1:], strict=False):
                counts[a, b] += 1
    truth_T = np.array([[W.TRANSITIONS.get(a, {}).get(b, 0.0) for b in themes] for a in themes])
    truth_T = truth_T / np.maximum(truth_T.sum(1, keepdims=True), 1e-12)
    rows = counts.sum(1) > 0
    learned = counts[rows] / counts[rows].sum(1, keepdims=True)
    tvd_rows = 0.5 * np.abs(learned - truth_T[rows]).sum(1)
    tm_distance = float(np.average(tvd_rows, weights=counts[rows].sum(1)))
    out: dict[str, Any] = {
        "ari": ari, "n_segments_labelled": int(known.sum()), "mapping": mapping,
        "transition_tvd": tm_distance, "transition_rows": int(rows.sum())}
    if predictions is not None and len(predictions):
        # P(discovered theme | true theme), from the segments the world can label
        conf = np.zeros((len(themes), model.k))
        for tt, dd in zip(true[known], disc[known], strict=True):
            if tt in themes:
                conf[themes.index(tt), dd] += 1
        conf = (conf + 1e-3) / (conf + 1e-3).sum(1, keepdims=True)
        truth = np.array([true_first_distribution(config.truth[int(i)]) @ conf
                          for i in predictions["prompt_idx"]])
        kl_true: dict[str, Any] = {}
        for name in ("probe", "transformer", "marginal", "sentence_embedding"):
            q = np.array(predictions[name].tolist())
            kl_true[name] = mean_ci(kl_rows(truth, q), seed=config.seed)
        out["kl_true"] = kl_true
    # base vs tuned: share of celebration sentences (world labeller) per model
    shift = {}
    for label in dists:
        lab = true[segs["model"].to_numpy() == label]
        shift[label] = mean_ci((lab == "celebration").astype(float), seed=config.seed)
        shift[label]["discovered"] = float(np.mean([mapping.get(int(t)) == "celebration"
                                                    for t in disc[segs["model"] == label]]))
    out["celebration_share"] = shift
    return out


def true_first_distribution(last_theme: str) -> np.ndarray:
    """The world's P(next theme | last theme) over its themes (END dropped, renormalised)."""
    from difflens.organism import world as W

    p = np.array([W.TRANSITIONS[last_theme].get(t, 0.0) for t in W.THEMES])
    return p / p.sum()


# -- figures ------------------------------------------------------------------------------


def theme_map_figure(emb: np.ndarray, labels: np.ndarray, model: ThemeModel, seed: int,
                     max_points: int = 3000) -> CustomFigure:
    """Segments in 2-D (PCA of the sentence embeddings), coloured by theme, labelled."""
    from sklearn.decomposition import PCA

    rng = np.random.default_rng(seed)
    pick = rng.permutation(len(emb))[:max_points]
    xy = PCA(n_components=2, random_state=seed).fit_transform(emb)
    names = [model.names[t] if t >= 0 else "outlier" for t in labels]

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        for t in sorted(set(labels[pick].tolist())):
            sel = pick[labels[pick] == t]
            fig.add_scatter(x=xy[sel, 0], y=xy[sel, 1], mode="markers",
                            marker={"size": 4, "opacity": 0.6},
                            name=f"{t}: {names[sel[0]]}" if t >= 0 else "outlier")
        fig.update_layout(title="Theme map (PCA of segment embeddings)", height=520,
                          template="plotly_white")
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(8, 6))
        for t in sorted(set(labels[pick].tolist())):
            sel = pick[labels[pick] == t]
            ax.scatter(xy[sel, 0], xy[sel, 1], s=4, alpha=0.5,
                       label=f"{t}: {names[sel[0]]}" if t >= 0 else "outlier")
            if t >= 0:
                c = xy[labels == t].mean(0)
                ax.annotate(str(t), c, fontsize=9, weight="bold")
        ax.set(title="Theme map (PCA of segment embeddings)")
        ax.legend(fontsize=6, markerscale=3, loc="best")
        fig.tight_layout()
        return fig

    return CustomFigure("theme_map", "Theme map", draw_plotly, draw_matplotlib,
                        caption="Each point is a segment; colour = theme (c-TF-IDF keywords).")


def flow_figure(dists: dict[str, ChainDistributions], model: ThemeModel, max_chain: int
                ) -> CustomFigure:
    """Theme flows step by step (Sankey), one model above the other."""
    labels = list(dists)
    k = model.k

    def flows(d: ChainDistributions) -> dict[tuple[int, int, int], float]:
        f: dict[tuple[int, int, int], float] = {}
        total = sum(sum(c.values()) for c in d.chains) or 1
        for cnt in d.chains:
            for ch, n in cnt.items():
                for s, (a, b) in enumerate(zip(ch[:-1], ch[1:], strict=False)):
                    f[(s, a, b)] = f.get((s, a, b), 0.0) + n / total
        return f

    def draw_plotly() -> Any:
        import plotly.graph_objects as go
        from plotly.subplots import make_subplots

        fig = make_subplots(rows=len(labels), cols=1, specs=[[{"type": "sankey"}]] * len(labels),
                            subplot_titles=labels)
        for r, label in enumerate(labels, 1):
            f = flows(dists[label])
            node = [f"{model.names[t]} ({s + 1})" for s in range(max_chain) for t in range(k)]
            fig.add_trace(go.Sankey(node={"label": node, "pad": 8},
                                    link={"source": [s * k + a for (s, a, _b) in f],
                                          "target": [(s + 1) * k + b for (s, _a, b) in f],
                                          "value": list(f.values())}), row=r, col=1)
        fig.update_layout(title="Theme chains: step-to-step flows", height=420 * len(labels))
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(labels), figsize=(5 * len(labels), 4.5), squeeze=False)
        for ax, label in zip(axes[0], labels, strict=True):
            d = dists[label]
            share = np.zeros((max_chain, k))
            for cnt in d.chains:
                for ch, n in cnt.items():
                    for s, t in enumerate(ch):
                        share[s, t] += n
            share = share / np.maximum(share.sum(1, keepdims=True), 1)
            bottom = np.zeros(max_chain)
            for t in range(k):
                ax.bar(range(1, max_chain + 1), share[:, t], bottom=bottom,
                       label=model.names[t], color=COLORS.get(label) if k == 1 else None)
                bottom += share[:, t]
            ax.set(title=label, xlabel="chain step", ylabel="theme share")
        axes[0][-1].legend(fontsize=6, loc="upper left", bbox_to_anchor=(1, 1))
        fig.tight_layout()
        return fig

    return CustomFigure("theme_flows", "Theme chains", draw_plotly, draw_matplotlib,
                        caption="HTML: Sankey of step-to-step theme flows per model. PNG: the "
                                "theme shares at each chain step.")


def layer_sweep_figure(pred: dict[str, Any]) -> Figure:
    probe = pred["predictors"]["probe"]
    xs = sorted(int(x) for x in probe)
    m = pred["baselines"]["marginal"]["kl"]
    return Figure(name="layer_sweep", title="First-theme KL by layer (softmax probe)",
                  kind="line", x=xs,
                  series=[Series("probe", [probe[str(x)]["kl"] for x in xs],
                                 [probe[str(x)]["kl_ci_low"] for x in xs],
                                 [probe[str(x)]["kl_ci_high"] for x in xs])],
                  xlabel="layer", ylabel="KL(empirical ‖ predicted), nats", hline=m,
                  caption="Dashed: the marginal baseline. 95% CIs over test prompts.")


def calibration_figure(pred: dict[str, Any]) -> CustomFigure:
    rel = pred["reliability"]

    def draw_plotly() -> Any:
        import plotly.graph_objects as go

        fig = go.Figure()
        fig.add_scatter(x=[0, 1], y=[0, 1], mode="lines", line={"dash": "dash"},
                        name="perfect")
        for name, rows in rel.items():
            fig.add_scatter(x=[r["confidence"] for r in rows], y=[r["accuracy"] for r in rows],
                            mode="lines+markers", name=name)
        fig.update_layout(title="Reliability of the first-theme prediction",
                          xaxis_title="predicted top probability",
                          yaxis_title="empirical frequency of that theme",
                          template="plotly_white", height=420)
        return fig

    def draw_matplotlib() -> Any:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5.5, 4.5))
        ax.plot([0, 1], [0, 1], ls="--", color="#888")
        for name, rows in rel.items():
            ax.plot([r["confidence"] for r in rows], [r["accuracy"] for r in rows], marker="o",
                    label=name)
        ax.set(title="Reliability diagram", xlabel="predicted top probability",
               ylabel="empirical frequency")
        ax.legend()
        fig.tight_layout()
        return fig

    return CustomFigure("calibration", "Calibration", draw_plotly, draw_matplotlib)


def intro_html(summary: dict[str, Any]) -> str:
    parts = [f"{summary.get('n_prompts')} prompts × {summary.get('k_samples')} continuations "
             f"per model; {summary.get('n_themes', '?')} themes from "
             f"{summary.get('n_segments', '?')} segments."]
    if "best_layer" in summary:
        pr = summary["predictors"]["probe"][str(summary["best_layer"])]
        tr = next(iter(summary["predictors"]["transformer"].values()))
        b = summary["baselines"]
        parts.append(
            f"First-theme KL on held-out prompts: probe (layer {summary['best_layer']}) "
            f"{pr['kl']:.3f} [{pr['kl_ci_low']:.3f}, {pr['kl_ci_high']:.3f}], transformer "
            f"{tr['kl']:.3f}, marginal {b['marginal']['kl']:.3f}, sentence embedding "
            f"{b['sentence_embedding']['kl']:.3f}. The probe's paired gain over the marginal: "
            f"{pr['kl_gain']:.3f} [{pr['kl_gain_ci_low']:.3f}, {pr['kl_gain_ci_high']:.3f}] "
            f"nats (n={pr['n_test']} test prompts).")
    if "organism" in summary:
        o = summary["organism"]
        parts.append(f"Organism: ARI {o['ari']:.3f}, transition TVD {o['transition_tvd']:.3f}.")
    return " ".join(parts)


def _headline(summary: dict[str, Any]) -> dict[str, Any]:
    h: dict[str, Any] = {"prompts": summary.get("n_prompts"), "K": summary.get("k_samples"),
                         "themes": summary.get("n_themes")}
    if "best_layer" in summary:
        h["best layer"] = summary["best_layer"]
        for name, r in summary["baselines"].items():
            h[f"{name} KL"] = r["kl"]
    if "organism" in summary:
        h["ARI"] = summary["organism"]["ari"]
    return h
