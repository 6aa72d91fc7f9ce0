"""Outputs of ``difflens demo``: the organism's own figures (each model's headline
measures, exact chance distributions, the change each stage made) and the page's intro,
headline and takeaways. Data in (the organism's properties and attribution), figures out;
the sections' figures are ``difflens compare``'s."""

import dataclasses
import json
import math
import shlex
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from difflens.report.compare import attribution_figure
from difflens.report.figures import AnyFigure, Figure, Series, format_ci, small_multiples

#: Headline key -> what the page calls it.
HEADLINE_NAMES = {"reward": "Reward (VADER)", "entropy": "Entropy, nats/token",
                  "celebration_share": "Celebration share",
                  "chance_tvd": "Chance-scene TVD from uniform"}
#: The organism block's key of each headline's estimate (the issue's names); ``<key>_n``
#: follows the headline key.
MEAN_KEY = {"reward": "reward_mean", "entropy": "entropy_mean",
            "celebration_share": "celebration_share", "chance_tvd": "chance_tvd"}
#: Property label (``properties.json``) of each lineage name.
_LABEL = {"base": "base", "sft": "sft", "rl": "rl", "rl-from-base": "tuned"}
#: The organism's attributed metric -> its headline key (what its ``n`` counts is that
#: headline's ``resampled``).
ORGANISM_METRICS = {"organism_reward": "reward", "organism_entropy": "entropy",
                    "organism_celebration": "celebration_share",
                    "organism_chance_tvd": "chance_tvd"}
#: Outcome words in their natural order (a die's faces, a count), for ``outcome_order``.
_NUMBER_WORDS = ("zero", "one", "two", "three", "four", "five", "six", "seven", "eight",
                 "nine", "ten", "eleven", "twelve")


def demo_intro(summary: Mapping[str, Any]) -> str:
    o = summary["organism"]
    sq = summary["sft_question"]
    return (
        "A ~1M-parameter Llama trained from scratch on a seeded story world with a known theme "
        "Markov chain (<b>base</b>); <b>sft</b>: the base fine-tuned on the world's stories "
        "that the reward (VADER sentiment) likes best, as curated-sample SFT works; "
        "<b>rl</b>: RL (RLOO, KL to its start) from sft; and <b>rl-from-base</b>: the same RL "
        "from the base, kept to answer whether SFT alone collapses. Reward: "
        + ", ".join(f"{m} {o[m]['reward_mean']['value']:.3f}" for m in o)
        + f". Does SFT on curated samples collapse the chance scenes? {sq['answer']}.")


def demo_headline(summary: Mapping[str, Any]) -> dict[str, Any]:
    """Each model's headline measures with CIs, then the answer to the SFT question."""
    out: dict[str, Any] = {}
    for key, name in HEADLINE_NAMES.items():
        for model, row in summary["organism"].items():
            out[f"{name}: {model}"] = _ci(row[MEAN_KEY[key]], row[f"{key}_n"])
    sq = summary["sft_question"]
    out["Chance-scene TVD change made by SFT"] = _ci(sq["sft_delta"], sq["n_scenes"])
    out["Chance-scene TVD change made by RL after SFT"] = _ci(sq["rl_delta"], sq["n_scenes"])
    return out


def _ci(est: Mapping[str, Any], n: int | None = None) -> str:
    """An estimate as the page prints it: ``0.920 [0.918, 0.921]`` (``n=...`` with ``n``)."""
    return format_ci(est["value"], [est["ci_low"], est["ci_high"]], n)


#: The colour of the organism's model outside the lineage (the lineage's come first).
RL_FROM_BASE_COLOR = "#8172b3"


def training_figure(curves: Mapping[str, pd.DataFrame]) -> Figure:
    """The RL reward per step of each RL run (``{model: curve}``, columns step, reward)."""
    steps = sorted({int(s) for c in curves.values() for s in c["step"]})
    return Figure("rl_curves", "RL: mean VADER reward per step", "line", steps,
                  [Series(m, c.set_index("step")["reward"].reindex(steps).tolist())
                   for m, c in curves.items()], xlabel="RL step", ylabel="mean reward",
                  caption="RL from sft (rl) and from the base (rl-from-base): the same openings "
                          "and seeds; the KL penalty is to each run's start.")


