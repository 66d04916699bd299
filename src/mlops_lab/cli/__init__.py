"""`mlops-lab`: the command line. Each module holds one feature's commands; a command parses its options, makes one
call into the library and renders the result (as mlflow's own CLI does)."""

from __future__ import annotations

import typer

from mlops_lab.cli import batch, deploy, lab, models, resources

app = typer.Typer(
    help="An offline AWS MLOps lab: S3 -> Lambda batch predictions on an emulator or real AWS.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
for commands in (lab.app, resources.app, models.app, batch.app):
    app.add_typer(commands)  # no name: their commands sit at the top level
app.add_typer(deploy.image_app, name="image")
app.add_typer(deploy.deploy_app, name="deploy")
