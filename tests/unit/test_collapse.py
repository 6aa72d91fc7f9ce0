"""Mode collapse instruments against planted ground truth.

The probes and the temperature sweep run on a real Llama turned into an exact bigram model
(attention and MLP outputs zeroed, one-hot embeddings, the logit table in the LM head), so
every answer probability, multi-token ones included, is known in closed form.
"""

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.linalg
import torch

from difflens.analysis.bootstrap import Estimate
from difflens.analysis.diversity import (
    distinct_n,
    diversity,
    frechet_distance,
    pairwise_distance,
    self_bleu,
    vendi_score,
)
from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.capture.outcomes import load_probes, run_probes, temperature_sweep
from difflens.capture.scoring import continuation_logprobs
from difflens.capture.text_divergence import Corpus, text_divergence
from difflens.errors import InputError
from difflens.models import ModelPair
from difflens.models.tiny import bigram_model, tiny_pair
from difflens.sampling.attractors import attractor_test, edit_distance, final_sentence

WORDS = ["pick", "number", "one", "two", "twenty", "three", "."]
SPECIALS = 4  # <pad> <unk> <bos> <eos>


def _id(word: str) -> int:
    return SPECIALS + WORDS.index(word)


def _table(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(len(WORDS) + SPECIALS, len(WORDS) + SPECIALS, generator=g) * 2


def _probe_file(tmp_path: Path, **extra: object) -> Path:
    path = tmp_path / "probes.jsonl"
    line = {"probe": "count", "phrasing": "plain", "prompt": "pick number",
            "answers": ["one", "two", "twenty one", "twenty three"], **extra}
    path.write_text(json.dumps(line) + "\n")
    return path


def _expected(table: torch.Tensor, answers: list[list[str]], temp: float, boundary: bool
              ) -> tuple[np.ndarray, float]:
    """Closed-form answer distribution after "pick number" (renormalised, outside mass)."""
    p = torch.softmax(table.double() / temp, -1)
    bound = [i for i in range(table.shape[0]) if i < SPECIALS or i == _id(".")]
    raw = []
    for words in answers:
        prev, prob = _id("number"), 1.0
        for w in words:
            prob *= float(p[prev, _id(w)])
            prev = _id(w)
        if boundary:
            prob *= float(p[prev, bound].sum())
        raw.append(prob)
    r = np.array(raw)
    return r / r.sum(), 1 - r.sum()


@pytest.mark.parametrize("boundary", [True, False])
def test_probe_matches_closed_form_with_multi_token_answers(tmp_path, boundary):
    table = _table()
    lm = bigram_model(WORDS, table)
    probes = load_probes(_probe_file(tmp_path, boundary=boundary))
    res = run_probes(lm, probes, temperatures=(0.5, 1.0, 2.0))
    answers = [["one"], ["two"], ["twenty", "one"], ["twenty", "three"]]
    want, outside = _expected(table, answers, 1.0, boundary)
    got = res.answers.p.to_numpy()
    assert np.allclose(got, want, atol=1e-6)
    row = res.phrasings.iloc[0]
    assert row.outside_mass == pytest.approx(outside, abs=1e-6)
    assert row.entropy_bits == pytest.approx(-(want * np.log2(want)).sum(), abs=1e-6)
    assert row.tvd_uniform == pytest.approx(0.5 * np.abs(want - 0.25).sum(), abs=1e-6)
    assert row.top_answer == ["one", "two", "twenty one", "twenty three"][int(want.argmax())]
    # Every temperature is exact too: chained softmax(logits / T).
    lp = res.logprobs[("count", "plain", "model")]
    for j, temp in enumerate(res.temperatures):
        w, _ = _expected(table, answers, temp, boundary)
        p = np.exp(lp[:, j] - lp[:, j].max())
        assert np.allclose(p / p.sum(), w, atol=1e-6)


def test_shared_prefix_scoring_equals_full_passes(tiny, monkeypatch):
    from difflens.capture import scoring

    # the shared path must really run: a model whose forward renamed its cache keyword
    # (transformers 5.24: past_key_values -> cache) once made it fall back to full passes
    real, calls = scoring._rows_shared, []
    monkeypatch.setattr(scoring, "_rows_shared", lambda *a, **k: calls.append(1) or real(*a, **k))
    conts = [" forest", " forest to find", " dark", " the little fox went"]
    a = continuation_logprobs(tiny, "the fox went to", conts, temperatures=(0.7, 1.0),
                              boundary=True)
    b = continuation_logprobs(tiny, "the fox went to", conts, temperatures=(0.7, 1.0),
                              boundary=True, share_prefix=False, batch_size=2)
    assert calls == [1]
    assert np.allclose(a, b, atol=1e-5)


def test_temperature_sweep_finds_planted_temperature(tmp_path):
    table = _table(1)
    base = bigram_model(WORDS, table, name="base")
    tuned = bigram_model(WORDS, table * 2.0, name="tuned")  # exactly the base at T = 1/2
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"probe": "pick", "phrasing": str(i), "prompt": prompt,
                                        "answers": ["one", "two", "three"], "boundary": False})
                            + "\n" for i, prompt in enumerate(["pick number", "pick two",
                                                               "number one"])))
    res = run_probes(ModelPair(base, tuned), load_probes(path),
                     temperatures=(0.5, 1.0, 1.5, 2.0, 3.0))
    sweep = temperature_sweep(res)
    assert sweep.best_T == 2.0
    assert sweep.residual_tvd.value < 1e-9
    assert sweep.tvd_at_1.value > 0.05
    assert sweep.n == 3
    s = sweep.summary()
    assert s["residual_tvd"] == sweep.residual_tvd.to_json()
    assert s["tvd_at_1"]["n"] == 3 and s["tvd_at_1"]["resampled"] == "phrasings"
    assert leftover_ci_keys(s) == []
    probes = res.summary()
    assert probes["pick"]["tuned"]["tvd_uniform"]["n"] == 3
    assert leftover_ci_keys(probes) == []


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "probes.jsonl:2: not valid JSON"),
    ('{"probe": "x", "prompt": "a", "answers": []}', "probes.jsonl:2: the answer set needs "
                                                     "at least 2 answers, got 0"),
    ('{"probe": "x", "prompt": "a", "answers": "ab"}', "probes.jsonl:2: answers must be"),
    ('{"probe": "x", "prompt": "a", "answers": ["one"]}', "at least 2 answers"),
    ('{"probe": "x", "prompt": " ", "answers": ["a", "b"]}', "probes.jsonl:2: the prompt is "
                                                               "empty"),
    ('{"probe": "x", "prompt": "a", "answers": {"range": [5, 1]}}', "lo <= hi"),
    ('{"prompt": "a", "answers": ["a", "b"]}', "missing field(s) probe"),
])
def test_bad_probe_file_gives_one_readable_line(tmp_path, line, message):
    path = tmp_path / "probes.jsonl"
    path.write_text('{"probe": "ok", "prompt": "a", "answers": ["a", "b"]}\n' + line + "\n")
    with pytest.raises(InputError) as exc:
        load_probes(path)
    assert message in str(exc.value) and "\n" not in str(exc.value)


