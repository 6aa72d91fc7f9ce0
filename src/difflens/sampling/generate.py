"""The one generation path: batched, KV-cached and seeded, with a hook after every step.

Every place in difflens that generates text calls ``generate``: sampled continuations
for trajectories, collapse and themes, greedy completions for attractors and steering, the
organism's RL samples, and the monitor and its controllers (a per-step hook,
``Step``).

Rows are generated in batches of at most ``batch_size`` (left padding, one KV cache per
batch, each position computed once); a row that ends leaves the batch, so the rows still
running are the only ones computed. Randomness comes in *streams*: consecutive rows that
draw from one generator, as one chunk run alone would. By default the chunk of
``batch_size`` rows that starts at row ``start`` is one stream seeded with ``seed + start``;
``generate(..., streams=[(rows, seed), ...])`` names them instead, e.g. one stream per row
(``[(1, s0), (1, s1), ...]``) for continuations each seeded on their own, or ``(k, s)`` per
prompt for ``k`` samples drawn together. Streams are packed whole into batches, and a row's
tokens depend on its stream only (up to float rounding of the batched forward), never on
which other streams share its batch. Nothing touches torch's global generator. Two
samplers:

- ``multinomial``: ``torch.multinomial(softmax(logits / T))``, the draw Hugging Face's
  ``generate(do_sample=True, top_k=0, top_p=1)`` makes, so a chunk seeded with ``s`` gives
  the tokens ``torch.manual_seed(s); model.generate(...)`` gives;
- ``inverse_cdf``: one uniform per row and step, looked up in the CDF. Two runs with the
  same seed share their uniforms (common random numbers), which is what comparing
  controllers needs.

``prob_cap`` (the de-collapse sampler) caps every token's probability at ``prob_cap`` after
the temperature and gives the excess to the other tokens in proportion to their
probability (``cap_probs``), so no continuation can take more than ``prob_cap`` of a
step. ``temperature=0`` is greedy (argmax) under either sampler. A row ends on the tokenizer's EOS
or any EOS id of the model's ``generation_config``. The logits processors a
``generation_config`` may name (repetition penalty, top-k) are not applied: difflens draws
from the model's own distribution, the one its analyses measure.
"""

import dataclasses
import itertools
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from jaxtyping import Float
from torch import Tensor

from difflens._config import option
from difflens.errors import InputError
from difflens.models.batching import pad_batch
from difflens.models.engines import RayEngine, map_with_models, resolve_engine
from difflens.models.loading import LoadedModel
from difflens.sampling.backend import Backend, backend_for

SAMPLERS = ("inverse_cdf", "multinomial")


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How continuations are drawn."""

    max_new_tokens: int = option(40, flag="--max-new-tokens", help="Tokens per generation.")
    temperature: float = option(1.0, flag="--temperature", help="Sampling temperature (0 = "
                                "greedy).")
    """0 = greedy; otherwise sampling from ``softmax(logits / temperature)``."""
    seed: int = 0
    """Without explicit ``streams``, the chunk of ``batch_size`` rows starting at row
    ``start`` draws from a generator seeded with ``seed + start``."""
    batch_size: int = option(16, flag="--batch-size", help="Rows generated together (one KV "
                             "cache each).")
    """Most rows in one forward batch (one KV cache each); without explicit ``streams`` also
    the rows of one random stream."""
    chat: bool = option(False, flag="--chat", help="Wrap prompts in the chat template.")
    """Wrap each prompt text in the model's chat template."""
    sampler: str = "inverse_cdf"
    """``inverse_cdf`` (common random numbers) or ``multinomial`` (Hugging Face's draw)."""
    prob_cap: float | None = None
    """The de-collapse sampler: no token gets more than this probability (see
    ``cap_probs``); None draws from the model's distribution."""

    def __post_init__(self) -> None:
        if self.prob_cap is not None and not 0 < self.prob_cap <= 1:
            raise InputError(f"prob_cap must be in (0, 1], got {self.prob_cap}")
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if self.sampler not in SAMPLERS:
            raise InputError(f"unknown sampler {self.sampler!r}; choose {' or '.join(SAMPLERS)}")


