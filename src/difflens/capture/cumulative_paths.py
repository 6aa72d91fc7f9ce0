"""Cumulative-mean paths of prompts and sampled continuations, from a model, a pair or a
model set.

For every prompt, each model samples ``k`` continuations with the same seeded settings
(continuation ``i`` of prompt ``p`` uses seed ``seed + 1000 * p + i`` in every model). Each
text (the prompt, and each continuation on its own) is run through the model, the residual
stream at one layer is read through scoped hooks, and its cumulative mean of L2-normalised
token vectors is kept in the full dimension. A continuation's path restarts at its first
token: it is the path of the continuation's own text, read in the context of the prompt.
"""

import dataclasses
import functools
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from difflens._io import fingerprint, write_parquet_atomic
from difflens.analysis.sphere import cumulative_mean_path
from difflens.capture.engine import forward_batch
from difflens.errors import InputError
from difflens.models.engines import map_with_models, resolve_engine
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.sampling.generate import GenerationConfig, generate

PATHS_FORMAT = 1


@dataclasses.dataclass(frozen=True)
class PathSet:
    """Rows of the trajectory table (without x, y, z) and their full-dimension points."""

    table: pd.DataFrame
    """prompt_id, model, segment, step, token, token_id."""
    points: np.ndarray
    """[rows, d_model] cumulative means, aligned with ``table``."""
    continuations: pd.DataFrame
    """prompt_id, model, segment, token_ids, text: the sampled continuations."""
    layer: int


def sample_continuations(lm: LoadedModel, prompt_ids: Sequence[Sequence[int]], k: int,
                         max_new_tokens: int, seed: int, temperature: float = 1.0,
                         batch_size: int = 16) -> list[list[list[int]]]:
    """``k`` sampled continuations (token ids, cut at EOS) per prompt.

    Continuation ``i`` of the ``p``-th prompt given draws from its own stream, seeded
    ``seed + 1000 * p + i``: every prompt's continuations are generated together, in batches
    of ``batch_size`` rows, and each is the one that seed gives alone.
    """
    if k == 0:
        return [[] for _ in prompt_ids]
    rows = [list(ids) for ids in prompt_ids for _ in range(k)]
    streams = [(1, seed + 1000 * p + i) for p in range(len(prompt_ids)) for i in range(k)]
    gen = generate(lm, rows, GenerationConfig(
        max_new_tokens=max_new_tokens, temperature=temperature, batch_size=batch_size,
        sampler="multinomial"), streams=streams)
    return [gen.token_ids[p * k:(p + 1) * k] for p in range(len(prompt_ids))]


def _set_layers(models: ModelSet, layer: int) -> dict[str, int]:
    """The layer each model of a set reads: ``layer`` of the first model, through a model's
    layer map where it has one (a model of another depth)."""
    out = {}
    for name, lm in models.models.items():
        m = models.layer_maps.get(name)
        if m is not None and layer not in m:
            raise InputError(
                f"model {name!r} has no layer matching layer {layer} of {models.names[0]!r} "
                f"in its layer map ({sorted(m)}): pick one of those layers")
        out[name] = layer if m is None else m[layer]
        if lm.d_model != models.base.d_model:
            raise InputError(
                f"model {name!r} has width {lm.d_model}, {models.names[0]!r} has "
                f"{models.base.d_model}: paths of one sphere need one width")
    return out


