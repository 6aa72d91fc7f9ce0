"""Capture engine: parity with output_hidden_states, batching, padding, pairs, resume."""

import hashlib
from pathlib import Path

import pytest
import torch

import difflens as dl
from difflens import _io as store_mod
from difflens.capture import engine as engine_mod
from difflens.capture import plan as plan_mod
from difflens.capture import store as capture_store
from difflens.models.tiny import tiny_model, word_tokenizer

LONG = [
    "the fox went to the forest to find a friend and the rabbit was afraid of the dark",
    "once upon a time there was a little fox",
    "the coin came up heads",
    "and",
    "everyone came to the party and they danced all night and the storm broke the bridge",
]


def reference_states(lm, text: str) -> tuple[tuple[torch.Tensor, ...], torch.Tensor]:
    ids = lm.tokenizer(text, return_tensors="pt")
    with torch.no_grad():
        out = lm.model(**ids, output_hidden_states=True)
    return tuple(h[0] for h in out.hidden_states), out.logits[0]


def tensor_bytes(run: Path) -> dict[str, str]:
    return {
        str(p.relative_to(run)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted((run / "tensors").rglob("*.safetensors"))
    }


def test_parity_with_output_hidden_states(tiny, tmp_path):
    store = dl.capture(tiny, LONG, store=tmp_path / "run", batch_size=3)
    assert store.layers == list(range(tiny.n_layers + 1))
    for i, text in enumerate(LONG):
        ref, _ = reference_states(tiny, text)
        for layer in store.layers:
            got = store.hidden(i, layer)
            assert got.shape == ref[layer].shape
            assert (got - ref[layer]).abs().max().item() < 1e-5, (i, layer)


def test_record_layers_leaves_model_untouched(tiny):
    before = {n: len(m._forward_hooks) + len(m._forward_pre_hooks)
              for n, m in tiny.model.named_modules()}
    ids = tiny.tokenizer("the fox", return_tensors="pt")
    with dl.record_layers(tiny, [0, 2, tiny.n_layers]) as rec:
        tiny.model(**ids)
    assert sorted(rec) == [0, 2, tiny.n_layers]
    after = {n: len(m._forward_hooks) + len(m._forward_pre_hooks)
             for n, m in tiny.model.named_modules()}
    assert before == after


def test_batched_equals_unbatched(tiny, tmp_path):
    batched = dl.capture(tiny, LONG, store=tmp_path / "b", batch_size=5)
    single = dl.capture(tiny, LONG, store=tmp_path / "s", batch_size=1)
    assert batched.key == single.key  # batch size is not in the cache key
    for i in range(len(LONG)):
        for layer in batched.layers:
            diff = (batched.hidden(i, layer) - single.hidden(i, layer)).abs().max().item()
            assert diff < 1e-5
    sb, ss = batched.stats(), single.stats()
    assert (sb["model_entropy"] - ss["model_entropy"]).abs().max() < 1e-5
    assert (sb["model_topk_ids"].map(list) == ss["model_topk_ids"].map(list)).all()


def test_left_and_right_padding_agree(tiny, tmp_path):
    right = dl.capture(tiny, LONG, store=tmp_path / "r", padding_side="right")
    left = dl.capture(tiny, LONG, store=tmp_path / "l", padding_side="left")
    for i in range(len(LONG)):
        for layer in right.layers:
            diff = (right.hidden(i, layer) - left.hidden(i, layer)).abs().max().item()
            assert diff < 1e-5
    assert (right.stats()["model_logprob_next"].fillna(0)
            - left.stats()["model_logprob_next"].fillna(0)).abs().max() < 1e-5


def test_identical_pair_has_zero_kl(tiny, tmp_path):
    pair = dl.ModelPair(tiny, tiny)
    stats = dl.capture(pair, LONG, store=tmp_path / "run").stats()
    assert (stats["kl_tuned_base"] == 0).all()
    assert (stats["kl_base_tuned"] == 0).all()
    assert stats["top1_agree"].all()


def test_planted_change_appears_from_its_layer_on(pair, tmp_path):
    store = dl.capture(pair, LONG, store=tmp_path / "run")
    planted_output_layer = 3  # block 2's output
    for i in range(len(LONG)):
        for layer in store.layers:
            diff = (store.hidden(i, layer, "base") - store.hidden(i, layer, "tuned")).abs().max()
            if layer < planted_output_layer:
                assert diff.item() == 0.0, layer
            else:
                assert diff.item() > 1e-4, layer
    stats = store.stats()
    assert (stats["kl_tuned_base"] > 0).all()


def test_pair_kl_matches_direct_computation(pair, tmp_path):
    store = dl.capture(pair, LONG[:2], store=tmp_path / "run")
    stats = store.stats()
    for i, text in enumerate(LONG[:2]):
        _, lb = reference_states(pair.base, text)
        _, lt = reference_states(pair.tuned, text)
        pb, pt = lb.log_softmax(-1), lt.log_softmax(-1)
        kl = (pt.exp() * (pt - pb)).sum(-1)
        got = torch.tensor(stats[stats.prompt_idx == i]["kl_tuned_base"].to_numpy())
        assert torch.allclose(got, kl.float(), atol=1e-5)


def test_positions_last_and_list(tiny, tmp_path):
    last = dl.capture(tiny, LONG, store=tmp_path / "last", positions="last")
    some = dl.capture(tiny, LONG, store=tmp_path / "some", positions=[0, -2])
    for i, text in enumerate(LONG):
        ref, _ = reference_states(tiny, text)
        n = ref[0].shape[0]
        assert last.positions(i) == [n - 1]
        assert (last.hidden(i, 2) - ref[2][-1:]).abs().max() < 1e-5
        expected = sorted({0, n - 2} & set(range(n)))
        assert some.positions(i) == expected
        assert (some.hidden(i, 1) - ref[1][expected]).abs().max() < 1e-5


def test_layer_subset_and_float16(tiny, tmp_path):
    store = dl.capture(tiny, LONG, store=tmp_path / "run", layers="0,-1", store_dtype="float16")
    assert store.layers == [0, tiny.n_layers]
    ref, _ = reference_states(tiny, LONG[0])
    got = store.hidden(0, -1)
    assert got.dtype == torch.float16
    assert (got.float() - ref[-1]).abs().max() < 1e-2
    with pytest.raises(dl.StoreError, match="layer 1 was not captured"):
        store.hidden(0, 1)


def test_stats_columns_match_logits(tiny, tmp_path):
    store = dl.capture(tiny, LONG[:1], store=tmp_path / "run", top_k=3, logprob_positions=[-1])
    stats = store.stats()
    _, logits = reference_states(tiny, LONG[0])
    lp = logits.log_softmax(-1)
    ids = tiny.tokenizer(LONG[0])["input_ids"]
    ent = -(lp.exp() * lp).sum(-1)
    assert torch.allclose(torch.tensor(stats["model_entropy"].to_numpy()), ent, atol=1e-5)
    expect_next = lp[torch.arange(len(ids) - 1), torch.tensor(ids[1:])]
    got_next = torch.tensor(stats["model_logprob_next"].to_numpy())
    assert torch.allclose(got_next[:-1], expect_next, atol=1e-5)
    assert torch.isnan(got_next[-1])
    assert list(stats["model_topk_ids"][0]) == lp[0].topk(3).indices.tolist()
    pos, full = store.logprobs(0)
    assert pos == [len(ids) - 1]
    assert torch.allclose(full[0], lp[-1], atol=1e-5)


def test_rerun_reuses_store_and_other_run_is_refused(tiny, tmp_path, monkeypatch):
    first = dl.capture(tiny, LONG, store=tmp_path / "run")
    calls = []
    monkeypatch.setattr(engine_mod, "_capture_shard", lambda *a, **k: calls.append(1))
    again = dl.capture(tiny, LONG, store=tmp_path / "run", batch_size=2)
    assert again.key == first.key and calls == []
    with pytest.raises(dl.StoreError, match="already holds a different finished run"):
        dl.capture(tiny, LONG[:2], store=tmp_path / "run")


def test_cache_key_covers_what_changes_the_result(tiny, tmp_path):
    def k(**kw):
        run = tmp_path / str(len(list(tmp_path.iterdir())))
        return dl.capture(tiny, LONG[:2], store=run, **kw).key

    base = k()
    assert k(batch_size=1) == base
    assert k(layers="0,1") != base
    assert k(positions="last") != base
    assert k(store_dtype="float16") != base
    other = tiny_model(1)  # different weights
    assert dl.capture(other, LONG[:2], store=tmp_path / "other").key != base


def test_resume_after_crash_is_byte_identical(pair, tmp_path, monkeypatch):
    prompts = LONG * 40
    clean = dl.capture(pair, prompts, store=tmp_path / "clean", shard_mb=1)
    assert clean.manifest["n_shards"] >= 1

    # Crash in the middle of the second shard: after base's tensors, before tuned's.
    real = store_mod.write_tensors_atomic
    writes = []

    def flaky(path, tensors, metadata):
        writes.append(path)
        if len(writes) == 3 + 1:
            raise KeyboardInterrupt("simulated kill")
        real(path, tensors, metadata)

    monkeypatch.setattr(capture_store, "write_tensors_atomic", flaky)
    monkeypatch.setattr(engine_mod, "plan_shards",
                        lambda rows, bpr, mb: [[i, min(i + 50, len(rows))]
                                               for i in range(0, len(rows), 50)])
    with pytest.raises(KeyboardInterrupt):
        dl.capture(pair, prompts, store=tmp_path / "crashed", shard_mb=1)
    with pytest.raises(dl.StoreError, match="did not finish"):
        dl.RunStore.open(tmp_path / "crashed")
    monkeypatch.setattr(capture_store, "write_tensors_atomic", real)
    resumed = dl.capture(pair, prompts, store=tmp_path / "crashed", shard_mb=1)
    uninterrupted = dl.capture(pair, prompts, store=tmp_path / "straight", shard_mb=1)
    assert resumed.manifest["n_shards"] == 4
    assert tensor_bytes(tmp_path / "crashed") == tensor_bytes(tmp_path / "straight")
    assert resumed.stats().equals(uninterrupted.stats())


def test_out_of_disk_keeps_finished_shards(tiny, tmp_path, monkeypatch):
    import errno

    prompts = LONG * 20
    monkeypatch.setattr(engine_mod, "plan_shards",
                        lambda rows, bpr, mb: [[i, min(i + 25, len(rows))]
                                               for i in range(0, len(rows), 25)])
    count = {"n": 0}
    orig_save = store_mod.write_tensors_atomic

    def full_disk(path, tensors, metadata):
        count["n"] += 1
        if count["n"] == 3:
            raise OSError(errno.ENOSPC, "No space left on device")
        orig_save(path, tensors, metadata)

    monkeypatch.setattr(capture_store, "write_tensors_atomic", full_disk)
    with pytest.raises(OSError):
        dl.capture(tiny, prompts, store=tmp_path / "run")
    done = sorted((tmp_path / "run" / "stats").glob("*.parquet"))
    assert len(done) == 2
    monkeypatch.setattr(capture_store, "write_tensors_atomic", orig_save)
    store = dl.capture(tiny, prompts, store=tmp_path / "run")
    assert store.manifest["n_shards"] == 4


def test_enospc_message_is_one_actionable_line(tmp_path, monkeypatch):
    import errno
    import os

    def no_space(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(dl.StoreError, match="out of disk space .* rerun the same command"):
        store_mod.write_bytes_atomic(tmp_path / "x.bin", b"data")
    assert not list(tmp_path.iterdir())  # no half-written file left behind


def test_truncation_from_the_left(tmp_path):
    lm = tiny_model(0, max_positions=6)
    text = "once upon a time there was a little fox"
    with pytest.warns(UserWarning, match="1 prompt"):
        store = dl.capture(lm, [text, "the fox"], store=tmp_path / "run")
    assert store.manifest["n_truncated"] == 1
    assert store.token_ids(0) == lm.tokenizer(text)["input_ids"][-6:]
    assert list(store.prompts["truncated"]) == [True, False]
    with pytest.raises(dl.InputError, match="prompt 0 has 10 tokens, more than the context of 6"):
        dl.capture(lm, [text], store=tmp_path / "strict", truncate=False)


def test_bad_layers_and_prompts(tiny, tmp_path):
    with pytest.raises(dl.InputError, match="layer 9 is out of range: this model has layers 0..4"):
        dl.capture(tiny, LONG, store=tmp_path / "a", layers=[9])
    with pytest.raises(dl.InputError, match="layers must be 'all' or integers"):
        dl.capture(tiny, LONG, store=tmp_path / "b", layers="first")
    with pytest.raises(dl.InputError, match="prompt 1 is empty"):
        dl.capture(tiny, ["the fox", "  "], store=tmp_path / "c")
    with pytest.raises(dl.InputError, match="expected a LoadedModel, a ModelPair or a ModelSet"):
        engine_mod.models_of(tiny.model)  # type: ignore[arg-type]


def test_unwritable_output_directory(tiny, tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(dl.StoreError, match="is not writable"):
        dl.capture(tiny, LONG, store=blocker / "run")


def test_gpt2_and_neox_parity(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel, GPTNeoXConfig, GPTNeoXForCausalLM

    tok = word_tokenizer()
    torch.manual_seed(0)
    models = {
        "gpt2": GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_embd=32, n_layer=3, n_head=4,
                                           n_positions=64)),
        "neox": GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=len(tok), hidden_size=32,
                                                 num_hidden_layers=3, num_attention_heads=4,
                                                 intermediate_size=64,
                                                 max_position_embeddings=64)),
    }
    for name, model in models.items():
        lm = dl.wrap_model(model.eval(), tok, name=name)
        assert lm.layers.path == {"gpt2": "transformer.h", "neox": "gpt_neox.layers"}[name]
        store = dl.capture(lm, LONG, store=tmp_path / name, batch_size=4, padding_side="left")
        for i, text in enumerate(LONG):
            ref, _ = reference_states(lm, text)
            for layer in store.layers:
                assert (store.hidden(i, layer) - ref[layer]).abs().max() < 1e-5, (name, layer)


