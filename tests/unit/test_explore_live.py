"""The explorer's live views (difflens.explore.live) on a planted bigram pair: every
number they show is known in closed form from the planted tables.

The base and tuned models are exact bigram models (``bigram_model``): the next-token
distribution after token ``i`` is ``softmax(L[i])``. The tables put a clear favourite after
each word (a greedy chain), and the tuned table differs from the base only after ``fox``,
so the token after ``fox`` carries the largest KL. A concept vector (one-hot on ``cat``
at layer 1) and a state probe (``sigmoid(8 [token = fox] - 4)`` at layer 1) are planted in
run folders, as ``difflens concepts`` and ``difflens control train-probe`` write them.
"""

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import typer
from starlette.testclient import TestClient
from typer.testing import CliRunner

from difflens.capture.concepts import ConceptVectors
from difflens.cli.explore import explore_cmd
from difflens.control.state_probe import StateProbe
from difflens.errors import InputError
from difflens.explore import create_app
from difflens.explore.live import (
    NO_MODELS,
    Live,
    LiveLimits,
    continue_branch,
    expand,
    open_live,
    piece,
    score_text,
    steer,
    steer_request,
    trees,
)
from difflens.explore.live import info as live_info
from difflens.explore.runs import open_runs
from difflens.inputs.tokens import format_token
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair
from difflens.models.tiny import bigram_model

WORDS = ["the", "fox", "cat", "ran", "sat", "far", "home", "away"]
SPECIALS = ["<pad>", "<unk>", "<bos>", "<eos>"]
ID = {w: i for i, w in enumerate(SPECIALS + WORDS)}
V = len(ID)
#: Each word's favourite next word (the greedy chain), in the base model.
CHAIN = {"<bos>": "the", "the": "fox", "fox": "ran", "ran": "the", "cat": "sat",
         "sat": "far", "far": "home", "home": "away", "away": "the"}
#: The tuned model differs from the base only after this word.
CHANGED, TUNED_NEXT = "fox", "sat"
#: The planted concept vector and probe, both at layer 1 (the output of block 0).
VECTOR_WORD, VECTOR_LAYER, PROBE_WORD, PROBE_LAYER = "cat", 1, "fox", 1
ALPHA = 50.0


def planted_tables() -> dict[str, torch.Tensor]:
    """``label -> [V, V]`` logits: noise, a +4 favourite per row, specials never likely."""
    g = torch.Generator().manual_seed(0)
    base = torch.randn(V, V, generator=g)
    for word, nxt in CHAIN.items():
        base[ID[word], ID[nxt]] += 4.0
    base[:, : len(SPECIALS)] = -30.0
    tuned = base.clone()
    tuned[ID[CHANGED]] = torch.randn(V, generator=g)
    tuned[ID[CHANGED], ID[TUNED_NEXT]] += 5.0
    tuned[ID[CHANGED], : len(SPECIALS)] = -30.0
    return {"base": base, "tuned": tuned}


def probs(table: torch.Tensor, word: str) -> torch.Tensor:
    return torch.softmax(table[ID[word]].double(), -1)


def planted_pair() -> ModelPair:
    tables = planted_tables()
    return ModelPair(bigram_model(WORDS, tables["base"], name="bigram-base"),
                     bigram_model(WORDS, tables["tuned"], name="bigram-tuned"))


def write_vector_run(root: Path) -> Path:
    """A concepts run folder whose vectors are one-hot on VECTOR_WORD at layer 1."""
    run = root / "concepts-run"
    run.mkdir(parents=True)
    v = torch.zeros(1, V)
    v[0, ID[VECTOR_WORD]] = 1.0
    ConceptVectors(vectors={"base": v, "tuned": v.clone()}, layers=(VECTOR_LAYER,), n_items=8,
                   position="answer", method="mean_diff",
                   module_paths={"base": ["model.layers.0"], "tuned": ["model.layers.0"]},
                   dataset="planted.jsonl").save(run / "vectors.safetensors")
    (run / "summary.json").write_text(json.dumps({"planted": True}))
    return run


def write_probe_run(root: Path, lm: LoadedModel) -> Path:
    """A train-probe folder: ``sigmoid(8 [token = PROBE_WORD] - 4)`` at layer 1 (the
    residual stream there is the one-hot embedding of the token)."""
    run = root / "probe-run"
    run.mkdir(parents=True)
    w = torch.zeros(V)
    w[ID[PROBE_WORD]] = 8.0
    ident = lm.identity
    StateProbe(weight=w, bias=-4.0, layer=PROBE_LAYER, threshold=0.5, state_norm=1.0,
               model={"name": ident.name, "d_model": lm.d_model, "n_layers": lm.n_layers,
                      "tokenizer_sha256": ident.tokenizer_sha256,
                      "weights_sha256": ident.weights_sha256,
                      "architecture": ident.architecture}).save(run / "probe.safetensors")
    return run


