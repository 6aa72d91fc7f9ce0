"""The on-disk run store: safetensors shards, Parquet statistics and a manifest.

Layout of a run directory::

    run.json                      the cache key, the capture config and the shard plan (first)
    prompts.parquet               prompt_idx, text, token_ids, n_tokens, truncated
    tensors/<model>/shard-NNNNN.safetensors
                                  layer.<L> [rows, d_model]; prompt_idx, token_pos [rows];
                                  optional logprobs [m, vocab], logprobs_prompt_idx, logprobs_pos
    stats/shard-NNNNN.parquet     one row per token: next-token statistics (and KL for a pair)
    manifest.json                 written last: the run is complete when it exists

Every file is written to a temporary name in the same folder, flushed to disk and renamed
into place, so no half-written file is ever visible. A shard is complete when its stats
file exists (it is written after the shard's tensors), which is what resuming relies on.
"""

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from jaxtyping import Float
from torch import Tensor

from difflens.errors import StoreError
from difflens.models.loading import ModelIdentity

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RUN_JSON = "run.json"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    Readers see either the old file or the whole new one, never a partial write. A full
    disk or a read-only folder becomes a one-line :class:`StoreError`.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        with tmp.open("rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as exc:
        if exc.errno == errno.ENOSPC:
            raise StoreError(
                f"out of disk space while writing {path}; completed shards are kept: free "
                f"space and rerun the same command to continue"
            ) from exc
        if exc.errno in (errno.EACCES, errno.EROFS, errno.EPERM):
            raise StoreError(f"cannot write {path}: {exc.strerror}; choose another --out") from exc
        raise
    finally:
        tmp.unlink(missing_ok=True)


def digest(*parts: Any, length: int = 16) -> str:
    """A short SHA-256 key of JSON-serialisable parts (others by ``str``): names stored
    results so a rerun with the same inputs finds them."""
    import hashlib

    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()
                          ).hexdigest()[:length]


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_json_atomic(path: Path, obj: Any) -> None:
    write_bytes_atomic(path, (json.dumps(obj, indent=2, sort_keys=True) + "\n").encode())


def write_parquet_atomic(path: Path, df: pd.DataFrame) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pa.Table.from_pandas(df, preserve_index=False)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def write_tensors_atomic(path: Path, tensors: dict[str, Tensor], metadata: dict[str, str]) -> None:
    """Write a safetensors file atomically; ``metadata`` goes under the one key ``difflens``.

    safetensors serialises its metadata map in no fixed order, so several keys would make
    the bytes of identical shards differ between runs.
    """
    from safetensors.torch import save_file

    meta = {"difflens": json.dumps(metadata, sort_keys=True)}
    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp), metadata=meta)


