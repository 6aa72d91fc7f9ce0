"""What the atlas and token-diff views draw, read from a run's Parquet tables by DuckDB.

The atlas puts every stored point of a trajectories run (``data/trajectories.parquet``:
points ``x, y, z`` on the unit sphere) on a 2-D map by longitude and latitude, with the
jumps and sentiment of ``data/jumps.parquet``, the text of each path and the columns of an
optional ``data/prompts.parquet`` (prompt metadata, keyed by ``prompt_id``) joined on. The
token diff reads ``data/divergence_tokens.parquet`` of a collapse divergence run. The
discover view reads a discover run's ``data/adl_patchscope``, ``adl_steering``,
``amplify_samples`` and ``mining_examples`` tables.
"""

import dataclasses
import functools
import json
import math
import re
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from difflens.analysis.discover import words_match
from difflens.errors import InputError
from difflens.explore.runs import Run, cell, connection, query, quote, read_summary, schema
from difflens.inputs.tokens import format_token

if TYPE_CHECKING:
    import pandas as pd

#: Columns the atlas needs in ``data/trajectories.parquet``.
ATLAS_REQUIRED = ("x", "y", "z", "token")
#: Columns never offered for colouring (the coordinates, the text, row references).
ATLAS_HIDDEN = ("x", "y", "z", "lon", "lat", "text", "token_raw", "state_ref")
#: Colour choices listed first when present.
ATLAS_FIRST = ("model", "step", "jump", "jump_rel", "sentiment", "prompt_id", "segment",
               "token")
#: Columns of ``data/divergence_tokens.parquet`` the token diff needs.
TOKEN_COLUMNS = ("text_id", "source", "t", "token", "base_entropy", "tuned_entropy",
                 "base_logprob", "tuned_logprob", "kl_tuned_base", "kl_base_tuned")
#: Per-token statistics the token diff colours by: name -> (base panel, tuned panel, label).
#: KL and the log-prob difference read from the panel's model: KL(model || other).
STATISTICS = {
    "kl": ("kl_base_tuned", "kl_tuned_base", "KL(model ‖ other), nats"),
    "entropy": ("base_entropy", "tuned_entropy", "entropy, nats"),
    "logprob": ("base_logprob", "tuned_logprob", "log-prob of the token"),
    "logprob_diff": ("base_minus_tuned", "tuned_minus_base", "log-prob minus the other's"),
}
def _stamp(*paths: Path | None) -> tuple[tuple[str, int, int], ...]:
    """What identifies the files' current content for the in-memory caches."""
    out = []
    for p in paths:
        if p is not None:
            st = p.stat()
            out.append((str(p), st.st_mtime_ns, st.st_size))
    return tuple(out)


def _require(path: Path, needed: tuple[str, ...], what: str) -> list[str]:
    names = [c for c, _ in schema(path)]
    missing = [c for c in needed if c not in names]
    if missing:
        raise InputError(f"{what} lacks the column(s) {', '.join(missing)}: it is not the "
                         f"table this view reads (has {', '.join(names)})")
    return names


# -- atlas ----------------------------------------------------------------------------------


def atlas_json(run: Run) -> bytes:
    """The atlas data of a trajectories run as JSON bytes (cached in memory per content).

    ``{"n", "lon", "lat", "columns": {name: {"kind": "num", "values"} | {"kind": "cat",
    "levels", "codes"}}, "colour_by": [...]}``: categorical columns are sent once per level.
    """
    files = _atlas_files(run)
    return _atlas_cached(*files, _stamp(*files))


def atlas_frame(run: Run) -> "pd.DataFrame":
    """Every point of a trajectories run with its joined columns (jumps, path text, prompt
    metadata) and its map position ``lon``, ``lat`` in degrees (cached per content)."""
    files = _atlas_files(run)
    return _frame_cached(*files, _stamp(*files))