def make_live(root: Path, limits: LiveLimits = LiveLimits()) -> tuple[Live, list[Path]]:
    pair = planted_pair()
    folders = [write_vector_run(root), write_probe_run(root, pair.base)]
    return open_live(pair, open_runs(folders), limits), folders


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Live:
    return make_live(tmp_path_factory.mktemp("live"))[0]


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> TestClient:
    lv, folders = make_live(tmp_path_factory.mktemp("live-app"))
    return TestClient(create_app(folders, live=lv))


def greedy(table: torch.Tensor, last: str, n: int, add: torch.Tensor | None = None) -> list[str]:
    """The greedy chain of a bigram table from ``last``; ``add``: a steering vector added
    to the (one-hot) residual stream, normalised as RMSNorm does."""
    names = list(ID)
    out, cur = [], ID[last]
    for _ in range(n):
        h = torch.zeros(V, dtype=torch.float64)
        h[cur] = 1.0
        if add is not None:
            h = h + add.double()
        logits = (h / h.norm()) @ table.double()
        cur = int(logits.argmax())
        out.append(names[cur])
    return out


# -- typed text -----------------------------------------------------------------------------


def test_typed_text_statistics_and_top_k_are_the_planted_ones(live: Live) -> None:
    tables = planted_tables()
    words = ["the", "fox", "sat", "far"]
    scored = score_text(live, " ".join(words), top_k=3)
    assert scored.models == ["base", "tuned"] and scored.n_tokens == len(words) + 1
    assert [t["text"] for t in scored.tokens] == ["the", " fox", " sat", " far"]
    prev = ["<bos>", *words[:-1]]
    for row, before, word in zip(scored.tokens, prev, words, strict=True):
        p = {m: probs(tables[m], before) for m in tables}
        for m in tables:
            assert row[f"{m}_logprob"] == pytest.approx(math.log(p[m][ID[word]]), abs=1e-4)
            entropy = float(-(p[m] * p[m].log()).sum())
            assert row[f"{m}_entropy"] == pytest.approx(entropy, abs=1e-4)
            top = p[m].topk(3)
            assert [x["token_id"] for x in row["top"][m]] == top.indices.tolist()
            assert [x["prob"] for x in row["top"][m]] == pytest.approx(top.values.tolist(),
                                                                       abs=1e-5)
        kl = float((p["tuned"] * (p["tuned"] / p["base"]).log()).sum())
        assert row["kl_tuned_base"] == pytest.approx(kl, abs=1e-4)
        assert row["tuned_minus_base"] == pytest.approx(
            row["tuned_logprob"] - row["base_logprob"])
    kls = [t["kl_tuned_base"] for t in scored.tokens]
    assert kls.index(max(kls)) == 2 and max(kls) > 1.0  # the token after "fox"
    assert max(kls[:2] + kls[3:]) == pytest.approx(0.0, abs=1e-5)
    after = probs(tables["base"], "far").topk(3).indices.tolist()
    assert [x["token_id"] for x in scored.next["top"]["base"]] == after
    assert scored.next["top"]["base"][0]["text"] == " home"
    # top-k labels come quoted from the one token formatter (spaces show)
    assert scored.next["top"]["base"][0]["shown"] == '" home"'
    assert all(x["shown"] == format_token(x["text"], quoted=True)
               for row in scored.tokens for m in row["top"] for x in row["top"][m])


def test_typed_text_is_checked(live: Live) -> None:
    with pytest.raises(InputError, match="top_k must be from 1 to 10"):
        score_text(live, "the fox", top_k=11)
    with pytest.raises(InputError, match="more than the 256 this view takes"):
        score_text(live, " ".join(["the"] * 300))


# -- the multiverse -------------------------------------------------------------------------