@dataclasses.dataclass(frozen=True)
class Generation:
    """Continuations of a list of prompts."""

    prompt_ids: list[list[int]]
    token_ids: list[list[int]]
    """Kept tokens of each row (the EOS that ended a row is not included)."""
    stopped_at_eos: list[bool]
    """Whether each row ended on a stop token (``stop_ids``), else on
    ``max_new_tokens``."""
    logprobs: list[Tensor | None]
    """Per row, when asked for: ``[n_kept, vocab]`` log-distributions each kept token was
    drawn from (rows differ in length, so the shape is not checked across the list)."""
    seconds: float
    """Wall time of the forward passes and sampling (tokenisation excluded)."""
    n_forward_tokens: int
    """Positions the model computed (prompts, kept, dropped and re-fed tokens)."""
    entropies: list[list[float]] | None = None
    """Per row, when asked for: the entropy (nats) of the model's own next-token
    distribution (T = 1, no cap) at each kept token."""

    def texts(self, tokenizer: object) -> list[str]:
        """Each row's continuation as text (special tokens skipped)."""
        return [tokenizer.decode(t, skip_special_tokens=True)  # type: ignore[attr-defined]
                for t in self.token_ids]


@dataclasses.dataclass
class Step:
    """What the per-step hook sees after each forward pass of a chunk.

    ``index`` 0 is the pass over the prompts; in later passes ``live[b]`` says that row
    ``b`` computed a new position and ``fresh[b]`` that it is a newly kept token (not a
    token fed again after a rollback). The hook may call ``rollback``.
    """

    index: int
    row0: int
    """Index, in the prompts given, of the chunk's first row."""
    prompt_ids: list[list[int]]
    tokens: list[list[int]]
    live: list[bool]
    fresh: list[bool]
    _drop: dict[int, int] = dataclasses.field(default_factory=dict)

    def rollback(self, row: int, n: int) -> None:
        """Drop the last ``n`` kept tokens of ``row``; its last kept token before them
        (the last prompt token when none is left) is fed again on the next pass. The dropped
        positions are masked and, once every row has dropped them, cropped from the cache;
        they are never recomputed."""
        if not 1 <= n <= len(self.tokens[row]):
            raise ValueError(f"cannot roll back {n} of {len(self.tokens[row])} tokens")
        self._drop[row] = n


StepHook = Callable[[Step], None]


def encode_prompts(lm: LoadedModel, prompts: Sequence[str], chat: bool) -> list[list[int]]:
    """Token ids of each prompt (in the chat template when ``chat``); empty ones are errors."""
    tok = lm.tokenizer
    out = []
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt {i} is empty; every prompt needs text")
        if chat:
            if not getattr(tok, "chat_template", None):
                raise InputError(f"{lm.identity.name} has no chat template; drop --chat")
            text = tok.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                           add_generation_prompt=True)
            out.append(tok(text, add_special_tokens=False)["input_ids"])
        else:
            out.append(tok(p)["input_ids"])
    return out


def stop_ids(lm: LoadedModel) -> set[int]:
    """Tokens that end a row: the tokenizer's EOS and the model's ``generation_config``
    EOS ids (a list for chat models whose turns end on their own token)."""
    out = set()
    if lm.tokenizer.eos_token_id is not None:
        out.add(int(lm.tokenizer.eos_token_id))
    extra = getattr(getattr(lm.model, "generation_config", None), "eos_token_id", None)
    for t in extra if isinstance(extra, list | tuple) else [extra]:
        if t is not None:
            out.add(int(t))
    return out


def cut_at_eos(ids: list[int], eos: int | None) -> list[int]:
    """``ids`` up to (not including) the first ``eos``."""
    return ids[: ids.index(eos)] if eos is not None and eos in ids else ids


Stream = tuple[int, int]
"""``(rows, seed)``: that many consecutive rows draw from one generator seeded with ``seed``."""


def default_streams(n_rows: int, config: GenerationConfig) -> list[Stream]:
    """The chunks of ``batch_size`` rows, the chunk starting at row ``start`` seeded with
    ``seed + start``: the streams of ``generate`` when none are given."""
    bs = config.batch_size
    return [(min(bs, n_rows - start), config.seed + start) for start in range(0, n_rows, bs)]


