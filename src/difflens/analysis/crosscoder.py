"""BatchTopK crosscoders for model diffing (Minder et al. 2025, arXiv 2504.02922), the plain
SAE on activation differences, and the paper's readings of them: latent classes by relative
decoder norm, and Latent Scaling, which flags "tuned-only" latents the base model has too.

Stated rules (each a default a user can read here or in ``CrosscoderConfig``):

- **BatchTopK**: ``f = relu(sum_j x_j W_enc[j] + b_enc)``, ranked by ``f_i * sum_j
  |W_dec[i, j]|``; the ``k * batch`` largest of the whole batch are kept. At inference a
  latent is kept where that weighted value exceeds ``theta``, the running (exponential)
  mean over training of the smallest kept weighted value.
- **Loss**: ``sum_j |x_j - x_hat_j|^2`` averaged over tokens, plus ``aux_coef`` times the
  same error of the residual rebuilt from the ``aux_k`` largest dead latents (Gao et al.
  2024's AuxK, unnormalised as in their equation). Adam, linear warm-up, gradient norm
  clipped at 1 (as the paper's ``dictionary_learning`` trainer).
- **Classes**: ``delta = 0.5 * ((|d_base| - |d_tuned|) / max(|d_base|, |d_tuned|) + 1)``;
  tuned-only ``delta < 0.1``, base-only ``delta > 0.9``, shared ``0.4 <= delta <= 0.6``,
  else other (the paper's thresholds).
- **Survival**: a tuned-only latent survives Latent Scaling when both ``nu`` are below 0.2.

Why plain torch: sae-lens trains one SAE/transcoder per hook of one model (its crosscoder is
an unmerged PR, #475, over layers of one model); eai-sparsify trains TopK SAEs/transcoders
per hookpoint of one HF model. Neither takes paired streams with per-model decoders.
"""

import dataclasses
import json
import math
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Bool, Float, Int, Shaped
from torch import Tensor, nn

from difflens._io import write_json_atomic, write_tensors_atomic
from difflens.errors import InputError

TUNED_ONLY_BELOW = 0.1
"""``delta`` below this: tuned-only (the base decoder is under a fifth of the tuned one)."""
BASE_ONLY_ABOVE = 0.9
"""``delta`` above this: base-only."""
SHARED_RANGE = (0.4, 0.6)
"""``delta`` in this closed range: shared (the smaller norm is at least 0.8 of the other)."""
NU_SURVIVES_BELOW = 0.2
"""Both ``nu`` below this: the base carries under a fifth of the tuned model's share."""

_NORM_BATCHES = 8  # the first batches that estimate the normalisation scalars
_EVAL_BATCHES = 8  # the last training batches scored when no held-out batches are given
_MAX_GRAD_NORM = 1.0  # gradient clipping, as dictionary_learning's crosscoder trainer
_STATE = "state.json"
_FORMAT = 1
_RESULT_ONLY = ("checkpoint_every",)  # config fields that do not change the weights


