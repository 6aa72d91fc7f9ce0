"""Themes and chain prediction: planted clusters, planted linear themes, the pipeline, errors."""

import json
from dataclasses import replace

import numpy as np
import pytest
from typer.testing import CliRunner

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.analysis.theme_predict import (
    ChainTransformer,
    evaluate_prediction,
    fit_probe_cv,
    kl_rows,
    markov_logprob,
)
from difflens.analysis.themes import (
    chain_distributions,
    cluster,
    fit_themes,
    load_theme_model,
    segment,
    to_chain,
)
from difflens.cli.main import app
from difflens.errors import InputError
from difflens.pipelines.themes import ThemesConfig, run_themes


def _blobs(n_per: int, k: int, dim: int = 24, seed: int = 0, spread: float = 0.05):
    rng = np.random.default_rng(seed)
    centers = rng.normal(size=(k, dim))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)
    x = np.concatenate([c + spread * rng.normal(size=(n_per, dim)) for c in centers])
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    return x.astype(np.float32), np.repeat(np.arange(k), n_per)


def test_clustering_recovers_planted_clusters():
    from sklearn.metrics import adjusted_rand_score

    x, y = _blobs(60, 5)
    labels, sil = cluster(x, method="kmeans", k_range=(3, 8), seed=0)
    assert max(sil, key=lambda k: sil[k]) == "5"
    assert adjusted_rand_score(y, labels) > 0.9
    noisy = np.concatenate([x, np.random.default_rng(1).normal(size=(20, 24)).astype(np.float32)])
    noisy /= np.linalg.norm(noisy, axis=1, keepdims=True)
    hl, _ = cluster(noisy, method="hdbscan", min_cluster_size=10)
    assert adjusted_rand_score(y, hl[:300]) > 0.9
    assert (hl[300:] == -1).mean() > 0.5  # the noise points are reported as outliers


def _encoder(texts):
    """A deterministic toy encoder: the planted theme is the first word."""
    words = ["sun", "rain", "wolf", "cake"]
    x, _ = _blobs(1, 4, seed=3)
    rng = np.random.default_rng(0)
    out = []
    for t in texts:
        w = t.split()[0].lower().strip(".")
        v = x[words.index(w)] if w in words else rng.normal(size=24)
        out.append(v + 0.01 * rng.normal(size=24))
    out = np.asarray(out, dtype=np.float32)
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def test_theme_model_labels_saves_and_assigns(tmp_path):
    segs = [f"{w} {x} day." for w in ("Sun", "Rain", "Wolf", "Cake") for x in
            ("bright", "grey", "long", "sweet", "odd", "new")] * 3
    fit = fit_themes(segs, encoder=_encoder, k_range=(2, 6), seed=0)
    assert fit.model.k == 4
    assert {kw[0] for kw in fit.model.keywords} == {"sun", "rain", "wolf", "cake"}
    assert all(len(ex) == 3 for ex in fit.model.examples)
    path = tmp_path / "themes.safetensors"
    fit.model.save(path)
    back = load_theme_model(path)
    assert np.allclose(back.centroids, fit.model.centroids) and back.names == fit.model.names
    got = back.assign(["Wolf at night.", "Cake again."], encoder=_encoder)
    assert [back.keywords[t][0] for t in got] == ["wolf", "cake"]
    assert json.loads(path.with_suffix(".json").read_text())["method"] == "kmeans"


def test_segments_and_chains():
    assert segment("One day. Two days! Three?\nFour and more") == [
        "One day.", "Two days!", "Three?", "Four and more"]
    assert segment("a. b.") == []  # too short
    with pytest.raises(InputError, match="segment mode"):
        segment("x", mode="words")
    assert to_chain([1, 1, 2, 2, 1]) == (1, 2, 1)
    assert to_chain([1, 1, 2], merge_repeats=False) == (1, 1, 2)
    d = chain_distributions([[(0, 1), (0, 2, 1), (1,)], [(), (2,)]], 3, m=2)
    np.testing.assert_allclose(d.first, [[2 / 3, 1 / 3, 0], [0, 0, 1]])
    assert d.chains[0] == {(0, 1): 1, (0, 2): 1, (1,): 1} and d.n_samples.tolist() == [3, 1]
    assert d.transitions[3, 0] == 2 and d.transitions[1, 3] == 3  # start -> 0, 1 -> end


