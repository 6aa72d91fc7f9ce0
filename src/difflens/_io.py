"""Shared plumbing with no model code: atomic writes, the one fingerprint for every cache
key, JSONL lines (plain or gzipped) and progress bars.

Every file difflens keeps is written to a temporary name in the same folder, flushed and
renamed into place, so a reader sees the old file or the whole new one, never part of it.
"""

import errno
import gzip
import json
import os
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from difflens.errors import InputError, StoreError


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success fsync it and rename it into place.

    Readers see either the old file or the whole new one, never a partial write. A full
    disk or a read-only folder becomes a one-line ``StoreError``.
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


def _canonical(obj: Any) -> Any:
    """JSON for what ``json`` cannot write: arrays and tensors by dtype, shape and a hash of
    their bytes (never their truncated repr), dataclasses as dicts, sets sorted, the rest
    by ``str``."""
    import dataclasses
    import hashlib

    import numpy as np

    if isinstance(obj, Tensor):  # by its bytes, so bfloat16 and fp8 hash too
        t = obj.detach().cpu().contiguous().reshape(-1)
        return {"dtype": str(obj.dtype), "shape": list(obj.shape),
                "sha256": hashlib.sha256(t.view(torch.uint8).numpy().tobytes()).hexdigest()}
    if isinstance(obj, np.ndarray):
        return {"dtype": str(obj.dtype), "shape": list(obj.shape),
                "sha256": hashlib.sha256(np.ascontiguousarray(obj).tobytes()).hexdigest()}
    if isinstance(obj, np.generic):
        return obj.item()
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {"__type__": type(obj).__name__, **dataclasses.asdict(obj)}
    if isinstance(obj, set | frozenset):
        return sorted(obj, key=str)
    return str(obj)


def fingerprint(obj: Any, *, length: int = 16) -> str:
    """The one cache key of difflens: a SHA-256 of ``obj`` as canonical JSON (sorted keys).

    As in HF datasets' fingerprints, the key holds everything that changes a stored result
    (model identity, inputs, settings, a format version) and nothing that does not (batch
    sizes, paths, timings). Arrays and tensors are hashed by content.

    Args:
        obj: JSON-like data (lists, dicts, numbers, strings), arrays, tensors, dataclasses.
        length: hex characters kept (at most 64).
    """
    import hashlib

    text = json.dumps(obj, sort_keys=True, default=_canonical)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


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


def read_utf8(path: Path) -> str:
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data[: exc.start].count(b"\n") + 1
        raise InputError(
            f"{path}:{line}: not valid UTF-8 at byte offset {exc.start} "
            f"(byte 0x{data[exc.start]:02x}); re-save the file as UTF-8"
        ) from None


def jsonl_objects(path: Path, lines: Iterable[str] | None = None) -> Iterator[tuple[str, Any]]:
    """``("file:line", parsed JSON)`` for each non-blank line (of ``lines``, default the
    file's text); a line that is not JSON raises one ``InputError`` naming it."""
    for i, line in enumerate(read_utf8(path).splitlines() if lines is None else lines, 1):
        if not line.strip():
            continue
        try:
            yield f"{path}:{i}", json.loads(line)
        except json.JSONDecodeError as exc:
            raise InputError(f"{path}:{i}: not valid JSON ({exc.msg}); fix the line") from None


def text_lines(path: Path) -> list[str] | None:
    if path.suffix == ".gz":
        try:
            return gzip.decompress(path.read_bytes()).decode("utf-8").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            raise InputError(f"{path}: not a gzipped UTF-8 file ({exc})") from None
    return None


Progress = Callable[[str, int], Callable[[int, str], None]]
"""``progress(description, total)`` returns ``advance(n, info)``."""


@contextmanager
def rich_progress(enabled: bool) -> Iterator[Progress]:
    if not enabled:
        def ignore(_n: int, _info: str = "") -> None:
            return None

        def silent(_desc: str, _total: int) -> Callable[[int, str], None]:
            return ignore
        yield silent
        return
    from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
    from rich.progress import Progress as RichProgress

    with RichProgress(TextColumn("{task.description:<22}"), BarColumn(), MofNCompleteColumn(),
                      TimeElapsedColumn(), TextColumn("{task.fields[info]}")) as bar:
        def start(desc: str, total: int) -> Callable[[int, str], None]:
            task = bar.add_task(desc, total=total, info="")

            def advance(n: int, info: str = "") -> None:
                bar.update(task, advance=n, info=info)
            return advance
        yield start


