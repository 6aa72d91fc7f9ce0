"""``difflens list presets|probes|datasets``: what the other commands can use by name."""

from pathlib import Path

import typer

from difflens.cli._common import friendly_errors

app = typer.Typer(help="List model presets, built-in probes and the datasets at hand.",
                  no_args_is_help=True)

#: The data folders the README uses under ``../shared/data``, and what reads them.
SHARED_DATASETS = {
    "dialogues": "hh-rlhf dialogues (control train-probe --data, control evaluate --hh-rlhf)",
    "evals": "contrastive A/B evals, CAA and Anthropic (concepts --dataset)",
    "lexicons": "word lists (control evaluate --lexicon)",
    "trajectories": "published trajectories (trajectories import)",
}


def shared_data_dirs() -> list[Path]:
    """``../shared/data`` seen from the working directory and from the source checkout,
    those that exist, once each."""
    import difflens

    found: dict[Path, None] = {}
    for root in (Path.cwd(), Path(difflens.__file__).resolve().parents[2]):
        d = (root / ".." / "shared" / "data").resolve()
        if d.is_dir():
            found[d] = None
    return list(found)


@app.command("presets")
@friendly_errors
def presets_cmd() -> None:
    """Model presets: names --base, --tuned and --model accept besides hub ids and folders."""
    import difflens.organism.build  # noqa: F401  (registers the organism presets)
    from difflens.models.presets import known_presets

    for name in known_presets():
        typer.echo(name)


@app.command("probes")
@friendly_errors
def probes_cmd() -> None:
    """The built-in collapse probes (`collapse probes --probe-names`), with their phrasings.
    State probes are files you train (`control train-probe --out`); none is built in."""
    from difflens.capture.outcomes import load_probes

    counts: dict[str, int] = {}
    for probe in load_probes():
        counts[probe.name] = counts.get(probe.name, 0) + 1
    for name, n in counts.items():
        typer.echo(f"{name}\t{n} phrasing{'s' * (n != 1)}")


@app.command("datasets")
@friendly_errors
def datasets_cmd() -> None:
    """Data files shipped with difflens, and the shared data folders when present."""
    from importlib import resources

    shipped = Path(str(resources.files("difflens") / "data"))
    for path in sorted(shipped.glob("*.jsonl")):
        typer.echo(f"{path}\tshipped with difflens")
    for root in shared_data_dirs():
        for name, what in SHARED_DATASETS.items():
            folder = root / name
            if folder.is_dir():
                n = sum(1 for p in folder.rglob("*") if p.is_file())
                typer.echo(f"{folder}\t{what}; {n} files")