def test_empty_answer_set_and_unknown_probe_are_refused(tiny, tmp_path):
    with pytest.raises(InputError, match="answer set is empty"):
        continuation_logprobs(tiny, "the fox", [])
    with pytest.raises(InputError, match="unknown probe"):
        load_probes(names=["nope"])


def test_builtin_probes_cover_the_issue():
    probes = load_probes()
    names = {p.name for p in probes}
    assert {"number_0_100", "number_1_10", "d6", "d20", "coin"} <= names
    assert {p.phrasing for p in probes} >= {"python", "chat"}
    assert len(next(p for p in probes if p.name == "number_0_100").answers) == 101


def test_identical_pair_has_zero_kl_and_equal_attractors(tmp_path):
    pair = tiny_pair(0, scale=0.0)
    corpus = Corpus(["the fox went to", "once upon a time"],
                    [" the forest to find a friend", " there was a little fox"], ["a", "b"])
    div = text_divergence(pair, corpus, store=tmp_path / "cap")
    s = div.summary()
    assert s["kl_tuned_base_mean"]["value"] == pytest.approx(0.0, abs=1e-6)
    assert s["top1_agree_mean"]["value"] == 1.0
    assert s["top1_agree_mean"]["n"] == 2 and s["top1_agree_mean"]["resampled"] == "texts"
    assert leftover_ci_keys(s) == []
    assert s["n_tokens"] == 6 + 5 and set(div.tokens.source) == {"a", "b"}
    assert div.tokens[div.tokens.text_id == 1].token.tolist() == "there was a little fox".split()
    att = attractor_test(pair, ["the fox went to", "once upon a time there"],
                         max_new_tokens=12, encoder=None).summary()
    for key in ("strength", "exact_rate", "n"):
        assert att["base"][key] == att["tuned"][key]
    strength = Estimate.from_json(att["base"]["strength"])
    assert strength.ci_low <= strength.value <= strength.ci_high
    assert strength.n == att["base"]["n"] and strength.resampled == "prompts"
    assert leftover_ci_keys(att) == []


