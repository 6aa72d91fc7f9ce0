"""``difflens collapse``: mode collapse and attractors, one step or all, into one folder.

Steps: ``divergence`` (per-token KL and entropy along text), ``probes`` (exact answer
distributions), ``temperature`` (is the tuned model the base at a lower temperature?),
``tree`` (probability trees), ``attractors`` (perturb and regenerate) and ``diversity``
(K samples per prompt). Every step merges its keys into ``OUT/summary.json`` (keeping the
other steps' keys), writes its tables to ``OUT/data`` (Parquet + CSV) and its figures to
``OUT/figures`` (HTML + PNG); ``OUT/index.html`` shows every step run so far. The figures,
the tree table and the page are drawn by ``difflens.report.collapse``.
"""

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd

from difflens._config import option
from difflens._io import check_writable, fingerprint, write_json_atomic, write_parquet_atomic
from difflens.analysis.decollapse import decollapse_summary, text_nll
from difflens.analysis.diversity import diversity
from difflens.analysis.entropy_prediction import predict_entropy
from difflens.analysis.temperature_match import TemperatureMatch, meeting_temperature
from difflens.analysis.tree_summary import tree_summary
from difflens.capture.outcomes import (
    DEFAULT_TEMPERATURES,
    ProbeResults,
    load_probes,
    rank_correlation,
    run_probes,
    temperature_sweep,
)
from difflens.capture.prompt_end import prompt_ends
from difflens.capture.text_divergence import (
    TextDivergence,
    read_corpus,
    sample_corpus,
    text_divergence,
)
from difflens.errors import InputError
from difflens.models.encoders import DEFAULT_ENCODER, embedder
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair, models_of
from difflens.models.wrapping import Models, as_models
from difflens.pipelines.result import InstrumentResult
from difflens.report.collapse import (
    attractor_figures,
    context_figures,
    decollapse_figures,
    divergence_figures,
    diversity_figures,
    entropy_prediction_figures,
    free_text_figures,
    headline,
    intro_html,
    probe_figures,
    rank_figures,
    temperature_figures,
    tree_figure,
    tree_table,
)
from difflens.report.figures import AnyFigure, write_index
from difflens.report.tables import write_table
from difflens.sampling.attractors import attractor_test
from difflens.sampling.generate import GenerationConfig, generate_many
from difflens.sampling.tree import probability_tree

STEPS = ("divergence", "probes", "temperature", "tree", "attractors", "diversity")


def _free_text_temperatures(text: str) -> tuple[float, ...]:
    """``--free-text-temperatures``: numbers, or ``none`` (skip the check)."""
    if text.strip().lower() == "none":
        return ()
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise InputError(f"--free-text-temperatures takes numbers like 0.5,1,2 or none, got "
                         f"{text!r}") from None


