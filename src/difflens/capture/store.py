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

import json
import os
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._io import RemoteDir, fingerprint, is_uri
from difflens.errors import StoreError
from difflens.models.identity import ModelIdentity
from difflens.models.presets import cache_dir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RUN_JSON = "run.json"


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def mirror_dir(uri: str) -> Path:
    """The local folder that mirrors the remote store ``uri`` on this machine."""
    return cache_dir() / "remote-stores" / fingerprint(uri, length=24)


def claim_mirror(local: Path, key: str) -> None:
    """Make the mirror folder ``local`` hold files of the run ``key`` only: shards mirrored
    from another run once stored at the same URI are dropped."""
    import shutil

    marker = local / ".run-key"
    if marker.is_file() and marker.read_text() == key:
        return
    for sub in ("tensors", "stats"):
        shutil.rmtree(local / sub, ignore_errors=True)
    local.mkdir(parents=True, exist_ok=True)
    marker.write_text(key)


def refresh(remote: RemoteDir, local: Path, names: tuple[str, ...]) -> None:
    """Replace the mirror's copies of ``names`` with the remote's (dropping any the remote
    does not have): these small files say which run the remote holds now. Each copy is
    replaced atomically, so a reader of the mirror never misses one."""
    for name in names:
        if not remote.pull(name, local / name, fresh=True):
            (local / name).unlink(missing_ok=True)


class RunStore:
    """Read access to a finished capture run.

    Use ``open``; then ``hidden`` for hidden states by (prompt, layer),
    ``stats`` for the per-token table, ``models`` for identities.
    """

    def __init__(self, path: Path, manifest: dict[str, Any],
                 remote: RemoteDir | None = None) -> None:
        self.path = path
        """The run's folder (for a remote store, its local mirror)."""
        self.manifest = manifest
        self.remote = remote
        """The remote folder of a store opened by URI; its files are fetched on first use."""

    @classmethod
    def open(cls, path: str | os.PathLike[str]) -> "RunStore":
        """Open a finished run, or raise StoreError saying why it cannot be read.

        ``path`` is a folder or a filesystem URI (``s3://bucket/run``, any filesystem
        ``pyarrow.fs`` opens); a remote run is read through a local mirror under the
        difflens cache, each shard downloaded when first read.
        """
        if is_uri(path):
            return cls._open_remote(str(path))
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

    @classmethod
    def _open_remote(cls, uri: str) -> "RunStore":
        remote, local = RemoteDir(uri), mirror_dir(uri)
        refresh(remote, local, (MANIFEST, "index.parquet", "prompts.parquet"))
        if not (local / MANIFEST).is_file():
            hint = ("the capture did not finish; rerun the same command to complete it"
                    if remote.exists(RUN_JSON) else "it holds no difflens run")
            raise StoreError(f"{uri} has no {MANIFEST}: {hint}")
        store = cls.open(local)
        claim_mirror(local, store.key)
        return cls(local, store.manifest, remote)

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
        rel = f"tensors/{label}/{shard_name(shard)}.safetensors"
        if self.remote is not None:
            self.remote.pull(rel, self.path / rel)
        return self.path / rel

    # -- access ------------------------------------------------------------------------
    def hidden(
        self, prompt: int, layer: int, model: str | None = None
    ) -> Float[Tensor, "rows d_model"]:
        """Hidden states of one prompt at one layer: one row per stored position.

        The positions are ``positions`` ``(prompt)``.
        """
        from safetensors import safe_open

        label = self._label(model)
        layer = self._layer(layer)
        row = self._row(prompt)
        with safe_open(str(self._shard_file(label, int(row.shard))), "pt") as f:
            sl = f.get_slice(f"layer.{layer}")
            return sl[int(row.row_start) : int(row.row_start) + int(row.n_rows)]

    def positions(self, prompt: int) -> list[int]:
        """Token positions of the rows ``hidden`` returns for ``prompt``."""
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
        if self.remote is not None:
            files = [self.path / "stats" / name for name in self.remote.files("stats")]
            for f in files:
                self.remote.pull(f"stats/{f.name}", f)
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
        size = (self.remote.size() if self.remote is not None else
                sum(f.stat().st_size for f in self.path.rglob("*") if f.is_file()))
        first_stats = self.path / "stats" / f"{shard_name(0)}.parquet"
        if self.remote is not None:
            self.remote.pull(f"stats/{shard_name(0)}.parquet", first_stats)
        return {
            "path": self.remote.uri if self.remote is not None else str(self.path),
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
            "stats_columns": list(pd.read_parquet(first_stats).columns),
        }


def index_of(plan: list[list[int]], rows: list[int]) -> pd.DataFrame:
    """prompt_idx -> (shard, row_start, n_rows) from the shard plan and each prompt's stored
    row count (a prompt with no rows gets zeros), without reading the shards."""
    shard = np.zeros(len(rows), dtype=np.int64)
    start = np.zeros(len(rows), dtype=np.int64)
    for s, (lo, hi) in enumerate(plan):
        acc = 0
        for i in range(lo, hi):
            if rows[i]:
                shard[i], start[i] = s, acc
            acc += rows[i]
    n = np.asarray(rows, dtype=np.int64)
    return pd.DataFrame({"prompt_idx": np.arange(len(rows), dtype=np.int64), "shard": shard,
                         "row_start": start, "n_rows": n})


def layer_divergence(store: RunStore) -> list[dict[str, Any]]:
    """Per captured layer: max |base - tuned| and mean cosine of the stored states."""
    if set(store.labels) != {"base", "tuned"}:
        raise ValueError(f"{store.path} is not a pair run (models: {store.labels})")
    rows = []
    for layer in store.layers:
        max_diff, cos_sum, n = 0.0, 0.0, 0
        for (_, hb), (_, ht) in zip(store.layer_rows(layer, "base"),
                                    store.layer_rows(layer, "tuned"), strict=True):
            hb, ht = hb.float(), ht.float()
            if hb.shape == ht.shape and len(hb):
                max_diff = max(max_diff, float((hb - ht).abs().max()))
                cos_sum += float(torch.nn.functional.cosine_similarity(hb, ht, dim=-1).sum())
                n += len(hb)
        rows.append({"layer": layer, "max_abs_diff": max_diff,
                     "mean_cosine": cos_sum / n if n else float("nan"), "n_rows": n})
    return rows