def pack_streams(streams: Sequence[Stream], batch_size: int) -> list[list[Stream]]:
    """Consecutive streams packed whole into batches of at most ``batch_size`` rows (a
    stream of more rows is a batch of its own)."""
    batches: list[list[Stream]] = []
    rows = 0
    for stream in streams:
        if not batches or rows + stream[0] > batch_size:
            batches.append([])
            rows = 0
        batches[-1].append(stream)
        rows += stream[0]
    return batches


def generate(
    lm: LoadedModel,
    prompts: Sequence[str] | Sequence[Sequence[int]],
    config: GenerationConfig = GenerationConfig(),
    *,
    streams: Sequence[Stream] | None = None,
    on_step: StepHook | None = None,
    on_chunk: Callable[[int, int], None] | None = None,
    keep_logprobs: bool = False,
    keep_entropy: bool = False,
    backend: Callable[[], Backend] | None = None,
) -> Generation:
    """Continue every prompt (see the module docstring for batching and seeding).

    Args:
        lm: the model (never modified; hooks installed around this call act on it).
        prompts: texts (encoded with ``encode_prompts``) or token-id lists.
        config: tokens, temperature, seed, batch size, chat template, sampler.
        streams: ``(rows, seed)`` groups of consecutive rows, covering every row, each
            drawing from its own generator as one chunk of those rows would alone
            (``config.seed`` is then unused); default ``default_streams``.
        on_step: called after every forward pass with a ``Step`` (rows then stay in their
            batch until it ends, so the hook's batch index is the row's).
        on_chunk: called with ``(first row, rows)`` before each batch's first pass.
        keep_logprobs: keep the log-distribution of every kept token.
        keep_entropy: keep the entropy of the model's distribution at every kept token.
        backend: makes the engine of each batch (default ``backend_for(lm)``), e.g.
            ``sampling.backend.amplified(tuned, base, alpha)`` to sample from amplified
            logit differences.

    Example:
        >>> gen = generate(lm, ["Once upon a time"], GenerationConfig(temperature=0.0))
        >>> gen.texts(lm.tokenizer)
    """
    if len(prompts) == 0:
        raise InputError("no prompts given")
    seqs = (encode_prompts(lm, prompts, config.chat)  # type: ignore[arg-type]
            if isinstance(prompts[0], str) else [list(map(int, p)) for p in prompts])
    if any(len(s) == 0 for s in seqs):
        raise InputError("a prompt has no tokens; every prompt needs at least one")
    streams = default_streams(len(seqs), config) if streams is None else list(streams)
    if any(n < 1 for n, _ in streams) or sum(n for n, _ in streams) != len(seqs):
        raise InputError(f"streams must be (rows >= 1, seed) groups covering the "
                         f"{len(seqs)} rows; they cover {sum(n for n, _ in streams)}")
    tokens: list[list[int]] = []
    eos_stops: list[bool] = []
    lps: list[Tensor | None] = []
    ents: list[list[float]] = []
    seconds, n_forward = 0.0, 0
    # multinomial draws on the model's device, as Hugging Face's generate does (so a GPU
    # run matches it too); inverse_cdf's uniforms always come from the CPU
    device = lm.device if config.sampler == "multinomial" else torch.device("cpu")
    start = 0
    for batch in pack_streams(streams, config.batch_size):
        n_rows = sum(n for n, _ in batch)
        chunk = seqs[start:start + n_rows]
        gens = [(n, torch.Generator(device=device).manual_seed(seed)) for n, seed in batch]
        if on_chunk is not None:
            on_chunk(start, n_rows)
        engine = backend_for(lm) if backend is None else backend()
        out = _run_chunk(lm, engine, chunk, config, gens, on_step, start, keep_logprobs,
                         keep_entropy)
        tokens += out[0]
        eos_stops += out[1]
        lps += out[2]
        seconds += out[3]
        n_forward += out[4]
        ents += out[5]
        start += n_rows
    return Generation(prompt_ids=seqs, token_ids=tokens, stopped_at_eos=eos_stops,
                      logprobs=lps, seconds=seconds, n_forward_tokens=n_forward,
                      entropies=ents if keep_entropy else None)


