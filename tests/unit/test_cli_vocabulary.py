"""One CLI vocabulary: every flag of every command is a declared word with one meaning,
every command that loads a model takes the loading options and passes them to
``load_model``, and the old spellings still work for one release, with a warning."""

import json
from pathlib import Path
from typing import Any

import pytest
import typer.main
from typer.testing import CliRunner

import difflens
from difflens.cli._common import VocabCommand
from difflens.cli.main import app
from difflens.errors import InputError

runner = CliRunner()

#: The declared vocabulary: flag -> its one meaning. A new flag must be added here (and
#: keep that meaning in every command that takes it).
VOCABULARY: dict[str, str] = {
    # models and their loading
    "--base": "two-model shorthand: the base model of a comparison (or the only model)",
    "--tuned": "the tuned sibling of --base (makes a pair)",
    "--model": "a model of the run, [NAME=]MODEL: the one model, or, repeated, each model of "
               "a set (lineage order, base first, each named)",
    "--batch-size": "most inputs per forward pass",
    "--device": "device the model is loaded on",
    "--dtype": "the model's weights dtype",
    "--device-map": "how accelerate splits the model across devices",
    "--quantize": "8-bit or 4-bit loading with bitsandbytes",
    "--revision": "hub revision of the model(s)",
    "--layers-path": "module path of the decoder blocks",
    "--engine": "where the model work runs: local or ray",
    "--address": "the Ray cluster to join",
    "--workers": "Ray actors",
    "--worker-gpus": "GPUs per Ray actor",
    # inputs and outputs
    "--only": "the sections to run, comma-separated",
    "--skip": "the sections to leave out, comma-separated",
    "--config": "a TOML file of each section's options",
    "--prompts": "prompt file",
    "--prompt": "one prompt given inline",
    "--field": "field of a JSONL/JSON/CSV file holding the prompt",
    "--dataset": "contrastive A/B items file",
    "--data": "labelled examples or preference pairs file",
    "--format": "format of the input file",
    "--corpus": "prompt/continuation corpus file",
    "--reference": "reference texts file",
    "--hh-rlhf": "hh-rlhf dialogues file (prompts from its first human turns)",
    "--lexicon": "word list file",
    "--probe": "a trained state probe file",
    "--probes": "a collapse probe JSONL file",
    "--probe-names": "only these collapse probes",
    "--organism": "take prompts from the built-in model organism's world",
    "--out": "output folder",
    "--json": "print JSON",
    "--max-inputs": "use only the first N inputs",
    "--skip-bad": "skip malformed items",
    # sampling and generation
    "--samples": "samples per prompt (and model)",
    "--max-new-tokens": "tokens per generation",
    "--temperature": "sampling temperature",
    "--temperatures": "a grid of temperatures",
    "--port": "TCP port the explorer serves on",
    "--host": "address the explorer binds to (127.0.0.1 unless given)",
    "--self-judge": "also score sentences by the model's own answer to a judge question",
    "--judge-question": "the self-judge's question",
    "--judge-answers": "the self-judge's bad and good answers",
    "--prob-caps": "the de-collapse sampler's probability caps",
    "--settle-threshold": "least consecutive-layer cosine of a settled concept vector",
    "--free-text-temperatures": "temperatures of the tuned model's samples in the free-text "
                                "temperature check",
    "--seed": "the seed",
    # discover and the zoo
    "--methods": "discover's methods to run",
    "--n-words": "words in each method's list",
    "--scales": "the Patchscope's scales",
    "--strengths": "a grid of steering strengths",
    "--coherence-factor": "how far a steered sample's perplexity may rise",
    "--topics": "topics of an NMF split",
    "--random-vectors": "random directions a check compares against",
    "--max-finetune": "fine-tuning texts used",
    "--texts": "a file of unrelated texts",
    "--finetune-texts": "a file of the fine-tuning texts",
    "--planted-words": "the words a known objective planted",
    "--merge-adapters": "merge a BASE+ADAPTER model's adapter into its weights",
    "--from": "the model a lineage is built from",
    "--stages": "the stages of a lineage build",
    "--preferences": "a file of preference pairs",
    "--recipe": "a TOML file of a lineage build's recipe fields",
    "--name": "a zoo organism (repeatable)",
    "--ratio": "ordinary stories per narrow document of a zoo organism (repeatable)",
    "--list": "print what there is, build nothing",
    "--chat": "wrap prompts in the chat template",
    "--no-chat": "do not wrap prompts in the chat template",
    # where to look in the model
    "--layers": "a set of layers ('all' or a list)",
    "--layer": "one layer",
    "--positions": "token positions to record",
    "--position": "the item position a concept vector is read at",
    "--logprob-positions": "token positions to store full log-probs at",
    "--top-k": "how many top next tokens are kept",
    "--no-truncate": "error on too-long prompts instead of truncating",
    "--store-dtype": "dtype of stored hidden states",
    "--shard-mb": "target size of a stored shard",
    # analysis settings
    "--method": "the algorithm of the command's main step (choices in its help)",
    "--test-fraction": "held-out share",
    "--threshold": "the probe's score threshold",
    "--encoder": "sentence encoder",
    "--min-count": "least occurrences for a token to be ranked",
    "--first-n": "only the first N continuation steps",
    "--models": "trace model names -> labels",
    "--name-pattern": "regex of trace names",
    "--rank-segments": "the jumps used for ranking",
    "--steer-layers": "layers to steer",
    "--alphas": "steering multipliers",
    "--alpha-unit": "unit of the steering multipliers",
    "--n-generations": "steered generations to show",
    "--sources": "models whose samples form the divergence corpus",
    "--tree-prompt": "prompt of the probability tree",
    "--depth": "probability tree depth",
    "--min-prob": "least probability of an expanded tree path",
    "--perturb-at": "attractor perturbation points",
    "--insert": "attractor inserted phrase",
    "--n-stories": "labelled organism stories",
    "--bad-themes": "organism themes that are bad",
    "--max-tokens": "tokens read per example",
    "--controller": "the controller",
    "--controllers": "controllers and their gains",
    "--gain": "controller gain",
    "--independent": "the second judge",
    "--window": "rollback trigger window",
    "--segment-window": "tokens per segment (--segment tokens)",
    "--min-segment-tokens": "least tokens of an unfinished sentence counted as bad",
    "--max-rollbacks": "most rollbacks per continuation",
    "--steer-tokens": "tokens steered after a rollback",
    "--n-boot": "bootstrap resamples of each CI",
    "--resample-seed": "seed of the second sample set (consistency)",
    "--tokens-per-example": "labelled tokens kept per example",
    "--val-fraction": "share of examples that picks the layer and threshold",
    "--C": "inverse L2 strength of the logistic probe",
    "--hidden": "hidden units of the MLP probe",
    "--alpha": "L2 strength of the MLP probe",
    "--allow-other-model": "use a probe trained on other weights",
    "--segment": "how continuations are segmented",
    "--k-min": "fewest k-means themes",
    "--k-max": "most k-means themes",
    "--min-cluster-size": "smallest HDBSCAN theme",
    "--merge-repeats": "merge consecutive repeated themes",
    "--keep-repeats": "keep consecutive repeated themes",
    "--max-chain": "chain length of the distributions",
    "--m-act": "last prompt states fed to the predictor",
    "--transformer-steps": "training steps of the chain transformer",
    "--labeller-url": "endpoint that names themes",
    "--labeller-model": "model name of the labeller",
    # the organism
    "--small": "the reduced organism",
    "--no-small": "the full organism",
    "--force": "rebuild",
    "--seeds": "the organism seeds to build and compare (comma-separated)",
    "--build": "a finished organism build folder to add",
    "--no-force": "reuse a finished build",
    # the root
    "--version": "print the version",
    "--install-completion": "install shell completion",
    "--show-completion": "show shell completion",
}
#: Commands that take a model set: --model [NAME=]MODEL repeated, or --base/--tuned.
SET_COMMANDS = {
    "compare", "discover", "trajectories run", "concepts extract", "concepts compare",
    "concepts steer",
    *(f"collapse {s}" for s in ("divergence", "probes", "temperature", "tree", "attractors",
                                "diversity", "all")),
    *(f"themes {s}" for s in ("sample", "fit", "chains", "predict", "evaluate", "all",
                              "consistency", "generalisation")),
}
LOADING = {"--batch-size", "--device", "--dtype", "--device-map", "--quantize", "--revision"}
#: Commands that load a model (by path), however their model flag is spelled.
MODEL_COMMANDS = {
    "capture run", "discover", "concepts extract", "concepts compare", "concepts steer",
    "trajectories run", "control train-probe", "control monitor", "control evaluate",
    *(f"collapse {s}" for s in ("divergence", "probes", "temperature", "tree", "attractors",
                                "diversity", "all")),
    *(f"themes {s}" for s in ("sample", "fit", "chains", "predict", "evaluate", "all",
                              "consistency", "generalisation")),
    "explore",
}
OLD_FLAGS = {"--k", "--k-samples", "--continuations", "--limit", "--max-prompts",
             "--max-items"}


