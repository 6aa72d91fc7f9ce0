"""The explorer app (difflens.explore) over small run folders with planted content: what
each page and endpoint returns, that it only reads files inside the runs it was given,
never writes, keeps working beside broken runs, and binds to 127.0.0.1 by default."""

import json
import math
import os
import socket
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
import typer
from starlette.testclient import TestClient
from typer.testing import CliRunner

from difflens.cli.explore import explore_cmd
from difflens.errors import InputError
from difflens.explore import create_app
from difflens.explore.app import serve_in_thread
from difflens.explore.data import atlas_json, text_tokens, texts
from difflens.explore.runs import open_runs, safe_path, table_page
from difflens.explore.views import render_value

#: A 1x1 PNG.
PNG = bytes.fromhex("89504e470d0a1a0a0000000d4948445200000001000000010806000000"
                    "1f15c4890000000d49444154789c6360000002000154a24f5d0000000049454e44ae426082")
SECRET = "TOPSECRET-do-not-serve"
#: Planted table: row 1234 holds the largest score, row 77 the smallest.
N_BIG, MAX_ROW, MIN_ROW = 2500, 1234, 77
#: Planted token diff: text 0's token 3 has the largest KL(tuned || base) of the run.
KL_MAX_T, KL_MAX = 3, 9.5


def _write(path: Path, df: pd.DataFrame) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    df.to_parquet(path, index=False)


def planted_points() -> pd.DataFrame:
    """Two prompts x two models x (3 prompt + 4 continuation tokens); point k sits at
    longitude ``-170 + 12 k`` and latitude ``-80 + 5.5 k`` (degrees); three are "zebra"."""
    rows = []
    k = 0
    for prompt_id in (0, 1):
        for model in ("base", "tuned"):
            for segment, steps in (("prompt", 3), ("continuation:0", 4)):
                for step in range(steps):
                    lon, lat = math.radians(-170 + 12 * k), math.radians(-80 + 5.5 * k)
                    token = "zebra" if k in (5, 12, 20) else f"w{k}"
                    rows.append({"prompt_id": prompt_id, "model": model, "segment": segment,
                                 "step": step, "token": token, "token_raw": "Ġ" + token,
                                 "token_id": k, "x": math.cos(lat) * math.cos(lon),
                                 "y": math.cos(lat) * math.sin(lon), "z": math.sin(lat),
                                 "state_ref": k})
                    k += 1
    return pd.DataFrame(rows)


def make_trajectories_run(root: Path) -> Path:
    run = root / "traj-run"
    pts = planted_points()
    _write(run / "data" / "trajectories.parquet", pts)
    jumps = pts[pts.step > 0][["prompt_id", "model", "segment", "step", "token"]].copy()
    jumps["jump"] = jumps["step"] * 0.1 + (jumps["model"] == "tuned") * 1.0
    jumps["sentiment"] = np.where(jumps["token"] == "zebra", 0.75, 0.0)
    _write(run / "data" / "jumps.parquet", jumps)
    _write(run / "data" / "prompts.parquet",
           pd.DataFrame({"prompt_id": [0, 1], "theme": ["sea", "forest"]}))
    rng = np.random.default_rng(0)
    score = rng.uniform(0, 50, N_BIG)
    score[MAX_ROW], score[MIN_ROW] = 99.5, -3.25
    _write(run / "data" / "big.parquet", pd.DataFrame({
        "row": np.arange(N_BIG), "score": score,
        "label": ["needle" if i % 500 == 7 else f"hay{i % 13}" for i in range(N_BIG)]}))
    (run / "figures").mkdir()
    (run / "figures" / "spheres.png").write_bytes(PNG)
    (run / "figures" / "spheres.html").write_text("<html><body>sphere figure</body></html>")
    (run / "index.html").write_text("<html><body>report</body></html>")
    (run / "summary.json").write_text(json.dumps({
        "continuation": {"distance": {"mean": 1.5, "ci95": [1.25, 1.75], "n": 20}},
        "planted_key": "planted-value-42",
        "rows": [{"index": i, "mean": i / 10} for i in range(3)]}))
    return run


