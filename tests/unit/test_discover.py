"""discover on models with a planted shift: every method finds the planted words; a tuned
model equal to the base gives no hypothesis; the Patchscope reads a planted embedding back;
amplification at alpha 0 is the tuned model; bad input is one line and writes nothing."""

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis import discover as D
from difflens.capture.activation_diff import activation_difference, patchscope
from difflens.cli.main import app
from difflens.models.tiny import (
    PLANTED_WORDS,
    bigram_model,
    filler_words,
    planted_inputs,
    planted_shift_pair,
)
from difflens.pipelines.discover import DiscoverConfig, run_discover
from difflens.sampling.backend import amplified
from difflens.sampling.generate import GenerationConfig, generate

WORDS = filler_words()
PLANTED = list(PLANTED_WORDS)
CONFIG = DiscoverConfig(n_words=10, samples=6, max_new_tokens=20, alphas=(0.0, 2.0),
                        strengths=(1.0, 4.0), scales=(1.0, 2.0), n_boot=200)


_inputs = planted_inputs


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory: pytest.TempPathFactory) -> dict:
    texts, openings, finetune = _inputs()
    pair = planted_shift_pair(WORDS + PLANTED, PLANTED)
    out = tmp_path_factory.mktemp("discover") / "run"
    res = run_discover(pair, out, CONFIG, texts=texts, openings=openings,
                       finetune_texts=finetune, planted=PLANTED + ["cove"])
    return {"summary": res.summary(), "out": out}


@pytest.mark.parametrize("method", ["adl", "mining", "amplify"])
def test_each_method_ranks_the_planted_words_first(planted_run, method):
    top = planted_run["summary"]["discover"][method]["top_words"]
    assert set(top[:len(PLANTED)]) == set(PLANTED), top


def test_the_baseline_and_the_hypothesis_hold_the_planted_words(planted_run):
    d = planted_run["summary"]["discover"]
    assert set(d["logodds"]["top_words"][:3]) <= set(PLANTED), d["logodds"]["top_words"]
    hyp = d["hypothesis"]
    assert set(hyp["words"]) == set(PLANTED), hyp
    assert all(len(hyp["support"][w]) >= 3 for w in PLANTED)
    assert any(any(p in e["text"] for p in PLANTED) for e in hyp["examples"])
    share = d["planted"]["share"]
    assert share["hypothesis"] == 1.0 and share["adl"] == share["mining"] == 0.5, share


def test_outputs_follow_the_convention(planted_run):
    out = planted_run["out"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["discover"]["adl"]["layer"] == 1
    from safetensors.torch import load_file

    delta = load_file(out / "adl_delta.safetensors")["delta"]
    assert delta.shape == (3, 5, len(WORDS) + len(PLANTED) + 5)  # layers, positions, d_model
    for name in ("adl_layers", "adl_positions", "adl_lens", "adl_patchscope", "adl_steering",
                 "mining_up", "mining_topics", "logodds", "amplify_words"):
        assert (out / "data" / f"{name}.parquet").is_file() and \
            (out / "data" / f"{name}.csv").is_file(), name
    assert (out / "index.html").is_file()
    assert (out / "figures" / "adl_patchscope.png").is_file()
    # the mean difference at every layer before the final norm is the planted shift
    layers = json.loads((out / "summary.json").read_text())["discover"]["adl"]
    assert layers["delta_norm"] == pytest.approx(1.0, rel=1e-5)


def test_a_tuned_model_equal_to_the_base_gives_no_hypothesis(tmp_path):
    texts, openings, _ = _inputs()
    pair = planted_shift_pair(WORDS + PLANTED, PLANTED, shift=0.0)
    res = run_discover(pair, tmp_path / "run", CONFIG, texts=texts, openings=openings)
    d = res.summary()["discover"]
    for m in ("adl", "mining", "amplify", "logodds"):
        assert d[m]["top_words"] == [], (m, d[m]["top_words"])
    assert d["hypothesis"]["words"] == []
    assert d["hypothesis"]["note"].startswith("no hypothesis")


def test_mean_difference_is_the_planted_shift_per_position():
    pair = planted_shift_pair(WORDS + PLANTED, PLANTED, shift=0.5)
    texts, _, _ = _inputs(1)
    ad = activation_difference(pair.base, pair.tuned, texts, k=5, batch_size=4)
    expect = torch.zeros(pair.tuned.d_model)
    expect[-1] = 0.5
    for layer in range(pair.tuned.n_layers):  # before the final norm
        assert torch.allclose(ad.at(layer), expect.expand(5, -1), atol=1e-6)
    assert ad.bos and ad.counts.tolist() == [16] * 5


def test_patchscope_reads_a_planted_embedding_back():
    """A model that copies (its head reads each token's embedding back as that token):
    patching a token's embedding at the last position of every identity prompt gives that
    token."""
    words = ["apple", "river", "stone", "cloud", "lamp", "horse"]
    vocab = 4 + len(words)
    lm = bigram_model(words, 8.0 * torch.eye(vocab))
    emb = lm.model.model.embed_tokens.weight.detach()
    for word in ("river", "lamp"):
        t = lm.tokenizer.convert_tokens_to_ids(word)
        lp = patchscope(lm, emb[t][None], 1)
        assert lp.shape[:2] == (1, 3)
        assert (lp[0].argmax(-1) == t).all()
        tokens = lm.tokenizer.batch_decode([[i] for i in range(vocab)])
        choice = D.choose_patchscope(lp.numpy(), (1.0,), tokens, k=1)
        assert choice.chosen == 0 and choice.agreed[0][0][0] == t


def test_amplification_at_alpha_zero_is_the_tuned_model_and_grows_the_planted_words():
    pair = planted_shift_pair(WORDS + PLANTED, PLANTED)
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=3, sampler="inverse_cdf")
    prompts = ["bab cac", "dod fef gig"] * 4
    plain = generate(pair.tuned, prompts, cfg)
    zero = generate(pair.tuned, prompts, cfg, backend=amplified(pair.tuned, pair.base, 0.0))
    assert plain.token_ids == zero.token_ids
    strong = generate(pair.tuned, prompts, cfg, backend=amplified(pair.tuned, pair.base, 4.0))
    planted = set(pair.tuned.tokenizer.convert_tokens_to_ids(PLANTED))

    def share(gen) -> float:  # type: ignore[no-untyped-def]
        toks = [t for row in gen.token_ids for t in row]
        return sum(t in planted for t in toks) / len(toks)

    assert share(strong) > share(plain) + 0.2


