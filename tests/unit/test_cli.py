"""The command line: capture run, capture info, one-line errors, and resume after kill -9."""

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.cli.main import app

runner = CliRunner()
CLI = [sys.executable, "-m", "difflens.cli.main"]


def run(*args: str):
    return runner.invoke(app, list(args))


def capture(*args: str):
    return run("capture", "run", *args)


def one_line_error(result, pattern: str) -> None:
    assert result.exit_code == 2, result.output
    text = result.output.strip()
    assert "Traceback" not in text
    lines = text.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), text
    assert pattern in lines[0], text


@pytest.fixture
def prompt_file(tmp_path: Path, prompts) -> Path:
    path = tmp_path / "prompts.txt"
    path.write_text("\n".join(prompts) + "\n")
    return path


def test_capture_and_info(tiny_folder, prompt_file, tmp_path):
    out = tmp_path / "run"
    res = capture("--base", str(tiny_folder), "--tuned", str(tiny_folder), "--prompts",
              str(prompt_file), "--layers", "0,2,-1", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert "stored 10 prompts" in res.output
    res = run("capture", "info", str(out), "--json")
    info = json.loads(res.output)
    assert info["layers"] == [0, 2, 4] and set(info["models"]) == {"base", "tuned"}
    assert "kl_tuned_base" in info["stats_columns"]
    res = run("capture", "info", str(out))
    assert res.exit_code == 0 and "n_tokens" in res.output


def test_capture_of_statistics_only(tiny_folder, prompt_file, tmp_path):
    out = tmp_path / "stats-only"
    res = capture("--base", str(tiny_folder), "--tuned", str(tiny_folder), "--prompts",
                  str(prompt_file), "--layers", "none", "--out", str(out))
    assert res.exit_code == 0, res.output
    assert not list(out.glob("tensors/*/*.safetensors")) or all(
        "layer." not in name for name in _tensor_names(out))
    info = json.loads(run("capture", "info", str(out), "--json").output)
    assert info["layers"] == [] and "kl_tuned_base" in info["stats_columns"]
    res = run("capture", "info", str(out))
    assert res.exit_code == 0 and "none (statistics only)" in res.output, res.output


def _tensor_names(store: Path) -> list[str]:
    from safetensors import safe_open

    names = []
    for path in store.glob("tensors/*/*.safetensors"):
        with safe_open(str(path), "pt") as f:
            names += list(f.keys())
    return names


@pytest.mark.parametrize(
    ("content", "args", "pattern"),
    [
        ("ok\n\nok\n", [], "prompts.txt:2: empty prompt"),
        ("ok\n", ["--layers", "12"], "layer 12 is out of range: this model has layers 0..4"),
        ("ok\n", ["--positions", "last,first"], "--positions takes integers"),
    ],
)
def test_bad_input_is_one_line(tiny_folder, tmp_path, content, args, pattern):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text(content)
    res = capture("--base", str(tiny_folder), "--prompts", str(prompts), "--out",
              str(tmp_path / "run"), *args)
    one_line_error(res, pattern)


def test_bad_jsonl_non_utf8_and_missing_model(tiny_folder, tmp_path):
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"prompt": "a"}\n{oops}\n')
    common = ["--out", str(tmp_path / "run")]
    one_line_error(capture("--base", str(tiny_folder), "--prompts", str(bad), *common),
                   "p.jsonl:2: malformed JSON")
    raw = tmp_path / "r.txt"
    raw.write_bytes(b"ab\xffc\n")
    one_line_error(capture("--base", str(tiny_folder), "--prompts", str(raw), *common),
                   "not valid UTF-8 at byte offset 2")
    good = tmp_path / "g.txt"
    good.write_text("the fox\n")
    one_line_error(capture("--base", str(tmp_path / "nope"), "--prompts", str(good),
                       *common), "does not exist")
    one_line_error(run("capture", "info", str(tmp_path / "nope")), "is not a run store directory")


def test_tokenizer_mismatch_and_unwritable_out(tiny_folder, tmp_path):
    from difflens.models.tiny import tiny_model, word_tokenizer

    other = tmp_path / "other"
    lm = tiny_model(0, tokenizer=word_tokenizer(["cat", "dog"]))
    lm.model.save_pretrained(other)
    lm.tokenizer.save_pretrained(other)
    good = tmp_path / "g.txt"
    good.write_text("the fox\n")
    one_line_error(capture("--base", str(tiny_folder), "--tuned", str(other), "--prompts",
                       str(good), "--out", str(tmp_path / "run")), "the tokenizers differ")
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    one_line_error(capture("--base", str(tiny_folder), "--prompts", str(good), "--out",
                       str(blocker / "run")), "is not writable")


