"""Batched capture of all-layer activations and next-token statistics into a run store.

The plan (config, shards, batches, cache key) is ``plan``; this module
runs it: the forward pass, the shard jobs and resuming after a kill.

``capture`` tokenizes the prompts, splits them into shards fixed by the data (never by the
batch size), and for each shard runs length-bucketed batches through every model with
scoped hooks on the real Hugging Face modules, each model once per batch. The statistics
of every model and of every pair asked for come from the same logits (one log-softmax per
model and token). A shard's files (its tensors, then its per-token statistics, each
atomically) are written by one writer thread while the next shard runs; at most one more
shard waits for it. A rerun skips finished shards, so a killed run resumes and ends with
byte-identical files.
"""

import dataclasses
import functools
import json
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

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
)
from difflens.capture.plan import (
    KEY_VERSION,
    CaptureConfig,
    Positions,
    batches_of,
    cache_key,
    plan_shards,
    rows_of,
    stats_bytes_per_token,
    tokenize_prompts,
)
from difflens.capture.stats import Scratch, set_token_stats
from difflens.capture.store import (
    FORMAT_VERSION,
    MANIFEST,
    RUN_JSON,
    BatchStats,
    RunStore,
    ShardResult,
    ShardWriter,
    claim_mirror,
    index_of,
    mirror_dir,
    refresh,
    shard_name,
    stores_tensors,
    write_shard,
)
from difflens.errors import DifflensWarning, InputError, StoreError
from difflens.models.batching import accepts, pad_batch
from difflens.models.engines import RayEngine, map_with_models, resolve_engine
from difflens.models.hooks import record_layers
from difflens.models.layers import parse_layers
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
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
    model_or_pair: "LoadedModel | ModelPair | ModelSet | Models",
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
    pairs: Sequence[Sequence[str]] | None = None,
    batch_size: int = 32,
    max_batch_tokens: int | None = None,
    shard_mb: int = 128,
    padding_side: str = "right",
    progress: bool = False,
    engine: "str | RayEngine | None" = None,
) -> RunStore:
    """Capture hidden states and next-token statistics for ``prompts`` into ``store``.

    Every model runs once per prompt; the statistics of each model and of each pair come
    from those logits, over the full vocabulary (in float32).

    Args:
        model_or_pair: one ``LoadedModel`` (label ``model``), a ``ModelPair`` (labels
            ``base`` and ``tuned``) or a ``ModelSet`` (its names, in lineage order); all
            read the same token ids. Or plain ``transformers`` models (one, a ``(base,
            tuned)`` tuple or a ``{name: model}`` mapping) with ``tokenizer``.
        prompts: the texts; each is tokenized with the model's special tokens.
        store: the run directory, or a filesystem URI (``s3://bucket/run``, any filesystem
            ``pyarrow.fs`` opens; written through a local mirror, file by file, each file
            whole). A finished run with the same cache key is reused; an unfinished one is
            resumed.
        tokenizer: the tokenizer of plain ``transformers`` models (wrapped on entry).
        layers: ``"all"``, ``"0,3,5"``, an int or a list (negatives count from the end);
            an empty list or tuple stores no hidden states, only the statistics.
        positions: ``"all"``, ``"last"`` or a list of token indices to store states at.
        store_dtype: ``float32`` or ``float16`` for stored states.
        top_k: top next tokens recorded per position.
        logprob_positions: positions at which to store the full log-prob vector.
        truncate: keep the last context-length tokens of a too-long prompt (counted in the
            manifest) instead of raising.
        pairs: label pairs ``(a, b)`` whose KL both ways and top-1 agreement are stored,
            computed per token from the two models' full next-token distributions, in
            the columns ``<a>-vs-<b>:kl_tuned_base`` (KL(b ‖ a)),
            ``<a>-vs-<b>:kl_base_tuned`` (KL(a ‖ b)) and ``<a>-vs-<b>:top1_agree``.
            Default: a ``ModelPair``'s own pair, in the columns ``kl_tuned_base``,
            ``kl_base_tuned`` and ``top1_agree`` (no prefix), as before ``pairs``
            existed; none for a ``ModelSet`` (give e.g. ``[*model_set.against_base(),
            *model_set.adjacent()]``). Every model runs once per prompt however many
            pairs there are.
        batch_size: most prompts in one forward pass.
        max_batch_tokens: most padded tokens in one forward pass (default: sized to the
            vocabulary so the logits fit in about 1 GB).
        shard_mb: target size of a tensor shard (with no tensors, of the statistics a
            shard holds in memory).
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
    no_layers = not isinstance(layers, str | int) and len(list(layers)) == 0
    layer_idx: tuple[int, ...] = () if no_layers else parse_layers(layers, first)
    layer_map: dict[int, int] | dict[str, dict[int, int]] | None = None
    label_maps: dict[str, dict[int, int]] = {}
    if isinstance(model_or_pair, ModelPair) and model_or_pair.layer_map is not None:
        layer_map = {b: model_or_pair.tuned_layer(b) for b in layer_idx}
        label_maps = {"tuned": layer_map}
    elif isinstance(model_or_pair, ModelSet) and model_or_pair.layer_maps and layer_idx:
        base_name = model_or_pair.names[0]
        label_maps = {name: {b: model_or_pair.pair(base_name, name).tuned_layer(b)
                             for b in layer_idx} for name in model_or_pair.layer_maps}
        layer_map = label_maps
    pos_cfg: str | tuple[int, ...] = positions if isinstance(positions, str) else tuple(
        int(p) for p in positions)
    vocab = int(first.model.get_output_embeddings().weight.shape[0])
    if max_batch_tokens is None:
        max_batch_tokens = max(64, min(2048, 2**30 // (4 * vocab * 2 * len(models))))
    cfg = CaptureConfig(
        layers=layer_idx, positions=pos_cfg, store_dtype=store_dtype, top_k=top_k,
        logprob_positions=tuple(int(p) for p in logprob_positions), truncate=truncate,
        batch_size=batch_size, max_batch_tokens=max_batch_tokens, shard_mb=shard_mb,
        padding_side=padding_side, pairs=_pairs_of(model_or_pair, list(models), pairs),
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
        if cfg.layers:
            plan = plan_shards(rows, bytes_per_row, cfg.shard_mb)
        else:  # no states: shards sized by the statistics they hold
            plan = plan_shards(lengths, stats_bytes_per_token(len(models), len(cfg.pairs or ())),
                               cfg.shard_mb)
        write_parquet_atomic(out / "prompts.parquet", pd.DataFrame({
            "prompt_idx": range(len(prompts)), "text": list(prompts), "token_ids": token_ids,
            "n_tokens": lengths,
            "truncated": truncated,
        }))
        write_json_atomic(run_json, {
            "key": key, "key_version": KEY_VERSION, "format_version": FORMAT_VERSION,
            "config": cfg.to_json(),
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
            layers_of = _layers_of(list(models), cfg.layers, label_maps)
            scratch = Scratch()
            with ShardWriter() as writer:
                for shard in todo:
                    start, end = plan[shard]
                    result = _capture_shard(shard, range(start, end), token_ids, models, cfg,
                                            layers_of, key, advance, writer.check, scratch)
                    writer.submit(functools.partial(write_shard, out, result, remote))
        else:
            job = functools.partial(shard_job, out=str(store if remote else out.resolve()),
                                    plan=plan, token_ids=token_ids, cfg=cfg,
                                    label_maps=label_maps, key=key)
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
        # the JSON's keys are sorted: the labels' own order, when that loses it (a set)
        **({"labels": list(models)} if list(models) != sorted(models) else {}),
    })
    if remote is not None:  # the manifest goes last: the remote run is complete with it
        remote.push(out / "index.parquet", "index.parquet")
        remote.push(out / MANIFEST, MANIFEST)
    return RunStore.open(out if remote is None else str(store))


def _pairs_of(target: "LoadedModel | ModelPair | ModelSet", labels: list[str],
              pairs: Sequence[Sequence[str]] | None) -> tuple[tuple[str, str], ...] | None:
    """The config's ``pairs``: ``None`` (as before ``pairs`` existed: a pair's own (base,
    tuned) in the columns without a prefix, nothing for one model) when not given, or
    when given as just that for a ``ModelPair`` or one model, so those keep their keys."""
    if pairs is None:
        return None
    out: list[tuple[str, str]] = []
    for pr in pairs:
        if isinstance(pr, str) or len(pr) != 2:
            raise InputError(f"each pair is two model labels (a, b), got {pr!r}")
        a, b = str(pr[0]), str(pr[1])
        for x in (a, b):
            if x not in labels:
                raise InputError(f"pair ({a}, {b}) names {x!r}, which is not a model here; "
                                 f"the labels are {', '.join(labels)}")
        if a == b:
            raise InputError(f"pair ({a}, {b}) compares a model with itself; give two models")
        if (a, b) in out:
            raise InputError(f"pair ({a}, {b}) is given twice")
        out.append((a, b))
    if isinstance(target, LoadedModel) and not out:
        return None
    if isinstance(target, ModelPair) and out == [("base", "tuned")]:
        return None
    return tuple(out)


def _layers_of(labels: Sequence[str], layers: Sequence[int],
               label_maps: Mapping[str, Mapping[int, int]]) -> dict[str, list[int]]:
    """Each model's own layer of each captured layer (base numbering -> its numbering)."""
    return {label: [label_maps[label][x] for x in layers] if label in label_maps
            else list(layers) for label in labels}


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
    label_maps: Mapping[str, Mapping[int, int]],
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
    result = _capture_shard(shard, range(start, end), token_ids, models, cfg,
                            _layers_of(list(models), cfg.layers, label_maps), key,
                            lambda _n: None, scratch=Scratch())
    write_shard(path, result, remote, keep_stats=False)
    return {"shard": shard, "written": True}


