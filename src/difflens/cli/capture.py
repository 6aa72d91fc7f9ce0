"""``difflens capture run|info``: capture activations into a run store, and describe one.

``difflens capture OPTIONS`` (the old single command) still runs ``capture run`` for one
release, with its old ``--dtype`` (the stored dtype) read as ``--store-dtype``."""

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from difflens.capture import RunStore, capture, read_prompts
from difflens.cli._common import (
    Base,
    BatchSize,
    Device,
    DeviceMap,
    Dtype,
    EngineName,
    LayersPath,
    MergeAdapters,
    Quantize,
    RayAddress,
    Revision,
    StoreOut,
    Tuned,
    WorkerGpus,
    Workers,
    default_verb_group,
    engine_of,
    friendly_errors,
    load_target,
)

app = typer.Typer(help="Capture all-layer activations and next-token statistics, and read "
                  "run stores.", no_args_is_help=True,
                  cls=default_verb_group("run", legacy_renamed={"--dtype": "--store-dtype"}))
out = Console()


@app.command("run")
@friendly_errors
def run_cmd(
    base: Base,
    out_dir: StoreOut,
    prompts: Path = typer.Option(..., "--prompts", help="Prompt file: .txt .jsonl .json .csv"),
    tuned: Tuned = None,
    layers: str = typer.Option("all", help="'all', a list like 0,3,5 (negatives allowed), "
                               "or 'none' (next-token statistics only)."),
    positions: str = typer.Option("all", help="'all', 'last' or a list like -1,-2."),
    field: str | None = typer.Option(None, help="JSONL/JSON/CSV field holding the prompt."),
    store_dtype: str = typer.Option("float32", help="Stored hidden-state dtype: "
                                    "float32|float16."),
    top_k: int = typer.Option(5, help="Top next tokens recorded per position."),
    logprob_positions: str = typer.Option("", help="Positions to store full log-probs at."),
    no_truncate: bool = typer.Option(False, "--no-truncate", help="Error on too-long prompts."),
    batch_size: BatchSize = 32,
    shard_mb: int = typer.Option(128, help="Target size of one tensor shard (MB)."),
    device: Device = None,
    dtype: Dtype = None,
    device_map: DeviceMap = None,
    quantize: Quantize = None,
    revision: Revision = None,
    layers_path: LayersPath = None,
    merge_adapters: MergeAdapters = False,
    engine: EngineName = "local",
    address: RayAddress = None,
    workers: Workers = 2,
    worker_gpus: WorkerGpus = 0.0,
) -> None:
    """Capture all-layer activations and next-token statistics into a run store (resumable:
    rerun the same command after an interruption, on either engine)."""
    texts = read_prompts(prompts, field=field)
    pos: str | list[int] = (
        positions if positions in ("all", "last") else _ints(positions, "--positions"))
    ray_engine = engine_of(engine, address, workers, worker_gpus)
    target = load_target(base, tuned, revision=revision, dtype=dtype, device=device,
                         layers_path=layers_path, device_map=device_map, quantization=quantize,
                         merge_adapters=merge_adapters)
    store = capture(
        target, texts, store=out_dir, layers=() if layers.strip() == "none" else layers,
        positions=pos,  # type: ignore[arg-type]
        store_dtype=store_dtype,
        top_k=top_k, logprob_positions=_ints(logprob_positions, "--logprob-positions"),
        truncate=not no_truncate, batch_size=batch_size, shard_mb=shard_mb, progress=True,
        engine=ray_engine or "local",
    )
    d = store.describe()
    out.print(f"[green]stored[/] {d['n_prompts']} prompts, {d['n_tokens']} tokens, layers "
              f"{_span(d['layers'])} of {', '.join(d['models'])} in {d['path']} "
              f"({d['size_mb']} MB)")


def _ints(text: str, option: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        from difflens.errors import InputError

        raise InputError(f"{option} takes integers like -1,0,3, got {text!r}") from None


def _span(layers: list[int]) -> str:
    if not layers:
        return "none (statistics only)"
    if layers == list(range(layers[0], layers[-1] + 1)) and len(layers) > 2:
        return f"{layers[0]}..{layers[-1]}"
    return ",".join(map(str, layers))


@app.command("info")
@friendly_errors
def info_cmd(
    path: str = typer.Argument(..., help="A run store directory, or its URI (s3://...)."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Show what a run store holds."""
    d = RunStore.open(path).describe()
    if as_json:
        print(json.dumps(d, indent=2))
        return
    table = Table(title=f"run store {d['path']}", show_header=False)
    for label, m in d["models"].items():
        table.add_row(f"model [{label}]", f"{m['name']} ({m['architecture']}, {m['n_layers']} "
                      f"layers, d_model {m['d_model']}, weights {m['weights_sha256']})")
    for k in ("key", "n_prompts", "n_tokens", "n_rows", "positions", "dtype", "n_truncated",
              "n_shards", "size_mb"):
        table.add_row(k, str(d[k]))
    table.add_row("layers", _span(d["layers"]))
    table.add_row("stats columns", ", ".join(d["stats_columns"]))
    out.print(table)
