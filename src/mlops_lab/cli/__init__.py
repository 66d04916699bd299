"""`mlops-lab`: the command line. Each module holds one feature's commands; a command parses its options, makes one
call into the library and renders the result (as mlflow's own CLI does)."""

from __future__ import annotations

import click
import typer
from typer.core import TyperGroup
from typer.exceptions import TyperException

from mlops_lab import __version__
from mlops_lab.cli import batch, deploy, export, jobs, lab, logs, models, resources, transform
from mlops_lab.errors import explain


class LabGroup(TyperGroup):
    """Every expected failure a command raises becomes one line on stderr and its exit code (mlops_lab.errors);
    the traceback only with ``--debug``."""

    def invoke(self, ctx: click.Context) -> object:
        try:
            return super().invoke(ctx)
        except (typer.Exit, typer.Abort, TyperException, click.exceptions.Exit, click.ClickException, click.Abort):
            raise  # typer's (and click's) own: usage errors, exits, aborts
        except (Exception, KeyboardInterrupt) as error:
            if ctx.meta.get("mlops_lab.debug"):
                raise
            problem = explain(error)
            click.echo(problem.message, err=True)
            raise typer.Exit(int(problem.code)) from None


def _version(value: bool) -> None:
    if value:
        print(f"mlops-lab {__version__}")
        raise typer.Exit()


app = typer.Typer(
    help="An offline AWS MLOps lab: S3 -> Lambda batch predictions on an emulator or real AWS.",
    no_args_is_help=True,
    cls=LabGroup,
    pretty_exceptions_show_locals=False,
)


@app.callback()
def main(
    ctx: typer.Context,
    debug: bool = typer.Option(False, "--debug", help="Show the traceback of a failure."),
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
) -> None:
    """An offline AWS MLOps lab: S3 -> Lambda batch predictions on an emulator or real AWS."""
    ctx.meta["mlops_lab.debug"] = debug


for commands in (lab.app, resources.app, models.app, batch.app, jobs.app, logs.app, transform.app):
    app.add_typer(commands)  # no name: their commands sit at the top level
app.add_typer(deploy.image_app, name="image")
app.add_typer(deploy.deploy_app, name="deploy")
app.add_typer(export.app, name="export")
