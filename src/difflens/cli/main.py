"""The ``difflens`` Typer application."""

import typer

from difflens.cli.capture import capture_cmd, info_cmd
from difflens.cli.collapse import app as collapse_app
from difflens.cli.concepts import app as concepts_app
from difflens.cli.control import control_app, monitor_cmd, probe_app
from difflens.cli.demo import demo_cmd
from difflens.cli.organism import app as organism_app
from difflens.cli.themes import app as themes_app
from difflens.cli.trajectories import app as trajectories_app

app = typer.Typer(
    name="difflens",
    help="See what alignment fine-tuning changed in a language model.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.command("capture")(capture_cmd)
app.command("info")(info_cmd)
app.command("demo")(demo_cmd)
app.add_typer(organism_app, name="organism")
app.add_typer(concepts_app, name="concepts")
app.add_typer(trajectories_app, name="trajectories")
app.add_typer(collapse_app, name="collapse")
app.add_typer(probe_app, name="probe")
app.command("monitor")(monitor_cmd)
app.add_typer(control_app, name="control")
app.add_typer(themes_app, name="themes")

if __name__ == "__main__":
    app()
