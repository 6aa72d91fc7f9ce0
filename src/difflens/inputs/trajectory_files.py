"""Reading trajectory files into the trajectory table.

Three inputs are read (``.gz`` is fine for JSONL):

- the table itself, as ``.parquet`` or ``.csv`` (columns ``prompt_id, model, segment, step,
  token, x, y, z``);
- a JSONL of traces, one prompt a line: ``{sample_idx, title, traces: [{name, tokens,
  xyz}]}``, as in the published GPT-J vs PPO-GPT-J figures. Trace names map to a model and
  a segment through ``name_pattern`` (a regex with groups ``model`` and ``segment`` or
  ``cont``) and ``models`` (name in the file -> label). The defaults fit that file:
  ``"GPTJ Prompt"`` -> (base, prompt), ``"GPTJ-RLHF Continuation 3"`` -> (tuned,
  continuation:3).

Tokens are kept only where a trace has as many tokens as points, and only for the segments
in ``token_segments``; elsewhere ``token`` is empty, and the counts are reported rather than
the labels guessed. (In the published file only continuation 0's tokens match their
coordinates -- 2,169 of the 8,000 other continuations carry continuation 0's tokens
verbatim -- and 1,171 continuations have one token fewer than points: pairing them would
shift labels against coordinates, the original pipeline's bug.)
"""

import dataclasses
import gzip
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd

from difflens._io import jsonl_objects
from difflens.errors import InputError

DEFAULT_PATTERN = r"^(?P<model>.+?) (?:(?P<prompt>Prompt)|Continuation (?P<cont>\d+))$"
DEFAULT_MODELS = {"GPTJ": "base", "GPTJ-RLHF": "tuned"}
DEFAULT_TOKEN_SEGMENTS = ("prompt", "continuation:0")


@dataclasses.dataclass(frozen=True)
class ImportedTrajectories:
    table: pd.DataFrame
    titles: dict[str, str]
    """prompt_id -> title (the prompt text), when the file has one."""
    n_traces: int
    n_empty: int
    """Traces with no points (skipped)."""
    n_token_mismatch: int
    """Traces whose token count differs from their point count (tokens dropped)."""
    source: str


def _open_text(path: Path) -> list[str]:
    try:
        if path.suffix == ".gz":
            with gzip.open(path, "rt", encoding="utf-8") as f:
                return f.read().splitlines()
        return path.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"{path}: cannot be read as UTF-8 text ({exc})") from None