@dataclasses.dataclass(frozen=True)
class CollapseConfig:
    """Settings of every step (each step reads the ones it needs); each default is here only
    (the CLI's options and ``compare.toml``'s ``[collapse]`` table are these fields, under
    their flag names)."""

    steps: tuple[str, ...] = option(STEPS, flag="--steps", cli=False, help="Steps to run "
                                    "(the CLI's verb chooses them).")
    prompts: tuple[str, ...] = ()
    """The prompts of the run (divergence, attractors, diversity): set by
    ``run_collapse`` from its ``prompts``."""
    corpus: str | None = option(None, flag="--corpus", help="Divergence corpus: JSONL with "
                                "prompt and continuation (else sampled).")
    """A JSONL corpus (prompt, continuation) for divergence instead of sampling."""
    sources: tuple[str, ...] = option((), flag="--sources", help="Models whose samples form "
                                      "the divergence corpus, e.g. tuned (default: all).")
    """Models whose samples form the divergence corpus (default: every model)."""
    predict_entropy: bool = True
    """Divergence step: predict each text's mean entropy from its prompt's states (a ridge
    probe against baselines); needs at least 10 texts of a model."""
    max_new_tokens: int = option(40, flag="--max-new-tokens", help="Tokens per generation.")
    probes: str | None = option(None, flag="--probes", help="Probe JSONL (default: built-in "
                                "random number, dice, coin; see `difflens list probes`).")
    """Probe JSONL (default: the built-in probes)."""
    probe_names: tuple[str, ...] = option((), flag="--probe-names", help="Only these probes, "
                                          "e.g. d6,coin.")
    temperatures: tuple[float, ...] = option(DEFAULT_TEMPERATURES, flag="--temperatures",
                                             help="Temperature grid of the probe sweep.")
    free_text_temperatures: tuple[float, ...] = option(
        (0.5, 0.7, 1.0, 1.4, 2.0, 2.8), flag="--free-text-temperatures",
        parse=_free_text_temperatures, help="Temperatures of the tuned model's samples in the "
        "free-text check (with prompts; 'none' skips it).")
    """Temperatures of the tuned model's samples in the free-text temperature check (run by
    the temperature step when prompts are given; empty: skip it)."""
    tree_prompt: str = option("", flag="--tree-prompt", help="Prompt of the probability tree "
                              "(`all`: the first prompt).")
    tree_depth: int = option(4, flag="--depth", help="Tree depth.")
    tree_top_k: int = option(5, flag="--top-k", help="Children per tree node.")
    tree_min_prob: float = option(1e-3, flag="--min-prob", help="Do not expand paths below "
                                  "this probability.")
    positions: tuple[float, ...] = option((0.2, 0.4, 0.6), flag="--perturb-at", help="Attractor "
                                          "perturbation points (fractions of the completion).")
    insert: str = option(" Suddenly,", flag="--insert", help="Phrase inserted by the "
                         "attractor test.")
    k_samples: int = option(16, flag="--samples", help="Samples per prompt (and model).")
    prob_caps: tuple[float, ...] = option(
        (), flag="--prob-caps", help="De-collapse sampler: also sample the tuned model with no "
        "token above each probability, e.g. 0.5,0.25, and score diversity and perplexity "
        "under the base.")
    """The de-collapse sampler's caps: the diversity step also samples the tuned model (the
    only model when there is one) with each cap, and scores diversity and perplexity under
    the base (empty: skip)."""
    reference: tuple[str, ...] | None = None
    """Reference texts for the Fréchet distance (None: a second draw of the first model)."""
    reference_name: str = ""
    encoder: str = option(DEFAULT_ENCODER, flag="--encoder", help="Sentence encoder (name or "
                          "folder).")
    seed: int = option(0, flag="--seed", help="Seed of sampling and bootstraps.")
    batch_size: int = option(32, flag="--batch-size", help="Most inputs per forward pass.")
    """Most sequences per forward pass (divergence, probes, attractors); it does not change
    the results, so it is in no cache key."""

    #: Python names of earlier releases -> option names (read with a warning).
    RENAMED: ClassVar[dict[str, str]] = {
        "k_samples": "samples", "tree_depth": "depth", "tree_top_k": "top_k",
        "tree_min_prob": "min_prob", "positions": "perturb_at"}

    def __post_init__(self) -> None:
        if self.batch_size < 1:
            raise InputError(f"batch_size must be >= 1, got {self.batch_size}")
        if any(not 0 < c < 1 for c in self.prob_caps):
            raise InputError(f"--prob-caps must be probabilities in (0, 1), got "
                             f"{list(self.prob_caps)}; e.g. 0.5,0.25")
        if any(not t > 0 for t in self.free_text_temperatures):
            raise InputError(f"--free-text-temperatures must be > 0, got "
                             f"{list(self.free_text_temperatures)}; e.g. 0.5,1,2")
        unknown = [s for s in self.steps if s not in STEPS]
        if unknown:
            raise InputError(f"unknown step(s) {unknown}; choose among {', '.join(STEPS)}")
        if "tree" in self.steps and (self.tree_depth < 1 or self.tree_top_k < 1
                                     or not 0 <= self.tree_min_prob < 1):
            raise InputError(f"need --depth >= 1, --top-k >= 1 and 0 <= --min-prob < 1; got "
                             f"{self.tree_depth}, {self.tree_top_k}, {self.tree_min_prob}")

    @classmethod
    def quick(cls) -> "CollapseConfig":
        """``difflens compare``'s lighter setting: probes, temperature, attractors and
        diversity (no divergence, which compare's capture section measures, and no tree),
        8 samples per prompt, no free-text temperature check."""
        return cls(steps=("probes", "temperature", "attractors", "diversity"), k_samples=8,
                   free_text_temperatures=())


@dataclasses.dataclass(frozen=True)
class CollapseResult(InstrumentResult):
    """What ``run_collapse`` wrote: the merged summary and this run's figures."""


CollapseRun = CollapseResult  # the name of earlier releases