def test_word_rules():
    assert D.as_word("Ġlighthouse") == "lighthouse" and D.as_word(" ->") is None
    assert D.words_match("boats", "boat") and D.words_match("lighth", "lighthouse")
    assert not D.words_match("lig", "lighthouse")
    assert D.planted_share(["boat", "cat", "gull", "dog"], PLANTED) == 0.5
    ranks = D.identification_rank(D.np.array([1.0, 0.0]), D.np.array([[0.0, 1.0], [1.0, 0.1]]),
                                  1)
    assert ranks == 1


runner = CliRunner()


def _error(res, pattern: str) -> None:
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and pattern in lines[0], \
        res.output


def test_bad_input_is_one_line_and_writes_nothing(tmp_path: Path, pair_folders):
    common = ["--base", str(pair_folders["base"]), "--tuned", str(pair_folders["tuned"])]
    empty = tmp_path / "empty.txt"
    empty.write_text("\n\n")
    out = tmp_path / "run"
    _error(runner.invoke(app, ["discover", *common, "--texts", str(empty), "--out", str(out)]),
           "no usable text")
    assert not out.exists()
    nothing = tmp_path / "none.jsonl"
    nothing.write_text("")
    _error(runner.invoke(app, ["discover", *common, "--texts", str(nothing), "--out",
                               str(out)]), "none.jsonl")
    _error(runner.invoke(app, ["discover", *common, "--layer", "99", "--out", str(out)]),
           "out of range")
    assert not out.exists()
    _error(runner.invoke(app, ["discover", *common, "--methods", "adl,nope", "--out",
                               str(out)]), "--methods")
    assert not out.exists()


def test_a_lineage_reads_each_model_once_for_all_its_stages(tmp_path, monkeypatch):
    """base -> sft -> rl runs three pairs (base -> rl, and each stage); each model's mean
    states, own samples and greedy openings are made once and shared by its pairs, and the
    stages' mean differences equal those of the pair run alone."""
    from difflens.models.tiny import tiny_lineage
    from difflens.pipelines import discover_steps

    calls: dict[str, list[str]] = {"means": [], "samples": []}
    real_means, real_sample = discover_steps.mean_states, discover_steps._sample

    def counted_means(lm, *a, **k):  # type: ignore[no-untyped-def]
        calls["means"].append(lm.identity.name)
        return real_means(lm, *a, **k)

    def counted_sample(p, lm, backend=None, temperature=1.0):  # type: ignore[no-untyped-def]
        if backend is None:
            calls["samples"].append(lm.identity.name)
        return real_sample(p, lm, backend, temperature)

    monkeypatch.setattr(discover_steps, "mean_states", counted_means)
    monkeypatch.setattr(discover_steps, "_sample", counted_sample)
    models = tiny_lineage()
    texts, openings, _ = planted_inputs()
    config = DiscoverConfig(samples=1, max_new_tokens=6, alphas=(0.0, 1.0), strengths=(1.0,),
                            scales=(1.0,), n_boot=50)
    res = run_discover(models, tmp_path / "run", config, texts=texts, openings=openings)
    assert sorted(calls["means"]) == sorted(calls["samples"]) == [
        "tiny-base", "tiny-rl", "tiny-sft"]
    assert set(res.summary()["stages"]) == {"base-to-sft", "sft-to-rl"}
    alone = run_discover(models.pair("sft", "rl"), tmp_path / "alone", config, texts=texts,
                         openings=openings).summary()["discover"]["adl"]
    staged = res.summary()["stages"]["sft-to-rl"]["adl"]
    assert staged["delta_norm"] == pytest.approx(alone["delta_norm"], rel=1e-6)
    assert staged["top_words"] == alone["top_words"]
