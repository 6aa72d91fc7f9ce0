"""``difflens collapse``: mode collapse and attractors, one step or all, into one folder.

Steps: ``divergence`` (per-token KL and entropy along text), ``probes`` (exact answer
distributions), ``temperature`` (is the tuned model the base at a lower temperature?),
``tree`` (probability trees), ``attractors`` (perturb and regenerate) and ``diversity``
(K samples per prompt). Every step merges its keys into ``OUT/summary.json`` (keeping the
other steps' keys), writes its tables to ``OUT/data`` (Parquet + CSV) and its figures to
``OUT/figures`` (HTML + PNG); ``OUT/index.html`` shows every step run so far. The figures,
the tree table and the page are drawn by :mod:`difflens.report.collapse`.
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from difflens._io import check_writable, fingerprint, write_json_atomic, write_parquet_atomic
from difflens.analysis.diversity import diversity
from difflens.analysis.embeddings import DEFAULT_ENCODER
from difflens.capture.outcomes import (
    DEFAULT_TEMPERATURES,
    ProbeResults,
    load_probes,
    run_probes,
    temperature_sweep,
)
from difflens.capture.text_divergence import read_corpus, sample_corpus, text_divergence
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair, models_of
from difflens.report.collapse import (
    attractor_figures,
    divergence_figures,
    diversity_figures,
    headline,
    intro_html,
    probe_figures,
    temperature_figures,
    tree_figure,
    tree_table,
)
from difflens.report.figures import AnyFigure, write_index
from difflens.report.tables import write_table
from difflens.sampling.attractors import attractor_test
from difflens.sampling.generate import GenerationConfig, generate_many
from difflens.sampling.tree import ProbabilityTree, probability_tree

STEPS = ("divergence", "probes", "temperature", "tree", "attractors", "diversity")


@dataclasses.dataclass(frozen=True)
class CollapseConfig:
    """Settings of every step (each step reads the ones it needs)."""

    prompts: tuple[str, ...] = ()
    """Prompts for divergence, attractors and diversity."""
    corpus: str | None = None
    """A JSONL corpus (prompt, continuation) for divergence instead of sampling."""
    sources: tuple[str, ...] = ()
    """Models whose samples form the divergence corpus (default: every model)."""
    max_new_tokens: int = 40
    probes: str | None = None
    """Probe JSONL (default: the built-in probes)."""
    probe_names: tuple[str, ...] = ()
    temperatures: tuple[float, ...] = DEFAULT_TEMPERATURES
    tree_prompt: str = ""
    tree_depth: int = 4
    tree_top_k: int = 5
    tree_min_prob: float = 1e-3
    positions: tuple[float, ...] = (0.2, 0.4, 0.6)
    insert: str = " Suddenly,"
    k_samples: int = 16
    reference: tuple[str, ...] | None = None
    """Reference texts for the Fréchet distance (None: a second draw of the first model)."""
    reference_name: str = ""
    encoder: str = DEFAULT_ENCODER
    seed: int = 0
    batch_size: int = 32
    """Most sequences per forward pass (divergence, probes, attractors); it does not change
    the results, so it is in no cache key."""

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")


@dataclasses.dataclass(frozen=True)
class CollapseRun:
    summary: dict[str, Any]
    figures: list[AnyFigure]


def run_collapse(target: LoadedModel | ModelPair, out: Path, *, steps: Sequence[str] = STEPS,
                 config: CollapseConfig = CollapseConfig(), progress: bool = False,
                 index: bool = True) -> CollapseRun:
    """Run ``steps`` into ``out`` and return the merged summary and this run's figures."""
    from difflens._io import rich_progress

    unknown = [s for s in steps if s not in STEPS]
    if unknown:
        raise InputError(f"unknown step(s) {unknown}; choose among {', '.join(STEPS)}")
    if "temperature" in steps and not isinstance(target, ModelPair):
        raise InputError("the temperature sweep compares a tuned model with its base; give "
                         "--tuned as well")
    needs_prompts = {"divergence", "attractors", "diversity"} & set(steps)
    if needs_prompts - ({"divergence"} if config.corpus else set()) and not config.prompts:
        raise InputError(f"step(s) {sorted(needs_prompts)} need prompts; pass --prompts FILE")
    if any(not p.strip() for p in config.prompts):
        raise InputError("a prompt is empty; every prompt needs text")
    if "tree" in steps and not config.tree_prompt.strip():
        raise InputError("the tree step needs a prompt (--tree-prompt)")
    probes = (load_probes(config.probes, names=config.probe_names or None)
              if {"probes", "temperature"} & set(steps) else [])
    check_writable(out)
    data, figdir = out / "data", out / "figures"
    summary_path = out / "summary.json"
    summary: dict[str, Any] = (json.loads(summary_path.read_text())
                               if summary_path.is_file() else {})
    models = models_of(target)
    summary["models"] = {k: m.identity.name for k, m in models.items()}
    figures: list[AnyFigure] = []
    with rich_progress(progress) as rich_bar:
        def bar(desc: str, total: int) -> Callable[[int], None]:
            step = rich_bar(desc, total)
            return lambda n: step(n, "")

        if "divergence" in steps:
            advance = bar("divergence", 1)
            corpus = (read_corpus(config.corpus) if config.corpus else sample_corpus(
                target, config.prompts, sources=config.sources or None,
                max_new_tokens=config.max_new_tokens, seed=config.seed))
            # One store per corpus, so a rerun with other prompts does not meet a finished
            # store of different texts (and the same corpus resumes or reuses its store).
            corpus_key = fingerprint([corpus.prompts, corpus.continuations], length=12)
            div = text_divergence(target, corpus, store=out / "capture" / corpus_key,
                                  progress=False, batch_size=config.batch_size)
            write_table(div.tokens, data, "divergence_tokens")
            curve = div.by_position(seed=config.seed)
            write_table(curve, data, "divergence_by_position")
            summary["divergence"] = div.summary(seed=config.seed)
            figures += divergence_figures(curve, list(models))
            advance(1)
        results: ProbeResults | None = None
        if "probes" in steps or "temperature" in steps:
            advance = bar("probes", len(probes) * len(models))
            temps = config.temperatures if "temperature" in steps else (1.0,)
            results = run_probes(target, probes, temperatures=temps, progress=advance,
                                 batch_size=config.batch_size)
        if "probes" in steps and results is not None:
            write_table(results.phrasings, data, "probes")
            write_table(results.answers, data, "probe_answers")
            summary["probes"] = results.summary(seed=config.seed)
            figures += probe_figures(results, summary["probes"])
        if "temperature" in steps and results is not None:
            sweep = temperature_sweep(results, seed=config.seed)
            write_table(sweep.table, data, "temperature")
            summary["temperature"] = sweep.summary()
            figures += temperature_figures(sweep.table, sweep.best_T)
        if "tree" in steps:
            advance = bar("trees", len(models))
            trees = {}
            for label, lm in models.items():
                trees[label] = probability_tree(lm, config.tree_prompt, depth=config.tree_depth,
                                                top_k=config.tree_top_k,
                                                min_prob=config.tree_min_prob)
                write_json_atomic(data / f"tree_{label}.json", trees[label].to_dict())
                advance(1)
            write_table(tree_table(trees), data, "tree_nodes")
            summary["tree"] = {label: _tree_summary(t) for label, t in trees.items()}
            figures.append(tree_figure(trees))
        if "attractors" in steps:
            advance = bar("attractors", len(models))
            att = attractor_test(target, list(config.prompts),
                                 max_new_tokens=config.max_new_tokens,
                                 positions=config.positions, insert=config.insert,
                                 encoder=config.encoder, progress=advance,
                                 batch_size=config.batch_size)
            write_table(att.table, data, "attractors")
            write_table(att.originals, data, "attractor_originals")
            summary["attractors"] = att.summary(seed=config.seed)
            figures += attractor_figures(summary["attractors"])
        if "diversity" in steps:
            advance = bar("diversity: sampling", len(models) * len(config.prompts))
            samples = {label: _samples(lm, label, config, data, advance)
                       for label, lm in models.items()}
            reference, ref_name = config.reference, config.reference_name
            if reference is None:
                first = next(iter(models))
                again = dataclasses.replace(config, seed=config.seed + 10_000)
                reference = tuple(t for ts in _samples(models[first], first + "-reference",
                                                       again, data, None) for t in ts)
                ref_name = (f"a second, independent draw of {first}'s samples (its distance "
                            f"is the noise floor)")
            advance = bar("diversity: scoring", len(models) * len(config.prompts))
            div_res = diversity(samples, reference=reference, reference_name=ref_name,
                                encoder=config.encoder, seed=config.seed, progress=advance)
            write_table(div_res.per_prompt, data, "diversity")
            summary["diversity"] = div_res.summary(seed=config.seed)
            summary["diversity_encoder"] = div_res.encoder
            figures += diversity_figures(summary["diversity"])
    for fig in figures:
        fig.save(figdir)
    summary["config"] = {**summary.get("config", {}), **{
        k: v for k, v in dataclasses.asdict(config).items()
        if k not in ("prompts", "reference", "batch_size")  # batch_size changes no result
    }, "n_prompts": len(config.prompts)}
    write_json_atomic(summary_path, summary)
    if index:
        write_index(out / "index.html", "difflens collapse", intro_html(summary), figures,
                    headline(summary))
    return CollapseRun(summary=summary, figures=figures)