def run_collapse(models: "LoadedModel | ModelPair | ModelSet | Models",
                 prompts: Sequence[str], out: Path, config: CollapseConfig = CollapseConfig(),
                 *, progress: bool = False, index: bool = True, tokenizer: Any = None
                 ) -> CollapseResult:
    """Run ``config.steps`` on ``prompts`` into ``out``; return the merged summary and this
    run's figures. (The probes and the tree need no prompts: pass ``()``.)

    With a ``ModelSet``, every per-model step (probes,
    tree, attractors, diversity) covers every model, keyed by its name; the rank
    correlation and the temperature sweep compare each later model with the base
    (``probes.rank_correlation.<model>``, ``temperature.<model>``; the free-text match is a
    pair's only). The divergence step compares a pair: for a set, ``difflens compare``'s
    capture section measures every pair's per-token KL.
    """
    target = as_models(models, tokenizer=tokenizer)
    from difflens._io import rich_progress

    config = dataclasses.replace(config, prompts=tuple(prompts))
    steps = config.steps
    if isinstance(target, ModelSet) and "divergence" in steps:
        raise InputError("the divergence step compares two models; for a model set, run "
                         "difflens compare (its capture section measures every pair's KL) or "
                         "give --base/--tuned")
    if "temperature" in steps and not isinstance(target, (ModelPair, ModelSet)):
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
    by_name = models_of(target)
    summary["models"] = {k: m.identity.name for k, m in by_name.items()}
    figures: list[AnyFigure] = []
    with rich_progress(progress) as rich_bar:
        def bar(desc: str, total: int) -> Callable[[int], None]:
            step = rich_bar(desc, total)
            return lambda n: step(n, "")

        if "divergence" in steps:
            advance = bar("divergence", 1)
            assert not isinstance(target, ModelSet)  # refused above
            corpus = (read_corpus(config.corpus) if config.corpus else sample_corpus(
                target, config.prompts, sources=config.sources or None,
                max_new_tokens=config.max_new_tokens, seed=config.seed,
                batch_size=config.batch_size))
            # One store per corpus, so a rerun with other prompts does not meet a finished
            # store of different texts (and the same corpus resumes or reuses its store).
            corpus_key = fingerprint([corpus.prompts, corpus.continuations], length=12)
            div = text_divergence(target, corpus, store=out / "capture" / corpus_key,
                                  progress=False, batch_size=config.batch_size)
            write_table(div.tokens, data, "divergence_tokens")
            curve = div.by_position(seed=config.seed)
            write_table(curve, data, "divergence_by_position")
            summary["divergence"] = div.summary(seed=config.seed)
            figures += divergence_figures(curve, list(by_name))
            figures += context_figures(summary["divergence"]["contexts"])
            if config.predict_entropy:
                table, summary["divergence"]["entropy_prediction"] = _entropy_prediction(
                    by_name, div, config)
                if len(table):
                    write_table(table, data, "entropy_prediction")
                figures += entropy_prediction_figures(
                    summary["divergence"]["entropy_prediction"])
            advance(1)
        results: ProbeResults | None = None
        if "probes" in steps or "temperature" in steps:
            advance = bar("probes", len(probes) * len(by_name))
            temps = config.temperatures if "temperature" in steps else (1.0,)
            results = run_probes(target, probes, temperatures=temps, progress=advance,
                                 batch_size=config.batch_size)
        if "probes" in steps and results is not None:
            write_table(results.phrasings, data, "probes")
            write_table(results.answers, data, "probe_answers")
            summary["probes"] = results.summary(seed=config.seed)
            figures += probe_figures(results, summary["probes"])
            if isinstance(target, ModelPair):
                ranks = rank_correlation(results, seed=config.seed)
                summary["probes"]["rank_correlation"] = ranks
                figures += rank_figures(ranks)
            elif isinstance(target, ModelSet):
                first = target.names[0]
                summary["probes"]["rank_correlation"] = {
                    m: rank_correlation(results, base=first, tuned=m, seed=config.seed)
                    for m in target.names[1:]}
        if "temperature" in steps and results is not None and isinstance(target, ModelSet):
            first, by_model = target.names[0], {}
            for m in target.names[1:]:
                sweep = temperature_sweep(results, base=first, tuned=m, seed=config.seed)
                write_table(sweep.table.assign(model=m), data, f"temperature_{m}")
                by_model[m] = sweep.summary()
            summary["temperature"] = by_model
            # the figure of the last model of the lineage (each model's table is in data/)
            figures += temperature_figures(sweep.table, sweep.best_T)
        elif "temperature" in steps and results is not None:
            sweep = temperature_sweep(results, seed=config.seed)
            write_table(sweep.table, data, "temperature")
            summary["temperature"] = sweep.summary()
            figures += temperature_figures(sweep.table, sweep.best_T)
            if config.prompts and config.free_text_temperatures and isinstance(target,
                                                                              ModelPair):
                temps = config.free_text_temperatures
                advance = bar("temperature: free text", len(config.prompts) * (len(temps) + 1))
                match = _free_text_temperature(target, config, data, advance)
                write_table(match.curves, data, "temperature_free_text")
                summary["temperature"]["free_text"] = match.summary()
                figures += free_text_figures(match, summary["temperature"])
        if "tree" in steps:
            advance = bar("trees", len(by_name))
            trees = {}
            for label, lm in by_name.items():
                trees[label] = probability_tree(lm, config.tree_prompt, depth=config.tree_depth,
                                                top_k=config.tree_top_k,
                                                min_prob=config.tree_min_prob)
                write_json_atomic(data / f"tree_{label}.json", trees[label].to_dict())
                advance(1)
            write_table(tree_table(trees), data, "tree_nodes")
            summary["tree"] = {label: tree_summary(t) for label, t in trees.items()}
            figures.append(tree_figure(trees))
        if "attractors" in steps:
            advance = bar("attractors", len(by_name))
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
            advance = bar("diversity: sampling", len(by_name) * len(config.prompts))
            samples = {label: _samples(lm, label, config, data, advance)
                       for label, lm in by_name.items()}
            reference, ref_name = config.reference, config.reference_name
            if reference is None:
                first = next(iter(by_name))
                again = dataclasses.replace(config, seed=config.seed + 10_000)
                reference = tuple(t for ts in _samples(by_name[first], first + "-reference",
                                                       again, data, None) for t in ts)
                ref_name = (f"a second, independent draw of {first}'s samples (its distance "
                            f"is the noise floor)")
            advance = bar("diversity: scoring", len(by_name) * len(config.prompts))
            div_res = diversity(samples, reference=reference, reference_name=ref_name,
                                encoder=embedder(config.encoder), encoder_name=config.encoder,
                                seed=config.seed, progress=advance)
            write_table(div_res.per_prompt, data, "diversity")
            summary["diversity"] = div_res.summary(seed=config.seed)
            summary["diversity_encoder"] = div_res.encoder
            figures += diversity_figures(summary["diversity"])
            if config.prob_caps:
                advance = bar("diversity: de-collapse", len(config.prob_caps)
                              * len(config.prompts) + 1)
                table, summary["decollapse"] = _decollapse(
                    target, config, samples, summary["diversity"], reference, ref_name, out,
                    data, advance)
                write_table(table, data, "decollapse")
                figures += decollapse_figures(summary["decollapse"])
    for fig in figures:
        fig.save(figdir)
    summary["config"] = {**summary.get("config", {}), **{
        k: v for k, v in dataclasses.asdict(config).items()
        if k not in ("prompts", "reference", "batch_size", "steps")  # batch_size: no result
    }, "n_prompts": len(config.prompts)}
    write_json_atomic(summary_path, summary)
    if index:
        write_index(out / "index.html", "difflens collapse", intro_html(summary), figures,
                    headline(summary))
    return CollapseResult(out=out, summary_json=summary, figures=figures)


