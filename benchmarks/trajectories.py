"""Trajectory statistics: vectorised vs a straightforward per-path Python loop; UMAP at 100k.

A synthetic trajectory table of 1,000 prompts x 12 paths (2 models x prompt + 5
continuations) x 40 steps (480,000 points on the sphere). Timed in this process, one run
each:

- difflens's ``trajectory_stats`` with every statistic it reports: the base-tuned distance
  per token index with prompt-resampling CIs (prompt and continuation segments), the jumps
  (each jump with its readable token, sentiment and step-relative size; mean per model and
  index), the tokens ranked by jump and by step-relative jump (top and bottom, CIs over
  occurrences), the jump-weighted sentiment, the jump-sentiment correlation and the
  unweighted mean sentiment per model, the models' mean-jump difference per index (paired,
  with the overall difference), and the direction of movement (the turn angle per model, the
  base-tuned move cosine per segment kind, per index and overall);
- the same statistics written path by path in plain Python, as a first script would:
  angles with ``math.acos``, each resample pooling its prompts' values per index (the
  sentiment statistics adding up per-prompt sums), each CI from the same resamples as
  difflens (numpy's generator with the same seed, drawn one resample at a time) and
  quantiles interpolated by hand. Every output must agree with ``trajectory_stats``'s
  (floats within a relative 1e-9, absolute 1e-12; everything else equal), or the benchmark
  fails;
- ``SphereProjection(method="umap")`` fitted on 100,000 points of 64 dimensions (skipped
  with ``--quick``).

Last line: ``stats_speedup=<loop / trajectory_stats> loop_s=<x> stats_s=<y>
umap_100k_s=<z>`` (``nan`` with ``--quick``).
"""

import argparse
import math
import numbers
import time
from collections.abc import Iterator
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.sphere import SphereProjection
from difflens.analysis.trajectories import TrajectoryStats, trajectory_stats
from difflens.inputs.trajectory_files import check_table
from difflens.models.labellers import sentiment

MODELS = ("base", "tuned")
Vec = tuple[float, float, float]
Path = list[tuple[int, Vec, str]]  # (step, point, token) in step order
PerPrompt = dict[Any, dict[int, list[float]]]  # prompt -> index -> values