def _samples(lm: LoadedModel, label: str, config: CollapseConfig, data: Path,
             advance: Any) -> list[list[str]]:
    """K samples per prompt (one generate job per prompt, seed + prompt index, on the engine
    set by ``use_engine``), cached in ``data/samples_<label>.parquet`` under a key of the
    model, prompts and settings."""
    key = fingerprint([lm.identity.weights_sha256, list(config.prompts), config.k_samples,
                       config.max_new_tokens, config.seed], length=64)
    path = data / f"samples_{label}.parquet"
    if path.is_file():
        df = pd.read_parquet(path)
        if len(df) and df["key"].iloc[0] == key:
            if advance is not None:
                advance(len(config.prompts))
            return [g.text.tolist() for _, g in df.groupby("prompt_id", sort=True)]
    tok = lm.tokenizer
    rows = []
    jobs = [([tok(prompt)["input_ids"]] * config.k_samples, GenerationConfig(
        max_new_tokens=config.max_new_tokens, temperature=1.0, seed=config.seed + p,
        batch_size=config.k_samples, sampler="multinomial"))
        for p, prompt in enumerate(config.prompts)]
    gens = generate_many(lm, jobs, on_job=None if advance is None else lambda _j, _g: advance(1))
    for p, gen in enumerate(gens):
        for i, row in enumerate(gen.token_ids):
            rows.append({"prompt_id": p, "sample": i,
                         "text": tok.decode(row, skip_special_tokens=True), "key": key})
    df = pd.DataFrame(rows)
    write_parquet_atomic(path, df)
    df.drop(columns=["key"]).to_csv(path.with_suffix(".csv"), index=False)
    return [g.text.tolist() for _, g in df.groupby("prompt_id", sort=True)]


def _tree_summary(tree: ProbabilityTree) -> dict[str, Any]:
    leaves = tree.leaves()
    path, prob = max(leaves, key=lambda x: x[1])
    node, texts = tree.root, []
    for t in path:
        node = next(c for c in node.children if c.token_id == t)
        texts.append(node.text)
    mass = float(sum(p for _, p in leaves))
    probs = np.array([p for _, p in leaves]) / mass
    return {"n_nodes": tree.n_nodes, "n_leaves": len(leaves), "top_path": "".join(texts),
            "top_path_prob": float(prob), "covered_mass": mass,
            "leaf_entropy_bits": float(-(probs * np.log2(probs)).sum()),
            "n_forward_tokens": tree.n_forward_tokens}
