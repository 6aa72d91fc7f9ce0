"""Monitored and controlled generation: a probe score at every token, read from the same
forward pass, and controllers that steer the residual stream away from the bad region.

One scoped hook at the probe's layer reads the state of every position the model computes,
scores it (``sigmoid(w . h + b)``) and, when a controller is on, adds
``-coef * state_norm * v`` to that state before the next block sees it (``v`` is the unit
vector towards bad: the probe's direction, or a concept vector). The score is measured on
the state *before* the controller acts, so the trace is what the monitor saw. Controllers:

- ``open_loop``: ``coef = gain`` at every position (constant steering);
- ``proportional``: ``coef = gain * max(0, score - threshold) / (1 - threshold)``;
- ``rollback``: when ``window`` consecutive generated tokens score over the threshold, those
  tokens are dropped (their KV entries are masked and, when every row has dropped them,
  cropped from the cache, never recomputed), the last kept token is fed again, and the next
  ``steer_tokens`` positions are steered with ``coef = gain``; at most ``max_rollbacks``
  times per generation.

Generation is batched (left padding) with a KV cache: each position is computed once. With
``gain = 0`` every controller leaves the states untouched, bit for bit. The hook is removed
on exit, also after an exception; the model's weights are never changed.
"""

import dataclasses
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens.capture.engine import _accepts, _pad
from difflens.control.probe import StateProbe, check_threshold
from difflens.control.steering import register_residual_hook
from difflens.errors import InputError
from difflens.models.loading import LoadedModel

CONTROLLERS: tuple[str, ...] = ("none", "open_loop", "proportional", "rollback")


@dataclasses.dataclass(frozen=True)
class Controller:
    """A controller and its gain (in units of the probe layer's mean state norm)."""

    kind: str = "none"
    gain: float = 0.0
    window: int = 3
    """rollback: consecutive over-threshold tokens that trigger a rollback (and are dropped)."""
    max_rollbacks: int = 2
    """rollback: per generation."""
    steer_tokens: int = 8
    """rollback: positions steered after a rollback, starting with the re-fed token."""

    def __post_init__(self) -> None:
        if self.kind not in CONTROLLERS:
            raise InputError(f"unknown controller {self.kind!r}; choose among "
                             f"{', '.join(CONTROLLERS)}")
        if not self.gain >= 0:
            raise InputError(f"a controller gain must be >= 0 (it steers away from the bad "
                             f"region), got {self.gain}")
        if self.window < 1 or self.max_rollbacks < 0 or self.steer_tokens < 1:
            raise InputError("rollback needs window >= 1, max_rollbacks >= 0, steer_tokens >= 1")

    @property
    def active(self) -> bool:
        return self.kind != "none" and self.gain > 0


@dataclasses.dataclass(frozen=True)
class GenerationConfig:
    """How continuations are drawn."""

    max_new_tokens: int = 40
    temperature: float = 1.0
    """0 = greedy; otherwise sampling by inverse CDF from a seeded stream (common random
    numbers: two controllers given the same seed draw the same uniforms)."""
    seed: int = 0
    batch_size: int = 16
    chat: bool = False
    """Wrap each prompt in the model's chat template."""

    def __post_init__(self) -> None:
        if self.max_new_tokens < 1:
            raise InputError(f"max_new_tokens must be >= 1, got {self.max_new_tokens}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, got {self.temperature}")
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class MonitorEvent:
    """What the monitor streams: a scored token, or a rollback."""

    kind: str
    """``token`` or ``rollback``."""
    row: int
    """Index of the prompt (in the list given)."""
    step: int
    """Tokens kept so far in this row (the token's index for ``token``)."""
    token_id: int = -1
    text: str = ""
    score: float = float("nan")
    coef: float = 0.0
    """Steering coefficient applied at this token's position."""
    n_rolled_back: int = 0


