"""The index page: a table of contents that stays in view, takeaways per section, each
figure once under its own title, small multiples instead of one chart per item; the lineage
attribution table, the compare/demo figures and the demo's explorer command."""

import html
import json
import math
import re
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd
import pytest

from difflens.analysis.attribution import attribute
from difflens.analysis.bootstrap import Estimate
from difflens.report.compare import (
    ATTRIBUTION_HEADER,
    NEAR_ZERO_NOTE,
    attribution_figure,
    attribution_footnotes,
    attribution_html,
    attribution_mapping,
    attribution_rows,
    probe_gain_note,
    stage_takeaways,
)
from difflens.report.figures import (
    Figure,
    Section,
    Series,
    format_ci,
    format_percent,
    format_sig,
    small_multiples,
    write_index,
)

matplotlib.use("Agg")


def _bar(name: str, title: str, values: list[float], **kw: object) -> Figure:
    return Figure(name, title, "bar", ["a", "b"], [Series("base", values),
                                                   Series("tuned", values[::-1])], **kw)


def test_small_multiples_draws_every_panel_once():
    panels = [_bar(f"p{i}", f"probe {i}", [0.1 * i, 0.2]) for i in range(5)]
    sm = small_multiples("probes", "All probes", panels, cols=2)
    fig = sm.plotly()
    assert len(fig.data) == 2 * 5  # two series per panel
    assert [t.y for t in fig.data[:2]] == [(0.0, 0.2), (0.2, 0.0)]
    assert sum(t.showlegend is not False for t in fig.data) == 2  # one legend for all
    titles = [a.text for a in fig.layout.annotations]
    assert titles == [f"probe {i}" for i in range(5)]
    mfig = sm.matplotlib()
    drawn = [ax for ax in mfig.axes if ax.get_title()]
    assert [ax.get_title() for ax in drawn] == titles  # 5 panels, the 6th cell is off


def test_index_page_has_a_contents_takeaways_and_each_figure_once(tmp_path):
    hidden = _bar("probe_d6", "Exact answer distribution: d6", [0.5, 0.5], on_page=False)
    shown = _bar("probes_tvd", "Distance from uniform", [0.1, 0.4], caption="CI over phrasings")
    grid = small_multiples("probe_answers", "Every probe", [hidden, hidden])
    path = tmp_path / "index.html"
    kl = Estimate(value=0.5, ci_low=0.4, ci_high=0.6, n=10, resampled="tokens")
    write_index(path, "report", "intro text", [shown], {"KL": kl.to_json(), "KL again": kl},
                takeaways=["KL 0.5 [0.4, 0.6]", "tuned collapses"],
                sections=[Section("Mode collapse", "about collapse", [hidden, grid],
                                  ["Vendi 1.7 [1.6, 1.8] vs 6.3 [6.1, 6.4]"]),
                          ("Old style", "a section given as a tuple", [])],
                links=[("the atlas", "http://127.0.0.1:8765/runs/1/atlas")],
                explore_command="difflens explore out out/trajectories")
    page = path.read_text()
    nav = re.search(r"<nav.*?</nav>", page, re.S).group(0)  # type: ignore[union-attr]
    # the contents list every section and every figure on the page, with working anchors
    for anchor in re.findall(r"href='#([^']+)'", nav):
        assert f"id='{anchor}'" in page, anchor
    assert "Mode collapse" in nav and "Every probe" in nav and "Old style" in nav
    assert "position:sticky" in page
    # takeaways come first in their section, as a list
    assert page.index("Takeaways") < page.index("about collapse")
    assert "<li>Vendi 1.7 [1.6, 1.8] vs 6.3 [6.1, 6.4]</li>" in page
    # each figure's title appears once as a heading, and not again inside the chart
    assert page.count("<h3>Distance from uniform</h3>") == 1
    assert '"title":{"text":"Distance from uniform"' not in page
    # a panel shown in a small-multiples figure is not drawn on its own
    assert "<h3>Exact answer distribution: d6</h3>" not in page
    assert "difflens explore out out/trajectories" in page
    assert "href='http://127.0.0.1:8765/runs/1/atlas'" in page
    assert page.count("0.500 [0.400, 0.600] n=10") == 2  # the headline table, both rows