def test_probe_recovers_a_planted_linear_theme():
    """Theme distribution = softmax of a planted linear map of the state."""
    rng = np.random.default_rng(0)
    n, d, k = 400, 16, 4
    X = rng.normal(size=(n, d))
    W = rng.normal(size=(d, k)) * 1.5
    P = np.exp(X @ W)
    P /= P.sum(1, keepdims=True)
    train, test = np.arange(300), np.arange(300, 400)
    probe = fit_probe_cv(X[train], P[train], np.ones(300), seed=0)
    pred = probe.predict(X[test])
    marginal = np.tile(P[train].mean(0), (100, 1))
    assert kl_rows(P[test], pred).mean() < 0.05
    assert kl_rows(P[test], marginal).mean() > 0.5


def test_chain_transformer_learns_planted_chains():
    """The first theme is planted in the states; the second follows it deterministically."""
    rng = np.random.default_rng(1)
    n, m, d = 200, 4, 8
    first = rng.integers(0, 3, n)
    A = rng.normal(size=(n, m, d)) * 0.1
    A[np.arange(n), -1, first] += 3.0
    chains = [[(int(f), int((f + 1) % 3))] * 4 for f in first]
    mask = np.ones((n, m), dtype=bool)
    ct = ChainTransformer(k=3, max_chain=3, steps=100, seed=0).fit(A[:150], mask[:150],
                                                                    chains[:150])
    p = ct.first(A[150:], mask[150:])
    assert (p.argmax(1) == first[150:]).mean() > 0.95
    lp = ct.chain_logprob(A[150:], mask[150:], list(range(50)), [chains[150 + i][0]
                                                                   for i in range(50)])
    assert np.exp(lp).mean() > 0.8  # first, second and END all right
    top = ct.beam(A[150:152], mask[150:152], width=3)
    assert top[0][0][0] == chains[150][0] and top[0][0][1] > 0.7


def test_metrics_and_markov():
    from difflens.analysis.themes import ChainDistributions

    emp = np.array([[1.0, 0, 0], [0, 1, 0], [0.5, 0.5, 0]])
    d = ChainDistributions(first=emp, chains=[], transitions=np.zeros((4, 4)),
                           n_samples=np.array([4, 4, 4]), m=3)
    m = evaluate_prediction(emp.copy() * 0.97 + 0.01, d, np.arange(3), None, n_boot=100)
    assert m["top1"]["value"] == 1.0 and m["kl"]["value"] < 0.05 and m["ece"]["value"] < 0.3
    assert m["kl"]["n"] == m["n_test"] == 3 and m["ece"]["resampled"] == "prompts"
    T = np.zeros((4, 4))
    T[0, 1] = 10
    lp = markov_logprob(np.array([1.0, 0, 0]), T, (0, 1), max_chain=3)
    assert lp == pytest.approx(np.log(11 / 14) + np.log(1 / 4))


def test_themes_pipeline_on_tiny_model_and_bad_input(tiny, tmp_path):
    prompts = tuple(f"the fox went to the forest {w}" for w in
                    ("to find a friend", "and was sad", "with a box of gold", "at night",
                     "and danced", "and the coin came up heads", "with the rabbit", "alone"))
    # the transformer's learning is checked on planted chains above: 100 steps fit it here
    cfg = ThemesConfig(prompts=prompts, k_samples=4, max_new_tokens=12, k_min=2, k_max=4,
                       transformer_steps=100,
                       segment="tokens", window=4, encoder="all-MiniLM-L6-v2", n_boot=50,
                       layers="0,2,4", m_act=4, test_fraction=0.25)
    run = run_themes(tiny, prompts, tmp_path / "t", cfg, progress=False)
    s = run.summary()
    assert s["n_prompts"] == 8 and s["k_samples"] == 4 and 2 <= s["n_themes"] <= 4
    assert set(s["predictors"]["probe"]) == {"0", "2", "4"} and s["best_layer"] in (0, 2, 4)
    for r in (*s["predictors"]["probe"].values(), *s["predictors"]["transformer"].values()):
        assert {"kl", "top1", "ece"} <= set(r)
        assert {"ci_low", "ci_high"} <= set(r["kl"]) and r["kl"]["n"] == r["n_test"]
    assert leftover_ci_keys(s) == []  # every estimate in the one spelling
    assert {"marginal", "sentence_embedding"} <= set(s["baselines"])
    for f in ("themes.safetensors", "data/segments.parquet", "data/chains.csv",
              "figures/theme_map.png", "figures/theme_flows.html", "figures/layer_sweep.png",
              "figures/calibration.png", "index.html"):
        assert (tmp_path / "t" / f).is_file(), f
    parts = sorted((tmp_path / "t" / "samples").rglob("*.parquet"))
    stamps = [p.stat().st_mtime_ns for p in parts]
    again = run_themes(tiny, prompts, tmp_path / "t", replace(cfg, steps=("sample",)),
                       progress=False)
    assert [p.stat().st_mtime_ns for p in parts] == stamps  # nothing sampled twice
    assert again.summary()["n_themes"] == s["n_themes"]
    with pytest.raises(InputError, match="K"):
        ThemesConfig(prompts=prompts, k_samples=0)
    with pytest.raises(InputError, match="empty"):
        ThemesConfig(prompts=("a", " "))
    with pytest.raises(InputError, match="no usable prompts"):
        run_themes(tiny, (), tmp_path / "u", ThemesConfig())


