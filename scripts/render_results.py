"""Render the documentation's result tables from the runs stored under docs/results/.

Each folder ``docs/results/<run>/`` holds one run's ``summary.json`` exactly as the run wrote
it, ``run.json`` (the exact command, the commit it ran at, the date and the wall time) and
the figures the docs show, copied from the run's ``figures/``. This script renders every
table of the docs from those summaries into ``docs/generated/*.md``; pages include them with
``--8<-- "generated/<name>.md"``. Numbers in prose come from the same summaries through the
macros in ``docs/macros.py``, which use :func:`value`, :func:`est` and :func:`fmt` from here.

    python scripts/render_results.py          # (re)write docs/generated/
    python scripts/render_results.py --check  # fail when a rendered file differs (CI)
    python scripts/render_results.py --store RUN OUT --command "..." [--figures a.png,...]
    python scripts/render_results.py --bench bench-tree benchmarks/tree.py

``--store`` copies a finished run's ``OUT/summary.json`` (and the named figures) into
``docs/results/RUN`` and records the command and the current commit.
"""

from __future__ import annotations

import argparse
import datetime as _dt
import difflib
import hashlib
import json
import math
import re
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from difflens.analysis.summary_spelling import VALUE_KEYS, is_estimate, respell

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "docs" / "results"
GENERATED = ROOT / "docs" / "generated"

# ---------------------------------------------------------------------------------------------
# Reading stored runs


_CACHE: dict[str, dict[str, Any]] = {}


def summary(run: str) -> dict[str, Any]:
    """The stored ``summary.json`` of ``run`` (a folder name under docs/results), with every
    estimate in the one spelling (``{value, ci_low, ci_high, n, resampled}``): runs stored in
    the older spellings are respelled on reading (:func:`difflens.analysis.summary_spelling.
    respell`), so the docs read runs of both spellings."""
    if run not in _CACHE:
        path = RESULTS / run / "summary.json"
        if not path.is_file():
            raise KeyError(f"no stored run {run!r}: {path} is missing (store it with --store)")
        _CACHE[run] = respell(json.loads(path.read_text()))
    return _CACHE[run]


def provenance(run: str) -> dict[str, Any]:
    """The stored ``run.json`` of ``run``: command, commit, date, wall time."""
    path = RESULTS / run / "run.json"
    if not path.is_file():
        raise KeyError(f"stored run {run!r} has no run.json at {path}")
    return json.loads(path.read_text())


def _legacy_step(node: dict[str, Any], part: str) -> Any:
    """A step written in an older spelling, read from the one spelling: an estimate's value
    under its old value key (``x.mean`` -> ``x.value``), and its CI under the old sibling
    names (``x_ci95``, ``x_ci`` -> ``[lo, hi]``; ``x_ci_low``/``x_ci_high``)."""
    if is_estimate(node) and part in VALUE_KEYS:
        return node["value"]
    for suffix in ("_ci95", "_ci", "_ci_low", "_ci_high"):
        stem = part[: -len(suffix)] if part.endswith(suffix) else None
        if stem is None:
            continue
        for key in (stem, f"{stem}_mean", f"{stem}_delta"):
            if is_estimate(node.get(key)):
                est = node[key]
                if suffix in ("_ci95", "_ci"):
                    return [est["ci_low"], est["ci_high"]]
                return est[suffix[1:]]
    raise KeyError(part)


def _step(node: Any, part: str, path: str) -> Any:
    if isinstance(node, list):
        if part.startswith("["):  # select the element whose field equals a value: [layer=4]
            field, want = part[1:-1].split("=", 1)
            for item in node:
                if isinstance(item, dict) and str(item.get(field)) == want:
                    return item
            raise KeyError(f"{path}: no element with {field}={want}")
        return node[int(part)]
    if isinstance(node, dict):
        if part.startswith("[") and ("=" not in part or part[1:-1] in node):
            part = part[1:-1]  # a key with dots in it: [0.25], [tuned cap=0.25]
        if part in node:
            return node[part]
        try:
            return _legacy_step(node, part)
        except KeyError:
            pass
        raise KeyError(f"{path}: no key {part!r} (have: {', '.join(map(str, node))[:200]})")
    raise KeyError(f"{path}: cannot step into {type(node).__name__} with {part!r}")


def _resolve(run: str, path: str) -> tuple[Any, Any, str]:
    """(parent, value, last key) of a dotted path such as ``collapse.probes.d6.tuned.top_prob``.
    ``[key]`` reads a key that has dots in it (``controllers.rollback[0.5]``), and
    ``[field=value]`` selects the element of a list of objects whose field has that value,
    as in ``concepts.cosine_by_layer[layer=4].cos``."""
    node: Any = summary(run)
    parent: Any = None
    parts = re.findall(r"\[[^\]]*\]|[^.\[\]]+", path)
    for part in parts:
        parent, node = node, _step(node, part, f"{run}:{path}")
    return parent, node, parts[-1]