def _atlas_files(run: Run) -> tuple[Path, Path | None, Path | None, Path | None]:
    """The trajectories table and the optional jumps, continuations and prompts tables."""
    traj = run.file("data/trajectories.parquet")
    if traj is None:
        raise InputError("no data/trajectories.parquet in this run: the atlas shows the --out "
                         "folder of `difflens trajectories run`")
    return (traj, run.file("data/jumps.parquet"), run.file("data/continuations.parquet"),
            run.file("data/prompts.parquet"))


@functools.lru_cache(maxsize=4)
def _atlas_cached(traj: Path, jumps: Path | None, conts: Path | None, prompts: Path | None,
                  stamp: tuple[tuple[str, int, int], ...]) -> bytes:
    df = _frame_cached(traj, jumps, conts, prompts, stamp)
    columns: dict[str, Any] = {}
    for name in df.columns:
        if name in ("x", "y", "z", "lon", "lat", "token_raw", "state_ref"):
            continue
        columns[name] = _column(df[name])
    colour_by = [c for c in ATLAS_FIRST if c in columns]
    colour_by += [c for c in columns if c not in colour_by and c not in ATLAS_HIDDEN]
    payload = {"n": len(df), "lon": _floats(df["lon"]), "lat": _floats(df["lat"]),
               "columns": columns, "colour_by": colour_by}
    return json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()


@functools.lru_cache(maxsize=4)
def _frame_cached(traj: Path, jumps: Path | None, conts: Path | None, prompts: Path | None,
                  stamp: tuple[tuple[str, int, int], ...]) -> "pd.DataFrame":
    import numpy as np
    import pandas as pd

    names = _require(traj, ATLAS_REQUIRED, "data/trajectories.parquet")
    keys = [k for k in ("prompt_id", "model", "segment", "step") if k in names]
    params: list[Any] = [str(traj)]
    select, joins = ["t.*"], []
    if jumps is not None and keys:
        jnames = [c for c, _ in schema(jumps)]
        extra = [c for c in ("jump", "jump_rel", "sentiment") if c in jnames and c not in names]
        if extra and all(k in jnames for k in keys):
            select += [f"j.{quote(c)}" for c in extra]
            on = " AND ".join(f"t.{quote(k)} = j.{quote(k)}" for k in keys)
            joins.append(f"LEFT JOIN read_parquet(?) j ON {on}")
            params.append(str(jumps))
    group = [k for k in ("prompt_id", "model", "segment") if k in names]
    if group:
        tok = "token_raw" if "token_raw" in names else "token"
        order = " ORDER BY step" if "step" in names else ""
        gcols = ", ".join(quote(g) for g in group)
        text = f"(SELECT {gcols}, string_agg({quote(tok)}, ''{order}) AS _joined " \
               f"FROM read_parquet(?) GROUP BY {gcols}) g"
        on = " AND ".join(f"t.{quote(k)} = g.{quote(k)}" for k in group)
        joins.append(f"LEFT JOIN {text} ON {on}")
        params.append(str(traj))
        cnames = [c for c, _ in schema(conts)] if conts is not None else []
        if conts is not None and "text" in cnames and all(k in cnames for k in group):
            on = " AND ".join(f"t.{quote(k)} = c.{quote(k)}" for k in group)
            joins.append(f"LEFT JOIN read_parquet(?) c ON {on}")
            params.append(str(conts))
            select.append("coalesce(c.text, g._joined) AS text")
        else:
            select.append("g._joined AS text")
    if prompts is not None and "prompt_id" in names:
        pcols = [c for c, _ in schema(prompts)]
        if "prompt_id" in pcols:
            taken = set(names) | {"jump", "jump_rel", "sentiment", "text"}
            select += [f"p.{quote(c)} AS {quote(c if c not in taken else 'prompt_' + c)}"
                       for c in pcols if c != "prompt_id"]
            joins.append("LEFT JOIN read_parquet(?) p ON t.prompt_id = p.prompt_id")
            params.append(str(prompts))
    sql = f"SELECT {', '.join(select)} FROM read_parquet(?) t {' '.join(joins)}"
    if keys:
        sql += " ORDER BY " + ", ".join(f"t.{quote(k)}" for k in keys)
    try:
        with connection() as con:
            df: pd.DataFrame = con.execute(sql, params).df()
    except Exception as exc:  # duckdb.Error, kept one line
        raise InputError(f"cannot read the trajectories: {str(exc).splitlines()[0]}") from None
    if "text" in df:
        df["text"] = _formatted(df["text"], "")
    df["token"] = _formatted(df["token"])
    xyz = df[["x", "y", "z"]].to_numpy(dtype=float)
    norm = np.linalg.norm(xyz, axis=1)
    norm[norm == 0] = 1.0
    df["lon"] = np.degrees(np.arctan2(xyz[:, 1], xyz[:, 0]))
    df["lat"] = np.degrees(np.arcsin(np.clip(xyz[:, 2] / norm, -1.0, 1.0)))
    return df