def test_attractor_replace_regenerates_from_the_alternative(tiny):
    res = attractor_test(tiny, ["the fox went to"], max_new_tokens=12, positions=(0.5,),
                         encoder=None)
    assert len(res.table) == 2
    rows = res.table
    assert set(rows.kind) == {"replace", "insert"}
    orig = res.originals.completion.iloc[0].split()
    rep = rows[rows.kind == "replace"].iloc[0]
    k = int(rep.token_index)
    assert rep.new_text.split()[:k] == orig[:k]
    assert rep.new_text.split()[k] == rep.perturbation.strip() != orig[k]
    # independent: strength = 1 - mean normalised Levenshtein distance of the endings, by a
    # hand-written DP on their words (the word tokenizer: one word, one token)
    dists = []
    for r in rows.itertuples():
        a, b = r.original_ending.split(), r.new_ending.split()
        d = np.arange(len(b) + 1)
        for i, x in enumerate(a, 1):
            prev, d[0] = d.copy(), i
            for j, y in enumerate(b, 1):
                d[j] = min(prev[j] + 1, d[j - 1] + 1, prev[j - 1] + (x != y))
        dists.append(d[-1] / max(len(a), len(b)))
    assert rows.edit_distance.tolist() == pytest.approx(dists)
    assert res.summary()["model"]["strength"]["value"] == pytest.approx(1 - np.mean(dists))
    assert res.summary()["model"]["by_kind"]["replace"] == pytest.approx(
        1 - dists[rows.kind.tolist().index("replace")])


def test_ending_and_edit_distance():
    assert final_sentence("A cat sat. Then the dog ran home. Ok.") == "Then the dog ran home."
    assert final_sentence("The dog ran home. Then the cat sat on") == "The dog ran home."
    assert edit_distance([1, 2, 3], [1, 2, 3]) == 0.0
    assert edit_distance([1, 2, 3], [1, 5, 3, 4]) == pytest.approx(2 / 4)
    assert edit_distance([], []) == 0.0


def test_diversity_metrics_order_synthetic_sets():
    same = ["the cat sat on the mat"] * 6
    varied = ["the cat sat on the mat", "a dog ran in the park", "birds sing at dawn",
              "rain fell all night long", "she read an old book", "ships sail to far lands"]
    assert distinct_n(same, 2) < distinct_n(varied, 2)
    assert distinct_n(varied, 2) == 1.0
    assert self_bleu(same) == pytest.approx(1.0) and self_bleu(varied) < 0.2
    eye = np.eye(5, dtype=np.float32)
    assert vendi_score(eye) == pytest.approx(5.0)
    assert vendi_score(np.tile(eye[:1], (5, 1))) == pytest.approx(1.0)
    assert pairwise_distance(eye) == pytest.approx(1.0)
    assert pairwise_distance(np.tile(eye[:1], (5, 1))) == pytest.approx(0.0, abs=1e-7)
    rng = np.random.default_rng(0)
    a = rng.normal(size=(400, 4))
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-8)
    shifts = [frechet_distance(a, a + s) for s in (0.0, 0.5, 1.0, 2.0)]
    assert shifts == sorted(shifts) and shifts[-1] == pytest.approx(4 * 4, rel=1e-6)
    # Known closed form: N(0, I) vs N(0, 4I) in 4 dims -> 4 * (1 + 4 - 2 * 2) = 4.
    b = rng.normal(size=(200_000, 4))
    assert frechet_distance(b, 2 * b) == pytest.approx(4.0, rel=0.02)
    # fewer texts than dimensions: the sample-space form is the definition, computed with
    # scipy's matrix square root of the full covariances
    from scipy.linalg import sqrtm

    for n, m in ((12, 30), (30, 12), (40, 40)):
        x, y = rng.normal(size=(n, 50)), rng.normal(size=(m, 50)) * 1.3 + 0.2
        sx, sy = np.cov(x, rowvar=False), np.cov(y, rowvar=False)
        mu = x.mean(0) - y.mean(0)
        want = mu @ mu + np.trace(sx) + np.trace(sy) - 2 * np.trace(sqrtm(sx @ sy)).real
        assert frechet_distance(x, y) == pytest.approx(want, rel=1e-6)