def value(run: str, path: str) -> Any:
    """The value stored at ``path`` in the run's summary (an estimate's ``value``)."""
    node = _resolve(run, path)[1]
    return node["value"] if is_estimate(node) else node


def interval(run: str, path: str) -> tuple[float, float]:
    """The 95% CI of the number at ``path``: the estimate there, or the one whose value the
    path names in an older spelling (``x.mean``); stored runs are respelled on reading, so
    no other spelling is left to look for."""
    parent, node, key = _resolve(run, path)
    if is_estimate(node):
        return float(node["ci_low"]), float(node["ci_high"])
    if is_estimate(parent) and (key in VALUE_KEYS or key == "value"):
        return float(parent["ci_low"]), float(parent["ci_high"])
    raise KeyError(f"{run}:{path}: no confidence interval stored beside it")


# ---------------------------------------------------------------------------------------------
# Formatting


def fmt(x: Any, sig: int = 3, *, pct: bool = False, signed: bool = False) -> str:
    """A number as the docs print it: ``sig`` significant digits (trailing zeros kept),
    integers with thousands separators, NaN as "n/a"; ``pct`` prints x·100 with a % sign."""
    if isinstance(x, bool) or not isinstance(x, (int, float)):
        return str(x)
    if isinstance(x, int) and not pct:
        return f"{x:,}"
    x = float(x)
    if math.isnan(x):
        return "n/a"
    if pct:
        x *= 100
    if x == 0:
        text = "0"
    elif abs(x) < 1e-3:
        mantissa, exponent = f"{x:.{sig - 1}e}".split("e")
        text = f"{mantissa}e{int(exponent)}"
    else:
        decimals = max(0, sig - 1 - math.floor(math.log10(abs(x))))
        text = f"{x:.{decimals}f}"
    if text.startswith("-"):
        text = "−" + text[1:]
    elif signed and x > 0:
        text = "+" + text
    return text + ("%" if pct else "")


def plain(x: Any, *, signed: bool = False) -> str:
    """A setting as written (a gain of 0.25, an α of +0.5), not rounded to significant digits."""
    text = f"{float(x):{'+' if signed else ''}g}"
    return text.replace("-", "−")


def num(run: str, path: str, sig: int = 3, **kw: Any) -> str:
    """The number at ``path``, formatted."""
    return fmt(value(run, path), sig, **kw)


def est(run: str, path: str, sig: int = 3, **kw: Any) -> str:
    """The number at ``path`` with its 95% CI: ``0.981 [0.964, 0.992]``."""
    lo, hi = interval(run, path)
    return f"{fmt(value(run, path), sig, **kw)} [{fmt(lo, sig, **kw)}, {fmt(hi, sig, **kw)}]"


def cite(run: str) -> str:
    """One line that says where the numbers of a page part come from."""
    meta = provenance(run)
    return (f"Rendered from `docs/results/{run}/summary.json`, written by `{meta['command']}` "
            f"at commit `{meta['commit'][:10]}` ({meta['date']}).")


# ---------------------------------------------------------------------------------------------
# Tables


def _table(header: Iterable[str], rows: Iterable[Iterable[str]]) -> str:
    header = list(header)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return "\n".join(lines)


#: The instrument pages' run: every instrument at its full settings on the shipped
#: organism's base and rl (scripts/organism_pair.py).
PAIR = "organism-pair"


def _controllers(run: str, model: str | None = None) -> str:
    """Controllers by gain (of ``model``'s section in a compare run). The runs' `speed_ratio`
    is left out: these runs shared the CPU with other jobs, so their timings say nothing
    (benchmarks/control.py measures speed)."""
    prefix = (f"control.{model}.controllers" if model else
              "control.controllers" if "control" in summary(run) else "controllers")
    ctl = value(run, prefix)
    names = {"none": "unsteered", "open_loop": "open loop", "proportional": "proportional",
             "rollback": "rollback"}
    rows = []
    for name, cells in ctl.items():
        for gain in cells:
            p = f"{prefix}.{name}[{gain}]"
            rows.append([names.get(name, name), plain(gain), est(run, f"{p}.bad_rate"),
                         est(run, f"{p}.bad_rate_independent"), est(run, f"{p}.ppl_ratio"),
                         num(run, f"{p}.kl")])
    judge = "world labeller" if run == PAIR else "lexicon"
    return _table(["controller", "gain", "bad rate (probe)", f"bad rate ({judge})",
                   "perplexity ratio", "KL (nats/token)"], rows)


def control_organism() -> str:
    return _controllers(PAIR, "tuned")


def control_smollm2() -> str:
    return _controllers("smollm2-control")


