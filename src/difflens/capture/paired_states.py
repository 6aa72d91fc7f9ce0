"""Per-token hidden states of a base and a tuned model at one layer, on disk in shards.

``capture_paired_states`` runs both models over texts (one batched forward per model per
batch of texts, the state read by the one hook site), drops padding and a BOS token the
tokenizer added (its state does not depend on the text, as the ADL leaves it out), and
writes safetensors shards of at most ``shard_tokens`` tokens each: ``base`` and ``tuned``
``[n, d_model]`` float32, and per token its ``text`` index, ``position`` in the text's
token ids and ``token`` id. No matrix of all tokens is held in memory. ``index.json``
(written last, atomically, like every shard) names the shards and the key of what was
captured; a folder whose key matches is reused, so a killed run does not capture again.

``PairedStates.batch_at(step)`` is the deterministic, seeded stream of training batches a
crosscoder takes (``analysis.crosscoder.train_crosscoder``): every epoch visits every token
once, in an order shuffled among shards (groups of shards in a seeded order) and within
them (a seeded permutation per group and epoch), so the batch of a step depends on the step
alone. ``PairedStates.batches`` reads every token in file order, with its text and
position, for the passes that score latents on texts.
"""

import dataclasses
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from jaxtyping import Float, Int
from torch import Tensor

from difflens._io import fingerprint, write_json_atomic, write_tensors_atomic
from difflens.capture.activation_diff import token_ids
from difflens.capture.engine import forward_batch
from difflens.errors import InputError
from difflens.models.loading import LoadedModel

_INDEX = "index.json"
_FORMAT = 1
SHARD_TOKENS = 65_536
"""Default tokens per shard (float32 at d_model 2048: 1 GiB for both models)."""
MIX_SHARDS = 2
"""Shards shuffled together: an epoch visits groups of this many shards."""


@dataclasses.dataclass(frozen=True)
class StateRows:
    """Consecutive tokens of a capture, both models' states and where each token stood."""

    base: Float[Tensor, "n d_model"]
    tuned: Float[Tensor, "n d_model"]
    text: Int[Tensor, " n"]
    position: Int[Tensor, " n"]
    token: Int[Tensor, " n"]


@dataclasses.dataclass(frozen=True)
class PairedStates:
    """A capture on disk (``folder``) and its seeded batch stream."""

    folder: Path
    layer: int
    d_model: int
    shards: tuple[str, ...]
    sizes: tuple[int, ...]
    """Tokens per shard."""
    n_texts: int
    key: str
    """Fingerprint of the models, texts, layer and token limit."""
    batch_size: int = 256
    """Tokens per ``batch_at`` batch."""
    seed: int = 0
    """Seed of the shuffle."""
    _cache: dict[Any, Any] = dataclasses.field(default_factory=dict, repr=False,
                                               compare=False)

    @property
    def n_tokens(self) -> int:
        return int(sum(self.sizes))

    def with_stream(self, batch_size: int, seed: int) -> "PairedStates":
        """The same capture with another batch size or shuffle seed."""
        if batch_size < 1:
            raise InputError(f"batch_size must be at least 1, got {batch_size}")
        return dataclasses.replace(self, batch_size=batch_size, seed=seed, _cache={})

    def read(self, shard: int) -> StateRows:
        """One shard's rows, in capture order."""
        from safetensors.torch import load_file

        t = load_file(str(self.folder / self.shards[shard]))
        return StateRows(t["base"], t["tuned"], t["text"], t["position"], t["token"])

    def batches(self, batch_size: int | None = None) -> Iterator[StateRows]:
        """Every token once, in capture order, ``batch_size`` at a time (default the
        stream's)."""
        size = batch_size or self.batch_size
        for s in range(len(self.shards)):
            rows = self.read(s)
            for a in range(0, len(rows.text), size):
                yield StateRows(*(getattr(rows, f.name)[a:a + size]
                                  for f in dataclasses.fields(StateRows)))

    def _groups(self) -> list[list[int]]:
        n = len(self.shards)
        return [list(range(g, min(g + MIX_SHARDS, n))) for g in range(0, n, MIX_SHARDS)]

    def _segment(self, epoch: int, group: int) -> tuple[Tensor, Tensor]:
        """The ``group``-th group of ``epoch``'s shard order, shuffled: ``(base, tuned)``.
        The two latest segments are kept in memory."""
        key = (epoch, group)
        if key not in self._cache:
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            groups = self._groups()
            order = torch.randperm(len(groups), generator=gen).tolist()
            rows = [self.read(s) for s in groups[order[group]]]
            base = torch.cat([r.base for r in rows])
            tuned = torch.cat([r.tuned for r in rows])
            perm = torch.randperm(len(base), generator=gen)
            while len(self._cache) >= 2:
                self._cache.pop(next(iter(self._cache)))
            self._cache[key] = (base[perm], tuned[perm])
        return self._cache[key]  # type: ignore[no-any-return]

    def batch_at(self, step: int) -> list[Tensor]:
        """Tokens ``[step * batch_size, (step + 1) * batch_size)`` of the endless stream of
        shuffled epochs: ``[base, tuned]``, each ``[batch_size, d_model]``."""
        groups = self._groups()
        ends = np.cumsum([sum(self.sizes[s] for s in g) for g in groups])
        n = int(ends[-1])
        base: list[Tensor] = []
        tuned: list[Tensor] = []
        at, left = step * self.batch_size, self.batch_size
        while left:
            epoch, offset = divmod(at, n)
            gen = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
            order = torch.randperm(len(groups), generator=gen).tolist()
            sizes = np.array([ends[0], *np.diff(ends)])[order]
            starts = np.concatenate([[0], np.cumsum(sizes)])
            g = int(np.searchsorted(starts, offset, side="right") - 1)
            inner = offset - int(starts[g])
            take = min(left, int(sizes[g]) - inner)
            b, t = self._segment(epoch, g)
            base.append(b[inner:inner + take])
            tuned.append(t[inner:inner + take])
            at, left = at + take, left - take
        return [torch.cat(base), torch.cat(tuned)]