def _formatted(series: "pd.Series", missing: Any = None) -> "pd.Series":
    """Each string of ``series`` as ``format_token`` shows it
    (formatted once per distinct value); anything else becomes ``missing``."""
    shown = {v: format_token(v) for v in set(series) if isinstance(v, str)}
    return series.map(lambda v: shown[v] if isinstance(v, str) else missing)


def path_points(run: Run, prompt_id: str, model: str) -> list[dict[str, Any]]:
    """Every point of one prompt's paths for one model (its prompt and each continuation),
    in step order: ``{segment, step, token, x, y, z}`` on the unit sphere."""
    traj, *_ = _atlas_files(run)
    names = _require(traj, ATLAS_REQUIRED + ("prompt_id", "model"), "data/trajectories.parquet")
    seg = "segment" if "segment" in names else "''"
    step = "step" if "step" in names else "0"
    rows = query(f"SELECT {seg}, {step}, token, x, y, z FROM read_parquet(?) "
                 f"WHERE CAST(prompt_id AS VARCHAR) = ? AND CAST(model AS VARCHAR) = ? "
                 f"ORDER BY {seg}, {step}", [str(traj), str(prompt_id), str(model)])
    if not rows:
        raise InputError(f"no points of prompt {prompt_id!r} and model {model!r} in "
                         f"data/trajectories.parquet; pick a point on the map")
    return [{"segment": str(r[0]), "step": cell(r[1]), "token": format_token(str(r[2])),
             "x": cell(r[3]), "y": cell(r[4]), "z": cell(r[5])} for r in rows]


def _floats(values: Any) -> list[float | None]:
    import numpy as np

    arr = np.round(np.asarray(values, dtype=float), 5)
    return [None if not np.isfinite(v) else float(v) for v in arr.tolist()]


def _column(series: Any) -> dict[str, Any]:
    import pandas as pd

    if pd.api.types.is_bool_dtype(series):
        series = series.astype(float)
    if pd.api.types.is_numeric_dtype(series):
        values = series.to_numpy(dtype=float, na_value=float("nan"))
        return {"kind": "num", "values": _floats(values)}
    codes, levels = pd.factorize(series.map(lambda v: None if v is None else str(v)), sort=True)
    return {"kind": "cat", "levels": [str(v) for v in levels], "codes": codes.tolist()}


# -- token diff -----------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class TextInfo:
    """One text of a divergence run, for the text picker."""

    text_id: int
    source: str
    n_tokens: int
    max_kl: float
    preview: str


def _tokens_path(run: Run) -> Path:
    path = run.file("data/divergence_tokens.parquet")
    if path is None:
        raise InputError("no data/divergence_tokens.parquet in this run: the token diff shows "
                         "the --out folder of `difflens collapse divergence`")
    _require(path, TOKEN_COLUMNS, "data/divergence_tokens.parquet")
    return path


