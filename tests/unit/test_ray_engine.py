"""The Ray engine on a local cluster (2 CPUs, 2 actors): capture and sampling give the local
engine's exact bytes, survive a SIGKILLed actor and a killed driver, and resume across
engines."""

import importlib.util
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

import difflens as dl
from difflens.errors import InputError
from difflens.models.engines import RayEngine, map_with_models, use_engine
from difflens.models.tiny import tiny_model

pytestmark = pytest.mark.ray

RAY_MISSING = "Ray is not installed: pip install 'difflens[ray]' (or the dev extra)"
# on a CPU, bit-equal states need the local run's thread count in every worker
ENGINE = RayEngine(workers=2, torch_threads=torch.get_num_threads())
WORDS = "the fox a dog cat sat on mat ran to park big red ball and happy girl".split()


@pytest.fixture(scope="module")
def ray_session():
    if importlib.util.find_spec("ray") is None:
        yield None
        return
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield ray
    ray.shutdown()


@pytest.fixture
def ray_cluster(ray_session, require):
    require(ray_session is not None, RAY_MISSING)
    return ray_session


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A tiny base (d_model 256, so a shard of 1 MB holds ~100 rows) and a planted sibling,
    saved as model folders that workers load."""
    root = tmp_path_factory.mktemp("models")
    base = tiny_model(0, d_model=256, name="base")
    tuned = tiny_model(1, d_model=256, tokenizer=base.tokenizer, name="tuned")
    out = {}
    for label, lm in (("base", base), ("tuned", tuned)):
        lm.model.save_pretrained(root / label)
        lm.tokenizer.save_pretrained(root / label)
        out[label] = root / label
    return out


@pytest.fixture(scope="module")
def pair(folders):
    return dl.ModelPair(dl.load_model(folders["base"]), dl.load_model(folders["tuned"]))


def prompts_of(n: int) -> list[str]:
    return [" ".join(WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(6 + i % 11))
            for i in range(n)]


CAPTURE = dict(layers="all", shard_mb=1, batch_size=8)


def files_of(path: Path) -> dict[str, bytes]:
    return {str(f.relative_to(path)): f.read_bytes()
            for f in sorted(path.rglob("*")) if f.is_file()}


@pytest.fixture(scope="module")
def local_run(pair, tmp_path_factory):
    store = dl.capture(pair, prompts_of(120), store=tmp_path_factory.mktemp("local") / "run",
                       **CAPTURE)
    assert store.manifest["n_shards"] >= 6  # the tests below need several shards
    return store.path


def test_ray_capture_equals_local_byte_for_byte(ray_cluster, pair, local_run, tmp_path):
    store = dl.capture(pair, prompts_of(120), store=tmp_path / "ray", engine=ENGINE, **CAPTURE)
    assert store.key == dl.RunStore.open(local_run).key
    assert files_of(store.path) == files_of(local_run)


def test_killed_actor_still_ends_complete_and_identical(ray_cluster, pair, local_run,
                                                        tmp_path):
    import psutil

    out = tmp_path / "ray"
    n_shards = dl.RunStore.open(local_run).manifest["n_shards"]
    killed: dict[str, int] = {}

    def kill_one_worker_mid_run() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            done = list((out / "stats").glob("shard-*.parquet")) if out.is_dir() else []
            if done:
                for proc in psutil.process_iter(["pid", "cmdline"]):
                    if "MapWorker(MapBatches(_Worker))" in " ".join(proc.info["cmdline"] or []):
                        os.kill(proc.info["pid"], signal.SIGKILL)
                        killed["pid"] = proc.info["pid"]
                        killed["finished_before"] = len(done)
                        return
            time.sleep(0.005)

    killer = threading.Thread(target=kill_one_worker_mid_run)
    killer.start()
    store = dl.capture(pair, prompts_of(120), store=out, engine=ENGINE, **CAPTURE)
    killer.join()
    assert "pid" in killed, "no worker was killed"
    assert killed["finished_before"] < n_shards, "the kill came after the last shard"
    assert not psutil.pid_exists(killed["pid"]) or psutil.Process(killed["pid"]).status() == \
        psutil.STATUS_ZOMBIE
    assert files_of(store.path) == files_of(local_run)
    assert not [f for f in out.rglob("*") if ".tmp" in f.name]


DRIVER = textwrap.dedent("""
    import sys, ray, difflens as dl
    from difflens.models.engines import RayEngine
    ray.init(address=sys.argv[1], log_to_driver=False)
    pair = dl.ModelPair(dl.load_model(sys.argv[2]), dl.load_model(sys.argv[3]))
    words = {words!r}
    prompts = [" ".join(words[(i * 7 + j * 3) % len(words)] for j in range(6 + i % 11))
               for i in range(120)]
    engine = RayEngine(workers=2, torch_threads=int(sys.argv[5]))
    dl.capture(pair, prompts, store=sys.argv[4], engine=engine, **{capture!r})