def _commands() -> dict[str, Any]:
    """Every leaf command of the app, by path (hidden ones too), and the root as ''."""
    found: dict[str, Any] = {}

    def walk(cmd: Any, path: str) -> None:
        subs = getattr(cmd, "commands", None)
        if subs:
            for name, sub in subs.items():
                walk(sub, f"{path} {name}".strip())
        found[path] = cmd

    walk(typer.main.get_command(app), "")
    return found


def _flags(cmd: Any, hidden: bool = False) -> set[str]:
    return {flag for p in cmd.params if p.param_type_name == "option" and (hidden or not p.hidden)
            for flag in (*p.opts, *p.secondary_opts)}


def test_every_flag_is_in_the_vocabulary():
    outside = sorted((path, flag) for path, cmd in _commands().items()
                     for flag in _flags(cmd) - VOCABULARY.keys())
    assert not outside, f"flags outside the vocabulary: {outside}"


def test_every_word_of_the_vocabulary_is_used():
    used = set().union(*(_flags(cmd) for cmd in _commands().values()))
    assert VOCABULARY.keys() - used == set()


def test_old_flag_names_are_no_options_but_are_still_accepted():
    cmds = _commands()
    visible = set().union(*(_flags(c) for c in cmds.values()))
    assert not OLD_FLAGS & visible
    renamed_somewhere: set[str] = set()
    for path, cmd in cmds.items():
        if isinstance(cmd, VocabCommand):
            for old, new in cmd.renamed.items():
                assert old not in _flags(cmd, hidden=True), (path, old)
                assert new in _flags(cmd, hidden=True), (path, old, new)
            renamed_somewhere |= cmd.renamed.keys()
    assert renamed_somewhere >= OLD_FLAGS