def files_of(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and not f.name.startswith(".")}


def index_read_from_shards(path: Path, label: str, n_shards: int):
    """The index as the engine built it before ``index_of``: from each shard's
    ``prompt_idx`` array (an independent check of the plan arithmetic)."""
    import numpy as np
    import pandas as pd
    from safetensors import safe_open

    parts = []
    for shard in range(n_shards):
        with safe_open(str(path / "tensors" / label / f"shard-{shard:05d}.safetensors"),
                       "pt") as f:
            pidx = f.get_tensor("prompt_idx").numpy()
        if len(pidx) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, pidx[1:] != pidx[:-1]])
        counts = np.diff(np.r_[starts, len(pidx)])
        parts.append(pd.DataFrame({"prompt_idx": pidx[starts], "shard": shard,
                                   "row_start": starts, "n_rows": counts}))
    return pd.concat(parts, ignore_index=True)


@pytest.mark.parametrize("positions", ["all", "last", (0, 2, -1)])
def test_index_from_the_plan_equals_the_index_read_from_the_shards(pair, tmp_path,
                                                                   positions, monkeypatch):
    import json

    import pandas as pd

    from difflens.capture.store import index_of

    monkeypatch.setattr(engine_mod, "plan_shards",  # shards of 40 prompts, any positions
                        lambda rows, bpr, mb: [[i, min(i + 40, len(rows))]
                                               for i in range(0, len(rows), 40)])
    run = dl.capture(pair, ["and"] + LONG * 30, store=tmp_path / "run",
                     positions=positions, layers="all")
    plan = json.loads((run.path / "run.json").read_text())["plan"]
    rows = [len(plan_mod.rows_of(int(n), run.manifest["config"]["positions"]
                                    if isinstance(positions, str) else tuple(positions)))
            for n in run.prompts.n_tokens]
    read = (index_read_from_shards(run.path, "base", len(plan)).set_index("prompt_idx")
            .reindex(range(run.n_prompts), fill_value=0).reset_index())
    pd.testing.assert_frame_equal(index_of(plan, rows), read, check_exact=True)
    assert len(plan) > 1