def build_paths(
    model_or_pair: LoadedModel | ModelPair | ModelSet,
    prompts: Sequence[str],
    *,
    layer: int | None = None,
    continuations: int = 4,
    max_new_tokens: int = 40,
    seed: int = 0,
    temperature: float = 1.0,
    progress: Callable[[int], None] | None = None,
    cache_dir: str | Path | None = None,
    chunk: int = 16,
    batch_size: int = 16,
) -> PathSet:
    """Paths of every prompt and ``continuations`` sampled continuations, per model.

    Args:
        model_or_pair: one model (labelled ``model``), a pair (``base``, ``tuned``) or a
            model set (each model labelled by its name, in lineage order).
        prompts: the prompt texts.
        layer: captured layer (default: the middle one, ``n_layers // 2``; 0 = the input
            embeddings, the original method), of the first model; a model of a set with a
            layer map reads the layer the map matches to it.
        continuations: sampled continuations per prompt and model.
        max_new_tokens: length of each continuation.
        seed: sampling seed.
        temperature: sampling temperature.
        progress: called with 1 after each prompt and model.
        cache_dir: keep finished chunks of ``chunk`` prompts here (one Parquet file per
            model and chunk, keyed by the model, the prompts and the settings); a rerun after
            a kill continues from the first missing chunk and gives the same result.
        chunk: prompts per cached chunk (does not change the result); on the Ray engine
            (``use_engine``) each chunk is one worker's job.
        batch_size: rows sampled together and sequences read back in one forward pass (does
            not change the result: each continuation has its own seeded stream).
    """
    models = models_of(model_or_pair)
    first = next(iter(models.values()))
    layer = first.n_layers // 2 if layer is None else first.layers.normalize(layer)
    if not prompts:
        raise InputError("no prompts given")
    layers = (_set_layers(model_or_pair, layer) if isinstance(model_or_pair, ModelSet)
              else dict.fromkeys(models, layer))
    frames: list[pd.DataFrame] = []
    conts: list[pd.DataFrame] = []
    for label, lm in models.items():
        settings = dict(layer=layers[label], k=continuations, max_new_tokens=max_new_tokens,
                        seed=seed, temperature=temperature, batch_size=batch_size)
        for done in _label_paths(lm, label, prompts, chunk, cache_dir, settings, progress):
            frames.append(done[0])
            conts.append(done[1])
    table = pd.concat(frames, ignore_index=True)
    points = np.stack(table.pop("point").to_numpy()).astype(np.float64)
    return PathSet(table=table, points=points, continuations=pd.concat(conts, ignore_index=True),
                   layer=layer)


def _label_paths(lm: LoadedModel, label: str, prompts: Sequence[str], chunk: int,
                 cache_dir: str | Path | None, settings: dict[str, Any],
                 progress: Callable[[int], None] | None
                 ) -> list[tuple[pd.DataFrame, pd.DataFrame]]:
    """Every chunk of one model's paths, in prompt order: read from the cache, else computed
    here or, on the Ray engine, one chunk per worker job (and cached as each one ends)."""
    chunks = [(start, list(prompts[start:start + chunk]))
              for start in range(0, len(prompts), chunk)]
    parts: dict[int, tuple[pd.DataFrame, pd.DataFrame]] = {}
    todo = []
    for start, part in chunks:
        done = _read_chunk(_chunk_path(cache_dir, label, start),
                           _key(lm, part, start, **settings))
        if done is None:
            todo.append((start, part))
            continue
        parts[start] = done
        if progress:
            progress(len(part))

    def finished(i: int, done: tuple[pd.DataFrame, pd.DataFrame]) -> None:
        start, part = todo[i]
        path = _chunk_path(cache_dir, label, start)
        if path is not None:
            write_parquet_atomic(path, done[0].assign(key=_key(lm, part, start, **settings)))
            write_parquet_atomic(path.with_suffix(".continuations.parquet"), done[1])
        parts[start] = done

    ray_engine = resolve_engine(None)
    if ray_engine is None:
        for i, (start, part) in enumerate(todo):
            finished(i, _paths_of(lm, label, part, start, progress=progress, **settings))
    else:
        def on_result(i: int, plain: dict[str, Any]) -> None:
            table = pd.DataFrame(plain["table"])
            table["point"] = [np.asarray(p, dtype=np.float64) for p in table["point"]]
            finished(i, (table, pd.DataFrame(plain["continuations"])))
            if progress:
                progress(len(todo[i][1]))

        map_with_models(ray_engine, {"model": lm},
                        functools.partial(_paths_job, label=label, settings=settings),
                        todo, on_result=on_result)
    return [parts[start] for start, _ in chunks]