def is_uri(location: object) -> bool:
    """Whether a store location is a filesystem URI (``s3://...``, ``file://...``)."""
    return isinstance(location, str) and "://" in location


class RemoteDir:
    """A folder on any pyarrow filesystem (``s3://``, ``gs://``, ``hdfs://``, ``file://``),
    read and written file by file through a local mirror folder.

    A file is uploaded whole once it is complete locally: object stores publish an object
    only when its upload finishes; on other filesystems it goes to a temporary name and is
    moved into place. So a reader of the remote folder sees each file whole or not at all,
    as with ``atomic_path``.
    """

    def __init__(self, uri: str) -> None:
        import pyarrow.fs as pafs

        try:
            self.fs, self.root = pafs.FileSystem.from_uri(uri)
        except (OSError, ValueError) as exc:  # pyarrow's ArrowInvalid is a ValueError
            raise InputError(f"cannot open the store {uri}: {str(exc).splitlines()[0]}; "
                             f"check the URI and the credentials") from exc
        self.uri = uri
        self.root = self.root.rstrip("/")
        self._object_store = self.fs.type_name in ("s3", "gcs", "abfs")

    def _path(self, rel: str) -> str:
        return f"{self.root}/{rel}"

    def exists(self, rel: str) -> bool:
        import pyarrow.fs as pafs

        return bool(self.fs.get_file_info(self._path(rel)).type == pafs.FileType.File)

    def files(self, rel: str) -> list[str]:
        """Names of the files in the folder ``rel`` (empty when it does not exist)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self._path(rel), allow_not_found=True))
        return sorted(i.base_name for i in infos if i.type == pafs.FileType.File
                      and not i.base_name.startswith("."))

    def push(self, local: Path, rel: str) -> None:
        """Upload the complete local file ``local`` as ``rel``."""
        target = self._path(rel)
        parent = target.rsplit("/", 1)[0]
        self.fs.create_dir(parent, recursive=True)
        dest = target if self._object_store else f"{parent}/.{local.name}.{os.getpid()}.tmp"
        with local.open("rb") as src, self.fs.open_output_stream(dest) as out:
            while chunk := src.read(2**24):
                out.write(chunk)
        if dest != target:
            self.fs.move(dest, target)

    def check_writable(self) -> None:
        """Prove that files can be written here, or raise a one-line StoreError."""
        probe = self._path(f".probe-{os.getpid()}")
        try:
            self.fs.create_dir(self.root, recursive=True)
            with self.fs.open_output_stream(probe) as out:
                out.write(b"ok")
            self.fs.delete_file(probe)
        except OSError as exc:
            raise StoreError(f"the store {self.uri} is not writable "
                             f"({str(exc).splitlines()[0]}); check the URI and the "
                             f"credentials, or choose another --out") from exc

    def size(self) -> int:
        """Bytes of every file under the folder."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True,
                                                        allow_not_found=True))
        return sum(i.size or 0 for i in infos if i.type == pafs.FileType.File)

    def temporaries(self) -> list[str]:
        """Temporary files left under the folder by killed uploads (not on object stores,
        whose unfinished uploads never become objects)."""
        import pyarrow.fs as pafs

        infos = self.fs.get_file_info(pafs.FileSelector(self.root, recursive=True,
                                                        allow_not_found=True))
        return [i.path for i in infos if i.type == pafs.FileType.File
                and i.base_name.startswith(".") and i.base_name.endswith(".tmp")]

    def pull(self, rel: str, local: Path, *, fresh: bool = False) -> bool:
        """Download ``rel`` to ``local`` (atomically, replacing it) unless it is there
        already and not ``fresh``; False if ``rel`` does not exist."""
        if local.is_file() and not fresh:
            return True
        if not self.exists(rel):
            return False
        with atomic_path(local) as tmp, self.fs.open_input_stream(self._path(rel)) as src, \
                tmp.open("wb") as dst:
            while chunk := src.read(2**24):
                dst.write(chunk)
        return True
