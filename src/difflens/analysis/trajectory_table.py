"""The trajectory table: its layout, the paths in it, and the rows two models share.

A **trajectory table** has one row per point of a path, with the columns ``prompt_id,
model, segment, step, token, x, y, z`` (``segment`` is ``"prompt"`` or
``"continuation:i"``); the rows of a path are consecutive and in step order
(``check_table`` sorts them). The points may be the
table's sphere coordinates or any other point per row (the full-dimension cumulative means).

Jump convention: the jump at step ``t`` is the geodesic from ``Y_{t-1}`` to ``Y_t``, the move
caused by adding token ``t``; it is attributed to token ``t`` (the token *after which* the
path stands at its new point).
"""

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import pandas as pd

from difflens.analysis.sphere import geodesic
from difflens.inputs.tokens import format_token


def point_columns(df: pd.DataFrame) -> list[str]:
    """The table's point columns: ``x, y, z`` (and ``w`` on the 3-sphere)."""
    return ["x", "y", "z"] + (["w"] if "w" in df.columns else [])


def same_path_as_previous(df: pd.DataFrame) -> np.ndarray:
    """True where a row continues the path of the row before it (rows of a path are
    consecutive, as ``check_table`` sorts them)."""
    same = np.r_[False, np.ones(len(df) - 1, dtype=bool)] if len(df) else np.zeros(0, bool)
    for col in ("prompt_id", "model", "segment"):
        v = pd.factorize(df[col])[0]
        same[1:] &= v[1:] == v[:-1]
    return same


def path_jumps(df: pd.DataFrame, points: np.ndarray) -> np.ndarray:
    """Jump into each row's point from the previous step of the same path (NaN at step 0)."""
    same = same_path_as_previous(df)
    out = np.full(len(df), np.nan)
    out[1:][same[1:]] = geodesic(points[1:][same[1:]], points[:-1][same[1:]])
    return out


def paired_rows(df: pd.DataFrame, models: tuple[str, str], kind: str
                ) -> tuple[np.ndarray, np.ndarray]:
    """Row numbers of the two models' points at the same prompt, segment and step.

    Args:
        df: a trajectory table with a default index.
        models: the two labels (base first); one label twice gives no pairs.
        kind: ``prompt`` (prompt segments) or ``continuation`` (all continuations).

    Returns:
        ``(rows of models[0], rows of models[1])``, aligned.
    """
    none = (np.zeros(0, np.int64), np.zeros(0, np.int64))
    if models[0] == models[1]:  # one model: there is no second path to compare with
        return none
    is_prompt = (df["segment"] == "prompt").to_numpy()
    sub = df[is_prompt if kind == "prompt" else ~is_prompt]
    if sub.empty:
        return none
    rows = sub.index.to_numpy()
    pc, sc = pd.factorize(sub.prompt_id)[0], pd.factorize(sub.segment)[0]
    step = sub.step.to_numpy().astype(np.int64)
    key = (pc.astype(np.int64) * (sc.max() + 1) + sc) * (step.max() + 1) + step
    cell = pd.factorize(key)[0]
    ia = np.full(cell.max() + 1, -1)
    ib = np.full(cell.max() + 1, -1)
    for i, m in ((ia, models[0]), (ib, models[1])):
        own = (sub.model == m).to_numpy()  # not the labels as objects: slow on string columns
        i[cell[own]] = rows[own]
    both = (ia >= 0) & (ib >= 0)
    return ia[both], ib[both]


def lineage_pairs(names: Sequence[str]) -> list[tuple[str, str]]:
    """Every unordered pair of a lineage, the earlier model first, in lineage order:
    ``(n0, n1), (n0, n2), ..., (n1, n2), ...``."""
    return [(a, names[j]) for i, a in enumerate(names) for j in range(i + 1, len(names))]


def display_token(token: str) -> str:
    """A token as readable text: ``difflens.inputs.tokens.format_token``."""
    return format_token(token)


def _map_distinct(s: pd.Series, fn: Callable[[Any], Any]) -> pd.Series:
    """``s.map(fn)`` (the same values and dtype), calling ``fn`` once per distinct value: a
    table repeats a vocabulary of a few thousand tokens over millions of rows."""
    codes, uniques = pd.factorize(s, use_na_sentinel=False)
    mapped = pd.Series(uniques, dtype=s.dtype).map(fn)
    return pd.Series(mapped.array.take(codes), index=s.index, name=s.name)


def readable_tokens(df: pd.DataFrame) -> pd.DataFrame:
    """The table with ``token`` as readable text and the tokenizer's string in
    ``token_raw`` (kept when the table already has it)."""
    if "token" not in df.columns:
        return df
    raw = df["token_raw"] if "token_raw" in df.columns else df["token"]
    out = df.assign(token=_map_distinct(raw, lambda t: display_token(t)
                                        if isinstance(t, str) else None))
    if "token_raw" not in out.columns:
        out.insert(int(out.columns.get_loc("token")) + 1, "token_raw", raw)
    return out


def readable_token(token: str) -> str:
    """A token string (``Ġ`` = space, ``Ċ`` = newline, ``▁``, ``<0x0A>``) as text:
    ``difflens.inputs.tokens.format_token``."""
    return format_token(token)
