"""Steps of ``difflens themes`` that turn samples into themes and chains: ``sample``
(K seeded continuations per prompt, stored one part per batch so a rerun resumes), the
segments the ``fit`` step clusters, the ``chains`` step's chains and their summary, and the
``consistency`` step (themes fitted on a second, independent sample set)."""

import dataclasses
import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import fingerprint, write_parquet_atomic
from difflens.analysis.bootstrap import bootstrap_mean
from difflens.analysis.themes import (
    ChainDistributions,
    ThemeConsistency,
    ThemeModel,
    fit_themes,
    resample_consistency,
    segment,
    to_chain,
)
from difflens.control.monitor import generate_monitored
from difflens.errors import InputError
from difflens.models.encoders import embed_texts
from difflens.models.engines import map_with_models, resolve_engine
from difflens.models.loading import LoadedModel
from difflens.pipelines.theme_config import ThemesConfig
from difflens.sampling.generate import GenerationConfig


def sample_continuations(lm: LoadedModel, label: str, config: ThemesConfig, folder: Path,
                         progress: Callable[[int], None] | None = None) -> pd.DataFrame:
    """K seeded continuations per prompt; one stored part per batch of prompts (resumable),
    and one worker job per part on the Ray engine (``use_engine``)."""
    per_batch = max(1, config.batch_size // config.k_samples)
    # the batch of prompts sets each part's random stream, so it is part of the key
    key = fingerprint([lm.identity.weights_sha256, config.prompts, config.k_samples,
                       config.max_new_tokens, config.temperature, config.seed, config.chat,
                       per_batch])
    part_dir = folder / f"{label}-{key}"
    starts = list(range(0, len(config.prompts), per_batch))
    parts = {start: pd.read_parquet(part_dir / f"part_{start:06d}.parquet") for start in starts
             if (part_dir / f"part_{start:06d}.parquet").is_file()}
    todo = [start for start in starts if start not in parts]

    def finished(start: int, df: pd.DataFrame) -> None:
        write_parquet_atomic(part_dir / f"part_{start:06d}.parquet", df)
        parts[start] = df

    if progress is not None:
        progress(sum(min(per_batch, len(config.prompts) - s) for s in parts))
    job = functools.partial(_sample_part, label=label, config=config, per_batch=per_batch)
    ray_engine = resolve_engine(None)
    if ray_engine is None:
        for start in todo:
            finished(start, job({"model": lm}, start))
            if progress is not None:
                progress(min(per_batch, len(config.prompts) - start))
    else:
        def on_result(i: int, columns: dict[str, list[Any]]) -> None:
            finished(todo[i], pd.DataFrame(columns))
            if progress is not None:
                progress(min(per_batch, len(config.prompts) - todo[i]))

        map_with_models(ray_engine, {"model": lm}, functools.partial(_columns_of, job), todo,
                        on_result=on_result)
    return pd.concat([parts[start] for start in starts], ignore_index=True)


def _columns_of(job: Callable[[dict[str, LoadedModel], int], pd.DataFrame],
                models: dict[str, LoadedModel], start: int) -> dict[str, list[Any]]:
    """A part's samples as plain columns, as a Ray worker returns them."""
    return job(models, start).to_dict("list")


def _sample_part(models: dict[str, LoadedModel], start: int, *, label: str,
                 config: ThemesConfig, per_batch: int) -> pd.DataFrame:
    """The samples of the prompts ``start .. start + per_batch`` (one stored part); run
    here or as one job of a Ray worker."""
    lm = models["model"]
    prompts = config.prompts[start:start + per_batch]
    rows = [p for p in prompts for _ in range(config.k_samples)]
    gen = generate_monitored(lm, None, rows, config=GenerationConfig(
        max_new_tokens=config.max_new_tokens, temperature=config.temperature,
        seed=config.seed + start, batch_size=len(rows), chat=config.chat))
    return pd.DataFrame({
        "model": label,
        "prompt_idx": [start + r // config.k_samples for r in range(len(rows))],
        "sample": [r % config.k_samples for r in range(len(rows))],
        "token_ids": [t.token_ids for t in gen.traces],
        "text": [t.text for t in gen.traces]})


def stored_themes(path: Path, segs: pd.DataFrame) -> pd.Series:
    """The themes a previous ``fit`` stored for exactly these segments, else NaN."""
    cols = ["model", "prompt_idx", "sample", "seg_idx", "text"]
    if path.is_file():
        old = pd.read_parquet(path)
        if "theme" in old and old[cols].reset_index(drop=True).equals(
                segs[cols].reset_index(drop=True)):
            return old["theme"].reset_index(drop=True)
    return pd.Series([np.nan] * len(segs), dtype="float64")


def segments_of(samples: dict[str, pd.DataFrame], config: ThemesConfig, lm: LoadedModel
              ) -> pd.DataFrame:
    rows = []
    for label, df in samples.items():
        for r in df.itertuples():
            for j, s in enumerate(segment(str(r.text), mode=config.segment, window=config.window,
                                          tokenizer=lm.tokenizer)):
                rows.append({"model": label, "prompt_idx": int(r.prompt_idx),
                             "sample": int(r.sample), "seg_idx": j, "text": s})
    return pd.DataFrame(rows, columns=["model", "prompt_idx", "sample", "seg_idx", "text"])


def chains_of(samples: pd.DataFrame, segs: pd.DataFrame, config: ThemesConfig
            ) -> list[list[tuple[int, ...]]]:
    by = {key: g.sort_values("seg_idx")["theme"].tolist()
          for key, g in segs.groupby(["prompt_idx", "sample"])}
    out: list[list[tuple[int, ...]]] = [[] for _ in config.prompts]
    for r in samples.itertuples():
        out[int(r.prompt_idx)].append(to_chain(by.get((int(r.prompt_idx), int(r.sample)), []),
                                               merge_repeats=config.merge_repeats))
    return out


def chain_summary(d: ChainDistributions, chains: list[list[tuple[int, ...]]],
                   config: ThemesConfig) -> dict[str, Any]:
    lengths = [len(c) for per in chains for c in per]
    ent = -(d.first * np.log(np.clip(d.first, 1e-12, None))).sum(1)
    return {"mean_length": bootstrap_mean(np.asarray(lengths, dtype=np.float64),
                                          seed=config.seed, resampled="continuations").to_json(),
            "first_theme_entropy": bootstrap_mean(ent[d.n_samples > 0], seed=config.seed,
                                                  resampled="prompts").to_json(),
            "first_theme_marginal": (d.first[d.n_samples > 0].mean(0)).tolist()}


def resample_seed(config: ThemesConfig) -> int:
    """The sampling seed of the consistency step's second sample set."""
    return config.seed + 100_003 if config.resample_seed is None else config.resample_seed


def theme_consistency(lm: LoadedModel, label: str, samples: pd.DataFrame, config: ThemesConfig,
                      folder: Path, progress: Callable[[int], None] | None = None
                      ) -> tuple[ThemeConsistency, ThemeModel, ThemeModel, pd.DataFrame]:
    """Themes fitted on ``samples`` and, the same way, on a second sample set of the same
    prompts drawn with ``resample_seed`` (stored beside the first, resumable); both fits
    assign the segments of both sets, and the ARI between the two assignments is
    bootstrapped over prompts."""
    seed_b = resample_seed(config)
    if seed_b == config.seed:
        raise InputError(f"the second sample set needs another seed than --seed {config.seed}")
    other = sample_continuations(lm, label, dataclasses.replace(config, seed=seed_b), folder,
                                 progress)
    sets = [segments_of({label: df}, config, lm) for df in (samples, other)]
    if any(s.empty for s in sets):
        raise InputError("a sample set has no segments (every continuation is empty); sample "
                         "more tokens")
    embs = [embed_texts(s["text"].tolist(), config.encoder) for s in sets]
    fits = [fit_themes(s["text"].tolist(), embeddings=e, method=config.method,
                       k_range=(config.k_min, config.k_max), seed=config.seed,
                       min_cluster_size=config.min_cluster_size).model
            for s, e in zip(sets, embs, strict=True)]
    emb = np.concatenate(embs)
    prompt = np.concatenate([s["prompt_idx"].to_numpy() for s in sets])
    res = resample_consistency(fits[0], fits[1], emb, prompt, n_boot=config.n_boot,
                               seed=config.seed)
    both = pd.concat([s.assign(sample_set=i) for i, s in enumerate(sets)], ignore_index=True)
    both["theme_a"] = fits[0].assign_embeddings(emb)
    both["theme_b"] = fits[1].assign_embeddings(emb)
    return res, fits[0], fits[1], both