FREE_TEXT_METRICS = ("distinct_2", "self_bleu", "vendi")


def _entropy_prediction(models: dict[str, LoadedModel], div: TextDivergence,
                        config: CollapseConfig) -> tuple[pd.DataFrame, dict[str, Any]]:
    """Per model, predict the mean entropy of its own continuation of each prompt from the
    prompt's final states (every layer), against the prompt-end entropy and the length."""
    tables, out = [], {}
    per_text = div.tokens.groupby("text_id")
    for label, lm in models.items():
        ids = [i for i, src in enumerate(div.corpus.sources) if src == label]
        col = f"{label}_entropy"
        target = per_text[col].mean().reindex(ids).to_numpy(np.float64)
        ids = [i for i, y in zip(ids, target, strict=True) if np.isfinite(y)]
        target = target[np.isfinite(target)]
        if len(ids) < 10:
            out[label] = {"skipped": f"needs at least 10 texts of {label}, got {len(ids)}",
                          "n_prompts": len(ids)}
            continue
        prompts = [div.corpus.prompts[i] for i in ids]
        ends = prompt_ends(lm, prompts, range(1, lm.n_layers + 1),
                           batch_size=config.batch_size)
        res = predict_entropy(ends.states, target, {"prompt-end entropy": ends.entropy,
                                                    "prompt length": ends.n_tokens},
                              seed=config.seed)
        out[label] = res.summary
        tables.append(res.table.assign(model=label, text_id=ids, prompt=prompts))
    return (pd.concat(tables, ignore_index=True) if tables else pd.DataFrame()), out