def organism_properties() -> str:
    """The shipped organism's measured properties, every model of the lineage and RL from
    the base, each with its 95% CI over the units it resampled."""
    models = ("base", "sft", "rl", "rl-from-base")
    rows = []
    for key, label in (("reward_mean", "reward (VADER compound)"),
                       ("celebration_share", "celebration share"),
                       ("entropy_mean", "next-token entropy (nats)"),
                       ("chance_tvd", "chance scenes: TVD from uniform")):
        stem = key.removesuffix("_mean")
        rows.append([label] + [est("demo", f"organism.{m}.{key}") for m in models]
                    + [f"{num('demo', f'organism.base.{stem}_n')} "
                       f"{value('demo', f'organism.base.{key}.resampled')}"])
    return _table(["property", *models, "n"], rows)


def _unanswered(run: str, path: str) -> str:
    """The flag of a probe row whose model does not answer (outside mass above the limit)."""
    row = value(run, path)
    if row.get("answered", True):
        return ""
    return f" — **not answered** (outside mass > {fmt(row['outside_limit'])})"


def collapse_probes_organism() -> str:
    rows = []
    for probe in value(PAIR, "collapse.probes"):
        if probe == "rank_correlation":
            continue
        for model in ("base", "tuned"):
            p = f"collapse.probes.{probe}.{model}"
            entropy = f"{est(PAIR, f'{p}.entropy_bits')} / {num(PAIR, f'{p}.max_entropy_bits')}"
            rows.append([probe, model, entropy,
                         est(PAIR, f"{p}.tvd_uniform"),
                         f"{value(PAIR, f'{p}.top_answer')} ({num(PAIR, f'{p}.top_prob', 2)})"
                         + _unanswered(PAIR, p),
                         num(PAIR, f"{p}.outside_mass"), fmt(value(PAIR, f"{p}.n_phrasings"))])
    return _table(["probe", "model", "entropy (bits) / max", "TVD from uniform",
                   "top answer (p)", "outside mass", "scenes"], rows)


def collapse_probes_smollm2() -> str:
    run = "smollm2-probes"
    names = {"number_0_100": "number 0–100", "number_1_10": "number 1–10"}
    rows = []
    for probe, models in value(run, "probes").items():
        if probe == "rank_correlation":
            continue
        model = next(iter(models))
        p = f"probes.{probe}.{model}"
        rows.append([names.get(probe, probe),
                     f"{est(run, f'{p}.entropy_bits')} / {num(run, f'{p}.max_entropy_bits')}",
                     est(run, f"{p}.tvd_uniform"),
                     f"{value(run, f'{p}.top_answer')} ({num(run, f'{p}.top_prob', 2)})"
                     + _unanswered(run, p),
                     num(run, f"{p}.outside_mass")])
    return _table(["probe", "entropy (bits) / max", "TVD from uniform", "top answer (p)",
                   "outside mass"], rows)


def concepts_by_layer() -> str:
    rows = []
    for entry in value(PAIR, "concepts.cosine_by_layer"):
        layer = entry["layer"]
        rows.append([str(layer), est(PAIR, f"concepts.cosine_by_layer[layer={layer}].cos"),
                     est(PAIR, f"concepts.separation_auc.base[layer={layer}].auc"),
                     est(PAIR, f"concepts.separation_auc.tuned[layer={layer}].auc")])
    return _table(["layer", "cos(base, tuned)", "AUC base", "AUC tuned"], rows)


def concepts_dose_response() -> str:
    """P(matching answer) against α for each model, at its own best steering layer."""
    lb = value(PAIR, "concepts.steering_best_layer.base")
    lt = value(PAIR, "concepts.steering_best_layer.tuned")
    steps = value(PAIR, f"concepts.steering.base.{lb}")
    tuned = {s["alpha"] for s in value(PAIR, f"concepts.steering.tuned.{lt}")}
    rows = [[plain(s["alpha"], signed=True),
             est(PAIR, f"concepts.steering.base.{lb}[alpha={s['alpha']}].p_match"),
             est(PAIR, f"concepts.steering.tuned.{lt}[alpha={s['alpha']}].p_match")
             if s["alpha"] in tuned else "—"]
            for s in steps]
    return _table(["α (residual units)", f"P(kind) base, layer {lb}",
                   f"P(kind) tuned, layer {lt}"], rows)


def concepts_smollm2_auc() -> str:
    run = "smollm2-persona"
    rows = [[str(e["layer"]), est(run, f"separation_auc.model[layer={e['layer']}].auc")]
            for e in value(run, "separation_auc.model") if e["layer"] % 3 == 0]
    return _table(["layer", "held-out separation AUC"], rows)


def _distance_rows(run: str, prefix: str, steps: Iterable[int]) -> list[list[str]]:
    rows = []
    for step in steps:
        p = f"{prefix}[index={step}]"
        rows.append([str(step), est(run, f"{p}.mean"), fmt(value(run, f"{p}.n"))])
    return rows


