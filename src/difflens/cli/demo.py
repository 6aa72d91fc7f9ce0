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
    from difflens.report.demo import MEAN_KEY, run_demo

    cfg = OrganismConfig.small(seed) if small else OrganismConfig(seed=seed)
    summary = run_demo(out_dir, config=cfg, progress=True)
    o = summary["organism"]
    out.print(f"[green]report:[/] {out_dir / 'index.html'}   summary: {out_dir / 'summary.json'}")
    for key, name in (("reward", "reward (VADER)"), ("entropy", "entropy (nats/token)"),
                      ("celebration_share", "celebration share"), ("chance_tvd", "chance TVD")):
        b, t = o["base"], o["tuned"]
        m = MEAN_KEY[key]
        out.print(f"{name:<22} base {b[m]:.3f} [{b[key + '_ci95'][0]:.3f}, "
                  f"{b[key + '_ci95'][1]:.3f}]  tuned {t[m]:.3f} "
                  f"[{t[key + '_ci95'][0]:.3f}, {t[key + '_ci95'][1]:.3f}]  n={b[key + '_n']}")
    kl = summary["pair"]["kl_tuned_base"]
    out.print(f"KL(tuned‖base) on held-out stories: {kl['mean']:.3f} nats/token "
              f"[{kl['ci95'][0]:.3f}, {kl['ci95'][1]:.3f}] n={kl['n']} tokens")
