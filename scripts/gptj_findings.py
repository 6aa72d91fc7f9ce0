"""Checks of the published GPT-J vs PPO-GPT-J sphere trajectories that go beyond `trajectories
import`: is the projection shared across prompts, do prompt traces behave like cumulative means,
how far apart are one model's own continuations, and how many continuations repeat
continuation 0's tokens. Reads the table that `difflens trajectories import` wrote and the
original JSONL; writes OUT/summary.json (every mean with n and a 95% bootstrap CI over prompts).

    difflens trajectories import FILE --rank-segments continuation --out gptj
    python scripts/gptj_findings.py gptj FILE --out gptj-findings
"""

from __future__ import annotations

import argparse
import gzip
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import write_json_atomic
from difflens.analysis.bootstrap import mean_ci


def _geodesic(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Great-circle distance between rows of unit vectors."""
    return np.arccos(np.clip((a * b).sum(axis=-1), -1.0, 1.0))


def same_token_spread(table: pd.DataFrame, token: str, *, seed: int = 0, n_pairs: int = 20000
                      ) -> dict[str, Any]:
    """Mean pairwise sphere distance of step-0 prompt points that hold the same first token.
    One shared projection maps one vector to one point, so this would be 0."""
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {"token": token}
    first = table[(table.segment == "prompt") & (table.step == 0)]
    for model, rows in first.groupby("model"):
        pts = rows[rows.token == token][["x", "y", "z"]].to_numpy()
        i, j = rng.integers(0, len(pts), size=(2, n_pairs))
        keep = i != j
        out[str(model)] = {**mean_ci(_geodesic(pts[i[keep]], pts[j[keep]]), seed=seed),
                           "n_prompts": len(pts)}
    every = table[["x", "y", "z"]].to_numpy()
    i, j = rng.integers(0, len(every), size=(2, n_pairs))
    out["random_pairs"] = mean_ci(_geodesic(every[i], every[j]), seed=seed)
    return out


def jumps_by_step(table: pd.DataFrame, steps: list[int], *, seed: int = 0) -> dict[str, Any]:
    """Mean jump (geodesic from step t-1 to t) per segment kind and step, averaged per prompt
    first so the CI is over prompts."""
    t = table.sort_values(["prompt_id", "model", "segment", "step"])
    xyz = t[["x", "y", "z"]].to_numpy()
    same = ((t.prompt_id.to_numpy()[1:] == t.prompt_id.to_numpy()[:-1])
            & (t.model.to_numpy()[1:] == t.model.to_numpy()[:-1])
            & (t.segment.to_numpy()[1:] == t.segment.to_numpy()[:-1]))
    jumps = pd.DataFrame({"prompt_id": t.prompt_id.to_numpy()[1:][same],
                          "kind": np.where(t.segment.to_numpy()[1:][same] == "prompt",
                                           "prompt", "continuation"),
                          "step": t.step.to_numpy()[1:][same],
                          "jump": _geodesic(xyz[1:][same], xyz[:-1][same])})
    out: dict[str, Any] = {}
    for kind, rows in jumps.groupby("kind"):
        per_prompt = rows.groupby(["step", "prompt_id"]).jump.mean()
        out[str(kind)] = [{"step": int(s), **mean_ci(per_prompt.loc[s].to_numpy(), seed=seed)}
                          for s in steps if s in per_prompt.index.get_level_values(0)]
    return out


def own_spread(table: pd.DataFrame, *, seed: int = 0) -> dict[str, Any]:
    """Per prompt, the mean distance between continuation 0 and continuations 1-4 of the same
    model at the same step; then the mean over prompts."""
    cont = table[table.segment.str.startswith("continuation:")]
    zero = cont[cont.segment == "continuation:0"]
    other = cont[cont.segment != "continuation:0"]
    both = other.merge(zero, on=["prompt_id", "model", "step"], suffixes=("", "_0"))
    both["dist"] = _geodesic(both[["x", "y", "z"]].to_numpy(),
                             both[["x_0", "y_0", "z_0"]].to_numpy())
    per_prompt = both.groupby(["model", "prompt_id"]).dist.mean()
    return {str(m): mean_ci(per_prompt.loc[m].to_numpy(), seed=seed)
            for m in per_prompt.index.get_level_values(0).unique()}


def verbatim_copies(source: Path) -> dict[str, int]:
    """How many continuations 1-4 carry continuation 0's tokens verbatim, in the original file."""
    n_other = n_copies = 0
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8") as fh:
        for line in fh:
            traces = {t["name"]: t.get("tokens") or [] for t in json.loads(line)["traces"]}
            for name, tokens in traces.items():
                if "Continuation" not in name or name.endswith(" 0"):
                    continue
                zero = traces.get(name.rsplit(" ", 1)[0] + " 0")
                n_other += 1
                n_copies += int(bool(tokens) and tokens == zero)
    return {"n_other_continuations": n_other, "n_verbatim_copies_of_0": n_copies}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("imported", type=Path, help="the OUT folder of `difflens trajectories import`")
    ap.add_argument("source", type=Path, help="the original trajectories JSONL(.gz)")
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)
    table = pd.read_parquet(args.imported / "data" / "trajectories.parquet")
    summary = {
        "same_first_token": same_token_spread(table, "I", seed=args.seed),
        "jumps_by_step": jumps_by_step(table, [1, 5, 10, 14, 19, 29], seed=args.seed),
        "own_spread": own_spread(table, seed=args.seed),
        **verbatim_copies(args.source),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(args.out / "summary.json", summary)
    print(json.dumps(summary, indent=1)[:3000])
    return 0


if __name__ == "__main__":
    sys.exit(main())
