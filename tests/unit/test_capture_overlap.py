"""Capture writes a shard's files on a writer thread while the next shard runs: bounded
(at most two shards wait to be written), in order (tensors first, statistics last), its
errors raised in the caller, drained before the index and manifest; a run killed at any
moment resumes to the very bytes of an uninterrupted run."""

import os
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import difflens as dl
from difflens.capture import engine as engine_mod
from difflens.capture import store as capture_store
from difflens.models.tiny import EXAMPLE_PROMPTS

PROMPTS = [f"{p} {q}" for p in EXAMPLE_PROMPTS for q in EXAMPLE_PROMPTS[:6]]  # 60 prompts


def _shards_of(n: int):
    """A plan of ``n``-prompt shards (whatever the layers' sizes)."""
    return lambda rows, bpr, mb: [[i, min(i + n, len(rows))] for i in range(0, len(rows), n)]


def files_of(path: Path) -> dict[str, bytes]:
    """Every file of a store (run.json, prompts, tensors, stats, index, manifest) but the
    hidden ones (temporaries, probes)."""
    return {str(f.relative_to(path)): f.read_bytes() for f in sorted(path.rglob("*"))
            if f.is_file() and not f.name.startswith(".")}


def _stats_done(run: Path) -> list[str]:
    return sorted(f.name for f in (run / "stats").glob("shard-*.parquet"))