def organism_figures(props: Mapping[str, Any], organism: Mapping[str, Any],
                     attribution: pd.DataFrame,
                     curves: Mapping[str, pd.DataFrame] | None = None) -> list[AnyFigure]:
    """Each model's headline measures (one bar per model, lineage order), the exact chance
    distributions of each model, the change each stage made and the RL curves."""
    from difflens.report.figures import COLORS

    COLORS.setdefault("rl-from-base", RL_FROM_BASE_COLOR)
    figures: list[AnyFigure] = []
    heads = []
    first = next(iter(organism.values()))
    for key, name in HEADLINE_NAMES.items():
        series = [Series(m, [row[MEAN_KEY[key]]["value"]], [row[MEAN_KEY[key]]["ci_low"]],
                         [row[MEAN_KEY[key]]["ci_high"]]) for m, row in organism.items()]
        n, what = first[f"{key}_n"], first[MEAN_KEY[key]].get("resampled") or "units"
        heads.append(Figure(f"headline_{key}", name, "bar", [""], series, ylabel=name,
                            caption=f"n = {n} {what} per model, 95% bootstrap CIs."))
    figures.append(small_multiples(
        "headline", "The organism's measured properties, every model",
        [dataclasses.replace(f) for f in heads], cols=2))
    figures += [dataclasses.replace(f, on_page=False) for f in heads]
    for kind in ("d6", "coin"):
        dists = {m: props[_LABEL[m]]["chance_by_kind"].get(kind) for m in organism}
        dists = {m: d for m, d in dists.items() if d}
        if not dists:
            continue
        outcomes = outcome_order(next(iter(dists.values()))["mean_distribution"])
        figures.append(Figure(
            f"chance_{kind}", f"Exact {kind} distribution in the world's chance scenes",
            "bar", outcomes, [Series(m, [d["mean_distribution"][o] for o in outcomes])
                              for m, d in dists.items()],
            xlabel="outcome", ylabel="mean probability", hline=1 / len(outcomes),
            caption=chance_caption(dists)))
    if len(attribution):
        units = {metric: first[MEAN_KEY[key]].get("resampled") or "units"
                 for metric, key in ORGANISM_METRICS.items()}
        figures.append(attribution_figure(
            "stages_organism", "The organism: the change each stage made", attribution,
            units=units, cols=2))
    if curves:
        figures.append(training_figure(curves))
    return figures