@dataclasses.dataclass(frozen=True)
class CrosscoderConfig:
    """How a crosscoder (or the SAE on differences) is trained."""

    expansion: int = 8
    """Dictionary size over ``d_model`` (the paper: 32 on Gemma 2 2B; 8 for small models)."""
    k: int = 32
    """BatchTopK: mean active latents per token (the paper: 100 at d_model 2304)."""
    aux_k: int = 256
    """Dead latents per token in the AuxK loss, at most half the dictionary (Gao et al.:
    512; dictionary_learning: ``d_model // 2``)."""
    aux_coef: float = 1 / 32
    """Weight of the AuxK loss (Gao et al. 2024; the paper's trainer)."""
    dead_tokens: int = 1_000_000
    """Tokens without firing after which a latent is dead (Gao et al., the paper's trainer:
    10M in runs of 100M+ tokens; here 10% of the default ``token_budget``)."""
    lr: float = 1e-3
    """Adam's rate after warm-up (the paper: 1e-4 for 32x over 200M tokens; smaller
    dictionaries and budgets take a larger one)."""
    warmup_steps: int = 100
    """Steps of linear learning-rate warm-up; ``theta`` is tracked after them."""
    batch_size: int = 1024
    """Tokens per step; ``batch_at`` returns batches of this size."""
    token_budget: int = 10_000_000
    """Tokens trained on: ``token_budget // batch_size`` steps."""
    seed: int = 0
    """Seed of the initial weights (nothing else in training is random)."""
    normalise: bool = True
    """Scale each model's activations by one scalar to a mean squared norm of ``d_model``,
    estimated on the first 8 batches and stored (as the paper, per model)."""
    init_norm: float = 0.1
    """Initial norm of every decoder vector (small; the encoder starts as its transpose)."""
    threshold_beta: float = 0.999
    """Decay of the running mean ``theta`` (the paper's trainer: 0.999)."""
    checkpoint_every: int = 1000
    """Steps between checkpoints (and one at the end); does not change the result."""

    def __post_init__(self) -> None:
        lows = {"expansion": 1, "k": 1, "aux_k": 1, "dead_tokens": 1, "batch_size": 1,
                "token_budget": self.batch_size, "checkpoint_every": 1, "warmup_steps": 0,
                "aux_coef": 0, "lr": math.ulp(0), "init_norm": math.ulp(0)}
        for name, low in lows.items():
            v = getattr(self, name)
            if not (math.isfinite(v) and v >= low):
                want = "> 0" if low == math.ulp(0) else f">= {low}"
                raise InputError(f"crosscoder {name} must be {want}"
                                 f"{' (one batch)' * (name == 'token_budget')}, got {v}")
        if not 0 <= self.threshold_beta < 1:
            raise InputError(f"crosscoder threshold_beta must be in [0, 1), got "
                             f"{self.threshold_beta}")

    @property
    def steps(self) -> int:
        """Training steps: ``token_budget // batch_size``."""
        return self.token_budget // self.batch_size


def _stack(xs: Sequence[Tensor], n_models: int, d_model: int, what: str
           ) -> Float[Tensor, "batch model d_model"]:
    """One ``[batch, d_model]`` tensor per model -> ``[batch, model, d_model]`` float32."""
    shapes = [tuple(t.shape) for t in xs] if isinstance(xs, (tuple, list)) else None
    if (shapes is None or len(shapes) != n_models
            or any(len(s) != 2 or s != shapes[0] or s[1] != d_model for s in shapes)):
        raise InputError(f"{what} must be {n_models} tensor(s) of shape [batch, {d_model}], "
                         f"got {shapes if shapes is not None else type(xs).__name__}")
    return torch.stack([t.detach().float() for t in xs], dim=1)


def _batch_topk(scaled: Float[Tensor, "batch latent"], n_keep: int
                ) -> Bool[Tensor, "batch latent"]:
    """The ``n_keep`` largest entries of the whole batch."""
    flat = scaled.flatten()
    keep = torch.zeros_like(flat, dtype=torch.bool)
    keep[flat.topk(min(n_keep, flat.numel()), sorted=False).indices] = True
    return keep.view_as(scaled)


