"""The index page: a table of contents that stays in view, takeaways per section, each
figure once under its own title, small multiples instead of one chart per item."""

import math
import re

import matplotlib

from difflens.analysis.bootstrap import Estimate
from difflens.report.figures import Figure, Section, Series, small_multiples, write_index

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