def test_a_series_of_estimates_takes_their_values_and_cis():
    a = Estimate(value=0.5, ci_low=0.4, ci_high=0.6, n=10, resampled="prompts")
    s = Series.of("base", [a, a.to_json(), float("nan")])
    assert list(s.y[:2]) == [0.5, 0.5] and list(s.lo[:2]) == [0.4, 0.4]  # type: ignore[index]
    assert list(s.hi[:2]) == [0.6, 0.6]  # type: ignore[index]
    # a metric a summary could not estimate is a bare NaN: no value, no CI
    assert all(math.isnan(v[2]) for v in (s.y, s.lo, s.hi))  # type: ignore[index]


# -- the lineage attribution table and the compare/demo report ---------------------------------

LINEAGE = ["base", "sft", "rl"]


def _stage(value: float | None, lo: float | None, hi: float | None, share: float | None,
           n: int = 200, resampled: str = "openings", **extra: object) -> dict[str, object]:
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": n, "resampled": resampled,
            "share": share, **extra}


def _no_double_or_hyphen_minus(rows: list[list[str]]) -> None:
    for row in rows:
        for cell in row:
            assert "--" not in cell and "−-" not in cell and "-−" not in cell, cell
            assert "-0%" not in cell and "−0%" not in cell, cell
            # a negative number has the one minus sign U+2212, never the ASCII hyphen
            assert not re.search(r"(?<![\w.])-\d", cell), cell


def test_attribution_rows_put_stages_in_lineage_order_and_metrics_in_section_order():
    # stored out of order: rl before sft (as a JSON file sorted by key has them), and the
    # metrics as text sorts them (theme_share_10 before theme_share_2)
    att = {
        "theme_share_10": {"rl": _stage(-0.04, -0.05, -0.03, 0.5),
                           "sft": _stage(-0.04, -0.05, -0.03, 0.5)},
        "theme_share_2": {"rl": _stage(0.3, 0.2, 0.4, 0.75), "sft": _stage(0.1, 0.05, 0.15, 0.25)},
        "chance_tvd": {"rl": _stage(0.3, 0.25, 0.35, 0.9), "sft": _stage(0.03, 0.01, 0.05, 0.1)},
        "entropy": {"rl": _stage(0.3, 0.25, 0.35, 1.0), "sft": _stage(0.0, -0.01, 0.01, 0.0)},
        "organism_reward": {"rl": _stage(0.5, 0.4, 0.6, 0.5), "sft": _stage(0.5, 0.4, 0.6, 0.5)},
        "my_metric": {"rl": _stage(1.0, 0.9, 1.1, 0.5), "sft": _stage(1.0, 0.9, 1.1, 0.5)},
    }
    rows = attribution_rows(att, LINEAGE, {"theme_share_2": "sailed boat"})
    assert all(len(r) == len(ATTRIBUTION_HEADER) for r in rows)
    assert [r[0] for r in rows[::2]] == ["organism_reward", "entropy", "chance_tvd",
                                         "theme_share_2 (sailed boat)", "theme_share_10",
                                         "my_metric"]
    assert [r[1] for r in rows] == ["base → sft", "sft → rl"] * 6
    # the stage's own numbers, not its neighbour's
    assert rows[4][2] == "0.0300 [0.0100, 0.0500]" and rows[5][2] == "0.300 [0.250, 0.350]"
    assert rows[0][4] == "200 openings"
    _no_double_or_hyphen_minus(rows)