class Crosscoder(nn.Module):
    """A BatchTopK crosscoder over ``n_models`` streams (1: a plain SAE): ``W_enc [model,
    d_model, latent]``, ``b_enc [latent]``, ``W_dec [latent, model, d_model]``, ``b_dec
    [model, d_model]``, ``k``, ``threshold`` (``theta``; None until trained) and ``scales``
    (per model). The methods take normalised activations, which ``normalise`` makes."""

    def __init__(self, d_model: int, n_models: int, n_latents: int, k: int, *,
                 init_norm: float = 0.1, seed: int = 0) -> None:
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        dec = torch.randn(n_latents, n_models, d_model, generator=gen)
        dec = dec / dec.norm(dim=-1, keepdim=True) * init_norm
        self.W_dec = nn.Parameter(dec)
        self.W_enc = nn.Parameter(dec.permute(1, 2, 0).clone())
        self.b_enc = nn.Parameter(torch.zeros(n_latents))
        self.b_dec = nn.Parameter(torch.zeros(n_models, d_model))
        self.d_model, self.n_models, self.k = d_model, n_models, k
        self.threshold: float | None = None
        self.scales: tuple[float, ...] = (1.0,) * n_models

    def normalise(self, xs: Sequence[Tensor]) -> Float[Tensor, "batch model d_model"]:
        """Raw activations (one ``[batch, d_model]`` tensor per model) -> ``encode``'s input."""
        x = _stack(xs, self.n_models, self.d_model, "the activations")
        return x * torch.tensor(self.scales, dtype=x.dtype)[:, None]

    def decoder_norms(self) -> Float[Tensor, "latent model"]:
        """``|W_dec[i, j]|``: each latent's decoder norm in each model."""
        return self.W_dec.detach().norm(dim=-1)

    def activations(self, x: Float[Tensor, "batch model d_model"]
                    ) -> tuple[Float[Tensor, "batch latent"], Float[Tensor, "batch latent"]]:
        """``(relu(pre), relu(pre) * sum_j |W_dec[i, j]|)``: the values and the weighted
        values BatchTopK ranks (the latter without gradient)."""
        relu = torch.relu(torch.einsum("bnd,ndm->bm", x, self.W_enc) + self.b_enc)
        return relu, relu.detach() * self.decoder_norms().sum(-1)

    def encode(self, x: Float[Tensor, "batch model d_model"], *, batch_topk: bool = False
               ) -> Float[Tensor, "batch latent"]:
        """Latent activations: the batch's top ``k * batch`` weighted values with
        ``batch_topk`` (or before ``threshold`` is set), else those above ``threshold``."""
        relu, scaled = self.activations(x)
        if batch_topk or self.threshold is None:
            return relu * _batch_topk(scaled, self.k * len(x))
        return relu * (scaled > self.threshold)

    def decode(self, f: Float[Tensor, "batch latent"]) -> Float[Tensor, "batch model d_model"]:
        return torch.einsum("bm,mnd->bnd", f, self.W_dec) + self.b_dec

    def forward(self, x: Float[Tensor, "batch model d_model"]
                ) -> Float[Tensor, "batch model d_model"]:
        return self.decode(self.encode(x))


@dataclasses.dataclass(frozen=True)
class CrosscoderResult:
    """A trained crosscoder and how well it fits."""

    model: Crosscoder
    """The trained module, ``threshold`` and ``scales`` set."""
    config: CrosscoderConfig
    variance_explained: tuple[float, ...]
    """Per model, ``1 - sum|x - x_hat|^2 / sum|x - mean(x)|^2``, encoding with ``threshold``."""
    l0: float
    """Mean active latents per token."""
    dead: int
    """Latents that had not fired for ``dead_tokens`` tokens when training ended."""
    losses: tuple[float, ...]
    """The training loss of every step."""
    scored_on: str
    """Where the two scores come from: ``"held-out"`` or ``"last training batches"``."""


# -- checkpoints ----------------------------------------------------------------------------


def _save(folder: Path, model: Crosscoder, opt: torch.optim.Optimizer,
          meta: dict[str, Any]) -> None:
    """Write the tensors (weights, Adam state) to a new file, then the JSON that names it,
    whose atomic rename commits the checkpoint: a kill anywhere leaves the last one whole."""
    tensors = {f"model.{n}": p.detach() for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        for key, value in opt.state.get(p, {}).items():
            tensors[f"adam.{n}.{key}"] = torch.as_tensor(value).detach()
    name = f"state-{meta['step']:09d}.safetensors"
    write_tensors_atomic(folder / name, tensors, {"step": str(meta["step"])})
    write_json_atomic(folder / _STATE, {**meta, "tensors": name})
    for old in folder.glob("state-*.safetensors"):
        if old.name != name:
            old.unlink(missing_ok=True)


def _read_state(folder: Path) -> tuple[dict[str, Any], dict[str, Tensor]]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / _STATE).read_text())
        if meta["format"] == _FORMAT:
            return meta, load_file(str(folder / meta["tensors"]))
        problem = f"format {meta['format']}, this difflens reads {_FORMAT}"
    except (OSError, KeyError, TypeError, ValueError, SafetensorError) as exc:
        problem = f"{type(exc).__name__}: {exc}"
    raise InputError(f"cannot read the crosscoder checkpoint in {folder} ({problem}); "
                     f"delete the folder to retrain")


def _put(model: Crosscoder, meta: dict[str, Any], tensors: dict[str, Tensor]) -> Crosscoder:
    """Load a checkpoint's weights, ``threshold`` and ``scales`` into ``model``."""
    with torch.no_grad():
        for n, p in model.named_parameters():
            p.copy_(tensors[f"model.{n}"])
    model.threshold, model.scales = meta["threshold"], tuple(meta["scales"])
    return model


