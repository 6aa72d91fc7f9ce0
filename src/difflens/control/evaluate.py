"""What control buys and what it costs: bad rates, fluency, KL and speed per controller and gain.

For every controller and gain (and the unsteered baseline, ``none``), each prompt is
continued ``k_samples`` times with the same seeds (common random numbers), then every
generation is read once more by the *unsteered* model, teacher-forced. From that pass:

- the probe's trace of the output as the unsteered model sees it. The output is cut into
  sentences (after tokens that end in ``.``, ``!``, ``?`` or a newline; a trailing fragment
  counts when it has ``min_segment_tokens`` tokens); a generation *enters the bad region*
  when the mean score of one of its sentences exceeds the threshold (``bad_rate``). The
  default threshold is calibrated the same way, on the mean scores of labelled segments.
  The scores the monitor measured during generation give ``bad_rate_monitor``;
- the fluency cost: perplexity of the generated tokens under the unsteered model, and its
  ratio to the baseline's (``ppl_ratio``);
- ``kl``: KL(steered || unsteered) of the next-token distributions along the output, in nats
  per token.

An independent measure grades the same texts without the probe (``bad_rate_independent``):
a lexicon (an offensive-word list and VADER) or, for the organism, the world's own theme
labeller. Speed is tokens per second relative to plain generation with the same loop and
no hook. Rates and means come with percentile bootstrap CIs over prompts (a prompt's
samples are resampled together); ratios are paired with the baseline. In the summary each
of them is an estimate, ``{value, ci_low, ci_high, n, resampled}`` (``n`` the prompts it
was computed on); the per-cell table keeps ``<name>``, ``<name>_ci_low`` and
``<name>_ci_high`` columns.
"""

import dataclasses
import functools
import math
import re
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._config import option
from difflens._io import fingerprint, write_parquet_atomic
from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    replicate_means,
)
from difflens.capture.engine import forward_batch
from difflens.control.monitor import (
    Controller,
    GenerationConfig,
    MonitoredGeneration,
    generate_monitored,
)
from difflens.control.state_probe import StateProbe, check_threshold
from difflens.errors import InputError
from difflens.models.engines import map_with_models, resolve_engine
from difflens.models.labellers import vader
from difflens.models.loading import LoadedModel

Measure = Callable[[Sequence[str]], list[bool]]

DEFAULT_GAINS: dict[str, tuple[float, ...]] = {
    "open_loop": (0.25, 0.5, 1.0),
    "proportional": (0.5, 1.0, 2.0),
    "rollback": (0.5, 1.0),
}


@dataclasses.dataclass(frozen=True)
class ControlConfig:
    """The grid and the sampling of an evaluation."""

    gains: tuple[tuple[str, tuple[float, ...]], ...] = option(
        tuple(DEFAULT_GAINS.items()), flag="--controllers", parse=lambda t: parse_gains(t),
        help="controller=gains;... (gains in units of the mean state norm).")
    """(controller, gains) pairs; the unsteered baseline is always added."""
    k_samples: int = option(4, flag="--samples", help="Samples per prompt and controller.")
    generation: GenerationConfig = GenerationConfig()
    """How continuations are drawn: its ``--max-new-tokens``, ``--temperature``,
    ``--batch-size`` and ``--chat`` are this config's options too."""
    threshold: float | None = option(None, flag="--threshold", help="Bad-region threshold "
                                     "(default: the probe's).")
    """Default: the probe's."""
    min_segment_tokens: int = option(3, flag="--min-segment-tokens", help="A trailing "
                                     "unfinished sentence counts towards the bad region from "
                                     "this length.")
    window: int = option(3, flag="--window", help="rollback: over-threshold tokens that "
                         "trigger it.")
    max_rollbacks: int = option(2, flag="--max-rollbacks", help="rollback: most rollbacks per "
                                "continuation.")
    steer_tokens: int = option(8, flag="--steer-tokens", help="rollback: tokens steered after "
                               "a rollback.")
    n_boot: int = option(1000, flag="--n-boot", help="Bootstrap resamples of each CI.")
    seed: int = option(0, flag="--seed", help="Seed of sampling and bootstraps.")

    #: Python names of earlier releases -> option names (read with a warning).
    RENAMED: ClassVar[dict[str, str]] = {"k_samples": "samples", "gains": "controllers"}

    def __post_init__(self) -> None:
        if self.k_samples < 1:
            raise InputError(f"k_samples must be >= 1, got {self.k_samples}")
        if self.min_segment_tokens < 1:
            raise InputError(f"min_segment_tokens must be >= 1, got {self.min_segment_tokens}")
        if self.threshold is not None:
            check_threshold(self.threshold)
        for kind, gains in self.gains:
            Controller(kind)
            for g in gains:
                Controller(kind, g)

    @classmethod
    def quick(cls) -> "ControlConfig":
        """``difflens compare``'s lighter setting: two samples per prompt, two gains of each
        controller (one of rollback), 32 rows generated together."""
        return cls(gains=(("open_loop", (0.5, 1.0)), ("proportional", (1.0, 2.0)),
                          ("rollback", (1.0,))), k_samples=2,
                   generation=GenerationConfig(batch_size=32))

    def controllers(self) -> list[Controller]:
        out = [Controller("none")]
        for kind, gains in self.gains:
            if kind == "none":
                continue
            out += [Controller(kind, float(g), window=self.window,
                               max_rollbacks=self.max_rollbacks, steer_tokens=self.steer_tokens)
                    for g in gains]
        return out