def make_divergence_run(root: Path) -> Path:
    run = root / "coll-run"
    rows = []
    for text_id, source, words in ((0, "base", ["Once", "Ġupon", "Ġa", "Ġdragon", "Ġslept"]),
                                   (1, "tuned", ["The", "Ġcat", "Ġsat"])):
        for t, word in enumerate(words):
            kl = KL_MAX if (text_id, t) == (0, KL_MAX_T) else 0.1 * (t + 1)
            rows.append({"text_id": text_id, "source": source, "t": t, "token": word,
                         "base_entropy": 1.0 + t, "base_logprob": -0.5 * t,
                         "tuned_entropy": 2.0 - 0.1 * t, "tuned_logprob": -0.25 * t - 1.0,
                         "kl_tuned_base": kl, "kl_base_tuned": 0.5 * kl,
                         "top1_agree": float(t % 2), "context": "novel"})
    _write(run / "data" / "divergence_tokens.parquet", pd.DataFrame(rows).astype(
        {c: "float32" for c in ("base_entropy", "base_logprob", "tuned_entropy",
                                "tuned_logprob", "kl_tuned_base", "kl_base_tuned")}))
    (run / "summary.json").write_text(json.dumps({"divergence": {"kl_tuned_base": 0.5}}))
    return run


def make_broken_runs(root: Path) -> dict[str, Path]:
    """A run without summary.json, one with half a summary.json, one whose Parquet tables
    are cut short."""
    missing = root / "no-summary"
    (missing / "data").mkdir(parents=True)
    half = root / "half-written"
    half.mkdir()
    (half / "summary.json").write_text('{"continuation": {"distance": [1.0, ')
    cut = root / "truncated"
    good = make_trajectories_run(root / "tmp-cut")
    (cut / "data").mkdir(parents=True)
    for name in ("trajectories.parquet", "big.parquet"):
        data = (good / "data" / name).read_bytes()
        (cut / "data" / name).write_bytes(data[: len(data) // 2])
    (cut / "summary.json").write_text("{}")
    return {"missing": missing, "half": half, "cut": cut}


@pytest.fixture
def runs(tmp_path: Path) -> dict[str, Path]:
    return {"traj": make_trajectories_run(tmp_path), "coll": make_divergence_run(tmp_path)}


@pytest.fixture
def client(runs: dict[str, Path]) -> TestClient:
    return TestClient(create_app([runs["traj"], runs["coll"]]))


# -- runs and overview ----------------------------------------------------------------------


def test_runs_page_lists_each_run_with_its_views(client: TestClient) -> None:
    page = client.get("/").text
    assert "traj-run" in page and "coll-run" in page
    assert "/runs/0/atlas" in page and "/runs/1/tokens" in page
    assert "/runs/0/tokens" not in page and "/runs/1/atlas" not in page


def test_overview_renders_summary_figures_and_tables(client: TestClient) -> None:
    page = client.get("/runs/0").text
    assert "planted-value-42" in page
    assert "1.5 [1.25, 1.75] n=20" in page  # an older run's {mean, ci95, n}, respelled
    assert "/runs/0/file/figures/spheres.png" in page
    assert "/runs/0/file/figures/spheres.html" in page
    assert "table?path=data/big.parquet" in page
    assert client.get("/runs/0/file/figures/spheres.png").content == PNG


def test_render_value_formats_estimates_and_records() -> None:
    est = {"value": 0.123456, "ci_low": 0.1, "ci_high": 0.2, "n": 7, "resampled": "prompts"}
    assert render_value(est) == ("<span title='95% CI over resampled prompts'>0.1235 [0.1, "
                                 "0.2] n=7</span>")
    assert render_value({"value": 1.0, "ci_low": 0.5, "ci_high": 2.0, "n": 3, "resampled": "",
                         "layer": 4}) == "1 [0.5, 2] n=3 <small>layer=4</small>"
    # the older spellings are not estimates until respelled (read_summary does that)
    assert "<table" in render_value({"mean": 1.0, "ci95": [0.5, 2.0], "n": 3})
    html = render_value([{"a": 1, "b": 2.5}, {"a": 3}])
    assert html.count("<tr>") == 3 and "<th>b</th>" in html


def test_unknown_run_and_page_are_404(client: TestClient) -> None:
    for url in ("/runs/9", "/runs/x", "/nowhere", "/runs/9/atlas", "/api/runs/9/atlas"):
        assert client.get(url).status_code == 404, url


def test_open_runs_needs_existing_folders(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="at least one run folder"):
        open_runs([])
    with pytest.raises(InputError, match="does not exist or is not a folder"):
        open_runs([tmp_path / "nope"])


def test_a_compare_folder_opens_with_every_section(tmp_path: Path) -> None:
    """``explore OUT`` of a compare/demo folder serves its overview, each section that wrote
    a summary and each per-model run inside a section; nothing outside the folder."""
    out = tmp_path / "demo"
    for rel in ("", "collapse", "control", "control/base", "control/sft", "themes/samples"):
        (out / rel).mkdir(parents=True, exist_ok=True)
    (out / "summary.json").write_text(json.dumps(
        {"sections": ["capture", "collapse", "control", "themes", "../elsewhere"]}))
    for rel in ("collapse", "control", "control/base", "control/sft"):
        (out / rel / "summary.json").write_text("{}")
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "summary.json").write_text("{}")
    runs = open_runs([out])
    assert [r.name for r in runs] == ["demo", "demo/collapse", "demo/control",
                                      "demo/control/base", "demo/control/sft"]
    assert [r.id for r in runs] == list(range(5))
    assert runs[3].root == (out / "control" / "base").resolve()
    plain = tmp_path / "plain"
    plain.mkdir()
    (plain / "summary.json").write_text(json.dumps({"sections": "not a list"}))
    assert [r.name for r in open_runs([plain])] == ["plain"]


# -- table view -----------------------------------------------------------------------------


def _table(client: TestClient, **params: Any) -> Any:
    return client.get("/api/runs/0/table", params={"path": "data/big.parquet", **params})


def test_table_sorts_by_any_column(client: TestClient) -> None:
    top = _table(client, sort="score", desc="1", size="3").json()
    assert top["total"] == N_BIG and len(top["rows"]) == 3
    assert top["rows"][0][:2] == [MAX_ROW, 99.5]
    bottom = _table(client, sort="score", desc="0", size="1").json()
    assert bottom["rows"][0][:2] == [MIN_ROW, -3.25]


def test_table_pages_and_filters(client: TestClient) -> None:
    page = _table(client, offset="100", size="10").json()
    assert [r[0] for r in page["rows"]] == list(range(100, 110))
    needles = _table(client, filter_column="label", filter_op="contains",
                     filter_value="NEEDLE", size="100").json()
    assert needles["total"] == N_BIG // 500
    assert {r[0] % 500 for r in needles["rows"]} == {7}
    big = _table(client, filter_column="score", filter_op=">", filter_value="60").json()
    assert big["total"] == 1 and big["rows"][0][0] == MAX_ROW


def test_table_rejects_bad_requests_with_a_message(client: TestClient) -> None:
    r = _table(client, sort="nope")
    assert r.status_code == 422 and "no column 'nope' to sort by" in r.json()["error"]
    r = _table(client, filter_column="score", filter_op=">", filter_value="abc")
    assert r.status_code == 422 and "needs a number" in r.json()["error"]
    r = _table(client, filter_column="score", filter_op="; DROP", filter_value="1")
    assert r.status_code == 422 and "filter operator" in r.json()["error"]
    assert _table(client, size="100000").status_code == 422
    assert client.get("/runs/0/table", params={"path": "summary.json"}).status_code == 404


def test_table_page_reads_only_the_page(runs: dict[str, Path]) -> None:
    page = table_page(runs["traj"] / "data" / "big.parquet", offset=2490, size=50)
    assert page.total == N_BIG and len(page.rows) == 10 and page.rows[0][0] == 2490


# -- atlas ----------------------------------------------------------------------------------


def test_atlas_places_every_point_by_longitude_and_latitude(runs: dict[str, Path]) -> None:
    run = open_runs([runs["traj"]])[0]
    d = json.loads(atlas_json(run))
    pts = planted_points()
    assert d["n"] == len(pts) == 28
    k = np.array(d["columns"]["token_id"]["values"], dtype=int)
    np.testing.assert_allclose(d["lon"], -170 + 12 * k, atol=1e-3)
    np.testing.assert_allclose(d["lat"], -80 + 5.5 * k, atol=1e-3)
    for name in ("model", "step", "jump", "sentiment", "prompt_id", "segment", "token",
                 "theme"):
        assert name in d["colour_by"], name
    cols = d["columns"]

    def val(name: str, i: int) -> Any:
        c = cols[name]
        return c["values"][i] if c["kind"] == "num" else c["levels"][c["codes"][i]]

    for i in range(d["n"]):
        step, model = val("step", i), val("model", i)
        if step == 0:
            assert val("jump", i) is None  # no jump into the first point
        else:
            assert val("jump", i) == pytest.approx(step * 0.1 + (model == "tuned"))
        assert val("sentiment", i) in ((0.75,) if val("token", i) == "zebra" else (0.0, None))
        assert val("theme", i) == ("sea" if val("prompt_id", i) == 0 else "forest")
        assert val("token", i) in val("text", i)  # the path's text holds the token
    assert sum(val("token", i) == "zebra" for i in range(d["n"])) == 3


def test_atlas_of_a_run_without_trajectories_says_so(client: TestClient) -> None:
    r = client.get("/api/runs/1/atlas")
    assert r.status_code == 422 and "difflens trajectories run" in r.json()["error"]


# -- token diff -----------------------------------------------------------------------------


def test_token_diff_data_keeps_planted_values(runs: dict[str, Path]) -> None:
    run = open_runs([runs["coll"]])[0]
    listed = texts(run)
    assert [(t.text_id, t.source, t.n_tokens) for t in listed] == [(0, "base", 5),
                                                                   (1, "tuned", 3)]
    assert listed[0].max_kl == pytest.approx(KL_MAX) and listed[0].preview == \
        "Once upon a dragon slept"
    toks = text_tokens(run, 0)
    assert "".join(t["text"] for t in toks) == "Once upon a dragon slept"
    best = max(toks, key=lambda t: t["kl_tuned_base"])
    assert best["t"] == KL_MAX_T and best["text"] == " dragon"
    for t in toks:
        assert t["tuned_minus_base"] == pytest.approx(-0.25 * t["t"] - 1.0 + 0.5 * t["t"])
        assert t["base_minus_tuned"] == pytest.approx(-t["tuned_minus_base"])
    with pytest.raises(InputError, match="no text 7"):
        text_tokens(run, 7)


def test_token_endpoints(client: TestClient) -> None:
    assert len(client.get("/api/runs/1/texts").json()["texts"]) == 2
    assert client.get("/api/runs/1/tokens", params={"text_id": "x"}).status_code == 422
    assert client.get("/api/runs/0/texts").status_code == 422  # not a divergence run
    assert "Statistic" in client.get("/runs/1/tokens").text


def test_token_diff_and_atlas_show_tokens_through_the_one_formatter(
        tmp_path: Path) -> None:
    from difflens.inputs.tokens import format_token

    raw = ["Ġthe", "Ċ", "<0x0A>", "ĠcafÃ©", "âĢ", "Ġ<b>"]
    rows = [{"text_id": 0, "source": "s", "t": t, "token": tok, "base_entropy": 1.0,
             "tuned_entropy": 1.0, "base_logprob": -1.0, "tuned_logprob": -1.0,
             "kl_tuned_base": 0.5, "kl_base_tuned": 0.5} for t, tok in enumerate(raw)]
    _write(tmp_path / "div" / "data" / "divergence_tokens.parquet", pd.DataFrame(rows))
    run = open_runs([tmp_path / "div"])[0]
    assert [t["text"] for t in text_tokens(run, 0)] == [format_token(t) for t in raw] == \
        [" the", "\n", "\n", " café", "âĢ", " <b>"]
    pts = planted_points().assign(token=lambda d: "Ġ" + d.token)  # raw tokens in the table
    _write(tmp_path / "traj" / "data" / "trajectories.parquet", pts)
    levels = json.loads(atlas_json(open_runs([tmp_path / "traj"])[0]))["columns"]["token"]
    assert "Ġzebra" not in levels["levels"] and " zebra" in levels["levels"]


# -- broken runs ----------------------------------------------------------------------------


def test_broken_runs_show_a_message_and_the_app_keeps_working(
        runs: dict[str, Path], tmp_path: Path) -> None:
    broken = make_broken_runs(tmp_path / "broken")
    client = TestClient(create_app([broken["missing"], broken["half"], broken["cut"],
                                    runs["traj"]]))
    home = client.get("/")
    assert home.status_code == 200
    assert "no summary.json in this folder" in home.text
    assert "summary.json is not valid JSON (line 1" in home.text
    assert "planted_key" in home.text  # the good run, beside them
    assert "not valid JSON" in client.get("/runs/1").text
    r = client.get("/api/runs/2/table", params={"path": "data/big.parquet"})
    assert r.status_code == 422 and "cannot read the table" in r.json()["error"]
    r = client.get("/api/runs/2/atlas")
    assert r.status_code == 422 and "cannot read" in r.json()["error"]
    assert client.get("/runs/2").status_code == 200
    assert _table(TestClient(create_app([runs["traj"]])), size="1").status_code == 200
    assert client.get("/api/runs/3/atlas").status_code == 200


# -- security -------------------------------------------------------------------------------


def _raw_get(port: int, target: str) -> tuple[int, str]:
    """GET ``target`` exactly as written (no client-side normalisation of ``..``)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(f"GET {target} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
                  .encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split()[1]), body.decode(errors="replace")


@pytest.fixture
def escape_setup(tmp_path: Path) -> tuple[Path, Path]:
    """A run folder with symlinks that lead out of it, next to secrets outside it."""
    run = make_trajectories_run(tmp_path / "runs")
    (tmp_path / "secret.txt").write_text(SECRET)
    _write(tmp_path / "secret.parquet", pd.DataFrame({"secret": [SECRET]}))
    (run / "figures" / "leak.png").symlink_to(tmp_path / "secret.txt")
    (run / "data" / "leak.parquet").symlink_to(tmp_path / "secret.parquet")
    (run / "outside").symlink_to(tmp_path, target_is_directory=True)
    (run / "figures" / "inner.png").symlink_to(run / "figures" / "spheres.png")
    return run, tmp_path


TRAVERSALS = [
    "../../secret.txt", "../secret.txt", "figures/../../../secret.txt",
    "..%2f..%2fsecret.txt", "%2e%2e/%2e%2e/secret.txt", "%2e%2e%2f%2e%2e%2fsecret.txt",
    "%252e%252e%252f%252e%252e%252fsecret.txt", "..%252f..%252fsecret.txt",
    "%2E%2E%2F%2E%2E%2Fsecret.txt", "..\\..\\secret.txt", "..%5c..%5csecret.txt",
    "figures/leak.png", "outside/secret.txt", "outside%2fsecret.txt", "data",
    "/etc/passwd", "%2fetc%2fpasswd", "//etc/passwd", "/{tmp}/secret.txt",
    "%2f{tmp}%2fsecret.txt", "./summary.json/../../secret.txt", "figures/%00.png",
]


def test_path_traversal_is_404(escape_setup: tuple[Path, Path]) -> None:
    run, tmp = escape_setup
    app = create_app([run])
    with serve_in_thread(app) as srv:
        assert _raw_get(srv.port, "/runs/0/file/figures/spheres.png")[0] == 200  # the control
        assert _raw_get(srv.port, "/runs/0/file/figures/inner.png")[0] == 200  # link inside
        for attack in TRAVERSALS:
            target = "/runs/0/file/" + attack.replace("{tmp}", str(tmp).lstrip("/"))
            status, body = _raw_get(srv.port, target)
            assert status == 404, target
            assert SECRET not in body and "root:" not in body, target
        for attack in ("../../secret.parquet", "..%2f..%2fsecret.parquet", "data/leak.parquet",
                       f"{tmp}/secret.parquet", "outside/secret.parquet",
                       "%252e%252e%252fsecret.parquet"):
            for page in ("/api/runs/0/table", "/runs/0/table"):
                status, body = _raw_get(srv.port, f"{page}?path={attack}")
                assert status == 404, (page, attack)
                assert SECRET not in body, (page, attack)


def test_safe_path_keeps_to_the_run(escape_setup: tuple[Path, Path]) -> None:
    run, tmp = escape_setup
    assert safe_path(run, "figures/spheres.png") == (run / "figures" / "spheres.png").resolve()
    for rel in ("../secret.txt", str(tmp / "secret.txt"), "figures/leak.png", "",
                "outside/secret.txt", "figures//spheres.png", "./summary.json", "data"):
        assert safe_path(run, rel) is None, rel


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    st = root.stat()
    out["."] = (0, st.st_mtime_ns)
    return out


def test_browsing_never_writes_to_a_run(runs: dict[str, Path], tmp_path: Path,
                                        monkeypatch: pytest.MonkeyPatch) -> None:
    broken = make_broken_runs(tmp_path / "broken")
    folders = [runs["traj"], runs["coll"], *broken.values()]
    before = {str(f): _snapshot(f) for f in folders}
    monkeypatch.chdir(runs["traj"])  # DuckDB must not drop its temporary files here either
    client = TestClient(create_app(folders))
    urls = ["/", "/runs/0", "/runs/1", "/runs/0/atlas", "/api/runs/0/atlas", "/runs/1/tokens",
            "/api/runs/1/texts", "/api/runs/1/tokens?text_id=0", "/runs/0/file/index.html",
            "/runs/0/table?path=data/big.parquet", "/static/plotly.min.js"]
    urls += [f"/runs/{i}" for i in range(2, 5)] + ["/api/runs/4/atlas"]
    for sort in ("score", "label", "row"):
        urls.append(f"/api/runs/0/table?path=data/big.parquet&sort={sort}&desc=1&size=1000")
    urls.append("/api/runs/0/table?path=data/big.parquet&filter_column=label&filter_value=n")
    for url in urls:
        assert client.get(url).status_code in (200, 422), url
    assert {str(f): _snapshot(f) for f in folders} == before


def test_loopback_server_refuses_other_host_names(runs: dict[str, Path]) -> None:
    app = create_app([runs["traj"]], allowed_hosts=["127.0.0.1", "localhost"])
    assert TestClient(app, base_url="http://127.0.0.1:8765").get("/").status_code == 200
    assert TestClient(app, base_url="http://attacker.example").get("/").status_code == 400


def test_plotly_js_comes_from_the_installed_package(client: TestClient) -> None:
    from plotly.offline import get_plotlyjs

    r = client.get("/static/plotly.min.js")
    assert r.status_code == 200 and r.text == get_plotlyjs()
    assert "/static/plotly.min.js" in client.get("/runs/0/atlas").text
    assert "cdn" not in client.get("/runs/0/atlas").text.lower()


# -- the pages' scripts and stylesheet --------------------------------------------------------

STATIC = Path(__file__).resolve().parents[2] / "src" / "difflens" / "explore" / "static"


def _assets(html: str) -> list[str]:
    import re

    return re.findall(r"(?:src|href)='(/static/[^']+)'", html)


def test_pages_load_their_scripts_and_stylesheet_from_the_package(client: TestClient) -> None:
    import re

    pages = ["/", "/runs/0", "/runs/0/atlas", "/runs/1/tokens",
             "/runs/0/table?path=data/big.parquet", "/live/text", "/no-such-page"]
    served = set()
    for url in pages:
        html = client.get(url).text
        assert "/static/explorer.css" in html, url
        # no script in the page itself: only files, and at most the page's JSON config
        for attrs, code in re.findall(r"<script([^>]*)>(.*?)</script>", html, re.S):
            assert "src=" in attrs and not code or "application/json" in attrs, (url, attrs)
        served |= set(_assets(html))
    assert {"/static/common.js", "/static/table.js", "/static/atlas.js", "/static/tokens.js",
            "/static/shade.js"} <= served
    for url in served - {"/static/plotly.min.js"}:
        r = client.get(url)
        assert r.status_code == 200 and r.content == (STATIC / url[8:]).read_bytes(), url
        kind = "text/css" if url.endswith(".css") else "text/javascript"
        assert r.headers["content-type"].startswith(kind)
        again = client.get(url, headers={"If-None-Match": r.headers["etag"]})
        assert again.status_code == 304 and not again.content


def test_every_static_file_is_served_and_shipped_in_the_wheel() -> None:
    import fnmatch

    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    from difflens.explore.app import static_files

    names = sorted(p.name for p in STATIC.iterdir())
    assert sorted(static_files()) == names
    pyproject = tomllib.loads((STATIC.parents[3] / "pyproject.toml").read_text())
    globs = pyproject["tool"]["setuptools"]["package-data"]["difflens"]
    for name in names:
        assert any(fnmatch.fnmatch(f"explore/static/{name}", g) for g in globs), name


@pytest.mark.parametrize("attack", [
    "/static/../app.py", "/static/%2e%2e/app.py", "/static/..%2fapp.py",
    "/static/%2e%2e%2fapp.py", "/static/..%2f..%2fexplore%2fapp.py", "/static/%2e%2e",
    "/static/app.py", "/static/__init__.py", "/static/", "/static/%2e",
    "/static//etc/passwd", "/static/%2fetc%2fpasswd", "/static/..%5capp.py",
    "/static/common.js/../../app.py", "/static/common.js%00.py", "/static/COMMON.JS",
])
def test_static_serves_no_file_outside_its_own(client: TestClient, attack: str) -> None:
    r = client.get(attack)
    assert r.status_code == 404, attack
    assert "def create_app" not in r.text and "root:" not in r.text


def test_static_refuses_a_path_the_client_did_not_normalise(runs: dict[str, Path]) -> None:
    """The raw path reaches the app as sent (an HTTP client may drop ``..`` itself)."""
    import asyncio

    app = create_app([runs["traj"]])

    async def get(path: str) -> tuple[int, bytes]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {"type": "http", "method": "GET", "path": path, "raw_path": path.encode(),
                 "query_string": b"", "headers": [(b"host", b"127.0.0.1")],
                 "scheme": "http", "server": ("127.0.0.1", 80), "http_version": "1.1",
                 "root_path": "", "client": ("127.0.0.1", 1)}
        await app(scope, receive, send)
        return sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:])

    assert asyncio.run(get("/static/common.js"))[0] == 200
    for path in ("/static/../app.py", "/static/../../explore/app.py", "/static/../views.py",
                 "/static/./../app.py", "/static/../static/../app.py", "/static/..",
                 "/static/.", "/static/"):
        status, body = asyncio.run(get(path))
        assert status == 404 and b"def create_app" not in body, path


def test_page_config_cannot_end_its_script_element() -> None:
    from difflens.explore.views import config_script

    value = {"table": "</script><script>alert(1)</script>", "n": [1, "a&b<c>"]}
    tag = config_script(value)
    inner = tag[tag.index(">") + 1:tag.rindex("</script>")]
    assert "<" not in inner and ">" not in inner and "&" not in inner
    assert json.loads(inner) == value


# -- the command ----------------------------------------------------------------------------


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    """Calls of ``serve`` (replaced: nothing is served)."""
    import difflens.explore

    calls: list[Any] = []
    monkeypatch.setattr(difflens.explore, "serve", lambda folders, config:
                        calls.append((folders, config)))
    return calls


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(explore_cmd)
    return app


def test_command_binds_to_loopback_unless_told(runs: dict[str, Path],
                                               served: list[Any]) -> None:
    res = CliRunner().invoke(_cli(), [str(runs["traj"]), str(runs["coll"]), "--port", "9123"])
    assert res.exit_code == 0, res.output
    folders, config = served[-1]
    assert config.host == "127.0.0.1" and config.port == 9123 and len(folders) == 2
    assert "warning" not in res.output and "http://127.0.0.1:9123/" in res.output
    res = CliRunner().invoke(_cli(), [str(runs["traj"]), "--host", "0.0.0.0"])
    assert res.exit_code == 0 and served[-1][1].host == "0.0.0.0"
    assert "warning:" in res.output and "anyone who can reach this machine" in res.output


def test_command_errors_are_one_line(tmp_path: Path, served: list[Any]) -> None:
    for args, message in (([str(tmp_path / "nope")], "does not exist or is not a folder"),
                          ([], "at least one run folder"),
                          ([str(tmp_path), "--port", "70000"], "--port must be 0 to 65535")):
        res = CliRunner().invoke(_cli(), args)
        assert res.exit_code == 2 and message in res.output, res.output
    assert not served


def test_embedding_atlas_mount_serves_the_table_and_runs_no_sql(tmp_path: Path,
                                                                monkeypatch) -> None:
    """/runs/N/embedding-atlas: the app of the installed package over the atlas table; the
    server only sends the table (queries run in the browser), so a SQL request that would
    read a file elsewhere gets an error, never the file; without the package, one line."""
    from starlette.testclient import TestClient

    from difflens.explore import create_app
    from difflens.explore import embedding_atlas_view as eav

    run = make_trajectories_run(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("planted-secret-7")
    client = TestClient(create_app([run]), raise_server_exceptions=False)
    if eav.available():
        import io

        import pandas as pd

        r = client.get("/runs/0/embedding-atlas", follow_redirects=False)
        assert r.status_code in (302, 307) and r.headers["location"].endswith("/")
        page = client.get("/runs/0/embedding-atlas/")
        assert page.status_code == 200 and "<div id=\"app\"" in page.text
        table = pd.read_parquet(io.BytesIO(
            client.get("/runs/0/embedding-atlas/data/dataset.parquet").content))
        pts = planted_points()
        assert len(table) == len(pts)
        assert {"map_x", "map_y", "token", "jump", "theme"} <= set(table.columns)
        assert not {"x", "y", "z"} & set(table.columns)
        sql = {"sql": f"SELECT * FROM read_csv('{secret}')", "type": "json"}
        bad = client.post("/runs/0/embedding-atlas/data/query", json=sql)
        assert bad.status_code >= 400 and "planted-secret-7" not in bad.text
        assert client.get("/runs/7/embedding-atlas/").status_code == 404
    monkeypatch.setattr(eav, "available", lambda: False)
    miss = client.get("/runs/0/embedding-atlas/")
    assert miss.status_code == 501 and "pip install 'difflens[atlas]'" in miss.text


def test_path_api_returns_one_prompts_paths_in_step_order(tmp_path: Path) -> None:
    from starlette.testclient import TestClient

    from difflens.explore import create_app

    client = TestClient(create_app([make_trajectories_run(tmp_path)]))
    got = client.get("/api/runs/0/path", params={"prompt_id": "1", "model": "tuned"}).json()
    pts = planted_points()
    want = pts[(pts.prompt_id == 1) & (pts.model == "tuned")].sort_values(["segment", "step"])
    assert [(p["segment"], p["step"], p["token"]) for p in got["points"]] == list(
        zip(want.segment, want.step, want.token, strict=True))
    assert [p["z"] for p in got["points"]] == pytest.approx(want.z.tolist())
    bad = client.get("/api/runs/0/path", params={"prompt_id": "9", "model": "tuned"})
    assert bad.status_code == 422 and "no points of prompt '9'" in bad.json()["error"]
    assert client.get("/api/runs/0/path").status_code == 422
