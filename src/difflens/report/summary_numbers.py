"""The numbers of a ``summary.json``, flattened, to hold them in a snapshot or to diff two
runs: every number under its path, timings and wall-clock speeds left out."""

import math
import re
from collections.abc import Iterator, Mapping
from typing import Any

TIMING_KEYS = re.compile(r"(^|_)(seconds|secs|elapsed|wall\w*|speed_ratio\w*)$|_s$")
"""Keys whose values are timings, not results: they change from run to run."""


def _walk(obj: Any, path: str) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, Mapping):
        for k, v in obj.items():
            yield from _walk(v, f"{path}/{k}")
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _walk(v, f"{path}[{i}]")
    else:
        yield path, obj


def summary_numbers(summary: Mapping[str, Any], *, digits: int = 6
                    ) -> dict[str, float | int | str]:
    """``path -> number`` for every number in ``summary`` (booleans and timings excluded),
    rounded to ``digits`` significant digits; NaN stays NaN (as the string ``"nan"``)."""
    out: dict[str, Any] = {}
    for path, v in _walk(summary, ""):
        key = path.rsplit("/", 1)[-1].split("[", 1)[0]
        if isinstance(v, bool) or not isinstance(v, int | float) or TIMING_KEYS.search(key):
            continue
        if isinstance(v, float) and not math.isfinite(v):
            out[path] = str(v)
        else:
            out[path] = float(f"{v:.{digits}g}") if isinstance(v, float) else v
    return out


def diff_numbers(before: Mapping[str, Any], after: Mapping[str, Any], *,
                 digits: int = 6) -> list[tuple[str, Any, Any]]:
    """``(path, before, after)`` for every number that differs (or exists on one side)."""
    a, b = summary_numbers(before, digits=digits), summary_numbers(after, digits=digits)
    return [(k, a.get(k), b.get(k)) for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]



_PART = re.compile(r"/([^/\[]*)|\[(\d+)\]")


def _slot(node: list[Any], index: int) -> None:
    while len(node) <= index:
        node.append(None)


def unflatten_numbers(numbers: Mapping[str, Any]) -> dict[str, Any]:
    """The nested summary that ``summary_numbers`` flattened (its numbers only): paths
    ``/a/b[2]/c`` become dicts and lists again (list items that held no number are
    ``None``, and ``"nan"`` is NaN again), so a stored snapshot of numbers reads as a
    summary, e.g. to respell it (``respell``)."""
    root: dict[str, Any] = {}
    for path, value in numbers.items():
        steps: list[str | int] = [m.group(1) if m.group(2) is None else int(m.group(2))
                                  for m in _PART.finditer(path)]
        node: Any = root
        for step, nxt in zip(steps, steps[1:], strict=False):
            empty: Any = [] if isinstance(nxt, int) else {}
            if isinstance(step, int):
                _slot(node, step)
                if node[step] is None:
                    node[step] = empty
                node = node[step]
            else:
                node = node.setdefault(step, empty)
        if isinstance(steps[-1], int):
            _slot(node, steps[-1])
        node[steps[-1]] = float(value) if value in ("nan", "inf", "-inf") else value
    return root