@pytest.mark.filterwarnings("ignore::scipy.linalg.LinAlgWarning")  # singular covariances
def test_diversity_result_ranks_a_collapsed_model_lower():
    words = "cat dog bird fish tree rock sun moon star rain".split()
    vocab = [*words, "the", "sat", "on", "a", "mat"]

    def bag_of_words(texts: list[str]) -> np.ndarray:
        return np.array([[t.split().count(w) for w in vocab] for t in texts], dtype=float)

    rng = np.random.default_rng(0)
    varied = [[" ".join(rng.choice(words, 5)) for _ in range(8)] for _ in range(5)]
    collapsed = [["the cat sat on the mat"] * 7 + ["the cat sat on a mat"] for _ in range(5)]
    res = diversity({"base": varied, "tuned": collapsed}, encoder=bag_of_words,
                    reference=[t for ts in varied for t in ts], n_boot=50)
    s = res.summary()
    assert leftover_ci_keys(s) == []
    assert s["tuned"]["vendi"]["value"] < s["base"]["vendi"]["value"]
    assert s["tuned"]["self_bleu"]["value"] > s["base"]["self_bleu"]["value"]
    assert s["tuned"]["distinct_2"]["value"] < s["base"]["distinct_2"]["value"]
    assert s["base"]["n_prompts"] == 5 and s["base"]["k_samples"] == 8
    assert s["base"]["vendi"]["n"] == 5 and s["base"]["vendi"]["resampled"] == "prompts"
    # Fréchet distance to the reference, by hand (scipy's sqrtm) on the L2-normalised
    # embeddings: the base's samples are the reference itself, so 0
    assert s["base"]["frechet"]["value"] == pytest.approx(0.0, abs=1e-9)
    assert s["base"]["frechet"]["n"] == 40
    ref = bag_of_words([t for ts in varied for t in ts])
    tuned = bag_of_words([t for ts in collapsed for t in ts])
    ref, tuned = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (ref, tuned))
    ca, cb = np.cov(ref, rowvar=False), np.cov(tuned, rowvar=False)
    want = (((ref.mean(0) - tuned.mean(0)) ** 2).sum()
            + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real))
    assert s["tuned"]["frechet"]["value"] == pytest.approx(want, abs=1e-6)


def test_surface_forms_of_one_answer_add_up(tmp_path):
    table = _table(2)
    lm = bigram_model(WORDS, table)
    path = tmp_path / "forms.jsonl"
    path.write_text(json.dumps({"probe": "f", "prompt": "pick number", "boundary": False,
                                "answers": {"forms": {"low": ["one", "two"],
                                                      "high": ["twenty three"]}}}) + "\n")
    res = run_probes(lm, load_probes(path))
    p = torch.softmax(table.double(), -1)
    low = float(p[_id("number"), _id("one")] + p[_id("number"), _id("two")])
    high = float(p[_id("number"), _id("twenty")] * p[_id("twenty"), _id("three")])
    assert res.answers.answer.tolist() == ["low", "high"]
    assert np.allclose(res.answers.p, [low / (low + high), high / (low + high)], atol=1e-6)
    assert res.phrasings.outside_mass.iloc[0] == pytest.approx(1 - low - high, abs=1e-6)


def test_batch_size_changes_no_result(pair):
    prompts = ["the fox went to", "once upon a time there", "the rabbit was afraid of"]
    one = attractor_test(pair, prompts, max_new_tokens=10, encoder=None, batch_size=1)
    many = attractor_test(pair, prompts, max_new_tokens=10, encoder=None, batch_size=32)
    assert len(one.table) > 0
    ent = ["entropy_new", "entropy_original"]  # float sums over padded batches: to 1e-5
    assert one.table.drop(columns=ent).equals(many.table.drop(columns=ent))
    np.testing.assert_allclose(one.table[ent].to_numpy(), many.table[ent].to_numpy(),
                               atol=1e-5)
    probes = load_probes(names=["d6"])
    a = run_probes(pair, probes, batch_size=1).answers
    b = run_probes(pair, probes, batch_size=64).answers
    np.testing.assert_allclose(a["p"].to_numpy(), b["p"].to_numpy(), rtol=1e-5, atol=1e-7)


def test_vendi_and_pairwise_distance_refuse_raw_embeddings():
    """Raw rows used to give a silent wrong answer (Vendi 0 for large norms); normalised
    rows agree with the definition exp(H(eig(K / n))) computed here independently."""
    rng = np.random.default_rng(1)
    raw = rng.normal(size=(12, 8)) * 30
    for fn in (vendi_score, pairwise_distance):
        with pytest.raises(InputError, match=r"needs unit-length embeddings, but row 0 has "
                                             r"norm [\d.]+ \(12 of 12 rows are off\)") as err:
            fn(raw)
        assert "\n" not in str(err.value)
    unit = raw / np.linalg.norm(raw, axis=1, keepdims=True)
    k = unit @ unit.T / len(unit)
    lam = np.clip(np.linalg.eigvalsh(k), 0, None)
    lam = lam[lam > 0]
    assert vendi_score(unit) == pytest.approx(float(np.exp(-(lam * np.log(lam)).sum())),
                                              rel=1e-9)
    cos = unit @ unit.T
    assert pairwise_distance(unit) == pytest.approx(
        1 - cos[~np.eye(12, dtype=bool)].mean(), rel=1e-9)
    with_empty = np.vstack([unit, np.zeros((1, 8))])  # a text the encoder gave nothing for
    assert np.isfinite(vendi_score(with_empty))


