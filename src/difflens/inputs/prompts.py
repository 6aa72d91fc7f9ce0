"""Reading prompt files: ``.txt``, ``.jsonl``, ``.json`` and ``.csv``.

Every problem is an ``InputError`` naming the file and the line (or
byte offset) so the user can fix it in one go.
"""

import csv
import io
import json
from pathlib import Path
from typing import Any

from difflens._io import read_utf8
from difflens.errors import InputError

PROMPT_SUFFIXES = (".txt", ".jsonl", ".json", ".csv")


def _check(path: Path, line: int, value: object, field: str | None) -> str:
    where = f"{path}:{line}"
    if not isinstance(value, str):
        what = f"field {field!r}" if field else "item"
        raise InputError(f"{where}: {what} should be a string, got {type(value).__name__}")
    if not value.strip():
        raise InputError(f"{where}: empty prompt; remove the line or give it text")
    return value


def read_prompts(path: str | Path, *, field: str | None = None) -> list[str]:
    """Read prompts from a file.

    Args:
        path: ``.txt`` (one prompt a line; ``\\n`` inside a prompt is written ``\\\\n``),
            ``.jsonl`` (one object a line with a ``prompt`` field, or ``field``),
            ``.json`` (an array of strings, or of objects with ``field``), or ``.csv``
            (a header row; the column ``field``, default ``prompt``).
        field: the field or column that holds the prompt.

    Raises:
        InputError: missing file, unknown suffix, bad JSON, non-UTF-8 bytes or an empty
            prompt, each with file and line.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"prompt file {path} does not exist")
    suffix = path.suffix.lower()
    if suffix not in PROMPT_SUFFIXES:
        raise InputError(
            f"{path}: unknown prompt file type {suffix!r}; use one of {', '.join(PROMPT_SUFFIXES)}"
        )
    text = read_utf8(path)
    prompts: list[str] = []
    if suffix == ".txt":
        for i, line in enumerate(text.splitlines(), 1):
            prompts.append(_check(path, i, line.replace("\\n", "\n"), None))
    elif suffix == ".jsonl":
        key = field or "prompt"
        for i, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as exc:
                raise InputError(
                    f"{path}:{i}: malformed JSON ({exc.msg} at column {exc.colno})") from None
            if not isinstance(obj, dict) or key not in obj:
                got = sorted(obj) if isinstance(obj, dict) else type(obj).__name__
                raise InputError(f"{path}:{i}: expected an object with field {key!r}, got {got}")
            prompts.append(_check(path, i, obj[key], key))
    elif suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{exc.lineno}: malformed JSON ({exc.msg})") from None
        if not isinstance(data, list):
            raise InputError(f"{path}: expected a JSON array of prompts, got {type(data).__name__}")
        for i, item in enumerate(data):
            where = f"item {i}"
            if isinstance(item, dict):
                key = field or "prompt"
                if key not in item:
                    raise InputError(f"{path}: {where} has no field {key!r} (has {sorted(item)})")
                item = item[key]
            if not isinstance(item, str) or not item.strip():
                raise InputError(f"{path}: {where} is not a non-empty string")
            prompts.append(item)
    else:
        key = field or "prompt"
        reader = csv.DictReader(io.StringIO(text))
        if reader.fieldnames is None or key not in reader.fieldnames:
            raise InputError(
                f"{path}:1: no column {key!r} in the header {reader.fieldnames}; pass --field"
            )
        for row in reader:
            prompts.append(_check(path, reader.line_num, row[key], key))
    if not prompts:
        raise InputError(f"{path}: no prompts found")
    return prompts


def read_prompt_metadata(path: str | Path, *, field: str | None = None) -> list[dict[str, Any]]:
    """The other fields of each prompt in a ``.jsonl``, ``.json`` (objects) or ``.csv``
    prompt file, in the order ``read_prompts`` returns the prompts (e.g. a ``label``
    that can colour a map); empty dicts for ``.txt`` and plain strings. Values that are not
    strings, numbers or booleans are kept as JSON text."""
    path = Path(path)
    read_prompts(path, field=field)  # the same checks, with file and line
    key = field or "prompt"
    suffix = path.suffix.lower()
    text = read_utf8(path)
    if suffix == ".jsonl":
        rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    elif suffix == ".json":
        rows = [r if isinstance(r, dict) else {} for r in json.loads(text)]
    elif suffix == ".csv":
        rows = list(csv.DictReader(io.StringIO(text)))
    else:
        return [{} for _ in text.splitlines()]

    def scalar(v: Any) -> Any:
        return v if isinstance(v, str | int | float | bool) or v is None else json.dumps(v)

    return [{k: scalar(v) for k, v in r.items() if k != key} for r in rows]
