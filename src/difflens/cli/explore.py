"""``difflens explore [RUN_DIR ...] [--base B --tuned T]``: browse run folders in a local
web app, and with models, type text, grow probability trees and steer live."""

from pathlib import Path
from typing import Annotated

import typer

from difflens.cli._common import (
    Device,
    DeviceMap,
    Dtype,
    LayersPath,
    MergeAdapters,
    Quantize,
    Revision,
    Tuned,
    UnusedBatchSize,
    err,
    friendly_errors,
    load_target,
    unused_batch_size,
)
from difflens.errors import InputError

RunDirs = Annotated[list[Path] | None, typer.Argument(
    help="Run folders: the --out folders of difflens commands (concepts and train-probe "
    "folders also give the live steer view its vectors and probes).", show_default=False,
    metavar="RUN_DIR")]
Port = Annotated[int, typer.Option("--port", help="TCP port to serve on.")]
Host = Annotated[str, typer.Option(
    "--host", help="Address to bind. Anything but 127.0.0.1 lets other machines read the "
    "runs.")]
#: ``--base`` as an option one may leave out (the live views need it, the runs do not).
OptionalBase = Annotated[str | None, typer.Option(
    "--base", help="Base model (or the only one) of the live views: hub id, folder, .gguf or "
    "preset (see `difflens list presets`). Without it only the runs are served.")]


@friendly_errors
def explore_cmd(run_dirs: RunDirs = None, base: OptionalBase = None, tuned: Tuned = None,
                port: Port = 8765, host: Host = "127.0.0.1", revision: Revision = None,
                dtype: Dtype = None, device: Device = None, layers_path: LayersPath = None,
                device_map: DeviceMap = None, quantize: Quantize = None,
                merge_adapters: MergeAdapters = False,
                batch_size: UnusedBatchSize = None) -> None:
    """Browse runs (summaries, figures, tables, the trajectories atlas and the token diff);
    with --base/--tuned also the live views: typed text, the multiverse, steer and monitor."""
    from difflens.explore import ExploreConfig, serve
    from difflens.explore.runs import open_runs

    config = ExploreConfig(host=host, port=port)
    folders = list(run_dirs or [])
    if tuned is not None and base is None:
        raise InputError("--tuned needs --base: give the base model too")
    # a missing folder is one line here, before any model is loaded or anything served
    served = open_runs(folders, allow_empty=base is not None)
    unused_batch_size(batch_size, "explore")
    if config.exposed:
        err.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach this machine "
                  f"on port {port} can read these runs; use --host 127.0.0.1 to keep them "
                  f"local", highlight=False, soft_wrap=True)
    live = None
    if base is not None:
        from difflens.explore.live import open_live

        target = load_target(base, tuned, revision=revision, dtype=dtype, device=device,
                             layers_path=layers_path, device_map=device_map,
                             quantization=quantize, merge_adapters=merge_adapters)
        live = open_live(target, served)
        for problem in live.problems:
            err.print(f"[yellow]warning:[/] {problem}", highlight=False, soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    models = "" if live is None else f", live views on {', '.join(live.models)}"
    err.print(f"difflens explore: http://{shown}:{port}/ ({len(folders)} run"
              f"{'s' * (len(folders) != 1)}{models}; Ctrl-C stops)", highlight=False,
              soft_wrap=True)
    if live is None:
        serve(folders, config)
    else:
        serve(folders, config, live=live)