def _pick_probe(tmp_path: Path) -> Path:
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"probe": "pick", "phrasing": str(i), "prompt": prompt,
                                        "answers": ["one", "two", "three", "twenty"],
                                        "boundary": False}) + "\n"
                            for i, prompt in enumerate(["pick number", "pick two"])))
    return path


@pytest.mark.parametrize(("scale", "want"), [(2.0, 1.0), (-1.0, -1.0)])
def test_rank_correlation_recovers_planted_orderings(tmp_path, scale, want):
    from scipy.stats import kendalltau, spearmanr

    from difflens.capture.outcomes import rank_correlation

    # One phrasing, distinct logits over the answers after "number": the tuned model's logits
    # are the base's times 2 (same ordering: Spearman = Kendall = 1) or negated (reversed: -1).
    table = _table(3)
    table[_id("number"), [_id(w) for w in ("one", "two", "three", "twenty")]] = torch.tensor(
        [2.0, 1.0, 0.0, -1.0])
    base = bigram_model(WORDS, table, name="base")
    tuned = bigram_model(WORDS, table * scale, name="tuned")
    probe = load_probes(_pick_probe(tmp_path))[:1]
    res = run_probes(ModelPair(base, tuned), probe)
    r = rank_correlation(res, seed=0, n_boot=200)["pick"]
    x = res.answers[res.answers.model == "base"].p.to_numpy()
    y = res.answers[res.answers.model == "tuned"].p.to_numpy()
    assert spearmanr(x, y).statistic == pytest.approx(want)
    assert r["spearman"]["value"] == pytest.approx(want)
    assert r["kendall"]["value"] == pytest.approx(want)
    assert r["kendall"]["value"] == pytest.approx(kendalltau(x, y).statistic)
    assert r["n_answers"] == 4 and r["answered"] and r["spearman"]["n"] == 4
    # every pair resample of a strictly monotone relation keeps its sign
    assert [r["spearman"]["ci_low"], r["spearman"]["ci_high"]] == pytest.approx([want, want])
    assert leftover_ci_keys(r) == []


def test_rank_correlation_of_a_fixed_ordering_and_its_reverse():
    import pandas as pd

    from difflens.capture.outcomes import ProbeResults, rank_correlation

    answers = [str(i) for i in range(8)]
    p = np.linspace(1, 8, 8) / 36
    rows = [{"probe": "n", "phrasing": "a", "model": m, "answer": a, "p": float(q)}
            for m, qs in (("base", p), ("tuned", p[::-1]), ("same", p ** 3 / (p ** 3).sum()))
            for a, q in zip(answers, qs, strict=True)]
    phr = pd.DataFrame([{"probe": "n", "phrasing": "a", "model": m, "outside_mass": 0.1}
                        for m in ("base", "tuned", "same")])
    res = ProbeResults(answers=pd.DataFrame(rows), phrasings=phr, temperatures=(1.0,),
                       logprobs={})
    rev = rank_correlation(res, n_boot=200)["n"]
    assert rev["spearman"]["value"] == pytest.approx(-1.0)
    assert rev["kendall"]["value"] == pytest.approx(-1.0)
    assert rev["spearman"]["ci_high"] == pytest.approx(-1.0)  # every resample is reversed too
    same = rank_correlation(res, tuned="same", n_boot=200)["n"]
    assert same["spearman"]["value"] == pytest.approx(1.0)
    assert same["kendall"]["ci_low"] == pytest.approx(1.)


def test_probe_a_model_does_not_answer_is_flagged(tmp_path):
    from difflens.report.collapse import headline, probe_figures

    table = _table(4)
    table[_id("number"), _id(".")] = 30.0  # after "pick number" nearly all mass is on "."
    table[_id("two"), _id(".")] = 30.0
    lm = bigram_model(WORDS, table, name="base")
    res = run_probes(lm, load_probes(_pick_probe(tmp_path)))
    assert (res.phrasings.outside_mass > 0.999).all() and not res.phrasings.answered.any()
    s = res.summary()
    assert s["pick"]["model"]["answered"] is False
    h = headline({"probes": s})
    assert "not answered: outside mass 1.000 > 0.95" in h["probe pick, model: top answer"]
    figs = {f.name: f for f in probe_figures(res, s)}
    assert "NOT ANSWERED (model on pick)" in figs["probes_tvd"].caption  # type: ignore[union-attr]
    assert "not answered by model" in figs["probe_pick"].title  # type: ignore[union-attr]
    # a model that answers is not flagged
    ok = run_probes(bigram_model(WORDS, _table(4), name="base"), load_probes(_pick_probe(tmp_path)))
    assert ok.summary()["pick"]["model"]["answered"] is (
        bool(ok.phrasings.outside_mass.mean() <= 0.95))


