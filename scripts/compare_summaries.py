"""Diff the numbers of two summary.json files (timings excluded).

Usage: python scripts/compare_summaries.py BEFORE/summary.json AFTER/summary.json
Prints one line per differing number and ends with ``n_numbers=... n_changed=...``.
"""

import json
import sys
from pathlib import Path

from difflens.report.summary_numbers import diff_numbers, summary_numbers

before, after = (json.loads(Path(p).read_text(encoding="utf-8")) for p in sys.argv[1:3])
changes = diff_numbers(before, after)
for path, a, b in changes:
    print(f"{path}: {a} -> {b}")
print(f"n_numbers={len(summary_numbers(after))} n_changed={len(changes)}")