def trajectories_organism() -> str:
    rows = []
    for step in (0, 5, 10, 20):
        sphere = f"trajectories.continuation.distance_by_index[index={step}]"
        full = f"trajectories.full.continuation.distance_by_index[index={step}]"
        rows.append([str(step), est(PAIR, f"{sphere}.mean"), est(PAIR, f"{full}.mean"),
                     fmt(value(PAIR, f"{full}.n"))])
    return _table(["step", "sphere (rad)", "full dimension (rad)", "n paths"], rows)


def gptj_continuation_distance() -> str:
    rows = _distance_rows("gptj", "continuation.distance_by_index", (0, 5, 10, 19))
    return _table(["step", "distance (rad)", "n"], rows)


def themes_predictors() -> str:
    run, th = PAIR, "themes"
    best = value(run, f"{th}.best_layer")
    rows = []
    for name, label in (("probe", f"probe, layer {best}"),
                        ("transformer", f"transformer, layer {best}")):
        p = f"{th}.predictors.{name}.{best}"
        rows.append([label, est(run, f"{p}.kl"), est(run, f"{p}.kl_gain"), num(run, f"{p}.top1", 2),
                     num(run, f"{p}.chain_ll"), num(run, f"{p}.ece", 2)])
    for name, label in (("marginal", "marginal"), ("sentence_embedding", "sentence embedding")):
        p = f"{th}.baselines.{name}"
        gain = est(run, f"{p}.kl_gain") if "kl_gain" in value(run, p) else "—"
        rows.append([label, est(run, f"{p}.kl"), gain, num(run, f"{p}.top1", 2),
                     num(run, f"{p}.chain_ll"), num(run, f"{p}.ece", 2)])
    return _table(["predictor", "KL (nats)", "gain over marginal (paired)", "top-1",
                   "chain log-lik", "ECE"], rows)


def collapse_probes_stories260k() -> str:
    run = "issue19-collapse-stories260k-probes"
    rows = []
    for probe, models in value(run, "probes").items():
        p = f"probes.{probe}.{next(iter(models))}"
        rows.append([probe, num(run, f"{p}.outside_mass"),
                     f"{value(run, f'{p}.top_answer')} ({num(run, f'{p}.top_prob', 2)})"
                     + _unanswered(run, p)])
    return _table(["probe", "outside mass", "top answer given an answer (p)"], rows)


def collapse_rank_organism() -> str:
    run, p0 = PAIR, "collapse.probes.rank_correlation"
    rows = [[probe, fmt(value(run, f"{p0}.{probe}.n_answers")),
             est(run, f"{p0}.{probe}.spearman", 2), est(run, f"{p0}.{probe}.kendall", 2)]
            for probe in value(run, p0)]
    return _table(["probe", "answers", "Spearman (base vs tuned)", "Kendall tau-b"], rows)


def collapse_decollapse_organism() -> str:
    run, p0 = "demo-earlier-organism", "collapse.decollapse.sets"
    rows = []
    for name in value(run, p0):
        p = f"{p0}[{name}]"
        rows.append([name, est(run, f"{p}.vendi"), est(run, f"{p}.distinct_2", 2),
                     est(run, f"{p}.self_bleu", 2), est(run, f"{p}.recall", 2),
                     est(run, f"{p}.ppl_under_scorer"), fmt(value(run, f"{p}.n_texts"))])
    return _table(["samples", "Vendi", "distinct-2", "self-BLEU", "recall (k-NN)",
                   "perplexity under the base", "texts"], rows)


def collapse_free_text_organism() -> str:
    run, p0 = PAIR, "collapse.temperature.free_text.meet"
    rows = []
    for metric in value(run, p0):
        p = f"{p0}.{metric}"
        t = value(run, f"{p}.T")
        rows.append([metric, num(run, f"{p}.base"), num(run, f"{p}.tuned_at_1"),
                     est(run, f"{p}.T") if t == t else "no meeting in the grid",
                     num(run, f"{p}.no_meeting_share", 2, pct=True)])
    return _table(["metric", "base at T=1", "tuned at T=1", "tuned meets the base at T",
                   "resamples with no meeting"], rows)


def lineage_attribution() -> str:
    """Every stage's change of every attributed metric of the demo, with its CI, share and n,
    stages in lineage order and metrics in the order the sections run (concept cosines: the
    layer where a stage moved it most), as the demo's own report shows it
    (``report.compare.attribution_rows``)."""
    from difflens.report.compare import (
        ATTRIBUTION_HEADER,
        attribution_footnotes,
        attribution_rows,
    )

    run = "demo"
    att = value(run, "attribution")
    cosines = {k: v for k, v in att.items() if k.startswith("concept_cosine_L")}
    keep = {k: v for k, v in att.items() if not k.startswith("concept_cosine_L")}
    if cosines:  # one row per stage: the layer of its largest finite change
        best = max(cosines, key=lambda k: max(
            (abs(r["value"]) for r in cosines[k].values() if r["value"] is not None),
            default=0.0))
        keep[best] = cosines[best]
    names = value(run, "themes.theme_names") if "themes" in summary(run) else {}
    rows = attribution_rows(keep, value(run, "lineage"), names, keep_undefined=False)
    notes = attribution_footnotes(rows)
    return _table(ATTRIBUTION_HEADER, rows) + ("\n\n" + "\n".join(f"{n}" for n in notes)
                                              if notes else "")