def load_crosscoder(folder: Path) -> Crosscoder:
    """The crosscoder of a checkpoint folder written by ``train_crosscoder`` (no pickle)."""
    meta, tensors = _read_state(folder)
    d, cfg = meta["d_model"], meta["config"]
    return _put(Crosscoder(d, meta["n_models"], cfg["expansion"] * d, cfg["k"]), meta, tensors)


def _resume(folder: Path, meta: dict[str, Any], tensors: dict[str, Tensor], model: Crosscoder,
            opt: torch.optim.Optimizer, config: CrosscoderConfig) -> None:
    """Check the checkpoint was written by this same run, then load it into place."""
    saved = {**meta["config"], "d_model": meta["d_model"], "n_models": meta["n_models"]}
    asked = {**dataclasses.asdict(config), "d_model": model.d_model, "n_models": model.n_models}
    diff = sorted(k for k in set(saved) | set(asked)
                  if k not in _RESULT_ONLY and saved.get(k) != asked.get(k))
    if diff:
        raise InputError(
            f"the checkpoint in {folder} was trained with "
            f"{', '.join(f'{k}={saved.get(k)!r}' for k in diff)}, this run asks "
            f"{', '.join(f'{k}={asked.get(k)!r}' for k in diff)}; resume with the same "
            f"config or pass another checkpoint folder")
    _put(model, meta, tensors)
    names = [n for n, _ in model.named_parameters()]
    state = {i: {key.rsplit(".", 1)[1]: t for key, t in tensors.items()
                 if key.startswith(f"adam.{n}.")} for i, n in enumerate(names)}
    opt.load_state_dict({"state": {i: s for i, s in state.items() if s},
                         "param_groups": opt.state_dict()["param_groups"]})


# -- training -------------------------------------------------------------------------------


@torch.no_grad()
def _scales(batch_at: Callable[[int], Sequence[Tensor]], n_models: int, d_model: int,
            steps: int) -> tuple[float, ...]:
    """Per model: ``sqrt(d_model / mean |x|^2)`` over the first batches (float64)."""
    sq, n = torch.zeros(n_models, dtype=torch.float64), 0
    for step in range(min(_NORM_BATCHES, steps)):
        x = _stack(batch_at(step), n_models, d_model, f"batch_at({step})").double()
        sq += (x**2).sum(dim=(0, 2))
        n += len(x)
    return tuple(float(math.sqrt(d_model * n / s)) if s > 0 else 1.0 for s in sq.tolist())


@torch.no_grad()
def _score(model: Crosscoder, batches: Iterable[Sequence[Tensor]]
           ) -> tuple[tuple[float, ...], float]:
    """``(variance explained per model, L0)``, sums in float64."""
    err = torch.zeros(model.n_models, dtype=torch.float64)
    sq, total = torch.zeros_like(err), torch.zeros(model.n_models, model.d_model).double()
    tokens, active = 0, 0
    for xs in batches:
        x = model.normalise(xs)
        f = model.encode(x)
        xd = x.double()
        err += ((xd - model.decode(f).double()) ** 2).sum(dim=(0, 2))
        sq, total = sq + (xd**2).sum(dim=(0, 2)), total + xd.sum(0)
        tokens, active = tokens + len(x), active + int((f > 0).sum())
    if tokens == 0:
        return (math.nan,) * model.n_models, math.nan
    var = sq - (total**2).sum(-1) / tokens
    return tuple(float(v) for v in (1 - err / var).tolist()), active / tokens