def texts(run: Run) -> list[TextInfo]:
    """The texts of a divergence run, by id, with their largest KL(tuned || base)."""
    path = _tokens_path(run)
    rows = query("SELECT text_id, any_value(source), count(*), max(kl_tuned_base), "
                 "string_agg(token, '' ORDER BY t) FROM read_parquet(?) GROUP BY text_id "
                 "ORDER BY text_id", [str(path)])
    out = []
    for tid, source, n, kl, joined in rows:
        preview = format_token(joined or "").strip()
        out.append(TextInfo(int(tid), str(source), int(n), float(kl if kl is not None
                                                                   else "nan"),
                            preview[:80] + ("…" if len(preview) > 80 else "")))
    return out


def text_tokens(run: Run, text_id: int) -> list[dict[str, Any]]:
    """The tokens of one text in order, each with every statistic the view colours by."""
    path = _tokens_path(run)
    names = [c for c, _ in schema(path)]
    extra = [c for c in ("top1_agree", "context") if c in names]
    cols = ["t", "token", "source", "base_entropy", "tuned_entropy", "base_logprob",
            "tuned_logprob", "kl_tuned_base", "kl_base_tuned", *extra]
    rows = query(f"SELECT {', '.join(quote(c) for c in cols)} FROM read_parquet(?) "
                 f"WHERE text_id = ? ORDER BY t", [str(path), int(text_id)])
    if not rows:
        raise InputError(f"no text {text_id} in data/divergence_tokens.parquet; pick one of "
                         f"the listed texts")
    out = []
    for r in rows:
        d = {c: cell(v) for c, v in zip(cols, r, strict=True)}
        d["text"] = format_token(str(r[1]))
        b, t = r[5], r[6]
        if b is not None and t is not None:
            d["tuned_minus_base"] = cell(float(t) - float(b))
            d["base_minus_tuned"] = cell(float(b) - float(t))
        out.append(d)
    return out


# -- discover -------------------------------------------------------------------------------

#: Most rows (words) of the Patchscope grid.
MAX_GRID_WORDS = 40
#: Most samples the amplification view shows at one alpha.
MAX_SAMPLES = 200
#: Most texts the word view lists.
MAX_WORD_TEXTS = 12
#: Columns of ``data/adl_steering.parquet`` the steering table shows (the last two when
#: present).
STEERING_COLUMNS = ("model", "opening", "strength", "coherent", "steered", "unsteered",
                    "random")
STEERING_EXTRA = ("steered_ppl_base", "unsteered_ppl_base")
#: Columns of ``data/mining_examples.parquet`` the word view needs.
EXAMPLE_COLUMNS = ("direction", "word", "text", "position", "diff", "content")
#: A word of a text: ``difflens.analysis.discover``'s rule, on lower-cased text.
_WORD = re.compile(r"[a-z][a-z'\-]*[a-z]|[a-z]{2,}")

#: A text cut into pieces, each ``[text, marked]``.
Pieces = list[list[Any]]


def discover_of(run: Run) -> dict[str, Any]:
    """The ``discover`` object of a discover run's summary (an ``InputError`` for any other
    run)."""
    summary = read_summary(run)
    found = summary.data.get("discover") if summary.data is not None else None
    if not isinstance(found, dict):
        raise InputError(summary.error or "this run's summary has no discover results: the "
                         "discover view shows the --out folder of `difflens discover`")
    return found


def word_marks(text: str, words: Sequence[str]) -> Pieces:
    """``text`` in pieces, the words that match one of ``words`` marked (the rule of
    ``difflens.analysis.discover.hypothesis_rate``: equal, a plural, or a sub-word piece of
    four letters or more that starts the other)."""
    lower = text.lower()
    found = (_WORD.finditer(lower) if len(lower) == len(text)
             else re.finditer(_WORD.pattern, text, re.IGNORECASE))
    out: Pieces = []
    at = 0
    for m in found:
        w = m.group(0).lower()
        if any(words_match(w, h) or words_match(h, w) for h in words):
            if m.start() > at:
                out.append([text[at:m.start()], False])
            out.append([text[m.start():m.end()], True])
            at = m.end()
    if at < len(text) or not out:
        out.append([text[at:], False])
    return out


