"""Random-number, dice and coin probes, scored exactly from logits, and temperature sweeps.

A probe is a question with a closed answer set ("a random number between 0 and 100"),
asked in several phrasings. Each phrasing is one line of a JSONL file::

    {"probe": "d6", "phrasing": "python", "prompt": ">>> random.randint(1, 6)\\n",
     "answers": {"range": [1, 6]}, "template": "{}", "chat": false, "boundary": true}

``answers`` is a list of strings, ``{"range": [lo, hi]}``, or ``{"forms": {answer: [surface
forms]}}`` when one answer can be written several ways ("heads", "Heads": their
probabilities add up); ``template`` writes an answer
after the prompt (default ``" {}"``, or ``"{}"`` in a chat turn); ``chat: true`` makes the
prompt a user turn, wrapped in the model's chat template when it has one and in a plain
``Question: ...\\nAnswer:`` frame otherwise; ``boundary`` (default true) requires the answer
to end there (" 1" does not also count " 10"). Multi-token answers are scored by chaining
their tokens' probabilities (``continuation_logprobs``), then
renormalised over the answer set; the mass outside it is reported. The built-in probes are
in ``difflens/data/probes.jsonl``; a user file works the same way.
"""

import dataclasses
import math
from collections.abc import Callable, Sequence
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import jsonl_objects
from difflens.analysis.bootstrap import (
    Estimate,
    bootstrap_weights,
    percentile_ci,
    replicate_means,
    resamples,
)
from difflens.capture.scoring import OutcomeDistribution, continuation_logprobs
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of

#: Above this outside mass a probe counts as not answered: the distribution given an answer
#: then rests on less than 5% of the model's probability.
OUTSIDE_MASS_LIMIT = 0.95

#: Temperatures of the default sweep (log-spaced, with 1.0 exactly).
DEFAULT_TEMPERATURES: tuple[float, ...] = tuple(
    sorted({round(float(t), 4) for t in np.geomspace(0.25, 4.0, 33)} | {1.0}))


@dataclasses.dataclass(frozen=True)
class Probe:
    """One phrasing of a probe."""

    name: str
    phrasing: str
    prompt: str
    answers: tuple[str, ...]
    template: str | None = None
    forms: tuple[tuple[str, ...], ...] = ()
    """Surface forms of each answer (default: the answer itself)."""
    """How an answer is written after the prompt (None: ``" {}"``, or ``"{}"`` in chat)."""
    chat: bool = False
    boundary: bool = True
    source: str = ""
    """Where it was read from (``file:line``)."""


def builtin_probes_path() -> Path:
    """The probe file that ships with difflens."""
    return Path(str(resources.files("difflens") / "data" / "probes.jsonl"))


def _forms(value: Any, where: str) -> tuple[tuple[str, ...], tuple[tuple[str, ...], ...]]:
    """(answers, surface forms of each) from a probe line's ``answers`` field."""
    if isinstance(value, dict) and set(value) == {"forms"}:
        forms = value["forms"]
        if (not isinstance(forms, dict) or len(forms) < 2 or not all(
                isinstance(f, list) and f and all(isinstance(x, str) and x for x in f)
                for f in forms.values())):
            raise InputError(f"{where}: answers.forms must map at least 2 answers to "
                             f"non-empty lists of surface forms, got {forms!r}")
        return tuple(forms), tuple(tuple(f) for f in forms.values())
    answers = _answers(value, where)
    return answers, tuple((a,) for a in answers)


