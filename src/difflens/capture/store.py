"""The on-disk run store: safetensors shards, Parquet statistics and a manifest.

Layout of a run directory::

    run.json                      the cache key, the capture config and the shard plan (first)
    prompts.parquet               prompt_idx, text, token_ids, n_tokens, truncated
    tensors/<model>/shard-NNNNN.safetensors
                                  layer.<L> [rows, d_model]; prompt_idx, token_pos [rows];
                                  optional logprobs [m, vocab], logprobs_prompt_idx, logprobs_pos
    stats/shard-NNNNN.parquet     one row per token: next-token statistics (and KL for a pair)
    manifest.json                 written last: the run is complete when it exists

A capture with no layers and no full log-probs (``layers=()``) writes no ``tensors/``: its
shards are the statistics alone.

Columns of the statistics: ``prompt_idx, pos, token_id, token``; per model label
``<label>_entropy``, ``<label>_logprob_next``, ``<label>_topk_ids``,
``<label>_topk_logprobs``; a ``ModelPair``'s ``kl_tuned_base`` (KL(tuned ‖ base)),
``kl_base_tuned`` and ``top1_agree``; and for each pair ``(a, b)`` asked for by ``pairs=``
(a model set's pairs), the same three prefixed with the pair: ``<a>-vs-<b>:kl_tuned_base``
(KL(b ‖ a): ``a`` plays the base, ``b`` the tuned model), ``<a>-vs-<b>:kl_base_tuned`` and
``<a>-vs-<b>:top1_agree`` (``pair_column``). A model name holds no ``:``, so the prefix
is unambiguous.

Every file is written to a temporary name in the same folder, flushed to disk and renamed
into place, so no half-written file is ever visible. A shard is complete when its stats
file exists (it is written after the shard's tensors), which is what resuming relies on.

The module is long because it holds both sides of the format: ``RunStore`` reads a run,
and ``write_shard`` (run by a ``ShardWriter``, a writer thread) writes a shard's files.
"""

import dataclasses
import json
import os
import queue
import threading
from collections.abc import Callable, Iterator, Sequence
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._io import (
    RemoteDir,
    fingerprint,
    is_uri,
    write_parquet_atomic,
    write_tensors_atomic,
)
from difflens.capture.stats import PairStats, TokenStats
from difflens.errors import StoreError
from difflens.models.identity import ModelIdentity
from difflens.models.presets import cache_dir

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
RUN_JSON = "run.json"


#: The statistics of a pair, as a ``ModelPair``'s capture names them.
PAIR_COLUMNS = ("kl_tuned_base", "kl_base_tuned", "top1_agree")


def shard_name(i: int) -> str:
    return f"shard-{i:05d}"


def pair_column(pair: tuple[str, str] | None, stat: str) -> str:
    """The stats column of ``stat`` (one of ``PAIR_COLUMNS``) for the pair ``(a, b)``:
    ``<a>-vs-<b>:<stat>``; ``None`` is a ``ModelPair``'s own pair (the bare ``stat``)."""
    return stat if pair is None else f"{pair[0]}-vs-{pair[1]}:{stat}"


