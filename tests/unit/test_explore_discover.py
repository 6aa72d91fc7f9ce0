"""The explorer's discover view over a real ``difflens discover`` run of the planted-shift
pair (``test_discover``'s setup: every method finds the planted words): the page shows the
hypothesis, each method's words, the Patchscope grid and the steering rows; a word opens
the texts where the models differ most on it (the token marked by the span discover
stored); the amplification endpoint gives the samples at one alpha with the hypothesis
words marked; a lineage's stages and a compare folder's discover section open too."""

import json
import shutil
from html import escape
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from starlette.testclient import TestClient

from difflens.analysis.discover import words_match
from difflens.explore import create_app
from difflens.explore.runs import open_runs
from difflens.models.tiny import (
    PLANTED_WORDS,
    filler_words,
    planted_inputs,
    planted_shift_pair,
)
from difflens.pipelines.discover import DiscoverConfig, run_discover

# test_discover's planted world and small config
WORDS = filler_words()
PLANTED = list(PLANTED_WORDS)
CONFIG = DiscoverConfig(n_words=10, samples=6, max_new_tokens=20, alphas=(0.0, 2.0),
                        strengths=(1.0, 4.0), scales=(1.0, 2.0), n_boot=200)


_inputs = planted_inputs


def make_discover_run(root: Path) -> tuple[Path, Any]:
    """``difflens discover`` of the planted-shift pair into ``root/discover-run``; returns
    the folder and the pair."""
    texts, openings, finetune = _inputs()
    pair = planted_shift_pair(WORDS + PLANTED, PLANTED)
    out = root / "discover-run"
    run_discover(pair, out, CONFIG, texts=texts, openings=openings, finetune_texts=finetune)
    return out, pair


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    out, pair = make_discover_run(tmp_path_factory.mktemp("explore-discover"))
    return {"out": out, "pair": pair,
            "summary": json.loads((out / "summary.json").read_text())}


@pytest.fixture(scope="module")
def client(planted: dict[str, Any]) -> TestClient:
    return TestClient(create_app([planted["out"]]))


def test_discover_view_shows_hypothesis_methods_grid_and_steering(
        client: TestClient, planted: dict[str, Any]) -> None:
    d = planted["summary"]["discover"]
    assert "/runs/0/discover" in client.get("/").text
    assert "/runs/0/discover" in client.get("/runs/0").text
    res = client.get("/runs/0/discover")
    assert res.status_code == 200
    page = res.text
    # the hypothesis: the planted words, each clickable, with the methods that list it
    hyp = page[page.index("id='hypothesis'"):page.index("id='methods'")]
    assert set(d["hypothesis"]["words"]) == set(PLANTED)
    for w in PLANTED:
        assert f"data-word='{w}'" in hyp
        row = hyp[hyp.index(f"<tr data-hyp='{w}'>"):]
        row = row[:row.index("</tr>")]
        assert [m for m in ("adl", "mining", "amplify", "logodds") if f">{m}<" in row] == \
            [m for m in ("adl", "mining", "amplify", "logodds")
             if m in d["hypothesis"]["support"][w]]
    assert escape(d["hypothesis"]["note"], quote=True) in hyp
    assert hyp.count("<mark>") >= 1  # the examples mark the hypothesis words
    # each method's top words, side by side, every one clickable
    for m in ("adl", "mining", "amplify", "logodds"):
        col = page[page.index(f"data-method='{m}'"):]
        col = col[:col.index("</ol>")]
        assert [w for w in d[m]["top_words"]] == \
            [seg.split("'")[0] for seg in col.split("data-word='")[1:]]
    # the Patchscope grid: words x scales, the chosen scale marked
    grid = page[page.index("id='grid'"):page.index("id='steering'")]
    ps = d["adl"]["patchscope"]
    for s in ps["scales"]:
        star = " ★" if s == ps["chosen_scale"] else ""
        assert f"data-scale='{s:g}'>{s:g}{star}</th>" in grid
    assert grid.count("★") == 1
    table = pd.read_parquet(planted["out"] / "data" / "adl_patchscope.parquet")
    best = table.loc[table["probability"].idxmax()]
    assert f"<tr data-word-row='{best['word']}'>" in grid
    assert f"data-p='{best['probability']}'" in grid
    assert all(f"data-word-row='{w}'" in grid for w in ps["words"])
    # steering: each model's openings, unsteered, steered and random side by side
    steer = pd.read_parquet(planted["out"] / "data" / "adl_steering.parquet")
    section = page[page.index("id='steering'"):page.index("id='amplify'")]
    for model in ("tuned", "base"):
        rows = steer[steer["model"] == model]
        assert section.count(f"<tr data-model='{model}'>") == len(rows) == 6
        first = rows.iloc[0]
        for col in ("steered", "unsteered", "random"):
            assert f"<td class='{col}'" in section and escape(first[col], quote=True) in section
    # amplification: one row per alpha and the slider over them
    amp = page[page.index("id='amplify'"):]
    assert amp.count("<tr data-i=") == len(CONFIG.alphas)
    assert f"max='{len(CONFIG.alphas) - 1}'" in amp
    assert '"alphas": [0.0, 2.0]' in page