#: The seeds tables' order: the lineage, then RL from the base; the headline metrics.
SEED_MODELS = ("base", "sft", "rl", "rl-from-base")
SEED_METRICS = ("reward", "entropy", "celebration_share", "chance_tvd")


def organism_seeds() -> str:
    """The organism's training variance: each headline number's spread across builds
    beside its prompt CI."""
    run = "organism-seeds"
    spread = value(run, "spread")
    rows = []
    for model in SEED_MODELS:
        for metric in SEED_METRICS:
            s = spread[model][metric]
            rows.append([model, metric.replace("_", " "), fmt(s["mean"]), fmt(s["sd"], 2),
                         f"{fmt(s['min'])} to {fmt(s['max'])}",
                         f"±{fmt(s['prompt_ci_halfwidth'], 2)}"])
    return _table(["model", "number", "mean over builds", "sd across builds",
                   "range across builds", "prompt CI half-width (median)"], rows)


def organism_seed_stages() -> str:
    """Each stage's change across builds, beside its prompt CI."""
    run = "organism-seeds"
    rows = []
    spread = value(run, "stage_spread")
    for metric in SEED_METRICS:
        for stage in ("sft", "rl"):
            s = spread[metric][stage]
            rows.append([metric.replace("_", " "), stage, fmt(s["mean"], signed=True),
                         fmt(s["sd"], 2), f"{fmt(s['min'], signed=True)} to "
                         f"{fmt(s['max'], signed=True)}", f"±{fmt(s['prompt_ci_halfwidth'], 2)}"])
    return _table(["number", "stage", "mean change", "sd across builds",
                   "range across builds", "prompt CI half-width (median)"], rows)


def organism_findings() -> str:
    """Each finding about the organism's lineage, with the builds in which it held."""
    run = "organism-seeds"
    rows = [[f["finding"], f"{f['held']}/{f['n_builds']}",
             ", ".join(f["failed_in"]) or "—"] for f in value(run, "findings")]
    return _table(["finding", "held in", "did not hold in"], rows)


DISCOVER_METHODS = ("adl", "mining", "amplify", "logodds", "hypothesis")


def _est_cell(e: dict[str, Any], *, pct: bool = False) -> str:
    if e is None or e.get("value") is None or e["value"] != e["value"]:
        return "—"
    if e.get("ci_low") is None or e["ci_low"] != e["ci_low"]:
        return fmt(e["value"], pct=pct)
    return f"{fmt(e['value'], pct=pct)} [{fmt(e['ci_low'], pct=pct)}, {fmt(e['ci_high'], pct=pct)}]"


def discover_zoo() -> str:
    """Every discover method on every zoo organism and mixing ratio: the share of its top 20
    words in the organism's planted set (and in the other organisms' sets), how often its
    words pick the right description of four, and ADL's steering gain."""
    run = "discover-zoo"
    grades = value(run, "grades")
    rows = []
    for organism, by_ratio in grades.items():
        for ratio, by_method in by_ratio.items():
            for method in DISCOVER_METHODS:
                g = by_method.get(method)
                if not g:
                    continue
                rows.append([organism, f"{ratio}:1", method,
                             _est_cell(g["planted_share"], pct=True),
                             _est_cell(g["other_share"], pct=True),
                             _est_cell(g["identified"], pct=True),
                             _est_cell(g["steering_gain"]) if method == "adl" else ""])
    return _table(["organism", "ordinary:narrow", "method", "planted share of top 20",
                   "share in other organisms' sets", "identified (1 of 4)",
                   "steering gain vs random"], rows)


def _discover_rows(label: str, d: dict[str, Any]) -> list[list[str]]:
    share = (d.get("planted") or {}).get("share", {})
    rows = []
    for method in DISCOVER_METHODS:
        node = d.get(method)
        if node is None:
            continue
        words = node["words"] if method == "hypothesis" else node["top_words"]
        rows.append([label, method, ", ".join(words[:10]) or "— (" + node.get(
            "note", "none") + ")", fmt(share[method], pct=True) if method in share else "—"])
    return rows


def discover_organism() -> str:
    """discover on the organism's lineage: each stage's words, and the whole fine-tune's."""
    run = "discover-organism"
    rows = []
    for stage, d in value(run, "stages").items():
        rows += _discover_rows(stage.replace("-to-", " → "), d)
    rows += _discover_rows("base → rl", value(run, "discover"))
    return _table(["stage", "method", "top 10 words", "planted share"], rows)


def discover_stories260k() -> str:
    """discover on stories260k against its narrow fine-tune by the sea."""
    return _table(["pair", "method", "top 10 words", "planted share of top 20"],
                  _discover_rows("stories260k → sea fine-tune",
                                 value("discover-stories260k", "discover")))


