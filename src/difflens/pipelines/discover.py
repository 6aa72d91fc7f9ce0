"""``difflens discover``: what a fine-tune changed, found without being told where to look.

Three methods and a baseline, on a pair (base, tuned) or on each stage of a lineage:

- ``adl`` (Activation Difference Lens): the mean ``h_tuned - h_base`` over the first
  ``positions`` tokens of unrelated texts at a middle layer (every layer in a table), read
  through each model's logit lens and a Patchscope, then used to steer both models with a
  strength searched per opening (the largest whose sample's perplexity under the base stays
  within ``coherence_factor`` of the unsteered sample's), and checked causally: the tuned
  model's loss on the fine-tuning texts when its state is the base's plus ``delta``,
  against random vectors of the same norm.
- ``mining``: at every token of the texts, the tokens whose log-probability the fine-tune
  raised most (and lowered most); counts, NMF topics, examples.
- ``amplify``: samples from ``l_tuned + alpha (l_tuned - l_base)`` for ``alpha`` on a grid
  (the one generation path with an amplified backend); per alpha, how often the hypothesis
  words appear, distinct-2 and perplexity under the base; the words that grow with alpha.
- ``crosscoder`` and ``diff_sae`` (opt-in): a BatchTopK crosscoder on both models'
  per-token states, and an SAE on their differences; the tuned-only latents that survive
  Latent Scaling (every latent, for the SAE) read through the logit lens and their
  max-activating texts (``pipelines/discover_crosscoder.py``).
- ``logodds`` (always, the baseline every method must beat): words ranked by the log-odds
  of their rate in the two models' own samples from neutral openings, CIs over samples.

``summary.json`` holds ``discover.<method>.top_words`` (the best 20 words, best first) for
every method that ran, and ``discover.hypothesis`` (``words``, ``support``, ``examples``,
``note``, and ``themes`` when ``compare``'s themes section moved some). A lineage's
``stages.<a>-to-<b>`` hold the same per adjacent pair (``OUT/stages/<a>-to-<b>/``), and
``discover`` is base against the last model. The rules behind the words are stated in
``difflens.analysis.discover``.
"""

import dataclasses
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from difflens._io import (
    check_writable,
    rich_progress,
    write_json_atomic,
    write_tensors_atomic,
)
from difflens.analysis import discover as D
from difflens.errors import InputError
from difflens.models.loading import LoadedModel
from difflens.models.model_set import ModelSet
from difflens.models.pair import ModelPair
from difflens.models.wrapping import Models, as_model_set
from difflens.pipelines.discover_config import (  # re-exported: the command's settings
    METHODS,
    DiscoverConfig,
    builtin_openings,
    builtin_texts,
    read_texts,
)
from difflens.pipelines.discover_crosscoder import DICTIONARY_METHODS, run_dictionaries
from difflens.pipelines.discover_steps import Pair, run_pair, token_texts
from difflens.pipelines.result import InstrumentResult
from difflens.report.discover import discover_figures, discover_intro, headline
from difflens.report.figures import write_index
from difflens.report.tables import write_table


@dataclasses.dataclass(frozen=True)
class DiscoverResult(InstrumentResult):
    """What ``run_discover`` wrote."""

    hypothesis: dict[str, Any] = dataclasses.field(default_factory=dict)


def _write(out: Path, summary: dict[str, Any], frames: Mapping[str, pd.DataFrame],
           title: str, index: bool) -> list[Any]:
    for name, df in frames.items():
        write_table(df, out / "data", name)
    figures = discover_figures(summary, frames)
    for fig in figures:
        fig.save(out / "figures")
    write_json_atomic(out / "summary.json", summary)
    if index:
        write_index(out / "index.html", title, discover_intro(summary), figures,
                    headline(summary))
    return figures


