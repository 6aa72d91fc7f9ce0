"""The ``difflens`` Typer application: one noun-verb command tree with one vocabulary.

``difflens NOUN VERB [OPTIONS]``, in the manner of the ``hf`` CLI: ``capture run|info``,
``concepts``, ``trajectories``, ``collapse``, ``control``, ``themes``, ``organism`` and
``list``; ``demo``, ``compare``, ``discover`` and ``explore`` are the top-level
verbs. A flag means the same in every
command (see ``difflens.cli._common``). Old paths (``info``, ``monitor``, ``probe train``, ``capture
OPTIONS``) and old flag names still work for one release, with a warning on stderr.
"""

import typer

import difflens
from difflens.cli._common import vocab
from difflens.cli.capture import app as capture_app
from difflens.cli.capture import info_cmd
from difflens.cli.collapse import app as collapse_app
from difflens.cli.compare import compare_cmd
from difflens.cli.concepts import app as concepts_app
from difflens.cli.control import app as control_app
from difflens.cli.control import monitor_cmd, probe_app
from difflens.cli.demo import demo_cmd
from difflens.cli.discover import discover_cmd
from difflens.cli.explore import explore_cmd
from difflens.cli.listing import app as list_app
from difflens.cli.organism import app as organism_app
from difflens.cli.themes import app as themes_app
from difflens.cli.trajectories import app as trajectories_app

app = typer.Typer(
    name="difflens",
    help="See what alignment fine-tuning changed in a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=True,
)


def _version(value: bool | None) -> None:
    if value:
        typer.echo(f"difflens {difflens.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool | None = typer.Option(None, "--version", callback=_version, is_eager=True,
                                        help="Print the version and exit."),
) -> None:
    """See what alignment fine-tuning changed in a language model."""


app.add_typer(capture_app, name="capture")
app.add_typer(concepts_app, name="concepts")
app.add_typer(trajectories_app, name="trajectories")
app.add_typer(collapse_app, name="collapse")
app.add_typer(control_app, name="control")
app.add_typer(themes_app, name="themes")
app.add_typer(organism_app, name="organism")
app.add_typer(list_app, name="list")
app.command("demo")(demo_cmd)
app.command("compare")(compare_cmd)
app.command("discover")(discover_cmd)
app.command("explore")(explore_cmd)

# Old command paths, hidden, for one release (each prints where the command went).
app.command("info", hidden=True, cls=vocab(moved=("info", "capture info")))(info_cmd)
app.command("monitor", hidden=True, cls=vocab(moved=("monitor", "control monitor")))(monitor_cmd)
app.add_typer(probe_app, name="probe", hidden=True)

if __name__ == "__main__":
    app()