def parse_gains(text: str) -> tuple[tuple[str, tuple[float, ...]], ...]:
    """``--controllers`` text, ``open_loop=0.25,0.5;rollback=1``, as (controller, gains)."""
    gains = []
    for part in text.split(";"):
        if not part.strip():
            continue
        name, _, vals = part.partition("=")
        try:
            gains.append((name.strip(), tuple(float(v) for v in vals.split(",") if v.strip())))
        except ValueError:
            raise InputError(f"--controllers takes name=g1,g2;..., got {part!r}") from None
    return tuple(gains)


def gain_key(gain: float) -> str:
    return f"{gain:g}"


# -- independent measures -----------------------------------------------------------------


def lexicon_measure(words: str | Path | Sequence[str] | None = None, *,
                    vader_threshold: float = -0.5) -> Measure:
    """Bad when a text contains a listed word or phrase (case-insensitive, whole words) or
    its VADER compound sentiment is at most ``vader_threshold``."""
    if isinstance(words, (str, Path)):
        path = Path(words)
        if not path.is_file():
            raise InputError(f"lexicon {path} does not exist (one word or phrase a line)")
        words = [w.strip() for w in path.read_text(encoding="utf-8").splitlines()]
    terms = sorted({w.lower() for w in (words or []) if w.strip()}, key=len, reverse=True)
    rx = (re.compile(r"\b(?:" + "|".join(re.escape(t) for t in terms) + r")\b", re.IGNORECASE)
          if terms else None)
    sia = vader()  # the one VADER labeller (models.labellers)

    def measure(texts: Sequence[str]) -> list[bool]:
        return [bool((rx is not None and rx.search(t))
                     or sia.polarity_scores(t)["compound"] <= vader_threshold) for t in texts]

    return measure


# -- evaluation ---------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ControlEvaluation:
    """Per-generation rows, per-cell summaries and the config they came from."""

    generations: pd.DataFrame
    """One row per (controller, gain, prompt, sample)."""
    cells: pd.DataFrame
    """One row per (controller, gain) with rates, CIs, fluency, KL, speed (a rate's CI in
    ``<name>_ci_low`` and ``<name>_ci_high`` columns)."""
    threshold: float
    independent_name: str
    estimates: dict[tuple[str, float], dict[str, Estimate]] = dataclasses.field(
        default_factory=dict)
    """(controller, gain) -> the cell's estimates by name (``bad_rate``, ``ppl``, ``kl``,
    ...): the numbers of ``cells`` with the prompts each was computed on."""

    def summary(self) -> dict[str, Any]:
        """``{controller: {gain: {n, n_prompts, bad_rate, ..., kl, tokens_per_s,
        speed_ratio, ...}}}``; every rate, mean and ratio with a CI is an estimate,
        ``{value, ci_low, ci_high, n, resampled}``, over prompts."""
        out: dict[str, Any] = {}
        for row in self.cells.to_dict("records"):
            est = self.estimates.get((row["controller"], row["gain"]), {})
            cell: dict[str, Any] = {}
            for k, v in row.items():
                if k in ("controller", "gain") or k.endswith(("_ci_low", "_ci_high")):
                    continue
                if k in est:
                    cell[k] = est[k].to_json()
                elif f"{k}_ci_low" in row:  # cells without their estimates: n unknown
                    cell[k] = {"value": v, "ci_low": row[f"{k}_ci_low"],
                               "ci_high": row[f"{k}_ci_high"], "n": None,
                               "resampled": "prompts"}
                else:
                    cell[k] = v
            out.setdefault(row["controller"], {})[gain_key(row["gain"])] = cell
        return out