def test_model_commands_take_the_loading_options():
    cmds = _commands()
    assert cmds.keys() >= MODEL_COMMANDS
    for path, cmd in cmds.items():
        flags = _flags(cmd)
        if path in MODEL_COMMANDS:
            assert flags & {"--base", "--model"}, path
        if flags & {"--base", "--model"}:
            assert flags >= LOADING, (path, LOADING - flags)
            assert "--layers-path" in flags, path
        if path not in SET_COMMANDS:  # there --model is NAME=MODEL, --base/--tuned a shorthand
            assert not {"--base", "--model"} <= flags, f"{path}: both --base and --model"
        if "--tuned" in flags:
            assert "--base" in flags, path


def test_collapse_steps_show_only_their_own_options():
    cmds = _commands()
    steps = ("divergence", "probes", "temperature", "tree", "attractors", "diversity")
    own = {s: _flags(cmds[f"collapse {s}"]) for s in steps}
    assert "--depth" in own["tree"] and "--depth" not in own["diversity"]
    assert "--samples" in own["diversity"] and "--samples" not in own["tree"]
    assert "--prompts" not in own["tree"] and "--prompts" not in own["probes"]
    assert "--temperatures" in own["temperature"] and "--temperatures" not in own["probes"]
    assert _flags(cmds["collapse all"]) == set().union(*own.values())
    shared = set.intersection(*own.values())
    assert shared == {"--model", "--base", "--tuned", "--out", *LOADING, "--layers-path",
                      "--merge-adapters"}