def test_tree_children_are_the_planted_probabilities(live: Live) -> None:
    tables = planted_tables()
    got = trees(live, "the fox", depth=2, top_k=3, min_prob=0.0)
    assert got["prompt_ids"] == [ID["<bos>"], ID["the"], ID["fox"]]
    for m, table in tables.items():
        root = got["trees"][m]
        top = probs(table, "fox").topk(3)
        assert [c["token_id"] for c in root["children"]] == top.indices.tolist()
        for child, p in zip(root["children"], top.values.tolist(), strict=True):
            assert child["prob"] == pytest.approx(p, abs=1e-6)
            assert child["path"] == [child["token_id"]]
            word = list(ID)[child["token_id"]]
            below = probs(table, word).topk(3)
            assert [g["prob"] for g in child["children"]] == pytest.approx(
                below.values.tolist(), abs=1e-6)
            assert [g["seq_prob"] for g in child["children"]] == pytest.approx(
                (p * below.values).tolist(), abs=1e-6)
    assert got["trees"]["base"]["children"][0]["token_id"] == ID["ran"]
    assert got["trees"]["tuned"]["children"][0]["token_id"] == ID["sat"]
    assert got["trees"]["base"]["children"][0]["shown"] == '" ran"'


def test_expanding_a_node_gives_its_planted_children(live: Live) -> None:
    tables = planted_tables()
    path = [ID["ran"], ID["the"]]
    for m, table in tables.items():
        got = expand(live, m, "the fox", path, top_k=4)
        assert got["exact"] and got["text"] == "the fox ran the"
        top = probs(table, "the").topk(4)
        assert [c["token_id"] for c in got["children"]] == top.indices.tolist()
        assert [c["prob"] for c in got["children"]] == pytest.approx(top.values.tolist(),
                                                                     abs=1e-6)
        assert sum(c["prob"] for c in got["children"]) <= 1.0
        assert got["children"][0]["path"] == path + [ID["fox"]]
        assert got["children"][0]["shown"] == '" fox"'
    with pytest.raises(InputError, match="model must be one of base, tuned"):
        expand(live, "other", "the fox", path)


def test_continuing_a_branch_is_each_models_greedy_chain(live: Live) -> None:
    tables = planted_tables()
    got = continue_branch(live, "the fox", [ID["ran"]], max_new_tokens=6)
    assert got["branch"] == "the fox ran"
    for m, table in tables.items():
        chain = greedy(table, "ran", 6)
        assert got["continuations"][m]["token_ids"] == [ID[w] for w in chain]
        assert got["continuations"][m]["text"] == "".join(" " + w for w in chain)
    # the tuned model leaves the base's loop at its changed row
    assert "sat" in got["continuations"]["tuned"]["text"]
    assert "sat" not in got["continuations"]["base"]["text"]


def test_tree_sizes_are_capped(live: Live) -> None:
    with pytest.raises(InputError, match="depth must be from 1 to 5"):
        trees(live, "the fox", depth=6, top_k=2)
    with pytest.raises(InputError, match="may grow 11110 nodes"):
        trees(live, "the fox", depth=4, top_k=10)
    with pytest.raises(InputError, match="max_new_tokens must be from 1 to 64"):
        continue_branch(live, "the fox", [], max_new_tokens=65)


# -- steer and monitor ----------------------------------------------------------------------


def _words(gen: dict[str, Any]) -> list[str]:
    return [t["text"].strip() for t in gen["tokens"]]


def test_steering_changes_greedy_text_as_planted_and_alpha_zero_changes_nothing(
        live: Live) -> None:
    tables = planted_tables()
    vector = next(v.id for v in live.vectors if v.label == "base")
    assert vector == "concepts-run/vectors.safetensors:base"
    add = torch.zeros(V)
    add[ID[VECTOR_WORD]] = ALPHA
    for alpha in (0.0, ALPHA):
        got = steer(live, steer_request(live, {"prompt": "the fox", "vector": vector,
                                               "alpha": alpha, "max_new_tokens": 6}))
        assert got["layer"] == VECTOR_LAYER
        for m, table in tables.items():
            plain, steered = got["models"][m]["plain"], got["models"][m]["steered"]
            assert _words(plain) == greedy(table, "fox", 6)
            if alpha == 0:
                assert steered == plain
            else:
                assert _words(steered) == greedy(table, "fox", 6, add)
                assert steered["text"] != plain["text"]
    # the closed form differs from the plain chain: steering really moved the text
    assert greedy(tables["base"], "fox", 6, add) != greedy(tables["base"], "fox", 6)


def test_probe_scores_every_generated_token_as_planted(live: Live) -> None:
    probe = live.probes[0].id
    assert probe == "probe-run/probe.safetensors"
    got = steer(live, steer_request(live, {"prompt": "the fox", "probe": probe,
                                           "max_new_tokens": 6}))
    assert got["threshold"] == 0.5
    high, low = 1 / (1 + math.exp(-4.0)), 1 / (1 + math.exp(4.0))
    for m in ("base", "tuned"):
        for gen in got["models"][m].values():
            words = _words(gen)
            assert [t["score"] for t in gen["tokens"]] == pytest.approx(
                [high if w == PROBE_WORD else low for w in words], abs=1e-5)
    assert PROBE_WORD in _words(got["models"]["base"]["plain"])  # the chain passes fox
    assert any("other weights" in n for n in got["notes"])  # the tuned model's weights