def test_attribution_rows_hide_shares_of_a_total_that_is_not_distinguishable_from_zero():
    att = {
        # the stages cancel out: total -0.024 of 0.175 moved (shares 408% / -308% today)
        "theme_share_3": {"sft": _stage(0.0751, 0.0628, 0.0867, -3.08),
                          "rl": _stage(-0.0995, -0.110, -0.0885, 4.08)},
        # a stored total CI that includes 0 (shares would read 67% / 33%)
        "vendi": {"sft": _stage(0.2, -0.1, 0.5, 0.667, total_ci_low=-0.4, total_ci_high=0.9),
                  "rl": _stage(0.1, -0.2, 0.4, 0.333, total_ci_low=-0.4, total_ci_high=0.9)},
        # the attribution found the total ~0 and stored no share
        "self_bleu": {"sft": _stage(0.1, 0.05, 0.15, None), "rl": _stage(-0.1, -0.15, -0.05, None)},
        # a clear total: shares shown, a tiny negative share rounds to 0% (never -0%)
        "organism_chance_tvd": {"sft": _stage(-2.93e-4, -0.0056, 0.0052, -0.00083),
                                "rl": _stage(0.354, 0.339, 0.370, 1.00083)},
    }
    rows = {(r[0], r[1]): r for r in attribution_rows(att, LINEAGE)}
    for metric in ("theme_share_3", "vendi", "self_bleu"):
        for stage in ("base → sft", "sft → rl"):
            assert rows[(metric, stage)][3] == "— †", (metric, rows[(metric, stage)])
    assert rows[("organism_chance_tvd", "base → sft")][3] == "0%"
    assert rows[("organism_chance_tvd", "sft → rl")][3] == "100%"
    assert rows[("organism_chance_tvd", "base → sft")][2] == "−2.93e-4 [−0.00560, 0.00520]"
    assert rows[("theme_share_3", "sft → rl")][2] == "−0.0995 [−0.110, −0.0885]"
    assert attribution_footnotes(list(rows.values())) == [NEAR_ZERO_NOTE]
    assert "not distinguishable from 0" in NEAR_ZERO_NOTE
    clear = [r for k, r in rows.items() if k[0] == "organism_chance_tvd"]
    assert attribution_footnotes(clear) == []
    _no_double_or_hyphen_minus(list(rows.values()))


def test_attribution_rows_show_a_stored_share_ci_and_a_negative_share_with_one_minus():
    att = {"attractor_strength": {
        "sft": _stage(-0.119, -0.181, -0.0562, -0.286, n=16, resampled="prompts",
                      share_ci_low=-0.45, share_ci_high=-0.1),
        "rl": _stage(0.534, 0.465, 0.599, 1.286, n=16, resampled="prompts",
                     share_ci_low=1.1, share_ci_high=1.45)}}
    rows = attribution_rows(att, LINEAGE)
    assert rows[0][1:] == ["base → sft", "−0.119 [−0.181, −0.0562]", "−29% [−45%, −10%]",
                           "16 prompts"]
    assert rows[1][3] == "129% [110%, 145%]"
    # the older spelling of a stored run (the change under "delta") reads the same
    old = {"attractor_strength": {s: {("delta" if k == "value" else k): v for k, v in r.items()}
                                  for s, r in att["attractor_strength"].items()}}
    assert attribution_rows(old, LINEAGE) == rows
    _no_double_or_hyphen_minus(rows)


def test_an_undefined_change_says_why_and_can_be_left_out():
    att = {"concept_cosine_L0": {"rl": _stage(None, None, None, None, n=210, resampled="items"),
                                 "sft": _stage(None, None, None, None, n=210, resampled="items")},
           "concept_cosine_L1": {"rl": _stage(-0.42, -0.52, -0.32, 0.75, resampled="items"),
                                 "sft": _stage(-0.14, -0.18, -0.11, 0.25, resampled="items")}}
    rows = attribution_rows(att, LINEAGE)
    assert [r[0] for r in rows] == ["concept_cosine_L0"] * 2 + ["concept_cosine_L1"] * 2
    assert rows[0][2].startswith("undefined: ") and "0/0" in rows[0][2]
    assert rows[0][3] == "—" and not any("nan" in c.lower() for r in rows for c in r)
    kept = attribution_rows(att, LINEAGE, keep_undefined=False)
    assert [r[0] for r in kept] == ["concept_cosine_L1"] * 2
    assert attribution_footnotes(rows) == []  # an undefined change is not a ~0 total


def test_number_formats_have_one_minus_and_no_negative_zero():
    assert format_ci(-0.0001, [-0.0004, 0.0002]) == "0.000 [0.000, 0.000]"
    assert format_ci(-0.1, [-0.2, -0.05], 12) == "−0.100 [−0.200, −0.050] n=12"
    assert format_ci(float("nan"), [float("nan")] * 2) == "undefined"
    assert format_percent(-0.004) == "0%" and format_percent(-0.21) == "−21%"
    assert format_sig(-0.0867) == "−0.0867" and format_sig(0) == "0"


