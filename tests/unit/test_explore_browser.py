"""The explorer in a real browser: Playwright drives Debian's headless ``chromium`` over
small run folders with planted content, and checks what a person would see. A screenshot
of every view goes to a temporary folder, or to ``$DIFFLENS_SCREENSHOTS`` when set.

Needs ``pip install playwright`` and ``apt-get install chromium`` (never ``playwright
install``: it downloads a browser); without them the tests skip, and fail under CI.
"""

import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from test_explore import (
    KL_MAX,
    KL_MAX_T,
    MAX_ROW,
    N_BIG,
    make_broken_runs,
    make_divergence_run,
    make_trajectories_run,
)

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _missing() -> str | None:
    """What the browser tests lack, as one line (``None``: nothing)."""
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "playwright is not installed: pip install playwright (no `playwright install`)"
    if CHROMIUM is None:
        return "chromium is not on PATH: apt-get install -y chromium"
    return None


@pytest.fixture(scope="module")
def shots(tmp_path_factory: pytest.TempPathFactory) -> Path:
    where = os.environ.get("DIFFLENS_SCREENSHOTS")
    folder = Path(where) if where else tmp_path_factory.mktemp("screenshots")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The explorer over a trajectories run, a divergence run and a run without a summary,
    served in a thread (``None`` when the browser cannot run)."""
    if _missing() is not None:
        yield None
        return
    from difflens.explore import create_app
    from difflens.explore.app import serve_in_thread

    root = tmp_path_factory.mktemp("runs")
    folders = [make_trajectories_run(root), make_divergence_run(root),
               make_broken_runs(root / "broken")["missing"]]
    with serve_in_thread(create_app(folders)) as srv:
        yield srv.url


@pytest.fixture(scope="module")
def browser(site: str | None) -> Iterator[Any]:
    if site is None:
        yield None
        return
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=str(CHROMIUM), headless=True,
                              args=["--no-sandbox", "--use-angle=swiftshader",
                                    "--enable-unsafe-swiftshader"])
        yield b
        b.close()


@pytest.fixture
def page(require: Callable[[bool, str], None], browser: Any, site: str | None) -> Iterator[Any]:
    require(browser is not None, _missing() or "the browser did not start")
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(site)
    yield pg
    pg.close()
    assert not errors, errors


def test_runs_list_shows_each_run(page: Any, shots: Path) -> None:
    panels = page.locator("section.run")
    assert panels.count() == 3
    names = [panels.nth(i).locator("h2").inner_text() for i in range(3)]
    assert names == ["traj-run", "coll-run", "no-summary"]
    assert "no summary.json in this folder" in panels.nth(2).locator(".error").inner_text()
    assert panels.nth(0).locator("a", has_text="atlas").count() == 1
    assert panels.nth(1).locator("a", has_text="token diff").count() == 1
    page.screenshot(path=str(shots / "runs.png"), full_page=True)


def test_overview_shows_summary_and_figures(page: Any, shots: Path) -> None:
    page.click("section.run[data-run='0'] a:text('overview')")
    page.wait_for_selector("#summary")
    assert "planted-value-42" in page.locator("#summary").inner_text()
    assert "1.5 [1.25, 1.75] n=20" in page.locator("#summary").inner_text()
    img = page.locator("#figures img")
    assert img.count() == 1
    page.wait_for_function("document.querySelector('#figures img').naturalWidth > 0")
    page.screenshot(path=str(shots / "overview.png"), full_page=True)


def test_table_sorts_filters_and_pages(page: Any, shots: Path) -> None:
    page.goto(page.url + "runs/0")
    page.click("a.table-link:text('data/big.parquet')")
    status = page.locator("#table-status")
    page.wait_for_function("document.querySelector('#table-status').textContent"
                           ".startsWith('rows')")
    assert status.inner_text() == f"rows 1–50 of {N_BIG}"
    page.click("th[data-col='score']")  # first click: largest first
    page.wait_for_selector("th[data-col='score']:has-text('▼')")
    first = page.locator("#grid tbody tr").first.locator("td")
    assert first.nth(0).inner_text() == str(MAX_ROW) and first.nth(1).inner_text() == "99.5"
    page.click("#next")
    page.wait_for_function(f"document.querySelector('#table-status').textContent == "
                           f"'rows 51–100 of {N_BIG}'")
    page.select_option("#fcol", "label")
    page.fill("#fval", "needle")
    page.click("#filter button")
    page.wait_for_function("document.querySelector('#table-status').textContent == "
                           f"'rows 1–{N_BIG // 500} of {N_BIG // 500}'")
    page.screenshot(path=str(shots / "table.png"), full_page=True)


def _drawn(page: Any) -> int:
    return int(page.evaluate("document.getElementById('atlas').data"
                             ".reduce((n, t) => n + t.x.length, 0)"))


def test_atlas_draws_every_point_and_searches(page: Any, shots: Path) -> None:
    page.goto(page.url + "runs/0/atlas")
    page.wait_for_function("document.querySelector('#atlas-status').textContent == '28 points'")
    assert _drawn(page) == 28
    types = page.evaluate("document.getElementById('atlas').data.map(t => t.type)")
    assert set(types) == {"scattergl"} and len(types) == 2  # one trace per model
    assert page.locator("#atlas canvas").count() > 0
    page.select_option("#colour", "sentiment")
    page.wait_for_function("document.getElementById('atlas').data.length == 1")
    page.screenshot(path=str(shots / "atlas.png"), full_page=True)
    page.fill("#search", "zebra")
    page.wait_for_function("document.querySelector('#atlas-status').textContent"
                           ".startsWith('3 of 28')")
    assert _drawn(page) == 3
    hover = page.evaluate("document.getElementById('atlas').data[0].text[0]")
    assert hover.startswith("<b>zebra</b>") and "sentiment: 0.75" in hover
    page.screenshot(path=str(shots / "atlas_search.png"), full_page=True)


def _alpha(colour: str) -> float:
    parts = re.findall(r"[\d.]+", colour)
    return float(parts[3]) if len(parts) == 4 else 1.0


def test_token_diff_colours_the_largest_kl_most(page: Any, shots: Path) -> None:
    page.goto(page.url + "runs/1/tokens")
    page.wait_for_selector(".tokens[data-model='tuned'] .tok")
    # KL(tuned||base) and KL(base||tuned) = half of it both peak at t=3; one colour scale
    # spans both panels, so the base panel's peak is half as intense
    for model, peak_alpha in (("tuned", 1.0), ("base", 0.5)):
        spans = page.locator(f".tokens[data-model='{model}'] .tok")
        assert spans.count() == 5
        alphas = [_alpha(spans.nth(i).evaluate("e => getComputedStyle(e).backgroundColor"))
                  for i in range(5)]
        assert max(range(5), key=alphas.__getitem__) == KL_MAX_T
        assert alphas[KL_MAX_T] == pytest.approx(peak_alpha, abs=0.01)
        assert sorted(alphas)[-2] < 0.1
    peak = page.locator(f".tokens[data-model='tuned'] .tok[data-t='{KL_MAX_T}']")
    assert peak.inner_text() == " dragon"
    peak.hover()
    tip = page.locator("#tip")
    assert tip.is_visible() and f"KL(tuned‖base) {KL_MAX}" in tip.inner_text()
    page.screenshot(path=str(shots / "tokens.png"), full_page=True)
    page.select_option("#stat", "entropy")  # base entropy 1 + t rises along the text
    page.wait_for_selector("h3 small:has-text('entropy')")
    base = page.locator(".tokens[data-model='base'] .tok")
    assert float(base.nth(4).get_attribute("data-intensity")) == 1.0
