"""The one generation path: greedy = argmax of a full recompute, the multinomial sampler is
Hugging Face's draw, rollbacks regenerate exactly, and nothing global is touched."""

import pytest
import torch

from difflens.errors import InputError
from difflens.models.batching import pad_batch
from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_model
from difflens.sampling.generate import GenerationConfig, Step, cut_at_eos, generate

PROMPTS = list(EXAMPLE_PROMPTS[:5])


@pytest.fixture(scope="module")
def lm():
    return tiny_model(3)


def test_greedy_is_the_argmax_of_a_full_recompute(lm):
    gen = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=12, temperature=0.0,
                                                 batch_size=2))
    assert any(len(t) == 12 for t in gen.token_ids)
    for prompt, toks in zip(gen.prompt_ids, gen.token_ids, strict=True):
        full = torch.tensor([prompt + toks])
        with torch.inference_mode():
            logits = lm.model(input_ids=full).logits[0]
        expect = logits[len(prompt) - 1:-1].argmax(-1).tolist() if toks else []
        assert toks == expect


def test_batch_size_does_not_change_greedy_output(lm):
    cfg = GenerationConfig(max_new_tokens=10, temperature=0.0)
    one = generate(lm, PROMPTS, GenerationConfig(**{**cfg.__dict__, "batch_size": 1}))
    all_ = generate(lm, PROMPTS, GenerationConfig(**{**cfg.__dict__, "batch_size": 5}))
    assert one.token_ids == all_.token_ids


@pytest.mark.parametrize("temperature", [1.0, 0.7])
def test_multinomial_sampler_is_hugging_faces_draw(lm, temperature):
    seqs = [lm.tokenizer(p)["input_ids"] for p in PROMPTS[:3]]
    gen = generate(lm, seqs, GenerationConfig(max_new_tokens=15, temperature=temperature,
                                              seed=11, batch_size=3, sampler="multinomial"))
    ids, mask, _ = pad_batch(seqs, "left", lm.device)
    torch.manual_seed(11)
    with torch.inference_mode():
        ref = lm.model.generate(ids, attention_mask=mask, do_sample=True,
                                temperature=temperature, top_k=0, top_p=1.0, max_new_tokens=15,
                                pad_token_id=lm.tokenizer.pad_token_id)
    eos = lm.tokenizer.eos_token_id
    expect = [cut_at_eos(row, eos) for row in ref[:, ids.shape[1]:].tolist()]
    assert gen.token_ids == expect
    assert len({tuple(t) for t in gen.token_ids}) > 1  # really sampled


def test_seeded_runs_repeat_and_leave_the_global_generator_alone(lm):
    cfg = GenerationConfig(max_new_tokens=12, seed=5, batch_size=2)
    state = torch.get_rng_state()
    a = generate(lm, PROMPTS, cfg)
    assert torch.equal(state, torch.get_rng_state())
    b = generate(lm, PROMPTS, cfg)
    c = generate(lm, PROMPTS, GenerationConfig(max_new_tokens=12, seed=6, batch_size=2))
    assert a.token_ids == b.token_ids
    assert a.token_ids != c.token_ids


def test_a_rollback_regenerates_what_it_dropped(lm):
    cfg = GenerationConfig(max_new_tokens=12, temperature=0.0, batch_size=3)
    plain = generate(lm, PROMPTS[:3], cfg, keep_logprobs=True)
    seen: list[int] = []

    def hook(step: Step) -> None:
        seen.append(step.index)
        if step.index == 5 and step.live[0] and step.fresh[0]:
            step.rollback(0, 2)

    rolled = generate(lm, PROMPTS[:3], cfg, on_step=hook, keep_logprobs=True)
    assert seen[0] == 0 and 5 in seen
    assert rolled.token_ids == plain.token_ids
    # the re-fed token and the two regenerated ones are the only extra positions
    assert rolled.n_forward_tokens == plain.n_forward_tokens + 3
    for a, b in zip(plain.logprobs, rolled.logprobs, strict=True):
        assert a is not None and b is not None
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


def test_eos_ends_a_row_and_is_reported(lm):
    eos = lm.tokenizer.eos_token_id
    plain = generate(lm, PROMPTS[:3], GenerationConfig(max_new_tokens=6, temperature=0.0))
    assert [len(t) for t in plain.token_ids] == [6, 6, 6]
    assert plain.stopped_at_eos == [False, False, False]
    # plant EOS as the argmax of the 4th forward pass (the prompts' pass is the 1st): every
    # row keeps 3 tokens and stops there, the EOS itself not kept
    calls = []

    def force_eos(_m, _a, out):
        calls.append(1)
        if len(calls) == 4:
            out = out.clone()
            out[:, -1, eos] = 1e4
        return out

    handle = lm.model.get_output_embeddings().register_forward_hook(force_eos)
    try:
        gen = generate(lm, PROMPTS[:3], GenerationConfig(max_new_tokens=6, temperature=0.0))
    finally:
        handle.remove()
    assert gen.token_ids == [t[:3] for t in plain.token_ids]
    assert gen.stopped_at_eos == [True, True, True]