def test_a_word_opens_the_texts_where_the_models_differ_most(
        client: TestClient, planted: dict[str, Any]) -> None:
    examples = pd.read_parquet(planted["out"] / "data" / "mining_examples.parquet")
    res = client.get("/api/runs/0/discover/word", params={"word": "Harbor"})
    assert res.status_code == 200
    got = res.json()
    assert got["word"] == "harbor" and got["matched"] == ["harbor"] and got["note"] == ""
    texts = got["texts"]
    mine = examples[examples["word"] == "harbor"]
    assert 0 < len(texts) <= len(mine)
    # raised first, then the largest change first; the token read before the change is
    # marked by the span discover stored (the word tokenizer: one token a word after <bos>)
    ups = [t for t in texts if t["direction"] == "up"]
    assert texts[:len(ups)] == ups and ups
    assert [abs(t["diff"]) for t in ups] == sorted((abs(t["diff"]) for t in ups), reverse=True)
    assert abs(ups[0]["diff"]) == pytest.approx(mine[mine["direction"] == "up"]["diff"]
                                                .abs().max())
    for t in texts:
        content = mine[mine["text"] == t["text"]]["content"].iloc[0]
        assert "".join(p for p, _ in t["pieces"]) == content
        if t["position"] == 0:  # <bos> spells no characters: the text comes whole
            assert not t["placed"] and len(t["pieces"]) == 1
            continue
        before, at, after = (p for p, _ in t["pieces"])
        assert t["placed"] and [m for _, m in t["pieces"]] == [False, True, False]
        assert at == content.split()[t["position"] - 1]
        assert len(before.split()) == t["position"] - 1
    # a piece of a word names it (the words_match rule); a word with no texts says why
    assert client.get("/api/runs/0/discover/word?word=lighth").json()["matched"] == [
        "lighthouse"]
    none = client.get("/api/runs/0/discover/word?word=zzzz").json()
    assert none["texts"] == [] and "no texts for 'zzzz'" in none["note"]
    assert client.get("/api/runs/0/discover/word?word=").status_code == 422


def test_a_run_without_stored_spans_shows_each_text_whole(planted: dict[str, Any],
                                                          tmp_path: Path) -> None:
    """A run written before discover stored each change's character span: the texts come
    whole, and the page says why."""
    old = tmp_path / "old"
    shutil.copytree(planted["out"], old)
    path = old / "data" / "mining_examples.parquet"
    pd.read_parquet(path).drop(columns=["char_start", "char_end"]).to_parquet(path)
    client = TestClient(create_app([old]))
    texts = client.get("/api/runs/0/discover/word?word=harbor").json()["texts"]
    assert texts and not any(t["placed"] for t in texts)
    assert all(len(t["pieces"]) == 1 for t in texts)
    assert '"placed": false' in client.get("/runs/0/discover").text


def test_amplified_samples_at_one_alpha_mark_the_hypothesis_words(
        client: TestClient, planted: dict[str, Any]) -> None:
    samples = pd.read_parquet(planted["out"] / "data" / "amplify_samples.parquet")
    words = planted["summary"]["discover"]["hypothesis"]["words"]
    for alpha in CONFIG.alphas:
        got = client.get(f"/api/runs/0/discover/samples?alpha={alpha:g}").json()
        want = samples[samples["alpha"] == alpha].sort_values("sample")
        assert got["alpha"] == alpha and got["total"] == len(want) == 36
        assert ["".join(p for p, _ in s["pieces"]) for s in got["samples"]] == list(want["text"])
        for s in got["samples"]:
            for piece, mark in s["pieces"]:
                if mark:
                    assert any(words_match(piece.lower(), w) or words_match(w, piece.lower())
                               for w in words), piece
        assert got["marked"] == sum(any(m for _, m in s["pieces"]) for s in got["samples"])
    # the fine-tune's words grow with alpha: more samples hold one at the largest alpha
    low, high = (client.get(f"/api/runs/0/discover/samples?alpha={a:g}").json()["marked"]
                 for a in CONFIG.alphas)
    assert high >= low and high > 0
    bad = client.get("/api/runs/0/discover/samples?alpha=3")
    assert bad.status_code == 422 and "the run has alphas 0, 2" in bad.json()["error"]
    assert client.get("/api/runs/0/discover/samples?alpha=x").status_code == 422