def test_cli_themes_errors(tmp_path):
    empty = tmp_path / "p.txt"
    empty.write_text("\n\n")
    main = ["themes", "sample", "--base", "x", "--out", str(tmp_path / "o")]
    r = CliRunner().invoke(app, main)
    assert r.exit_code == 2 and "exactly one of" in r.stderr
    r = CliRunner().invoke(app, [*main, "--prompts", str(empty)])
    assert r.exit_code == 2 and len(r.stderr.strip().splitlines()) == 1
    r = CliRunner().invoke(app, [*main, "--organism", "5", "--samples", "0"])
    assert r.exit_code == 2 and "K" in r.stderr


def _group_bigram():
    """A bigram Llama over 3 word groups (a, b, c) of 4 words: after a word, the next stays in
    its group with p = 0.97 (0.015 for each other group); after <bos>, as after a0."""
    import torch

    from difflens.models.tiny import bigram_model

    groups = [[f"{g}{i}" for i in range(4)] for g in "abc"]
    words = [w for grp in groups for w in grp]
    v = 4 + len(words)
    table = torch.full((v, v), -30.0)
    for gi, grp in enumerate(groups):
        for w in grp:
            row = 4 + words.index(w)
            for gj, other in enumerate(groups):
                p = 0.97 if gi == gj else 0.015
                for o in other:
                    table[row, 4 + words.index(o)] = float(np.log(p / 4))
    table[2] = table[4]
    return words, bigram_model(words, table, name="planted-themes")


def test_planted_pipeline_beats_the_marginal(tmp_path):
    """A bigram Llama whose continuations stay in the word group of the prompt's last word
    (p = 0.97 per step): the theme of a continuation is planted in the final prompt state.
    The whole pipeline (sampling, token-window segments, clustering, chains, predictors)
    must find the 3 themes and predict first themes better than the marginal."""
    words, lm = _group_bigram()
    rng = np.random.default_rng(0)
    prompts = tuple(" ".join(rng.choice(words, size=3)) for _ in range(60))

    def encoder(texts):
        out = []
        for t in texts:
            counts = np.array([sum(w.startswith(g) for w in t.split()) for g in "abc"], float)
            out.append(counts / max(np.linalg.norm(counts), 1e-9) + 0.01 * rng.normal(size=3))
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    cfg = ThemesConfig(prompts=prompts, k_samples=8, max_new_tokens=12, segment="tokens",
                       transformer_steps=100,
                       window=4, encoder=encoder, k_min=2, k_max=5, n_boot=200, layers="0,1",
                       m_act=3, test_fraction=0.3, temperature=1.0)
    s = run_themes(lm, prompts, tmp_path / "p", cfg, progress=False).summary()
    assert s["n_themes"] == 3
    probe = s["predictors"]["probe"][str(s["best_layer"])]
    marginal = s["baselines"]["marginal"]
    assert probe["kl"]["value"] < 0.5 * marginal["kl"]["value"]
    assert probe["kl_gain"]["ci_low"] > 0 and probe["top1"]["value"] > 0.9
    # the chain transformer over the last 3 states overfits 42 training prompts here (it
    # learns planted chains from 150, see above); only check that it was scored
    assert np.isfinite(s["predictors"]["transformer"][str(s["best_layer"])]["kl"]["value"])


def _resample_fits(a, b, k_range=(3, 8)):
    segs = [f"segment {i}" for i in range(len(a))]
    return (fit_themes(segs, embeddings=a, k_range=k_range, seed=0).model,
            fit_themes(segs, embeddings=b, k_range=k_range, seed=0).model)