def test_knn_precision_recall_measures_coverage_and_matches_prdc():
    import prdc

    from difflens.analysis.diversity import knn_precision_recall

    # A reference with two well-separated clusters ("two genres"); a model that writes only
    # the first genre has precision ~1 and recall ~1/2; one that adds a third, far-away
    # cluster of its own has precision ~2/3.
    rng = np.random.default_rng(0)
    centres = np.eye(8)[:3] * 20
    ref = np.concatenate([centres[0] + rng.normal(size=(100, 8)),
                          centres[1] + rng.normal(size=(100, 8))])
    one_genre = centres[0] + rng.normal(size=(200, 8))
    pr = knn_precision_recall(one_genre, ref, k=5)
    assert pr.precision > 0.9 and 0.4 < pr.recall <= 0.5
    assert not pr.covered_reference[100:].any()  # nothing of the second genre is covered
    odd = np.concatenate([one_genre[:100], centres[2] + rng.normal(size=(100, 8))])
    pr2 = knn_precision_recall(odd, ref, k=5)
    assert not pr2.in_reference[100:].any() and pr2.precision <= 0.5
    for gen in (one_genre, odd):  # the reference implementation agrees exactly
        ours = knn_precision_recall(gen, ref, k=5)
        theirs = prdc.compute_prdc(real_features=ref, fake_features=gen, nearest_k=5)
        assert ours.precision == pytest.approx(theirs["precision"])
        assert ours.recall == pytest.approx(theirs["recall"])
    with pytest.raises(InputError, match="need more than 5 samples"):
        knn_precision_recall(one_genre[:5], ref, k=5)


def test_diversity_reports_precision_and_recall_with_cis():
    import zlib

    from difflens.analysis.diversity import diversity

    # A deterministic "encoder": each text's embedding is its genre's unit axis plus a small,
    # text-dependent jitter, so the reference has two genres and "narrow" writes one.
    def encode(texts):
        out = []
        for t in texts:
            g = np.random.default_rng(zlib.crc32(t.encode()))
            v = np.eye(6)[0 if t.startswith("a") else 1] + 0.05 * g.normal(size=6)
            out.append(v / np.linalg.norm(v))
        return np.array(out, dtype=np.float32)

    ref = [f"a{i}" for i in range(40)] + [f"b{i}" for i in range(40)]
    narrow = [[f"a{p}-{i}" for i in range(10)] for p in range(6)]
    wide = [[f"{'ab'[i % 2]}{p}-{i}" for i in range(10)] for p in range(6)]
    s = diversity({"narrow": narrow, "wide": wide}, reference=ref, encoder=encode,
                  seed=0).summary()
    # the second genre is never covered by "narrow": its recall is at most 1/2
    assert 0.4 <= s["narrow"]["recall"]["value"] <= 0.5
    assert s["wide"]["recall"]["value"] > 0.8 and s["narrow"]["precision"]["value"] > 0.8
    for m in ("narrow", "wide"):
        lo, hi = s[m]["recall"]["ci_low"], s[m]["recall"]["ci_high"]
        assert lo <= s[m]["recall"]["value"] <= hi
        assert s[m]["knn_k"] == 3
        assert (s[m]["recall"]["n"], s[m]["recall"]["resampled"]) == (80, "reference texts")
        assert (s[m]["precision"]["n"], s[m]["precision"]["resampled"]) == (60, "prompts")
    assert leftover_ci_keys(s) == []


def test_meeting_temperature_recovers_a_planted_crossing():
    import pandas as pd

    from difflens.analysis.temperature_match import crossing, meeting_temperature

    # Each prompt's tuned metric grows as log T with a prompt offset; the base sits where the
    # mean curve reaches log 1.5, so the curves meet at T = 1.5 exactly (linear in log T).
    rng = np.random.default_rng(0)
    temps = [0.5, 1.0, 2.0, 4.0]
    offsets = rng.normal(0, 0.05, size=30)
    offsets -= offsets.mean()
    tuned = pd.DataFrame([{"prompt_id": p, "T": t, "m": np.log(t) + o, "flat": 0.0}
                          for p, o in enumerate(offsets) for t in temps])
    base = pd.DataFrame([{"prompt_id": p, "m": np.log(1.5) + o, "flat": 1.0}
                         for p, o in enumerate(offsets)])
    res = meeting_temperature(tuned, base, ["m", "flat"], seed=1)
    assert res.meet["m"]["value"] == pytest.approx(1.5)
    lo, hi = res.meet["m"]["ci_low"], res.meet["m"]["ci_high"]
    assert lo <= 1.5 <= hi and hi - lo < 0.5
    assert res.meet["m"]["n_prompts"] == res.meet["m"]["n"] == 30
    assert leftover_ci_keys(res.summary()) == []
    # a curve that never reaches the base has no meeting temperature
    assert np.isnan(res.meet["flat"]["value"]) and res.meet["flat"]["no_meeting_share"] == 1.0
    assert crossing(np.array([1.0, 2.0]), np.array([-1.0, 1.0])) == pytest.approx(np.sqrt(2))
    with pytest.raises(InputError, match="at least 2 temperatures"):
        meeting_temperature(tuned[tuned["T"] == 1.0], base, ["m"])