@dataclasses.dataclass(frozen=True)
class PatchscopeGrid:
    """The Patchscope's words by scale: ``probability[i][j]`` of ``words[i]`` at
    ``scales[j]`` (``None``: not in that scale's agreed top k)."""

    scales: list[float]
    chosen: float | None
    words: list[str]
    probability: list[list[float | None]]
    left_out: int
    """Words beyond ``MAX_GRID_WORDS``, and tokens that spell no word."""


def patchscope_grid(run: Run) -> PatchscopeGrid | None:
    """``data/adl_patchscope.parquet`` as a words x scales grid (a word's largest
    probability over the tokens that spell it), the chosen scale's words first in its
    order, then the others by their largest probability; ``None`` without the table."""
    path = run.file("data/adl_patchscope.parquet")
    if path is None:
        return None
    _require(path, ("scale", "rank", "word", "probability", "chosen"),
             "data/adl_patchscope.parquet")
    scales = [float(r[0]) for r in query("SELECT DISTINCT scale FROM read_parquet(?) "
                                         "ORDER BY scale", [str(path)])]
    chosen = query("SELECT any_value(scale) FROM read_parquet(?) WHERE chosen", [str(path)])
    chosen_scale = float(chosen[0][0]) if chosen and chosen[0][0] is not None else None
    rows = query("SELECT lower(word) AS w, scale, max(probability), "
                 "min(CASE WHEN chosen THEN rank END) FROM read_parquet(?) "
                 "WHERE word IS NOT NULL AND word <> '' GROUP BY w, scale", [str(path)])
    n_tokens = int(query("SELECT count(*) FROM read_parquet(?)", [str(path)])[0][0])
    cells: dict[str, dict[float, float]] = {}
    chosen_rank: dict[str, int] = {}
    for word, scale, prob, rank in rows:
        cells.setdefault(str(word), {})[float(scale)] = float(prob)
        if rank is not None:
            chosen_rank[str(word)] = int(rank)
    order = sorted(cells, key=lambda w: (w not in chosen_rank, chosen_rank.get(w, 0),
                                         -max(cells[w].values()), w))
    shown = order[:MAX_GRID_WORDS]
    n_word_tokens = int(query("SELECT count(*) FROM read_parquet(?) WHERE word IS NOT NULL "
                              "AND word <> ''", [str(path)])[0][0])
    return PatchscopeGrid(
        scales=scales, chosen=chosen_scale, words=shown,
        probability=[[_finite(cells[w].get(s)) for s in scales] for w in shown],
        left_out=len(order) - len(shown) + n_tokens - n_word_tokens)


def _finite(v: float | None) -> float | None:
    return v if v is not None and math.isfinite(v) else None


def steering_rows(run: Run) -> list[dict[str, Any]] | None:
    """The rows of ``data/adl_steering.parquet`` (each model's openings, steered with delta
    at the chosen strength, unsteered, and steered with a random vector); ``None``
    without the table."""
    path = run.file("data/adl_steering.parquet")
    if path is None:
        return None
    names = _require(path, STEERING_COLUMNS, "data/adl_steering.parquet")
    cols = [*STEERING_COLUMNS, *(c for c in STEERING_EXTRA if c in names)]
    rows = query(f"SELECT {', '.join(quote(c) for c in cols)} FROM read_parquet(?)",
                 [str(path)])
    return [{c: (v if isinstance(v, str) else cell(v)) for c, v in zip(cols, r, strict=True)}
            for r in rows]