# -- one shard: computed here, written by store.write_shard (on a ShardWriter) ---------


def _capture_shard(
    shard: int,
    prompt_range: range,
    token_ids: Sequence[Sequence[int]],
    models: dict[str, LoadedModel],
    cfg: CaptureConfig,
    layers_of: Mapping[str, Sequence[int]],
    key: str,
    advance: Callable[[int], None],
    check: Callable[[], None] = lambda: None,
    scratch: Scratch | None = None,
) -> ShardResult:
    """Run one shard of prompts through every model: its states in the store's buffers
    and each batch's statistics (``check`` is called after each batch, to stop early;
    ``scratch``: the statistics' buffers, kept from shard to shard)."""
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
    buffers = {label: {layer: torch.empty((acc, lm.d_model), dtype=dtype) for layer in cfg.layers}
               for label, lm in models.items()}
    first = next(iter(models.values()))
    vocab = int(first.model.get_output_embeddings().weight.shape[0])
    lp_buf = {label: torch.empty((lp_acc, vocab)) for label in models} if lp_acc else {}
    pairs = cfg.pairs if cfg.pairs is not None else (
        (("base", "tuned"),) if "base" in models and "tuned" in models else ())
    stats: list[BatchStats] = []
    order = sorted(idx, key=lambda i: (-lengths[i], i))
    for batch in batches_of([len(t) for t in token_ids], order, cfg):
        seqs = [token_ids[i] for i in batch]
        dst = [start[i] + k for i in batch for k in range(len(keep[i]))]
        # the rows of a batch go to one run of the buffers when its prompts are consecutive
        dst_run = (slice(dst[0], dst[-1] + 1)
                   if dst and dst == list(range(dst[0], dst[-1] + 1)) else None)
        dst_t = torch.tensor(dst, dtype=torch.long)
        lp_dst = torch.tensor([lp_start[i] + k for i in batch for k in range(len(full_lp[i]))],
                              dtype=torch.long)
        logits: dict[str, Tensor] = {}
        for label, lm in models.items():
            res = forward_batch(lm, seqs, layers_of[label], cfg.padding_side, gather=False)
            # no padding: every row of the padded batch is a token, in order
            dense = all(len(s) == res.width for s in seqs)
            all_kept = dense and all(len(keep[i]) == lengths[i] for i in batch)
            src = None if all_kept else res.flat_rows([keep[i] for i in batch])
            for base_l, model_l in zip(cfg.layers, layers_of[label], strict=True):
                h = res.hidden[model_l].reshape(-1, res.hidden[model_l].shape[-1])
                if src is not None:
                    h = h.index_select(0, src.to(h.device))
                if dst_run is not None:
                    buffers[label][base_l][dst_run].copy_(h)
                else:
                    buffers[label][base_l].index_copy_(0, dst_t, h.to("cpu", dtype))
            flat = res.logits.reshape(-1, res.logits.shape[-1])
            logits[label] = flat if dense else flat.index_select(
                0, res.flat_rows([range(lengths[i]) for i in batch]))
            if lp_acc:
                lp_src = res.flat_rows([full_lp[i] for i in batch])
                lp_buf[label].index_copy_(
                    0, lp_dst, torch.log_softmax(flat.index_select(0, lp_src).float(), -1).cpu())
            del res, flat
        next_ids = torch.tensor([t for s in seqs for t in [*s[1:], -1]], dtype=torch.long)
        per_model, per_pair = set_token_stats(logits, next_ids, cfg.top_k, pairs=pairs,
                                              scratch=scratch)
        del logits
        stats.append(BatchStats(batch=list(batch), seqs=seqs, per_model=per_model,
                                 per_pair=per_pair))
        advance(sum(len(s) for s in seqs))
        check()

    tensors: dict[str, dict[str, Tensor]] = {}
    if stores_tensors(cfg.key_fields()):
        prompt_col = torch.tensor([i for i in idx for _ in keep[i]], dtype=torch.long)
        pos_col = torch.tensor([p for i in idx for p in keep[i]], dtype=torch.long)
        for label in models:
            t: dict[str, Tensor] = {f"layer.{la}": buf for la, buf in buffers[label].items()}
            t["prompt_idx"], t["token_pos"] = prompt_col, pos_col
            if lp_acc:
                t["logprobs"] = lp_buf[label]
                t["logprobs_prompt_idx"] = torch.tensor(
                    [i for i in idx for _ in full_lp[i]], dtype=torch.long)
                t["logprobs_pos"] = torch.tensor([p for i in idx for p in full_lp[i]],
                                                 dtype=torch.long)
            tensors[label] = t
    return ShardResult(shard=shard, key=key, tensors=tensors, batches=stats,
                        tokenizer=first.tokenizer, pairs=cfg.pairs)


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