TABLES: dict[str, tuple[str, Callable[[], str]]] = {
    "discover_zoo": ("discover-zoo", discover_zoo),
    "discover_organism": ("discover-organism", discover_organism),
    "discover_stories260k": ("discover-stories260k", discover_stories260k),
    "lineage_attribution": ("demo", lineage_attribution),
    "organism_seeds": ("organism-seeds", organism_seeds),
    "organism_seed_stages": ("organism-seeds", organism_seed_stages),
    "organism_findings": ("organism-seeds", organism_findings),
    "organism_properties": ("demo", organism_properties),
    "collapse_probes_organism": ("organism-pair", collapse_probes_organism),
    "collapse_probes_smollm2": ("smollm2-probes", collapse_probes_smollm2),
    "collapse_rank_organism": ("organism-pair", collapse_rank_organism),
    "collapse_probes_stories260k": ("issue19-collapse-stories260k-probes",
                                    collapse_probes_stories260k),
    "collapse_decollapse_organism": ("demo-earlier-organism", collapse_decollapse_organism),
    "collapse_free_text_organism": ("organism-pair", collapse_free_text_organism),
    "concepts_by_layer": ("organism-pair", concepts_by_layer),
    "concepts_dose_response": ("organism-pair", concepts_dose_response),
    "concepts_smollm2_auc": ("smollm2-persona", concepts_smollm2_auc),
    "trajectories_organism": ("organism-pair", trajectories_organism),
    "gptj_continuation_distance": ("gptj", gptj_continuation_distance),
    "control_organism": ("organism-pair", control_organism),
    "control_smollm2": ("smollm2-control", control_smollm2),
    "themes_predictors": ("organism-pair", themes_predictors),
}


def render_all() -> dict[Path, str]:
    """Every generated file's path and text."""
    out = {}
    for name, (run, make) in TABLES.items():
        if not (RESULTS / run / "summary.json").is_file():
            continue  # a page that includes it fails the strict build with the missing name
        out[GENERATED / f"{name}.md"] = f"{make()}\n\n{cite(run)}\n"
    return out


# ---------------------------------------------------------------------------------------------
# Storing a run, and the CI check


def _git(*args: str) -> str:
    return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                          check=True).stdout.strip()


def store(run: str, out: Path, command: str, figures: list[str], wall_s: float | None,
          peak_rss_mib: float | None = None) -> None:
    """Copy a finished run into docs/results/RUN with its command and commit."""
    if not (out / "summary.json").is_file():
        raise SystemExit(f"{out}/summary.json not found: --store takes the OUT folder of a "
                         "finished difflens command")
    dest = RESULTS / run
    dest.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(out / "summary.json", dest / "summary.json")
    shas = {}
    for fig in figures:
        src = out / fig
        if not src.is_file():  # a bare name: the one figure of that name anywhere in OUT
            found = [p for p in out.rglob(fig) if "figures" in p.parts]
            if len(found) != 1:
                raise SystemExit(f"{fig}: expected one figure of that name under {out}, "
                                 f"found {len(found)}")
            src = found[0]
        target = dest / "figures" / src.name
        target.parent.mkdir(exist_ok=True)
        shutil.copyfile(src, target)
        shas[target.name] = hashlib.sha256(target.read_bytes()).hexdigest()
    meta = {"command": command, "commit": _git("rev-parse", "HEAD"),
            "date": _dt.date.today().isoformat(), "wall_s": wall_s,
            "machine": "2 CPU cores, no GPU, float32",
            "figures": shas}
    if peak_rss_mib is not None:
        meta["peak_rss_mib"] = peak_rss_mib
    organism = organism_of(json.loads((out / "summary.json").read_text()))
    if organism is None and ORGANISM_COMMAND.search(command):
        # the command names the organism's presets, which load the shipped organism
        from difflens.organism.shipped import manifest

        organism = manifest()["organism_id"]
    if organism:
        meta["organism_id"] = organism
    (dest / "run.json").write_text(json.dumps(meta, indent=2) + "\n")


def _shipped_ids() -> dict[str, str]:
    """Each shipped organism build's model weights hash -> its organism id."""
    from difflens.organism.shipped import SHIPPED_ROOT, manifest

    out = {}
    for folder in sorted(SHIPPED_ROOT.iterdir()):
        if (folder / "manifest.json").is_file():
            m = manifest(folder)
            out.update({sha: m["organism_id"] for sha in m["weights_sha256"].values()})
    return out


def organism_of(summary: dict[str, Any]) -> str | None:
    """The id of the organism a run ran on: the demo's ``organism_build.organism_id``, or
    the shipped build whose weights one of the run's models has; None for other models."""
    found = summary.get("organism_build", {}).get("organism_id")
    if found:
        return str(found)
    ids = _shipped_ids()
    models = summary.get("models", [])
    for m in models if isinstance(models, list) else []:
        sha = (m.get("identity") or {}).get("weights_sha256") if isinstance(m, dict) else None
        if sha in ids:
            return ids[sha]
    return None