def _read_index(folder: Path, key: str) -> PairedStates | None:
    try:
        meta = json.loads((folder / _INDEX).read_text())
    except (OSError, ValueError):
        return None
    if meta.get("format") != _FORMAT or meta.get("key") != key or not all(
            (folder / s).is_file() for s in meta["shards"]):
        return None
    return PairedStates(folder=folder, layer=int(meta["layer"]), d_model=int(meta["d_model"]),
                        shards=tuple(meta["shards"]), sizes=tuple(meta["sizes"]),
                        n_texts=int(meta["n_texts"]), key=key)


def capture_paired_states(base: LoadedModel, tuned: LoadedModel, texts: Sequence[str],
                          layer: int, folder: Path, *, max_tokens: int | None = None,
                          shard_tokens: int = SHARD_TOKENS, batch_size: int = 32,
                          progress: Callable[[int], None] | None = None) -> PairedStates:
    """Both models' states at ``layer`` on every token of ``texts`` (the base's token ids
    fed to both), written to ``folder`` in shards (see the module docstring).

    Args:
        base, tuned: the pair; they must share the tokenizer and ``d_model``.
        texts: the texts; ``max_tokens`` keeps each one's first tokens.
        layer: captured layer (0 = embeddings; negative counts from the end).
        folder: where the shards and ``index.json`` go; reused when its key matches.
        shard_tokens: most tokens per shard (does not change the result).
        batch_size: texts per forward pass (does not change the result).
        progress: called with the number of texts after each batch.
    """
    if base.d_model != tuned.d_model:
        raise InputError(f"the base's d_model {base.d_model} differs from the tuned model's "
                         f"{tuned.d_model}; a paired capture needs one residual width")
    if shard_tokens < 1 or batch_size < 1:
        raise InputError(f"shard_tokens and batch_size must be at least 1, got "
                         f"{shard_tokens} and {batch_size}")
    layer = base.layers.normalize(layer)
    seqs = token_ids(base, texts, max_tokens)
    key = fingerprint({"format": _FORMAT, "base": base.identity, "tuned": tuned.identity,
                       "seqs": seqs, "layer": layer})
    found = _read_index(folder, key)
    if found is not None:
        return found
    if folder.exists():
        shutil.rmtree(folder)  # another capture's shards: they do not match this run
    folder.mkdir(parents=True)
    bos = base.tokenizer.bos_token_id
    shards: list[str] = []
    sizes: list[int] = []
    pending: list[list[Tensor]] = []

    def flush(final: bool) -> None:
        while pending and (final or sum(len(p[2]) for p in pending) >= shard_tokens):
            cols = [torch.cat(c) for c in zip(*pending, strict=True)]
            n = min(shard_tokens, len(cols[2]))
            name = f"states-{len(shards):05d}.safetensors"
            write_tensors_atomic(folder / name, dict(zip(
                ("base", "tuned", "text", "position", "token"), (c[:n] for c in cols),
                strict=True)), {"layer": str(layer), "key": key})
            shards.append(name)
            sizes.append(n)
            pending[:] = [[c[n:] for c in cols]] if n < len(cols[2]) else []

    for start in range(0, len(seqs), batch_size):
        idx = [i for i in range(start, min(start + batch_size, len(seqs))) if seqs[i]]
        if idx:
            batch = [seqs[i] for i in idx]
            states = [forward_batch(lm, batch, [layer]).hidden[layer].detach()
                      .to("cpu", torch.float32) for lm in (base, tuned)]
            text: list[int] = []
            pos: list[int] = []
            rows: list[int] = []
            for r, i in enumerate(idx):
                first = 1 if bos is not None and seqs[i][0] == bos and len(seqs[i]) > 1 else 0
                pos += list(range(first, len(seqs[i])))
                text += [i] * (len(seqs[i]) - first)
                rows += [r] * (len(seqs[i]) - first)
            cols = torch.tensor(pos, dtype=torch.long)
            tok = torch.tensor([seqs[i][q] for i, q in zip(text, pos, strict=True)],
                               dtype=torch.long)
            at = torch.tensor(rows, dtype=torch.long)
            pending.append([states[0][at, cols].contiguous(),
                            states[1][at, cols].contiguous(),
                            torch.tensor(text, dtype=torch.long), cols, tok])
            flush(False)
        if progress is not None:
            progress(min(start + batch_size, len(seqs)) - start)
    flush(True)
    if not shards:
        raise InputError("no text has a token after its BOS; give texts with words in them")
    write_json_atomic(folder / _INDEX, {"format": _FORMAT, "key": key, "layer": layer,
                                        "d_model": base.d_model, "shards": shards,
                                        "sizes": sizes, "n_texts": len(seqs),
                                        "base": base.identity.name,
                                        "tuned": tuned.identity.name})
    found = _read_index(folder, key)
    assert found is not None
    return found


__all__ = ["MIX_SHARDS", "SHARD_TOKENS", "PairedStates", "StateRows", "capture_paired_states"]