def train_crosscoder(batch_at: Callable[[int], Sequence[Tensor]], d_model: int, n_models: int,
                     config: CrosscoderConfig = CrosscoderConfig(), *,
                     checkpoint: Path | None = None,
                     held_out: Sequence[Sequence[Tensor]] | None = None,
                     progress: Callable[[int, str], None] | None = None) -> CrosscoderResult:
    """Train a BatchTopK crosscoder on ``n_models`` activation streams.

    Resuming is exact: a run killed anywhere and started again with the same arguments ends
    with the weights of an uninterrupted run (the only randomness is the seeded
    initialisation, and ``batch_at`` depends on the step alone).

    Args:
        batch_at: ``batch_at(step)`` -> one ``[batch_size, d_model]`` tensor per model (base
            first), the same at every call with that step.
        d_model: the activations' width.
        n_models: streams (2 for a crosscoder, 1 for an SAE).
        config: the training settings.
        checkpoint: a folder of ``state.json`` (step, config, normalisation scalars, theta,
            dead-latent counters, losses) and ``state-<step>.safetensors`` (weights, Adam
            state), written every ``checkpoint_every`` steps and at the end; resumed from.
        held_out: raw batches (like ``batch_at``'s) to score; default the last 8 trained.
        progress: called with ``(1, info)`` after each step (a progress bar's ``advance``).

    Raises:
        InputError: a batch of the wrong shape, or a checkpoint of another config.
    """
    steps, n_latents = config.steps, config.expansion * d_model
    if config.k > n_latents:
        raise InputError(f"crosscoder k={config.k} exceeds the dictionary's {n_latents} "
                         f"latents (expansion x d_model); lower k or raise expansion")
    if checkpoint is not None and checkpoint.exists() and not checkpoint.is_dir():
        raise InputError(f"checkpoint {checkpoint} is a file; pass a folder")
    model = Crosscoder(d_model, n_models, n_latents, config.k, init_norm=config.init_norm,
                       seed=config.seed)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr, betas=(0.9, 0.999))
    aux_k, counters = min(config.aux_k, n_latents // 2), torch.zeros(n_latents).long()
    losses: list[float] = []
    start = 0
    if checkpoint is not None and (checkpoint / _STATE).exists():
        meta, tensors = _read_state(checkpoint)
        _resume(checkpoint, meta, tensors, model, opt, config)
        start, losses = int(meta["step"]), [float(v) for v in meta["losses"]]
        counters = torch.tensor(meta["dead_counters"], dtype=torch.int64)
    else:
        if config.normalise:
            model.scales = _scales(batch_at, n_models, d_model, steps)
        with torch.no_grad():  # the decoder bias starts at the mean of the first batch
            model.b_dec.copy_(model.normalise(batch_at(0)).mean(0))
    for step in range(start, steps):
        x = _stack(batch_at(step), n_models, d_model, f"batch_at({step})")
        x = x * torch.tensor(model.scales)[:, None]
        if len(x) != config.batch_size:
            raise InputError(f"batch_at({step}) returned {len(x)} tokens, the config's "
                             f"batch_size is {config.batch_size}; make them agree")
        for group in opt.param_groups:
            group["lr"] = config.lr * min(1.0, (step + 1) / max(1, config.warmup_steps))
        relu, scaled = model.activations(x)
        keep = _batch_topk(scaled, config.k * len(x))
        f = relu * keep
        err = x - model.decode(f)
        loss = (err**2).sum(dim=(1, 2)).mean()
        counters += len(x)
        counters[(f > 0).any(0).detach()] = 0
        dead = counters >= config.dead_tokens
        if aux_k and config.aux_coef and bool(dead.any()):  # AuxK on the top dead latents
            pick = torch.where(dead, scaled, -torch.inf).topk(
                min(aux_k, int(dead.sum())), dim=1).indices
            aux_f = torch.zeros_like(relu).scatter(1, pick, relu.gather(1, pick))
            rebuilt = torch.einsum("bm,mnd->bnd", aux_f, model.W_dec)
            loss = loss + config.aux_coef * ((err.detach() - rebuilt) ** 2).sum((1, 2)).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), _MAX_GRAD_NORM)
        opt.step()
        kept = scaled[keep & (relu.detach() > 0)]
        if step >= config.warmup_steps and kept.numel():
            low, b = float(kept.min()), config.threshold_beta
            model.threshold = low if model.threshold is None else (
                b * model.threshold + (1 - b) * low)
        losses.append(float(loss.detach()))
        if checkpoint is not None and ((step + 1) % config.checkpoint_every == 0
                                       or step + 1 == steps):
            _save(checkpoint, model, opt, {
                "format": _FORMAT, "step": step + 1, "d_model": d_model, "n_models": n_models,
                "config": dataclasses.asdict(config), "scales": list(model.scales),
                "threshold": model.threshold, "dead_counters": counters.tolist(),
                "losses": losses})
        if progress is not None:
            progress(1, f"loss {losses[-1]:.4g}")
    scored = held_out if held_out is not None else [
        batch_at(s) for s in range(max(0, steps - _EVAL_BATCHES), steps)]
    ve, l0 = _score(model, scored)
    return CrosscoderResult(
        model=model, config=config, variance_explained=ve, l0=l0,
        dead=int((counters >= config.dead_tokens).sum()), losses=tuple(losses),
        scored_on="held-out" if held_out is not None else "last training batches")