def test_a_uri_store_holds_the_folder_store_bytes_and_reads_back(pair, tmp_path):
    """``file://`` goes through the same pyarrow filesystem path as ``s3://``: files are
    written to the local mirror and uploaded whole, the manifest last."""
    prompts = LONG * 20
    folder = dl.capture(pair, prompts, store=tmp_path / "folder", shard_mb=1)
    uri = f"file://{tmp_path / 'remote' / 'run'}"
    remote = dl.capture(pair, prompts, store=uri, shard_mb=1)
    assert files_of(tmp_path / "remote" / "run") == files_of(folder.path)
    assert remote.remote is not None and remote.path != tmp_path / "remote" / "run"

    # read back through a fresh mirror: shards are fetched on first use
    import shutil

    shutil.rmtree(remote.path)
    again = dl.RunStore.open(uri)
    assert not (again.path / "tensors").exists()
    assert torch.equal(again.hidden(3, 2, "tuned"), folder.hidden(3, 2, "tuned"))
    assert again.stats().equals(folder.stats())

    # an unfinished remote run resumes from the shards the remote holds
    (tmp_path / "remote" / "run" / "manifest.json").unlink()
    for f in sorted((tmp_path / "remote" / "run" / "stats").glob("*.parquet"))[1:]:
        f.unlink()
    with pytest.raises(dl.StoreError, match="did not finish"):
        dl.RunStore.open(uri)
    dl.capture(pair, prompts, store=uri, shard_mb=1)
    assert files_of(tmp_path / "remote" / "run") == files_of(folder.path)


