"""Batched capture of all-layer activations and next-token statistics into a run store.

The plan (config, shards, batches, cache key) is ``plan``; this module
runs it: the forward pass, the shard jobs and resuming after a kill.

``capture`` tokenizes the prompts, splits them into shards fixed by the data (never by the
batch size), and for each shard runs length-bucketed batches through every model with
scoped hooks on the real Hugging Face modules. It writes the shard's tensors and per-token
statistics atomically, then moves on; a rerun skips finished shards, so a killed run
resumes and ends with byte-identical files.
"""

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from jaxtyping import Float
from torch import Tensor

from difflens._io import (
    RemoteDir,
    check_writable,
    is_uri,
    remove_stale_temporaries,
    write_json_atomic,
    write_parquet_atomic,
    write_tensors_atomic,
)
from difflens.capture.plan import (
    KEY_VERSION,
    CaptureConfig,
    Positions,
    batches_of,
    cache_key,
    plan_shards,
    rows_of,
    tokenize_prompts,
)
from difflens.capture.stats import next_token_stats
from difflens.capture.store import (
    FORMAT_VERSION,
    MANIFEST,
    RUN_JSON,
    RunStore,
    claim_mirror,
    index_of,
    mirror_dir,
    refresh,
    shard_name,
)
from difflens.errors import DifflensWarning, InputError, StoreError
from difflens.models.batching import accepts, pad_batch
from difflens.models.engines import RayEngine, map_with_models, resolve_engine
from difflens.models.hooks import record_layers
from difflens.models.layers import parse_layers
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair, models_of
from difflens.models.wrapping import Models, as_models


@dataclasses.dataclass(frozen=True)
class BatchOutput:
    """One padded forward pass: states and logits still padded, with where each row starts."""

    hidden: dict[int, Float[Tensor, "batch seq d_model"]]
    """Captured layer -> padded hidden states."""
    logits: Float[Tensor, "batch seq vocab"]
    offsets: list[int]
    """Column of each sequence's first token (0 with right padding)."""

    @property
    def width(self) -> int:
        return int(self.logits.shape[1])

    def sequence(self, b: int, length: int) -> slice:
        return slice(self.offsets[b], self.offsets[b] + length)

    def flat_rows(self, rows: Sequence[Sequence[int]]) -> Tensor:
        """Indices into the flattened ``[batch * seq]`` axis of each sequence's positions."""
        w = self.width
        flat = [b * w + self.offsets[b] + p for b, ps in enumerate(rows) for p in ps]
        return torch.tensor(flat, dtype=torch.long, device=self.logits.device)


def forward_batch(
    lm: LoadedModel,
    seqs: Sequence[Sequence[int]],
    layers: Sequence[int],
    padding_side: str = "right",
    *,
    gather: bool = True,
) -> BatchOutput:
    """One padded forward pass that records ``layers`` through scoped hooks.

    With ``gather`` every state comes back on ``lm.device``, where the logits are. Without
    it, a model split over devices leaves each state where its layer ran, so a caller that
    keeps only some rows (capture) moves just those, and all-layer states never pile up on
    one device.
    """
    ids, mask, pos = pad_batch(seqs, padding_side, lm.device)
    kwargs: dict[str, Any] = {"input_ids": ids, "attention_mask": mask, "use_cache": False}
    if accepts(lm.model, "position_ids"):
        kwargs["position_ids"] = pos
    with torch.inference_mode(), \
            record_layers(lm, layers, device=lm.device if gather else None) as rec:
        logits = lm.model(**kwargs).logits
    width = ids.shape[1]
    offsets = [0 if padding_side == "right" else width - len(s) for s in seqs]
    return BatchOutput(hidden={layer: rec[layer] for layer in layers}, logits=logits,
                       offsets=offsets)


# -- the run ------------------------------------------------------------------------------


