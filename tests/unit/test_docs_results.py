"""The docs' results renderer: number formatting, CI lookup, and the CI staleness check."""

import hashlib
import json
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))

import render_results as rr  # noqa: E402


@pytest.mark.parametrize(("x", "kw", "want"), [
    (0.98134, {}, "0.981"),
    (2.7949, {}, "2.79"),
    (44.94, {}, "44.9"),
    (0.5, {}, "0.500"),
    (0.0014, {}, "0.00140"),
    (2.1e-8, {}, "2.10e-8"),
    (-0.0867, {}, "−0.0867"),
    (12355, {}, "12,355"),
    (0.2142, {"pct": True, "sig": 2}, "21%"),
    (0.25, {"signed": True}, "+0.250"),
    (float("nan"), {}, "n/a"),
])
def test_fmt(x, kw, want):
    assert rr.fmt(x, **kw) == want


@pytest.fixture
def stored(tmp_path, monkeypatch):
    """A results folder with one run whose CIs are spelled in each of the summaries' ways."""
    results = tmp_path / "results"
    run = results / "r"
    run.mkdir(parents=True)
    summary = {
        "a": {"kl_mean": 2.0, "kl_ci95": [1.0, 3.0]},
        "b": {"bad_rate": 0.5, "bad_rate_ci_low": 0.4, "bad_rate_ci_high": 0.6},
        "c": [{"layer": 1, "cos": 0.9, "ci_low": 0.8, "ci_high": 0.95},
              {"layer": 2, "cos": 0.4, "ci_low": 0.3, "ci_high": 0.5}],
        "d": {"0.5": {"x": 7, "x_ci": [6, 8]}},
        "e": {"mean": 1.5, "ci95": [1.25, 1.75], "chance": 0.1},
    }
    (run / "summary.json").write_text(json.dumps(summary))
    (run / "run.json").write_text(json.dumps(
        {"command": "difflens x --out r", "commit": "0123456789abcdef", "date": "2026-12-02",
         "figures": {}}))
    monkeypatch.setattr(rr, "RESULTS", results)
    monkeypatch.setattr(rr, "GENERATED", tmp_path / "generated")
    monkeypatch.setattr(rr, "ROOT", tmp_path)
    monkeypatch.setattr(rr, "_CACHE", {})
    return run


def test_est_finds_each_spelling_of_a_ci(stored):
    assert rr.est("r", "a.kl_mean") == "2.00 [1.00, 3.00]"
    assert rr.est("r", "b.bad_rate") == "0.500 [0.400, 0.600]"
    assert rr.est("r", "c[layer=2].cos") == "0.400 [0.300, 0.500]"
    assert rr.est("r", "d[0.5].x") == "7 [6.00, 8.00]"
    assert rr.est("r", "e.mean") == "1.50 [1.25, 1.75]"


def test_a_value_without_its_own_ci_is_refused(stored):
    # "chance" sits beside a mean with a CI, but that CI is not its own.
    with pytest.raises(KeyError, match="no confidence interval"):
        rr.est("r", "e.chance")
    with pytest.raises(KeyError, match="no key 'missing'"):
        rr.num("r", "a.missing")
    with pytest.raises(KeyError, match="no element with layer=3"):
        rr.num("r", "c[layer=3].cos")


def test_check_fails_on_a_stale_table_and_passes_after_rendering(stored, monkeypatch):
    def table_t() -> str:
        return f"| kl |\n|---|\n| {rr.est('r', 'a.kl_mean')} |"

    monkeypatch.setattr(rr, "TABLES", {"t": ("r", table_t)})
    assert rr.main([]) == 0
    table = rr.GENERATED / "t.md"
    assert "2.00 [1.00, 3.00]" in table.read_text()
    assert "`difflens x --out r` at commit `0123456789`" in table.read_text()
    assert rr.check() == []
    # the stored run changes (a new result) but the table was not re-rendered
    summary = json.loads((stored / "summary.json").read_text())
    summary["a"]["kl_mean"] = 2.5
    (stored / "summary.json").write_text(json.dumps(summary))
    monkeypatch.setattr(rr, "_CACHE", {})
    problems = rr.check()
    assert len(problems) == 1 and "t.md differs from its rendering" in problems[0]
    assert "2.50 [1.00, 3.00]" in problems[0]