def amplify_samples(run: Run, alpha: float) -> dict[str, Any]:
    """The samples of ``data/amplify_samples.parquet`` at ``alpha``, each in pieces with the
    hypothesis words marked (``word_marks``)."""
    path = run.file("data/amplify_samples.parquet")
    if path is None:
        raise InputError("no data/amplify_samples.parquet in this run: amplification did not "
                         "run (--methods without amplify)")
    _require(path, ("alpha", "sample", "text"), "data/amplify_samples.parquet")
    hyp = discover_of(run).get("hypothesis")
    words = [str(w) for w in hyp.get("words", [])] if isinstance(hyp, dict) else []
    rows = query("SELECT sample, text FROM read_parquet(?) WHERE alpha = ? ORDER BY sample",
                 [str(path), float(alpha)])
    if not rows:
        have = [float(r[0]) for r in query("SELECT DISTINCT alpha FROM read_parquet(?) ORDER "
                                           "BY alpha", [str(path)])]
        raise InputError(f"no samples at alpha {alpha:g}; the run has alphas "
                         f"{', '.join(f'{a:g}' for a in have)}")
    pieces = [word_marks(str(t or ""), words) for _, t in rows[:MAX_SAMPLES]]
    samples = [{"sample": int(r[0]), "pieces": p} for r, p in zip(rows, pieces, strict=False)]
    marked = sum(any(m for _, m in p) for p in pieces)
    return {"alpha": float(alpha), "total": len(rows), "marked": marked, "samples": samples,
            "words": words}


def examples_placed(run: Run) -> bool:
    """Whether ``data/mining_examples`` stores each change's character span
    (``char_start``, ``char_end``)."""
    path = run.file("data/mining_examples.parquet")
    if path is None:
        return False
    return {"char_start", "char_end"} <= {c for c, _ in schema(path)}


def word_texts(run: Run, word: str) -> dict[str, Any]:
    """The texts where the two models differ most on ``word`` (``data/mining_examples``:
    the tokens whose log-probability the fine-tune raised, or lowered, at the most
    positions, with the texts of their largest changes), raised first, then by the size of
    the change. Each text comes in pieces: before, at and after the token at the change's
    position (the model read up to it and then predicted ``word``; ``char_start`` and
    ``char_end``, which discover stores), else whole. A word with no rows of its own takes
    the rows of the words that match it (``words_match``)."""
    path = run.file("data/mining_examples.parquet")
    if path is None:
        raise InputError("no data/mining_examples.parquet in this run: diff mining did not "
                         "run (--methods without mining)")
    _require(path, EXAMPLE_COLUMNS, "data/mining_examples.parquet")
    word = word.strip().lower()
    if not word:
        raise InputError("give a word, e.g. ?word=harbor")
    have = [str(r[0]) for r in query("SELECT DISTINCT lower(word) FROM read_parquet(?) "
                                     "WHERE word IS NOT NULL", [str(path)])]
    matched = [word] if word in have else sorted(
        w for w in have if words_match(w, word) or words_match(word, w))
    spans = ("char_start, char_end" if examples_placed(run)
             else "-1 AS char_start, -1 AS char_end")
    rows = query(f"SELECT direction, word, text, position, diff, content, {spans} FROM "
                 f"read_parquet(?) WHERE list_contains(?, lower(word)) ORDER BY direction <> "
                 f"'up', abs(diff) DESC, text, position", [str(path), matched]) if matched else []
    seen: set[tuple[str, int, int]] = set()
    out = []
    for direction, w, text_id, position, diff, content, start, end in rows:
        key = (str(direction), int(text_id), int(position))
        if key in seen:
            continue
        seen.add(key)
        text = str(content or "")
        span: tuple[int, int] | None = (int(start), int(end))
        if span is None or not 0 <= span[0] < span[1] <= len(text):
            span = None
        pieces = ([[text[:span[0]], False], [text[span[0]:span[1]], True],
                   [text[span[1]:], False]] if span is not None else [[text, False]])
        out.append({"direction": str(direction), "word": str(w), "text": int(text_id),
                    "position": int(position), "diff": cell(diff), "pieces": pieces,
                    "placed": span is not None})
        if len(out) >= MAX_WORD_TEXTS:
            break
    note = "" if out else (
        f"no texts for {word!r}: mining_examples keeps the texts of the tokens that changed "
        f"at the most positions, and no such token spells this word")
    return {"word": word, "matched": matched, "texts": out, "note": note}
