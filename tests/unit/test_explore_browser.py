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

pytestmark = pytest.mark.browser

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
    assert panels.nth(0).locator("a", has_text=re.compile("^atlas$")).count() == 1
    assert panels.nth(0).locator("a", has_text="embedding-atlas").count() == 1
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


def test_selecting_a_point_opens_its_paths_on_the_sphere(page: Any, shots: Path) -> None:
    """Clicking the planted "zebra" of prompt 0 (base, continuation) draws that prompt's two
    base paths on the 3-D sphere, at the planted coordinates, the clicked one thick."""
    from test_explore import planted_points

    pts = planted_points()
    page.goto(page.url + "runs/0/atlas")
    page.wait_for_function("document.querySelector('#atlas-status').textContent == '28 points'")
    # the first zebra (prompt 0, base, continuation:0): its row in the page's data
    zebra = page.evaluate("[...Array(D.n).keys()].find(i => value('token', i) === 'zebra' "
                          "&& value('model', i) === 'base')")
    # the click event plotly emits for that point (its customdata is the point's row)
    page.evaluate(f"document.getElementById('atlas').emit('plotly_click', "
                  f"{{points: [{{customdata: {zebra}}}]}})")
    page.wait_for_function("document.getElementById('sphere').data !== undefined")
    traces = page.evaluate("document.getElementById('sphere').data.map(t => ({type: t.type, "
                           "name: t.name, n: t.x.length, w: t.line ? t.line.width : 0}))")
    paths = {t["name"]: t for t in traces if t["type"] == "scatter3d" and t["name"] != "selected"}
    mine = pts[(pts.prompt_id == 0) & (pts.model == "base")]
    assert {k: v["n"] for k, v in paths.items()} == mine.segment.value_counts().to_dict()
    assert paths["continuation:0"]["w"] > paths["prompt"]["w"]  # the clicked path is thick
    xs = page.evaluate("document.getElementById('sphere').data.find(t => t.name == "
                       "'continuation:0').x")
    want = mine[mine.segment == "continuation:0"].sort_values("step").x.tolist()
    assert xs == pytest.approx(want, abs=1e-6)
    assert "prompt 0, base: 2 paths, 7 points" in page.inner_text("#sphere-status")
    page.screenshot(path=str(shots / "atlas_sphere.png"), full_page=True)


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
    # the text goes to the live view, where both models' top-k are shown at each token
    from urllib.parse import parse_qs, urlparse

    href = page.locator("#live-link").get_attribute("href")
    assert urlparse(href).path == "/live/text"
    assert parse_qs(urlparse(href).query)["text"] == ["Once upon a dragon slept"]


# -- the live views, on the planted bigram pair of test_explore_live -------------------------


