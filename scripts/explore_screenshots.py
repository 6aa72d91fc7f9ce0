"""Screenshots of the explorer over a demo's runs, for the docs (docs/assets/explore/).

    difflens demo --out difflens-demo
    python scripts/explore_screenshots.py difflens-demo docs/assets/explore

Serves the demo's runs with the organism pair loaded (as ``difflens explore DEMO ...
--base organism-base --tuned organism-tuned`` does), opens every view in Debian's headless
chromium (Playwright, ``executable_path``; never ``playwright install``) and saves one PNG
per view.
"""

import argparse
import shutil
from pathlib import Path

from difflens.cli._common import load_target
from difflens.explore.app import create_app, serve_in_thread
from difflens.explore.live import open_live
from difflens.explore.runs import open_runs
from difflens.organism.build import LINEAGE
from difflens.report.demo import explore_runs

#: The demo's run folders, in the explorer's order (run k is the k-th).
EXPLORE_RUNS = explore_runs(LINEAGE)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("demo", type=Path)
    parser.add_argument("out", type=Path)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    folders = [args.demo / r for r in EXPLORE_RUNS]
    pair = load_target("organism-base", f"organism-{LINEAGE[-1]}", revision=None, dtype=None,
                       device=None)
    live = open_live(pair, open_runs(folders))
    traj, coll = EXPLORE_RUNS.index("trajectories"), EXPLORE_RUNS.index("collapse")
    from playwright.sync_api import sync_playwright

    with serve_in_thread(create_app(folders, live=live)) as srv, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=shutil.which("chromium"), headless=True,
                                     args=["--use-angle=swiftshader",
                                           "--enable-unsafe-swiftshader"])
        page = browser.new_page(viewport={"width": 1280, "height": 860})
        page.set_default_timeout(60_000)

        def shot(name: str) -> None:
            page.wait_for_timeout(1500)
            page.screenshot(path=str(args.out / f"{name}.png"))
            print("wrote", args.out / f"{name}.png")

        page.goto(srv.url + "/")
        shot("runs")
        page.goto(f"{srv.url}/runs/{traj}/atlas")
        page.wait_for_function("document.getElementById('atlas').data !== undefined")
        page.select_option("#colour", "jump")
        shot("atlas")
        page.goto(f"{srv.url}/runs/{traj}/embedding-atlas/")
        page.wait_for_function("document.body.innerText.includes(' points')")
        shot("embedding_atlas")
        page.goto(f"{srv.url}/runs/{coll}/tokens")
        page.wait_for_selector(".tok")
        shot("token_diff")
        page.goto(f"{srv.url}/live/text")
        page.fill("#text", "Once upon a time, Tom the fox found a shiny coin. He was very "
                           "happy and")
        page.click("#score")
        page.wait_for_selector(".tok")
        page.locator(".tok").nth(8).hover()
        shot("live_text")
        page.goto(f"{srv.url}/live/tree")
        page.fill("#prompt", "Tom the fox found a shiny coin. He")
        page.click("#grow")
        page.wait_for_selector(".node")
        page.locator(".node").nth(1).click()
        shot("multiverse")
        page.goto(f"{srv.url}/live/steer")
        page.fill("#prompt", "Tom the fox walked into the forest.")
        page.select_option("#vector", index=1)
        page.fill("#alpha", "1.5")
        page.select_option("#probe", index=1)
        page.click("#generate")
        page.wait_for_selector(".tok")
        shot("steer")
        browser.close()


if __name__ == "__main__":
    main()
