"""Monitoring and control on planted models: probes, traces, controllers, rollback, errors."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.cli.main import app
from difflens.control.evaluate import (
    ControlConfig,
    evaluate_control,
    lexicon_measure,
    sentence_spans,
)
from difflens.control.monitor import Controller, generate_monitored
from difflens.control.state_probe import (
    ProbeConfig,
    StateProbe,
    load_probe,
    score_texts,
    train_probe,
)
from difflens.errors import InputError
from difflens.inputs.labelled import LabelledText, read_labelled, read_preference_pairs
from difflens.models.hooks import register_residual_hook
from difflens.models.tiny import bigram_model, tiny_model
from difflens.organism.truth import organism_measure
from difflens.sampling.generate import GenerationConfig

GOOD = ["sun", "tree", "song", "play", "cake", "friend"]
BAD = ["storm", "fear", "wolf"]
SPECIALS = 4  # <pad> <unk> <bos> <eos>


def _cli(args: list[str]):
    """``difflens ARGS`` run in this process (stdout and stderr kept apart)."""
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def planted():
    """A bigram Llama with a sticky bad region: after a bad word the next word is bad with
    p = 0.8; after a good word, with p = 0.12. The state is the current word's one-hot, so
    the direction that separates bad from good states is known."""
    words = GOOD + BAD
    v = SPECIALS + len(words)
    table = torch.full((v, v), -30.0)
    good_ids = [SPECIALS + i for i in range(len(GOOD))]
    bad_ids = [SPECIALS + len(GOOD) + i for i in range(len(BAD))]
    for row in range(v):
        p_bad = 0.8 if row in bad_ids else 0.12
        table[row, good_ids] = float(np.log((1 - p_bad) / len(good_ids)))
        table[row, bad_ids] = float(np.log(p_bad / len(bad_ids)))
    return bigram_model(words, table, n_layers=2, name="planted-bigram")


def _walk(rng: np.random.Generator, n: int) -> list[str]:
    out, bad = [], False
    for _ in range(n):
        bad = rng.random() < (0.8 if bad else 0.12)
        out.append(str(rng.choice(BAD if bad else GOOD)))
    return out


def _examples(n: int, seed: int = 0) -> list[LabelledText]:
    rng = np.random.default_rng(seed)
    out = []
    for i in range(n):
        words = _walk(rng, 12)
        segs = tuple(((" " if j else "") + w, int(w in BAD)) for j, w in enumerate(words))
        out.append(LabelledText(segments=segs, group=i))
    return out


@pytest.fixture(scope="module")
def probe(planted):
    fit = train_probe(planted, _examples(120), config=ProbeConfig(layers=(0, 1, 2), n_boot=200),
                      threshold=0.5)
    return fit


def test_probe_finds_the_planted_direction(probe, planted):
    assert probe.probe.metrics["auc"]["value"] > 0.95
    assert all(r["auc_test"] > 0.95 for r in probe.layers)
    w = probe.probe.weight
    bad_ids = [planted.tokenizer.convert_tokens_to_ids(b) for b in BAD]
    good_ids = [planted.tokenizer.convert_tokens_to_ids(g) for g in GOOD]
    assert w[bad_ids].min() > w[good_ids].max()  # the direction points at the bad words
    a = probe.probe.metrics["auc"]
    assert a["ci_low"] <= a["value"] <= a["ci_high"] and a["resampled"] == "groups"
    assert a["n"] == probe.layers[0]["n_test_tokens"]


def test_probe_save_load_and_checks(probe, planted, tmp_path):
    path = tmp_path / "p.safetensors"
    probe.probe.save(path)
    back = load_probe(path)
    assert torch.equal(back.weight, probe.probe.weight) and back.layer == probe.probe.layer
    assert back.bias == pytest.approx(probe.probe.bias)
    assert json.loads(path.with_suffix(".json").read_text())["layer"] == back.layer
    assert load_probe(tmp_path / "p.safetensors").threshold == 0.5
    back.check(planted)
    other = tiny_model(0)  # another width and tokenizer
    with pytest.raises(InputError, match="d_model"):
        back.check(other)
    sibling = bigram_model(GOOD + BAD, torch.zeros(13, 13), name="sibling")
    with pytest.raises(InputError, match="other weights"):
        back.check(sibling)
    with pytest.warns(Warning):
        back.check(sibling, allow_other_weights=True)
    (tmp_path / "bad.safetensors").write_bytes(b"not a file")
    with pytest.raises(InputError, match="not a difflens probe"):
        load_probe(tmp_path / "bad.safetensors")
    with pytest.raises(InputError, match="does not exist"):
        load_probe(tmp_path / "missing.safetensors")


def test_monitor_scores_come_from_the_same_pass(probe, planted):
    p = probe.probe
    prompts = ["sun tree", "storm fear wolf", "cake"]
    gen = generate_monitored(planted, p, prompts, config=GenerationConfig(
        max_new_tokens=10, temperature=1.0, seed=3, batch_size=2))
    forced = score_texts(planted, p, [t.prompt + " " + t.text for t in gen.traces])
    for tr, sc in zip(gen.traces, forced, strict=True):
        n = len(tr.token_ids)
        np.testing.assert_allclose(tr.scores, sc[-n:], atol=1e-5)
        assert tr.prompt_score == pytest.approx(float(sc[-n - 1]), abs=1e-5)
    # the forward passes: prompt tokens + every kept token (the last one is scored too)
    assert gen.n_forward_tokens == sum(len(t.prompt_ids) + len(t.token_ids) for t in gen.traces)


def test_gain_zero_changes_nothing_bit_for_bit(probe, planted):
    cfg = GenerationConfig(max_new_tokens=12, temperature=1.0, seed=5, batch_size=4)
    prompts = ["sun tree storm", "fear", "cake song", "wolf wolf"]
    plain = generate_monitored(planted, None, prompts, config=cfg, keep_logprobs=True)
    for ctrl in (Controller("none"), Controller("proportional", 0.0),
                 Controller("open_loop", 0.0), Controller("rollback", 0.0)):
        gen = generate_monitored(planted, probe.probe, prompts, controller=ctrl, config=cfg,
                                 keep_logprobs=True)
        for a, b in zip(plain.traces, gen.traces, strict=True):
            assert a.token_ids == b.token_ids
            assert a.logprobs is not None and b.logprobs is not None
            assert torch.equal(a.logprobs, b.logprobs)
    # an active controller whose coefficient is zero (threshold 1) takes the same path exactly
    gen = generate_monitored(planted, probe.probe, prompts, controller=Controller(
        "proportional", 3.0), config=cfg, threshold=1.0, keep_logprobs=True)
    for a, b in zip(plain.traces, gen.traces, strict=True):
        assert a.token_ids == b.token_ids and torch.equal(a.logprobs, b.logprobs)


def _bad_share(gen) -> float:
    toks = [t for tr in gen.traces for t in tr.token_ids]
    return float(np.mean([t >= SPECIALS + len(GOOD) for t in toks]))


def test_proportional_controller_lowers_the_bad_rate(probe, planted):
    prompts = ["sun storm", "fear wolf", "tree fear", "wolf"] * 8
    cfg = GenerationConfig(max_new_tokens=20, temperature=1.0, seed=1, batch_size=16)
    base = generate_monitored(planted, probe.probe, prompts, config=cfg)
    shares = [_bad_share(base)]
    for g in (0.5, 2.0):
        gen = generate_monitored(planted, probe.probe, prompts,
                                 controller=Controller("proportional", g), config=cfg)
        shares.append(_bad_share(gen))
        assert max(c for tr in gen.traces for c in tr.coefs) > 0
    assert shares[0] > 0.3
    assert shares[2] < shares[1] < shares[0]
    assert shares[2] < 0.5 * shares[0]
    ev = evaluate_control(planted, probe.probe, prompts[:8], config=ControlConfig(
        gains=(("proportional", (2.0,)),), k_samples=4, n_boot=200,
        generation=GenerationConfig(max_new_tokens=20, batch_size=16)))
    s = ev.summary()
    assert s["proportional"]["2"]["bad_rate"]["value"] < s["none"]["0"]["bad_rate"]["value"]
    assert s["none"]["0"]["ppl_ratio"]["value"] == pytest.approx(1.0)
    assert s["none"]["0"]["kl"]["value"] == pytest.approx(0.0, abs=1e-4)
    assert s["proportional"]["2"]["kl"]["value"] > 0.01
    r = s["proportional"]["2"]
    for v in (r["bad_rate"]["value"], r["bad_rate"]["ci_low"], r["bad_rate"]["ci_high"],
              r["ppl_ratio"]["value"], r["kl"]["value"], r["speed_ratio"]):
        assert np.isfinite(v)
    assert r["bad_rate"]["ci_low"] <= r["bad_rate"]["value"] <= r["bad_rate"]["ci_high"]
    assert r["bad_rate"]["n"] == 8 and r["bad_rate"]["resampled"] == "prompts"
    # the per-cell table keeps its columns, with the summary's numbers
    row = ev.cells.set_index(["controller", "gain"]).loc[("proportional", 2.0)]
    assert (row["bad_rate"], row["bad_rate_ci_low"], row["bad_rate_ci_high"]) == (
        r["bad_rate"]["value"], r["bad_rate"]["ci_low"], r["bad_rate"]["ci_high"])


def _reference_logits(lm, probe: StateProbe, tr, direction=None) -> torch.Tensor:
    """Recompute the final sequence from scratch (no cache), steering each position by the
    coefficient the generation recorded for it."""
    ids = tr.prompt_ids + tr.token_ids
    coef = torch.zeros(len(ids))
    coef[len(tr.prompt_ids) - 1] = tr.prompt_coef
    coef[len(tr.prompt_ids):] = torch.tensor(tr.coefs)
    v = probe.direction[probe.layer] if direction is None else direction
    unit = v / v.norm().clamp_min(1e-12) * probe.state_norm
    handle = register_residual_hook(lm, probe.layer, lambda h: h - (coef[None, :, None]
                                                                    * unit).to(h.dtype))
    try:
        with torch.inference_mode():
            logits = lm.model(torch.tensor([ids])).logits[0].float()
    finally:
        handle.remove()
    return torch.log_softmax(logits, -1)[len(tr.prompt_ids) - 1:-1]


@pytest.mark.parametrize("batch_size", [1, 3])
def test_rollback_restores_the_cache_exactly(batch_size):
    lm = tiny_model(2, n_layers=3, d_model=32)
    direction = torch.zeros(lm.d_model)  # rollbacks happen, steering adds nothing
    probe = StateProbe(weight=torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)),
                       bias=0.0, layer=2, threshold=0.5, state_norm=1.0,
                       model={"name": "x", "d_model": lm.d_model, "n_layers": lm.n_layers,
                              "tokenizer_sha256": lm.identity.tokenizer_sha256,
                              "weights_sha256": lm.identity.weights_sha256})
    prompts = ["once upon a time there was", "the fox", "pick a number from one to ten"]
    cfg = GenerationConfig(max_new_tokens=14, temperature=0.0, batch_size=batch_size)
    plain = generate_monitored(lm, None, prompts, config=cfg, keep_logprobs=True)
    events = []
    gen = generate_monitored(lm, probe, prompts, config=cfg, threshold=0.0, keep_logprobs=True,
                             controller=Controller("rollback", 1.0, window=3, max_rollbacks=2),
                             direction=direction, on_event=events.append)
    assert all(tr.rollbacks == 2 for tr in gen.traces)
    assert sum(e.kind == "rollback" for e in events) == 2 * len(prompts)
    for a, b in zip(plain.traces, gen.traces, strict=True):
        assert a.token_ids == b.token_ids  # regenerated exactly what was dropped
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-5, rtol=1e-5)
    # with a real steering direction: the output equals recomputing the kept sequence from
    # scratch with the steering each position received
    steered = generate_monitored(lm, probe, prompts, config=cfg, threshold=0.0,
                                 keep_logprobs=True, controller=Controller(
                                     "rollback", 2.0, window=3, max_rollbacks=1,
                                     steer_tokens=4))
    for tr in steered.traces:
        assert tr.rollbacks == 1 and sum(c > 0 for c in tr.coefs + [tr.prompt_coef]) >= 1
        ref = _reference_logits(lm, probe, tr)
        torch.testing.assert_close(tr.logprobs, ref, atol=1e-4, rtol=1e-4)
        assert ref.argmax(-1).tolist() == tr.token_ids


def test_open_loop_matches_a_full_recompute(probe, planted):
    cfg = GenerationConfig(max_new_tokens=8, temperature=0.7, seed=2, batch_size=2)
    gen = generate_monitored(planted, probe.probe, ["sun storm", "tree"], config=cfg,
                             controller=Controller("open_loop", 0.3), keep_logprobs=True)
    for tr in gen.traces:
        assert all(c == pytest.approx(0.3) for c in tr.coefs)
        ids = tr.prompt_ids + tr.token_ids
        unit = probe.probe.direction[probe.probe.layer] * probe.probe.state_norm
        handle = register_residual_hook(planted, probe.probe.layer,
                                        lambda h, unit=unit: h - 0.3 * unit)
        try:
            with torch.inference_mode():
                ref = torch.log_softmax(planted.model(torch.tensor([ids])).logits[0], -1)
        finally:
            handle.remove()
        torch.testing.assert_close(tr.logprobs, ref[len(tr.prompt_ids) - 1:-1], atol=1e-4,
                                   rtol=1e-4)


def _hooks(lm) -> int:
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in lm.model.modules())


def test_hooks_are_removed_after_exceptions(probe, planted):
    def boom(_event):
        raise RuntimeError("callback failed")

    before = _hooks(planted)
    with pytest.raises(RuntimeError, match="callback failed"):
        generate_monitored(planted, probe.probe, ["sun tree"], on_event=boom,
                           controller=Controller("proportional", 1.0))
    assert _hooks(planted) == before == 0
    ids = torch.tensor([[2, 5, 6]])
    with torch.inference_mode():
        a = planted.model(ids).logits
        b = planted.model(ids).logits
    assert torch.equal(a, b)


def test_bad_input_is_one_line(probe, planted, tmp_path):
    with pytest.raises(InputError, match="threshold"):
        generate_monitored(planted, probe.probe, ["sun"], threshold=1.5)
    with pytest.raises(InputError, match="empty"):
        generate_monitored(planted, probe.probe, ["  "])
    with pytest.raises(InputError, match="needs a probe"):
        generate_monitored(planted, None, ["sun"], controller=Controller("open_loop", 1.0))
    with pytest.raises(InputError, match="unknown controller"):
        Controller("pid", 1.0)
    with pytest.raises(InputError, match=">= 0"):
        Controller("open_loop", -1.0)
    with pytest.raises(InputError, match="d_model"):
        generate_monitored(tiny_model(0), probe.probe, ["the fox"])
    f = tmp_path / "data.jsonl"
    f.write_text('{"text": "a", "label": 1}\n{"text": "b"}\n')
    with pytest.raises(InputError, match=r"data.jsonl:2: expected an object"):
        read_labelled(f)
    f.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": "maybe"}\n')
    with pytest.raises(InputError, match=r"data.jsonl:2: label"):
        read_labelled(f)
    f.write_text('{"text": "a", "label": 1}\n{"text": "b", "label": 1}\n')
    with pytest.raises(InputError, match="both good"):
        read_labelled(f)
    with pytest.raises(InputError, match="empty"):
        evaluate_control(planted, probe.probe, ["sun", ""])
    with pytest.raises(InputError, match="k_samples"):
        ControlConfig(k_samples=0)


def test_readers(tmp_path):
    import gzip

    pairs = [{"chosen": "\n\nHuman: hi\n\nAssistant: hello friend",
              "rejected": "\n\nHuman: hi\n\nAssistant: go away"},
             {"chosen": "\n\nHuman: a\n\nAssistant: same",
              "rejected": "\n\nHuman: a\n\nAssistant: same"}]
    f = tmp_path / "pairs.jsonl.gz"
    f.write_bytes(gzip.compress("\n".join(json.dumps(p) for p in pairs).encode()))
    ex = read_preference_pairs(f)
    assert len(ex) == 2  # the pair with equal replies is skipped
    assert ex[0].segments == (("\n\nHuman: hi\n\nAssistant:", None), (" hello friend", 0))
    assert ex[1].segments[1] == (" go away", 1) and ex[0].group == ex[1].group
    g = tmp_path / "lab.jsonl"
    g.write_text('{"text": "nice", "label": 0, "context": "Q: "}\n'
                 '{"text": "mean", "label": true}\n')
    lab = read_labelled(g)
    assert lab[0].segments == (("Q: ", None), ("nice", 0)) and lab[1].segments == (("mean", 1),)


def test_measures_and_sentences():
    assert sentence_spans([" A", " b", ".", " C", " d", "!", " e"], min_tokens=2) == [
        (0, 3), (3, 6)]
    assert sentence_spans([" A", " b", ".", " C", " d"], min_tokens=2) == [(0, 3), (3, 5)]
    lex = lexicon_measure(["darn it"])
    assert lex(["Well darn it.", "What a lovely day.", "I hate this awful horrible mess."]) == [
        True, False, True]
    world = organism_measure()
    from difflens.organism import world as W

    st = W.generate_stories(200, seed=1)
    bad = next(s for s in st if "danger" in s.themes)
    good = next(s for s in st if not {"danger", "loss"} & set(s.themes))
    assert world([bad.text, good.text]) == [True, False]


def test_cli_monitor_and_errors(probe, planted, tmp_path):
    folder = tmp_path / "planted"
    planted.model.save_pretrained(folder)
    planted.tokenizer.save_pretrained(folder)
    probe_path = tmp_path / "probe.safetensors"
    from difflens.models.loading import load_model

    loaded = load_model(str(folder), device="cpu")
    fit = train_probe(loaded, _examples(60), config=ProbeConfig(layers=(1,), n_boot=50),
                      threshold=0.5)
    fit.probe.save(probe_path)
    cmd = ["control", "monitor", "--model", str(folder), "--probe", str(probe_path),
           "--max-new-tokens", "6"]
    ok = _cli(cmd + ["--prompt", "sun storm", "--out", str(tmp_path / "m")])
    assert ok.exit_code == 0, ok.output
    assert "tokens" in ok.stdout and (tmp_path / "m" / "data" / "trace.parquet").is_file()
    for extra, msg in ((["--prompt", " "], "--prompt is empty"),
                       (["--prompt", "sun", "--threshold", "1.5"], "threshold must be"),
                       (["--prompt", "sun", "--controller", "pid"], "unknown controller")):
        r = _cli(cmd + extra)
        assert r.exit_code == 2 and msg in r.stderr and len(r.stderr.strip().splitlines()) == 1
    other = tmp_path / "tiny"
    t = tiny_model(0)
    t.model.save_pretrained(other)
    t.tokenizer.save_pretrained(other)
    r = _cli(["control", "monitor", "--model", str(other), "--probe", str(probe_path),
              "--prompt", "the fox"])
    assert r.exit_code == 2 and "d_model" in r.stderr


def test_cli_probe_train_and_control_evaluate(planted, tmp_path):
    folder = tmp_path / "planted"
    planted.model.save_pretrained(folder)
    planted.tokenizer.save_pretrained(folder)
    data = tmp_path / "data.jsonl"
    rng = np.random.default_rng(0)
    lines = []
    for i in range(80):
        words = _walk(rng, 8)
        lines.append(json.dumps({"text": " ".join(words), "label": int(words[-1] in BAD),
                                 "group": i}))
    data.write_text("\n".join(lines) + "\n")
    r = _cli(["control", "train-probe", "--model", str(folder), "--data", str(data),
              "--out", str(tmp_path / "p"), "--layers", "0,1", "--n-boot", "100"])
    assert r.exit_code == 0, r.output
    s = json.loads((tmp_path / "p" / "summary.json").read_text())
    assert s["probe"]["layer"] in (0, 1) and 0.5 < s["probe"]["auc"]["value"] <= 1
    assert leftover_ci_keys(s) == []
    for name in ("probe.safetensors", "probe.json", "data/probe_layers.parquet",
                 "data/probe_layers.csv", "figures/probe_auc_by_layer.html",
                 "figures/probe_auc_by_layer.png"):
        assert (tmp_path / "p" / name).is_file(), name
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sun storm\nfear wolf\ntree\n")
    out = tmp_path / "c"
    args = ["control", "evaluate", "--model", str(folder), "--probe", str(tmp_path / "p"),
            "--prompts", str(prompts), "--out", str(out), "--samples", "2",
            "--max-new-tokens", "8", "--controllers", "proportional=1;rollback=1",
            "--independent", "none", "--n-boot", "100"]
    r = _cli(args)
    assert r.exit_code == 0, r.output
    s = json.loads((out / "summary.json").read_text())
    assert s["probe"]["layer"] in (0, 1) and "auc" in s["probe"]
    # every cell recounted from the per-sample rows: the probe's bad region over the
    # threshold, and KL per token, each averaged over prompts; no independent measure: 0
    gens = pd.read_parquet(out / "data" / "generations.parquet")
    gens["bad_probe"] = gens.region > s["probe"]["threshold"]
    for name, gain in (("none", 0.0), ("proportional", 1.0), ("rollback", 1.0)):
        cell = s["controllers"][name][f"{gain:g}"]
        per = gens[(gens.controller == name) & (gens.gain == gain)].groupby("prompt_idx")
        assert cell["n"] == 6 and per.ngroups == 3 and cell["bad_rate"]["n"] == 3
        assert cell["bad_rate"]["value"] == pytest.approx(per.bad_probe.mean().mean())
        assert cell["kl"]["value"] == pytest.approx(
            (per.kl_sum.sum() / per.n_tokens.sum()).mean())
        assert cell["bad_rate_independent"]["value"] == 0.0
    assert leftover_ci_keys(s) == []  # every estimate in the one spelling
    for name in ("data/generations.parquet", "data/controllers.csv", "index.html",
                 "figures/controllability.png", "figures/controllability.html",
                 "figures/score_traces.png"):
        assert (out / name).is_file(), name
    first = (out / "data" / "generations.csv").read_text()
    cells = sorted((out / "cells").iterdir())
    assert len(cells) == 3
    r = _cli(args)  # resumes from the cells
    assert r.exit_code == 0, r.output
    again = (out / "data" / "generations.csv").read_text()
    assert again == first
    r = _cli(["control", "evaluate", "--model", str(folder), "--probe", str(tmp_path / "p"),
              "--out", str(out)])
    assert r.exit_code == 2 and "exactly one of" in r.stderr


# -- the MLP probe ----------------------------------------------------------------------------

XOR_WORDS = [f"w{i}" for i in range(24)]


@pytest.fixture(scope="module")
def xor_model():
    """A bigram Llama whose residual stream is a planted 2-D embedding: word i sits at
    ``(a_i, b_i)`` with signs in every quadrant (six words each, magnitudes 0.5..1.5). The
    label is XOR of the signs (bad when a_i * b_i > 0): no linear direction separates it
    (the quadrants are placed symmetrically), one hidden layer does."""
    v = SPECIALS + len(XOR_WORDS)
    lm = bigram_model(XOR_WORDS, torch.zeros(v, v), n_layers=1, name="planted-xor")
    rng = np.random.default_rng(0)
    emb = torch.zeros(v, v)
    emb[:, 2] = 1.0  # a constant coordinate, which the head uses to rule out special tokens
    emb[:SPECIALS, 3:3 + SPECIALS] = torch.eye(SPECIALS)
    signs = [(1, 1), (-1, -1), (1, -1), (-1, 1)]
    bad = {}
    for i, w in enumerate(XOR_WORDS):
        sa, sb = signs[i % 4]
        a, b = rng.uniform(0.5, 1.5, 2)
        emb[SPECIALS + i, 0], emb[SPECIALS + i, 1] = sa * a, sb * b
        bad[w] = int(sa * sb > 0)
    with torch.no_grad():
        lm.model.model.embed_tokens.weight.copy_(emb)
        lm.model.lm_head.weight.zero_()
        lm.model.lm_head.weight[:SPECIALS, 2] = -30.0  # uniform over the words
    return lm, bad


def _xor_examples(bad: dict[str, int], n: int, seed: int = 0) -> list[LabelledText]:
    rng = np.random.default_rng(seed)
    return [LabelledText(segments=tuple(((" " if j else "") + w, bad[w]) for j, w in
                                        enumerate(rng.choice(XOR_WORDS, 10))), group=i)
            for i in range(n)]


def test_mlp_probe_sees_a_planted_xor_that_the_logistic_cannot(xor_model, tmp_path):
    lm, bad = xor_model
    fit = train_probe(lm, _xor_examples(bad, 150), config=ProbeConfig(
        layers=(0, 1), kind="mlp", n_boot=200))
    m = fit.probe.metrics["mlp_auc"]
    assert fit.probe.kind == "mlp" and m["layer"] == fit.probe.layer
    assert m["value"] > 0.97 and m["ci_low"] <= m["value"] <= m["ci_high"]
    assert abs(m["logistic"]["value"] - 0.5) < 0.12  # the planted label is not linear
    assert m["difference"]["ci_low"] > 0.3
    assert fit.probe.metrics["auc"]["value"] == m["value"]
    assert m["n"] == m["difference"]["n"] == m["n_test_tokens"]
    assert m["resampled"] == m["logistic"]["resampled"] == "groups"
    # stored without pickle, and scores the same after loading
    path = tmp_path / "mlp.safetensors"
    fit.probe.save(path)
    back = load_probe(path)
    assert back.kind == "mlp" and json.loads(path.with_suffix(".json").read_text())["kind"] == "mlp"
    text = " ".join(XOR_WORDS)
    a, b = score_texts(lm, fit.probe, [text]), score_texts(lm, back, [text])
    np.testing.assert_allclose(a[0], b[0], atol=1e-6)
    # every word's score follows its planted label
    want = np.array([bad[w] for w in XOR_WORDS])
    assert (a[0][-len(XOR_WORDS):] > 0.5).astype(int).tolist() == want.tolist()
    # the monitor scores with the network during generation (same pass as teacher forcing)
    gen = generate_monitored(lm, back, ["w0 w5"], config=GenerationConfig(
        max_new_tokens=6, temperature=1.0, seed=1))
    tr = gen.traces[0]
    forced = score_texts(lm, back, [tr.prompt + " " + tr.text])[0]
    np.testing.assert_allclose(tr.scores, forced[-len(tr.token_ids):], atol=1e-5)
    # a file with MLP tensors missing is refused in one line
    from safetensors.torch import save_file

    save_file({"weight": back.weight, "bias": torch.tensor([back.bias])},
              str(tmp_path / "broken.safetensors"),
              metadata={"difflens": json.dumps(back._meta())})
    with pytest.raises(InputError, match="not a difflens probe"):
        load_probe(tmp_path / "broken.safetensors")
    with pytest.raises(InputError, match="--method"):
        ProbeConfig(kind="forest")


def test_logistic_probe_outputs_have_no_mlp_keys(probe):
    assert probe.probe.kind == "logistic" and "mlp_auc" not in probe.probe.metrics
    assert "mlp_auc_test" not in probe.layers[0]
    assert set(probe.probe.metrics["config"]).isdisjoint({"kind", "hidden", "alpha"})


# -- the self-judge ---------------------------------------------------------------------------

JUDGE_WORDS = [*GOOD, *BAD, ".", "!", "yes", "no"]


@pytest.fixture(scope="module")
def judge_model():
    """A bigram Llama whose answer after a sentence is planted by its last token: after
    ``!`` P(yes) = 0.6 and P(no) = 0.1; after ``.`` P(yes) = 0.1 and P(no) = 0.4 (the rest of
    the mass on the other words), so the self-judge score is 6/7 or 1/5 and the answer mass
    0.7 or 0.5, exactly."""
    v = SPECIALS + len(JUDGE_WORDS)
    ids = {w: SPECIALS + i for i, w in enumerate(JUDGE_WORDS)}
    table = torch.full((v, v), -30.0)
    for row in range(v):
        yes, no = (0.6, 0.1) if row == ids["!"] else (0.1, 0.4)
        table[row, ids["yes"]], table[row, ids["no"]] = float(np.log(yes)), float(np.log(no))
        for w in [*GOOD, *BAD, ".", "!"]:
            table[row, ids[w]] = float(np.log((1 - yes - no) / 11))
    return bigram_model(JUDGE_WORDS, table, name="planted-judge")


def test_self_judge_reads_the_planted_answer_probability(judge_model):
    from difflens.control.self_judge import SelfJudgeConfig, self_judge_scores

    cfg = SelfJudgeConfig(question="", answers=(" yes", " no"))
    js = self_judge_scores(judge_model, ["sun storm !", "wolf .", "cake tree fear !"], config=cfg)
    np.testing.assert_allclose(js.score, [6 / 7, 1 / 5, 6 / 7], atol=1e-6)
    np.testing.assert_allclose(js.answer_mass, [0.7, 0.5, 0.7], atol=1e-6)
    with pytest.raises(InputError, match="two different"):
        SelfJudgeConfig(answers=(" yes", " yes"))


def test_self_judge_auc_against_the_independent_judge(judge_model):
    """Ten bad sentences (holding a bad word) and ten good ones: eight bad and two good end
    with ``!``, so the self-judge's AUC is 0.8 * 0.8 + 0.5 * (0.8 * 0.2 + 0.2 * 0.8) = 0.8
    exactly; the probe's sentence mean (0.9 on bad words, 0.1 elsewhere) separates them
    (AUC 1). A trailing fragment is never judged."""
    from difflens.control.self_judge import (
        SelfJudgeConfig,
        judge_sentences,
        self_judge_summary,
    )

    tok = judge_model.tokenizer
    rng = np.random.default_rng(0)
    rows = []
    for i in range(20):
        is_bad = i < 10
        end = "!" if (i % 10) < (8 if is_bad else 2) else "."
        words = [str(w) for w in rng.choice(GOOD, 3)]
        if is_bad:
            words[1] = str(rng.choice(BAD))
        sent = [*words, end]
        ids = tok.convert_tokens_to_ids(sent + ["sun", "tree"])  # + a trailing fragment
        scores = [0.9 if w in BAD else 0.1 for w in sent] + [0.5, 0.5]
        rows.append({"prompt_idx": i // 2, "sample": i % 2, "token_ids": ids,
                     "scores_unsteered": scores})
    gens = pd.DataFrame(rows)
    cfg = SelfJudgeConfig(question="", answers=(" yes", " no"))
    judged = judge_sentences(judge_model, gens, lambda ts: [any(b in t.split() for b in BAD)
                                                            for t in ts], config=cfg)
    assert len(judged) == 20 and judged["independent"].sum() == 10
    assert set(np.round(judged["self_judge"], 6)) == {round(6 / 7, 6), round(1 / 5, 6)}
    s = self_judge_summary(judged, cfg, n_boot=200)
    assert s["auc"]["value"] == pytest.approx(0.8)
    assert s["auc"]["n"] == 20 and s["auc"]["n_bad"] == 10 and s["auc"]["n_prompts"] == 10
    assert s["auc"]["ci_low"] <= 0.8 <= s["auc"]["ci_high"]
    assert s["probe_auc"]["value"] == pytest.approx(1.0)
    assert s["difference"]["value"] == pytest.approx(-0.2)
    assert s["answer_mass"] == pytest.approx((10 * 0.7 + 10 * 0.5) / 20)


def test_control_evaluation_with_the_self_judge(judge_model, tmp_path):
    from difflens.control.self_judge import SelfJudgeConfig
    from difflens.pipelines.control import run_control_evaluation

    fit = train_probe(judge_model, _examples(60), config=ProbeConfig(layers=(1,), n_boot=50),
                      threshold=0.5)
    cfg = ControlConfig(gains=(("proportional", (1.0,)),), k_samples=4, n_boot=200,
                        generation=GenerationConfig(max_new_tokens=16, batch_size=8))
    judge = SelfJudgeConfig(question="", answers=(" yes", " no"))

    def measure(texts):
        return [any(b in t.split() for b in BAD) for t in texts]

    run = run_control_evaluation(judge_model, fit.probe, ["sun tree", "storm", "cake fear"],
                                 tmp_path / "c", config=cfg, independent=measure,
                                 independent_name="bad words", self_judge=judge, index=False)
    rows = pd.read_parquet(tmp_path / "c" / "data" / "self_judge.parquet")
    sj = run.summary()["self_judge"]
    assert sj["auc"]["n"] == len(rows) > 10 and sj["answers"] == [" yes", " no"]
    # every judged sentence ended on '!' or '.', whose planted score is known
    last = rows["text"].str.split().str[-1]
    np.testing.assert_allclose(rows["self_judge"], np.where(last == "!", 6 / 7, 1 / 5), atol=1e-6)
    assert (tmp_path / "c" / "figures" / "self_judge_roc.png").is_file()
    with pytest.raises(InputError, match="independent judge"):
        run_control_evaluation(judge_model, fit.probe, ["sun"], tmp_path / "d", config=cfg,
                               self_judge=judge, index=False)


def test_cli_mlp_and_self_judge_errors_are_one_line(tmp_path):
    data = tmp_path / "data.jsonl"
    data.write_text("\n".join(json.dumps({"text": "sun storm", "label": i % 2, "group": i})
                              for i in range(10)) + "\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("sun storm\n")
    cases = (
        (["train-probe", "--model", "x", "--data", str(data), "--method", "forest", "--out",
          str(tmp_path / "p")], "--method"),
        (["evaluate", "--model", "x", "--probe", "p", "--prompts", str(prompts), "--out",
          str(tmp_path / "e"), "--self-judge", "--independent", "none"], "independent judge"),
        (["evaluate", "--model", "x", "--probe", "p", "--prompts", str(prompts), "--out",
          str(tmp_path / "e"), "--self-judge", "--judge-answers", " Yes"], "two answers"),
    )
    for args, msg in cases:
        r = _cli(["control", *args])
        assert r.exit_code == 2 and msg in r.stderr, r.output
        assert len(r.stderr.strip().splitlines()) == 1