""").format(words=WORDS, capture=CAPTURE)


def test_stopped_driver_resumes_without_redoing_finished_shards(ray_cluster, folders, pair,
                                                                local_run, tmp_path):
    out = tmp_path / "ray"
    address = ray_cluster.get_runtime_context().gcs_address
    driver = subprocess.Popen([sys.executable, "-c", DRIVER, address, str(folders["base"]),
                               str(folders["tuned"]), str(out), str(torch.get_num_threads())])
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and driver.poll() is None:
        if out.is_dir() and list((out / "stats").glob("shard-*.parquet")):
            break
        time.sleep(0.005)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    time.sleep(1.0)  # let an orphaned actor finish the shard it was writing
    assert not (out / "manifest.json").exists(), "the driver finished before it was stopped"
    finished = {f: (f.stat().st_ino, f.stat().st_mtime_ns)
                for f in (out / "stats").glob("shard-*.parquet")}
    assert finished
    store = dl.capture(pair, prompts_of(120), store=out, engine=ENGINE, **CAPTURE)
    assert {f: (f.stat().st_ino, f.stat().st_mtime_ns) for f in finished} == finished
    assert files_of(store.path) == files_of(local_run)


def unfinish(run: Path, dest: Path) -> Path:
    """A copy of a finished run as a killed one leaves it: no manifest or index, and only
    the even shards done."""
    shutil.copytree(run, dest)
    (dest / "manifest.json").unlink()
    (dest / "index.parquet").unlink()
    for f in sorted((dest / "stats").glob("shard-*.parquet"))[1::2]:
        f.unlink()
    return dest


@pytest.mark.parametrize("resume_on", ["ray", "local"])
def test_a_run_resumes_on_the_other_engine(ray_cluster, pair, local_run, tmp_path, resume_on):
    started = local_run if resume_on == "ray" else dl.capture(
        pair, prompts_of(120), store=tmp_path / "ray-run", engine=ENGINE, **CAPTURE).path
    partial = unfinish(started, tmp_path / "partial")
    store = dl.capture(pair, prompts_of(120), store=partial, engine=resume_on, **CAPTURE)
    assert files_of(store.path) == files_of(local_run)


def test_sampling_on_ray_equals_local(ray_cluster, pair):
    from difflens.sampling.generate import GenerationConfig, generate_many

    lm = pair.base
    ids = [lm.tokenizer(p)["input_ids"] for p in prompts_of(6)]
    jobs = [([row] * 3, GenerationConfig(max_new_tokens=8, seed=11 + i, batch_size=2,
                                          sampler="multinomial"))
            for i, row in enumerate(ids)]
    local = generate_many(lm, jobs, engine="local")
    remote = generate_many(lm, jobs, engine=ENGINE)
    assert [g.token_ids for g in remote] == [g.token_ids for g in local]
    assert len({tuple(t) for g in local for t in g.token_ids}) > 1  # really sampled


def test_trajectory_paths_on_ray_equal_local(ray_cluster, pair):
    from difflens.capture.cumulative_paths import build_paths

    kw = dict(continuations=2, max_new_tokens=6, seed=3, chunk=2)
    local = build_paths(pair, prompts_of(5), **kw)
    with use_engine(ENGINE):
        remote = build_paths(pair, prompts_of(5), **kw)
    pd.testing.assert_frame_equal(remote.table, local.table)
    pd.testing.assert_frame_equal(remote.continuations, local.continuations)
    assert (remote.points == local.points).all()


def test_a_model_built_in_memory_is_refused_with_one_line(ray_cluster, tmp_path):
    with pytest.raises(InputError, match="built in memory") as err:
        dl.capture(tiny_model(0), ["the fox"], store=tmp_path / "run", engine=ENGINE)
    assert "\n" not in str(err.value)


def test_missing_ray_says_how_to_install(monkeypatch, tiny):
    import difflens.models.engines as engines

    monkeypatch.setattr(engines.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(InputError, match=r"pip install 'difflens\[ray\]'"):
        map_with_models(ENGINE, {"model": tiny}, lambda models, item: item, [1])


def test_ray_workers_write_into_a_uri_store(ray_cluster, pair, local_run, tmp_path):
    """Each worker uploads its shards itself (tensors, then stats); the driver writes the
    index and the manifest last."""
    uri = f"file://{tmp_path / 'bucket' / 'run'}"
    store = dl.capture(pair, prompts_of(120), store=uri, engine=ENGINE, **CAPTURE)
    assert files_of(tmp_path / "bucket" / "run") == files_of(local_run)
    assert torch.equal(store.hidden(7, 3, "base"), dl.RunStore.open(local_run).hidden(7, 3, "base"))


def test_cli_capture_on_ray(ray_cluster, folders, local_run, tmp_path):
    """``--engine ray`` from the command line; its actors use Ray's default thread count,
    so on a CPU the states agree with the local run to float32 rounding, not bit for bit."""
    from typer.testing import CliRunner

    from difflens.cli.main import app

    prompts = tmp_path / "p.txt"
    prompts.write_text("\n".join(prompts_of(120)) + "\n")
    out = tmp_path / "cli"
    res = CliRunner().invoke(app, [
        "capture", "run", "--base", str(folders["base"]), "--tuned", str(folders["tuned"]),
        "--prompts", str(prompts), "--out", str(out), "--shard-mb", "1", "--batch-size", "8",
        "--engine", "ray", "--workers", "2"])
    assert res.exit_code == 0, res.output
    store, local = dl.RunStore.open(out), dl.RunStore.open(local_run)
    assert store.key == local.key and store.manifest["n_shards"] == local.manifest["n_shards"]
    for p in (0, 57, 119):
        for layer in store.layers:
            torch.testing.assert_close(store.hidden(p, layer, "tuned"),
                                       local.hidden(p, layer, "tuned"), rtol=0, atol=1e-5)
    bad = CliRunner().invoke(app, [
        "capture", "run", "--base", str(folders["base"]), "--prompts", str(prompts),
        "--out", str(tmp_path / "x"), "--address", "auto"])
    assert bad.exit_code != 0
    assert "--address, --workers and --worker-gpus need --engine ray" in bad.output


def test_theme_samples_on_ray_equal_local(ray_cluster, pair, tmp_path):
    from difflens.pipelines.theme_config import ThemesConfig
    from difflens.pipelines.theme_steps import sample_continuations

    cfg = ThemesConfig(prompts=tuple(prompts_of(5)), k_samples=3, max_new_tokens=8,
                       batch_size=6)  # 2 prompts per stored part: 3 parts
    local = sample_continuations(pair.base, "base", cfg, tmp_path / "local")
    with use_engine(ENGINE):
        remote = sample_continuations(pair.base, "base", cfg, tmp_path / "ray")
    pd.testing.assert_frame_equal(remote, local)
    assert len(list((tmp_path / "ray").rglob("part_*.parquet"))) == 3  # each part stored
    assert local["text"].nunique() > 1


def test_control_evaluation_on_ray_equals_local(ray_cluster, pair):
    from difflens.control.evaluate import ControlConfig, evaluate_control
    from difflens.control.state_probe import StateProbe
    from difflens.sampling.generate import GenerationConfig

    lm = pair.base
    probe = StateProbe(weight=torch.randn(lm.d_model, generator=torch.Generator().manual_seed(0)),
                       bias=0.0, layer=2, threshold=0.5, state_norm=1.0,
                       model={"name": "x", "d_model": lm.d_model, "n_layers": lm.n_layers,
                              "tokenizer_sha256": lm.identity.tokenizer_sha256,
                              "weights_sha256": lm.identity.weights_sha256})
    cfg = ControlConfig(gains=(("proportional", (1.0,)), ("rollback", (1.0,))), k_samples=2,
                        n_boot=50, generation=GenerationConfig(max_new_tokens=8, batch_size=3))
    local = evaluate_control(lm, probe, prompts_of(4), config=cfg)
    with use_engine(ENGINE):
        remote = evaluate_control(lm, probe, prompts_of(4), config=cfg)
    timing = ["gen_seconds"]
    pd.testing.assert_frame_equal(remote.generations.drop(columns=timing),
                                  local.generations.drop(columns=timing))
    assert local.generations["controller"].nunique() == 3  # none, proportional, rollback