def _answers(value: Any, where: str) -> tuple[str, ...]:
    if isinstance(value, dict) and set(value) == {"range"}:
        r = value["range"]
        if (not isinstance(r, list) or len(r) != 2 or not all(isinstance(x, int) for x in r)
                or r[0] > r[1]):
            raise InputError(f"{where}: answers.range must be [lo, hi] integers with lo <= hi, "
                             f"got {r!r}")
        return tuple(str(i) for i in range(r[0], r[1] + 1))
    if isinstance(value, list) and all(isinstance(a, str) and a for a in value):
        if len(value) < 2:
            raise InputError(f"{where}: the answer set needs at least 2 answers, got "
                             f"{len(value)}; list every valid answer")
        if len(set(value)) != len(value):
            raise InputError(f"{where}: the answer set has duplicates; list each answer once")
        return tuple(value)
    raise InputError(f"{where}: answers must be a list of at least 2 non-empty strings or "
                     f"{{\"range\": [lo, hi]}}, got {value!r}")


def load_probes(path: str | Path | None = None, *, names: Sequence[str] | None = None
                ) -> list[Probe]:
    """Read probes from a JSONL file (default: the built-in ones), optionally by name."""
    p = builtin_probes_path() if path is None else Path(path)
    if not p.is_file():
        raise InputError(f"probe file {p} does not exist; give a JSONL file, one phrasing a "
                         f"line")
    probes: list[Probe] = []
    for where, obj in jsonl_objects(p):
        if not isinstance(obj, dict):
            raise InputError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        missing = [k for k in ("probe", "prompt", "answers") if k not in obj]
        if missing:
            raise InputError(f"{where}: missing field(s) {', '.join(missing)}; a probe line "
                             f"needs probe, prompt and answers")
        if not isinstance(obj["prompt"], str) or not obj["prompt"].strip():
            raise InputError(f"{where}: the prompt is empty; give the probe's question")
        answers, forms = _forms(obj["answers"], where)
        template = obj.get("template")
        if template is not None and (not isinstance(template, str) or "{}" not in template):
            raise InputError(f"{where}: template must be a string containing {{}}, got "
                             f"{template!r}")
        probes.append(Probe(name=str(obj["probe"]), phrasing=str(obj.get("phrasing", len(probes))),
                            prompt=obj["prompt"], answers=answers, forms=forms,
                            template=template, chat=bool(obj.get("chat", False)),
                            boundary=bool(obj.get("boundary", True)), source=where))
    if names:
        unknown = sorted(set(names) - {pr.name for pr in probes})
        if unknown:
            raise InputError(f"unknown probe(s) {', '.join(unknown)} in {p}; available: "
                             f"{', '.join(sorted({pr.name for pr in probes}))}")
        probes = [pr for pr in probes if pr.name in names]
    if not probes:
        raise InputError(f"{p} holds no probes")
    return probes


def render_probe(lm: LoadedModel, probe: Probe) -> tuple[str, str, bool, str]:
    """``(prefix, template, add_special_tokens, framing)`` of a probe for this model."""
    tok = lm.tokenizer
    if probe.chat and getattr(tok, "chat_template", None):
        prefix = tok.apply_chat_template([{"role": "user", "content": probe.prompt}],
                                         tokenize=False, add_generation_prompt=True)
        return prefix, probe.template or "{}", False, "chat template"
    if probe.chat:
        return f"Question: {probe.prompt}\nAnswer:", probe.template or " {}", True, "Q/A text"
    return probe.prompt, probe.template or " {}", True, "text"