def test_too_long_prompt_warns_or_errors(tmp_path):
    from difflens.models.tiny import tiny_model

    lm = tiny_model(0, max_positions=4)
    folder = tmp_path / "short"
    lm.model.save_pretrained(folder)
    lm.tokenizer.save_pretrained(folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text("once upon a time there was\nthe fox\n")
    res = capture("--base", str(folder), "--prompts", str(prompts), "--out",
              str(tmp_path / "run"))
    assert res.exit_code == 0 and "warning: 1 prompt(s) were longer" in res.output
    one_line_error(capture("--base", str(folder), "--prompts", str(prompts), "--out",
                       str(tmp_path / "strict"), "--no-truncate"),
                   "prompt 0 has 7 tokens, more than the context of 4")


def _digest(run_dir: Path) -> dict[str, str]:
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*"))
            if p.is_file() and (p.suffix == ".safetensors" or p.parent.name == "stats")}


def test_kill_9_then_rerun_gives_identical_files(tiny_folder, tmp_path, prompts):
    many = tmp_path / "many.txt"
    many.write_text("\n".join(prompts * 200) + "\n")  # about 24 shards of 1 MB
    args = ["capture", "run", "--base", str(tiny_folder), "--tuned", str(tiny_folder), "--prompts",
            str(many), "--shard-mb", "1", "--batch-size", "16", "--out"]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    killed = tmp_path / "killed"
    # a real process, killed with SIGKILL once it has written two shards
    proc = subprocess.Popen([*CLI, *args, str(killed)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "stats").glob("shard-00001.parquet")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "manifest.json").exists(), "run finished before it could be killed"
    done = len(list((killed / "stats").glob("*.parquet")))
    # the rerun and the uninterrupted run: the same command, in this process
    res = run(*args, str(killed))
    assert res.exit_code == 0, res.output
    straight = tmp_path / "straight"
    res = run(*args, str(straight))
    assert res.exit_code == 0, res.output
    a, b = _digest(killed), _digest(straight)
    assert len(a) > done >= 2
    assert a == b
    assert not list(killed.rglob("*.tmp"))


# -- concepts -------------------------------------------------------------------------------


@pytest.fixture
def ab_file(tmp_path: Path) -> Path:
    import random

    rng = random.Random(0)
    words = "the fox went to forest find a friend rabbit was afraid of dark".split()
    lines = []
    for _ in range(40):
        prompt = " ".join(rng.choices(words, k=rng.randint(3, 8)))
        kind = rng.random() < 0.5
        lines.append(json.dumps({"prompt": prompt, "matching": " happily" if kind else " sad",
                                 "not_matching": " sad" if kind else " happily"}))
    path = tmp_path / "ab.jsonl"
    path.write_text("\n".join(lines) + "\n")
    return path


def test_concepts_commands_write_the_issue_keys(tmp_path: Path, ab_file: Path, pair_folders):
    import numpy as np

    folders = pair_folders
    out = tmp_path / "concepts"
    res = run("concepts", "compare", "--base", str(folders["base"]), "--tuned",
              str(folders["tuned"]), "--dataset", str(ab_file), "--out", str(out))
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["n_items"] == 40 and s["layers"] == [0, 1, 2, 3, 4]
    assert [r["layer"] for r in s["cosine_by_layer"]] == s["layers"]
    assert {"value", "ci_low", "ci_high", "n", "resampled"} <= set(s["cosine_by_layer"][0])
    # blocks 0..1 are identical in the planted pair: the vectors agree exactly there
    assert all(abs(r["value"] - 1) < 1e-5 for r in s["cosine_by_layer"][:3])
    assert set(s["separation_auc"]) == {"base", "tuned"}
    res = run("concepts", "steer", "--base", str(folders["base"]), "--tuned",
              str(folders["tuned"]), "--dataset", str(ab_file), "--out", str(out),
              "--steer-layers", "2", "--alphas=-1,0,1")
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    assert s["cosine_by_layer"] and s["pca_explained"]  # kept from the compare step
    rows = s["steering"]["tuned"]["2"]
    assert [r["alpha"] for r in rows] == [-1.0, 0.0, 1.0]
    assert all(r["ci_low"] <= r["value"] <= r["ci_high"] for r in rows)
    assert np.isclose(rows[1]["value"], s["unsteered_p_match"]["tuned"]["value"], atol=1e-5)
    assert leftover_ci_keys(s) == []  # every estimate in the one spelling
    for name in ("separation_auc", "cosine_by_layer", "layer_cosines", "pca", "steering_base"):
        assert (out / "figures" / f"{name}.html").is_file() or (out / "data" /
                                                                 f"{name}.parquet").is_file()
    for name in ("separation_auc.png", "layer_cosines.png", "pca.png", "steering_tuned.png"):
        assert (out / "figures" / name).stat().st_size > 1000
    assert (out / "data" / "steering_tuned.csv").is_file() and (out / "index.html").is_file()
    assert (out / "vectors.safetensors").is_file()