def train_diff_sae(batch_at: Callable[[int], Sequence[Tensor]], d_model: int,
                   config: CrosscoderConfig = CrosscoderConfig(), *,
                   checkpoint: Path | None = None,
                   held_out: Sequence[Sequence[Tensor]] | None = None,
                   progress: Callable[[int, str], None] | None = None) -> CrosscoderResult:
    """The paper's baseline: a BatchTopK SAE (``train_crosscoder`` with one stream) on
    ``h_tuned - h_base``; ``batch_at(step)`` and ``held_out`` give ``(h_base, h_tuned)``."""
    def diff(xs: Sequence[Tensor], what: str) -> list[Tensor]:
        pair = _stack(xs, 2, d_model, what)
        return [pair[:, 1] - pair[:, 0]]

    def diff_at(step: int) -> list[Tensor]:
        return diff(batch_at(step), f"batch_at({step})")

    held = None if held_out is None else [diff(xs, "a held-out batch") for xs in held_out]
    return train_crosscoder(diff_at, d_model, 1, config, checkpoint=checkpoint, held_out=held,
                            progress=progress)


def _pair(n_models: int, base: int, tuned: int) -> None:
    if n_models < 2 or not (0 <= base < n_models and 0 <= tuned < n_models) or base == tuned:
        raise InputError(f"base and tuned must be two distinct streams of the crosscoder's "
                         f"{n_models}, got base={base}, tuned={tuned}")


# -- latent classes -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatentClasses:
    """Each latent's relative decoder norm and the class it gives."""

    delta: Float[np.ndarray, " latent"]
    """0 tuned-only, 1 base-only, 0.5 equal norms (NaN where both norms are 0)."""
    labels: Shaped[np.ndarray, " latent"]
    """``"tuned-only"``, ``"base-only"``, ``"shared"`` or ``"other"``."""

    def indices(self, label: str) -> Int[np.ndarray, " n"]:
        """The latents of one class, in index order."""
        if label not in ("tuned-only", "base-only", "shared", "other"):
            raise InputError(f"latent classes are tuned-only, base-only, shared and other, "
                             f"got {label!r}")
        return np.flatnonzero(self.labels == label)


def latent_classes(model: Crosscoder, *, base: int = 0, tuned: int = 1) -> LatentClasses:
    """Class every latent of a crosscoder by its relative decoder norm (the module's rule)."""
    _pair(model.n_models, base, tuned)
    norms = model.decoder_norms().double().numpy()
    b, t = norms[:, base], norms[:, tuned]
    with np.errstate(invalid="ignore", divide="ignore"):
        delta = 0.5 * ((b - t) / np.maximum(b, t) + 1)
    labels = np.full(len(delta), "other", dtype="<U10")
    labels[delta < TUNED_ONLY_BELOW] = "tuned-only"
    labels[delta > BASE_ONLY_ABOVE] = "base-only"
    labels[(delta >= SHARED_RANGE[0]) & (delta <= SHARED_RANGE[1])] = "shared"
    return LatentClasses(delta=delta, labels=labels)


