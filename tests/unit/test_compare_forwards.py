"""``compare``'s capture section: one forward pass per model and text (one capture of the
whole set, every pair's KL from the same logits), no hidden states stored, and the same
per-pair numbers as a capture of each pair on its own."""

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import difflens as dl
from difflens.analysis.divergence import summarize_pair_stats
from difflens.models import ModelSet
from difflens.models.tiny import EXAMPLE_PROMPTS, tiny_lineage
from difflens.pipelines.compare import run_compare
from difflens.pipelines.compare_config import CompareConfig, CompareInputs


def _lineage() -> ModelSet:
    """base -> sft -> rl: tiny Llamas that differ at planted blocks (so every pair has a
    KL above zero)."""
    return tiny_lineage(0)


def _inputs(n: int = 23) -> CompareInputs:
    words = sorted({w for p in EXAMPLE_PROMPTS for w in p.split()})
    texts = tuple(" ".join(np.random.default_rng(i).choice(words, 3 + i % 11))
                  for i in range(n))
    return CompareInputs(texts=texts, prompts=texts[:2], trajectory_prompts=texts[:2],
                         concept_items="", control_examples=(), control_prompts=(),
                         theme_prompts=(), probes="")


def _count_rows(models: ModelSet) -> tuple[dict[str, int], list]:
    """Batch rows each model's forward reads, counted by a pre-hook on the model."""
    rows = dict.fromkeys(models.names, 0)
    handles = []
    for name, lm in models.models.items():
        def hook(_module, args, kwargs, name=name):
            ids = kwargs.get("input_ids", args[0] if args else None)
            rows[name] += int(ids.shape[0])
        handles.append(lm.model.register_forward_pre_hook(hook, with_kwargs=True))
    return rows, handles


def test_capture_section_runs_each_model_once_per_text(tmp_path: Path):
    models, inputs = _lineage(), _inputs()
    rows, handles = _count_rows(models)
    try:
        run = run_compare(models, tmp_path / "out", inputs,
                          config=CompareConfig(sections=("capture",)))
    finally:
        for h in handles:
            h.remove()
    assert rows == dict.fromkeys(models.names, len(inputs.texts))
    out = tmp_path / "out" / "capture"
    # one store, statistics only: no hidden states unless [capture] asks for layers
    assert [p.name for p in out.iterdir() if (p / "manifest.json").is_file()] == ["store"]
    store = dl.RunStore.open(out / "store")
    assert store.layers == [] and not (out / "store" / "tensors").exists()
    assert store.labels == ["base", "sft", "rl"]
    assert set(run.summary["capture"]["pairs"]) == {"base-vs-sft", "base-vs-rl", "sft-vs-rl"}
    assert store.pairs == [("base", "sft"), ("base", "rl"), ("sft", "rl")]
    for a, b in store.pairs:
        table = pd.read_parquet(out / "data" / f"per_token_{a}-vs-{b}.parquet")
        assert list(table.columns) == ["prompt_idx", "pos", "base_entropy", "tuned_entropy",
                                       "kl_tuned_base", "kl_base_tuned", "top1_agree"]
        assert (table.kl_tuned_base.dropna() > 0).any()


def test_capture_section_equals_a_capture_of_each_pair(tmp_path: Path):
    """The numbers compare reported when it captured every pair on its own."""
    models, inputs = _lineage(), _inputs()
    run = run_compare(models, tmp_path / "out", inputs,
                      config=CompareConfig(sections=("capture",)))
    got = run.summary["capture"]["pairs"]
    for (a, b), pair in {**models.against_base(), **models.adjacent()}.items():
        alone = dl.capture(pair, list(inputs.texts), store=tmp_path / f"{a}-vs-{b}",
                           store_dtype="float16")
        stats = alone.stats(["prompt_idx", "pos", "base_entropy", "tuned_entropy",
                             "kl_tuned_base", "kl_base_tuned", "top1_agree"])
        table = pd.read_parquet(tmp_path / "out" / "capture" / "data"
                                / f"per_token_{a}-vs-{b}.parquet")
        pd.testing.assert_frame_equal(table, stats, check_exact=False, rtol=1e-5, atol=1e-6)
        want = summarize_pair_stats(stats, seed=CompareConfig().seed)
        for col, est in want.items():
            for k in ("value", "ci_low", "ci_high"):
                assert got[f"{a}-vs-{b}"][col][k] == pytest.approx(est[k], rel=1e-5,
                                                                   abs=1e-7), (a, b, col, k)
            assert got[f"{a}-vs-{b}"][col]["n"] == est["n"]


def test_capture_section_keeps_layers_and_pairs_the_config_asks_for(tmp_path: Path):
    models, inputs = _lineage(), _inputs(6)
    run_compare(models, tmp_path / "out", inputs, config=CompareConfig(
        sections=("capture",), capture={"layers": [1], "pairs": [["rl", "base"]]}))
    store = dl.RunStore.open(tmp_path / "out" / "capture" / "store")
    assert store.layers == [1] and store.hidden(0, 1, "rl").dtype == torch.float16
    assert store.pairs == [("base", "sft"), ("base", "rl"), ("sft", "rl"), ("rl", "base")]
    both = store.stats(["base-vs-rl:kl_tuned_base", "rl-vs-base:kl_base_tuned"])
    assert np.array_equal(both.iloc[:, 0].to_numpy(), both.iloc[:, 1].to_numpy(),
                          equal_nan=True)