def test_version():
    res = runner.invoke(app, ["--version"])
    assert res.exit_code == 0
    assert res.output == f"difflens {difflens.__version__}\n"


def test_list_presets_probes_and_datasets():
    from difflens.capture.outcomes import load_probes
    from difflens.models.presets import known_presets

    res = runner.invoke(app, ["list", "presets"])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "smollm2-135m-instruct" in lines and "organism-base" in lines
    assert set(known_presets()) <= set(lines)
    res = runner.invoke(app, ["list", "probes"])
    assert res.exit_code == 0, res.output
    names = [line.split("\t")[0] for line in res.output.splitlines()]
    assert names == list(dict.fromkeys(p.name for p in load_probes()))
    assert {"coin", "d6"} <= set(names)
    res = runner.invoke(app, ["list", "datasets"])
    assert res.exit_code == 0, res.output
    assert any(line.split("\t")[0].endswith("probes.jsonl") for line in res.output.splitlines())


def test_completion_is_on():
    res = runner.invoke(app, ["--help"])
    assert "--install-completion" in res.output


@pytest.fixture
def files(tmp_path: Path) -> dict[str, str]:
    prompts = tmp_path / "p.txt"
    prompts.write_text("the fox went to\nonce upon a time\n")
    ab = tmp_path / "ab.jsonl"
    ab.write_text("".join(json.dumps({"prompt": f"q{i}", "matching": " A",
                                      "not_matching": " B"}) + "\n" for i in range(4)))
    data = tmp_path / "data.jsonl"
    data.write_text("".join(json.dumps({"text": f"t{i}", "label": i % 2}) + "\n"
                            for i in range(4)))
    return {"P": str(prompts), "AB": str(ab), "DATA": str(data), "O": str(tmp_path / "o"),
            "NOPE": str(tmp_path / "nope")}


LOAD_ARGS = ["--dtype", "bfloat16", "--revision", "abc", "--device", "cpu", "--layers-path",
             "model.layers", "--device-map", "auto", "--quantize", "4bit", "--merge-adapters"]


@pytest.mark.parametrize("args", [
    ["capture", "run", "--base", "M", "--prompts", "P", "--out", "O"],
    ["concepts", "steer", "--base", "M", "--dataset", "AB", "--out", "O"],
    ["trajectories", "run", "--base", "M", "--prompts", "P", "--out", "O"],
    ["collapse", "tree", "--base", "M", "--tree-prompt", "the fox", "--out", "O"],
    ["collapse", "all", "--base", "M", "--prompts", "P", "--out", "O"],
    ["control", "train-probe", "--model", "M", "--data", "DATA", "--out", "O"],
    ["control", "monitor", "--model", "M", "--probe", "NOPE", "--prompt", "the fox"],
    ["control", "evaluate", "--model", "M", "--probe", "NOPE", "--prompts", "P", "--out", "O",
     "--independent", "none"],
    ["themes", "sample", "--base", "M", "--prompts", "P", "--out", "O"],
    ["explore", "--base", "M"],
], ids=lambda a: " ".join(a[:2]))
def test_loading_options_reach_load_model(monkeypatch, files, args):
    import difflens.control.state_probe
    import difflens.models

    calls: list[tuple[str, dict[str, Any]]] = []

    def fake_load_model(name: str, **kwargs: Any) -> Any:
        calls.append((name, kwargs))
        raise InputError("stopped at load_model")

    monkeypatch.setattr(difflens.models, "load_model", fake_load_model)
    monkeypatch.setattr(difflens.control.state_probe, "load_probe", lambda path: object())
    res = runner.invoke(app, [files.get(a, a) for a in args] + LOAD_ARGS)
    assert res.exit_code == 2 and "stopped at load_model" in res.output, res.output
    assert calls == [("M", {"revision": "abc", "dtype": "bfloat16", "device": "cpu",
                            "layers_path": "model.layers", "device_map": "auto",
                            "quantization": "4bit", "merge_adapters": True})]


