"""``difflens demo``: the main job, end to end on the built-in model organism."""

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
    """Build the organism if missing, run capture and every analysis, write a report."""
    from difflens.organism.build import OrganismConfig
    from difflens.pipelines.demo import MEAN_KEY, run_demo
    from difflens.report.demo import demo_takeaways, explore_links

    cfg = OrganismConfig.small(seed) if small else OrganismConfig(seed=seed)
    summary = run_demo(out_dir, config=cfg, n_concept_items=60 if small else 400,
                       n_trajectory_prompts=8 if small else 40,
                       n_collapse_prompts=6 if small else 24,
                       n_control_prompts=6 if small else 32,
                       n_theme_prompts=24 if small else 300, theme_samples=8 if small else 16,
                       progress=True)
    out.print(f"[green]report:[/] {out_dir / 'index.html'}   summary: {out_dir / 'summary.json'}")
    for section, lines in demo_takeaways(summary, MEAN_KEY).items():
        out.print(f"[bold]{section}[/]")
        for line in lines:
            out.print(f"  {line}", highlight=False)
    org = Path(summary["organism_build"]["path"])
    command, _ = explore_links(str(out_dir), models=(str(org / "base"), str(org / "tuned")))
    out.print("[green]open the results in the explorer:[/]")
    typer.echo(command)  # on a line of its own, never wrapped, to copy as it is