def test_confidence_after_an_escape_is_the_entropy_of_the_new_path():
    # A bigram world: "pick" and "number" alternate with near certainty (low entropy); the
    # inserted word "twenty" leads into "one"/"two", whose rows are nearly flat (high
    # entropy), so every insertion escapes and the new path is measurably less confident.
    n = len(WORDS) + SPECIALS
    table = torch.zeros(n, n)
    table[:, :SPECIALS] = -30.0  # never end, never emit specials
    table[_id("pick"), _id("number")] = 12.0
    table[_id("number"), _id("pick")] = 12.0
    table[_id("twenty"), _id("one")] = 12.0
    for w in ("one", "two"):  # flat rows with a small preference, so greedy is defined
        table[_id(w), _id("two" if w == "one" else "one")] = 0.5
    lm = bigram_model(WORDS, table)
    res = attractor_test(lm, ["pick"], max_new_tokens=16, positions=(0.4,), kinds=("insert",),
                         insert=" twenty", encoder=None)
    row = res.table.iloc[0]
    h = {w: float(-(torch.softmax(table[_id(w)].double(), -1)
                    * torch.log_softmax(table[_id(w)].double(), -1)).sum())
         for w in ("pick", "number", "twenty", "one", "two")}
    # the regenerated tokens and the original ones over the same positions, from the text
    new_words = row.new_text.split()
    k = int(row.token_index)
    prevs_new = ["twenty"] + new_words[k + 1:-1]
    assert new_words[k] == "twenty" and set(new_words[k + 1:]) <= {"one", "two"}
    want_new = np.mean([h[w] for w in prevs_new])
    assert row.entropy_new == pytest.approx(want_new, abs=1e-5)
    original = res.originals.iloc[0].completion.split()
    prevs_old = (["pick"] + original)[k:k + len(prevs_new)]
    assert row.entropy_original == pytest.approx(np.mean([h[w] for w in prevs_old]), abs=1e-5)
    s = res.summary()["model"]["entropy_after"]
    assert s["escaped"]["n"] == 1 and s["returned"]["n"] == 0
    diff = s["escaped"]["diff"]["value"]
    assert diff == pytest.approx(want_new - row.entropy_original, abs=1e-5)
    assert diff > 1.0  # nats: the planted loss of confidence
    assert s["escaped"]["new"]["value"] == pytest.approx(want_new, abs=1e-5)
    assert leftover_ci_keys(s) == []


def test_ngram_contexts_and_the_entropy_drop_by_context(tmp_path):
    import pandas as pd

    from difflens.analysis.contexts import context_summary, ngram_contexts

    # prompt 1 2 3 | continuation 2 3 9 9 9 4
    assert ngram_contexts([1, 2, 3, 2, 3, 9, 9, 9, 4], 3) == [
        "novel",   # (3, 2) is new
        "copy",    # (2, 3) is in the prompt
        "novel",   # (3, 9)
        "novel",   # (9, 9) first time
        "repeat",  # (9, 9) again
        "novel"]   # (9, 4)
    # planted: copying drops the entropy by 2 nats, repetition by 1, novel tokens by 0
    rng = np.random.default_rng(0)
    rows = [{"text_id": t, "context": c, "drop": {"copy": 2.0, "repeat": 1.0, "novel": 0.0}[c]
             + rng.normal(0, 0.1)} for t in range(40) for c in rng.choice(
                 ["copy", "repeat", "novel"], size=20)]
    s = context_summary(pd.DataFrame(rows), "drop", seed=0)
    assert leftover_ci_keys(s) == []
    assert s["by_context"]["copy"]["value"] == pytest.approx(2.0, abs=0.05)
    assert s["minus_novel"]["repeat"]["value"] == pytest.approx(1.0, abs=0.05)
    lo, hi = s["minus_novel"]["copy"]["ci_low"], s["minus_novel"]["copy"]["ci_high"]
    assert 1.9 < lo < 2.0 < hi < 2.1
    assert s["n_texts"] == 40 and sum(r["n_tokens"] for r in s["by_context"].values()) == 800
    assert all(r["n"] == r["n_tokens"] for r in s["by_context"].values())

    # through text_divergence: the context column is read from the real token ids
    table = _table(5)
    base = bigram_model(WORDS, table, name="base")
    tuned = bigram_model(WORDS, table * 3, name="tuned")
    corpus = Corpus(["pick number one"], [" pick number two two two"], ["file"])
    div = text_divergence(ModelPair(base, tuned), corpus, store=tmp_path / "s")
    assert div.tokens.context.tolist() == ["novel", "copy", "novel", "novel", "repeat"]
    ctx = div.summary()["contexts"]
    drop = (div.tokens.base_entropy - div.tokens.tuned_entropy)[div.tokens.context == "copy"]
    assert ctx["by_context"]["copy"]["value"] == pytest.approx(float(drop.mean()))