def _chunk_path(cache_dir: str | Path | None, label: str, start: int) -> Path | None:
    return Path(cache_dir) / f"{label}-{start:06d}.parquet" if cache_dir else None


def _paths_job(models: dict[str, LoadedModel], item: tuple[int, list[str]], *, label: str,
               settings: dict[str, Any]) -> dict[str, Any]:
    """One chunk of prompts on a Ray worker: what the local loop computes for it, as plain
    columns (the points as lists of floats)."""
    start, part = item
    table, conts = _paths_of(models["model"], label, part, start, progress=None, **settings)
    return {"table": table.to_dict("list"), "continuations": conts.to_dict("list")}


def _key(lm: LoadedModel, prompts: Sequence[str], start: int, layer: int, k: int,
         max_new_tokens: int, seed: int, temperature: float, batch_size: int = 16) -> str:
    """The cache key of one chunk (``batch_size`` does not change the paths: not in it)."""
    ident = {f: v for f, v in lm.identity.to_dict().items() if f != "name"}
    payload = [ident, list(prompts), start, layer, k, max_new_tokens, seed, temperature,
               PATHS_FORMAT]
    return fingerprint(payload, length=32)


def _read_chunk(path: Path | None, key: str) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    if path is None or not path.is_file():
        return None
    conts = path.with_suffix(".continuations.parquet")
    df = pd.read_parquet(path)
    if not conts.is_file() or df.empty or df.key.iloc[0] != key:
        return None
    return df.drop(columns=["key"]), pd.read_parquet(conts)


def _paths_of(lm: LoadedModel, label: str, prompts: Sequence[str], start: int, layer: int,
              k: int, max_new_tokens: int, seed: int, temperature: float,
              progress: Callable[[int], None] | None, batch_size: int = 16
              ) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The paths of one chunk of prompts: every continuation sampled in one batched call,
    then the texts read back in forward batches of ``batch_size`` sequences."""
    tok = lm.tokenizer
    rows: list[dict] = []
    conts_rows: list[dict] = []
    ids_of = [list(tok(text, add_special_tokens=True)["input_ids"]) for text in prompts]
    samples = sample_continuations(lm, ids_of, k, max_new_tokens, seed + 1000 * start,
                                   temperature, batch_size=batch_size)
    kept = [[c for c in conts if c] for conts in samples]
    seqs = [s for ids, conts in zip(ids_of, kept, strict=True)
            for s in [ids] + [ids + c for c in conts]]
    states: list[torch.Tensor] = []
    for b in range(0, len(seqs), batch_size):
        batch = seqs[b:b + batch_size]
        res = forward_batch(lm, batch, [layer])
        h = res.hidden[layer]
        states += [h[i, res.sequence(i, len(s))] for i, s in enumerate(batch)]
    at = 0
    for q, (ids, conts) in enumerate(zip(ids_of, kept, strict=True)):
        p = start + q
        segs: list[tuple[str, list[int], torch.Tensor]] = [("prompt", ids, states[at])]
        for i, c in enumerate(conts):
            segs.append((f"continuation:{i}", c, states[at + 1 + i][len(ids):]))
            conts_rows.append({"prompt_id": p, "model": label, "segment": f"continuation:{i}",
                               "token_ids": c, "text": tok.decode(c, skip_special_tokens=True)})
        at += 1 + len(conts)
        for segment, token_ids, seg_states in segs:
            path = cumulative_mean_path(seg_states.float()).double().cpu().numpy()
            toks = tok.convert_ids_to_tokens(token_ids)
            for s, (tid, t) in enumerate(zip(token_ids, toks, strict=True)):
                rows.append({"prompt_id": p, "model": label, "segment": segment, "step": s,
                             "token": t, "token_id": int(tid), "point": path[s]})
        if progress:
            progress(1)
    return pd.DataFrame(rows), pd.DataFrame(conts_rows)