def test_concepts_bad_dataset_is_one_line(tmp_path: Path, tiny_folder: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "matching": " b", "not_matching": " c"}\n{oops\n')
    res = run("concepts", "extract", "--base", str(tiny_folder), "--dataset", str(bad),
              "--out", str(tmp_path / "o"))
    one_line_error(res, "bad.jsonl:2: not valid JSON")
    res = run("concepts", "extract", "--base", str(tiny_folder), "--dataset", str(bad),
              "--out", str(tmp_path / "o"), "--position", "middle")
    one_line_error(res, "position must be one of answer, last")


def test_collapse_all_writes_the_issue_keys(tmp_path: Path, pair_folders, prompt_file):
    out = tmp_path / "collapse"
    ref = tmp_path / "ref.txt"
    ref.write_text("the fox went to the forest\nthe rabbit was afraid\nthe coin came up heads\n")
    probes = tmp_path / "probes.jsonl"
    probes.write_text(json.dumps({"probe": "coin", "phrasing": "plain",
                                  "prompt": "the coin came up", "answers": ["heads", "fox"],
                                  "boundary": False}) + "\n")
    res = run("collapse", "all", "--base", str(pair_folders["base"]), "--tuned",
              str(pair_folders["tuned"]), "--out", str(out), "--prompts", str(prompt_file),
              "--probes", str(probes), "--samples", "3", "--max-new-tokens", "12",
              "--reference", str(ref), "--temperatures", "0.5,1,2",
              "--free-text-temperatures", "0.5,1,2")
    assert res.exit_code == 0, res.output
    s = json.loads((out / "summary.json").read_text())
    for m in ("base", "tuned"):
        assert {"entropy_bits", "tvd_uniform", "top_answer", "top_prob",
                "outside_mass"} <= set(s["probes"]["coin"][m])
        assert {"value", "ci_low", "ci_high"} <= set(s["attractors"][m]["strength"])
        assert {"distinct_2", "self_bleu", "vendi", "frechet"} <= set(s["diversity"][m])
        assert (out / "data" / f"tree_{m}.json").is_file()
    assert s["temperature"]["best_T"] in (0.5, 1.0, 2.0)
    assert "residual_tvd" in s["temperature"] and "kl_tuned_base_mean" in s["divergence"]
    for name in ("probes", "temperature", "attractors", "diversity", "divergence_tokens",
                 "tree_nodes"):
        assert (out / "data" / f"{name}.parquet").is_file()
        assert (out / "data" / f"{name}.csv").is_file()
    for fig in ("tree", "probes_tvd", "temperature_tvd", "attractor_strength", "diversity",
                "divergence_kl"):
        assert (out / "figures" / f"{fig}.png").stat().st_size > 1000
        assert (out / "figures" / f"{fig}.html").is_file()
    assert "difflens collapse" in (out / "index.html").read_text()
    # One step later keeps the others' keys.
    res = run("collapse", "tree", "--base", str(pair_folders["base"]), "--out", str(out),
              "--tree-prompt", "the fox went to", "--depth", "2")
    assert res.exit_code == 0, res.output
    again = json.loads((out / "summary.json").read_text())
    assert "probes" in again and again["tree"]["model"]["n_nodes"] > 0
    # Divergence on other prompts into the same folder gets its own capture store.
    other = tmp_path / "other.txt"
    other.write_text("the rabbit was afraid of the dark forest\n")
    res = run("collapse", "divergence", "--base", str(pair_folders["base"]), "--tuned",
              str(pair_folders["tuned"]), "--out", str(out), "--prompts", str(other))
    assert res.exit_code == 0, res.output
    assert len(list((out / "capture").iterdir())) == 2


@pytest.mark.parametrize(("args", "pattern"), [
    (["probes", "--probes", "BAD"], "bad.jsonl:1: not valid JSON"),
    (["temperature"], "give --tuned as well"),
    (["tree"], "needs a prompt (--tree-prompt)"),
    (["tree", "--tree-prompt", "the fox", "--min-prob", "2"], "0 <= --min-prob < 1"),
    (["attractors"], "need prompts; pass --prompts FILE"),
])
def test_collapse_bad_input_is_one_line(tmp_path: Path, tiny_folder, args, pattern):
    bad = tmp_path / "bad.jsonl"
    bad.write_text("{oops\n")
    args = [str(bad) if a == "BAD" else a for a in args]
    res = run("collapse", *args, "--base", str(tiny_folder), "--out", str(tmp_path / "o"))
    one_line_error(res, pattern)
