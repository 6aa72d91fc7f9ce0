"""Read-only access to run folders: which files a run holds, its summary, and pages of its
Parquet tables read through DuckDB.

Nothing here writes: every file is opened for reading, DuckDB runs in memory, and a path
from a request is resolved by ``safe_path``, which answers ``None`` for anything that
does not lead to a regular file inside the run folder (``..``, absolute paths, symlinks
that lead out).
"""

import dataclasses
import json
import math
import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from difflens.analysis.summary_spelling import respell
from difflens.errors import InputError

#: Most rows one table request returns.
MAX_PAGE_SIZE = 1000
#: Filter operators of the table view (``contains`` compares text, the rest numbers).
FILTER_OPS = ("contains", "=", "!=", "<", "<=", ">", ">=")
#: Characters a cell of a table page shows at most (long lists and arrays are cut).
MAX_CELL_CHARS = 120


@dataclasses.dataclass(frozen=True)
class Run:
    """One run folder given to the explorer."""

    id: int
    root: Path
    """The folder, resolved (symlinks followed) once, at start."""
    name: str

    def file(self, rel: str) -> Path | None:
        return safe_path(self.root, rel)


@dataclasses.dataclass(frozen=True)
class Summary:
    """A run's ``summary.json``: its content, or why it could not be read."""

    data: dict[str, Any] | None
    error: str | None


@dataclasses.dataclass(frozen=True)
class TablePage:
    """One page of a table: ``rows`` of ``columns``, out of ``total`` matching rows."""

    columns: list[str]
    types: list[str]
    rows: list[list[Any]]
    total: int
    offset: int


def open_runs(folders: Sequence[Path], *, allow_empty: bool = False) -> list[Run]:
    """The runs the explorer serves, in the order given; a folder that is missing or not a
    folder is an ``InputError`` (a folder without a summary is served, and says so).
    No folders at all is an error unless ``allow_empty`` (models given for the live
    views)."""
    if not folders and not allow_empty:
        raise InputError("difflens explore needs at least one run folder or --base MODEL, "
                         "e.g. `difflens explore runs/demo`")
    runs: list[Run] = []
    names: dict[str, int] = {}
    for folder in folders:
        if not folder.is_dir():
            raise InputError(f"run folder {folder} does not exist or is not a folder; give the "
                             f"--out folder of a difflens command")
        root = folder.resolve()
        base = root.name or str(root)
        parts = [(root, base), *_sections(root, base)]
        for path, name in [p for part in parts for p in (part, *_stages(*part))]:
            names[name] = names.get(name, 0) + 1
            runs.append(Run(id=len(runs), root=path, name=name if names[name] == 1
                            else f"{name} ({names[name]})"))
    return runs


def _sections(root: Path, name: str) -> list[tuple[Path, str]]:
    """The section runs inside a ``difflens compare`` or ``difflens demo`` folder (its
    ``summary.json`` lists ``sections``): each ``OUT/<section>`` with a summary, and the
    per-model runs inside a section (``OUT/control/<model>``), so that ``explore OUT``
    opens every part of the report. Other folders have none."""
    try:
        listed = json.loads((root / "summary.json").read_text()).get("sections")
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(listed, list):
        return []
    out = []
    for section in listed:
        folder = root / str(section)
        if not folder.is_dir() or folder.resolve().parent != root:
            continue  # a section that did not run, or a name that leaves the folder
        if (folder / "summary.json").is_file():
            out.append((folder.resolve(), f"{name}/{section}"))
        out += [(sub.resolve(), f"{name}/{section}/{sub.name}")
                for sub in sorted(folder.iterdir())
                if sub.is_dir() and (sub / "summary.json").is_file()
                and sub.resolve().parent == folder.resolve()]
    return out


def _stages(root: Path, name: str) -> list[tuple[Path, str]]:
    """The stage runs of a ``difflens discover`` lineage run (its summary's ``stages``:
    ``OUT/stages/<a>-to-<b>``, each a discover run of one adjacent pair), whether the
    folder was given or is a ``compare`` section (``OUT/discover``). Other runs have
    none."""
    try:
        summary = json.loads((root / "summary.json").read_text())
        listed = summary.get("stages") if _discover_body(summary) else None
    except (OSError, ValueError, AttributeError):
        return []
    if not isinstance(listed, dict):
        return []
    folder = root / "stages"
    out = []
    for stage in listed:
        sub = folder / str(stage)
        if (sub / "summary.json").is_file() and sub.resolve().parent == folder.resolve() \
                and folder.resolve().parent == root:
            out.append((sub.resolve(), f"{name}/stages/{stage}"))
    return out