def stores_tensors(config: dict[str, Any]) -> bool:
    """Whether a capture of ``config`` (``CaptureConfig.key_fields``) writes tensor files:
    with layers or full log-probs; else its shards are the statistics alone."""
    return bool(config["layers"]) or bool(config["logprob_positions"])


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
    ``stats`` for the per-token table, ``pair_stats`` for one pair's columns under a
    pair's names, ``models`` for identities.
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
        """Model labels: ``["model"]`` for one model, ``["base", "tuned"]`` for a pair, the
        names (in lineage order) for a model set."""
        return list(self.manifest.get("labels") or self.manifest["models"])

    @property
    def pairs(self) -> list[tuple[str, str]]:
        """The pairs ``(a, b)`` whose KL and top-1 agreement the statistics hold: those
        given to ``capture(pairs=...)``, else a pair run's ``(base, tuned)`` (columns
        without a prefix)."""
        given = self.manifest["config"].get("pairs")
        if given is not None:
            return [(str(a), str(b)) for a, b in given]
        return [("base", "tuned")] if {"base", "tuned"} <= set(self.labels) else []

    def pair_stats(self, a: str, b: str, columns: list[str] | None = None) -> pd.DataFrame:
        """The statistics of the pair ``(a, b)`` under a pair run's names, whatever the run
        (a pair or a model set): ``a`` as ``base``, ``b`` as ``tuned``.

        Args:
            a: the model playing the base.
            b: the model playing the tuned one.
            columns: which of ``prompt_idx, pos, token_id, token, base_*, tuned_*,
                kl_tuned_base, kl_base_tuned, top1_agree`` to read (default:
                ``prompt_idx, pos, base_entropy, tuned_entropy`` and the pair's three).
        """
        if (a, b) not in self.pairs:
            raise StoreError(f"{self.path} holds no statistics of the pair ({a}, {b}); it "
                             f"holds {self.pairs or 'no pairs'}")
        legacy = self.manifest["config"].get("pairs") is None
        wanted = columns or ["prompt_idx", "pos", "base_entropy", "tuned_entropy",
                             *PAIR_COLUMNS]
        stored = {}
        for col in wanted:
            if col in PAIR_COLUMNS:
                stored[col] = pair_column(None if legacy else (a, b), col)
            elif col.startswith(("base_", "tuned_")):
                role, _, stat = col.partition("_")
                stored[col] = f"{a if role == 'base' else b}_{stat}"
            else:
                stored[col] = col
        df = self.stats(list(dict.fromkeys(stored.values())))
        return pd.DataFrame({col: df[src] for col, src in stored.items()})

    @property
    def models(self) -> dict[str, ModelIdentity]:
        return {k: ModelIdentity.from_dict(v) for k, v in self.manifest["models"].items()}

    @property
    def layers(self) -> list[int]:
        """Captured layers (in the base model's numbering for a pair); empty when the run
        stores no hidden states."""
        return list(self.manifest["config"]["layers"])

    @property
    def has_tensors(self) -> bool:
        """Whether the run holds tensor files (hidden states or full log-probs)."""
        return stores_tensors(self.manifest["config"])

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
        if not self.has_tensors:  # the plan's rows, as the engine stores them
            from difflens.capture.plan import rows_of  # plan imports this module

            cfg = self.manifest["config"]["positions"]
            n = int(self.prompts.loc[prompt, "n_tokens"])
            return rows_of(n, cfg if isinstance(cfg, str) else tuple(cfg))
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
        if not self.manifest["config"]["logprob_positions"]:
            raise StoreError(
                f"{self.path} stores no full log-probs (capture with logprob_positions)")
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
        if not self.layers:
            raise StoreError(f"{self.path} stores no hidden states (captured with layers=()); "
                             f"capture again with layers to read them")
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


# -- writing a shard ------------------------------------------------------------------------


def push_shard(remote: RemoteDir, local: Path, shard: int, labels: list[str], *,
               keep_stats: bool) -> None:
    """Upload a finished shard: its tensors first, its stats (which mark it done) last;
    then drop the uploaded tensors (and, unless ``keep_stats``, the stats) from the mirror,
    which fetches them again if they are read."""
    files = [f"tensors/{label}/{shard_name(shard)}.safetensors" for label in labels]
    files.append(f"stats/{shard_name(shard)}.parquet")
    for rel in files:
        remote.push(local / rel, rel)
    for rel in files if not keep_stats else files[:-1]:
        (local / rel).unlink()


@dataclasses.dataclass(frozen=True)
class BatchStats:
    """The statistics of one batch, still as tensors (the writer makes the table)."""

    batch: list[int]
    seqs: list[Sequence[int]]
    per_model: dict[str, TokenStats]
    per_pair: dict[tuple[str, str], PairStats]


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """A shard computed and not yet written: its tensor files' contents and statistics."""

    shard: int
    key: str
    tensors: dict[str, dict[str, Tensor]]
    """label -> the tensors of its file; empty when the run writes no tensor files."""
    batches: list[BatchStats]
    tokenizer: Any
    pairs: tuple[tuple[str, str], ...] | None


