"""What every instrument's run returns: one shape for all of them.

``run_<instrument>(models, inputs, out, config) -> <Instrument>Result``; each result is a
frozen dataclass deriving ``InstrumentResult``, so every run is read the same way:

- ``summary`` is ``OUT/summary.json`` as written (every estimate
  spelled ``{value, ci_low, ci_high, n, resampled}``);
- ``estimate`` reads one of those estimates as an
  ``Estimate``, by its dotted path;
- ``to_frames`` gives the run's tables (``OUT/data/*.parquet``) as
  DataFrames by name;
- ``figures`` are the figures the run drew.
"""

import dataclasses
from pathlib import Path
from typing import Any

import pandas as pd

from difflens.analysis.bootstrap import Estimate
from difflens.errors import InputError
from difflens.report.figures import AnyFigure


@dataclasses.dataclass(frozen=True)
class InstrumentResult:
    """The common part of every instrument's result (see the module's docstring)."""

    out: Path
    """The run's folder."""
    summary_json: dict[str, Any]
    """``OUT/summary.json`` as written; read it with ``summary``."""
    figures: list[AnyFigure]

    def summary(self) -> dict[str, Any]:
        """``OUT/summary.json`` of the run (the keys each instrument's docs name)."""
        return self.summary_json

    def estimate(self, path: str) -> Estimate:
        """The estimate at dotted ``path`` of the summary, e.g. ``"temperature.residual_tvd"``
        (a list index is a number: ``"prompt.distance_by_index.0"``)."""
        node: Any = self.summary_json
        for part in path.split("."):
            if isinstance(node, list) and part.isdigit() and int(part) < len(node):
                node = node[int(part)]
            elif isinstance(node, dict) and part in node:
                node = node[part]
            else:
                raise InputError(f"the summary has no {path!r} (stopped at {part!r})")
        if not (isinstance(node, dict) and {"value", "ci_low", "ci_high"} <= set(node)):
            raise InputError(f"{path!r} of the summary is not an estimate (value, ci_low, "
                             f"ci_high)")
        return Estimate.from_json(node)

    def to_frames(self) -> dict[str, pd.DataFrame]:
        """The run's tables, ``OUT/data/<name>.parquet``, by name (read when asked)."""
        data = Path(self.out) / "data"
        return {p.stem: pd.read_parquet(p) for p in sorted(data.glob("*.parquet"))}
