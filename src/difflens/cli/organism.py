"""``difflens organism build`` and ``difflens organism info``."""

import json

import typer
from rich.console import Console
from rich.table import Table

from difflens.cli._common import friendly_errors

app = typer.Typer(help="The built-in model organism: a tiny base LM and its tuned lineage "
                  "(sft, rl from sft, rl-from-base).",
                  no_args_is_help=True)
out = Console()


def _config(seed: int, small: bool):  # type: ignore[no-untyped-def]
    from difflens.organism.build import OrganismConfig

    return OrganismConfig.small(seed) if small else OrganismConfig(seed=seed)


@app.command("build")
@friendly_errors
def build_cmd(
    seed: int = typer.Option(0, help="Seed of the world, the training and the RL samples."),
    small: bool = typer.Option(False, help="A reduced build (seconds; for tests)."),
    force: bool = typer.Option(False, help="Rebuild even if a finished build is cached."),
) -> None:
    """Build the organism (idempotent: a finished build is reused)."""
    from difflens.organism.build import build_organism, find_organism

    cfg = _config(seed, small)
    cached = find_organism(cfg) is not None and not force
    org = build_organism(cfg, progress=True, force=force)
    times = org.build_info["times_s"]
    out.print(f"[green]{'cached' if cached else 'built'}[/] organism at {org.path}")
    out.print("build times: " + ", ".join(f"{k} {v:.0f}s" for k, v in times.items()))


@app.command("info")
@friendly_errors
def info_cmd(
    seed: int = typer.Option(0, help="Seed of the build to describe."),
    small: bool = typer.Option(False, help="Describe the reduced build."),
    as_json: bool = typer.Option(False, "--json", help="Print JSON."),
) -> None:
    """Model folders, ground-truth files and measured properties of a built organism."""
    from difflens.errors import InputError
    from difflens.organism.build import find_organism
    from difflens.pipelines.demo import MEAN_KEY, organism_summary
    from difflens.report.figures import format_ci

    org = find_organism(_config(seed, small))
    if org is None:
        raise InputError("the organism is not built yet; run: difflens organism build"
                         + (f" --seed {seed}" if seed else "") + (" --small" if small else ""))
    props = org.properties
    info = {
        "path": str(org.path),
        "models": {name: str(p) for name, p in org.model_paths.items()},
        "ground_truth": org.ground_truth_files(),
        "build": org.build_info,
        "properties": organism_summary(props),
        "base_val_loss": props["base_val_loss"],
        "n_openings": props["n_openings"],
        "n_chance_prompts": props["n_chance_prompts"],
    }
    if as_json:
        print(json.dumps(info, indent=2))
        return
    t = Table(title=f"organism {org.path.name}", show_header=True)
    t.add_column("")
    s = info["properties"]
    for m in s:
        t.add_column(m)
    for key in ("reward", "entropy", "celebration_share", "chance_tvd"):
        cells = [format_ci(s[m][MEAN_KEY[key]]["value"], [s[m][MEAN_KEY[key]]["ci_low"],
                                                          s[m][MEAN_KEY[key]]["ci_high"]],
                           s[m][key + "_n"]) for m in s]
        t.add_row(key, *cells)
    out.print(t)
    for name, path in info["models"].items():
        out.print(f"{name}: {path}")
    for name, path in info["ground_truth"].items():
        out.print(f"ground truth {name}: {path}")
    out.print(f"base validation loss {info['base_val_loss']:.3f}; build times "
              + ", ".join(f"{k} {v:.0f}s" for k, v in org.build_info["times_s"].items()))
