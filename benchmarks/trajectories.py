"""Trajectory statistics: vectorised vs a straightforward per-path Python loop; UMAP at 100k.

A synthetic trajectory table of 1,000 prompts x 12 paths (2 models x prompt + 5
continuations) x 40 steps (480,000 points on the sphere). Timed in this process:

- difflens's ``trajectory_stats`` (distances by index with prompt-resampling CIs, jumps,
  token ranking, sentiment);
- the same statistics written path by path in plain Python, as a first script would: jumps
  with ``math.acos``, base-tuned distances per index with the same 500 prompt resamples,
  the token ranking and the jump-weighted sentiment; the results must agree;
- ``SphereProjection(method="umap")`` fitted on 100,000 points of 64 dimensions.

Last line: ``stats_speedup=<x> umap_100k_s=<y>``.
"""

import math
import random
import time

import numpy as np
import pandas as pd

from difflens.analysis.sphere import SphereProjection
from difflens.analysis.trajectories import trajectory_stats
from difflens.inputs.trajectory_files import check_table
from difflens.models.labellers import sentiment


def table(n_prompts: int = 1000, steps: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    segs = ["prompt"] + [f"continuation:{i}" for i in range(5)]
    keys = [(p, m, s) for p in range(n_prompts) for m in ("base", "tuned") for s in segs]
    n = len(keys) * steps
    pts = rng.normal(size=(n, 3))
    pts /= np.linalg.norm(pts, axis=1, keepdims=True)
    vocab = np.array([f"Ġw{i}" for i in range(500)] + ["Ġhappy", "Ġsad", "Ġgood", "Ġbad"])
    return pd.DataFrame({
        "prompt_id": np.repeat([k[0] for k in keys], steps),
        "model": np.repeat([k[1] for k in keys], steps),
        "segment": np.repeat([k[2] for k in keys], steps),
        "step": np.tile(np.arange(steps), len(keys)),
        "token": vocab[rng.integers(0, len(vocab), n)],
        "x": pts[:, 0], "y": pts[:, 1], "z": pts[:, 2],
    })


def loop_stats(df: pd.DataFrame, n_boot: int = 500, seed: int = 0, min_count: int = 20
               ) -> dict[str, object]:
    """The same statistics as ``trajectory_stats``, written path by path in plain Python."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from difflens.analysis.trajectory_table import readable_token

    sia = SentimentIntensityAnalyzer()
    paths: dict[tuple, list[tuple[float, float, float, str]]] = {}
    for row in df.itertuples(index=False):
        paths.setdefault((row.prompt_id, row.model, row.segment), []).append(
            (row.x, row.y, row.z, row.token))

    def angle(a: tuple, b: tuple) -> float:
        return math.acos(max(-1.0, min(1.0, a[0] * b[0] + a[1] * b[1] + a[2] * b[2])))

    # jumps, per token and per model, with each token's sentiment
    by_token: dict[str, list[float]] = {}
    per_model: dict[str, list[tuple[object, float, float]]] = {"base": [], "tuned": []}
    sentiment: dict[str, float] = {}
    for (p, m, _s), pts in paths.items():
        for a, b in zip(pts[:-1], pts[1:], strict=True):
            j = angle(a, b)
            by_token.setdefault(b[3], []).append(j)
            word = readable_token(b[3]).strip()
            if word not in sentiment:
                sentiment[word] = sia.polarity_scores(word)["compound"]
            per_model[m].append((p, j, sentiment[word]))
    # base-tuned distance per index, per prompt (prompt and continuations)
    per_prompt: dict[str, dict[object, dict[int, list[float]]]] = {"prompt": {},
                                                                     "continuation": {}}
    for (p, m, s), pts in paths.items():
        if m != "base":
            continue
        kind = "prompt" if s == "prompt" else "continuation"
        for t, (a, b) in enumerate(zip(pts, paths[(p, "tuned", s)], strict=True)):
            per_prompt[kind].setdefault(p, {}).setdefault(t, []).append(angle(a, b))
    rng = random.Random(seed)
    out: dict[str, object] = {}
    for kind, prompts in per_prompt.items():
        ids = list(prompts)
        steps = sorted({t for d in prompts.values() for t in d})
        mean = {t: sum(sum(prompts[p].get(t, [])) for p in ids)
                / sum(len(prompts[p].get(t, [])) for p in ids) for t in steps}
        boots: dict[int, list[float]] = {t: [] for t in steps}
        for _ in range(n_boot):
            sample = [ids[rng.randrange(len(ids))] for _ in ids]
            for t in steps:
                vals = [v for p in sample for v in prompts[p].get(t, [])]
                if vals:
                    boots[t].append(sum(vals) / len(vals))
        out[kind] = {t: (mean[t], *np.quantile(boots[t], [0.025, 0.975])) for t in steps}
    ranked = sorted(((sum(v) / len(v), t) for t, v in by_token.items() if len(v) >= min_count),
                    reverse=True)
    out["top"] = ranked[:15]
    for m, rows in per_model.items():
        num = sum(j * s for _, j, s in rows)
        den = sum(j for _, j, _ in rows)
        out[f"sentiment_{m}"] = num / den
    return out


def core_loop(df: pd.DataFrame) -> float:
    """Only the jumps, path by path (the cheapest part), for a like-for-like core timing."""
    total = 0.0
    prev = None
    for row in df.itertuples(index=False):
        key = (row.prompt_id, row.model, row.segment)
        if prev is not None and prev[0] == key:
            a = prev[1]
            total += math.acos(max(-1.0, min(1.0, a[0] * row.x + a[1] * row.y + a[2] * row.z)))
        prev = (key, (row.x, row.y, row.z))
    return total


def main() -> None:
    df = check_table(table())
    print(f"table: {len(df):,} points, {df.prompt_id.nunique()} prompts")
    t0 = time.perf_counter()
    ref = loop_stats(df)
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    st = trajectory_stats(df, min_count=20, score_words=sentiment)
    vec_s = time.perf_counter() - t0
    got = {r["index"]: r for r in st.distance_by_index["prompt"]}
    ref_prompt = ref["prompt"]
    assert isinstance(ref_prompt, dict)
    err = max(abs(got[t]["value"] - v[0]) for t, v in ref_prompt.items())
    top = ref["top"]
    assert isinstance(top, list)
    same_top = [t for _, t in top] == [r["token"] for r in st.top_tokens]
    sent_err = abs(st.sentiment["jump_weighted"]["base"]["value"] - float(ref["sentiment_base"]))
    t0 = time.perf_counter()
    core = core_loop(df)
    core_s = time.perf_counter() - t0
    print(f"per-path loop, same statistics (500 prompt resamples): {loop_s:.2f} s")
    print(f"trajectory_stats: {vec_s:.2f} s")
    print(f"agreement: max |distance diff| {err:.1e}, same top tokens {same_top}, "
          f"|sentiment diff| {sent_err:.1e}; jump sum {core:.1f} vs "
          f"{float(np.nansum(st.jumps.jump)):.1f}")
    print(f"for scale: the jumps alone in a plain loop take {core_s:.2f} s")
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(100_000, 64)) + 3 * rng.normal(size=(20, 64))[
        rng.integers(0, 20, 100_000)]).astype(np.float32)
    SphereProjection(method="umap").fit(x[:2000])  # numba compilation, not timed
    t0 = time.perf_counter()
    SphereProjection(method="umap", random_state=0).fit(x)
    umap_s = time.perf_counter() - t0
    print(f"UMAP (haversine) fit on 100,000 x 64 points: {umap_s:.1f} s")
    print(f"stats_speedup={loop_s / vec_s:.1f} umap_100k_s={umap_s:.1f}")


if __name__ == "__main__":
    main()