def safe_path(root: Path, rel: str) -> Path | None:
    """The regular file ``rel`` names inside ``root``, or ``None``.

    ``rel`` must be relative, without ``..`` or empty parts, and its real path (symlinks
    followed) must stay inside ``root``'s real path.
    """
    if not rel or "\x00" in rel or "\\" in rel or rel.startswith("/"):
        return None
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return None
    real_root = os.path.realpath(root)
    real = os.path.realpath(os.path.join(real_root, *parts))
    if os.path.commonpath([real_root, real]) != real_root or not os.path.isfile(real):
        return None
    return Path(real)


def _files(run: Run, suffixes: tuple[str, ...], limit: int = 500) -> list[str]:
    """Relative paths of the files under the run with these suffixes (no hidden ones, no
    symlinks leading out), sorted, at most ``limit``."""
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(run.root):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for name in sorted(filenames):
            if name.startswith(".") or not name.endswith(suffixes):
                continue
            rel = os.path.relpath(os.path.join(dirpath, name), run.root).replace(os.sep, "/")
            if safe_path(run.root, rel) is not None:
                found.append(rel)
            if len(found) >= limit:
                return found
    return found


def tables(run: Run) -> list[str]:
    """The run's Parquet files (``data/`` first)."""
    found = _files(run, (".parquet",))
    return sorted(found, key=lambda r: (not r.startswith("data/"), r))


def figures(run: Run) -> list[tuple[str, str | None, str | None]]:
    """``(name, png, html)`` of each figure under ``figures/`` (either may be missing)."""
    by_name: dict[str, dict[str, str]] = {}
    for rel in _files(run, (".png", ".html")):
        if not rel.startswith("figures/"):
            continue
        stem, _, ext = rel.rpartition(".")
        by_name.setdefault(stem.removeprefix("figures/"), {})[ext] = rel
    return [(name, d.get("png"), d.get("html")) for name, d in sorted(by_name.items())]


def kinds(run: Run) -> list[str]:
    """The explorer views a run supports besides its overview: ``atlas`` (a trajectories
    run), ``tokens`` (a collapse divergence run) and ``discover`` (a discover run,
    ``is_discover``)."""
    out = []
    if run.file("data/trajectories.parquet") is not None:
        out.append("atlas")
    if run.file("data/divergence_tokens.parquet") is not None:
        out.append("tokens")
    if is_discover(read_summary(run)):
        out.append("discover")
    return out


def is_discover(summary: "Summary") -> bool:
    """Whether a summary is a ``difflens discover`` run's (or a ``compare`` discover
    section's): ``discover`` is an object with a ``hypothesis`` (a compare folder's own
    summary holds the section's whole summary under ``discover``: not a discover run)."""
    return summary.data is not None and _discover_body(summary.data)


def _discover_body(data: Any) -> bool:
    found = data.get("discover") if isinstance(data, dict) else None
    return isinstance(found, dict) and isinstance(found.get("hypothesis"), dict)


def read_summary(run: Run) -> Summary:
    """The run's ``summary.json`` with every estimate in the one spelling (runs written in
    older spellings are respelled), or a one-line reason why there is none to show."""
    path = run.file("summary.json")
    if path is None:
        return Summary(None, "no summary.json in this folder: the run is unfinished or this "
                             "is not the --out folder of a difflens command")
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError:
        return Summary(None, "summary.json is not UTF-8 text: the file is damaged; rerun the "
                             "command that wrote it")
    except json.JSONDecodeError as exc:
        return Summary(None, f"summary.json is not valid JSON (line {exc.lineno}: {exc.msg}): "
                             f"it is half-written or damaged; rerun the command that wrote it")
    if not isinstance(data, dict):
        return Summary(None, f"summary.json holds a {type(data).__name__}, not an object; "
                             f"rerun the command that wrote it")
    return Summary(respell(data), None)  # a run of an older difflens reads the same


# -- DuckDB ---------------------------------------------------------------------------------

@contextmanager
def connection() -> Iterator[Any]:
    """A fresh in-memory DuckDB connection, closed on exit. It writes nothing beside the runs
    (a sort too big for memory spills to the system's temporary folder), and no connection
    outlives its request's thread."""
    import duckdb

    spill = Path(tempfile.gettempdir()) / "difflens-explore-duckdb"
    con = duckdb.connect(":memory:", config={"temp_directory": str(spill)})
    try:
        yield con
    finally:
        con.close()


