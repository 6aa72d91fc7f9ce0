"""Grading ``discover`` on the zoo: every method on every narrow organism, at every mixing
ratio and seed, scored against the planted truth, offline and deterministic.

For each zoo build (``organism.zoo``: name, ratio of ordinary stories mixed in, seed) the
discover pipeline runs on the shipped base against the build, with world stories as the
unrelated texts and world openings as the neutral openings (the organism's analogue of
pretraining text; ``texts``/``openings`` below), and the build's own narrow documents as the
fine-tuning texts. Three graders:

- ``planted_share``: the share of a method's top 20 words that match the organism's
  planted word set (``analysis.discover.words_match``), and ``other_share``, the mean of the
  same share against the other organisms' sets (what a method that lists generic story words
  scores by chance);
- ``identification_rank``: the rank (1 = first of ``len(ZOO)``) of the organism's true
  description among all organisms' descriptions, by cosine between the sentence-encoder
  embeddings of the method's words and of each description;
- ``steering_gain``: the ADL's steered samples' similarity to the fine-tuning texts minus
  random-direction steering's at the same strength (``adl.steering.tuned``).

Per (organism, ratio, method), each grade is averaged over seeds with a 95% bootstrap CI
over seeds (``n`` seeds). ``OUT/summary.json``: ``grades.<organism>.<ratio>.<method>.
<grader>`` estimates and ``runs`` (every run's folder and seconds); ``OUT/data/grades``
(one row per run and method) and ``grade_summary``; the figure ``signal_by_ratio`` (the
field's curve: planted share against the mixing ratio, a panel per organism).
"""

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import check_writable, rich_progress, write_json_atomic
from difflens.analysis import discover as D
from difflens.analysis.bootstrap import bootstrap_mean
from difflens.models.encoders import DEFAULT_ENCODER, embedder
from difflens.models.loading import load_model
from difflens.models.pair import ModelPair
from difflens.pipelines.discover import DiscoverConfig, run_discover
from difflens.pipelines.result import InstrumentResult
from difflens.report.figures import Figure, Series, small_multiples, write_index
from difflens.report.tables import write_table

GRADED = ("adl", "mining", "amplify", "crosscoder", "diff_sae", "logodds", "hypothesis")
"""Graded when they ran (the dictionary methods only when ``config.methods`` names them)."""
N_TEXTS, N_OPENINGS, N_FINETUNE = 64, 24, 64


@dataclasses.dataclass(frozen=True)
class ZooGradeResult(InstrumentResult):
    grades: pd.DataFrame = dataclasses.field(default_factory=pd.DataFrame)


def zoo_inputs(seed: int = 0) -> tuple[list[str], list[str]]:
    """World stories (the texts) and world openings (the openings) the zoo is graded on,
    drawn from seeds no build trains on."""
    from difflens.organism import world as W
    from difflens.organism.truth import organism_openings

    stories = W.generate_stories(N_TEXTS, seed + 9_000_011)
    return [s.text for s in stories], list(organism_openings(N_OPENINGS, seed=seed + 9_000_013))


def _words(summary: dict[str, Any], method: str) -> list[str]:
    d = summary["discover"]
    return list(d["hypothesis"]["words"] if method == "hypothesis" else d[method]["top_words"])


def grade_run(summary: dict[str, Any], name: str, specs: dict[str, Any],
              desc_emb: np.ndarray, emb: Any) -> list[dict[str, Any]]:
    """The graders' scores of one discover run on organism ``name`` (a row per method)."""
    names = list(specs)
    rows = []
    for method in GRADED:
        if method != "hypothesis" and method not in summary["discover"]:
            continue
        words = _words(summary, method)
        own = D.planted_share(words, specs[name].planted_words)
        others = [D.planted_share(words, specs[o].planted_words) for o in names if o != name]
        rank = (D.identification_rank(np.asarray(emb([", ".join(words)]))[0], desc_emb,
                                      names.index(name)) if words else np.nan)
        rows.append({"method": method, "n_words": len(words), "planted_share": own,
                     "other_share": float(np.nanmean(others)) if words else np.nan,
                     "identification_rank": rank,
                     "identified": float(rank == 1) if words else np.nan,
                     "top_words": " ".join(words[:20])})
    steer = summary["discover"].get("adl", {}).get("steering", {}).get("tuned", {})
    gain = steer.get("similarity_gain_vs_random", {}).get("value", np.nan)
    for r in rows:
        r["steering_gain"] = gain if r["method"] == "adl" else np.nan
    return rows