@pytest.mark.parametrize(("args", "warnings", "error"), [
    (["themes", "sample", "--model", "x", "--out", "O", "--k", "3"],
     ["--k is deprecated; use --samples"],
     "exactly one of --prompts FILE or --organism N"),
    (["control", "evaluate", "--model", "x", "--probe", "p", "--out", "O", "--limit", "3",
      "--k=2"],
     ["--limit is deprecated; use --max-inputs", "--k is deprecated; use --samples"],
     "exactly one of"),
    (["probe", "train", "--model", "x", "--out", "O", "--limit", "2", "--format", "bogus"],
     ["`difflens probe train` is deprecated; use `difflens control train-probe`",
      "--limit is deprecated; use --max-inputs"], "--format must be one of"),
    (["monitor", "--model", "x", "--probe", "p", "--prompt", " "],
     ["`difflens monitor` is deprecated; use `difflens control monitor`"], "--prompt is empty"),
    (["info", "NOPE"], ["`difflens info` is deprecated; use `difflens capture info`"],
     "is not a run store directory"),
    (["capture", "--base", "NOPE", "--prompts", "P", "--out", "O"],
     ["`difflens capture OPTIONS` is deprecated; use `difflens capture run OPTIONS`"],
     "does not exist"),
    (["collapse", "diversity", "--base", "NOPE", "--out", "O", "--k-samples", "3"],
     ["--k-samples is deprecated; use --samples"], "does not exist"),
    (["collapse", "attractors", "--base", "NOPE", "--out", "O", "--positions", "0.5"],
     ["--positions is deprecated; use --perturb-at"], "does not exist"),
    (["trajectories", "run", "--base", "x", "--prompts", "NOPE", "--out", "O",
      "--continuations", "2"], ["--continuations is deprecated; use --samples"],
     "does not exist"),
    (["trajectories", "import", "NOPE", "--out", "O", "--max-prompts", "2"],
     ["--max-prompts is deprecated; use --max-inputs"], "does not exist"),
    (["concepts", "extract", "--base", "x", "--dataset", "NOPE", "--out", "O",
      "--max-items", "2"], ["--max-items is deprecated; use --max-inputs"], "does not exist"),
 ])
def test_old_spellings_still_work_and_warn(files, args, warnings, error):
    res = runner.invoke(app, [files.get(a, a) for a in args])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert lines[:-1] == [f"warning: {w}" for w in warnings], res.stderr
    assert lines[-1].startswith("error: ") and error in lines[-1], res.stderr


def test_new_spellings_do_not_warn(files):
    res = runner.invoke(app, ["themes", "sample", "--base", "x", "--out", files["O"],
                              "--samples", "3"])
    assert res.exit_code == 2
    assert res.stderr.strip().splitlines() == [
        "error: give exactly one of --prompts FILE or --organism N"]


def test_old_capture_runs_with_its_old_dtype_meaning(tiny_folder, files):
    res = runner.invoke(app, ["capture", "--base", str(tiny_folder), "--prompts", files["P"],
                              "--out", files["O"], "--dtype", "float16"])
    assert res.exit_code == 0, res.output
    assert "warning: --dtype of the old `difflens capture` is deprecated; use --store-dtype" \
        in res.stderr
    info = json.loads(runner.invoke(app, ["capture", "info", files["O"], "--json"]).stdout)
    assert info["dtype"] == "float16" and info["n_prompts"] == 2


def test_another_steps_option_is_accepted_for_one_release_and_said_to_do_nothing(files):
    args = ["collapse", "tree", "--base", "NOPE", "--out", "O", "--prompts", "P",
            "--k-samples", "8", "--depth", "2"]
    res = runner.invoke(app, [files.get(a, a) for a in args])
    lines = res.stderr.strip().splitlines()
    assert res.exit_code == 2, res.output
    assert lines[:-1] == [
        "warning: --k-samples is deprecated; use --samples",
        "warning: --prompts has no effect on `difflens collapse tree`; it is read by "
        "divergence, temperature, attractors, diversity",
        "warning: --samples has no effect on `difflens collapse tree`; it is read by "
        "temperature, diversity",
    ], res.stderr
    assert "does not exist" in lines[-1]
    # and they stay out of the step's help
    assert "--prompts" not in runner.invoke(app, ["collapse", "tree", "--help"]).output