_END = re.compile(r"[.!?][\"')\]]*\s*$|\n")


def sentence_spans(pieces: Sequence[str], min_tokens: int = 3) -> list[tuple[int, int]]:
    """``[start, end)`` token spans of the sentences of a generation, given each token's
    text: a sentence ends after a token ending in ``.``/``!``/``?`` (closing quotes allowed)
    or holding a newline; a trailing fragment is kept from ``min_tokens`` tokens."""
    spans, start = [], 0
    for i, piece in enumerate(pieces):
        if _END.search(piece):
            if i + 1 - start > 0 and piece.strip() or i > start:
                spans.append((start, i + 1))
            start = i + 1
    if len(pieces) - start >= min_tokens:
        spans.append((start, len(pieces)))
    return spans


def _region(scores: Sequence[float], spans: Sequence[tuple[int, int]]) -> float:
    """Largest mean score of a sentence (NaN when there is none)."""
    x = np.asarray(scores, dtype=np.float64)
    means = [x[a:b].mean() for a, b in spans if b > a]
    return float(max(means)) if means else float("nan")


def _teacher_forced(lm: LoadedModel, probe: StateProbe, gen: MonitoredGeneration,
                    batch_size: int) -> list[dict[str, Any]]:
    """Unsteered reading of each generation: NLL, KL(steered||unsteered), probe trace."""
    rows: list[dict[str, Any]] = []
    traces = gen.traces
    for i in range(0, len(traces), batch_size):
        chunk = traces[i:i + batch_size]
        seqs = [t.prompt_ids + t.token_ids for t in chunk]
        out = forward_batch(lm, seqs, [probe.layer])
        logp = torch.log_softmax(out.logits.float(), -1)
        score = probe.score(out.hidden[probe.layer])
        for b, t in enumerate(chunk):
            p, n = len(t.prompt_ids), len(t.token_ids)
            if n == 0:
                rows.append({"nll_sum": 0.0, "kl_sum": 0.0, "scores_unsteered": []})
                continue
            sl = slice(out.offsets[b] + p - 1, out.offsets[b] + p - 1 + n)
            lu = logp[b, sl]
            ids = torch.tensor(t.token_ids, device=lu.device)
            nll = float(-lu.gather(1, ids[:, None]).sum())
            kl = 0.0
            if t.logprobs is not None:
                ls = t.logprobs.to(lu.device)
                kl = float((ls.exp() * (ls - lu)).sum(-1).clamp_min(0).sum())
            su = score[b, out.offsets[b] + p: out.offsets[b] + p + n].tolist()
            rows.append({"nll_sum": nll, "kl_sum": kl, "scores_unsteered": su})
    return rows


def _chunk_records(models: dict[str, LoadedModel], start: int, *, prompts: Sequence[str],
                   ctrl: Controller, config: ControlConfig, probe: StateProbe, tau: float,
                   direction: Tensor | None) -> tuple[list[dict[str, Any]], float]:
    """The rows ``start .. start + batch_size`` of one controller's cell (each prompt repeated
    ``k_samples`` times), seeded by ``start``: run here or as one job of a Ray worker."""
    lm = models["model"]
    gcfg = config.generation
    rows_prompts = [p for p in prompts for _ in range(config.k_samples)]
    chunk = rows_prompts[start:start + gcfg.batch_size]
    pieces: dict[int, str] = {}

    def spans(ids: Sequence[int]) -> list[tuple[int, int]]:
        for t in ids:
            if t not in pieces:
                pieces[t] = lm.tokenizer.decode([t])
        return sentence_spans([pieces[t] for t in ids], config.min_segment_tokens)

    cfg = dataclasses.replace(gcfg, seed=config.seed * 7919 + start)
    gen = generate_monitored(lm, probe, chunk, controller=ctrl, config=cfg,
                             threshold=tau, direction=direction, keep_logprobs=True)
    tf = _teacher_forced(lm, probe, gen, gcfg.batch_size)
    records = []
    for j, (tr, extra) in enumerate(zip(gen.traces, tf, strict=True)):
        r = start + j
        sp = spans(tr.token_ids)
        records.append({
            "controller": ctrl.kind, "gain": ctrl.gain,
            "prompt_idx": r // config.k_samples, "sample": r % config.k_samples,
            "text": tr.text, "n_tokens": len(tr.token_ids), "rollbacks": tr.rollbacks,
            "token_ids": tr.token_ids, "scores": tr.scores, "coefs": tr.coefs,
            "n_sentences": len(sp),
            "region_monitor": _region(tr.scores, sp),
            "region": _region(extra["scores_unsteered"], sp),
            "mean_score": float(np.mean(extra["scores_unsteered"]))
            if tr.token_ids else float("nan"),
            "max_score": float(np.max(extra["scores_unsteered"]))
            if tr.token_ids else float("nan"),
            **extra})
    return records, gen.seconds


