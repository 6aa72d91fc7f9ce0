"""Monitored and controlled generation: a probe score at every token, read from the same
forward pass, and controllers that steer the residual stream away from the bad region.

One scoped hook at the probe's layer reads the state of every position the model computes,
scores it (``sigmoid(w . h + b)``, or the MLP probe's network) and, when a controller is on, adds
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
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._types import Vector
from difflens.control.state_probe import StateProbe, check_threshold
from difflens.control.steering import SteeringVector
from difflens.errors import InputError
from difflens.models.hooks import register_residual_hook
from difflens.models.loading import LoadedModel
from difflens.sampling.generate import GenerationConfig, Step, encode_prompts, generate

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
                 direction: Vector | SteeringVector | None = None
                 ) -> Iterator[dict[str, Any]]:
    """Score (and steer) every position at the probe's layer while active.

    Yields a dict the hook fills after each forward pass: ``scores`` and ``coef``
    ``[batch, seq]``; set ``steer`` (``[batch]`` of 0/1) to switch rollback steering per row.
    """
    probe.check(lm, allow_other_weights=True)
    dev = lm.device
    if isinstance(direction, SteeringVector):
        direction = direction[probe.layer]
    v = (probe.direction[probe.layer] if direction is None
         else torch.as_tensor(direction).float())
    if v.ndim != 1 or v.shape[0] != lm.d_model:
        raise InputError(f"a steering direction for {lm.identity.name} must have {lm.d_model} "
                         f"entries, got shape {tuple(v.shape)}")
    unit = (v / v.norm().clamp_min(1e-12) * probe.state_norm).to(dev)
    gain, kind = float(controller.gain), controller.kind
    span = max(1.0 - threshold, 1e-6)
    state: dict[str, Any] = {"scores": None, "coef": None, "steer": None}

    def fn(h: Tensor) -> Tensor:
        # a device map may run the probe's layer on another device than the inputs
        s = probe.score(h)
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
        return h - (coef[..., None] * unit.to(h.device)).to(h.dtype)

    handle = register_residual_hook(lm, probe.layer, fn)
    try:
        yield state
    finally:
        handle.remove()


def generate_monitored(
    lm: LoadedModel,
    probe: StateProbe | None,
    prompts: Sequence[str],
    *,
    controller: Controller = Controller(),
    config: GenerationConfig = GenerationConfig(),
    threshold: float | None = None,
    direction: Vector | SteeringVector | None = None,
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
        direction: steering direction towards bad, a vector or a ``SteeringVector``
            (its vector at the probe's layer; default: the probe's direction).
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
    # The monitor's chunk at row ``start`` has always drawn from seed * 1_000_003 + start;
    # kept so that stored evaluations reproduce.
    gen_config = dataclasses.replace(config, seed=config.seed * 1_000_003)
    with _maybe_hook(lm, probe, controller, tau, direction) as state:
        rec = _Recorder(lm.tokenizer, controller, tau, state, on_event)
        gen = generate(lm, seqs, gen_config, on_step=rec if state is not None else None,
                       on_chunk=rec.start_chunk, keep_logprobs=keep_logprobs)
    tok = lm.tokenizer
    traces = []
    for r, toks in enumerate(gen.token_ids):
        traces.append(Trace(prompt=prompts[r], prompt_ids=list(seqs[r]), token_ids=toks,
                            scores=rec.scores.get(r, []), coefs=rec.coefs.get(r, []),
                            prompt_score=rec.prompt_score.get(r, float("nan")),
                            prompt_coef=rec.prompt_coef.get(r, 0.0),
                            rollbacks=rec.n_rollbacks.get(r, 0),
                            text=tok.decode(toks, skip_special_tokens=True),
                            logprobs=gen.logprobs[r]))
    return MonitoredGeneration(traces=traces, controller=controller, threshold=tau,
                               seconds=gen.seconds, n_forward_tokens=gen.n_forward_tokens)


@contextmanager
def _maybe_hook(lm: LoadedModel, probe: StateProbe | None, controller: Controller, tau: float,
                direction: Tensor | SteeringVector | None
                ) -> Iterator[dict[str, Any] | None]:
    if probe is None:
        yield None
        return
    with monitor_hook(lm, probe, controller, tau, direction) as state:
        yield state


class _Recorder:
    """The monitor as a per-step hook of ``generate``: keeps
    each kept token's score and coefficient, streams events, and rolls back."""

    def __init__(self, tok: Any, ctrl: Controller, tau: float, state: dict[str, Any] | None,
                 on_event: Callable[[MonitorEvent], None] | None) -> None:
        self.tok, self.ctrl, self.tau, self.state, self.on_event = tok, ctrl, tau, state, on_event
        self.rollback = ctrl.kind == "rollback" and ctrl.active
        self.scores: dict[int, list[float]] = {}
        self.coefs: dict[int, list[float]] = {}
        self.prompt_score: dict[int, float] = {}
        self.prompt_coef: dict[int, float] = {}
        self.n_rollbacks: dict[int, int] = {}
        self.over: dict[int, int] = {}
        self.steer_left: dict[int, int] = {}

    def start_chunk(self, _row0: int, _n_rows: int) -> None:
        """A new chunk's prompts are computed unsteered."""
        if self.state is not None:
            self.state["steer"] = None

    def __call__(self, step: Step) -> None:
        assert self.state is not None
        B = len(step.tokens)
        rows = [step.row0 + b for b in range(B)]
        sc = self.state["scores"][:, -1].tolist()
        cf = self.state["coef"][:, -1].tolist()
        if step.index == 0:
            for b, r in enumerate(rows):
                self.prompt_score[r], self.prompt_coef[r] = float(sc[b]), float(cf[b])
                self.scores[r], self.coefs[r] = [], []
                self.n_rollbacks[r], self.over[r], self.steer_left[r] = 0, 0, 0
        else:
            for b, r in enumerate(rows):
                if step.live[b] and self.steer_left[r] > 0:
                    self.steer_left[r] -= 1
            for b, r in enumerate(rows):
                if step.live[b]:
                    self._token(step, b, r, float(sc[b]), float(cf[b]))
        if self.rollback:
            self.state["steer"] = torch.tensor([float(self.steer_left[r] > 0) for r in rows])

    def _token(self, step: Step, b: int, r: int, score: float, coef: float) -> None:
        tokens, scores, coefs = step.tokens[b], self.scores[r], self.coefs[r]
        if not step.fresh[b]:  # a re-fed token: same score, now steered
            if coefs:
                coefs[-1] = coef
            else:
                self.prompt_coef[r] = coef
            return
        scores.append(score)
        coefs.append(coef)
        self.over[r] = self.over[r] + 1 if score > self.tau else 0
        if self.on_event is not None:
            prompt = step.prompt_ids[b]
            prev = self.tok.decode(prompt + tokens[:-1], skip_special_tokens=True)
            full = self.tok.decode(prompt + tokens, skip_special_tokens=True)
            self.on_event(MonitorEvent("token", r, len(tokens) - 1, tokens[-1],
                                       full[len(prev):] if full.startswith(prev)
                                       else self.tok.decode([tokens[-1]]), score, coef))
        ctrl = self.ctrl
        if self.rollback and self.over[r] >= ctrl.window and \
                self.n_rollbacks[r] < ctrl.max_rollbacks:
            n = ctrl.window
            step.rollback(b, n)
            del scores[-n:], coefs[-n:]
            self.n_rollbacks[r] += 1
            self.steer_left[r] = ctrl.steer_tokens
            self.over[r] = 0
            if self.on_event is not None:
                self.on_event(MonitorEvent("rollback", r, len(tokens) - n, n_rolled_back=n))
