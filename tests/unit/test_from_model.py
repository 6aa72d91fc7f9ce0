"""A lineage from a real base (stories260k), on the reduced recipe: the reward that curated
sft is higher under sft than under the base; the tuned folders load as a set with the base;
a missing model or adapter is one line before any training."""

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from difflens.cli.main import app
from difflens.errors import InputError
from difflens.models.model_set import check_model_set
from difflens.organism.from_model import LineageRecipe, build_lineage_from


def test_an_sft_from_stories260k_is_rewarded_above_its_base(stories_path: Path):
    build = build_lineage_from(str(stories_path), LineageRecipe.small())
    info = build.info
    change = info["reward_change"]["base->sft"]
    assert change["ci_low"] > 0, change  # the reward that curated the SFT set rose
    assert info["sft"]["reward_kept_mean"] > info["sft"]["reward_pool_mean"]
    assert set(info["reward"]) == {"base", "sft", "rl"}
    # the tuned folders share the base's tokenizer and shapes: a model set takes them
    check_model_set({"base": str(stories_path), "sft": str(build.model_path("sft")),
                     "rl": str(build.model_path("rl"))}, revision=None)
    again = build_lineage_from(str(stories_path), LineageRecipe.small())  # cached
    assert again.path == build.path and json.loads(
        (build.path / "lineage.json").read_text())["times_s"] == info["times_s"]


def test_bad_input_is_one_line_before_any_training(tmp_path: Path, stories_path: Path):
    with pytest.raises(InputError, match="does not exist"):
        build_lineage_from(str(tmp_path / "nope"), LineageRecipe.small())
    with pytest.raises(InputError, match="stages"):
        build_lineage_from(str(stories_path), LineageRecipe.small(), stages=("rl",))
    res = CliRunner().invoke(app, ["organism", "build", "--from",
                                   f"{stories_path}+{tmp_path / 'missing-adapter'}", "--small"])
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1, res.output
    assert "does not exist" in res.output


def _margin(spec: str, prefs) -> float:  # type: ignore[no-untyped-def]
    """Mean log p(chosen) - log p(rejected) of the model ``spec`` over ``prefs``."""
    from difflens.models.loading import load_model
    from difflens.organism.training import preference_margins

    lm = load_model(spec)
    return float(preference_margins(lm.model, lm.tokenizer, prefs, max_len=128).mean())


def _prefs(path: Path, n: int = 24) -> Path:
    """Planted preferences: the same opening, a happy reply chosen over a sad one."""
    rows = [{"prompt": f"Once upon a time, a girl named Lily found a {thing}.",
             "chosen": " She was very happy and smiled all day.",
             "rejected": " She was very sad and cried all day."}
            for thing in ["ball", "cat", "box", "tree", "book", "cake"] * (n // 6)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_dpo_raises_the_chosen_reply_over_the_rejected(stories_path: Path, tmp_path: Path):
    import dataclasses

    from difflens.inputs.labelled import read_preferences

    prefs_file = _prefs(tmp_path / "prefs.jsonl")
    recipe = dataclasses.replace(LineageRecipe.small(), dpo_steps=12, dpo_lr=1e-3,
                                 dpo_pairs=16, dpo_eval_pairs=8)
    build = build_lineage_from(str(stories_path), recipe, stages=("sft", "dpo"),
                               preferences=prefs_file)
    info = build.info
    assert set(info["reward"]) == {"base", "sft", "dpo"} and info["dpo"]["pairs"] == 16
    # the margin on the 8 pairs after the 16 it trained on rose, and its CI says so
    assert info["dpo"]["held_out_pairs"] == 8
    assert info["preference_margin_change"]["sft->dpo"]["ci_low"] > 0
    prefs = read_preferences(prefs_file)

    def margin(folder: Path) -> float:
        return _margin(str(folder), prefs)

    assert margin(build.model_path("dpo")) > margin(build.model_path("sft")) + 0.5
    assert info["dpo"]["curves"]["loss"][-1] < info["dpo"]["curves"]["loss"][0]


def test_a_preference_file_without_chosen_is_one_line(stories_path: Path, tmp_path: Path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "chosen": " b", "rejected": " c"}\n'
                   '{"prompt": "a", "rejected": " c"}\n')
    res = CliRunner().invoke(app, ["organism", "build", "--from", str(stories_path),
                                   "--stages", "sft,dpo", "--preferences", str(bad), "--small"])
    assert res.exit_code == 2, res.output
    lines = res.output.strip().splitlines()
    assert len(lines) == 1 and "bad.jsonl:2" in lines[0] and "chosen" in lines[0]
    res = CliRunner().invoke(app, ["organism", "build", "--from", str(stories_path),
                                   "--stages", "sft,dpo", "--small"])
    assert res.exit_code == 2 and "needs preference pairs" in res.output


def test_a_lora_lineage_ships_adapters_that_load_as_base_plus_adapter(
        stories_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """``lora_rank > 0``: each stage is a peft adapter folder (no full weights), loaded as
    ``BASE+ADAPTER`` and by its preset name; DPO on planted preferences moved the adapter's
    margin, so the saved adapter is the trained one (not a fresh init)."""
    import dataclasses

    from difflens.inputs.labelled import read_preferences
    from difflens.models.presets import known_presets

    monkeypatch.setenv("DIFFLENS_CACHE", str(tmp_path / "cache"))
    prefs_file = _prefs(tmp_path / "prefs.jsonl")
    recipe_file = tmp_path / "recipe.toml"
    recipe_file.write_text("lora_rank = 8\nsft_lr = 3e-3\ndpo_lr = 3e-3\ndpo_steps = 12\n")
    res = CliRunner().invoke(app, ["organism", "build", "--from", str(stories_path),
                                   "--stages", "sft,dpo", "--preferences", str(prefs_file),
                                   "--recipe", str(recipe_file), "--small"])
    assert res.exit_code == 0, res.output
    recipe = dataclasses.replace(LineageRecipe.small(), lora_rank=8, sft_lr=3e-3,
                                 dpo_lr=3e-3, dpo_steps=12)
    build = build_lineage_from(str(stories_path), recipe, stages=("sft", "dpo"),
                               preferences=prefs_file)  # the CLI's build, cached
    assert f"dpo={build.model_spec('dpo')}" in res.output.replace("\n", "")
    for stage in ("sft", "dpo"):
        files = {p.name for p in build.model_path(stage).iterdir()}
        assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    prefs = read_preferences(prefs_file)

    def margin(spec: str) -> float:
        return _margin(spec, prefs)

    assert margin(build.model_spec("dpo")) > margin(build.model_spec("sft")) + 0.5
    preset = f"{build.path.name}-dpo"
    assert preset in known_presets()
    assert margin(preset) == pytest.approx(margin(build.model_spec("dpo")), abs=1e-5)
    check_model_set({"base": str(stories_path), "sft": build.model_spec("sft"),
                     "dpo": preset}, revision=None)
    bad = tmp_path / "bad.toml"
    bad.write_text("lora_rnak = 8\n")
    res = CliRunner().invoke(app, ["organism", "build", "--from", str(stories_path),
                                   "--recipe", str(bad), "--small"])
    assert res.exit_code == 2 and "no recipe field 'lora_rnak'" in res.output, res.output
