"""``difflens compare``: a model set through every section, stage attribution with planted
changes, the two-model case equal to today's pair, and the command line."""

import dataclasses
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from difflens.analysis.bootstrap import Estimate
from difflens.analysis.summary_spelling import leftover_ci_keys
from difflens.cli.main import app
from difflens.errors import DifflensWarning, InputError
from difflens.models import ModelSet
from difflens.models.tiny import bigram_model, tiny_model, word_tokenizer
from difflens.pipelines.collapse import CollapseConfig, run_collapse
from difflens.pipelines.compare import run_compare
from difflens.pipelines.compare_config import CompareConfig, CompareInputs, read_compare_config

WORDS = ["pick", "a", "number", "one", "two", "three", "four", "the", "fox", "ran", "and",
         "sat", "on", "log", "die", "landed"]


def _table(seed: int) -> torch.Tensor:
    n = len(WORDS) + 4
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, n, generator=g)


def _probe_file(tmp: Path) -> str:
    path = tmp / "probes.jsonl"
    rows = [{"probe": "number", "phrasing": f"p{i}", "prompt": prompt,
             "answers": ["one", "two", "three", "four"]}
            for i, prompt in enumerate(["pick a number", "the die landed", "a number",
                                        "the fox sat on a", "pick a", "ran and",
                                        "sat on the", "the log"])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


def _inputs(tmp: Path) -> CompareInputs:
    texts = tuple(" ".join(np.random.default_rng(i).choice(WORDS, 12)) for i in range(24))
    return CompareInputs(texts=texts, prompts=texts[:4], trajectory_prompts=texts[:4],
                         concept_items="", control_examples=(), control_prompts=(),
                         theme_prompts=(), probes=_probe_file(tmp))


def _lineage(changed_stage: int) -> ModelSet:
    """base -> m1 -> m2 with one change: the model of ``changed_stage`` and every later one
    are sharpened (logits x3, so lower entropy and a KL to the base), the others copy the
    model before them exactly."""
    table = _table(0)
    names = ["base", "m1", "m2"]
    models = {}
    for i, name in enumerate(names):
        logits = table * 3.0 if i >= changed_stage else table
        models[name] = bigram_model(WORDS, logits, name=f"bigram-{name}")
    return ModelSet(models)


@pytest.mark.parametrize("changed_stage", [1, 2])
def test_a_planted_change_is_attributed_to_its_stage(tmp_path, changed_stage):
    models = _lineage(changed_stage)
    run = run_compare(models, tmp_path / "out", _inputs(tmp_path), config=CompareConfig(
        sections=("capture", "collapse"), collapse={"steps": ("probes",)}))
    att = run.summary["attribution"]
    changed, other = ("m1", "m2") if changed_stage == 1 else ("m2", "m1")
    for metric, sign in (("entropy", -1), ("kl_to_base", 1), ("chance_tvd", 1)):
        hit, miss = att[metric][changed], att[metric][other]
        assert sign * hit["ci_low"] > 0 and sign * hit["ci_high"] > 0, (metric, hit)
        assert hit["share"] == pytest.approx(1.0), metric
        assert miss["ci_low"] <= 0 <= miss["ci_high"], (metric, miss)
        assert miss["value"] == pytest.approx(0.0, abs=1e-9), metric
        assert hit["n"] == (24 if metric != "chance_tvd" else 8)
        assert hit["resampled"] == ("texts" if metric != "chance_tvd" else "probe prompts")
    # the per-text entropy the attribution used is the capture's, token-weighted
    pair = run.summary["capture"]["pairs"][f"base-vs-{changed}"]
    per = pd.read_parquet(tmp_path / "out" / "capture" / "data" / "per_text.parquet")
    ent = per[per.metric == "entropy"].groupby("model")[["value", "tokens"]].sum()
    levels = ent.value / ent.tokens
    assert levels[changed] - levels["base"] == pytest.approx(att["entropy"][changed]["value"]
                                                             + att["entropy"][other]["value"])
    assert Estimate.from_json(pair["tuned_entropy"]).value == pytest.approx(levels[changed],
                                                                            rel=1e-6)
    # each model's entropy: the mean of its per-text entropies, over the same texts
    entropy = run.summary["capture"]["entropy"]
    assert entropy[changed]["value"] == pytest.approx(
        (per[(per.metric == "entropy") & (per.model == changed)].eval("value / tokens")).mean())
    assert entropy[changed]["n"] == 24 and entropy[changed]["resampled"] == "texts"
    assert leftover_ci_keys({"attribution": att, "entropy": entropy}) == []
    table = pd.read_parquet(tmp_path / "out" / "data" / "attribution.parquet")
    assert set(table.section) == {"capture", "collapse"}
    assert (tmp_path / "out" / "figures" / "stages_capture.png").stat().st_size > 1000
    # every adjacent pair and every model against the base were captured
    assert set(run.summary["capture"]["pairs"]) == {"base-vs-m1", "base-vs-m2", "m1-vs-m2"}
    # the section's table: metrics as the section runs them, stages in lineage order, the
    # stage that made the change with 100% of it, the other 0% (never -0%), share CIs shown
    capture = next(s for s in run.sections if s.heading == "Capture")
    page = capture.intro
    assert page.index(">entropy<") < page.index(">kl_to_base<")
    assert page.index("base → m1") < page.index("m1 → m2")
    assert "100% [" in page and "-0%" not in page and "−0%" not in page
    assert "nan" not in page.lower()
    # the stage figure: one panel per metric, each on its own axis with its unit
    stages = next(f for f in capture.figures if f.name == "stages_capture")
    chart = stages.plotly()
    assert [a.text for a in chart.layout.annotations] == ["Next-token entropy",
                                                          "KL to the base"]
    assert chart.layout.yaxis.title.text == "change (nats/token)"
    assert "n = 24 texts" in stages.caption


def test_two_models_give_todays_pair_results(tmp_path):
    table = _table(1)
    base = bigram_model(WORDS, table, name="bigram-base")
    tuned = bigram_model(WORDS, table * 2.0, name="bigram-tuned")
    models = ModelSet({"base": base, "dpo": tuned})
    inputs = _inputs(tmp_path)
    steps = ("probes", "temperature")
    run = run_compare(models, tmp_path / "set", inputs, config=CompareConfig(
        sections=("collapse",), collapse={"steps": steps}))
    today = run_collapse(models.pair("base", "dpo"), inputs.prompts, tmp_path / "pair",
                         CollapseConfig(steps=steps, probes=inputs.probes,
                                        tree_prompt=inputs.prompts[0], k_samples=8,
                                        max_new_tokens=40, free_text_temperatures=()),
                         index=False)
    assert run.summary["collapse"] == today.summary()
    # a two-model attribution is the pair's difference, its stage named after the model
    ph = pd.read_parquet(tmp_path / "pair" / "data" / "probes.parquet")
    means = ph.groupby("model").tvd_uniform.mean()
    got = run.summary["attribution"]["chance_tvd"]
    assert list(got) == ["dpo"]
    assert got["dpo"]["value"] == pytest.approx(means["tuned"] - means["base"])
    assert got["dpo"]["share"] == pytest.approx(1.0)


def test_config_file_and_its_errors(tmp_path):
    good = tmp_path / "compare.toml"
    good.write_text('sections = ["collapse"]\nseed = 3\n[collapse]\nsamples = 2\n'
                    'temperatures = [0.5, 1.0]\nmax-new-tokens = 9\n')
    cfg = read_compare_config(good)
    assert cfg == {"sections": ("collapse",), "seed": 3,
                   "collapse": {"samples": 2, "temperatures": [0.5, 1.0],
                                "max-new-tokens": 9}}
    # the table's names are the CLI's; what it leaves out is the section's quick() preset
    got = CompareConfig(**cfg).collapse
    assert got == dataclasses.replace(CollapseConfig.quick(), seed=3, k_samples=2,
                                      temperatures=(0.5, 1.0), max_new_tokens=9)
    assert CompareConfig().concepts.position == "last"  # the preset, visible in the config
    old = tmp_path / "old.toml"
    old.write_text("[collapse]\nk_samples = 2\n")  # the library's name, one release
    with pytest.warns(DifflensWarning, match="k_samples is deprecated; use samples"):
        assert CompareConfig(**read_compare_config(old)).collapse.k_samples == 2
    bad = tmp_path / "bad.toml"
    bad.write_text("[collapse]\nk_sample = 2\n")
    with pytest.raises(InputError, match=r"bad.toml \[collapse\]: no option 'k_sample'; the "
                       r"options are steps, corpus, sources"):
        read_compare_config(bad)
    broken = tmp_path / "broken.toml"
    broken.write_text("[collapse\n")
    with pytest.raises(Exception, match="broken.toml: not valid TOML"):
        read_compare_config(broken)
    with pytest.raises(Exception, match="unknown section"):
        CompareConfig(sections=("colapse",))


def test_cli_refuses_a_set_whose_tokenizers_differ_before_loading(tmp_path, monkeypatch):
    a = tiny_model(0, name="a")
    b = tiny_model(0, tokenizer=word_tokenizer(["other", "words", "here"]), name="b")
    for lm, name in ((a, "a"), (b, "b")):
        lm.model.save_pretrained(tmp_path / name)
        lm.tokenizer.save_pretrained(tmp_path / name)
    import difflens.models.loading as loading

    def no_load(*args, **kwargs):
        raise AssertionError("weights were loaded before the tokenizers were compared")

    monkeypatch.setattr(loading, "load_model", no_load)
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compare", "--model", f"base={tmp_path / 'a'}", "--model",
                                   f"sft={tmp_path / 'a'}", "--model",
                                   f"dpo={tmp_path / 'b'}", "--out", str(out)])
    assert res.exit_code == 2, res.output
    lines = [x for x in res.output.splitlines() if x.strip()]
    assert len(lines) == 1 and "'base' and 'dpo'" in res.output and "tokenizers" in res.output
    assert not out.exists()
    res = CliRunner().invoke(app, ["compare", "--base", "x", "--tuned", "y", "--only",
                                   "collapse,colapse"])
    assert res.exit_code == 2 and "--only takes section names" in res.output