def test_a_capture_killed_mid_run_resumes_to_the_bytes_of_a_straight_run(pair, tmp_path,
                                                                         monkeypatch):
    """SIGKILL a capture in another process once its first shard's statistics exist (the
    writer then sleeps, so later shards are being computed, queued or written)."""
    run = tmp_path / "killed"
    script = textwrap.dedent(f"""
        import sys, time
        import difflens as dl
        from difflens.capture import engine, store
        from difflens.models.tiny import tiny_pair
        engine.plan_shards = lambda rows, bpr, mb: [[i, min(i + 6, len(rows))]
                                                    for i in range(0, len(rows), 6)]
        real = store.write_parquet_atomic
        def slow(path, df):
            real(path, df)
            time.sleep(0.4)
        store.write_parquet_atomic = slow
        pair = tiny_pair(0, planted_block=2, scale=3.0)
        dl.capture(pair, {PROMPTS!r}, store=sys.argv[1], layers="0,2,4", batch_size=4)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script, str(run)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not (run / "stats" / "shard-00000.parquet").is_file():
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            assert time.monotonic() < deadline, "the first shard never appeared"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL
    assert not (run / "manifest.json").exists()
    assert 1 <= len(_stats_done(run)) < 10
    with pytest.raises(dl.StoreError, match="did not finish"):
        dl.RunStore.open(run)

    monkeypatch.setattr(engine_mod, "plan_shards", _shards_of(6))
    resumed = dl.capture(pair, PROMPTS, store=run, layers="0,2,4", batch_size=4)
    straight = dl.capture(pair, PROMPTS, store=tmp_path / "straight", layers="0,2,4",
                          batch_size=4)
    assert resumed.manifest["n_shards"] == 10
    assert files_of(run) == files_of(tmp_path / "straight")
    assert resumed.stats().equals(straight.stats())


def test_a_write_error_stops_the_run_in_the_caller_and_the_run_resumes(pair, tmp_path,
                                                                       monkeypatch):
    monkeypatch.setattr(engine_mod, "plan_shards", _shards_of(8))
    real = capture_store.write_tensors_atomic

    def broken(path, tensors, metadata):
        if path.name == "shard-00003.safetensors" and path.parent.name == "tuned":
            raise RuntimeError("disk on fire")
        real(path, tensors, metadata)

    monkeypatch.setattr(capture_store, "write_tensors_atomic", broken)
    with pytest.raises(RuntimeError, match="disk on fire"):
        dl.capture(pair, PROMPTS, store=tmp_path / "run")
    # shards in order: 0..2 whole, 3 has base's tensors and no statistics, nothing after it
    assert _stats_done(tmp_path / "run") == [f"shard-{i:05d}.parquet" for i in range(3)]
    assert not (tmp_path / "run" / "tensors" / "base" / "shard-00004.safetensors").exists()
    assert not (tmp_path / "run" / "manifest.json").exists()
    monkeypatch.setattr(capture_store, "write_tensors_atomic", real)
    dl.capture(pair, PROMPTS, store=tmp_path / "run")
    dl.capture(pair, PROMPTS, store=tmp_path / "straight")
    assert files_of(tmp_path / "run") == files_of(tmp_path / "straight")


def test_an_error_in_the_forward_still_writes_the_shards_already_computed(pair, tmp_path,
                                                                          monkeypatch):
    monkeypatch.setattr(engine_mod, "plan_shards", _shards_of(8))
    real_capture, real_write = engine_mod._capture_shard, engine_mod.write_shard

    def capture_shard(shard, *args, **kwargs):
        if shard == 4:
            raise KeyboardInterrupt("stopped")
        return real_capture(shard, *args, **kwargs)

    def slow_write(*args, **kwargs):
        time.sleep(0.2)  # shards 2 and 3 are still waiting when shard 4 fails
        real_write(*args, **kwargs)

    monkeypatch.setattr(engine_mod, "_capture_shard", capture_shard)
    monkeypatch.setattr(engine_mod, "write_shard", slow_write)
    with pytest.raises(KeyboardInterrupt):
        dl.capture(pair, PROMPTS, store=tmp_path / "run")
    assert _stats_done(tmp_path / "run") == [f"shard-{i:05d}.parquet" for i in range(4)]


def test_writes_overlap_the_next_shard_at_most_two_shards_wait(pair, tmp_path, monkeypatch):
    monkeypatch.setattr(engine_mod, "plan_shards", _shards_of(5))
    real_capture, real_write = engine_mod._capture_shard, engine_mod.write_shard
    real_json = engine_mod.write_json_atomic
    events: list[tuple[str, int, float]] = []
    written: list[int] = []
    waiting: list[int] = []
    threads: set[str] = set()

    def capture_shard(shard, *args, **kwargs):
        waiting.append(shard - len(written))  # computed or queued, not yet written
        events.append(("compute", shard, time.monotonic()))
        return real_capture(shard, *args, **kwargs)

    def slow_write(out, result, *args, **kwargs):
        threads.add(threading.current_thread().name)
        time.sleep(0.15)
        real_write(out, result, *args, **kwargs)
        events.append(("written", result.shard, time.monotonic()))
        written.append(result.shard)

    def manifest_last(path, obj):
        if path.name == "manifest.json":  # the writer drained first
            assert written == list(range(12)), written
        real_json(path, obj)

    monkeypatch.setattr(engine_mod, "_capture_shard", capture_shard)
    monkeypatch.setattr(engine_mod, "write_shard", slow_write)
    monkeypatch.setattr(engine_mod, "write_json_atomic", manifest_last)
    store = dl.capture(pair, PROMPTS, store=tmp_path / "run", layers="0,4")
    assert store.manifest["n_shards"] == 12 and written == list(range(12))
    assert threads == {"difflens-shard-writer"}
    assert max(waiting) <= 2, waiting  # back-pressure: the queue holds one shard
    started = {s: t for kind, s, t in events if kind == "compute"}
    ended = {s: t for kind, s, t in events if kind == "written"}
    # shard k+1 is computed while shard k is being written
    assert sum(started[k + 1] < ended[k] for k in range(11)) >= 8
    monkeypatch.setattr(engine_mod, "_capture_shard", real_capture)
    monkeypatch.setattr(engine_mod, "write_shard", real_write)
    monkeypatch.setattr(engine_mod, "plan_shards", _shards_of(5))
    assert files_of(store.path) == files_of(
        dl.capture(pair, PROMPTS, store=tmp_path / "again", layers="0,4").path)