@dataclasses.dataclass(frozen=True)
class Trace:
    """One monitored generation."""

    prompt: str
    prompt_ids: list[int]
    token_ids: list[int]
    scores: list[float]
    """Probe score at each kept token (measured before any steering at that position)."""
    coefs: list[float]
    """Steering coefficient applied at each kept token's position."""
    prompt_score: float
    """Score at the last prompt token."""
    prompt_coef: float
    """Steering coefficient at the last prompt token (it is re-fed, steered, when a rollback
    drops every generated token)."""
    rollbacks: int
    text: str
    logprobs: Float[Tensor, "n vocab"] | None = None
    """Log-probabilities each kept token was drawn from (when asked for)."""

    def first_alert(self, threshold: float) -> int | None:
        """Index of the first token scoring over ``threshold``, or None."""
        return next((i for i, s in enumerate(self.scores) if s > threshold), None)


@dataclasses.dataclass(frozen=True)
class MonitoredGeneration:
    """Traces of a batch of prompts under one controller."""

    traces: list[Trace]
    controller: Controller
    threshold: float
    seconds: float
    """Wall time of generation (tokenisation and decoding excluded)."""
    n_forward_tokens: int
    """Positions the model computed (prompts, kept, dropped and re-fed tokens)."""

    @property
    def n_tokens(self) -> int:
        return sum(len(t.token_ids) for t in self.traces)

    @property
    def tokens_per_second(self) -> float:
        return self.n_tokens / max(self.seconds, 1e-9)

    def table(self) -> pd.DataFrame:
        """One row per kept token: ``row, step, token_id, score, coef``."""
        rows = [{"row": r, "step": i, "token_id": t, "score": s, "coef": c}
                for r, tr in enumerate(self.traces)
                for i, (t, s, c) in enumerate(zip(tr.token_ids, tr.scores, tr.coefs,
                                                  strict=True))]
        return pd.DataFrame(rows, columns=["row", "step", "token_id", "score", "coef"])