# -- Latent Scaling -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class LatentScaling:
    """How much of each latent's tuned direction the base carries, relative to the tuned
    model (Latent Scaling)."""

    latents: Int[np.ndarray, " n"]
    beta_reconstruction: Float[np.ndarray, "n model"]
    """``beta^r`` per latent and model: the scale of ``f_j d_j`` that best fits the latents'
    reconstruction of that model (decoder bias left out)."""
    beta_error: Float[np.ndarray, "n model"]
    """``beta^eps``: the same for ``x - x_hat + f_j d_j^model`` (what other latents miss)."""
    nu_reconstruction: Float[np.ndarray, " n"]
    """``beta^r_base / beta^r_tuned``: high when other latents rebuild the direction in the
    base (Latent Decoupling)."""
    nu_error: Float[np.ndarray, " n"]
    """``beta^eps_base / beta^eps_tuned``: high when the base holds the direction
    unexplained (Complete Shrinkage)."""
    active_tokens: Int[np.ndarray, " n"]
    """Tokens each latent was active on (the ratios are NaN where 0)."""
    threshold: float
    survives: Bool[np.ndarray, " n"]
    """Both ratios below ``threshold``: the direction is the tuned model's alone."""


@torch.no_grad()
def latent_scaling(model: Crosscoder, batches: Iterable[Sequence[Tensor]],
                   latents: Sequence[int] | Int[np.ndarray, " n"], *, base: int = 0,
                   tuned: int = 1, threshold: float = NU_SURVIVES_BELOW) -> LatentScaling:
    """Latent Scaling (Minder et al. 2025) of ``latents``, streaming over batches.

    For latent j with tuned decoder ``d`` and activations ``f_t``, the closed-form least
    squares ``beta = d . sum_t f_t y_t / (|d|^2 sum_t f_t^2)`` is taken per model for two
    targets ``y``: the latents' reconstruction, and ``x - x_hat + f_j d_j^model``. Both hold
    latent j's own contribution in that model, so ``beta`` is ~1 in the tuned model and
    ``nu`` (base over tuned) is the share of the direction the base carries (the targets of
    the paper's ``compute_scalers.py``). Only sums are kept: memory is ``batch x latents``.

    Args:
        model: a trained crosscoder (encoding with its ``threshold``, as at inference).
        batches: raw activations, one ``[batch, d_model]`` tensor per model per batch.
        latents: the latents to scale (e.g. ``latent_classes(m).indices("tuned-only")``).
        base, tuned: the streams' positions.
        threshold: survival threshold of both ``nu`` (``NU_SURVIVES_BELOW``: 0.2; the paper
            ranks latents by ``nu`` against shared ones, ~1, and fixes no one cut).
    """
    _pair(model.n_models, base, tuned)
    m = model.W_dec.shape[0]
    idx_np = np.asarray(latents, dtype=np.int64).reshape(-1)
    if idx_np.size and (idx_np.min() < 0 or idx_np.max() >= m):
        raise InputError(f"latent indices must be in [0, {m}), got {idx_np.min()}.."
                         f"{idx_np.max()}")
    idx = torch.from_numpy(idx_np)
    dec = model.W_dec.detach()[idx].double()  # [L, model, d]
    d = dec[:, tuned]
    own = torch.einsum("lnd,ld->ln", dec, d)  # d . d_j^model
    num_r = torch.zeros(len(idx), model.n_models, dtype=torch.float64)
    num_e = torch.zeros_like(num_r)
    f2 = torch.zeros(len(idx), dtype=torch.float64)
    active = torch.zeros(len(idx), dtype=torch.int64)
    for xs in batches:
        x = model.normalise(xs)
        f = model.encode(x)
        x_hat = model.decode(f).double()
        fj = f[:, idx].double()  # [batch, L]
        along = torch.einsum("bnd,ld->bnl", x_hat - model.b_dec.detach().double(), d)
        num_r += torch.einsum("bl,bnl->ln", fj, along)
        along = torch.einsum("bnd,ld->bnl", x.double() - x_hat, d)
        num_e += torch.einsum("bl,bnl->ln", fj, along) + (fj**2).sum(0)[:, None] * own
        f2 += (fj**2).sum(0)
        active += (fj > 0).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        den = (f2 * (d**2).sum(-1)).numpy()[:, None]
        beta_r, beta_e = num_r.numpy() / den, num_e.numpy() / den
        nu_r = beta_r[:, base] / beta_r[:, tuned]
        nu_e = beta_e[:, base] / beta_e[:, tuned]
    return LatentScaling(latents=idx_np, beta_reconstruction=beta_r, beta_error=beta_e,
                         nu_reconstruction=nu_r, nu_error=nu_e, active_tokens=active.numpy(),
                         threshold=float(threshold),
                         survives=(nu_r < threshold) & (nu_e < threshold))