def capture(
    model_or_pair: "LoadedModel | ModelPair | Models",
    prompts: Sequence[str],
    *,
    store: str | Path,
    tokenizer: Any = None,
    layers: str | int | Sequence[int] = "all",
    positions: Positions = "all",
    store_dtype: str = "float32",
    top_k: int = 5,
    logprob_positions: Sequence[int] = (),
    truncate: bool = True,
    batch_size: int = 32,
    max_batch_tokens: int | None = None,
    shard_mb: int = 128,
    padding_side: str = "right",
    progress: bool = False,
    engine: "str | RayEngine | None" = None,
) -> RunStore:
    """Capture hidden states and next-token statistics for ``prompts`` into ``store``.

    Args:
        model_or_pair: one ``LoadedModel`` (label ``model``) or a ``ModelPair``
            (labels ``base`` and ``tuned``; both read the same token ids); or plain
            ``transformers`` models (one, or a ``(base, tuned)`` tuple) with ``tokenizer``.
        prompts: the texts; each is tokenized with the model's special tokens.
        store: the run directory, or a filesystem URI (``s3://bucket/run``, any filesystem
            ``pyarrow.fs`` opens; written through a local mirror, file by file, each file
            whole). A finished run with the same cache key is reused; an unfinished one is
            resumed.
        tokenizer: the tokenizer of plain ``transformers`` models (wrapped on entry).
        layers: ``"all"``, ``"0,3,5"``, an int or a list (negatives count from the end).
        positions: ``"all"``, ``"last"`` or a list of token indices to store states at.
        store_dtype: ``float32`` or ``float16`` for stored states.
        top_k: top next tokens recorded per position.
        logprob_positions: positions at which to store the full log-prob vector.
        truncate: keep the last context-length tokens of a too-long prompt (counted in the
            manifest) instead of raising.
        batch_size: most prompts in one forward pass.
        max_batch_tokens: most padded tokens in one forward pass (default: sized to the
            vocabulary so the logits fit in about 1 GB).
        shard_mb: target size of a tensor shard.
        padding_side: ``right`` or ``left``; the results do not depend on it.
        progress: show a rich progress bar with tokens/s on stderr.
        engine: ``"local"`` (this process), ``"ray"`` or a ``RayEngine`` (actors that load the
            models once and write whole shards into the store); default: the engine set by
            ``use_engine``, else local. The shard plan and the cache key do not depend on it,
            so a run started on one engine resumes on the other, with identical files.

    Returns:
        The finished ``RunStore``.
    """
    model_or_pair = as_models(model_or_pair, tokenizer=tokenizer)
    models = models_of(model_or_pair)
    first = next(iter(models.values()))
    if not prompts:
        raise InputError("no prompts to capture")
    for i, p in enumerate(prompts):
        if not isinstance(p, str) or not p.strip():
            raise InputError(f"prompt {i} is empty; every prompt needs text")
    layer_idx = parse_layers(layers, first)
    layer_map: dict[int, int] | None = None
    if isinstance(model_or_pair, ModelPair) and model_or_pair.layer_map is not None:
        layer_map = {b: model_or_pair.tuned_layer(b) for b in layer_idx}
    pos_cfg: str | tuple[int, ...] = positions if isinstance(positions, str) else tuple(
        int(p) for p in positions)
    vocab = int(first.model.get_output_embeddings().weight.shape[0])
    if max_batch_tokens is None:
        max_batch_tokens = max(64, min(2048, 2**30 // (4 * vocab * 2 * len(models))))
    cfg = CaptureConfig(
        layers=layer_idx, positions=pos_cfg, store_dtype=store_dtype, top_k=top_k,
        logprob_positions=tuple(int(p) for p in logprob_positions), truncate=truncate,
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, shard_mb=shard_mb,
        padding_side=padding_side,
    )
    max_lens = [m.max_length for m in models.values() if m.max_length]
    token_ids, truncated = tokenize_prompts(first, prompts, min(max_lens) if max_lens else None,
                                            truncate)
    n_trunc = sum(truncated)
    if n_trunc:
        warnings.warn(f"{n_trunc} prompt(s) were longer than the context and were truncated "
                      f"from the left", DifflensWarning, stacklevel=2)
    key = cache_key(models, token_ids, cfg, layer_map)

    remote = RemoteDir(str(store)) if is_uri(store) else None
    out = Path(store) if remote is None else mirror_dir(str(store))
    if remote is not None:
        refresh(remote, out, (MANIFEST, RUN_JSON))
    if (out / MANIFEST).is_file():
        done = RunStore.open(out if remote is None else str(store))
        if done.key == key:
            return done
        if done.manifest.get("key_version", 1) < KEY_VERSION:
            raise StoreError(
                f"{store} holds a run keyed by an older difflens (key version "
                f"{done.manifest.get('key_version', 1)}, now {KEY_VERSION}): it still reads "
                f"with RunStore.open, but cannot be reused; choose another --out or delete it"
            )
        raise StoreError(
            f"{store} already holds a different finished run (key {done.key[:12]}, this one "
            f"{key[:12]}); choose another --out or delete it"
        )
    check_writable(out)
    if remote is not None:
        remote.check_writable()
        claim_mirror(out, key)
    remove_stale_temporaries(out)
    lengths = [len(t) for t in token_ids]
    rows = [len(rows_of(n, cfg.positions)) for n in lengths]
    elem = 2 if cfg.store_dtype == "float16" else 4
    bytes_per_row = sum(len(cfg.layers) * m.d_model * elem for m in models.values())
    run_json = out / RUN_JSON
    if run_json.is_file():
        prior = json.loads(run_json.read_text())
        if prior.get("key") != key and prior.get("key_version", 1) < KEY_VERSION:
            raise StoreError(
                f"{store} holds an unfinished run keyed by an older difflens (key version "
                f"{prior.get('key_version', 1)}, now {KEY_VERSION}); delete it or choose "
                f"another --out"
            )
        if prior.get("key") != key:
            raise StoreError(
                f"{store} holds an unfinished different run (key {str(prior.get('key'))[:12]}); "
                f"rerun that capture to finish it, or choose another --out"
            )
        plan = prior["plan"]
    else:
        plan = plan_shards(rows, bytes_per_row, cfg.shard_mb)
        write_parquet_atomic(out / "prompts.parquet", pd.DataFrame({
            "prompt_idx": range(len(prompts)), "text": list(prompts), "token_ids": token_ids,
            "n_tokens": lengths,
            "truncated": truncated,
        }))
        write_json_atomic(run_json, {
            "key": key, "key_version": KEY_VERSION, "format_version": FORMAT_VERSION,
            "config": dataclasses.asdict(cfg),
            "plan": plan, "labels": list(models), "layer_map": layer_map,
        })
        if remote is not None:
            remote.push(out / "prompts.parquet", "prompts.parquet")
            remote.push(run_json, RUN_JSON)

    total_tokens = sum(lengths)
    finished = _finished(remote, out)
    todo = [shard for shard in range(len(plan))
            if f"{shard_name(shard)}.parquet" not in finished]
    shard_tokens = [sum(lengths[start:end]) for start, end in plan]
    ray_engine = resolve_engine(engine)
    with _progress(progress, total_tokens) as advance:
        advance(total_tokens - sum(shard_tokens[s] for s in todo))
        if ray_engine is None:
            for shard in todo:
                start, end = plan[shard]
                _run_shard(out, shard, range(start, end), token_ids, models, cfg, layer_map,
                           key, advance)
                if remote is not None:
                    _push_shard(remote, out, shard, list(models), keep_stats=True)
        else:
            job = functools.partial(shard_job, out=str(store if remote else out.resolve()),
                                    plan=plan, token_ids=token_ids, cfg=cfg,
                                    layer_map=layer_map, key=key)
            map_with_models(ray_engine, models, job, todo,
                            on_result=lambda i, _r: advance(shard_tokens[todo[i]]))

    n_shards = len(plan)
    finished = _finished(remote, out)
    missing = [s for s in range(n_shards) if f"{shard_name(s)}.parquet" not in finished]
    if missing:
        raise StoreError(
            f"{store} lacks {len(missing)} of {n_shards} shards after the run (first: "
            f"{shard_name(missing[0])}): on a cluster, --out must be a folder every node "
            f"sees or a URI such as s3://bucket/run; rerun the same command to finish")
    remove_stale_temporaries(out)  # left by a worker killed while writing
    if remote is not None:
        for tmp in remote.temporaries():
            remote.fs.delete_file(tmp)
    write_parquet_atomic(out / "index.parquet", index_of(plan, rows))
    write_json_atomic(out / MANIFEST, {
        "format_version": FORMAT_VERSION,
        "key_version": KEY_VERSION,
        "key": key,
        "models": {k: m.identity.to_dict() for k, m in models.items()},
        "layer_map": layer_map,
        "config": cfg.key_fields(),
        "n_layers": first.n_layers,
        "n_prompts": len(prompts),
        "n_tokens": total_tokens,
        "n_rows": int(sum(rows)),
        "n_truncated": n_trunc,
        "n_shards": n_shards,
        "vocab_size": vocab,
    })
    if remote is not None:  # the manifest goes last: the remote run is complete with it
        remote.push(out / "index.parquet", "index.parquet")
        remote.push(out / MANIFEST, MANIFEST)
    return RunStore.open(out if remote is None else str(store))


def _finished(remote: RemoteDir | None, out: Path) -> set[str]:
    """Names of the stats files in the store: one per finished shard."""
    if remote is not None:
        return set(remote.files("stats"))
    return {f.name for f in (out / "stats").glob("shard-*.parquet")}


def shard_job(
    models: dict[str, LoadedModel],
    shard: int,
    *,
    out: str,
    plan: Sequence[Sequence[int]],
    token_ids: Sequence[Sequence[int]],
    cfg: CaptureConfig,
    layer_map: dict[int, int] | None,
    key: str,
) -> dict[str, Any]:
    """One shard on a worker of the Ray engine: skipped when its stats file exists (a retry
    of a shard that finished before its worker died), else captured and written into the
    store (a folder every worker sees, or a URI: through this machine's mirror, uploaded
    tensors first and stats last, then deleted from the mirror)."""
    stats = f"stats/{shard_name(shard)}.parquet"
    remote = RemoteDir(out) if is_uri(out) else None
    path = Path(out) if remote is None else mirror_dir(out)
    if remote.exists(stats) if remote is not None else (path / stats).is_file():
        return {"shard": shard, "written": False}
    start, end = plan[shard]
    _run_shard(path, shard, range(start, end), token_ids, models, cfg, layer_map, key,
               lambda _n: None)
    if remote is not None:
        _push_shard(remote, path, shard, list(models), keep_stats=False)
    return {"shard": shard, "written": True}


def _push_shard(remote: RemoteDir, local: Path, shard: int, labels: list[str], *,
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


def _run_shard(
    out: Path,
    shard: int,
    prompt_range: range,
    token_ids: Sequence[Sequence[int]],
    models: dict[str, LoadedModel],
    cfg: CaptureConfig,
    layer_map: dict[int, int] | None,
    key: str,
    advance: Callable[[int], None],
) -> None:
    """Capture one shard of prompts and write its files (tensors first, stats last)."""
    idx = list(prompt_range)
    lengths = {i: len(token_ids[i]) for i in idx}
    keep = {i: rows_of(lengths[i], cfg.positions) for i in idx}
    full_lp = {i: rows_of(lengths[i], cfg.logprob_positions) for i in idx}
    # Rows are stored in prompt order, whatever order the batches run in.
    start, lp_start, acc, lp_acc = {}, {}, 0, 0
    for i in idx:
        start[i], lp_start[i] = acc, lp_acc
        acc, lp_acc = acc + len(keep[i]), lp_acc + len(full_lp[i])
    dtype = torch.float16 if cfg.store_dtype == "float16" else torch.float32
    layers_of = {label: [layer_map[x] for x in cfg.layers] if (label == "tuned" and layer_map)
                 else list(cfg.layers) for label in models}
    buffers = {label: {layer: torch.empty((acc, lm.d_model), dtype=dtype) for layer in cfg.layers}
               for label, lm in models.items()}
    vocab = int(next(iter(models.values())).model.get_output_embeddings().weight.shape[0])
    lp_buf = {label: torch.empty((lp_acc, vocab)) for label in models} if lp_acc else {}
    frames = []
    order = sorted(idx, key=lambda i: (-lengths[i], i))
    for batch in batches_of([len(t) for t in token_ids], order, cfg):
        seqs = [token_ids[i] for i in batch]
        dst = torch.tensor([start[i] + k for i in batch for k in range(len(keep[i]))])
        lp_dst = torch.tensor([lp_start[i] + k for i in batch for k in range(len(full_lp[i]))])
        logits: dict[str, Tensor] = {}
        for label, lm in models.items():
            res = forward_batch(lm, seqs, layers_of[label], cfg.padding_side, gather=False)
            src = res.flat_rows([keep[i] for i in batch])
            for base_l, model_l in zip(cfg.layers, layers_of[label], strict=True):
                h = res.hidden[model_l].reshape(-1, res.hidden[model_l].shape[-1])
                rows = h.index_select(0, src.to(h.device)).to("cpu", dtype)
                buffers[label][base_l].index_copy_(0, dst, rows)
            flat = res.logits.reshape(-1, res.logits.shape[-1])
            logits[label] = flat.index_select(0, res.flat_rows([range(lengths[i]) for i in batch]))
            if lp_acc:
                lp_src = res.flat_rows([full_lp[i] for i in batch])
                lp_buf[label].index_copy_(
                    0, lp_dst, torch.log_softmax(flat.index_select(0, lp_src).float(), -1).cpu())
            del res, flat
        frames.append(_stats_frame(batch, seqs, logits, models, cfg.top_k))
        advance(sum(len(s) for s in seqs))

    meta = {"difflens_key": key, "shard": str(shard)}
    prompt_col = torch.tensor([i for i in idx for _ in keep[i]], dtype=torch.long)
    pos_col = torch.tensor([p for i in idx for p in keep[i]], dtype=torch.long)
    for label in models:
        tensors: dict[str, Tensor] = {f"layer.{la}": buf for la, buf in buffers[label].items()}
        tensors["prompt_idx"], tensors["token_pos"] = prompt_col, pos_col
        if lp_acc:
            tensors["logprobs"] = lp_buf[label]
            tensors["logprobs_prompt_idx"] = torch.tensor(
                [i for i in idx for _ in full_lp[i]], dtype=torch.long)
            tensors["logprobs_pos"] = torch.tensor([p for i in idx for p in full_lp[i]],
                                                   dtype=torch.long)
        write_tensors_atomic(out / "tensors" / label / f"{shard_name(shard)}.safetensors",
                             tensors, {**meta, "model": label})
    frame = pd.concat(frames, ignore_index=True).sort_values(["prompt_idx", "pos"], kind="stable")
    write_parquet_atomic(out / "stats" / f"{shard_name(shard)}.parquet",
                         frame.reset_index(drop=True))


def _stats_frame(
    batch: Sequence[int],
    seqs: Sequence[Sequence[int]],
    logits: dict[str, Tensor],
    models: dict[str, LoadedModel],
    top_k: int,
) -> pd.DataFrame:
    """Per-token statistics of one batch (rows: every token of every sequence, in order)."""
    ids = [t for s in seqs for t in s]
    next_ids = torch.tensor([t for s in seqs for t in [*s[1:], -1]], dtype=torch.long)
    tokenizer = next(iter(models.values())).tokenizer
    cols: dict[str, Any] = {
        "prompt_idx": np.repeat(np.asarray(batch, dtype=np.int64), [len(s) for s in seqs]),
        "pos": np.concatenate([np.arange(len(s)) for s in seqs]),
        "token_id": np.asarray(ids, dtype=np.int64),
        "token": tokenizer.convert_ids_to_tokens(ids),
    }
    per_model, pair = next_token_stats(logits, next_ids, top_k)
    for label, st in per_model.items():
        cols[f"{label}_entropy"] = st.entropy.numpy()
        cols[f"{label}_logprob_next"] = st.logprob_next.numpy()
        cols[f"{label}_topk_ids"] = list(st.topk_ids.numpy().astype("int32"))
        cols[f"{label}_topk_logprobs"] = list(st.topk_logprobs.numpy())
    if pair is not None:
        cols["kl_tuned_base"] = pair.kl_tuned_base.numpy()
        cols["kl_base_tuned"] = pair.kl_base_tuned.numpy()
        cols["top1_agree"] = pair.top1_agree.numpy().astype(bool)
    return pd.DataFrame(cols)


@contextmanager
def _progress(show: bool, total: int) -> Iterator[Callable[[int], None]]:
    if not show:
        yield lambda _n: None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        ProgressColumn,
        TextColumn,
        TimeRemainingColumn,
    )
    from rich.text import Text

    class TokensPerSecond(ProgressColumn):
        def render(self, task: Any) -> Text:
            speed = task.finished_speed or task.speed
            return Text("-- tok/s" if speed is None else f"{speed:,.0f} tok/s", style="cyan")

    with Progress(
        TextColumn("capture"), BarColumn(), MofNCompleteColumn(), TextColumn("tokens"),
        TokensPerSecond(), TimeRemainingColumn(), transient=False,
    ) as bar:
        task = bar.add_task("capture", total=total)
        yield lambda n: bar.advance(task, n)
        bar.update(task, completed=total)


__all__ = [
    "CaptureConfig",
    "capture",
    "forward_batch",
    "parse_layers",
    "record_layers",
]