@contextmanager
def monitor_hook(lm: LoadedModel, probe: StateProbe, controller: Controller, threshold: float,
                 direction: Float[Tensor, " d_model"] | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Score (and steer) every position at the probe's layer while active.

    Yields a dict the hook fills after each forward pass: ``scores`` and ``coef``
    ``[batch, seq]``; set ``steer`` (``[batch]`` of 0/1) to switch rollback steering per row.
    """
    probe.check(lm, allow_other_weights=True)
    dev = lm.device
    w = probe.weight.to(dev, torch.float32)
    v = probe.direction if direction is None else torch.as_tensor(direction).float()
    if v.ndim != 1 or v.shape[0] != lm.d_model:
        raise InputError(f"a steering direction for {lm.identity.name} must have {lm.d_model} "
                         f"entries, got shape {tuple(v.shape)}")
    unit = (v / v.norm().clamp_min(1e-12) * probe.state_norm).to(dev)
    gain, kind = float(controller.gain), controller.kind
    span = max(1.0 - threshold, 1e-6)
    state: dict[str, Any] = {"scores": None, "coef": None, "steer": None}

    def fn(h: Tensor) -> Tensor:
        s = torch.sigmoid(h.float() @ w + probe.bias)
        state["scores"] = s
        if not controller.active:
            state["coef"] = torch.zeros_like(s)
            return h
        if kind == "open_loop":
            coef = torch.full_like(s, gain)
        elif kind == "proportional":
            coef = gain * (s - threshold).clamp_min(0.0) / span
        else:
            flag = state["steer"]
            coef = (torch.zeros_like(s) if flag is None
                    else gain * flag.to(s)[:, None].expand_as(s))
        state["coef"] = coef
        return h - (coef[..., None] * unit).to(h.dtype)

    handle = register_residual_hook(lm, probe.layer, fn)
    try:
        yield state
    finally:
        handle.remove()


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


def _sample(logits: Tensor, u: Tensor, temperature: float) -> Tensor:
    if temperature == 0:
        return logits.argmax(-1)
    cdf = torch.softmax(logits / temperature, dim=-1).cumsum(-1)
    idx = torch.searchsorted(cdf, (u.to(cdf) * cdf[:, -1])[:, None]).squeeze(1)
    return idx.clamp_max(logits.shape[-1] - 1)


def generate_monitored(
    lm: LoadedModel,
    probe: StateProbe | None,
    prompts: Sequence[str],
    *,
    controller: Controller = Controller(),
    config: GenerationConfig = GenerationConfig(),
    threshold: float | None = None,
    direction: Float[Tensor, " d_model"] | None = None,
    on_event: Callable[[MonitorEvent], None] | None = None,
    keep_logprobs: bool = False,
) -> MonitoredGeneration:
    """Generate continuations of ``prompts`` while scoring (and steering) every token.

    Args:
        lm: the model (never modified).
        probe: the state probe; ``None`` generates plainly with the same loop (no hook).
        prompts: prompt texts.
        controller: the controller and its gain (default: monitor only).
        config: tokens, temperature, seed, batch size, chat template.
        threshold: alert / control threshold in [0, 1] (default: the probe's).
        direction: steering direction towards bad (default: the probe's direction).
        on_event: called with each scored token and each rollback, as they happen.
        keep_logprobs: keep the log-distribution of every kept token (for KL).

    Example:
        >>> gen = generate_monitored(lm, probe, ["Tell me about"], on_event=print)
        >>> gen.traces[0].scores[:3]
    """
    if probe is None and controller.kind != "none":
        raise InputError("a controller needs a probe (its score and direction)")
    tau = check_threshold(probe.threshold if threshold is None and probe is not None
                          else 0.5 if threshold is None else threshold)
    if probe is not None:
        probe.check(lm, allow_other_weights=True)
    seqs = encode_prompts(lm, prompts, config.chat)
    traces: list[Trace] = []
    seconds, n_forward = 0.0, 0
    for start in range(0, len(seqs), config.batch_size):
        chunk = seqs[start:start + config.batch_size]
        gen = torch.Generator().manual_seed(config.seed * 1_000_003 + start)
        res, secs, nf = _run_batch(lm, probe, chunk, controller, config, tau, direction, gen,
                                   on_event, start, keep_logprobs)
        seconds += secs
        n_forward += nf
        tok = lm.tokenizer
        for b, (toks, scores, coefs, pscore, pcoef, nroll, lps) in enumerate(res):
            traces.append(Trace(prompt=prompts[start + b], prompt_ids=list(chunk[b]),
                                token_ids=toks, scores=scores, coefs=coefs,
                                prompt_score=pscore, prompt_coef=pcoef, rollbacks=nroll,
                                text=tok.decode(toks, skip_special_tokens=True),
                                logprobs=lps))
    return MonitoredGeneration(traces=traces, controller=controller, threshold=tau,
                               seconds=seconds, n_forward_tokens=n_forward)


@contextmanager
def _maybe_hook(lm: LoadedModel, probe: StateProbe | None, controller: Controller, tau: float,
                direction: Tensor | None) -> Iterator[dict[str, Any] | None]:
    if probe is None:
        yield None
        return
    with monitor_hook(lm, probe, controller, tau, direction) as state:
        yield state


def _run_batch(lm: LoadedModel, probe: StateProbe | None, seqs: Sequence[Sequence[int]],
               ctrl: Controller, cfg: GenerationConfig, tau: float, direction: Tensor | None,
               gen: torch.Generator, on_event: Callable[[MonitorEvent], None] | None,
               row0: int, keep_logprobs: bool
               ) -> tuple[list[tuple[list[int], list[float], list[float], float, float, int,
                                     Tensor | None]], float, int]:
    from transformers import DynamicCache

    tok, model, dev = lm.tokenizer, lm.model, lm.device
    eos = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else (eos if eos is not None else 0)
    B = len(seqs)
    ids, mask, pos = _pad(seqs, "left", dev)
    hist = ids.clone()
    with_pos = _accepts(model, "position_ids")
    tokens: list[list[int]] = [[] for _ in range(B)]
    scores: list[list[float]] = [[] for _ in range(B)]
    coefs: list[list[float]] = [[] for _ in range(B)]
    lps: list[list[Tensor]] = [[] for _ in range(B)]
    prompt_score = [float("nan")] * B
    prompt_coef = [0.0] * B
    done = [False] * B
    over, nroll, steer_left = [0] * B, [0] * B, [0] * B
    refeed: dict[int, int] = {}
    rollback = ctrl.kind == "rollback" and ctrl.active and probe is not None
    cache = DynamicCache()
    n_forward = int(mask.sum())
    t0 = time.perf_counter()
    with torch.inference_mode(), _maybe_hook(lm, probe, ctrl, tau, direction) as state:
        kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask,
                                  "past_key_values": cache, "use_cache": True}
        if with_pos:
            kwargs["position_ids"] = pos
        logits = model(**kwargs).logits[:, -1].float()
        if state is not None:
            prompt_score = [float(x) for x in state["scores"][:, -1].tolist()]
            prompt_coef = [float(x) for x in state["coef"][:, -1].tolist()]
        while True:
            u = torch.rand(B, generator=gen)
            nxt = _sample(logits, u, cfg.temperature).tolist()
            feed = [pad] * B
            live = [False] * B
            fresh = [False] * B
            step_lp = torch.log_softmax(logits, -1).cpu() if keep_logprobs else None
            for b in range(B):
                if b in refeed:
                    feed[b], live[b] = refeed.pop(b), True
                    continue
                if done[b]:
                    continue
                t = int(nxt[b])
                if len(tokens[b]) >= cfg.max_new_tokens or (eos is not None and t == eos):
                    done[b] = True
                    continue
                tokens[b].append(t)
                if step_lp is not None:
                    lps[b].append(step_lp[b])
                feed[b], live[b], fresh[b] = t, True, True
            if not any(live):
                break
            col = torch.tensor(live, dtype=mask.dtype, device=dev)[:, None]
            position = mask.sum(-1, keepdim=True)
            mask = torch.cat([mask, col], dim=1)
            feed_t = torch.tensor(feed, dtype=hist.dtype, device=dev)[:, None]
            hist = torch.cat([hist, feed_t], dim=1)
            if state is not None and rollback:
                state["steer"] = torch.tensor([float(steer_left[b] > 0) for b in range(B)])
            kwargs = {"input_ids": feed_t, "attention_mask": mask, "past_key_values": cache,
                      "use_cache": True}
            if with_pos:
                kwargs["position_ids"] = position
            logits = model(**kwargs).logits[:, -1].float()
            n_forward += sum(live)
            for b in range(B):
                if live[b] and steer_left[b] > 0:
                    steer_left[b] -= 1
            if state is None:
                continue
            sc = state["scores"][:, -1].tolist()
            cf = state["coef"][:, -1].tolist()
            for b in range(B):
                if not live[b]:
                    continue
                if not fresh[b]:  # a re-fed token: same score, now steered
                    if coefs[b]:
                        coefs[b][-1] = float(cf[b])
                    else:
                        prompt_coef[b] = float(cf[b])
                    continue
                scores[b].append(float(sc[b]))
                coefs[b].append(float(cf[b]))
                over[b] = over[b] + 1 if sc[b] > tau else 0
                if on_event is not None:
                    prev = tok.decode(list(seqs[b]) + tokens[b][:-1], skip_special_tokens=True)
                    full = tok.decode(list(seqs[b]) + tokens[b], skip_special_tokens=True)
                    on_event(MonitorEvent("token", row0 + b, len(tokens[b]) - 1, tokens[b][-1],
                                          full[len(prev):] if full.startswith(prev)
                                          else tok.decode([tokens[b][-1]]),
                                          float(sc[b]), float(cf[b])))
                if rollback and over[b] >= ctrl.window and nroll[b] < ctrl.max_rollbacks:
                    n = ctrl.window
                    del tokens[b][-n:], scores[b][-n:], coefs[b][-n:]
                    if keep_logprobs:
                        del lps[b][-n:]
                    cols = mask[b].nonzero().flatten()
                    mask[b, cols[-(n + 1):]] = 0
                    refeed[b] = int(hist[b, cols[-(n + 1)]])
                    nroll[b] += 1
                    steer_left[b] = ctrl.steer_tokens
                    over[b] = 0
                    if on_event is not None:
                        on_event(MonitorEvent("rollback", row0 + b, len(tokens[b]),
                                              n_rolled_back=n))
            if refeed:
                keep = int(mask.any(0).nonzero().max()) + 1
                if keep < mask.shape[1]:  # columns every row dropped: crop the cache
                    # a negative count removes that many positions (old and new Cache APIs)
                    cache.crop(keep - mask.shape[1])
                    mask, hist = mask[:, :keep], hist[:, :keep]
    seconds = time.perf_counter() - t0
    out = [(tokens[b], scores[b], coefs[b], prompt_score[b], prompt_coef[b], nroll[b],
            torch.stack(lps[b]) if keep_logprobs and lps[b] else None) for b in range(B)]
    return out, seconds, n_forward