GenerationJob = tuple[Sequence[Sequence[int]], GenerationConfig]
"""Token-id rows and the config (its own seed) of one independent ``generate`` call."""


def generate_many(
    lm: LoadedModel,
    jobs: Sequence[GenerationJob],
    *,
    engine: "str | RayEngine | None" = None,
    on_job: Callable[[int, Generation], None] | None = None,
    batch_size: int | None = None,
) -> list[Generation]:
    """Run independent ``generate`` calls (e.g. one per prompt, each with its own seed).

    Each job is exactly ``generate(lm, rows, config)``, so the result of a job depends on
    its rows and config only: on the Ray engine the jobs run on workers that each load the
    model once, and the results equal the local ones whatever the number of workers.

    Args:
        lm: the model.
        jobs: ``(rows, config)`` pairs; rows are token-id lists.
        engine: ``"local"``, ``"ray"`` or a ``RayEngine``;
            default: the engine set by ``use_engine``, else
            local.
        on_job: called with ``(job index, its Generation)`` as each job finishes (in
            completion order on Ray).
        batch_size: run locally, pack the jobs' rows into forward batches of this many
            rows (each job keeps its own streams, so its tokens are those it gets alone);
            default: each job on its own, in batches of its config's ``batch_size``. Jobs
            whose configs differ in more than the seed and batch size run on their own.
    """
    plain_jobs = [([list(map(int, r)) for r in rows], cfg) for rows, cfg in jobs]
    ray_engine = resolve_engine(engine)
    if ray_engine is None:
        return _many_local(lm, plain_jobs, batch_size, on_job)

    def rebuilt(plain: dict[str, Any]) -> Generation:
        return Generation(**plain, logprobs=[None] * len(plain["token_ids"]))

    out = [rebuilt(g) for g in map_with_models(
        ray_engine, {"model": lm}, _generation_job, plain_jobs,
        on_result=None if on_job is None else lambda j, g: on_job(j, rebuilt(g)))]
    return out


def _many_local(lm: LoadedModel, jobs: Sequence[tuple[list[list[int]], GenerationConfig]],
                batch_size: int | None, on_job: Callable[[int, Generation], None] | None
                ) -> list[Generation]:
    """The jobs of ``generate_many`` in this process: packed into shared batches of
    ``batch_size`` rows when their configs agree, else one ``generate`` each."""
    plain = {dataclasses.replace(cfg, seed=0, batch_size=1) for _, cfg in jobs}
    if batch_size is None or len(plain) > 1 or any(not rows for rows, _ in jobs):
        out = []
        for j, (rows, cfg) in enumerate(jobs):
            out.append(generate(lm, rows, cfg))
            if on_job is not None:
                on_job(j, out[-1])
        return out
    cfg = dataclasses.replace(jobs[0][1], batch_size=batch_size)
    rows = [r for job_rows, _ in jobs for r in job_rows]
    owner = [j for j, (job_rows, _) in enumerate(jobs) for _ in job_rows]
    ends = list(itertools.accumulate(len(job_rows) for job_rows, _ in jobs))
    streams = [s for job_rows, c in jobs for s in default_streams(len(job_rows), c)]
    per_row: list[tuple[list[int], bool, Tensor | None]] = []
    cost = [[0.0, 0.0] for _ in jobs]  # each job's share (by rows) of its batches' time, work
    out_by_job: dict[int, Generation] = {}
    start = 0
    for batch in pack_streams(streams, batch_size):
        n = sum(k for k, _ in batch)
        gen = generate(lm, rows[start:start + n], cfg, streams=batch)
        per_row += zip(gen.token_ids, gen.stopped_at_eos, gen.logprobs, strict=True)
        for j in owner[start:start + n]:
            cost[j][0] += gen.seconds / n
            cost[j][1] += gen.n_forward_tokens / n
        start += n
        for j in sorted({owner[i] for i in range(start - n, start)}):
            if ends[j] <= start:
                lo = ends[j] - len(jobs[j][0])
                out_by_job[j] = Generation(
                    prompt_ids=jobs[j][0], token_ids=[r[0] for r in per_row[lo:ends[j]]],
                    stopped_at_eos=[r[1] for r in per_row[lo:ends[j]]],
                    logprobs=[r[2] for r in per_row[lo:ends[j]]], seconds=cost[j][0],
                    n_forward_tokens=round(cost[j][1]))
                if on_job is not None:
                    on_job(j, out_by_job[j])
    return [out_by_job[j] for j in range(len(jobs))]