class ShardWriter:
    """Writes shards on one background thread, in the order they are submitted, while the
    caller computes the next: at most one shard waits in the queue besides the one being
    written (back-pressure: ``submit`` blocks until there is room).

    The first error of a write stops the writer (later shards are dropped, never written
    out of order) and is raised in the caller: by ``submit``, ``check`` or on leaving the
    ``with`` block, which waits for every submitted shard first. When the caller fails, the
    shards already computed are still written before its error goes on."""

    def __init__(self, depth: int = 1) -> None:
        self._jobs: queue.Queue[Callable[[], None] | None] = queue.Queue(maxsize=depth)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="difflens-shard-writer",
                                        daemon=True)
        self._thread.start()

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            if self._error is None:
                try:
                    job()
                except BaseException as exc:  # noqa: BLE001 (raised again in the caller)
                    self._error = exc

    def check(self) -> None:
        """Raise the writer's error, if a write failed."""
        if self._error is not None:
            raise self._error

    def submit(self, job: Callable[[], None]) -> None:
        self.check()
        self._jobs.put(job)

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._jobs.put(None)
        self._thread.join()
        if exc_type is None:
            self.check()


def write_shard(out: Path, result: ShardResult, remote: RemoteDir | None, *,
                 keep_stats: bool = True) -> None:
    """Write a computed shard: its tensor files, then its statistics (which mark it done);
    then, for a remote store, upload them in that order."""
    shard = result.shard
    meta = {"difflens_key": result.key, "shard": str(shard)}
    for label, tensors in result.tensors.items():
        write_tensors_atomic(out / "tensors" / label / f"{shard_name(shard)}.safetensors",
                             tensors, {**meta, "model": label})
    frames = [stats_frame(b, result.tokenizer, result.pairs) for b in result.batches]
    frame = pd.concat(frames, ignore_index=True).sort_values(["prompt_idx", "pos"], kind="stable")
    write_parquet_atomic(out / "stats" / f"{shard_name(shard)}.parquet",
                         frame.reset_index(drop=True))
    if remote is not None:
        push_shard(remote, out, shard, list(result.tensors), keep_stats=keep_stats)


def stats_frame(
    b: BatchStats,
    tokenizer: Any,
    pairs: tuple[tuple[str, str], ...] | None,
) -> pd.DataFrame:
    """Per-token statistics of one batch (rows: every token of every sequence, in order).
    ``pairs`` is the config's: ``None`` names a pair's own columns without a prefix."""
    ids = [t for s in b.seqs for t in s]
    cols: dict[str, Any] = {
        "prompt_idx": np.repeat(np.asarray(b.batch, dtype=np.int64), [len(s) for s in b.seqs]),
        "pos": np.concatenate([np.arange(len(s)) for s in b.seqs]),
        "token_id": np.asarray(ids, dtype=np.int64),
        "token": tokenizer.convert_ids_to_tokens(ids),
    }
    for label, st in b.per_model.items():
        cols[f"{label}_entropy"] = st.entropy.numpy()
        cols[f"{label}_logprob_next"] = st.logprob_next.numpy()
        cols[f"{label}_topk_ids"] = list(st.topk_ids.numpy().astype("int32"))
        cols[f"{label}_topk_logprobs"] = list(st.topk_logprobs.numpy())
    for pr, ps in b.per_pair.items():
        name = None if pairs is None else pr
        for stat, values in zip(PAIR_COLUMNS, (ps.kl_tuned_base, ps.kl_base_tuned,
                                               ps.top1_agree), strict=True):
            v = values.numpy()
            cols[pair_column(name, stat)] = v.astype(bool) if stat == "top1_agree" else v
    return pd.DataFrame(cols)
