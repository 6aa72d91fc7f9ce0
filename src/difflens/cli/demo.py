"""``difflens demo``: ``difflens compare`` on the built-in organism's lineage, end to end."""

from pathlib import Path

import typer
from rich.console import Console

from difflens.cli._common import friendly_errors

out = Console()


@friendly_errors
def demo_cmd(
    out_dir: Path = typer.Option(Path("difflens-demo"), "--out", help="Output directory."),
    seed: int | None = typer.Option(
        None, help="Train the organism with this seed (or reuse that build) instead of "
        "loading the shipped one."),
    small: bool = typer.Option(False, help="Use the reduced organism (seconds; for tests)."),
) -> None:
    """Run every instrument on the shipped organism's lineage base → sft → rl (or on your
    build of it, --seed) with stage attribution, and write a report."""
    from difflens.organism.build import OrganismConfig
    from difflens.pipelines.demo import run_demo
    from difflens.report.demo import demo_takeaways, explore_links

    cfg = (None if seed is None else
           OrganismConfig.small(seed) if small else OrganismConfig(seed=seed))
    summary = run_demo(out_dir, config=cfg, small=small, progress=True)
    out.print(f"[green]report:[/] {out_dir / 'index.html'}   summary: {out_dir / 'summary.json'}")
    out.print("[bold]Overview[/]")
    for line in demo_takeaways(summary):
        out.print(f"  {line}", highlight=False)
    command, _ = explore_links(str(out_dir))  # `difflens explore OUT`: every section
    out.print("[green]open the results in the explorer:[/]")
    typer.echo(command)  # on a line of its own, never wrapped, to copy as it is