def _generation_job(models: dict[str, LoadedModel], job: GenerationJob) -> dict[str, Any]:
    """One job of ``generate_many`` on a Ray worker, as plain data (no log-probs: the
    jobs do not keep them)."""
    rows, cfg = job
    gen = generate(models["model"], rows, cfg)
    return {f.name: getattr(gen, f.name) for f in dataclasses.fields(gen)
            if f.name != "logprobs"}


def cap_probs(probs: Float[Tensor, "batch vocab"], cap: float) -> Float[Tensor, "batch vocab"]:
    """Cap each row's probabilities at ``cap`` and push the excess down: ``q = min(cap,
    c * p)``, with ``c >= 1`` chosen per row so that ``q`` sums to 1. The capped tokens get
    ``cap`` each and every other token grows by the same factor ``c``, so their order and
    ratios are kept. Rows with fewer than ``1 / cap`` tokens of non-zero probability cannot
    be capped that far: their non-zero tokens become uniform."""
    p = probs.double()
    ps, order = p.sort(dim=-1, descending=True)
    k = torch.arange(p.shape[-1], dtype=p.dtype, device=p.device)
    tail = ps.flip(-1).cumsum(-1).flip(-1)  # sum of ps[k:]
    c = (1 - k * cap) / tail.clamp_min(1e-300)
    fits = (c * ps <= cap * (1 + 1e-12)) & (1 - k * cap > 0)
    first = torch.where(fits.any(-1), fits.int().argmax(-1), torch.full_like(fits[:, 0], -1,
                                                                              dtype=torch.long))
    q_sorted = torch.minimum(torch.full_like(ps, cap), c.gather(-1, first.clamp_min(0)[:, None])
                             * ps)
    nonzero = (ps > 0).double()
    q_sorted = torch.where((first < 0)[:, None], nonzero / nonzero.sum(-1, keepdim=True),
                           q_sorted)
    q = torch.empty_like(q_sorted).scatter_(-1, order, q_sorted)
    return (q / q.sum(-1, keepdim=True)).to(probs.dtype)


def _probs(logits: Tensor, config: GenerationConfig) -> Tensor:
    probs = torch.softmax(logits / config.temperature, dim=-1)
    return probs if config.prob_cap is None else cap_probs(probs, config.prob_cap)


def _draw_streams(logits: Tensor, config: GenerationConfig,
                  gens: Sequence[tuple[int, torch.Generator]]) -> list[int]:
    """Each stream's rows drawn together from its generator, as that chunk alone draws."""
    if len(gens) == 1:
        return _draw(logits, config, gens[0][1])
    out: list[int] = []
    start = 0
    for n, gen in gens:
        out += _draw(logits[start:start + n], config, gen)
        start += n
    return out


def _draw(logits: Tensor, config: GenerationConfig, gen: torch.Generator) -> list[int]:
    if config.sampler == "inverse_cdf":
        u = torch.rand(logits.shape[0], generator=gen)
        if config.temperature == 0:
            return logits.argmax(-1).tolist()
        cdf = _probs(logits, config).cumsum(-1)
        idx = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1])[:, None]).squeeze(1)
        return idx.clamp_max(logits.shape[-1] - 1).tolist()
    if config.temperature == 0:
        return logits.argmax(-1).tolist()
    return torch.multinomial(_probs(logits, config), 1, generator=gen).squeeze(1).tolist()