def test_resample_consistency_planted_themes_and_noise():
    """Two sample sets from the same 5 planted clusters (different noise): both fits cut
    the segments alike (ARI 1). Two sets of isotropic noise: nothing to agree on (ARI ~ 0)."""
    from difflens.analysis.themes import resample_consistency

    rng = np.random.default_rng(3)
    centers = rng.normal(size=(5, 24))
    centers /= np.linalg.norm(centers, axis=1, keepdims=True)

    def draw(seed):
        r = np.random.default_rng(seed)
        x = np.concatenate([c + 0.05 * r.normal(size=(40, 24)) for c in centers])
        return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)

    prompt = np.concatenate([np.arange(200) % 40] * 2)  # 40 prompts, 10 segments each
    a, b = draw(0), draw(1)
    fa, fb = _resample_fits(a, b)
    c = resample_consistency(fa, fb, np.concatenate([a, b]), prompt, n_boot=200)
    assert fa.k == fb.k == 5 and c.ari > 0.99 and c.ci_low > 0.99
    assert c.n_segments == 400 and c.n_prompts == 40
    assert (c.contingency > 0).sum() == 5  # one cell per row: a one-to-one matching
    noise = np.random.default_rng(0).normal(size=(400, 24))
    noise = (noise / np.linalg.norm(noise, axis=1, keepdims=True)).astype(np.float32)
    na, nb = _resample_fits(noise[:200], noise[200:])
    c = resample_consistency(na, nb, noise, prompt, n_boot=200)
    assert abs(c.ari) < 0.15 and c.ci_low < c.ari < c.ci_high
    with pytest.raises(InputError, match="one prompt index per segment"):
        resample_consistency(fa, fb, a, prompt)


def _planted_lm_and_prompts(n: int = 60):
    """The planted bigram of ``test_planted_pipeline_beats_the_marginal``: continuations stay
    in the word group (a, b or c) of the prompt's last word."""
    words, lm = _group_bigram()
    rng = np.random.default_rng(0)
    prompts = tuple(" ".join(rng.choice(words, size=3)) for _ in range(n))
    noise = np.random.default_rng(1)

    def encoder(texts):
        out = []
        for t in texts:
            counts = np.array([sum(w.startswith(g) for w in t.split()) for g in "abc"], float)
            out.append(counts / max(np.linalg.norm(counts), 1e-9) + 0.01 * noise.normal(size=3))
        out = np.asarray(out, dtype=np.float32)
        return out / np.linalg.norm(out, axis=1, keepdims=True)

    return lm, prompts, encoder


def test_consistency_and_generalisation_steps_on_a_planted_model(tmp_path):
    """Consistency: both sample sets hold the same 3 planted themes (ARI ~ 1). Generalisation:
    with the prompt's *last* word group as its group, a held-out group's theme was never a
    training target, so the group split is much worse than random folds (gap > 0); with the
    *first* word's group (unrelated to the theme), holding a group out costs little."""
    lm, prompts, encoder = _planted_lm_and_prompts()
    base = dict(prompts=prompts, k_samples=8, max_new_tokens=12, segment="tokens", window=4,
                encoder=encoder, k_min=2, k_max=5, n_boot=200, layers="0,1", m_act=3)
    last = tuple(p.split()[-1][0] for p in prompts)
    cfg = ThemesConfig(**base, groups=last)
    s = run_themes(lm, prompts, tmp_path / "g", replace(
        cfg, steps=("sample", "fit", "chains", "consistency", "generalisation")),
        progress=False).summary()
    r = s["consistency"]["resample_ari"]
    assert s["consistency"]["k"] == [3, 3] and r["value"] > 0.95 and r["n_prompts"] == 60
    g = s["prediction"]["generalisation"]
    assert g["n_groups"] == 3 and set(g["group_split"]["per_group"]) == {"a", "b", "c"}
    assert g["random_split"]["probe"]["kl"]["value"] < 0.3 < g["group_split"]["probe"]["kl"][
        "value"]
    assert g["gap"]["ci_low"] > 0.3 and g["gap"]["resampled"] == "prompts"
    assert r["n"] == r["n_segments"] and leftover_ci_keys(s) == []
    for f in ("figures/theme_consistency.png", "figures/theme_generalisation.png",
              "data/consistency_segments.parquet"):
        assert (tmp_path / "g" / f).is_file(), f
    first = tuple(p.split()[0][0] for p in prompts)
    s = run_themes(lm, prompts, tmp_path / "g", ThemesConfig(
        **base, groups=first, steps=("generalisation",)), progress=False).summary()
    g = s["prediction"]["generalisation"]
    assert g["group_split"]["probe"]["kl"]["value"] < 0.3 and g["gap"]["value"] < 0.15
    assert g["group_split"]["probe"]["kl_gain"]["ci_low"] > 0  # still beats the marginal
    with pytest.raises(InputError, match="one group per prompt"):
        ThemesConfig(**base, groups=("a",))
    with pytest.raises(InputError, match="at least 2 groups"):
        run_themes(lm, prompts, tmp_path / "g", ThemesConfig(
            **base, groups=("a",) * 60, steps=("generalisation",)), progress=False)
    with pytest.raises(InputError, match="holds out groups"):
        run_themes(lm, prompts, tmp_path / "g", ThemesConfig(
            **base, steps=("generalisation",)), progress=False)