@pytest.mark.parametrize(("body", "message"), [
    ({"prompt": "the", "vector": "nope"}, "vector must be one of the concept vectors"),
    ({"prompt": "the", "controller": "open_loop", "gain": 1.0},
     "a controller needs a probe"),
    ({"prompt": "the", "controller": "bang_bang"}, "controller must be one of none"),
    ({"prompt": "the", "alpha": "big"}, "alpha must be a number from -1000 to 1000"),
    ({"prompt": "the", "alpha": 1e6}, "alpha must be from -1000 to 1000"),
    ({"prompt": "the", "gain": -1}, "gain must be from 0 to 100"),
    ({"prompt": "", "alpha": 1}, "prompt must be a non-empty text"),
    ({"prompt": "the", "max_new_tokens": 0}, "max_new_tokens must be from 1 to 64"),
])
def test_steer_requests_are_checked(live: Live, body: dict[str, Any], message: str) -> None:
    with pytest.raises(InputError, match=message):
        steer_request(live, body)


def test_steering_at_a_layer_the_vector_lacks_says_which_it_has(live: Live) -> None:
    vector = live.vectors[0].id
    with pytest.raises(InputError, match=r"one of the vector's layers \[1\], got 0"):
        steer(live, steer_request(live, {"prompt": "the", "vector": vector, "layer": 0}))


# -- the endpoints --------------------------------------------------------------------------


def test_live_endpoints_answer_with_the_planted_values(client: TestClient) -> None:
    info = client.get("/api/live/info").json()
    assert info["models"] == {"base": "bigram-base", "tuned": "bigram-tuned"}
    assert [v["id"] for v in info["vectors"]] == ["concepts-run/vectors.safetensors:base",
                                                  "concepts-run/vectors.safetensors:tuned"]
    r = client.post("/api/live/score", json={"text": "the fox sat", "top_k": 2})
    assert r.status_code == 200, r.text
    kls = [t["kl_tuned_base"] for t in r.json()["tokens"]]
    assert kls.index(max(kls)) == 2
    r = client.post("/api/live/expand", json={"model": "tuned", "prompt": "the",
                                              "path": [ID["fox"]], "top_k": 1})
    assert r.json()["children"][0]["token_id"] == ID[TUNED_NEXT]
    for page, marker in (("text", "Type text"), ("tree", "Multiverse"), ("steer", "Steer")):
        html = client.get(f"/live/{page}").text
        assert marker in html and "bigram-tuned" in html and NO_MODELS not in html
        # the models' info reaches the scripts as the page's JSON config, not as code
        config = html.split("<script type='application/json' id='config'>")[1]
        assert json.loads(config.split("</script>")[0])["info"] == info
        for script in ("common.js", "live.js", f"live_{page}.js"):
            assert f"src='/static/{script}'" in html
            assert client.get(f"/static/{script}").status_code == 200


def test_a_special_token_shows_as_its_token_string(live: Live) -> None:
    assert piece(live.tokenizer, [ID["the"]], ID["<eos>"]) == "<eos>"
    assert piece(live.tokenizer, [ID["the"]], ID["fox"]) == " fox"


@pytest.mark.parametrize(("url", "body", "status", "message"), [
    ("/api/live/score", "not json", 400, "must be a JSON object"),
    ("/api/live/score", [1, 2], 400, "must be a JSON object"),
    ("/api/live/score", {"text": "x" * 2001}, 422, "2001 characters, more than the 2000"),
    ("/api/live/score", {"text": "the", "top_k": "5"}, 422, "top_k must be a whole number"),
    ("/api/live/tree", {"prompt": "the", "depth": 9}, 422, "depth must be from 1 to 5"),
    ("/api/live/tree", {"prompt": "the", "depth": 5, "top_k": 5}, 422, "may grow 3905 nodes"),
    ("/api/live/expand", {"model": "base", "prompt": "the", "path": [99]}, 422,
     "path must be a list of token ids (0 to 11)"),
    ("/api/live/expand", {"model": "base", "prompt": "the", "path": [4] * 65}, 422,
     "more than 64"),
    ("/api/live/continue", {"prompt": "the", "max_new_tokens": 500}, 422,
     "max_new_tokens must be from 1 to 64"),
    ("/api/live/steer", {"prompt": "the", "probe": "x"}, 422, "probe must be one of"),
])
def test_bad_live_requests_get_one_line(client: TestClient, url: str, body: Any, status: int,
                                        message: str) -> None:
    r = (client.post(url, content=body) if isinstance(body, str)
         else client.post(url, json=body))
    assert r.status_code == status, r.text
    error = r.json()["error"]
    assert message in error and "\n" not in error