@pytest.fixture(scope="module")
def live_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The explorer with the planted bigram pair loaded, and its vector and probe runs."""
    if _missing() is not None:
        yield None
        return
    from test_explore_live import make_live

    from difflens.explore import create_app
    from difflens.explore.app import serve_in_thread

    live, folders = make_live(tmp_path_factory.mktemp("live-runs"))
    with serve_in_thread(create_app(folders, live=live)) as srv:
        yield srv.url


@pytest.fixture
def live_page(require: Callable[[bool, str], None], browser: Any,
              live_site: str | None) -> Iterator[Any]:
    require(browser is not None and live_site is not None,
            _missing() or "the browser did not start")
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(str(live_site))
    yield pg
    pg.close()
    assert not errors, errors


def _top_rows(page: Any, model: str) -> list[tuple[str, float]]:
    rows = page.locator(f"table.topk[data-model='{model}'] tr")
    return [(rows.nth(i).locator("code").inner_text(),
             float(rows.nth(i).locator("td.p").inner_text())) for i in range(rows.count())]


def test_live_typed_text_hover_shows_both_models_top_k(live_page: Any, shots: Path) -> None:
    import torch
    from test_explore_live import ID, planted_tables, probs

    page = live_page
    page.click("header a:text('Type text')")
    page.fill("#text", "the fox sat far")
    page.fill("#top_k", "3")
    page.click("#score")
    page.wait_for_selector(".tokens[data-model='tuned'] .tok[data-t='3']")
    # colour by KL: the token after "fox" (t=3, " sat") is the darkest in the tuned row
    spans = page.locator(".tokens[data-model='tuned'] .tok:not(.next)")
    assert spans.count() == 4
    alphas = [float(spans.nth(i).get_attribute("data-intensity")) for i in range(4)]
    assert max(range(4), key=alphas.__getitem__) == 2 and alphas[2] == 1.0
    peak = spans.nth(2)
    assert peak.inner_text() == " sat"
    peak.hover()
    page.wait_for_selector("table.topk[data-model='base'] tr")
    tables = planted_tables()
    for model in ("base", "tuned"):
        top = probs(tables[model], "fox").topk(3)
        names = list(ID)
        want = [(f'" {names[i]}"', round(p, 4)) for i, p in
                zip(top.indices.tolist(), top.values.tolist(), strict=True)]
        got = _top_rows(page, model)
        assert [g[0] for g in got] == [w[0] for w in want]
        assert [g[1] for g in got] == pytest.approx([w[1] for w in want], abs=2e-4)
    assert _top_rows(page, "tuned")[0][0] == '" sat"' and _top_rows(page, "base")[0][0] == \
        '" ran"'
    assert torch.isclose(probs(tables["base"], "fox").sum(), torch.tensor(1.0,
                                                                          dtype=torch.float64))
    page.screenshot(path=str(shots / "live_text.png"), full_page=True)
    page.select_option("#stat", "entropy")
    page.wait_for_selector("h3 small:has-text('entropy')")
    page.locator(".tok.next").first.click()  # what comes after the text, pinned
    assert "after the text" in page.locator("#topk p").inner_text()
    # a text handed over in the address (from a stored run's token diff) is scored at once
    page.goto(f"{page.url.split('/live')[0]}/live/text?text=the%20fox%20sat")
    page.wait_for_selector(".tokens[data-model='tuned'] .tok[data-t='3']")
    assert page.locator("#text").input_value() == "the fox sat"


def test_live_multiverse_expands_nodes_and_continues_branches(live_page: Any,
                                                              shots: Path) -> None:
    from test_explore_live import ID, greedy, planted_tables, probs

    page = live_page
    page.click("header a:text('Multiverse')")
    page.fill("#prompt", "the fox")
    page.fill("#depth", "1")
    page.fill("#top_k", "3")
    page.click("#grow")
    page.wait_for_selector(".tree[data-model='tuned'] .node")
    tables = planted_tables()
    base_nodes = page.locator(".tree[data-model='base'] .node")
    assert base_nodes.count() == 3
    first = page.locator(f".tree[data-model='base'] .node[data-path='{ID['ran']}']")
    assert float(first.get_attribute("data-prob")) == pytest.approx(
        float(probs(tables["base"], "fox")[ID["ran"]]), abs=1e-6)
    first.click()  # expand " ran": its children are the planted row of "ran"
    kids = page.locator(f".tree[data-model='base'] .node[data-path^='{ID['ran']},']")
    kids.first.wait_for()
    assert kids.count() == 3
    got = [float(kids.nth(i).get_attribute("data-prob")) for i in range(3)]
    assert sum(got) <= 1.0
    assert got == pytest.approx(probs(tables["base"], "ran").topk(3).values.tolist(), abs=1e-6)
    page.screenshot(path=str(shots / "live_tree.png"), full_page=True)
    page.fill("#max_new_tokens", "5")
    page.locator(f".tree[data-model='base'] .loom[data-path='{ID['ran']}']").click()
    page.wait_for_selector("#loom-out .gen[data-model='tuned']")
    for model, table in tables.items():
        text = page.locator(f"#loom-out .gen[data-model='{model}']").inner_text()
        assert text == "the fox ran" + "".join(" " + w for w in greedy(table, "ran", 5))
    page.screenshot(path=str(shots / "live_tree_loom.png"), full_page=True)
    first.click()  # folds
    assert not kids.first.is_visible()


def test_live_steering_differs_at_nonzero_alpha_and_probe_scores_show(
        live_page: Any, shots: Path) -> None:
    from test_explore_live import ALPHA, PROBE_WORD

    page = live_page
    page.click("header a:text('Steer')")
    page.fill("#prompt", "the fox")
    page.fill("#max_new_tokens", "6")
    page.select_option("#vector", "concepts-run/vectors.safetensors:base")
    assert page.locator("#layer").input_value() == "1"

    def texts() -> dict[tuple[str, str], str]:
        page.wait_for_selector(".gen[data-model='tuned'][data-kind='steered']")
        gens = page.locator(".gen")
        return {(gens.nth(i).get_attribute("data-model"), gens.nth(i).get_attribute(
            "data-kind")): gens.nth(i).get_attribute("data-text") for i in range(gens.count())}

    page.fill("#alpha", "0")
    page.click("#generate")
    zero = texts()
    assert len(zero) == 4
    for m in ("base", "tuned"):
        assert zero[(m, "steered")] == zero[(m, "unsteered")]
    page.fill("#alpha", str(ALPHA))
    page.select_option("#probe", "probe-run/probe.safetensors")
    page.click("#generate")
    page.wait_for_function("document.querySelector('#gens p').textContent.includes('α=50')")
    steered = texts()
    for m in ("base", "tuned"):
        assert steered[(m, "unsteered")] == zero[(m, "unsteered")]
        assert steered[(m, "steered")] != steered[(m, "unsteered")]
    plain = page.locator(".gen[data-model='base'][data-kind='unsteered'] .tok")
    for i in range(plain.count()):
        over = plain.nth(i).get_attribute("data-over") == "1"
        assert over == (plain.nth(i).inner_text().strip() == PROBE_WORD)
    assert page.locator(".gen[data-kind='unsteered'] .tok[data-over='1']").count() > 0
    page.screenshot(path=str(shots / "live_steer.png"), full_page=True)
    page.fill("#alpha", "abc")
    page.click("#generate")
    page.wait_for_selector("#live-error:visible")
    assert "alpha must be a number" in page.locator("#live-error").inner_text()


def test_live_views_without_models_say_how_to_start(page: Any, shots: Path) -> None:
    for view in ("Type text", "Multiverse", "Steer"):
        page.click(f"header a:text('{view}')")
        assert "start with --base/--tuned to use this view" in \
            page.locator(".error").inner_text()
    page.screenshot(path=str(shots / "live_no_models.png"), full_page=True)


def test_embedding_atlas_shows_the_runs_points_table_and_counts(
        page: Any, shots: Path, site: str | None, require: Callable[[bool, str], None]) -> None:
    """Apple's embedding-atlas, served from its installed package over the same points: its
    point count, its per-model counts and its table, with no request leaving the server
    (its map needs WebGPU, which headless chromium lacks: the atlas view draws that)."""
    from test_explore import planted_points

    from difflens.explore.embedding_atlas_view import available

    pts = planted_points()
    require(available(), "embedding-atlas is not installed: pip install 'difflens[atlas]'")
    outside: list[str] = []
    page.on("request", lambda r: None if r.url.startswith((str(site), "data:", "blob:"))
            else outside.append(r.url))
    page.goto(f"{site}/runs/0/embedding-atlas")
    assert page.url.endswith("/runs/0/embedding-atlas/")
    n = len(pts)
    page.wait_for_function(f"document.body.innerText.includes('{n} / {n} points')",
                           timeout=30_000)
    text = page.inner_text("body")
    for model, count in pts.model.value_counts().items():  # the per-model count panel
        assert re.search(rf"\b{model}\s+{count}\b", text), (model, count)
    assert "zebra" in text  # a planted token in the table
    page.screenshot(path=str(shots / "embedding_atlas.png"))
    assert not outside, outside


# -- the discover view, on test_explore_discover's planted-shift run -------------------------


@pytest.fixture(scope="module")
def discover_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str | None]:
    """The explorer over a discover run of the planted-shift pair, with the pair loaded (so
    a change's token is marked in its text)."""
    if _missing() is not None:
        yield None
        return
    from test_explore_discover import make_discover_run

    from difflens.explore import create_app
    from difflens.explore.app import serve_in_thread
    from difflens.explore.live import open_live

    out, pair = make_discover_run(tmp_path_factory.mktemp("discover-runs"))
    with serve_in_thread(create_app([out], live=open_live(pair))) as srv:
        yield srv.url


def test_discover_words_open_their_texts_and_the_slider_moves_the_samples(
        require: Callable[[bool, str], None], browser: Any, discover_site: str | None,
        shots: Path) -> None:
    require(browser is not None and discover_site is not None,
            _missing() or "the browser did not start")
    pg = browser.new_page(viewport={"width": 1280, "height": 900})
    pg.set_default_timeout(15_000)
    errors: list[str] = []
    pg.on("pageerror", lambda exc: errors.append(str(exc)))
    pg.goto(f"{discover_site}/runs/0/discover")
    # alpha 0 (the tuned model) is shown first
    pg.wait_for_selector("#samples[data-alpha='0'] li")
    assert pg.locator("#alpha-value").inner_text() == "α = 0"
    assert pg.locator("#alpha-table tr.sel").get_attribute("data-i") == "0"
    at_zero = pg.locator("#samples li").all_inner_texts()
    # the Patchscope grid: the most probable cell is the most intense
    cells = pg.locator("#grid td[data-p]")
    ps = [float(cells.nth(i).get_attribute("data-p")) for i in range(cells.count())]
    top = cells.nth(max(range(len(ps)), key=ps.__getitem__))
    assert float(top.get_attribute("data-intensity")) == 1.0
    assert _alpha(top.evaluate("e => getComputedStyle(e).backgroundColor")) == \
        pytest.approx(1.0, abs=0.01)
    # a hypothesis word opens its texts, the token after which the tuned model raised it
    # marked (the word tokenizer: one word a token)
    assert pg.locator("#word-view").is_hidden()
    pg.click("#hyp-words .word[data-word='harbor']")
    pg.wait_for_selector("#word-texts .wtext")
    assert pg.locator("#word-title").inner_text() == "harbor"
    assert "listed by" in pg.locator("#word-support").inner_text()
    assert pg.locator("#hyp-words .word[data-word='harbor']").get_attribute("class") \
        .split() == ["word", "in-hyp", "selected"]
    texts = pg.locator("#word-texts .wtext")
    assert texts.count() >= 1
    first = texts.first
    assert "raised “harbor”" in first.locator(".path").inner_text()
    assert first.locator("mark.at").count() == 1
    assert first.locator(".then").inner_text() == "→ harbor"
    pg.screenshot(path=str(shots / "discover_word.png"))
    # a word of a method's list opens its own texts in the same place
    pg.click("#methods .method[data-method='mining'] .word >> nth=0")
    pg.wait_for_function("document.querySelector('#word-title').textContent != 'harbor'")
    pg.click("#word-close")
    assert pg.locator("#word-view").is_hidden()
    # the slider: alpha 2 shows its own samples, more of them with a hypothesis word
    marked_zero = pg.locator("#samples li:has(mark)").count()
    pg.locator("#alpha").fill("1")
    pg.wait_for_selector("#samples[data-alpha='2'] li")
    assert pg.locator("#alpha-value").inner_text() == "α = 2"
    assert pg.locator("#alpha-table tr.sel").get_attribute("data-i") == "1"
    at_two = pg.locator("#samples li").all_inner_texts()
    assert len(at_two) == len(at_zero) and at_two != at_zero
    assert pg.locator("#samples li:has(mark)").count() >= marked_zero
    assert pg.locator("#samples li mark").count() > 0
    assert "hypothesis rate" in pg.locator("#alpha-stats").inner_text()
    pg.locator("#amplify").screenshot(path=str(shots / "discover_amplify.png"))
    pg.screenshot(path=str(shots / "discover.png"), full_page=True)
    pg.close()
    assert not errors, errors