def test_other_runs_have_no_discover_view(tmp_path: Path) -> None:
    run = tmp_path / "plain"
    run.mkdir()
    (run / "summary.json").write_text(json.dumps({"collapse": {}}))
    client = TestClient(create_app([run]))
    assert "/runs/0/discover" not in client.get("/").text
    assert client.get("/runs/0/discover").status_code == 404
    assert client.get("/api/runs/0/discover/word?word=a").status_code == 422
    assert client.get("/api/runs/9/discover/word?word=a").status_code == 404


def test_a_lineage_and_a_compare_section_open_their_stages(
        tmp_path: Path, planted: dict[str, Any]) -> None:
    """A lineage run's ``stages/<a>-to-<b>`` and a compare folder's ``discover`` section
    (with its own stages) each open as a discover run, linked from the lineage's view; a
    stage listed but missing, or one whose folder leaves the run, is not opened."""
    lineage = tmp_path / "lineage"
    shutil.copytree(planted["out"], lineage)
    for stage in ("base-to-sft", "sft-to-rl"):
        shutil.copytree(planted["out"], lineage / "stages" / stage)
    summary = dict(planted["summary"])
    summary["stages"] = {s: summary["discover"] for s in ("base-to-sft", "sft-to-rl",
                                                            "missing", "../../elsewhere")}
    (lineage / "summary.json").write_text(json.dumps(summary))
    shutil.copytree(planted["out"], tmp_path / "elsewhere")
    compare = tmp_path / "compare"
    compare.mkdir()
    # compare's own summary holds the section's whole summary: not a discover run itself
    (compare / "summary.json").write_text(json.dumps({"sections": ["discover"],
                                                      "discover": summary}))
    shutil.copytree(lineage, compare / "discover")
    runs = open_runs([lineage, compare])
    assert [r.name for r in runs] == [
        "lineage", "lineage/stages/base-to-sft", "lineage/stages/sft-to-rl", "compare",
        "compare/discover", "compare/discover/stages/base-to-sft",
        "compare/discover/stages/sft-to-rl"]
    client = TestClient(create_app([lineage, compare]))
    home = client.get("/").text
    assert all(f"/runs/{i}/discover" in home for i in (0, 1, 2, 4, 5, 6))
    assert "/runs/3/discover" not in home and client.get("/runs/3/discover").status_code == 404
    page = client.get("/runs/4/discover").text
    stages = page[page.index("id='stages'"):page.index("id='methods'")]
    assert "<a href='/runs/5/discover'>base-to-sft</a>" in stages
    assert "<a href='/runs/6/discover'>sft-to-rl</a>" in stages
    assert "missing: " in stages and "/runs/7" not in stages
    assert client.get("/runs/6/discover").status_code == 200


def test_a_run_without_a_hypothesis_or_some_methods_says_so(tmp_path: Path) -> None:
    """Mining alone on a tuned model equal to the base: no hypothesis (the note says why),
    and the parts of the methods that did not run say so instead of failing."""
    texts, openings, _ = _inputs()
    pair = planted_shift_pair(WORDS + PLANTED, PLANTED, shift=0.0)
    out = tmp_path / "run"
    run_discover(pair, out, DiscoverConfig(methods=("mining",), n_words=10, samples=2,
                                           max_new_tokens=5, n_boot=50),
                 texts=texts, openings=openings)
    client = TestClient(create_app([out]))
    page = client.get("/runs/0/discover").text
    assert "no hypothesis" in page and "<table id='hyp-words'>" not in page
    for method in ("adl", "amplify"):
        col = page[page.index(f"data-method='{method}'"):]
        assert col[:col.index("</div>")].endswith("did not run</p>")
    assert "ADL did not run" in page and "Amplification did not run" in page
    assert "type='range'" not in page
    res = client.get("/api/runs/0/discover/samples?alpha=0")
    assert res.status_code == 422 and "amplification did not run" in res.json()["error"]
    word = client.get("/api/runs/0/discover/word?word=harbor").json()
    assert word["texts"] == [] and word["note"]