@pytest.mark.organism
def test_cli_compare_organism_pair_collapse_and_concepts(tmp_path, monkeypatch, small_organism):
    """The issue's command, end to end, on the reduced organism (its presets patched to it)."""
    from difflens.organism import build as B

    monkeypatch.setattr(B, "shipped_organism", lambda *a, **k: small_organism)
    cfg = tmp_path / "compare.toml"
    cfg.write_text("[collapse]\nsamples = 2\nmax_new_tokens = 8\n"
                   "[concepts]\nalphas = [0.0, 0.5]\nn_generations = 1\n")
    out = tmp_path / "out"
    res = CliRunner().invoke(app, ["compare", "--base", "organism-base", "--tuned",
                                   "organism-rl", "--only", "collapse,concepts", "--config",
                                   str(cfg), "--out", str(out)])
    assert res.exit_code == 0, res.output
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sections"] == ["concepts", "collapse"]
    assert [m["name"] for m in summary["models"]] == ["base", "tuned"]
    assert summary["models"][1]["identity"]["name"] == "organism-rl"
    assert summary["collapse"]["config"]["k_samples"] == 2
    att = summary["attribution"]
    assert {"chance_tvd", "attractor_strength", "vendi", "self_bleu"} <= set(att)
    assert any(k.startswith("concept_cosine_L") for k in att)
    for rows in att.values():
        assert set(rows) == {"tuned"}
        assert set(rows["tuned"]) == {"value", "ci_low", "ci_high", "n", "resampled", "share",
                                      "share_low", "share_high"}
    assert "capture" not in summary and not (out / "capture").exists()
    page = (out / "index.html").read_text()
    assert "Concepts" in page and "Collapse" in page and "attribution" in page
    assert (out / "data" / "attribution.csv").is_file()


