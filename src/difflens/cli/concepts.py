"""``difflens concepts extract|compare|steer``: concept vectors from contrastive A/B items.

The three commands share their options and the activation cache in ``OUT/activations``, so
running ``extract`` then ``steer`` into the same folder runs the models once.
"""

from pathlib import Path
from typing import Any

import typer
from rich.console import Console

from difflens.cli._common import (
    Base,
    BatchSize,
    Device,
    DeviceMap,
    Dtype,
    LayersPath,
    MaxInputs,
    OutDir,
    Quantize,
    Revision,
    Seed,
    Tuned,
    friendly_errors,
    load_target,
    vocab,
)
from difflens.errors import InputError
from difflens.inputs.ab_items import ABDataset, load_ab_dataset
from difflens.models.loading import LoadedModel
from difflens.models.pair import ModelPair
from difflens.pipelines.concepts import (
    DEFAULT_ALPHAS,
    behaviour_labels,
    compare_behaviours,
    run_concepts,
)

app = typer.Typer(help="Concept vectors per layer: extract, compare base vs tuned, steer.",
                  no_args_is_help=True)
out = Console()


def _floats(text: str, option: str) -> list[float]:
    try:
        return [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise InputError(f"{option} takes numbers like -2,0,2, got {text!r}") from None


def _run(step: str, base: str, tuned: str | None, datasets: list[Path], out_dir: Path,
         fmt: str, layers: str, position: str, method: str, chat: bool | None, skip_bad: bool,
         max_items: int | None, test_fraction: float, seed: int, steer_layers: str,
         alphas: str, alpha_unit: str, n_generations: int, batch_size: int, device: str | None,
         dtype: str | None, revision: str | None, layers_path: str | None,
         device_map: str | None, quantize: str | None, settle_threshold: float) -> None:
    from difflens.capture.concepts import METHODS
    from difflens.inputs.ab_items import POSITIONS

    if position not in POSITIONS:  # check options before loading anything
        raise InputError(f"position must be one of {', '.join(POSITIONS)}, got {position!r}")
    if method not in METHODS:
        raise InputError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if not -1.0 <= settle_threshold <= 1.0:
        raise InputError(f"--settle-threshold is a cosine, in [-1, 1]; got {settle_threshold}")
    if len(datasets) > 1 and step != "compare":
        raise InputError(f"--dataset is given {len(datasets)} times; only `concepts compare` "
                         f"takes several (one behaviour each): run {step} once per dataset")
    loaded = []
    for dataset in datasets:
        ds = load_ab_dataset(dataset, format=fmt, skip_bad=skip_bad, max_items=max_items)
        if ds.skipped:
            out.print(f"[yellow]{ds.name}: skipped {len(ds.skipped)} malformed items[/] "
                      f"(first: {ds.skipped[0]})", highlight=False)
        loaded.append(ds)
    if len(loaded) > 1:
        behaviour_labels([d.path for d in loaded])  # a file given twice: stop before loading
    target = load_target(base, tuned, revision=revision, dtype=dtype, device=device,
                         layers_path=layers_path, device_map=device_map, quantization=quantize)
    if len(loaded) > 1:
        _behaviours(target, loaded, out_dir, layers=layers, position=position, method=method,
                    chat=chat, test_fraction=test_fraction, seed=seed, batch_size=batch_size,
                    settle_threshold=settle_threshold)
        return
    ds = loaded[0]
    steps = {"extract": ("extract",), "compare": ("extract", "compare"),
             "steer": ("extract", "steer")}[step]
    s_layers = [int(x) for x in steer_layers.split(",") if x.strip()] if steer_layers else None
    summary = run_concepts(
        target, ds, out_dir, steps=steps, layers=layers, position=position, method=method,
        chat=chat, test_fraction=test_fraction, seed=seed, steer_layers=s_layers,
        alphas=_floats(alphas, "--alphas"), alpha_unit=alpha_unit, n_generations=n_generations,
        batch_size=batch_size, settle_threshold=settle_threshold, progress=True).summary
    out.print(f"[green]{len(ds)} items[/] ({summary['n_train']} train, {summary['n_test']} "
              f"held out), layers {summary['layers'][0]}..{summary['layers'][-1]}")
    for k, rows in summary.get("separation_auc", {}).items():
        if rows:
            b = max(rows, key=lambda r: r["value"])
            out.print(f"  {k}: best held-out AUC {b['value']:.3f} [{b['ci_low']:.3f}, "
                      f"{b['ci_high']:.3f}] at layer {b['layer']}")
    for k, v in summary.get("settling_layer", {}).items():
        out.print(f"  {k}: settling layer {v['value']} [{v['ci_low']}, {v['ci_high']}] "
                  f"(cos to the next layer >= {v['threshold']:g} from there on; n={v['n']})")
    for k, by_layer in summary.get("steering", {}).items():
        best = str(summary["steering_best_layer"][k])
        pts = ", ".join(f"α={r['alpha']:+g}: {r['value']:.3f}" for r in by_layer[best])
        out.print(f"  {k} steering at layer {best}: P(match) {pts}")
    out.print(f"wrote {out_dir}/summary.json, vectors.safetensors, data/, figures/, index.html")


def _behaviours(target: LoadedModel | ModelPair, datasets: list[ABDataset], out_dir: Path,
                **options: Any) -> None:
    s = compare_behaviours(target, datasets, out_dir, progress=True, **options).summary
    for name, b in s["behaviours"].items():
        low = min((r for r in b["cosine_by_layer"] if r["value"] == r["value"]),  # not NaN
                  key=lambda r: r["value"], default=None)
        line = f"[green]{name}[/]: {b['n_items']} items"
        if low is not None:
            line += (f"; lowest cos(base, tuned) {low['value']:.3f} [{low['ci_low']:.3f}, "
                     f"{low['ci_high']:.3f}] at layer {low['layer']}")
        for k, v in b["settling_layer"].items():
            line += f"; {k} settles at layer {v['value']} [{v['ci_low']}, {v['ci_high']}]"
        out.print(line, highlight=False)
    out.print(f"wrote {out_dir}/summary.json, data/cosine_by_behaviour, figures/, index.html "
              f"and one folder per behaviour")


def _command(step: str, doc: str):  # type: ignore[no-untyped-def]
    @friendly_errors
    def cmd(
        base: Base,
        out_dir: OutDir,
        dataset: list[Path] = typer.Option(
            ..., "--dataset", help="A/B items: .json or .jsonl (compare: repeat it to put "
                                   "several behaviours on one chart)."),
        tuned: Tuned = None,
        fmt: str = typer.Option("auto", "--format",
                                help="auto|anthropic|caa|persona|plain."),
        layers: str = typer.Option("all", help="'all' or a list like 0,3,5."),
        position: str = typer.Option("answer", help="answer (the answer letter) | last."),
        method: str = typer.Option("mean_diff", help="mean_diff (CAA) | pca."),
        chat: bool | None = typer.Option(None, "--chat/--no-chat",
                                         help="Wrap in the chat template (default: if any)."),
        skip_bad: bool = typer.Option(False, "--skip-bad", help="Skip malformed items."),
        max_inputs: MaxInputs = None,
        test_fraction: float = typer.Option(0.2, help="Held-out share of items."),
        seed: Seed = 0,
        steer_layers: str = typer.Option("", help="Layers to steer (default: best + 1/3, 2/3)."),
        alphas: str = typer.Option(",".join(f"{a:g}" for a in DEFAULT_ALPHAS),
                                   help="Steering multipliers."),
        alpha_unit: str = typer.Option(
            "vector", help="vector (alpha x the concept vector, CAA) | residual (alpha x the "
            "layer's mean residual norm, along the vector)."),
        n_generations: int = typer.Option(3, help="Steered greedy generations to show."),
        settle_threshold: float = typer.Option(
            0.9, help="compare: the least cosine between consecutive layers' vectors that "
                      "counts as settled (the settling layer)."),
        batch_size: BatchSize = 32,
        device: Device = None,
        dtype: Dtype = None,
        device_map: DeviceMap = None,
        quantize: Quantize = None,
        revision: Revision = None,
        layers_path: LayersPath = None,
    ) -> None:
        _run(step, base, tuned, dataset, out_dir, fmt, layers, position, method, chat, skip_bad,
             max_inputs, test_fraction, seed, steer_layers, alphas, alpha_unit, n_generations,
             batch_size, device, dtype, revision, layers_path, device_map, quantize,
             settle_threshold)

    cmd.__doc__ = doc
    return cmd


_RENAMED = {"--max-items": "--max-inputs"}  # old flag names (one release)
app.command("extract", cls=vocab(_RENAMED))(_command(
    "extract", "Extract a concept vector per layer (and model) and its held-out separation."))
app.command("compare", cls=vocab(_RENAMED))(_command(
    "compare", "Extract, then compare: cosine base vs tuned, layer heatmaps, PCA."))
app.command("steer", cls=vocab(_RENAMED))(_command(
    "steer", "Extract, then steer: held-out P(matching answer) vs alpha, and generations."))