def test_bad_input_is_one_line(lm):
    with pytest.raises(InputError, match="prompt 1 is empty"):
        generate(lm, ["the fox", "  "])
    with pytest.raises(InputError, match="no prompts given"):
        generate(lm, [])
    with pytest.raises(InputError, match="unknown sampler 'beam'"):
        GenerationConfig(sampler="beam")
    with pytest.raises(InputError, match="max_new_tokens must be >= 1"):
        GenerationConfig(max_new_tokens=0)


def test_the_generation_configs_eos_ids_end_rows_too(lm):
    cfg = GenerationConfig(max_new_tokens=6, temperature=0.0)
    plain = generate(lm, PROMPTS[:2], cfg)
    third = plain.token_ids[0][2]  # planted: make row 0's third token a stop token
    gc = lm.model.generation_config
    saved = gc.eos_token_id
    gc.eos_token_id = [lm.tokenizer.eos_token_id, third]
    try:
        gen = generate(lm, PROMPTS[:2], cfg)
    finally:
        gc.eos_token_id = saved
    assert gen.token_ids[0] == plain.token_ids[0][:2] and gen.stopped_at_eos[0]
    row1 = plain.token_ids[1]
    cut = row1.index(third) if third in row1 else len(row1)
    assert gen.token_ids[1] == row1[:cut]


def test_cap_probs_pushes_the_excess_down_in_proportion():
    from difflens.sampling.generate import cap_probs

    p = torch.tensor([[0.7, 0.2, 0.1, 0.0], [0.6, 0.35, 0.05, 0.0], [0.3, 0.3, 0.2, 0.2],
                      [0.1, 0.9, 0.0, 0.0]])
    q = cap_probs(p, 0.5)
    # row 0: 0.7 -> 0.5, the others x (0.5 / 0.3); row 1: 0.6 -> 0.5, 0.35 x (0.5/0.4) = 0.4375
    # fits; row 2 is already under the cap; row 3 has two tokens: both get the cap
    want = torch.tensor([[0.5, 1 / 3, 1 / 6, 0.0], [0.5, 0.4375, 0.0625, 0.0],
                         [0.3, 0.3, 0.2, 0.2], [0.5, 0.5, 0.0, 0.0]])
    assert torch.allclose(q, want, atol=1e-6)
    q2 = cap_probs(torch.tensor([[0.6, 0.35, 0.05]]), 0.4)  # two tokens capped, c = 4
    assert torch.allclose(q2, torch.tensor([[0.4, 0.4, 0.2]]), atol=1e-6)
    q3 = cap_probs(torch.tensor([[0.9, 0.1, 0.0]]), 0.3)  # cannot reach 0.3 with 2 tokens
    assert torch.allclose(q3, torch.tensor([[0.5, 0.5, 0.0]]), atol=1e-6)
    r = torch.softmax(torch.randn(5, 50, generator=torch.Generator().manual_seed(0)) * 3, -1)
    qr = cap_probs(r, 0.2)
    assert torch.allclose(qr.sum(-1), torch.ones(5), atol=1e-6)
    assert qr.max() <= 0.2 + 1e-6
    for row in range(5):  # every uncapped token grows by the same factor
        under = qr[row] < 0.2 - 1e-6
        ratio = qr[row][under] / r[row][under]
        assert torch.allclose(ratio, ratio[0].expand_as(ratio), rtol=1e-4) and ratio[0] >= 1


def test_capped_sampler_draws_from_the_capped_distribution():
    import numpy as np

    from difflens.models.tiny import bigram_model
    from difflens.sampling.generate import GenerationConfig, generate

    words = ["the", "dog", "cat"]
    # a bigram model whose next token after every word is one token with p ~ 1: uncapped,
    # every sample is the same; capped at 0.5 about half the first tokens differ
    table = torch.full((len(words) + 4, len(words) + 4), -20.0)
    table[:, 4 + words.index("dog")] = 20.0
    lm = bigram_model(words, table)
    rows = [lm.tokenizer("the")["input_ids"]] * 400
    plain = generate(lm, rows, GenerationConfig(max_new_tokens=1, sampler="multinomial",
                                                batch_size=400))
    capped = generate(lm, rows, GenerationConfig(max_new_tokens=1, sampler="multinomial",
                                                 batch_size=400, prob_cap=0.5))
    dog = 4 + words.index("dog")
    assert all(t == [dog] for t in plain.token_ids)
    share = np.mean([t[:1] == [dog] for t in capped.token_ids])
    assert 0.43 < share < 0.57  # binomial(400, 0.5): 3.5 sd
    with pytest.raises(InputError, match="prob_cap must be in"):
        GenerationConfig(prob_cap=0.0)