def table(n_prompts: int = 1000, steps: int = 40, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    segs = ["prompt"] + [f"continuation:{i}" for i in range(5)]
    keys = [(p, m, s) for p in range(n_prompts) for m in MODELS for s in segs]
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


# -- the per-path loop -----------------------------------------------------------------------


def cosine(a: Vec, b: Vec) -> float:
    dot = a[0] * b[0] + a[1] * b[1] + a[2] * b[2]
    return dot / math.sqrt((a[0] ** 2 + a[1] ** 2 + a[2] ** 2) * (b[0] ** 2 + b[1] ** 2
                                                                  + b[2] ** 2))


def angle(a: Vec, b: Vec) -> float:
    return math.acos(max(-1.0, min(1.0, cosine(a, b))))


def is_zero(v: Vec) -> bool:
    return v[0] == 0.0 and v[1] == 0.0 and v[2] == 0.0


def draws(n: int, n_boot: int, seed: int) -> Iterator[list[int]]:
    """The resamples difflens draws (numpy's generator, same seed), one at a time."""
    rng = np.random.default_rng(seed)
    for _ in range(n_boot):
        yield rng.integers(0, n, n).tolist()


def ci(reps: list[float]) -> tuple[float, float]:
    """The 2.5% and 97.5% quantiles, interpolated linearly (NaN without replicates)."""
    xs = sorted(reps)
    if not xs:
        return math.nan, math.nan
    out = []
    for q in (0.025, 0.975):
        h = (len(xs) - 1) * q
        lo = math.floor(h)
        hi = min(lo + 1, len(xs) - 1)
        out.append(xs[lo] + (h - lo) * (xs[hi] - xs[lo]))
    return out[0], out[1]


def estimate(value: float, reps: list[float], n: int, resampled: str = "prompts"
             ) -> dict[str, Any]:
    lo, hi = ci(reps)
    return {"value": value, "ci_low": lo, "ci_high": hi, "n": n, "resampled": resampled}


def mean(xs: list[float]) -> float:
    return sum(xs) / len(xs)


def read_paths(df: pd.DataFrame) -> dict[tuple[Any, str, str], Path]:
    paths: dict[tuple[Any, str, str], Path] = {}
    for row in df.itertuples(index=False):
        paths.setdefault((row.prompt_id, row.model, row.segment), []).append(
            (row.step, (row.x, row.y, row.z), row.token))
    return paths


def index_means(values: PerPrompt, n_boot: int, seed: int
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Mean per index and over all indices, each resample pooling its prompts' values."""
    ids = list(values)
    steps = sorted({t for per in values.values() for t in per})
    boots: dict[int, list[float]] = {t: [] for t in steps}
    pooled = []
    for sample in draws(len(ids), n_boot, seed):
        total, count = 0.0, 0
        for t in steps:
            vals = [v for i in sample for v in values[ids[i]].get(t, [])]
            if vals:
                s = sum(vals)
                boots[t].append(s / len(vals))
                total, count = total + s, count + len(vals)
        if count:
            pooled.append(total / count)
    rows, every = [], []
    for t in steps:
        vals = [v for p in ids for v in values[p].get(t, [])]
        rows.append(estimate(mean(vals), boots[t], len(vals)) | {"index": t})
        every += vals
    return rows, estimate(mean(every), pooled, len(every))


def distances(paths: dict[tuple[Any, str, str], Path], n_boot: int, seed: int
              ) -> dict[str, list[dict[str, Any]]]:
    """Base-tuned distance per index: prompt segments, continuations."""
    per: dict[str, PerPrompt] = {"prompt": {}, "continuation": {}}
    for (p, m, s), path in paths.items():
        if m != "base":
            continue
        kind = "prompt" if s == "prompt" else "continuation"
        for (t, a, _), (_, b, _) in zip(path, paths[(p, "tuned", s)], strict=True):
            per[kind].setdefault(p, {}).setdefault(t, []).append(angle(a, b))
    return {kind: index_means(v, n_boot, seed)[0] for kind, v in per.items()}


def jump_rows(paths: dict[tuple[Any, str, str], Path]) -> list[list[Any]]:
    """One row per jump: prompt, model, segment, step, readable token, token, jump,
    sentiment, jump relative to the mean jump at that step (prompts, continuations)."""
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    from difflens.analysis.trajectory_table import readable_token

    sia = SentimentIntensityAnalyzer()
    scores: dict[str, tuple[str, float]] = {}
    rows = []
    step_sum: dict[tuple[bool, int], list[float]] = {}
    for (p, m, s), path in paths.items():
        for (_, a, _), (t, b, tok) in zip(path[:-1], path[1:], strict=True):
            if tok not in scores:
                word = readable_token(tok).strip()
                scores[tok] = (readable_token(tok),
                               sia.polarity_scores(word)["compound"] if word else 0.0)
            j = angle(a, b)
            rows.append([p, m, s, t, scores[tok][0], tok, j, scores[tok][1]])
            acc = step_sum.setdefault((s == "prompt", t), [0.0, 0])
            acc[0] += j
            acc[1] += 1
    for r in rows:
        total, count = step_sum[(r[2] == "prompt", r[3])]
        r.append(r[6] / (total / count))
    return rows


def jumps_by_index(jumps: list[list[Any]]) -> dict[str, list[dict[str, Any]]]:
    per: dict[str, dict[int, list[float]]] = {m: {} for m in MODELS}
    for r in jumps:
        per[r[1]].setdefault(r[3], []).append(r[6])
    return {m: [{"index": t, "mean": mean(v), "n": len(v)} for t, v in sorted(d.items())]
            for m, d in per.items()}


def rank(jumps: list[list[Any]], col: int, min_count: int, top_k: int, n_boot: int,
         seed: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Tokens with the largest and smallest mean of column ``col``, CIs over occurrences."""
    by_token: dict[str, list[float]] = {}
    shown: dict[str, str] = {}
    for r in jumps:
        by_token.setdefault(r[5], []).append(r[col])
        shown[r[5]] = r[4]
    ranked = sorted(((mean(v), t) for t, v in by_token.items() if len(v) >= min_count),
                    reverse=True)
    rng = np.random.default_rng(seed)

    def rows(tokens: list[str]) -> list[dict[str, Any]]:
        out = []
        for t in tokens:
            x = by_token[t]
            reps = [sum(x[i] for i in rng.integers(0, len(x), len(x)).tolist()) / len(x)
                    for _ in range(n_boot)]
            out.append(estimate(mean(x), reps, len(x), "occurrences")
                       | {"token": shown[t], "token_raw": t, "text": shown[t]})
        return out

    return rows([t for _, t in ranked[:top_k]]), rows([t for _, t in ranked[::-1][:top_k]])


def pearson(s: list[float]) -> float:
    """r from the sums [xy, x, y, xx, yy, n]."""
    n = s[5]
    cov = s[0] / n - (s[1] / n) * (s[2] / n)
    var = (s[3] / n - (s[1] / n) ** 2) * (s[4] / n - (s[2] / n) ** 2)
    return cov / math.sqrt(var) if var > 0 else math.nan


def sentiments(jumps: list[list[Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Jump-weighted sentiment, jump-sentiment correlation and mean sentiment per model,
    each resample adding up its prompts' sums."""
    out: dict[str, Any] = {"jump_weighted": {}, "correlation": {}, "mean_unweighted": {}}
    for m in MODELS:
        sums: dict[Any, list[float]] = {}
        for r in jumps:
            if r[1] == m:
                acc = sums.setdefault(r[0], [0.0] * 6)
                x, y = r[6], r[7]
                for k, v in enumerate((x * y, x, y, x * x, y * y, 1.0)):
                    acc[k] += v
        ids = list(sums)
        total = [float(sum(col)) for col in zip(*sums.values(), strict=True)]
        weighted, corr = [], []
        for sample in draws(len(ids), n_boot, seed):
            s = [0.0] * 6
            for i in sample:
                for k, v in enumerate(sums[ids[i]]):
                    s[k] += v
            weighted.append(s[0] / s[1])
            if not math.isnan(rho := pearson(s)):
                corr.append(rho)
        n = int(total[5])
        out["jump_weighted"][m] = estimate(total[0] / total[1], weighted, n)
        out["correlation"][m] = estimate(pearson(total), corr, n)
        out["mean_unweighted"][m] = {"mean": total[2] / total[5], "n": n}
    return out


def jump_difference(jumps: list[list[Any]], n_boot: int, seed: int) -> dict[str, Any]:
    """Tuned minus base mean jump per index over the prompts where both jump there; each
    resample pools its prompts' jumps."""
    per: dict[Any, dict[int, tuple[list[float], list[float]]]] = {}
    for r in jumps:
        per.setdefault(r[0], {}).setdefault(r[3], ([], []))[r[1] == "tuned"].append(r[6])
    ids = list(per)
    both = {p: {t: bt for t, bt in d.items() if bt[0] and bt[1]} for p, d in per.items()}
    steps = sorted({t for d in both.values() for t in d})

    def pooled(sample: list[Any], t: int) -> tuple[list[float], list[float]]:
        return ([v for p in sample for v in both[p].get(t, ([], []))[0]],
                [v for p in sample for v in both[p].get(t, ([], []))[1]])

    n = {t: sum(t in both[p] for p in ids) for t in steps}
    everyone = {t: pooled(ids, t) for t in steps}
    boots: dict[int, list[float]] = {t: [] for t in steps}
    overall = []
    for sample in draws(len(ids), n_boot, seed):
        drawn = [ids[i] for i in sample]
        num = den = 0.0
        for t in steps:
            b, u = pooled(drawn, t)
            if b:
                boots[t].append(mean(u) - mean(b))
                num, den = num + (mean(u) - mean(b)) * n[t], den + n[t]
        if den:
            overall.append(num / den)
    rows = [estimate(mean(u) - mean(b), boots[t], n[t])
            | {"index": t, "base": mean(b), "tuned": mean(u), "n_jumps_base": len(b),
               "n_jumps_tuned": len(u)}
            for t, (b, u) in everyone.items()]
    weight = sum(n.values())
    return {"models": list(MODELS), "paired": True, "n_prompts": len(ids), "by_index": rows,
            "overall": estimate(sum((mean(u) - mean(b)) * n[t]
                                    for t, (b, u) in everyone.items()) / weight,
                                overall, weight)}


def direction(paths: dict[tuple[Any, str, str], Path], n_boot: int, seed: int
              ) -> dict[str, Any]:
    """Turn between consecutive moves per model; cosine of the base and tuned moves."""
    moves: dict[tuple[Any, str, str], list[tuple[int, Vec]]] = {}
    for key, path in paths.items():
        moves[key] = [(t, (b[0] - a[0], b[1] - a[1], b[2] - a[2]))
                      for (_, a, _), (t, b, _) in zip(path[:-1], path[1:], strict=True)]
    turns: dict[str, PerPrompt] = {m: {} for m in MODELS}
    for (p, m, _), mv in moves.items():
        for (_, u), (t, v) in zip(mv[:-1], mv[1:], strict=True):
            if not (is_zero(u) or is_zero(v)):
                turns[m].setdefault(p, {}).setdefault(t, []).append(angle(u, v))
    cosines: dict[str, PerPrompt] = {"prompt": {}, "continuation": {}}
    for (p, m, s), mv in moves.items():
        if m != "base":
            continue
        kind = "prompt" if s == "prompt" else "continuation"
        for (t, u), (_, v) in zip(mv, moves[(p, "tuned", s)], strict=True):
            if not (is_zero(u) or is_zero(v)):
                cosines[kind].setdefault(p, {}).setdefault(t, []).append(cosine(u, v))
    out: dict[str, Any] = {"turn_angle": {}, "move_cosine": {}}
    for name, per in (("turn_angle", turns), ("move_cosine", cosines)):
        for label, values in per.items():
            rows, overall = index_means(values, n_boot, seed)
            out[name][label] = {"by_index": rows, "overall": overall}
    return out


def loop_stats(df: pd.DataFrame, n_boot: int = 500, seed: int = 0, min_count: int = 20,
               top_k: int = 15) -> dict[str, Any]:
    """Every output of ``trajectory_stats`` on the benchmark table (two models, every
    segment ranked), written path by path in plain Python; keyed by its fields."""
    paths = read_paths(df)
    jumps = jump_rows(paths)
    top, bottom = rank(jumps, 6, min_count, top_k, n_boot, seed)
    top_a, bottom_a = rank(jumps, 8, min_count, top_k, n_boot, seed)
    return {"distance_by_index": distances(paths, n_boot, seed),
            "jumps_by_index": jumps_by_index(jumps), "top_tokens": top, "bottom_tokens": bottom,
            "top_tokens_adjusted": top_a, "bottom_tokens_adjusted": bottom_a,
            "sentiment": sentiments(jumps, n_boot, seed), "jumps": jumps,
            "jump_difference": jump_difference(jumps, n_boot, seed),
            "direction": direction(paths, n_boot, seed), "distance_pairs": {}}


# -- agreement -------------------------------------------------------------------------------


def agree(ref: Any, got: Any, where: str, worst: list[float]) -> None:
    """Assert ``got`` equals ``ref`` (floats within a relative 1e-9, absolute 1e-12);
    ``worst`` keeps the largest relative float difference."""
    if isinstance(ref, dict):
        assert isinstance(got, dict) and list(got) == list(ref), (where, list(ref), got)
        for k in ref:
            agree(ref[k], got[k], f"{where}[{k!r}]", worst)
    elif isinstance(ref, list | tuple):
        assert isinstance(got, list | tuple) and len(got) == len(ref), (where, len(ref))
        for i, (a, b) in enumerate(zip(ref, got, strict=True)):
            agree(a, b, f"{where}[{i}]", worst)
    elif isinstance(ref, float) or isinstance(got, float):
        a, b = float(ref), float(got)
        assert math.isnan(a) == math.isnan(b), (where, a, b)
        if not math.isnan(a):
            assert math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12), (where, a, b)
            worst[0] = max(worst[0], abs(a - b) / max(abs(a), abs(b), 1e-300))
    else:
        assert ref == got and isinstance(got, numbers.Number | str) == isinstance(
            ref, numbers.Number | str), (where, ref, got)


def check(ref: dict[str, Any], st: TrajectoryStats) -> float:
    """Assert every output of ``trajectory_stats`` agrees with the loop's; the largest
    relative float difference."""
    worst = [0.0]
    assert list(ref) == [f for f in TrajectoryStats.__dataclass_fields__], list(ref)
    for name, value in ref.items():
        got = getattr(st, name)
        if name == "jumps":
            assert list(got.columns) == ["prompt_id", "model", "segment", "step", "token",
                                         "token_raw", "jump", "sentiment", "jump_rel"]
            got = list(got.itertuples(index=False, name=None))
        agree(value, got, name, worst)
    return worst[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="skip the UMAP fit")
    args = ap.parse_args()
    df = check_table(table())
    print(f"table: {len(df):,} points, {df.prompt_id.nunique()} prompts")
    t0 = time.perf_counter()
    ref = loop_stats(df)
    loop_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    st = trajectory_stats(df, min_count=20, score_words=sentiment)
    vec_s = time.perf_counter() - t0
    worst = check(ref, st)
    print(f"per-path loop, same statistics (500 prompt resamples): {loop_s:.2f} s")
    print(f"trajectory_stats: {vec_s:.3f} s")
    print(f"agreement: every output, largest relative float difference {worst:.1e}")
    umap_s = math.nan
    if not args.quick:
        rng = np.random.default_rng(0)
        x = (rng.normal(size=(100_000, 64)) + 3 * rng.normal(size=(20, 64))[
            rng.integers(0, 20, 100_000)]).astype(np.float32)
        SphereProjection(method="umap").fit(x[:2000])  # numba compilation, not timed
        t0 = time.perf_counter()
        SphereProjection(method="umap", random_state=0).fit(x)
        umap_s = time.perf_counter() - t0
        print(f"UMAP (haversine) fit on 100,000 x 64 points: {umap_s:.1f} s")
    print(f"stats_speedup={loop_s / vec_s:.1f} loop_s={loop_s:.2f} stats_s={vec_s:.3f} "
          f"umap_100k_s={umap_s:.1f}")


if __name__ == "__main__":
    main()