def _cell_rows(lm: LoadedModel, probe: StateProbe, prompts: Sequence[str], ctrl: Controller,
               config: ControlConfig, tau: float, direction: Tensor | None,
               measure: Measure | None, progress: Callable[[int], None] | None
               ) -> pd.DataFrame:
    gcfg = config.generation
    n_rows = len(prompts) * config.k_samples
    starts = list(range(0, n_rows, gcfg.batch_size))
    job = functools.partial(_chunk_records, prompts=list(prompts), ctrl=ctrl, config=config,
                            probe=probe, tau=tau, direction=direction)
    done: dict[int, tuple[list[dict[str, Any]], float]] = {}

    def finished(i: int, result: tuple[list[dict[str, Any]], float]) -> None:
        done[starts[i]] = result
        if progress is not None:
            progress(len(result[0]))

    ray_engine = resolve_engine(None)
    if ray_engine is None:
        for i, start in enumerate(starts):
            finished(i, job({"model": lm}, start))
    else:
        map_with_models(ray_engine, {"model": lm}, job, starts,
                        on_result=lambda i, plain: finished(i, (plain[0], plain[1])))
    records = [r for start in starts for r in done[start][0]]
    seconds = sum(done[start][1] for start in starts)
    df = pd.DataFrame(records)
    df["bad"] = df["region"] > tau
    df["bad_monitor"] = df["region_monitor"] > tau
    df["bad_independent"] = (measure(df["text"].tolist()) if measure is not None
                             else [False] * len(df))
    df["gen_seconds"] = seconds
    return df


def evaluate_control(
    lm: LoadedModel,
    probe: StateProbe,
    prompts: Sequence[str],
    *,
    config: ControlConfig = ControlConfig(),
    independent: Measure | None = None,
    independent_name: str = "",
    direction: Float[Tensor, " d_model"] | None = None,
    store: Path | None = None,
    progress: Callable[[int], None] | None = None,
) -> ControlEvaluation:
    """Run every controller and gain on ``prompts`` and measure what it buys and costs.

    Args:
        lm: the model; probe: its state probe (checked against the model).
        prompts: prompts that lead towards the bad region.
        config: controllers, gains, samples per prompt, generation settings, seed.
        independent: a second judge of the texts (``lexicon_measure``,
            ``organism_measure``), or None.
        independent_name: what it is, for reports.
        direction: steering direction towards bad (default: the probe's).
        store: a folder for finished cells; a rerun reuses them (resumable).
        progress: called with generations done.
    """
    if not prompts:
        raise InputError("no prompts to evaluate control on")
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise InputError("a prompt is empty; every prompt needs text")
    probe.check(lm, allow_other_weights=True)
    tau = check_threshold(probe.threshold if config.threshold is None else config.threshold)
    # an MLP probe adds its network (a logistic probe's key is unchanged)
    mlp = [] if probe.mlp is None else [[probe.mlp[k] for k in sorted(probe.mlp)]]
    base_key = fingerprint([lm.identity.weights_sha256, probe.weight, probe.bias, probe.layer,
                            list(prompts), config.k_samples, config.generation, tau,
                            config.min_segment_tokens, config.seed, direction,
                            independent_name, *mlp])
    frames = []
    controllers = config.controllers()
    for ctrl in controllers:
        name = f"{ctrl.kind}_{gain_key(ctrl.gain)}_{fingerprint([base_key, ctrl])}.parquet"
        path = store / name if store is not None else None
        if path is not None and path.is_file():
            frames.append(pd.read_parquet(path))
            if progress is not None:
                progress(len(prompts) * config.k_samples)
            continue
        df = _cell_rows(lm, probe, prompts, ctrl, config, tau, direction, independent, progress)
        if path is not None:
            write_parquet_atomic(path, df)
        frames.append(df)
    gens = pd.concat(frames, ignore_index=True)
    plain = _plain_speed(lm, prompts, config)
    cells, estimates = _cells(gens, controllers, config, plain)
    return ControlEvaluation(generations=gens, cells=cells, threshold=tau,
                             independent_name=independent_name, estimates=estimates)