#: Commands that run on the organism (a preset or the demo): their runs must record it.
ORGANISM_COMMAND = re.compile(r"--(?:base|tuned|model)[ =](?:\S+=)?organism-|difflens demo|"
                              r"organism_pair|--organism|--format organism")


def _older(a: dict[str, Any], b: dict[str, Any]) -> bool:
    """Whether run ``a`` was made before run ``b``: its commit an ancestor of b's (by date
    when git does not know one of them, e.g. in a shallow clone)."""
    if a["commit"] == b["commit"]:
        return False
    done = subprocess.run(["git", "merge-base", "--is-ancestor", a["commit"], b["commit"]],
                          cwd=ROOT, capture_output=True)
    if done.returncode in (0, 1):
        return done.returncode == 0
    return str(a["date"]) < str(b["date"])


def page_runs(text: str) -> set[str]:
    """The stored runs a page renders: macro calls, included tables, shown figures."""
    runs = set(re.findall(r"\b(?:num|est|pct|value|plain|cite|cmd|wall)\(\s*[\"']"
                          r"([A-Za-z0-9_-]+)[\"']", text))
    for name in re.findall(r'--8<-- "generated/([A-Za-z0-9_]+)\.md"', text):
        if name in TABLES:
            runs.add(TABLES[name][0])
    runs.update(re.findall(r"results/([A-Za-z0-9_-]+)/figures/", text))
    return runs


def rename(run: str, why: str) -> str:
    """Keep a stored organism run that was not re-stored on the shipped organism, renamed
    ``<run>-earlier-organism`` with its true command and ``stale`` (why it stays) in its
    run.json; pages that render it must say so. Returns the new name."""
    new = f"{run}-earlier-organism"
    (RESULTS / run).rename(RESULTS / new)
    meta = provenance(new)
    meta["stale"] = why
    (RESULTS / new / "run.json").write_text(json.dumps(meta, indent=2) + "\n")
    return new


def provenance_problems(pages: list[Path]) -> list[str]:
    """Stored runs that would mislead a reader: two runs of one command made at different
    commits (one of them is stale), an organism run that records no organism or another
    organism than the shipped one, and a page that renders an organism run older than the
    demo run it describes. A run kept old on purpose (``rename``: named
    ``*-earlier-organism``, its run.json saying why) is exempt from the last two."""
    from difflens.organism.shipped import manifest

    problems = []
    metas = {p.name: provenance(p.name) for p in sorted(RESULTS.iterdir())
             if (p / "run.json").is_file()}
    by_command: dict[str, list[str]] = {}
    for run, meta in metas.items():
        by_command.setdefault(meta["command"], []).append(run)
    for command, runs in by_command.items():
        if len({metas[r]["commit"] for r in runs}) > 1:
            listed = ", ".join(f"{r} ({metas[r]['commit'][:7]})" for r in runs)
            problems.append(f"runs {listed} record the same command `{command}` at different "
                            "commits: re-store the stale one, or rename it and record its "
                            "true command")
    shipped = manifest()["organism_id"]
    organism_runs = {r for r, m in metas.items() if ORGANISM_COMMAND.search(m["command"])}
    for run in sorted(organism_runs):
        got = metas[run].get("organism_id")
        if metas[run].get("stale"):
            if not run.endswith("-earlier-organism"):
                problems.append(f"run {run!r} is marked stale but its name does not say so: "
                                "rename it with --rename (NAME-earlier-organism)")
            continue
        if got is None:
            problems.append(f"run {run!r} ran on the organism but records no organism id "
                            f"(it predates the shipped organism {shipped}): re-store it")
        elif got != shipped:
            problems.append(f"run {run!r} ran on organism {got}, not the shipped {shipped}: "
                            "re-store it")
    for page in pages:
        runs = page_runs(page.read_text()) & set(metas)
        if "demo" not in runs:
            continue
        for run in sorted((runs & organism_runs) - {"demo"}):
            if metas[run].get("stale"):  # kept as old on purpose, named so (see rename)
                continue
            if _older(metas[run], metas["demo"]):
                problems.append(f"{page.relative_to(ROOT)} renders run {run!r} "
                                f"({metas[run]['commit'][:7]}), older than the demo run it "
                                f"describes ({metas['demo']['commit'][:7]}): re-store it")
    return problems


