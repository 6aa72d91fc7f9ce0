"""Explorer: how long opening the atlas of a 100,000-point trajectories run takes.

A synthetic run (1,000 prompts x 2 models x 50 tokens on the unit sphere, with jumps,
sentiment and path texts) is written to a temporary folder; the explorer serves it with
uvicorn in a thread of this process; the atlas is opened cold, as a browser does: an HTTP
GET of the page, then of its data endpoint (DuckDB reads and joins the tables, the JSON is
built). Last line: ``atlas_open_s=<s> n_points=<n> payload_mb=<mb> page_s=<s> data_s=<s>``.
"""

import tempfile
import time
import urllib.request
from pathlib import Path

import numpy as np
import pandas as pd

from difflens.explore import create_app
from difflens.explore.app import serve_in_thread

N_PROMPTS, MODELS, STEPS = 1000, ("base", "tuned"), 50


def synthetic_run(folder: Path, seed: int = 0) -> int:
    """Write data/trajectories.parquet, jumps.parquet, continuations.parquet and a summary;
    return the number of points."""
    rng = np.random.default_rng(seed)
    n = N_PROMPTS * len(MODELS) * STEPS
    xyz = rng.normal(size=(n, 3))
    xyz /= np.linalg.norm(xyz, axis=1, keepdims=True)
    words = np.array([f"w{i}" for i in range(5000)])
    keys = pd.DataFrame({
        "prompt_id": np.repeat(np.arange(N_PROMPTS), len(MODELS) * STEPS),
        "model": np.tile(np.repeat(MODELS, STEPS), N_PROMPTS),
        "segment": "continuation:0",
        "step": np.tile(np.arange(STEPS), N_PROMPTS * len(MODELS)),
    })
    tokens = words[rng.integers(0, len(words), n)]
    traj = keys.assign(token=tokens, token_raw=np.char.add("Ġ", tokens),
                       token_id=rng.integers(0, 5000, n), x=xyz[:, 0], y=xyz[:, 1],
                       z=xyz[:, 2], state_ref=np.arange(n))
    (folder / "data").mkdir(parents=True)
    traj.to_parquet(folder / "data" / "trajectories.parquet", index=False)
    keys.assign(token=tokens, jump=rng.gamma(2.0, 0.1, n), sentiment=rng.uniform(-1, 1, n),
                jump_rel=rng.gamma(2.0, 0.5, n)).to_parquet(
        folder / "data" / "jumps.parquet", index=False)
    texts = traj.groupby(["prompt_id", "model", "segment"], as_index=False)["token_raw"].agg(
        "".join).rename(columns={"token_raw": "text"})
    texts.to_parquet(folder / "data" / "continuations.parquet", index=False)
    (folder / "summary.json").write_text("{}")
    return n


def get(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=120) as r:
        body = r.read()
        assert r.status == 200, (url, r.status)
    return time.perf_counter() - t0, len(body)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        run = Path(tmp) / "synthetic-trajectories"
        n = synthetic_run(run)
        with serve_in_thread(create_app([run])) as srv:
            page_s, _ = get(f"{srv.url}/runs/0/atlas")
            data_s, size = get(f"{srv.url}/api/runs/0/atlas")
            again_s, _ = get(f"{srv.url}/api/runs/0/atlas")
    print(f"atlas page: {page_s:.3f} s; data (cold): {data_s:.2f} s, {size / 1e6:.1f} MB of "
          f"JSON for {n:,} points; data again (cached in memory): {again_s:.3f} s")
    print(f"atlas_open_s={page_s + data_s:.2f} n_points={n} payload_mb={size / 1e6:.1f} "
          f"page_s={page_s:.3f} data_s={data_s:.2f}")


if __name__ == "__main__":
    main()