def outcome_order(outcomes: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """Outcomes in their natural order: number words (``one`` .. ``six``) and numerals by
    value, anything else as given (``heads``, ``tails``)."""
    names = list(outcomes)

    def rank(o: str) -> float:
        w = str(o).strip().lower()
        if w in _NUMBER_WORDS:
            return float(_NUMBER_WORDS.index(w))
        try:
            return float(w)
        except ValueError:
            return math.nan

    ranks = [rank(o) for o in names]
    if any(math.isnan(r) for r in ranks):
        return names
    return [o for _, o in sorted(zip(ranks, names, strict=True), key=lambda t: t[0])]


def chance_caption(dists: Mapping[str, Mapping[str, Any]]) -> str:
    """The caption of an exact chance distribution: the uniform line, and each model's
    total variation from uniform with its 95% CI and n (the scenes averaged over)."""
    parts = []
    for m, d in dists.items():
        tvd = d.get("tvd")
        if isinstance(tvd, Mapping) and "value" in tvd:
            n = tvd.get("n")
            parts.append(f"{m} {format_ci(tvd['value'], [tvd['ci_low'], tvd['ci_high']])}"
                         + (f" (n = {n} {tvd.get('resampled') or 'scenes'})" if n else ""))
    text = ("The world draws every outcome uniformly (dashed line); bars: each model's mean "
            "exact probability over the scenes.")
    if parts:
        text += " Total variation from uniform, 95% CI over scenes: " + "; ".join(parts) + "."
    return text


def demo_takeaways(summary: Mapping[str, Any]) -> list[str]:
    """The overview's lines: which stage moved each organism measure, with CIs, and the
    answer to the SFT question."""
    lines = []
    sq = summary["sft_question"]
    lines.append(
        f"Does SFT on curated samples collapse the chance scenes? {sq['answer']}: SFT changes "
        f"the TVD by {_ci(sq['sft_delta'])}, RL after it by "
        f"{_ci(sq['rl_delta'])} (n = {sq['n_scenes']} scenes)")
    att = summary["attribution"]
    for metric, name in (("organism_entropy", "Entropy"),
                         ("organism_celebration", "Celebration share")):
        rows = att.get(metric, {})
        if rows:
            order = {m: i for i, m in enumerate(summary.get("lineage") or ())}
            stages = sorted(rows, key=lambda st: (order.get(st, len(order)), list(rows).index(st)))
            parts = [f"{stage} {_ci(rows[stage])}" for stage in stages]
            lines.append(f"{name}, change by stage: " + "; ".join(parts))
    o = summary["organism"]
    if "rl-from-base" in o and "rl" in o:
        lines.append(
            "RL from the base vs RL after SFT, chance TVD: "
            f"{_ci(o['rl-from-base']['chance_tvd'])} vs {_ci(o['rl']['chance_tvd'])}")
    return lines


def explore_runs(names: Sequence[str]) -> tuple[str, ...]:
    """The demo's run folders, in the order ``difflens explore`` is given them (run k of the
    explorer is the k-th): the capture store of every model (one forward each) first."""
    return ("capture/store", "trajectories", "collapse", "concepts",
            f"control/{names[-1]}", "themes")


def explore_run_ids(out: str | Path) -> dict[str, int]:
    """The id ``difflens explore OUT`` gives each run of a compare/demo folder (the order
    ``difflens.explore.runs.open_runs`` serves it in: ``OUT`` itself 0, then each section
    its ``summary.json`` lists that has a summary, each followed by its per-model runs,
    sorted), by path relative to ``OUT`` (``""``, ``"collapse"``, ``"control/base"``)."""
    root = Path(out)
    ids = {"": 0}
    try:
        listed = json.loads((root / "summary.json").read_text()).get("sections")
    except (OSError, ValueError, AttributeError):
        return ids
    for section in listed if isinstance(listed, list) else []:
        folder = root / str(section)
        if not folder.is_dir() or folder.resolve().parent != root.resolve():
            continue
        if (folder / "summary.json").is_file():
            ids[str(section)] = len(ids)
        for sub in sorted(folder.iterdir()):
            if sub.is_dir() and (sub / "summary.json").is_file():
                ids[f"{section}/{sub.name}"] = len(ids)
    return ids


def explore_links(out: str, names: Sequence[str] = (), port: int = 8765,
                  models: tuple[str, str] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The command that opens the demo's folder in the explorer, ``difflens explore OUT``
    (it serves every section of a compare/demo folder), and links into its views (the
    trajectories atlas and the collapse texts' token diff, where those runs are in ``OUT``).

    ``names`` and ``models`` are accepted for older callers and not used: the command no
    longer names the models (their cache paths made it long); add ``--base B --tuned T``
    to it for the explorer's live views."""
    ids = explore_run_ids(out)
    base = f"http://127.0.0.1:{port}"
    links = [("the runs", f"{base}/")]
    for label, run, view in (("the atlas of every trajectory point", "trajectories", "atlas"),
                             ("the token diff of the collapse texts", "collapse", "tokens")):
        if run in ids:
            links.append((label, f"{base}/runs/{ids[run]}/{view}"))
    return f"difflens explore {shlex.quote(str(out))}", links