def _run_chunk(lm: LoadedModel, engine: Backend, seqs: Sequence[Sequence[int]],
               cfg: GenerationConfig, gens: Sequence[tuple[int, torch.Generator]],
               on_step: StepHook | None, row0: int, keep_logprobs: bool,
               keep_entropy: bool = False
               ) -> tuple[list[list[int]], list[bool], list[Tensor | None], float, int,
                          list[list[float]]]:
    """One batch: its rows drawn by stream (``gens``: rows and generator of each). Without
    a step hook, a row that ends leaves the batch (its cache rows are dropped); each stream
    still draws for all its rows at every step (an ended row's draw is discarded), so its
    random stream does not depend on when the others end."""
    tok, dev = lm.tokenizer, lm.device
    eos = tok.eos_token_id
    stops = stop_ids(lm)
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    B = len(seqs)
    ids, mask, pos = pad_batch(seqs, "left", dev)
    hist = ids.clone()
    tokens: list[list[int]] = [[] for _ in range(B)]
    lps: list[list[Tensor]] = [[] for _ in range(B)]
    ents: list[list[float]] = [[] for _ in range(B)]
    done, at_eos = [False] * B, [False] * B
    refeed: dict[int, int] = {}
    step = Step(index=0, row0=row0, prompt_ids=[list(s) for s in seqs], tokens=tokens,
                live=[True] * B, fresh=[False] * B)
    in_batch = list(range(B))  # the rows still in the forward batch, in order
    n_forward = int(mask.sum())
    t0 = time.perf_counter()
    with torch.inference_mode():
        logits = engine.prefill(ids, mask, pos)
        if on_step is not None:
            on_step(step)
        while True:
            if len(in_batch) < B:  # ended rows left the batch: their draws read zeros
                full = logits.new_zeros((B, logits.shape[-1]))
                full[in_batch] = logits
                logits = full
            nxt = _draw_streams(logits, cfg, gens)
            feed = [pad] * B
            live, fresh = [False] * B, [False] * B
            step_lp = torch.log_softmax(logits, -1).cpu() if keep_logprobs else None
            step_h = None
            if keep_entropy:
                lp = torch.log_softmax(logits.float(), -1)
                step_h = (-(lp.exp() * lp).nansum(-1)).tolist()
            for b in range(B):
                if b in refeed:
                    feed[b], live[b] = refeed.pop(b), True
                    continue
                if done[b]:
                    continue
                t = int(nxt[b])
                if len(tokens[b]) >= cfg.max_new_tokens or t in stops:
                    done[b] = True
                    at_eos[b] = t in stops and len(tokens[b]) < cfg.max_new_tokens
                    continue
                tokens[b].append(t)
                if step_lp is not None:
                    lps[b].append(step_lp[b])
                if step_h is not None:
                    ents[b].append(float(step_h[b]))
                feed[b], live[b], fresh[b] = t, True, True
            if not any(live):
                break
            if on_step is None and not all(live[b] for b in in_batch):
                keep = torch.tensor([i for i, b in enumerate(in_batch) if live[b]], device=dev)
                engine.select_rows(keep)
                mask, hist = mask[keep], hist[keep]
                in_batch = [b for b in in_batch if live[b]]
            col = torch.tensor([live[b] for b in in_batch], dtype=mask.dtype, device=dev)[:, None]
            position = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, col], dim=1)
            feed_t = torch.tensor([feed[b] for b in in_batch], dtype=hist.dtype,
                                  device=dev)[:, None]
            hist = torch.cat([hist, feed_t], dim=1)
            logits = engine.step(feed_t, mask, position)
            n_forward += sum(live)
            if on_step is None:
                continue
            step.index, step.live, step.fresh = step.index + 1, live, fresh
            on_step(step)
            for b, n in step._drop.items():
                del tokens[b][-n:]
                if keep_logprobs:
                    del lps[b][-n:]
                if keep_entropy:
                    del ents[b][-n:]
                cols = mask[b].nonzero().flatten()
                mask[b, cols[-(n + 1):]] = 0
                refeed[b] = int(hist[b, cols[-(n + 1)]])
            step._drop.clear()
            if refeed:
                keep_cols = int(mask.any(0).nonzero().max()) + 1
                if keep_cols < mask.shape[1]:  # columns every row dropped: crop the cache
                    engine.crop(mask.shape[1] - keep_cols)
                    mask, hist = mask[:, :keep_cols], hist[:, :keep_cols]
    seconds = time.perf_counter() - t0
    kept_lps: list[Tensor | None] = [torch.stack(x) if keep_logprobs and x else None
                                     for x in lps]
    return tokens, at_eos, kept_lps, seconds, n_forward, ents
