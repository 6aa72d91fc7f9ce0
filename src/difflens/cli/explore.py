"""``difflens explore RUN_DIR ...``: browse run folders in a local, read-only web app."""

from pathlib import Path
from typing import Annotated

import typer

from difflens.cli._common import err, friendly_errors

RunDirs = Annotated[list[Path] | None, typer.Argument(
    help="Run folders: the --out folders of difflens commands.", show_default=False,
    metavar="RUN_DIR")]
Port = Annotated[int, typer.Option("--port", help="TCP port to serve on.")]
Host = Annotated[str, typer.Option(
    "--host", help="Address to bind. Anything but 127.0.0.1 lets other machines read the "
    "runs.")]


@friendly_errors
def explore_cmd(run_dirs: RunDirs = None, port: Port = 8765, host: Host = "127.0.0.1") -> None:
    """Browse runs: summaries, figures, tables, the trajectories atlas and the token diff."""
    from difflens.explore import ExploreConfig, serve
    from difflens.explore.runs import open_runs

    config = ExploreConfig(host=host, port=port)
    folders = list(run_dirs or [])
    open_runs(folders)  # a missing folder is one line here, before anything is served
    if config.exposed:
        err.print(f"[yellow]warning:[/] serving on {host}: anyone who can reach this machine "
                  f"on port {port} can read these runs; use --host 127.0.0.1 to keep them "
                  f"local", highlight=False, soft_wrap=True)
    shown = f"[{host}]" if ":" in host else host
    err.print(f"difflens explore: http://{shown}:{port}/ ({len(folders)} run"
              f"{'s' * (len(folders) != 1)}; Ctrl-C stops)", highlight=False, soft_wrap=True)
    serve(folders, config)
