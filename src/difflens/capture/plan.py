"""A capture run's plan, fixed by the data and never by the batch size: its config, the
tokenized prompts, the stored rows of each prompt, the shards, the length-bucketed batches,
and the cache key (the one fingerprint of everything that changes the result)."""

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from difflens._io import fingerprint
from difflens.capture.store import FORMAT_VERSION
from difflens.errors import InputError
from difflens.models.loading import LoadedModel

Positions = Literal["all", "last"] | Sequence[int]

KEY_VERSION = 2
"""How cache keys are made: 2 = ``difflens._io.fingerprint``; 1 = before it."""


@dataclasses.dataclass(frozen=True)
class CaptureConfig:
    """What to capture. Everything here except the batching fields is in the cache key."""

    layers: tuple[int, ...]
    """Captured layers, normalised to ``0..n_layers`` (base numbering for a pair or set);
    empty: no hidden states are stored, only the statistics."""
    positions: str | tuple[int, ...] = "all"
    """``"all"`` token positions, the ``"last"`` one, or a tuple of indices (negatives
    count from the end; indices a prompt does not have are skipped)."""
    store_dtype: str = "float32"
    """dtype of stored hidden states: ``float32`` or ``float16``."""
    top_k: int = 5
    """How many top next tokens to record per position."""
    logprob_positions: tuple[int, ...] = ()
    """Positions at which to store the full next-token log-prob vector."""
    truncate: bool = True
    """Truncate prompts longer than the context from the left (else raise)."""
    batch_size: int = 32
    """Most prompts in one forward pass (not in the key: it does not change the result)."""
    max_batch_tokens: int = 8192
    """Most padded tokens in one forward pass (not in the key)."""
    shard_mb: int = 128
    """Target size of one tensor shard; fixed per run once written to ``run.json``."""
    padding_side: str = "right"
    """Where padding goes inside a batch; results do not depend on it."""
    pairs: tuple[tuple[str, str], ...] | None = None
    """Label pairs ``(a, b)`` whose KL both ways and top-1 agreement are stored, in
    columns ``<a>-vs-<b>:kl_tuned_base`` (KL(b ‖ a)), ``<a>-vs-<b>:kl_base_tuned`` and
    ``<a>-vs-<b>:top1_agree``; ``None``: a pair's own (base, tuned) in the columns without
    a prefix, or none for one model. In the key only when not ``None``, so the keys of
    captures made before pairs existed do not change."""

    def __post_init__(self) -> None:
        if self.store_dtype not in ("float32", "float16"):
            raise InputError(f"store dtype must be float32 or float16, got {self.store_dtype!r}")
        if self.padding_side not in ("left", "right"):
            raise InputError(f"padding_side must be 'left' or 'right', got {self.padding_side!r}")
        if isinstance(self.positions, str) and self.positions not in ("all", "last"):
            raise InputError(f"positions must be 'all', 'last' or integers, got {self.positions!r}")
        if self.batch_size < 1 or self.max_batch_tokens < 1 or self.shard_mb < 1:
            raise InputError("batch_size, max_batch_tokens and shard_mb must be positive")
        if self.top_k < 1:
            raise InputError(f"top_k must be at least 1, got {self.top_k}")
        for pr in self.pairs or ():
            if (not isinstance(pr, tuple) or len(pr) != 2
                    or not all(isinstance(x, str) for x in pr) or pr[0] == pr[1]):
                raise InputError(f"a pair is two different model labels (a, b), got {pr!r}")

    def to_json(self) -> dict[str, Any]:
        """The config as ``run.json`` records it (``pairs`` only when set, so the
        ``run.json`` of a capture without pairs is what it was before they existed)."""
        out = dataclasses.asdict(self)
        if self.pairs is None:
            del out["pairs"]
        return out

    def key_fields(self) -> dict[str, Any]:
        return {
            "layers": list(self.layers),
            "positions": (self.positions if isinstance(self.positions, str)
                          else list(self.positions)),
            "store_dtype": self.store_dtype,
            "top_k": self.top_k,
            "logprob_positions": list(self.logprob_positions),
            "truncate": self.truncate,
        } | ({} if self.pairs is None else {"pairs": [list(p) for p in self.pairs]})



def tokenize_prompts(
    lm: LoadedModel, prompts: Sequence[str], max_len: int | None, truncate: bool
) -> tuple[list[list[int]], list[bool]]:
    enc = lm.tokenizer(list(prompts), add_special_tokens=True)["input_ids"]
    truncated: list[bool] = []
    out: list[list[int]] = []
    for i, ids in enumerate(enc):
        if not ids:
            raise InputError(f"prompt {i} tokenizes to nothing; remove it")
        if max_len is not None and len(ids) > max_len:
            if not truncate:
                raise InputError(
                    f"prompt {i} has {len(ids)} tokens, more than the context of {max_len}; "
                    f"shorten it or drop --no-truncate to keep its last {max_len} tokens"
                )
            ids = ids[-max_len:]
            truncated.append(True)
        else:
            truncated.append(False)
        out.append(list(ids))
    return out, truncated


def rows_of(n_tokens: int, positions: str | tuple[int, ...]) -> list[int]:
    if positions == "all":
        return list(range(n_tokens))
    if positions == "last":
        return [n_tokens - 1]
    assert isinstance(positions, tuple)
    resolved = [p + n_tokens if p < 0 else p for p in positions]
    return sorted({p for p in resolved if 0 <= p < n_tokens})


def stats_bytes_per_token(n_models: int, n_pairs: int) -> int:
    """About what one token's statistics take in memory before they are written (the
    frame's top-k columns hold one small array per token and model): how shards are sized
    when no hidden states are stored."""
    return 64 + 256 * n_models + 16 * n_pairs


def plan_shards(row_counts: Sequence[int], bytes_per_row: int, shard_mb: int) -> list[list[int]]:
    """Consecutive prompt ranges ``[start, end)`` whose stored rows fill about ``shard_mb``."""
    budget = max(1, shard_mb * 2**20 // max(bytes_per_row, 1))
    plan, start, acc = [], 0, 0
    for i, rows in enumerate(row_counts):
        if acc and acc + rows > budget:
            plan.append([start, i])
            start, acc = i, 0
        acc += max(rows, 1)
    plan.append([start, len(row_counts)])
    return plan


def cache_key(
    models: dict[str, LoadedModel],
    token_ids: Sequence[Sequence[int]],
    cfg: CaptureConfig,
    layer_map: Mapping[Any, Any] | None,
) -> str:
    """Hash of everything that changes the stored result, and nothing else."""
    idents = {k: {f: v for f, v in m.identity.to_dict().items() if f != "name"}
              for k, m in models.items()}
    return fingerprint({
        "format": FORMAT_VERSION,
        "key_version": KEY_VERSION,
        "models": idents,
        "prompts": fingerprint([list(map(int, ids)) for ids in token_ids], length=64),
        "config": cfg.key_fields(),
        "layer_map": layer_map,
    }, length=32)


# -- forward ------------------------------------------------------------------------------


def batches_of(lengths: Sequence[int], order: Sequence[int], cfg: CaptureConfig) -> list[list[int]]:
    """Group prompt indices (already sorted by length, longest first) into batches."""
    out: list[list[int]] = []
    cur: list[int] = []
    width = 0
    for i in order:
        w = max(width, lengths[i])
        if cur and (len(cur) >= cfg.batch_size or w * (len(cur) + 1) > cfg.max_batch_tokens):
            out.append(cur)
            cur, w = [], lengths[i]
        cur.append(i)
        width = w
    if cur:
        out.append(cur)
    return out