def test_builtin_inputs_ship_with_the_package():
    """A user's own models need no dataset: the built-in files load through the readers
    every command uses, with the sizes the docs state."""
    from difflens.inputs.ab_items import load_ab_dataset
    from difflens.pipelines.compare_inputs import builtin_inputs

    inputs = builtin_inputs()
    assert len(inputs.texts) == len(inputs.prompts) == len(inputs.theme_prompts) == 40
    assert len(set(inputs.prompts)) == 40 and all(p.strip() for p in inputs.prompts)
    items = load_ab_dataset(inputs.concept_items)
    assert len(items) == 150 and not items.skipped
    assert len(inputs.control_examples) == 240
    labels = [seg[1] for ex in inputs.control_examples for seg in ex.segments]
    assert labels.count(1) == labels.count(0) == 120
    assert len({ex.group for ex in inputs.control_examples}) == 12  # one group per subject
    assert inputs.probes is None  # the built-in probes


def test_sections_from_only_skip_and_the_config():
    from difflens.cli.compare import choose_sections
    from difflens.errors import InputError

    assert choose_sections(None, None) == ("capture", "concepts", "trajectories", "collapse",
                                           "control", "themes", "discover")
    assert choose_sections("collapse,concepts", None) == ("concepts", "collapse")
    assert choose_sections(None, "control,themes,discover") == (
        "capture", "concepts", "trajectories", "collapse")
    assert choose_sections(None, "capture", ["capture", "themes"]) == ("themes",)
    with pytest.raises(InputError, match="leave no section"):
        choose_sections("collapse", "collapse")
    with pytest.raises(InputError, match="--skip takes section names"):
        choose_sections(None, "nope")


def test_overview_takeaways_and_headline_leave_undefined_changes_out():
    from difflens.pipelines.compare import CompareRun, _headline, overview_takeaways

    nan = float("nan")
    rows = [  # section, metric, from, to, delta, ci_low, ci_high, n
        ("capture", "entropy", "base", "sft", -0.30, -0.40, -0.20, 40),
        ("capture", "kl_to_base", "base", "sft", 0.05, -0.01, 0.11, 40),
        ("capture", "entropy", "sft", "dpo", 0.90, 0.10, 1.70, 40),
        ("concepts", "concept_cosine_L0", "base", "sft", nan, nan, nan, 60),
        ("concepts", "concept_cosine_L2", "base", "sft", -0.10, -0.30, 0.10, 60),
    ]
    table = pd.DataFrame(rows, columns=["section", "metric", "from", "to", "delta", "ci_low",
                                        "ci_high", "n"])
    lines = overview_takeaways(table)
    # entropy base -> sft is 3 half-widths from 0; sft -> dpo only 1.125
    assert lines == [
        "capture: 2 of 3 stage changes have a 95% CI that excludes 0; clearest: entropy, "
        "base → sft −0.300 [−0.400, −0.200] n=40",  # one minus sign, U+2212
        "concepts: 0 of 1 stage changes have a 95% CI that excludes 0"]
    head = _headline(CompareRun(summary={}, sections=[], attribution=table))
    assert "concept_cosine_L0: base → sft" not in head and len(head) == 4
    assert head["concept_cosine_L2: base → sft"] == "−0.100 [−0.300, 0.100] n=60"