def quote(name: str) -> str:
    """A SQL identifier, double-quoted."""
    return '"' + name.replace('"', '""') + '"'


def query(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    """Run ``sql`` on this thread's connection; a DuckDB error becomes an InputError."""
    import duckdb

    try:
        with connection() as con:
            return list(con.execute(sql, list(params)).fetchall())
    except duckdb.Error as exc:
        first = str(exc).splitlines()[0]
        raise InputError(f"cannot read the table: {first}") from None


def schema(path: Path) -> list[tuple[str, str]]:
    """``(column, DuckDB type)`` of a Parquet file (read from its footer only)."""
    rows = query("DESCRIBE SELECT * FROM read_parquet(?)", [str(path)])
    return [(str(r[0]), str(r[1])) for r in rows]


def _numeric(type_name: str) -> bool:
    return type_name.split("(")[0] in {
        "TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT",
        "UINTEGER", "UBIGINT", "FLOAT", "DOUBLE", "DECIMAL", "REAL"}


def table_page(path: Path, *, offset: int = 0, size: int = 50, sort: str | None = None,
               descending: bool = False, filter_column: str | None = None,
               filter_op: str = "contains", filter_value: str = "") -> TablePage:
    """One page of a Parquet table, sorted and filtered by DuckDB.

    Only the requested page is materialised: DuckDB reads the columns it needs and, without
    a sort or filter, only the row groups that hold the page.

    Args:
        path: a Parquet file (already checked by ``safe_path``).
        offset: first row of the page (after filtering and sorting).
        size: rows in the page, 1 to ``MAX_PAGE_SIZE``.
        sort: a column to sort by (``None``: file order).
        descending: sort from the largest.
        filter_column: keep only rows whose value in this column passes ``filter_op``.
        filter_op: one of ``FILTER_OPS``.
        filter_value: the value compared with (a number for all but ``contains``).
    """
    cols = schema(path)
    names = [c for c, _ in cols]
    types = dict(cols)
    if not 1 <= size <= MAX_PAGE_SIZE:
        raise InputError(f"page size must be 1 to {MAX_PAGE_SIZE}, got {size}")
    if offset < 0:
        raise InputError(f"offset must be 0 or more, got {offset}")
    where = ""
    params: list[Any] = []
    if filter_column and filter_value != "":
        if filter_column not in types:
            raise InputError(f"no column {filter_column!r} to filter by; the table has "
                             f"{', '.join(names)}")
        if filter_op not in FILTER_OPS:
            raise InputError(f"filter operator must be one of {', '.join(FILTER_OPS)}, got "
                             f"{filter_op!r}")
        col = quote(filter_column)
        if filter_op == "contains":
            where = f" WHERE contains(lower(CAST({col} AS VARCHAR)), lower(?))"
            params.append(filter_value)
        elif _numeric(types[filter_column]):
            try:
                number = float(filter_value)
            except ValueError:
                raise InputError(f"column {filter_column!r} holds numbers; {filter_op} needs a "
                                 f"number, got {filter_value!r}") from None
            where = f" WHERE {col} {filter_op} ?"
            params.append(number)
        else:
            where = f" WHERE CAST({col} AS VARCHAR) {filter_op} ?"
            params.append(filter_value)
    order = ""
    if sort:
        if sort not in types:
            raise InputError(f"no column {sort!r} to sort by; the table has {', '.join(names)}")
        order = f" ORDER BY {quote(sort)} {'DESC' if descending else 'ASC'} NULLS LAST"
    src = "read_parquet(?)"
    total = int(query(f"SELECT count(*) FROM {src}{where}", [str(path), *params])[0][0])
    rows = query(f"SELECT * FROM {src}{where}{order} LIMIT {int(size)} OFFSET {int(offset)}",
                 [str(path), *params])
    return TablePage(columns=names, types=[types[c] for c in names],
                     rows=[[cell(v) for v in r] for r in rows], total=total, offset=offset)


def cell(value: Any) -> Any:
    """A value as JSON can carry it: non-finite floats as text, long values cut."""
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if value is None or isinstance(value, bool | int):
        return value
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= MAX_CELL_CHARS else text[:MAX_CELL_CHARS - 1] + "…"