def test_a_huge_body_is_refused_before_it_is_read_as_json(client: TestClient) -> None:
    r = client.post("/api/live/score", content=b"{" + b" " * 70_000 + b"}")
    assert r.status_code == 400 and "more than 65536" in r.json()["error"]


def test_without_models_the_live_views_say_how_to_start(tmp_path: Path) -> None:
    run = tmp_path / "run"
    run.mkdir()
    c = TestClient(create_app([run]))
    for page in ("text", "tree", "steer"):
        assert NO_MODELS in c.get(f"/live/{page}").text
    r = c.post("/api/live/score", json={"text": "the"})
    assert r.status_code == 400 and r.json()["error"] == NO_MODELS
    assert c.get("/api/live/info").status_code == 400
    with pytest.raises(InputError, match="at least one run folder"):
        create_app([])


# -- the command ----------------------------------------------------------------------------


def _cli() -> typer.Typer:
    app = typer.Typer()
    app.command()(explore_cmd)
    return app


@pytest.fixture
def served(monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    import difflens.explore

    calls: list[Any] = []
    monkeypatch.setattr(difflens.explore, "serve", lambda folders, config, live=None:
                        calls.append((folders, config, live)))
    return calls


def test_command_loads_the_pair_once_and_finds_vectors_and_probes(
        tmp_path: Path, served: list[Any]) -> None:
    pair = planted_pair()
    names = {}
    for label, lm in pair.models.items():
        names[label] = str(tmp_path / label)
        lm.model.save_pretrained(names[label])
        lm.tokenizer.save_pretrained(names[label])
    runs = [write_vector_run(tmp_path), write_probe_run(tmp_path, pair.base)]
    res = CliRunner().invoke(_cli(), [*map(str, runs), "--base", names["base"], "--tuned",
                                      names["tuned"], "--dtype", "float32", "--device", "cpu"])
    assert res.exit_code == 0, res.output
    folders, config, lv = served[-1]
    assert len(folders) == 2 and config.host == "127.0.0.1"
    assert list(lv.models) == ["base", "tuned"] and len(lv.vectors) == 2
    assert [p.layer for p in lv.probes] == [PROBE_LAYER]
    assert "live views on base, tuned" in res.output
    # the loaded models are the planted ones
    tables = planted_tables()
    top = score_text(lv, "the fox", top_k=1).tokens[1]["top"]
    assert top["tuned"][0]["token_id"] == int(probs(tables["tuned"], "the").argmax())
    # models alone, no run folders
    res = CliRunner().invoke(_cli(), ["--base", names["base"]])
    assert res.exit_code == 0, res.output
    assert list(served[-1][2].models) == ["model"] and served[-1][0] == []


def test_command_errors_about_models_are_one_line(tmp_path: Path, served: list[Any]) -> None:
    for args, message in ((["--tuned", "x"], "--tuned needs --base"),
                          (["--base", str(tmp_path / "nope")], "does not exist")):
        res = CliRunner().invoke(_cli(), args)
        assert res.exit_code == 2 and message in res.output, res.output
    assert not served


def test_a_broken_vector_file_is_listed_not_fatal(tmp_path: Path) -> None:
    run = tmp_path / "bad"
    run.mkdir()
    (run / "vectors.safetensors").write_bytes(b"not safetensors")
    lv = open_live(planted_pair().base, open_runs([run]))
    assert lv.vectors == () and len(lv.problems) == 1
    assert "bad/vectors.safetensors" in lv.problems[0]


def test_typed_text_offers_the_state_probe_score_per_token(live: Live) -> None:
    """The planted probe reads sigmoid(8 [token = fox] - 4) at layer 1, where the state is
    the current token's one-hot embedding: every token's score is known in closed form."""
    words = ["the", "fox", "sat", "fox"]
    scored = score_text(live, " ".join(words), top_k=2)
    stats = live_info(live)["statistics"]
    assert stats["probe0"]["columns"] == {"base": "base_probe0", "tuned": "tuned_probe0"}
    high, low = 1 / (1 + math.exp(-4.0)), 1 / (1 + math.exp(4.0))
    for m in ("base", "tuned"):
        assert [t[f"{m}_probe0"] for t in scored.tokens] == pytest.approx(
            [high if w == PROBE_WORD else low for w in words], abs=1e-5)