def run_discover_zoo(out: Path, *, names: Sequence[str] | None = None,
                     ratios: Sequence[int] | None = None, seeds: Sequence[int] = (0, 1, 2),
                     config: DiscoverConfig | None = None, small: bool = False,
                     encoder: str = DEFAULT_ENCODER, progress: bool = False) -> ZooGradeResult:
    """Build (or reuse) every zoo organism of ``names`` x ``ratios`` x ``seeds``, run
    discover on each against the base, grade it, and write the table and its figure."""
    from difflens.organism.zoo import RATIOS, ZOO, build_zoo_organism, zoo_spec

    names = list(ZOO) if names is None else [zoo_spec(n).name for n in names]
    ratios = list(RATIOS if ratios is None else ratios)
    config = config or DiscoverConfig()
    check_writable(out)
    emb = embedder(encoder)
    desc_emb = np.asarray(emb([ZOO[n].description for n in ZOO]))
    texts, openings = zoo_inputs()
    rows: list[dict[str, Any]] = []
    runs: list[dict[str, Any]] = []
    bases: dict[str, Any] = {}
    with rich_progress(progress) as bar:
        tick = bar("zoo: build, discover, grade", len(names) * len(ratios) * len(seeds))
        for name in names:
            for ratio in ratios:
                for seed in seeds:
                    t0 = time.perf_counter()
                    org = build_zoo_organism(name, ratio, seed, small=small)
                    built = time.perf_counter() - t0
                    if str(org.base_path) not in bases:  # every build shares one base
                        bases[str(org.base_path)] = load_model(str(org.base_path))
                    pair = ModelPair(bases[str(org.base_path)],
                                     load_model(str(org.tuned_path)))
                    folder = out / "runs" / f"{name}-r{ratio}-s{seed}"
                    t1 = time.perf_counter()
                    res = run_discover(pair, folder, dataclasses.replace(config, seed=seed),
                                       texts=texts, openings=openings,
                                       finetune_texts=org.finetune_texts()[:N_FINETUNE],
                                       index=False)
                    seconds = time.perf_counter() - t1
                    for r in grade_run(res.summary(), name, dict(ZOO), desc_emb, emb):
                        rows.append({"organism": name, "ratio": ratio, "seed": seed, **r})
                    runs.append({"organism": name, "ratio": ratio, "seed": seed,
                                 "folder": str(folder.relative_to(out)),
                                 "discover_s": seconds, "build_s": built,
                                 "build_info_s": org.build_info.get("times_s", {})})
                    tick(1, f"{name} r{ratio} s{seed}")
    grades = pd.DataFrame(rows)
    summary: dict[str, Any] = {"organisms": {n: ZOO[n].as_json() for n in names},
                               "ratios": ratios, "seeds": list(seeds), "runs": runs,
                               "texts": "world stories (seed 9000011), world openings",
                               "grades": {}}
    agg = []
    for (name, ratio, method), g in grades.groupby(["organism", "ratio", "method"], sort=False):
        cell = {}
        for grader in ("planted_share", "other_share", "identified", "identification_rank",
                       "steering_gain"):
            e = bootstrap_mean(g[grader].to_numpy(float), seed=0, resampled="seeds")
            cell[grader] = e.to_json()
            agg.append({"organism": name, "ratio": int(ratio), "method": method,
                        "grader": grader, **e.to_json()})
        summary["grades"].setdefault(name, {}).setdefault(str(ratio), {})[method] = cell
    table = pd.DataFrame(agg)
    write_table(grades, out / "data", "grades")
    write_table(table, out / "data", "grade_summary")
    panels = []
    for name in names:
        series = []
        for method in GRADED:
            t = table[(table.organism == name) & (table.method == method)
                      & (table.grader == "planted_share")].sort_values("ratio")
            if len(t):
                series.append(Series(method, list(t["value"]), list(t["ci_low"]),
                                     list(t["ci_high"])))
        panels.append(Figure(f"signal_{name}", name, "line", ratios, series,
                             xlabel="ordinary stories per narrow document",
                             ylabel="planted share of top 20"))
    fig = small_multiples("signal_by_ratio", "Planted words in each method's top 20, by "
                          "mixing ratio", panels,
                          caption=f"Mean over {len(seeds)} seeds, 95% bootstrap CI over seeds.")
    fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    write_index(out / "index.html", "difflens discover: the zoo, graded",
                "<p>Every discover method on every narrow organism, graded against its "
                "planted words.</p>", [fig], {"runs": len(runs)})
    return ZooGradeResult(out=out, summary_json=summary, figures=[fig], grades=grades)


__all__ = ["GRADED", "ZooGradeResult", "grade_run", "run_discover_zoo", "zoo_inputs"]