def _stop_on(lm, ids):
    """The generation config's stop ids set to EOS and ``ids`` (restore it after)."""
    gc = lm.model.generation_config
    saved = gc.eos_token_id
    gc.eos_token_id = [lm.tokenizer.eos_token_id, *ids]
    return gc, saved


def test_rows_that_end_leave_the_batch_and_hugging_faces_draw_is_kept(lm):
    # planted: two frequent tokens stop rows, so rows end at different steps and leave the
    # batch; Hugging Face keeps them (feeding pads), and every kept token is still its draw
    seqs = [lm.tokenizer(p)["input_ids"] for p in PROMPTS[:4]]
    cfg = GenerationConfig(max_new_tokens=15, seed=4, batch_size=4, sampler="multinomial")
    free = generate(lm, seqs, cfg).token_ids
    counts = torch.bincount(torch.tensor([t for row in free for t in row]))
    stops = counts.argsort(descending=True)[:2].tolist()
    rows_seen = []
    gc, saved = _stop_on(lm, stops)
    try:
        handle = lm.model.get_output_embeddings().register_forward_hook(
            lambda _m, args, _o: rows_seen.append(args[0].shape[0]))
        try:
            gen = generate(lm, seqs, cfg)
        finally:
            handle.remove()
        ids, mask, _ = pad_batch(seqs, "left", lm.device)
        torch.manual_seed(4)
        with torch.inference_mode():
            ref = lm.model.generate(ids, attention_mask=mask, do_sample=True, top_k=0,
                                    top_p=1.0, max_new_tokens=15,
                                    pad_token_id=lm.tokenizer.pad_token_id)
    finally:
        gc.eos_token_id = saved
    expect = []
    for row in ref[:, ids.shape[1]:].tolist():
        cut = next((i for i, t in enumerate(row) if t in {*stops, lm.tokenizer.eos_token_id}),
                   len(row))
        expect.append(row[:cut])
    assert gen.token_ids == expect
    assert len({len(t) for t in gen.token_ids}) > 1  # rows really ended apart
    assert rows_seen[0] == 4 and min(rows_seen) < 4  # and the batch shrank as they did


@pytest.mark.parametrize("sampler", ["multinomial", "inverse_cdf"])
def test_streams_packed_in_one_batch_draw_what_each_draws_alone(lm, sampler):
    # one stream per row (each continuation seeded on its own): batched, every row is the
    # row generated alone with its seed (batch size 1); rows end apart (stop tokens planted)
    seqs = [lm.tokenizer(p)["input_ids"] for p in PROMPTS[:3] for _ in range(3)]
    seeds = [100 + 7 * i for i in range(len(seqs))]
    cfg = GenerationConfig(max_new_tokens=12, batch_size=4, sampler=sampler)
    gc, saved = _stop_on(lm, [5, 9])
    try:
        batched = generate(lm, seqs, cfg, streams=[(1, s) for s in seeds])
        alone = [generate(lm, [row], GenerationConfig(max_new_tokens=12, seed=s, batch_size=1,
                                                      sampler=sampler)).token_ids[0]
                 for row, s in zip(seqs, seeds, strict=True)]
    finally:
        gc.eos_token_id = saved
    assert batched.token_ids == alone
    assert len({tuple(t) for t in alone}) > 3  # really sampled


def test_generate_many_packs_jobs_and_each_keeps_its_own_draws(lm):
    from difflens.sampling.generate import generate_many

    # one job per prompt (3 samples each, drawn together under seed + prompt index), as the
    # diversity step runs them: packed 2 jobs to a batch, each job's tokens are its own
    jobs = [([lm.tokenizer(p)["input_ids"]] * 3, GenerationConfig(
        max_new_tokens=10, seed=20 + j, batch_size=3, sampler="multinomial"))
        for j, p in enumerate(PROMPTS)]
    finished = []
    packed = generate_many(lm, jobs, batch_size=6, on_job=lambda j, _g: finished.append(j))
    apart = generate_many(lm, jobs)
    assert [g.token_ids for g in packed] == [g.token_ids for g in apart]
    assert sorted(finished) == list(range(len(jobs)))
    # each job's share (by rows) of its batches' positions, rounded per job
    assert abs(sum(g.n_forward_tokens for g in packed)
               - sum(g.n_forward_tokens for g in apart)) <= len(jobs)
    with pytest.raises(InputError, match="streams must be"):
        generate(lm, PROMPTS[:2], streams=[(1, 0)])