def test_entropy_prediction_finds_a_planted_direction_and_beats_baselines():
    from difflens.analysis.entropy_prediction import predict_entropy

    # The target is a planted direction of layer 2's states plus a little noise; layer 1 is
    # noise; the "length" baseline is unrelated. The probe must pick layer 2 in every fold
    # and rank the prompts almost perfectly; the baseline must not.
    rng = np.random.default_rng(0)
    n, d = 120, 16
    direction = rng.normal(size=d)
    X2 = rng.normal(size=(n, d))
    y = X2 @ direction / np.linalg.norm(direction) + rng.normal(0, 0.1, n)
    states = {1: rng.normal(size=(n, d)), 2: X2}
    res = predict_entropy(states, y, {"length": rng.normal(size=n)}, seed=0)
    s = res.summary
    assert leftover_ci_keys(s) == []
    assert s["probe"]["layers"] == [2]
    assert s["probe"]["spearman"]["value"] > 0.95 and s["probe"]["r2"]["value"] > 0.9
    assert abs(s["baselines"]["length"]["spearman"]["value"]) < 0.25
    lo = s["probe_minus_best_baseline"]["ci_low"]
    assert lo > 0.6 and s["probe_minus_best_baseline"]["baseline"] == "length"
    assert s["probe_minus_best_baseline"]["n"] == 120
    # out of fold: each prompt's prediction comes from a fit that never saw it
    assert set(res.table.fold) == set(range(5))
    with pytest.raises(InputError, match="at least 10 prompts"):
        predict_entropy({1: X2[:6]}, y[:6], {})


def test_decollapse_summary_is_the_perplexity_of_each_set_beside_its_diversity():
    import pandas as pd

    from difflens.analysis.bootstrap import bootstrap_ci
    from difflens.analysis.decollapse import decollapse_summary, text_nll

    # per-token log-probs of four texts under the scorer; text 3 has no token
    tokens = pd.DataFrame({"text_id": [0, 0, 1, 2, 2, 2],
                           "base_logprob": [-1.0, -3.0, -2.0, -0.5, -1.5, -1.0]})
    nll = text_nll(tokens, 4)
    assert list(nll[:3]) == [2.0, 2.0, 1.0] and np.isnan(nll[3])
    table = pd.DataFrame({"set": ["a", "a", "b", "b"], "nll": nll})
    vendi = Estimate(value=3.0, ci_low=2.5, ci_high=3.5, n=2, resampled="prompts").to_json()
    diversity = {"a": {"vendi": vendi, "distinct_2": float("nan"), "n_prompts": 2},
                 "b": {"vendi": vendi}}
    s = decollapse_summary(table, diversity, model="tuned", scorer="base", caps=(0.5,), seed=0)
    assert leftover_ci_keys(s) == []
    assert (s["model"], s["scorer"], s["caps"]) == ("tuned", "base", [0.5])
    a, b = s["sets"]["a"], s["sets"]["b"]
    assert a["ppl_under_scorer"]["value"] == pytest.approx(np.exp(2.0))
    assert (a["ppl_under_scorer"]["ci_low"], a["ppl_under_scorer"]["ci_high"]) == \
        pytest.approx((np.exp(2.0), np.exp(2.0)))
    # a text without tokens is left out of the mean, its CI and n
    assert b["ppl_under_scorer"]["value"] == pytest.approx(np.exp(1.0))
    assert b["n_texts"] == b["ppl_under_scorer"]["n"] == 1 and a["n_texts"] == 2
    assert b["ppl_under_scorer"]["resampled"] == "texts"
    lo, hi = bootstrap_ci(nll[:2], seed=0)
    assert a["ppl_under_scorer"]["ci_low"] == pytest.approx(np.exp(lo))
    assert a["vendi"] == vendi and np.isnan(a["distinct_2"]) and "n_prompts" not in a
