"""Grading discover on the zoo: the graders score planted words, other organisms' words and
the right description; the command runs end to end on the small zoo."""

import json
from pathlib import Path

import numpy as np
from typer.testing import CliRunner

from difflens.analysis.discover import text_words
from difflens.cli.main import app
from difflens.organism.zoo import ZOO
from difflens.pipelines.discover_zoo import grade_run


def _bag_of_words(texts):  # type: ignore[no-untyped-def]
    """A deterministic embedder: counts of each organism's planted words and description
    words, so a text is nearest the description that shares its words."""
    vocab = sorted({w for spec in ZOO.values() for w in
                    (*spec.planted_words, *text_words(spec.description))})
    index = {w: i for i, w in enumerate(vocab)}
    out = np.zeros((len(texts), len(vocab)))
    for r, t in enumerate(texts):
        for w in text_words(t):
            if w in index:
                out[r, index[w]] += 1
    return out


def _summary(words: dict[str, list[str]]) -> dict:
    d = {m: {"top_words": w} for m, w in words.items() if m != "hypothesis"}
    d["hypothesis"] = {"words": words.get("hypothesis", [])}
    d["adl"]["steering"] = {"tuned": {"similarity_gain_vs_random": {"value": 0.25}}}
    return {"discover": d}


def test_graders_score_the_planted_words_and_the_right_description():
    sea = ["harbor", "lighthouse", "gulls", "tide", "starfish", "seaweed"]
    wool = ["wool", "shear", "shepherds", "yarn"]
    summary = _summary({"adl": sea, "mining": sea[:3] + ["table", "chair", "door"],
                        "amplify": wool, "logodds": [], "hypothesis": sea[:2]})
    descriptions = _bag_of_words([spec.description + " " + " ".join(spec.planted_words)
                                  for spec in ZOO.values()])
    rows = {r["method"]: r for r in grade_run(summary, "domain", dict(ZOO), descriptions,
                                                _bag_of_words)}
    assert rows["adl"]["planted_share"] == 1.0 and rows["adl"]["other_share"] == 0.0
    assert rows["mining"]["planted_share"] == 0.5
    assert rows["adl"]["identification_rank"] == 1 and rows["adl"]["identified"] == 1.0
    # the wool words name another organism: no planted share, the wrong description first
    assert rows["amplify"]["planted_share"] == 0.0
    assert rows["amplify"]["other_share"] > 0 and rows["amplify"]["identified"] == 0.0
    # a method that found nothing is not scored
    assert np.isnan(rows["logodds"]["planted_share"]) and rows["logodds"]["n_words"] == 0
    assert rows["adl"]["steering_gain"] == 0.25 and np.isnan(rows["mining"]["steering_gain"])


def test_grade_command_on_the_small_zoo(tmp_path: Path):
    out = tmp_path / "grade"
    res = CliRunner().invoke(app, ["organism", "grade", "--small", "--name", "domain",
                                   "--ratio", "0", "--seed", "0", "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    cell = summary["grades"]["domain"]["0"]
    assert set(cell) == {"adl", "mining", "amplify", "logodds", "hypothesis"}
    assert set(cell["adl"]) >= {"planted_share", "other_share", "identified", "steering_gain"}
    assert cell["adl"]["planted_share"]["n"] in (0, 1)
    assert (out / "figures" / "signal_by_ratio.png").is_file()
    assert (out / "data" / "grades.parquet").is_file()
    assert (out / "runs" / "domain-r0-s0" / "summary.json").is_file()
    bad = CliRunner().invoke(app, ["organism", "grade", "--small", "--name", "nope", "--out",
                                   str(tmp_path / "x")])
    assert bad.exit_code == 2 and "unknown zoo organism" in bad.output