def _table() -> pd.DataFrame:
    """Attribution rows of three metrics as the compare pipeline stores them: planted
    changes (entropy +0.5 then +1.5 nats), a stage change that cancels out (theme share),
    and a metric with no finite value (a layer-0 cosine)."""
    rng = np.random.default_rng(0)
    unit = rng.normal(0, 1, 300)
    noise = lambda: rng.normal(0, 0.05, 300)  # noqa: E731
    tables = []
    for metric, (d1, d2), what in (("entropy", (0.5, 1.5), "texts"),
                                   ("theme_share_3", (0.3, -0.29), "prompts")):
        v = {"base": unit + noise(), "sft": unit + d1 + noise(), "rl": unit + d1 + d2 + noise()}
        a = attribute(v, LINEAGE, seed=0, n_boot=200, resampled=what)
        tables.append(a.table.assign(metric=metric, section="s"))
    undefined = tables[0].assign(metric="concept_cosine_L0", delta=np.nan, ci_low=np.nan,
                                 ci_high=np.nan, share=np.nan)
    # stored with rl's row first
    return pd.concat([t.iloc[::-1] for t in (tables[1], undefined, tables[0])],
                     ignore_index=True)


def test_attribution_html_and_takeaways_from_a_stored_table():
    table = _table()
    assert {"total", "total_ci_low", "total_ci_high", "resampled"} <= set(table.columns)
    page = attribution_html(table)
    # metrics in section order, stages in lineage order, each row once
    assert (page.index(">entropy<") < page.index(">concept_cosine_L0<")
            < page.index(">theme_share_3<"))
    body = page[page.index(">entropy<"):]
    assert body.index("base → sft") < body.index("sft → rl")
    # entropy: shares 25% / 75% with their stored CIs; the theme share: a ~0 total
    t = table[(table.metric == "entropy")].set_index("stage")
    assert f"{t.loc['sft', 'share']:.0%} [{format_percent(t.loc['sft', 'share_ci_low'])}" in page
    assert "— †" in page and html.escape(NEAR_ZERO_NOTE) in page
    assert "undefined: a concept vector is zero" in page and "nan" not in page.lower()
    assert "-0%" not in page and "−0%" not in page
    lines = stage_takeaways(table)
    assert lines and lines[0].startswith("entropy: the sft → rl stage moved it most")
    assert "75% of the total" in lines[0] and "texts" in lines[0]
    theme = next(x for x in lines if x.startswith("theme_share_3"))
    assert "of the total" not in theme  # no share of a ~0 total
    m = attribution_mapping(table)
    assert list(m["entropy"]) == ["rl", "sft"] and m["entropy"]["sft"]["from"] == "base"


def test_attribution_figure_gives_each_metric_its_own_panel_and_unit():
    table = _table()
    fig = attribution_figure("stages_s", "s: the change each stage made", table,
                             names={"theme_share_3": "wedding happy joy"})
    chart = fig.plotly()
    titles = [a.text for a in chart.layout.annotations]
    assert titles == ["Next-token entropy", "Theme 3 share (wedding happy joy)"]
    ytitles = [chart.layout.yaxis.title.text, chart.layout.yaxis2.title.text]
    assert ytitles == ["change (nats/token)", "change (share of segments)"]
    # one bar per stage in lineage order, in each panel
    assert [t.name for t in chart.data] == ["sft", "rl", "sft", "rl"]
    sft = table[(table.metric == "entropy") & (table.stage == "sft")].iloc[0]
    assert chart.data[0].y[0] == pytest.approx(sft["delta"])
    assert "concept_cosine_L0" in fig.caption and "0/0" in fig.caption  # left out, with why
    assert "n = 300 texts (Next-token entropy); 300 prompts (Theme 3 share" in fig.caption
    # the organism's n says what it counts, given per metric
    org = table[table.metric == "entropy"].assign(metric="organism_entropy")
    fig = attribution_figure("o", "o", org, units={"organism_entropy": "texts"})
    assert "n = 300 texts." in fig.caption
    assert len(fig.matplotlib().axes) == 1


def test_probe_gain_whose_ci_includes_zero_is_flagged():
    def themes(lo: float, hi: float) -> dict[str, object]:
        gain = {"value": 0.0, "ci_low": lo, "ci_high": hi, "n": 48, "resampled": "prompts"}
        return {"best_layer": 2, "predictors": {"probe": {"2": {"kl_gain": gain}}}}

    note = probe_gain_note(themes(-1e-4, 8e-5))
    assert "no better than the marginal baseline" in note and "includes 0" in note
    assert "-0.000" not in note and "−0.000" not in note
    assert probe_gain_note(themes(0.05, 0.2)) == ""
    assert probe_gain_note({"n_prompts": 3}) == ""