def read_trajectories(
    path: str | Path,
    *,
    name_pattern: str = DEFAULT_PATTERN,
    models: Mapping[str, str] | None = None,
    token_segments: Sequence[str] | None = DEFAULT_TOKEN_SEGMENTS,
    max_prompts: int | None = None,
) -> ImportedTrajectories:
    """Read a trajectory table (Parquet/CSV) or a JSONL of traces; see the module doc.

    Args:
        path: the file.
        name_pattern: regex for trace names, with groups ``model`` and ``prompt`` or ``cont``.
        models: trace model name -> label (default ``GPTJ=base, GPTJ-RLHF=tuned``; names not
            listed keep their own name).
        token_segments: segments whose tokens are trusted (None: all).
        max_prompts: read only the first N prompts.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"trajectory file {path} does not exist")
    name = path.name.lower()
    if name.endswith(".parquet"):
        df = pd.read_parquet(path)
        return _table(df, path, max_prompts)
    if name.endswith(".csv"):
        df = pd.read_csv(path, keep_default_na=False, na_values={"x": [""], "y": [""],
                                                                   "z": [""]})
        return _table(df, path, max_prompts)
    if not name.endswith((".jsonl", ".jsonl.gz", ".json", ".ndjson")):
        raise InputError(f"{path}: unknown trajectory file type; use .parquet, .csv or "
                         f".jsonl(.gz)")
    return _traces(path, re.compile(name_pattern), dict(models or DEFAULT_MODELS),
                   token_segments, max_prompts)


def _table(df: pd.DataFrame, path: Path, max_prompts: int | None) -> ImportedTrajectories:
    df = check_table(df, str(path))
    if "token" in df:
        df["token"] = df["token"].map(lambda t: t if isinstance(t, str) and t != "" else None)
    if max_prompts is not None:
        keep = list(dict.fromkeys(df.prompt_id))[:max_prompts]
        df = df[df.prompt_id.isin(keep)].reset_index(drop=True)
    n = df.groupby(["prompt_id", "model", "segment"]).ngroups
    return ImportedTrajectories(table=df, titles={}, n_traces=n, n_empty=0,
                                n_token_mismatch=0, source=str(path))


def _traces(path: Path, pattern: re.Pattern[str], models: dict[str, str],
            token_segments: Sequence[str] | None, max_prompts: int | None
            ) -> ImportedTrajectories:
    rows: dict[str, list] = {c: [] for c in ("prompt_id", "model", "segment", "step", "token",
                                              "x", "y", "z")}
    titles: dict[str, str] = {}
    n_traces = n_empty = n_mismatch = 0
    n_prompts = 0
    for where, obj in jsonl_objects(path, _open_text(path)):
        lineno = int(where.rsplit(":", 1)[1])
        if not isinstance(obj, dict) or not isinstance(obj.get("traces"), list):
            raise InputError(f"{where}: expected an object with a 'traces' list "
                             f"({{sample_idx, title, traces: [{{name, tokens, xyz}}]}})")
        pid = str(obj.get("sample_idx", lineno - 1))
        if isinstance(obj.get("title"), str):
            titles[pid] = obj["title"]
        for k, tr in enumerate(obj["traces"]):
            if not isinstance(tr, dict) or "name" not in tr or "xyz" not in tr:
                raise InputError(f"{where}: trace {k} needs 'name' and 'xyz'")
            m = pattern.match(str(tr["name"]))
            if m is None:
                raise InputError(f"{where}: trace name {tr['name']!r} does not match the name "
                                 f"pattern {pattern.pattern!r}; pass --name-pattern")
            model = models.get(m.group("model"), m.group("model"))
            groups = m.groupdict()
            segment = "prompt" if groups.get("prompt") else f"continuation:{groups.get('cont')}"
            xyz = tr["xyz"]
            n_traces += 1
            if not xyz:
                n_empty += 1
                continue
            for s, p in enumerate(xyz):
                if not isinstance(p, list) or len(p) != 3:
                    got = len(p) if isinstance(p, list) else type(p).__name__
                    raise InputError(f"{where}: trace {tr['name']!r} point {s} has {got} "
                                     f"coordinates, expected 3 (x, y, z)")
            tokens = tr.get("tokens") or []
            trusted = token_segments is None or segment in token_segments
            if len(tokens) != len(xyz):
                n_mismatch += 1
                trusted = False
            for s, p in enumerate(xyz):
                rows["prompt_id"].append(pid)
                rows["model"].append(model)
                rows["segment"].append(segment)
                rows["step"].append(s)
                rows["token"].append(tokens[s] if trusted else None)
                rows["x"].append(float(p[0]))
                rows["y"].append(float(p[1]))
                rows["z"].append(float(p[2]))
        n_prompts += 1
        if max_prompts is not None and n_prompts >= max_prompts:
            break
    if not rows["x"]:
        raise InputError(f"{path}: no trajectory points found")
    df = check_table(pd.DataFrame(rows), str(path))
    return ImportedTrajectories(table=df, titles=titles, n_traces=n_traces, n_empty=n_empty,
                                n_token_mismatch=n_mismatch, source=str(path))


TABLE_COLUMNS = ("prompt_id", "model", "segment", "step", "token", "x", "y", "z")


REQUIRED_COLUMNS = ("prompt_id", "model", "segment", "step", "x", "y", "z")


def check_table(df: pd.DataFrame, where: str = "trajectory table") -> pd.DataFrame:
    """Validate a trajectory table; returns it sorted by path and step."""
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise InputError(f"{where}: missing column {missing[0]!r}; a trajectory table has "
                         f"{', '.join(TABLE_COLUMNS)}")
    if "token" not in df.columns:
        df = df.assign(token=None)
    bad = df[["x", "y", "z"]].isna().any(axis=1)
    if bad.any():
        row = int(np.flatnonzero(bad.to_numpy())[0])
        raise InputError(f"{where}: row {row + 1} has an empty coordinate; every point needs "
                         f"x, y and z")
    models = set(df["model"].unique())
    if not models:
        raise InputError(f"{where}: no rows")
    df = df.sort_values(["prompt_id", "model", "segment", "step"], kind="stable")
    return df.reset_index(drop=True)
