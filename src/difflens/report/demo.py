"""Outputs of ``difflens demo``: the organism's own figures (each model's headline
measures, exact chance distributions, the change each stage made) and the page's intro,
headline and takeaways. Data in (the organism's properties and attribution), figures out;
the sections' figures are ``difflens compare``'s."""

import dataclasses
from collections.abc import Mapping, Sequence
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
    for key, name in HEADLINE_NAMES.items():
        series = [Series(m, [row[MEAN_KEY[key]]["value"]], [row[MEAN_KEY[key]]["ci_low"]],
                         [row[MEAN_KEY[key]]["ci_high"]]) for m, row in organism.items()]
        n = next(iter(organism.values()))[f"{key}_n"]
        heads.append(Figure(f"headline_{key}", name, "bar", [key], series, ylabel=key,
                            caption=f"n = {n} per model, 95% bootstrap CIs."))
    figures.append(small_multiples(
        "headline", "The organism's measured properties, every model",
        [dataclasses.replace(f) for f in heads], cols=2))
    figures += [dataclasses.replace(f, on_page=False) for f in heads]
    for kind in ("d6", "coin"):
        dists = {m: props[_LABEL[m]]["chance_by_kind"].get(kind) for m in organism}
        dists = {m: d for m, d in dists.items() if d}
        if not dists:
            continue
        outcomes = list(next(iter(dists.values()))["mean_distribution"])
        figures.append(Figure(
            f"chance_{kind}", f"Exact {kind} distribution in the world's chance scenes",
            "bar", outcomes, [Series(m, [d["mean_distribution"][o] for o in outcomes])
                              for m, d in dists.items()],
            xlabel="outcome", ylabel="mean probability", hline=1 / len(outcomes),
            caption="The world draws every outcome uniformly (dashed line)."))
    if len(attribution):
        figures.append(attribution_figure(
            "stages_organism", "The organism: the change each stage made", attribution))
    if curves:
        figures.append(training_figure(curves))
    return figures


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
            parts = [f"{stage} {_ci(r)}" for stage, r in rows.items()]
            lines.append(f"{name}, change by stage: " + "; ".join(parts))
    o = summary["organism"]
    if "rl-from-base" in o and "rl" in o:
        lines.append(
            "RL from the base vs RL after SFT, chance TVD: "
            f"{_ci(o['rl-from-base']['chance_tvd'])} vs {_ci(o['rl']['chance_tvd'])}")
    return lines


def explore_runs(names: Sequence[str]) -> tuple[str, ...]:
    """The demo's run folders, in the order ``difflens explore`` is given them (run k of the
    explorer is the k-th): the capture of the last model against the base first."""
    return (f"capture/{names[0]}-vs-{names[-1]}", "trajectories", "collapse", "concepts",
            f"control/{names[-1]}", "themes")


def explore_links(out: str, names: Sequence[str], port: int = 8765,
                  models: tuple[str, str] | None = None) -> tuple[str, list[tuple[str, str]]]:
    """The command that opens the demo's runs in the explorer (with ``models``, base and
    last, for its live views), and links into its views."""
    runs = explore_runs(names)
    folders = [f"{out}/{r}".rstrip("/") for r in runs]
    base = f"http://127.0.0.1:{port}"
    links = [("the runs", f"{base}/"),
             ("the atlas of every trajectory point",
              f"{base}/runs/{runs.index('trajectories')}/atlas"),
             ("the token diff of the collapse texts",
              f"{base}/runs/{runs.index('collapse')}/tokens")]
    live = f" --base {models[0]} --tuned {models[1]}" if models else ""
    return "difflens explore " + " ".join(folders) + live, links