# -- the demo's figures and its explorer command ---------------------------------------------


def test_chance_outcomes_in_natural_order_with_the_tvd_ci_and_n():
    from difflens.report.demo import chance_caption, organism_figures, outcome_order

    alphabetical = ["five", "four", "one", "six", "three", "two"]
    assert outcome_order(alphabetical) == ["one", "two", "three", "four", "five", "six"]
    assert outcome_order(["10", "2", "1"]) == ["1", "2", "10"]
    assert outcome_order(["heads", "tails"]) == ["heads", "tails"]
    tvd = {"value": 0.35, "ci_low": 0.33, "ci_high": 0.37, "n": 20, "resampled": "scenes"}
    dist = {"mean_distribution": {o: 1 / 6 for o in alphabetical}, "tvd": tvd}
    assert "rl 0.350 [0.330, 0.370] (n = 20 scenes)" in chance_caption({"rl": dist})
    est = {"value": 0.5, "ci_low": 0.4, "ci_high": 0.6, "n": 200, "resampled": "openings"}
    row = {"reward_mean": est, "reward_n": 200, "entropy_mean": est, "entropy_n": 200,
           "celebration_share": est, "celebration_share_n": 200, "chance_tvd": est,
           "chance_tvd_n": 200}
    props = {label: {"chance_by_kind": {"d6": dist}} for label in LINEAGE}
    figs = {f.name: f for f in organism_figures(props, {m: row for m in LINEAGE},
                                                pd.DataFrame())}
    assert list(figs["chance_d6"].x) == ["one", "two", "three", "four", "five", "six"]
    assert "n = 20 scenes" in figs["chance_d6"].caption
    assert "n = 200 openings per model" in figs["headline_reward"].caption


def test_demo_prints_explore_out_and_links_match_the_explorer(tmp_path: Path):
    from difflens.explore.runs import open_runs
    from difflens.report.demo import explore_links, explore_run_ids

    out = tmp_path / "demo"
    for rel in ("capture/base-vs-rl", "trajectories", "collapse", "control/base", "themes"):
        (out / rel).mkdir(parents=True)
    (out / "summary.json").write_text(json.dumps(
        {"sections": ["capture", "concepts", "trajectories", "collapse", "control", "themes"]}))
    for rel in ("capture/base-vs-rl", "trajectories", "collapse", "control/base", "themes"):
        (out / rel / "summary.json").write_text("{}")
    command, links = explore_links(str(out), LINEAGE, models=("/cache/base", "/cache/rl"))
    assert command == f"difflens explore {out}"  # no cache paths
    served = {r.name.removeprefix("demo").lstrip("/"): r.id for r in open_runs([out])}
    assert explore_run_ids(out) == served
    hrefs = dict(links)
    assert hrefs["the atlas of every trajectory point"].endswith(
        f"/runs/{served['trajectories']}/atlas")
    assert hrefs["the token diff of the collapse texts"].endswith(
        f"/runs/{served['collapse']}/tokens")


def test_controllability_uses_a_log_axis_when_ratios_span_more_than_ten_times():
    from difflens.report.control import controllability_figure, wide_ratio_span

    def cells(ratios: list[float]) -> pd.DataFrame:
        return pd.DataFrame({"controller": ["none"] + ["open_loop"] * (len(ratios) - 1),
                             "gain": [0.0] + [0.5 * (i + 1) for i in range(len(ratios) - 1)],
                             "ppl_ratio": ratios, "bad_rate": np.linspace(0.6, 0.1, len(ratios))})

    wide = controllability_figure(cells([1.0, 1.2, 1.5, 45.0]), "")
    assert wide.plotly().layout.xaxis.type == "log"
    assert wide.matplotlib().axes[0].get_xscale() == "log"
    assert "logarithmic" in wide.caption
    narrow = controllability_figure(cells([1.0, 1.2, 1.5, 3.0]), "")
    assert narrow.plotly().layout.xaxis.type != "log"
    assert narrow.matplotlib().axes[0].get_xscale() == "linear"
    assert not wide_ratio_span([1.0, 9.0]) and wide_ratio_span([0.5, 45.0])