def bench(run: str, command: list[str]) -> None:
    """Run a benchmark script, parse the ``key=value`` pairs of its last line into
    docs/results/RUN/summary.json, and record the command and commit."""
    import time

    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed ({done.returncode}):\n{done.stderr[-2000:]}")
    last = [line for line in done.stdout.splitlines() if "=" in line][-1]
    values: dict[str, Any] = {}
    for pair in last.split():
        key, _, text = pair.partition("=")
        try:
            values[key] = int(text)
        except ValueError:
            try:
                values[key] = float(text)
            except ValueError:
                values[key] = text
    dest = RESULTS / run
    dest.mkdir(parents=True, exist_ok=True)
    (dest / "summary.json").write_text(json.dumps(values, indent=2) + "\n")
    (dest / "stdout.txt").write_text(done.stdout)
    cmd = " ".join(["python" if c == sys.executable else c for c in command])
    meta = {"command": cmd, "commit": _git("rev-parse", "HEAD"),
            "date": _dt.date.today().isoformat(), "wall_s": round(wall, 1),
            "machine": "2 CPU cores, no GPU, float32 (a shared box: timings vary by about 20%)",
            "figures": {}}
    (dest / "run.json").write_text(json.dumps(meta, indent=2) + "\n")


def check() -> list[str]:
    """What differs between the stored docs and a fresh rendering (empty when all agree)."""
    problems = []
    rendered = render_all()
    for path, text in rendered.items():
        old = path.read_text() if path.is_file() else ""
        if old != text:
            diff = "".join(difflib.unified_diff(old.splitlines(True), text.splitlines(True),
                                                str(path.relative_to(ROOT)), "rendered"))
            problems.append(f"{path.relative_to(ROOT)} differs from its rendering:\n{diff}")
    for path in sorted(GENERATED.glob("*.md")):
        if path not in rendered:
            problems.append(f"{path.relative_to(ROOT)} has no renderer or no stored run")
    for folder in sorted(p for p in RESULTS.iterdir() if p.is_dir()):
        if not (folder / "run.json").is_file():
            problems.append(f"{folder.relative_to(ROOT)} has no run.json (command and commit)")
            continue
        meta = provenance(folder.name)
        for key in ("command", "commit", "date"):
            if not meta.get(key):
                problems.append(f"{folder.name}/run.json lacks {key!r}")
        for name, sha in meta.get("figures", {}).items():
            fig = folder / "figures" / name
            if not fig.is_file() or hashlib.sha256(fig.read_bytes()).hexdigest() != sha:
                problems.append(f"{fig.relative_to(ROOT)} is missing or not the figure the run "
                                "wrote (sha256 differs from run.json)")
    pages = [p for p in sorted((ROOT / "docs").rglob("*.md")) + [ROOT / "README.md"]
             if p.is_file() and GENERATED not in p.parents]
    problems += provenance_problems(pages)
    for page in pages:
        for run, name in re.findall(r"results/([A-Za-z0-9_-]+)/figures/([A-Za-z0-9_.-]+\.png)",
                                    page.read_text()):
            manifest = RESULTS / run / "run.json"
            listed = (json.loads(manifest.read_text()).get("figures", {})
                      if manifest.is_file() else {})
            if name not in listed:
                problems.append(f"{page.relative_to(ROOT)} shows results/{run}/figures/{name}, "
                                f"which run {run!r} did not record (store it with --figures)")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true",
                        help="fail when a rendered file differs from docs/generated")
    parser.add_argument("--store", nargs=2, metavar=("RUN", "OUT"),
                        help="store the finished run OUT as docs/results/RUN")
    parser.add_argument("--command", help="the exact command that produced OUT (with --store)")
    parser.add_argument("--figures", default="", help="comma-separated figure paths inside OUT")
    parser.add_argument("--wall-s", type=float, default=None, help="the run's wall time")
    parser.add_argument("--peak-rss-mib", type=float, default=None,
                        help="the run's peak resident memory (e.g. from /usr/bin/time -v)")
    parser.add_argument("--rename", nargs=2, metavar=("RUN", "WHY"),
                        help="keep an organism run that stays old as RUN-earlier-organism")
    parser.add_argument("--bench", nargs=argparse.REMAINDER, metavar=("RUN", "SCRIPT"),
                        help="run benchmarks/SCRIPT [ARGS] and store its key=value line as RUN")
    args = parser.parse_args(argv)
    if args.rename:
        print(f"renamed to {rename(*args.rename)}")
        return 0
    if args.bench:
        run, *command = args.bench
        bench(run, [sys.executable, *command])
        return 0
    if args.store:
        if not args.command:
            parser.error("--store needs --command: the exact command that produced the run")
        figures = [f for f in args.figures.split(",") if f]
        store(args.store[0], Path(args.store[1]), args.command, figures, args.wall_s,
              args.peak_rss_mib)
        return 0
    if args.check:
        problems = check()
        for p in problems:
            print(p, file=sys.stderr)
        if problems:
            print("docs results are stale: run `python scripts/render_results.py` and commit "
                  "docs/generated", file=sys.stderr)
            return 1
        print(f"docs results: {len(render_all())} tables match their stored runs")
        return 0
    GENERATED.mkdir(parents=True, exist_ok=True)
    for path, text in render_all().items():
        path.write_text(text)
    print(f"wrote {len(render_all())} tables to {GENERATED.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