def _pair_run(base: LoadedModel, tuned: LoadedModel, names: tuple[str, str], out: Path,
              texts: list[str], openings: list[str], finetune: list[str] | None,
              config: DiscoverConfig, tokens: list[str], bar: Any, index: bool,
              themes: Sequence[Mapping[str, Any]], planted: Sequence[str] | None = None,
              shared: dict[Any, Any] | None = None) -> tuple[dict[str, Any], list[Any]]:
    p = Pair(base, tuned, names, texts, openings, finetune, config, tokens, bar,
             shared={} if shared is None else shared)
    body = run_pair(p, themes)
    t0 = time.perf_counter()
    run_dictionaries(p, body, out)  # crosscoder, diff_sae: when config.methods names them
    body["seconds"] += time.perf_counter() - t0
    found = {k: v for k, v in body.items()
             if k in ("adl", "mining", "amplify", *DICTIONARY_METHODS, "logodds",
                      "hypothesis")}
    if planted:
        found["planted"] = {"words": list(planted), "share": {
            m: D.planted_share(v["words"] if m == "hypothesis" else v["top_words"], planted)
            for m, v in found.items()}}
    summary = {"discover": found,
               **{k: v for k, v in body.items() if k in ("models", "names", "seconds")},
               "n_texts": len(texts), "n_openings": len(openings),
               "n_finetune_texts": len(finetune or []), "config": _config_json(config)}
    figures = _write(out, summary, p.frames, f"difflens discover: {names[0]} -> {names[1]}",
                     index)
    if "adl_delta" in p.extra:  # the mean differences themselves, to steer with later
        ad = p.extra["adl_delta"]
        write_tensors_atomic(out / "adl_delta.safetensors", {"delta": ad.delta.contiguous()},
                             {"layers": ",".join(map(str, ad.layers)), "positions": str(ad.k),
                              "base": base.identity.name, "tuned": tuned.identity.name,
                              "layer": str(found["adl"]["layer"])})
    return summary, figures


def _config_json(c: DiscoverConfig) -> dict[str, Any]:
    return {f.name: (list(v) if isinstance(v := getattr(c, f.name), tuple) else v)
            for f in dataclasses.fields(c)}


def run_discover(
    models: "ModelPair | ModelSet | Models",
    out: Path,
    config: DiscoverConfig = DiscoverConfig(),
    *,
    texts: Sequence[str] | None = None,
    openings: Sequence[str] | None = None,
    finetune_texts: Sequence[str] | None = None,
    themes: Sequence[Mapping[str, Any]] = (),
    planted: Sequence[str] | None = None,
    progress: bool = False,
    index: bool = True,
    tokenizer: Any = None,
) -> DiscoverResult:
    """Run ``config.methods`` (and the log-odds baseline) on a pair or on each stage of a
    set into ``out`` (see the module docstring for the outputs).

    Args:
        models: a ``ModelPair``, a ``ModelSet`` (a lineage, base first) or two plain models.
        texts: unrelated texts (default: the built-in ones, ``builtin_texts``).
        openings: neutral openings the samples start from (default ``builtin_openings``).
        finetune_texts: the fine-tuning texts, when known (the causal check and the
            steered-text similarity use them).
        themes: names of themes whose share moved (``compare``'s themes section), added to
            the hypothesis.
        planted: the words a known objective planted (a model organism's): each method's
            ``planted_share`` of its top words is added (``discover.planted``), by the
            matching rule of ``analysis.discover.words_match``.
    """
    mset = as_model_set(models, tokenizer=tokenizer)
    if len(mset) < 2:
        raise InputError("discover compares models: give a base and a tuned model "
                         "(--base B --tuned T, or --model NAME=MODEL for each)")
    texts = list(texts) if texts is not None else builtin_texts()
    openings = list(openings) if openings is not None else builtin_openings()
    if not texts or not openings:
        raise InputError("discover needs at least one text and one opening")
    base = mset.base
    if config.layer is not None:
        base.layers.normalize(config.layer)  # a layer out of range: one line, nothing written
    check_writable(out)
    tokens = token_texts(base)
    finetune = list(finetune_texts)[:config.max_finetune] if finetune_texts else None
    shared: dict[Any, Any] = {}  # each model's mean states and samples, for all its pairs
    with rich_progress(progress) as bar:
        names = list(mset.names)
        final = (names[0], names[-1])
        summary, figures = _pair_run(mset.pair(*final).base, mset.pair(*final).tuned, final,
                                     out, texts, openings, finetune, config, tokens, bar,
                                     index, themes, planted, shared)
        if len(names) > 2:
            summary["stages"] = {}
            for a, b in zip(names, names[1:], strict=False):
                pair = mset.pair(a, b)
                stage, _ = _pair_run(pair.base, pair.tuned, (a, b), out / "stages" /
                                     f"{a}-to-{b}", texts, openings, finetune, config,
                                     tokens, bar, index, (), None, shared)
                summary["stages"][f"{a}-to-{b}"] = stage["discover"]
            summary["lineage"] = names
            write_json_atomic(out / "summary.json", summary)
    return DiscoverResult(out=out, summary_json=summary, figures=figures,
                          hypothesis=summary["discover"]["hypothesis"])


__all__ = ["METHODS", "DiscoverConfig", "DiscoverResult", "builtin_openings",
           "builtin_texts", "read_texts", "run_discover"]
