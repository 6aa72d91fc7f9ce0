"""Tables: every analysis writes its data as Parquet with a CSV export, both atomically."""

import json
from pathlib import Path

import numpy as np
import pandas as pd

from difflens._io import write_bytes_atomic, write_parquet_atomic


def write_table(df: pd.DataFrame, folder: Path, name: str) -> None:
    """``folder/NAME.parquet`` and ``folder/NAME.csv`` (list and dict cells as JSON in the
    CSV), each written to a temporary name and renamed."""
    folder.mkdir(parents=True, exist_ok=True)
    flat = df.copy()
    for col in flat.columns:
        if flat[col].map(lambda v: isinstance(v, (list, tuple, np.ndarray, dict))).any():
            flat[col] = flat[col].map(
                lambda v: json.dumps(v if isinstance(v, dict) else np.asarray(v).tolist()))
    write_parquet_atomic(folder / f"{name}.parquet", df.reset_index(drop=True))
    write_bytes_atomic(folder / f"{name}.csv", flat.to_csv(index=False).encode())