def check_writable(out: Path) -> None:
    """Create ``out`` and prove that files can be written in it, or raise StoreError."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / f".probe-{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise StoreError(
            f"output directory {out} is not writable ({exc.strerror}); choose another --out"
        ) from exc


def remove_stale_temporaries(out: Path) -> int:
    """Delete temporary files left by a killed writer; return how many there were."""
    n = 0
    for tmp in out.rglob(".*.tmp"):
        tmp.unlink(missing_ok=True)
        n += 1
    return n


class RunStore:
    """Read access to a finished capture run.

    Use :meth:`open`; then :meth:`hidden` for hidden states by (prompt, layer),
    :meth:`stats` for the per-token table, :attr:`models` for identities.
    """

    def __init__(self, path: Path, manifest: dict[str, Any]) -> None:
        self.path = path
        self.manifest = manifest

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "RunStore":
        """Open a finished run, or raise StoreError saying why it cannot be read."""
        p = Path(path)
        if not p.is_dir():
            raise StoreError(f"{p} is not a run store directory")
        if not (p / MANIFEST).is_file():
            hint = (
                "the capture did not finish; rerun the same command to complete it"
                if (p / RUN_JSON).is_file()
                else "it holds no difflens run"
            )
            raise StoreError(f"{p} has no {MANIFEST}: {hint}")
        manifest = json.loads((p / MANIFEST).read_text())
        version = manifest.get("format_version")
        if version != FORMAT_VERSION:
            raise StoreError(
                f"{p} has store format {version}; this difflens reads format {FORMAT_VERSION}"
            )
        return cls(p, manifest)

    # -- description -------------------------------------------------------------------
    @property
    def key(self) -> str:
        return str(self.manifest["key"])

    @property
    def labels(self) -> list[str]:
        """Model labels: ``["model"]`` for one model, ``["base", "tuned"]`` for a pair."""
        return list(self.manifest["models"])

    @property
    def models(self) -> dict[str, ModelIdentity]:
        return {k: ModelIdentity.from_dict(v) for k, v in self.manifest["models"].items()}

    @property
    def layers(self) -> list[int]:
        """Captured layers (in the base model's numbering for a pair)."""
        return list(self.manifest["config"]["layers"])

    @property
    def n_prompts(self) -> int:
        return int(self.manifest["n_prompts"])

    @property
    def n_tokens(self) -> int:
        return int(self.manifest["n_tokens"])

    @cached_property
    def prompts(self) -> pd.DataFrame:
        """``prompt_idx, text, token_ids, n_tokens, truncated`` for every prompt."""
        return pd.read_parquet(self.path / "prompts.parquet")

    @cached_property
    def _index(self) -> pd.DataFrame:
        return pd.read_parquet(self.path / "index.parquet").set_index("prompt_idx")

    def _label(self, model: str | None) -> str:
        if model is None:
            return self.labels[0]
        if model not in self.labels:
            raise StoreError(f"no model {model!r} in {self.path}; it holds {self.labels}")
        return model

    def _shard_file(self, label: str, shard: int) -> Path:
        return self.path / "tensors" / label / f"{shard_name(shard)}.safetensors"

    # -- access ------------------------------------------------------------------------
    def hidden(
        self, prompt: int, layer: int, model: str | None = None
    ) -> Float[Tensor, "rows d_model"]:
        """Hidden states of one prompt at one layer: one row per stored position.

        The positions are :meth:`positions` ``(prompt)``.
        """
        from safetensors import safe_open

        label = self._label(model)
        layer = self._layer(layer)
        row = self._row(prompt)
        with safe_open(str(self._shard_file(label, int(row.shard))), "pt") as f:
            sl = f.get_slice(f"layer.{layer}")
            return sl[int(row.row_start) : int(row.row_start) + int(row.n_rows)]

    def positions(self, prompt: int) -> list[int]:
        """Token positions of the rows :meth:`hidden` returns for ``prompt``."""
        from safetensors import safe_open

        row = self._row(prompt)
        with safe_open(str(self._shard_file(self.labels[0], int(row.shard))), "pt") as f:
            sl = f.get_slice("token_pos")
            return sl[int(row.row_start) : int(row.row_start) + int(row.n_rows)].tolist()

    def layer_rows(self, layer: int, model: str | None = None) -> Iterator[tuple[Tensor, Tensor]]:
        """Stream ``(prompt_idx, states)`` shard by shard for one layer (bounded memory)."""
        from safetensors import safe_open

        label, layer = self._label(model), self._layer(layer)
        for shard in range(int(self.manifest["n_shards"])):
            with safe_open(str(self._shard_file(label, shard)), "pt") as f:
                yield f.get_tensor("prompt_idx"), f.get_tensor(f"layer.{layer}")

    def logprobs(self, prompt: int, model: str | None = None) -> tuple[list[int], Tensor]:
        """Full next-token log-probs stored for ``prompt``: (positions, [n, vocab])."""
        from safetensors import safe_open

        label = self._label(model)
        row = self._row(prompt)
        with safe_open(str(self._shard_file(label, int(row.shard))), "pt") as f:
            if "logprobs" not in f.keys():  # noqa: SIM118 (safe_open has no __contains__)
                raise StoreError(
                    f"{self.path} stores no full log-probs (capture with logprob_positions)")
            idx = f.get_tensor("logprobs_prompt_idx")
            sel = (idx == prompt).nonzero().flatten()
            return f.get_tensor("logprobs_pos")[sel].tolist(), f.get_tensor("logprobs")[sel]

    def stats(self, columns: list[str] | None = None) -> pd.DataFrame:
        """The per-token statistics table (one row per token of every prompt)."""
        files = sorted((self.path / "stats").glob("shard-*.parquet"))
        return pd.concat([pd.read_parquet(f, columns=columns) for f in files], ignore_index=True)

    def token_ids(self, prompt: int) -> list[int]:
        return [int(t) for t in self.prompts.loc[prompt, "token_ids"]]

    # -- helpers -----------------------------------------------------------------------
    def _layer(self, layer: int) -> int:
        n = int(self.manifest["n_layers"])
        idx = layer + n + 1 if layer < 0 else layer
        if idx not in self.layers:
            raise StoreError(f"layer {layer} was not captured in {self.path}; it has {self.layers}")
        return idx

    def _row(self, prompt: int) -> Any:
        if not 0 <= prompt < self.n_prompts:
            raise StoreError(f"prompt {prompt} is out of range: {self.path} has {self.n_prompts}")
        return self._index.loc[prompt]

    def describe(self) -> dict[str, Any]:
        """A short summary for ``difflens info``."""
        m = self.manifest
        size = sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file())
        return {
            "path": str(self.path),
            "key": m["key"],
            "models": {k: {"name": v["name"], "architecture": v["architecture"],
                           "n_layers": v["n_layers"], "d_model": v["d_model"],
                           "weights_sha256": v["weights_sha256"][:16]}
                       for k, v in m["models"].items()},
            "n_prompts": m["n_prompts"],
            "n_tokens": m["n_tokens"],
            "n_rows": m["n_rows"],
            "layers": m["config"]["layers"],
            "positions": m["config"]["positions"],
            "dtype": m["config"]["store_dtype"],
            "n_truncated": m["n_truncated"],
            "n_shards": m["n_shards"],
            "size_mb": round(size / 2**20, 2),
            "stats_columns": list(pd.read_parquet(
                self.path / "stats" / f"{shard_name(0)}.parquet").columns),
        }


def build_index(path: Path, label: str, n_shards: int) -> pd.DataFrame:
    """prompt_idx -> (shard, row_start, n_rows) from the shards' ``prompt_idx`` arrays."""
    from safetensors import safe_open

    parts = []
    for shard in range(n_shards):
        f_path = path / "tensors" / label / f"{shard_name(shard)}.safetensors"
        with safe_open(str(f_path), "pt") as f:
            pidx = f.get_tensor("prompt_idx").numpy()
        if len(pidx) == 0:
            continue
        starts = np.flatnonzero(np.r_[True, pidx[1:] != pidx[:-1]])
        counts = np.diff(np.r_[starts, len(pidx)])
        parts.append(pd.DataFrame({"prompt_idx": pidx[starts], "shard": shard,
                                   "row_start": starts, "n_rows": counts}))
    return pd.concat(parts, ignore_index=True)
