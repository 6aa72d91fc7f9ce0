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

from difflens.analysis.diversity import (
    distinct_n,
    diversity,
    frechet_distance,
    pairwise_distance,
    self_bleu,
    vendi_score,
)
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
    assert sweep.residual_tvd < 1e-9
    assert sweep.tvd_at_1 > 0.05
    assert sweep.n == 3


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
    assert s["kl_tuned_base_mean"] == pytest.approx(0.0, abs=1e-6)
    assert s["top1_agree_mean"] == 1.0
    assert s["n_tokens"] == 6 + 5 and set(div.tokens.source) == {"a", "b"}
    assert div.tokens[div.tokens.text_id == 1].token.tolist() == "there was a little fox".split()
    att = attractor_test(pair, ["the fox went to", "once upon a time there"],
                         max_new_tokens=12, encoder=None).summary()
    for key in ("strength", "ci_low", "ci_high", "exact_rate", "n"):
        assert att["base"][key] == att["tuned"][key]


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
    assert res.summary()["model"]["strength"] == pytest.approx(1 - np.mean(dists))
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
    assert s["tuned"]["vendi"] < s["base"]["vendi"]
    assert s["tuned"]["self_bleu"] > s["base"]["self_bleu"]
    assert s["tuned"]["distinct_2"] < s["base"]["distinct_2"]
    assert s["base"]["n_prompts"] == 5 and s["base"]["k_samples"] == 8
    # Fréchet distance to the reference, by hand (scipy's sqrtm) on the L2-normalised
    # embeddings: the base's samples are the reference itself, so 0
    assert s["base"]["frechet"] == pytest.approx(0.0, abs=1e-9)
    ref = bag_of_words([t for ts in varied for t in ts])
    tuned = bag_of_words([t for ts in collapsed for t in ts])
    ref, tuned = (x / np.linalg.norm(x, axis=1, keepdims=True) for x in (ref, tuned))
    ca, cb = np.cov(ref, rowvar=False), np.cov(tuned, rowvar=False)
    want = (((ref.mean(0) - tuned.mean(0)) ** 2).sum()
            + np.trace(ca + cb - 2 * scipy.linalg.sqrtm(ca @ cb).real))
    assert s["tuned"]["frechet"] == pytest.approx(want, abs=1e-6)


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
    assert one.table.equals(many.table)
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