def test_a_bad_store_uri_is_one_line(tiny):
    with pytest.raises(dl.InputError, match="cannot open the store nope://x") as err:
        dl.capture(tiny, ["the fox"], store="nope://x")
    assert "\n" not in str(err.value)


def test_uri_store_from_the_cli_and_described(tiny, tmp_path):
    from typer.testing import CliRunner

    from difflens.cli.main import app

    folder = tmp_path / "model"
    tiny.model.save_pretrained(folder)
    tiny.tokenizer.save_pretrained(folder)
    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(LONG) + "\n")
    uri = f"file://{tmp_path / 'bucket' / 'run'}"
    res = CliRunner().invoke(app, ["capture", "run", "--base", str(folder), "--prompts",
                                   str(prompts), "--out", uri])
    assert res.exit_code == 0, res.output
    assert (tmp_path / "bucket" / "run" / "manifest.json").is_file()
    assert not (tmp_path / "s3:").exists() and not Path("file:").exists()
    info = CliRunner().invoke(app, ["capture", "info", uri, "--json"])
    assert info.exit_code == 0, info.output
    import json

    d = json.loads(info.output)
    on_disk = sum(f.stat().st_size for f in (tmp_path / "bucket" / "run").rglob("*")
                  if f.is_file())
    assert d["path"] == uri and d["n_prompts"] == len(LONG)
    assert d["size_mb"] == round(on_disk / 2**20, 2) and "model_entropy" in d["stats_columns"]


def test_a_run_that_ends_with_a_shard_missing_writes_no_manifest(pair, tmp_path,
                                                                 monkeypatch):
    """As when --out is a folder only some nodes of a cluster see."""
    real = capture_store.write_parquet_atomic

    def lose_shard_1(path, df):
        if path.name != "shard-00001.parquet":
            real(path, df)

    monkeypatch.setattr(capture_store, "write_parquet_atomic", lose_shard_1)
    with pytest.raises(dl.StoreError, match=r"lacks 1 of \d+ shards after the run "
                                            r"\(first: shard-00001\)") as err:
        dl.capture(pair, LONG * 40, store=tmp_path / "run", shard_mb=1)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "run" / "manifest.json").exists()
