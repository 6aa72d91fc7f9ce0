"""``difflens concepts extract|compare|steer``: concept vectors from contrastive A/B items.

The three commands share their options and the activation cache in ``OUT/activations``, so
running ``extract`` then ``steer`` into the same folder runs the models once.
"""

from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

from difflens.cli._common import MaxInputs, OutDir, vocab
from difflens.cli._options import (
    LOADING,
    MODELS,
    REQUIRED,
    build,
    config_of,
    config_params,
    load_models,
)
from difflens.errors import InputError
from difflens.inputs.ab_items import ABDataset, load_ab_dataset
from difflens.pipelines.concepts import (
    ConceptsConfig,
    behaviour_labels,
    compare_behaviours,
    run_concepts,
)

app = typer.Typer(help="Concept vectors per layer: extract, compare base vs tuned, steer.",
                  no_args_is_help=True)
out = Console()


def _run(step: str, v: dict[str, Any]) -> None:
    steps = {"extract": ("extract",), "compare": ("extract", "compare"),
             "steer": ("extract", "steer")}[step]
    config = config_of(ConceptsConfig, v, base=ConceptsConfig(steps=steps))  # before loading
    datasets: list[Path] = v["dataset"]
    if len(datasets) > 1 and step != "compare":
        raise InputError(f"--dataset is given {len(datasets)} times; only `concepts compare` "
                         f"takes several (one behaviour each): run {step} once per dataset")
    loaded = []
    for dataset in datasets:
        ds = load_ab_dataset(dataset, format=v["fmt"], skip_bad=v["skip_bad"],
                             max_items=v["max_inputs"])
        if ds.skipped:
            out.print(f"[yellow]{ds.name}: skipped {len(ds.skipped)} malformed items[/] "
                      f"(first: {ds.skipped[0]})", highlight=False)
        loaded.append(ds)
    if len(loaded) > 1:
        behaviour_labels([d.path for d in loaded])  # a file given twice: stop before loading
    target = load_models(v)
    if len(loaded) > 1:
        _behaviours(target, loaded, v["out_dir"], config)
        return
    ds = loaded[0]
    summary = run_concepts(target, ds, v["out_dir"], config, progress=True).summary()
    out.print(f"[green]{len(ds)} items[/] ({summary['n_train']} train, {summary['n_test']} "
              f"held out), layers {summary['layers'][0]}..{summary['layers'][-1]}")
    for k, rows in summary.get("separation_auc", {}).items():
        if rows:
            b = max(rows, key=lambda r: r["value"])
            out.print(f"  {k}: best held-out AUC {b['value']:.3f} [{b['ci_low']:.3f}, "
                      f"{b['ci_high']:.3f}] at layer {b['layer']}")
    for k, v_ in summary.get("settling_layer", {}).items():
        out.print(f"  {k}: settling layer {v_['value']} [{v_['ci_low']}, {v_['ci_high']}] "
                  f"(cos to the next layer >= {v_['threshold']:g} from there on; n={v_['n']})")
    for k, by_layer in summary.get("steering", {}).items():
        best = str(summary["steering_best_layer"][k])
        pts = ", ".join(f"α={r['alpha']:+g}: {r['value']:.3f}" for r in by_layer[best])
        out.print(f"  {k} steering at layer {best}: P(match) {pts}")
    out.print(f"wrote {v['out_dir']}/summary.json, vectors.safetensors, data/, figures/, "
              f"index.html")


def _behaviours(target: Any, datasets: list[ABDataset], out_dir: Path,
                config: ConceptsConfig) -> None:
    s = compare_behaviours(target, datasets, out_dir, config, progress=True).summary()
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


_PARAMS: dict[str, tuple[Any, Any]] = {
    **MODELS, "out_dir": (OutDir, REQUIRED),
    "dataset": (Annotated[list[Path], typer.Option(
        "--dataset", help="A/B items: .json or .jsonl (compare: repeat it to put several "
        "behaviours on one chart).")], REQUIRED),
    "fmt": (Annotated[str, typer.Option("--format", help="auto|anthropic|caa|persona|plain.")],
            "auto"),
    "skip_bad": (Annotated[bool, typer.Option("--skip-bad", help="Skip malformed items.")],
                 False),
    "max_inputs": (MaxInputs, None),
    **config_params(ConceptsConfig), **LOADING}


def _command(step: str, doc: str):  # type: ignore[no-untyped-def]
    return build(lambda **v: _run(step, v), _PARAMS, doc)


_RENAMED = {"--max-items": "--max-inputs"}  # old flag names (one release)
app.command("extract", cls=vocab(_RENAMED))(_command(
    "extract", "Extract a concept vector per layer (and model) and its held-out separation."))
app.command("compare", cls=vocab(_RENAMED))(_command(
    "compare", "Extract, then compare: cosine base vs tuned, layer heatmaps, PCA."))
app.command("steer", cls=vocab(_RENAMED))(_command(
    "steer", "Extract, then steer: held-out P(matching answer) vs alpha, and generations."))