@dataclasses.dataclass(frozen=True)
class ProbeResults:
    """Exact answer distributions of every probe phrasing and model."""

    answers: pd.DataFrame
    """One row per probe, phrasing, model and answer: ``p`` (renormalised), ``p_raw``."""
    phrasings: pd.DataFrame
    """One row per probe, phrasing and model: entropy_bits, max_entropy_bits, tvd_uniform,
    top_answer, top_prob, outside_mass, framing."""
    temperatures: tuple[float, ...]
    logprobs: dict[tuple[str, str, str], np.ndarray]
    """(probe, phrasing, model) -> [answers, temperatures] chained log-probs."""

    def summary(self, *, seed: int = 0, outside_limit: float = OUTSIDE_MASS_LIMIT
                ) -> dict[str, Any]:
        """``{probe: {model: {entropy_bits, tvd_uniform, outside_mass, top_answer, top_prob,
        n_phrasings, answered, ...}}}``: ``entropy_bits``, ``tvd_uniform`` and
        ``outside_mass`` are means over phrasings with bootstrap CIs, as estimates
        (``{value, ci_low, ci_high, n, resampled: "phrasings"}``). ``answered`` is false
        when the mean outside mass is above ``outside_limit``: the model does not answer the
        probe, and the distribution given an answer (top answer, entropy, TVD) rests on
        almost no mass."""
        out: dict[str, Any] = {}
        for (name, model), g in self.phrasings.groupby(["probe", "model"], sort=False):
            mean_dist = (self.answers[(self.answers.probe == name)
                                      & (self.answers.model == model)]
                         .groupby("answer", sort=False)["p"].mean())
            row: dict[str, Any] = {"n_phrasings": len(g),
                                   "max_entropy_bits": float(g.max_entropy_bits.iloc[0])}
            for col in ("entropy_bits", "tvd_uniform", "outside_mass"):
                x = g[col].to_numpy(dtype=np.float64)
                row[col] = _mean_estimate(x, seed).to_json()
            row["top_answer"] = str(mean_dist.idxmax())
            row["top_prob"] = float(mean_dist.max())
            row["top_answer_by_phrasing"] = dict(zip(g.phrasing, g.top_answer, strict=True))
            row["answered"] = bool(row["outside_mass"]["value"] <= outside_limit)
            row["outside_limit"] = outside_limit
            out.setdefault(str(name), {})[str(model)] = row
        return out


    def mean_distributions(self) -> dict[tuple[str, str], pd.Series]:
        """(probe, model) -> the answer distribution averaged over phrasings, in answer
        order."""
        return {(str(name), str(model)): g.groupby("answer", sort=False)["p"].mean()
                for (name, model), g in self.answers.groupby(["probe", "model"], sort=False)}


def rank_correlation(results: ProbeResults, *, base: str = "base", tuned: str = "tuned",
                     seed: int = 0, n_boot: int = 2000,
                     outside_limit: float = OUTSIDE_MASS_LIMIT) -> dict[str, Any]:
    """Do the two models order a probe's answers alike? ``{probe: {spearman, kendall,
    n_answers, n_boot, answered}}``, the correlations as estimates (``{value, ci_low,
    ci_high, n, resampled: "answers"}``).

    Spearman and Kendall (tau-b) correlation between the base's and the tuned model's mean
    probabilities over the answers; 95% percentile bootstrap CIs resample the answers in
    pairs (resamples where either side is constant are dropped). Probes with fewer than 3
    answers have no ordering to compare and are left out. ``answered`` is false when either
    model's outside mass is above ``outside_limit``.
    """
    from scipy.stats import kendalltau, spearmanr

    dists = results.mean_distributions()
    outside = results.phrasings.groupby(["probe", "model"], sort=False)["outside_mass"].mean()
    out: dict[str, Any] = {}
    for name in dict.fromkeys(results.answers.probe):
        name = str(name)
        if (name, base) not in dists or (name, tuned) not in dists:
            continue
        pb, pt = dists[(name, base)], dists[(name, tuned)]
        x, y = pb.to_numpy(np.float64), pt.reindex(pb.index).to_numpy(np.float64)
        n = len(x)
        if n < 3:
            continue
        boot_s, boot_k = [], []
        for i in resamples(n, n_boot, seed):
            if np.ptp(x[i]) == 0 or np.ptp(y[i]) == 0:
                continue
            boot_s.append(spearmanr(x[i], y[i]).statistic)
            boot_k.append(kendalltau(x[i], y[i]).statistic)
        row: dict[str, Any] = {"n_answers": n, "n_boot": len(boot_s),
                               "answered": bool(outside[(name, base)] <= outside_limit
                                                and outside[(name, tuned)] <= outside_limit)}
        for key, stat, boot in (("spearman", spearmanr(x, y).statistic, boot_s),
                                ("kendall", kendalltau(x, y).statistic, boot_k)):
            lo, hi = (percentile_ci(boot, omit_nan=True) if boot
                      else (float("nan"), float("nan")))
            row[key] = Estimate(value=float(stat), ci_low=float(lo), ci_high=float(hi), n=n,
                                resampled="answers").to_json()
        out[name] = row
    return out