def _decollapse(target: LoadedModel | ModelPair | ModelSet, config: CollapseConfig,
                samples: dict[str, list[list[str]]], div_summary: dict[str, Any],
                reference: Sequence[str] | None, ref_name: str, out: Path, data: Path,
                advance: Callable[[int], None]
                ) -> tuple[pd.DataFrame, dict[str, Any]]:
    """The de-collapse sampler: the tuned model sampled with each probability cap, its
    diversity, and every sample set's perplexity under the base (one row per text)."""
    from difflens.capture.text_divergence import Corpus

    models = models_of(target)
    scorer_label, model_label = next(iter(models)), list(models)[-1]
    sets = {label: s for label, s in samples.items()}
    for cap in config.prob_caps:
        sets[f"{model_label} cap={cap:g}"] = _samples(models[model_label], model_label, config,
                                                      data, advance, prob_cap=cap)
    capped = {k: v for k, v in sets.items() if k not in samples}
    div = diversity(capped, reference=reference, reference_name=ref_name,
                    encoder=embedder(config.encoder), encoder_name=config.encoder,
                    seed=config.seed).summary(seed=config.seed)
    texts = [(label, p, t) for label, per in sets.items() for p, ts in enumerate(per)
             for t in ts if t.strip()]
    corpus = Corpus([config.prompts[p] for _, p, _ in texts], [t for _, _, t in texts],
                    [label for label, _, _ in texts])
    key = fingerprint([corpus.prompts, corpus.continuations], length=12)
    scored = text_divergence(models[scorer_label], corpus, store=out / "capture" / key,
                             batch_size=config.batch_size).tokens
    advance(1)
    table = pd.DataFrame({"set": corpus.sources, "prompt_id": [p for _, p, _ in texts],
                          "text": corpus.continuations, "nll": text_nll(scored, len(texts))})
    result = decollapse_summary(
        table, {label: div.get(label) or div_summary[label] for label in sets},
        model=model_label, scorer=scorer_label, caps=config.prob_caps, seed=config.seed)
    return table, result


def _free_text_temperature(pair: ModelPair, config: CollapseConfig, data: Path,
                           advance: Callable[[int], None]) -> TemperatureMatch:
    """Sample the tuned model at each free-text temperature and the base at 1 (the
    diversity step's samples, shared through the cache), and match their diversity."""
    base = _samples(pair.base, "base", config, data, advance)
    tuned = {t: _samples(pair.tuned, "tuned", config, data, advance, temperature=t)
             for t in config.free_text_temperatures}
    div = diversity({"base": base, **{f"T={t:g}": s for t, s in tuned.items()}},
                    encoder=embedder(config.encoder), encoder_name=config.encoder,
                    seed=config.seed).per_prompt
    at = {f"T={t:g}": t for t in tuned}
    tuned_rows = div[div.model != "base"].assign(T=lambda d: d.model.map(at))
    return meeting_temperature(tuned_rows, div[div.model == "base"], FREE_TEXT_METRICS,
                               seed=config.seed)


def _samples(lm: LoadedModel, label: str, config: CollapseConfig, data: Path,
             advance: Any, *, temperature: float = 1.0, prob_cap: float | None = None
             ) -> list[list[str]]:
    """K samples per prompt at ``temperature`` (one generate job per prompt, seed + prompt
    index, on the engine set by ``use_engine``; locally the jobs share forward batches of
    ``batch_size`` rows, each drawing its own stream), cached in ``data/samples_<label>.parquet``
    (``samples_<label>_T<t>`` away from T = 1) under a key of the model, prompts and
    settings."""
    parts: list[Any] = [lm.identity.weights_sha256, list(config.prompts), config.k_samples,
                        config.max_new_tokens, config.seed]
    if temperature != 1.0:
        parts.append(temperature)
        label = f"{label}_T{temperature:g}"
    if prob_cap is not None:
        parts.append(["prob_cap", prob_cap])
        label = f"{label}_cap{prob_cap:g}"
    key = fingerprint(parts, length=64)
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
        max_new_tokens=config.max_new_tokens, temperature=temperature, seed=config.seed + p,
        batch_size=config.k_samples, sampler="multinomial", prob_cap=prob_cap))
        for p, prompt in enumerate(config.prompts)]
    gens = generate_many(lm, jobs, batch_size=config.batch_size,
                         on_job=None if advance is None else lambda _j, _g: advance(1))
    for p, gen in enumerate(gens):
        for i, row in enumerate(gen.token_ids):
            rows.append({"prompt_id": p, "sample": i,
                         "text": tok.decode(row, skip_special_tokens=True), "key": key})
    df = pd.DataFrame(rows)
    write_parquet_atomic(path, df)
    df.drop(columns=["key"]).to_csv(path.with_suffix(".csv"), index=False)
    return [g.text.tolist() for _, g in df.groupby("prompt_id", sort=True)]
