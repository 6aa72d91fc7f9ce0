"""``difflens demo``: ``difflens compare`` on the built-in organism's lineage, end to end."""

from pathlib import Path

import typer
from rich.console import Console

from difflens.cli._common import friendly_errors

out = Console()


@friendly_errors
def demo_cmd(
    out_dir: Path = typer.Option(Path("difflens-demo"), "--out", help="Output directory."),
    seed: int = typer.Option(0, help="Seed of the organism."),
    small: bool = typer.Option(False, help="Use the reduced organism (seconds; for tests)."),
) -> None:
    """Build the organism (base, sft, rl, rl-from-base) if missing, run every instrument on
    its lineage base → sft → rl with stage attribution, write a report."""
    from difflens.organism.build import LINEAGE, OrganismConfig
    from difflens.pipelines.demo import run_demo
    from difflens.report.demo import demo_takeaways, explore_links

    cfg = OrganismConfig.small(seed) if small else OrganismConfig(seed=seed)
    summary = run_demo(out_dir, config=cfg, small=small, progress=True)
    out.print(f"[green]report:[/] {out_dir / 'index.html'}   summary: {out_dir / 'summary.json'}")
    out.print("[bold]Overview[/]")
    for line in demo_takeaways(summary):
        out.print(f"  {line}", highlight=False)
    org = Path(summary["organism_build"]["path"])
    command, _ = explore_links(str(out_dir), LINEAGE,
                               models=(str(org / "base"), str(org / LINEAGE[-1])))
    out.print("[green]open the results in the explorer:[/]")
    typer.echo(command)  # on a line of its own, never wrapped, to copy as it is