def _mean_estimate(x: np.ndarray, seed: int, n_boot: int = 2000) -> Estimate:
    """The mean of a few values over phrasings with its percentile bootstrap CI (exact for
    one value)."""
    if len(x) == 1:
        lo = hi = float(x[0])
    else:
        lo, hi = (float(v) for v in
                  percentile_ci(replicate_means(bootstrap_weights(len(x), n_boot, seed), x)))
    return Estimate(value=float(x.mean()), ci_low=lo, ci_high=hi, n=len(x),
                    resampled="phrasings")


def run_probes(model_or_pair: LoadedModel | ModelPair | ModelSet, probes: Sequence[Probe], *,
               temperatures: Sequence[float] = (1.0,),
               progress: Callable[[int], None] | None = None,
               batch_size: int = 64) -> ProbeResults:
    """Score every probe phrasing with every model, exactly, at every temperature."""
    temps = tuple(sorted(set(temperatures) | {1.0}))
    t1 = temps.index(1.0)
    models = models_of(model_or_pair)
    ans_rows: list[dict[str, Any]] = []
    rows: list[dict[str, Any]] = []
    lps: dict[tuple[str, str, str], np.ndarray] = {}
    for probe in probes:
        for label, lm in models.items():
            prefix, template, special, framing = render_probe(lm, probe)
            forms = probe.forms or tuple((a,) for a in probe.answers)
            flat = [template.format(f) for fs in forms for f in fs]
            try:
                lp_forms = continuation_logprobs(lm, prefix, flat, temperatures=temps,
                                                 batch_size=batch_size,
                                                 boundary=probe.boundary,
                                                 add_special_tokens=special)
            except InputError as exc:
                raise InputError(f"{probe.source}: {exc}") from None
            owner = np.repeat(np.arange(len(forms)), [len(fs) for fs in forms])
            lp = np.stack([np.logaddexp.reduce(lp_forms[owner == i], axis=0)
                           for i in range(len(forms))])
            lps[(probe.name, probe.phrasing, label)] = lp
            dist = OutcomeDistribution.from_logprobs(probe.answers, lp[:, t1])
            top, top_p = dist.top
            rows.append({"probe": probe.name, "phrasing": probe.phrasing, "model": label,
                         "framing": framing, "n_answers": len(probe.answers),
                         "entropy_bits": dist.entropy_bits,
                         "max_entropy_bits": dist.max_entropy_bits,
                         "tvd_uniform": dist.tvd_uniform, "top_answer": top, "top_prob": top_p,
                         "outside_mass": dist.mass_outside,
                         "answered": bool(dist.mass_outside <= OUTSIDE_MASS_LIMIT)})
            ans_rows += [{"probe": probe.name, "phrasing": probe.phrasing, "model": label,
                          "answer": a, "p": p, "p_raw": float(math.exp(r))}
                         for a, p, r in zip(probe.answers, dist.probs, lp[:, t1], strict=True)]
            if progress is not None:
                progress(1)
    return ProbeResults(answers=pd.DataFrame(ans_rows), phrasings=pd.DataFrame(rows),
                        temperatures=temps, logprobs=lps)


def _dist(lp: np.ndarray) -> np.ndarray:
    p = np.exp(lp - lp.max(axis=0, keepdims=True))
    return p / p.sum(axis=0, keepdims=True)


