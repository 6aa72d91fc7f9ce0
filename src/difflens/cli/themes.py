"""``difflens themes sample|fit|chains|predict|evaluate|all``: themes of sampled continuations;
``consistency`` and ``generalisation`` run on request.

Every step writes into ``--out`` and reuses what earlier steps stored there (samples, the
theme model, each segment's theme, predictions), so they can run one at a time, in order,
or together (``all``)."""

import dataclasses
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from difflens.cli._common import OutDir, PromptsFile, vocab
from difflens.cli._options import (
    ENGINE,
    LOADING,
    MODELS,
    REQUIRED,
    build,
    config_of,
    config_params,
    engine,
    load_models,
)
from difflens.errors import InputError
from difflens.models.engines import use_engine
from difflens.pipelines.themes import ThemesConfig

app = typer.Typer(help="Themes and trajectory prediction: sample, cluster into themes, "
                  "chains, predict chains from activations.", no_args_is_help=True)
out = Console()

STEP_SETS = {"sample": ("sample",), "fit": ("sample", "fit"), "chains": ("sample", "chains"),
             "predict": ("sample", "predict"), "evaluate": ("sample", "evaluate"),
             "all": ("sample", "fit", "chains", "predict", "evaluate"),
             "consistency": ("sample", "consistency"),
             "generalisation": ("sample", "generalisation")}


def _print(summary: dict, out_dir: Path) -> None:  # type: ignore[type-arg]
    out.print(f"{summary['n_prompts']} prompts × {summary['k_samples']} continuations "
              f"({summary.get('empty_continuations', 0)} empty)")
    if "n_themes" in summary:
        out.print(f"{summary['n_themes']} themes from {summary['n_segments']} segments "
                  f"(outliers {summary['outlier_share']:.3f}):")
        for t in summary["themes"]:
            out.print(f"  {t['theme']:>2} {t['name']:<30} n={t['size']:<6} e.g. "
                      f"{t['examples'][0][:70]!r}", highlight=False)
    if "best_layer" in summary:
        for name, by_layer in summary["predictors"].items():
            for layer, r in by_layer.items():
                if name == "probe" and int(layer) != summary["best_layer"]:
                    continue
                kl, gain = r["kl"], r["kl_gain"]
                out.print(f"  {name} (layer {layer}): KL {kl['value']:.3f} [{kl['ci_low']:.3f}, "
                          f"{kl['ci_high']:.3f}], gain over marginal {gain['value']:.3f} "
                          f"[{gain['ci_low']:.3f}, {gain['ci_high']:.3f}], top-1 "
                          f"{r['top1']['value']:.3f}, ECE {r['ece']['value']:.3f}")
        for name, r in summary["baselines"].items():
            kl = r["kl"]
            out.print(f"  baseline {name}: KL {kl['value']:.3f} [{kl['ci_low']:.3f}, "
                      f"{kl['ci_high']:.3f}], top-1 {r['top1']['value']:.3f}")
    if "organism" in summary:
        o = summary["organism"]
        out.print(f"organism: ARI {o['ari']:.3f}, transition TVD {o['transition_tvd']:.3f}")
    if "consistency" in summary:
        c = summary["consistency"]
        r = c["resample_ari"]
        out.print(f"consistency: ARI {r['value']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}] "
                  f"between fits of two sample sets (k = {c['k'][0]}, {c['k'][1]}; "
                  f"{r['n_prompts']} prompts)")
    g = summary.get("prediction", {}).get("generalisation")
    if g:
        for split in ("group_split", "random_split"):
            b = g[split]
            out.print(f"{split}: " + ", ".join(
                f"{name} KL {b[name]['kl']['value']:.3f} [{b[name]['kl']['ci_low']:.3f}, "
                f"{b[name]['kl']['ci_high']:.3f}]"
                for name in ("probe", "sentence_embedding", "marginal")))
    out.print(f"wrote {out_dir}/summary.json, data/, figures/, index.html")


def _run(step: str, v: dict[str, Any]) -> None:
    from difflens.inputs.prompts import read_prompts
    from difflens.organism.truth import organism_theme_prompts
    from difflens.pipelines.themes import run_themes

    segment = v["segment"]
    mode, _, n = segment.partition(":")  # tokens:N, as --segment tokens --segment-window N
    if n:
        try:
            v = {**v, "segment": mode, "segment_window": int(n)}
        except ValueError:
            raise InputError(f"--segment takes sentences or tokens:N (tokens per segment), "
                             f"got {segment!r}") from None
    config = config_of(ThemesConfig, v, base=ThemesConfig(steps=STEP_SETS[step]))
    prompts, organism = v["prompts"], v["organism"]
    if (prompts is None) == (organism == 0):
        raise InputError("give exactly one of --prompts FILE or --organism N")
    truth = None
    if organism:
        texts, truth = organism_theme_prompts(organism, seed=config.seed + 555)
    else:
        texts = tuple(read_prompts(prompts))
    if not texts:
        raise InputError(f"{prompts}: no usable prompts")
    config = dataclasses.replace(config, prompts=texts, truth=truth)
    target = load_models(v)
    with use_engine(engine(v)):
        run = run_themes(target, texts, v["out_dir"], config, progress=True)
    _print(run.summary(), v["out_dir"])


_PARAMS: dict[str, tuple[Any, Any]] = {
    **MODELS, "out_dir": (OutDir, REQUIRED), "prompts": (PromptsFile, None),
    "organism": (Annotated[int, typer.Option(
        "--organism", help="Use N held-out world openings (enables the ground-truth "
        "checks).")], 0),
    **config_params(ThemesConfig), **LOADING, **ENGINE}


def _command(step: str, doc: str):  # type: ignore[no-untyped-def]
    return build(lambda **v: _run(step, v), _PARAMS, doc)


#: old flag names (one release). (``--model`` was once the base here; it is now a model of
#: the run, as in every command, so a lone ``--model M`` is still the one model.)
_RENAMED = {"--k": "--samples"}
for _name, _doc in (("sample", "Sample K continuations per prompt (stored, resumable)."),
                    ("fit", "Segment, embed and cluster the continuations into themes."),
                    ("chains", "Chains of themes per continuation, and their distributions."),
                    ("predict", "Predict theme distributions from the prompt's activations."),
                    ("evaluate", "Everything, plus the organism's ground-truth checks."),
                    ("all", "Every step."),
                    ("consistency", "Fit themes on a second, independent sample set of the "
                     "same prompts and compare the two fits (ARI)."),
                    ("generalisation", "Predict first themes of each group of prompts "
                     "(the organism's start themes) from the other groups (after fit).")):
    app.command(_name, cls=vocab(_RENAMED))(_command(_name, _doc))