def test_check_fails_when_a_stored_figure_was_swapped(stored):
    fig = stored / "figures" / "f.png"
    fig.parent.mkdir()
    fig.write_bytes(b"the run's figure")
    meta = json.loads((stored / "run.json").read_text())
    meta["figures"] = {"f.png": hashlib.sha256(b"the run's figure").hexdigest()}
    (stored / "run.json").write_text(json.dumps(meta))
    assert rr.check() == []
    fig.write_bytes(b"another picture")
    assert any("f.png is missing or not the figure the run wrote" in p for p in rr.check())


def test_the_repository_docs_are_rendered_from_their_stored_runs():
    """The committed tables equal a fresh rendering of the committed runs (CI runs this too)."""
    assert rr.check() == []


def _store(results, name: str, command: str, commit: str, date: str, **extra) -> None:
    run = results / name
    run.mkdir(parents=True)
    (run / "summary.json").write_text(json.dumps({"x": 1.0}))
    (run / "run.json").write_text(json.dumps({"command": command, "commit": commit,
                                              "date": date, "figures": {}, **extra}))


def test_check_fails_on_one_command_stored_at_two_commits(stored):
    _store(stored.parent, "r-old", "difflens x --out r", "fedcba9876543210", "2026-11-30")
    problems = rr.check()
    assert any("record the same command `difflens x --out r` at different commits" in p
               for p in problems), problems


def test_check_fails_on_organism_runs_of_another_organism_or_older_than_the_demo(
        stored, monkeypatch):
    from difflens.organism.shipped import manifest

    monkeypatch.setattr(rr, "TABLES", {})  # the docs' tables read keys these runs lack
    shipped = manifest()["organism_id"]
    results = stored.parent
    _store(results, "demo", "difflens demo --out d", "1111111111111111", "2026-12-07",
           organism_id=shipped)
    _store(results, "pair-new", "difflens compare --base organism-base --tuned organism-rl",
           "2222222222222222", "2026-12-07", organism_id=shipped)
    assert rr.check() == []
    _store(results, "pair-old", "difflens collapse probes --base organism-base",
           "3333333333333333", "2026-12-01")
    _store(results, "other-organism", "difflens trajectories run --base organism-base",
           "4444444444444444", "2026-12-08", organism_id="w000000000000")
    page = rr.ROOT / "docs" / "page.md"
    page.parent.mkdir()
    page.write_text('{{ num("demo", "x") }} and {{ est("pair-old", "x") }}, '
                    '{{ num("pair-new", "x") }}')
    problems = rr.check()
    assert any("'pair-old' ran on the organism but records no organism id" in p
               for p in problems), problems
    assert any("'other-organism' ran on organism w000000000000, not the shipped" in p
               for p in problems), problems
    assert any("docs/page.md renders run 'pair-old'" in p and "older than the demo" in p
               for p in problems), problems
    assert not any("'pair-new'" in p for p in problems)


def test_a_run_kept_old_on_purpose_is_named_so(stored, monkeypatch):
    monkeypatch.setattr(rr, "TABLES", {})
    results = stored.parent
    _store(results, "traj", "difflens trajectories run --base organism-base", "5555555555555555",
           "2026-12-01")
    assert any("'traj' ran on the organism but records no organism id" in p
               for p in rr.check())
    new = rr.rename("traj", "not re-run on the shipped organism yet")
    assert new == "traj-earlier-organism"
    meta = json.loads((results / new / "run.json").read_text())
    assert meta["stale"] == "not re-run on the shipped organism yet"
    assert meta["command"].startswith("difflens trajectories run")
    assert not any("traj" in p for p in rr.check())
    (results / new).rename(results / "traj-old")  # stale, but its name does not say so
    assert any("'traj-old' is marked stale but its name does not say so" in p
               for p in rr.check())