def _entropy_bits(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return -np.where(p > 0, p * np.log2(p), 0.0).sum(axis=0)


@dataclasses.dataclass(frozen=True)
class TemperatureSweep:
    """Is the tuned model just the base at a lower temperature? One number per phrasing."""

    table: pd.DataFrame
    """One row per probe, phrasing and temperature: the tuned model's entropy_bits,
    tvd_uniform and tvd_base (TVD from the base's distribution at T = 1), and base_entropy."""
    best_T: float
    """The temperature at which the tuned model's entropy best matches the base's, averaged
    over phrasings (minimises the mean |H_tuned(T) - H_base|)."""
    residual_tvd: Estimate
    """Mean TVD(tuned at best_T, base) over phrasings: what temperature cannot explain."""
    tvd_at_1: Estimate
    """Mean TVD(tuned, base) at T = 1, for comparison."""
    n: int
    """Phrasings (probes x phrasings)."""
    best_T_by_probe: dict[str, float]

    def summary(self) -> dict[str, Any]:
        """``{best_T, residual_tvd, tvd_at_1, explained_share, n, best_T_by_probe}``, the two
        TVDs as estimates (``{value, ci_low, ci_high, n, resampled: "phrasings"}``)."""
        res, at1 = self.residual_tvd.value, self.tvd_at_1.value
        return {"best_T": self.best_T, "residual_tvd": self.residual_tvd.to_json(),
                "tvd_at_1": self.tvd_at_1.to_json(),
                "explained_share": 1 - res / at1 if at1 > 0 else float("nan"),
                "n": self.n, "best_T_by_probe": self.best_T_by_probe}


def temperature_sweep(results: ProbeResults, *, base: str = "base", tuned: str = "tuned",
                      seed: int = 0) -> TemperatureSweep:
    """Sweep the tuned model's temperature against the base at T = 1 (needs a pair)."""
    temps = np.asarray(results.temperatures)
    t1 = results.temperatures.index(1.0)
    rows: list[dict[str, Any]] = []
    gaps, tvds, keys = [], [], []
    for (name, phrasing, model), lp in results.logprobs.items():
        if model != tuned or (name, phrasing, base) not in results.logprobs:
            continue
        pb = _dist(results.logprobs[(name, phrasing, base)][:, [t1]])[:, 0]
        pt = _dist(lp)  # [answers, T]
        hb = float(_entropy_bits(pb[:, None])[0])
        ht = _entropy_bits(pt)
        tvd_u = 0.5 * np.abs(pt - 1.0 / len(pb)).sum(axis=0)
        tvd_b = 0.5 * np.abs(pt - pb[:, None]).sum(axis=0)
        rows += [{"probe": name, "phrasing": phrasing, "T": float(t), "entropy_bits": float(h),
                  "tvd_uniform": float(u), "tvd_base": float(v), "base_entropy": hb}
                 for t, h, u, v in zip(temps, ht, tvd_u, tvd_b, strict=True)]
        gaps.append(np.abs(ht - hb))
        tvds.append(tvd_b)
        keys.append(name)
    if not gaps:
        raise InputError(f"the temperature sweep needs both {base!r} and {tuned!r} models; "
                         f"give a pair (--base and --tuned)")
    gap, tvd = np.stack(gaps), np.stack(tvds)  # [phrasings, T]
    best = int(np.argmin(gap.mean(axis=0)))
    by_probe = {}
    for name in dict.fromkeys(keys):
        sel = [i for i, k in enumerate(keys) if k == name]
        by_probe[name] = float(temps[int(np.argmin(gap[sel].mean(axis=0)))])
    res, at1 = tvd[:, best], tvd[:, t1]
    return TemperatureSweep(
        table=pd.DataFrame(rows), best_T=float(temps[best]),
        residual_tvd=_mean_estimate(res, seed), tvd_at_1=_mean_estimate(at1, seed),
        n=len(res), best_T_by_probe=by_probe)