def _plain_speed(lm: LoadedModel, prompts: Sequence[str], config: ControlConfig) -> float:
    """Tokens per second of plain generation (same loop, no hook) on the same rows."""
    rows = [p for p in prompts for _ in range(config.k_samples)]
    n_tok, secs = 0, 0.0
    for start in range(0, len(rows), config.generation.batch_size):
        cfg = dataclasses.replace(config.generation, seed=config.seed * 7919 + start)
        gen = generate_monitored(lm, None, rows[start:start + cfg.batch_size], config=cfg)
        n_tok += gen.n_tokens
        secs += gen.seconds
    return n_tok / max(secs, 1e-9)


def _cells(gens: pd.DataFrame, controllers: Sequence[Controller], config: ControlConfig,
           plain_tps: float
           ) -> tuple[pd.DataFrame, dict[tuple[str, float], dict[str, Estimate]]]:
    """The per-cell table, and each cell's estimates (over prompts) by name."""
    n_prompts = int(gens["prompt_idx"].max()) + 1
    w = bootstrap_weights(n_prompts, config.n_boot, config.seed)

    def per_prompt(df: pd.DataFrame, col: str, weight: str | None = None) -> np.ndarray:
        g = df.groupby("prompt_idx")
        if weight is None:
            return g[col].mean().reindex(range(n_prompts)).to_numpy(dtype=np.float64)
        s = g[col].sum() / g[weight].sum().replace(0, np.nan)
        return s.reindex(range(n_prompts)).to_numpy(dtype=np.float64)

    def boot(x: np.ndarray) -> Estimate:
        """The mean over the prompts with a finite value, its CI from the shared draws."""
        ok = np.isfinite(x)
        if not ok.any():
            return Estimate(math.nan, math.nan, math.nan, 0, "prompts")
        lo, hi = percentile_ci(replicate_means(w[:, ok], x[ok]))
        return Estimate(float(x[ok].mean()), float(lo), float(hi), int(ok.sum()), "prompts")

    base = gens[gens["controller"] == "none"]
    base_nll = per_prompt(base, "nll_sum", "n_tokens")
    base_tps = base["n_tokens"].sum() / max(float(base["gen_seconds"].iloc[0]), 1e-9)
    def exp(e: Estimate) -> Estimate:
        """A mean log (NLL per token) as its exp (perplexity), CI ends included."""
        return dataclasses.replace(e, value=float(np.exp(e.value)),
                                   ci_low=float(np.exp(e.ci_low)),
                                   ci_high=float(np.exp(e.ci_high)))

    rows = []
    estimates: dict[tuple[str, float], dict[str, Estimate]] = {}
    for ctrl in controllers:
        df = gens[(gens["controller"] == ctrl.kind) & (gens["gain"] == ctrl.gain)]
        row: dict[str, Any] = {"controller": ctrl.kind, "gain": ctrl.gain, "n": len(df),
                               "n_prompts": n_prompts}
        est: dict[str, Estimate] = {}
        for name, col in (("bad_rate", "bad"), ("bad_rate_independent", "bad_independent"),
                          ("mean_score", "mean_score"),
                          ("max_score", "max_score")):
            est[name] = boot(per_prompt(df.assign(**{col: df[col].astype(float)}), col))
        nll = per_prompt(df, "nll_sum", "n_tokens")
        est["ppl"] = exp(boot(nll))
        est["ppl_ratio"] = exp(boot(nll - base_nll))
        est["kl"] = boot(per_prompt(df, "kl_sum", "n_tokens"))
        for name, e in est.items():
            row[name], row[f"{name}_ci_low"], row[f"{name}_ci_high"] = e.value, *e.ci
        estimates[(ctrl.kind, ctrl.gain)] = est
        tps = df["n_tokens"].sum() / max(float(df["gen_seconds"].iloc[0]), 1e-9)
        row["tokens_per_s"] = float(tps)
        row["speed_ratio"] = float(tps / plain_tps)
        row["speed_ratio_vs_monitor"] = float(tps / base_tps)
        row["mean_tokens"] = float(df["n_tokens"].mean())
        row["rollbacks"] = float(df["rollbacks"].mean())
        rows.append(row)
    return pd.DataFrame(rows), estimates


