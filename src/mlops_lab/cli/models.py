"""The model's life: train, promote (or roll back), list the registry's versions."""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from mlops_lab import registry, training
from mlops_lab.aws import Aws
from mlops_lab.cli import render
from mlops_lab.cli.render import console
from mlops_lab.settings import get_settings

app = typer.Typer()


@app.command()
def train(
    data: Annotated[Path | None, typer.Option(help="Training CSV (lab format or the raw UCI Adult file).")] = None,
    rows: Annotated[int, typer.Option(help="Rows to generate when no --data is given.")] = 20000,
    seed: Annotated[int, typer.Option()] = 42,
    publish: Annotated[
        bool | None,
        typer.Option(
            help="Publish to the model bucket afterwards (default: yes without mlflow; with mlflow `promote` publishes).",
            show_default=False,
        ),
    ] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            help="Log the run and register a version (default: when the tracking server answers).",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Train the census-income classifier, export it to ONNX, check agreement; log + register it, or publish it."""
    settings, aws = get_settings(), Aws()
    render.where(aws)
    with console.status("Training..."):
        trained = training.train(settings, aws, data, rows=rows, seed=seed, publish=publish, mlflow=mlflow)
    metrics = ", ".join(f"{k} {v:.3f}" for k, v in trained.metrics.items() if isinstance(v, float))
    console.print(f"Trained and exported {trained.path} ({metrics})")
    if trained.logged is not None:
        logged = trained.logged
        console.print(
            f"Registered [bold]{logged.name} version {logged.version}[/] (run {logged.run_id}): "
            f"{settings.mlflow_tracking_uri}/#/models/{logged.name}/versions/{logged.version}"
        )
        if trained.promotion is None:
            console.print(f"Serve it with [bold]mlops-lab promote {logged.version} --name {logged.name}[/]")
    if trained.promotion is not None:
        render.promotion(trained.promotion)
    if trained.published is not None:
        render.change(trained.published)


NameOption = Annotated[
    str | None,
    typer.Option(
        "--name", help="Registered model name (default: the live model's, else the demo's).", show_default=False
    ),
]


@app.command()
def promote(
    version: Annotated[str, typer.Argument(help="Registry version to serve (an older one rolls back).")],
    name: NameOption = None,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Load the version's scikit-learn pipeline (for the check) from a tracking server the lab did not "
            "start (MLFLOW_TRACKING_URI): loading one runs code from its artifact. Refused without this flag.",
        ),
    ] = False,
) -> None:
    """Check a version's ONNX (against its sklearn pipeline, for one trained here), publish it, set @champion.
    Loading the pipeline runs code from its artifact: from a tracking server the lab did not start, only with
    --trust."""
    settings, aws = get_settings(), Aws()
    render.where(aws)
    name = name or registry.served_name(settings, aws)
    render.promotion(registry.promote(settings, aws, version, name=name, trust=trust))


@app.command()
def models(
    name: NameOption = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the versions as JSON.")] = False,
) -> None:
    """List a registered model's versions, their aliases and metrics, and which one the Lambda and API serve."""
    settings, aws = get_settings(), Aws()
    render.where(aws)
    name = name or registry.served_name(settings, aws)
    rows = registry.list_versions(settings, aws, name=name)
    if as_json:
        listed = {"name": name, "tracking_uri": settings.mlflow_tracking_uri, "versions": [asdict(r) for r in rows]}
        print(json.dumps(listed, indent=2))
        return
    table = Table(title=f"{name} ({settings.mlflow_tracking_uri})")
    for column in ("version", "aliases", "live", "accuracy", "roc_auc", "f1", "created", "run"):
        table.add_column(column)
    for row in rows:
        table.add_row(
            row.version,
            ", ".join(row.aliases),
            "[green]live[/]" if row.live else "",
            *(f"{row.metrics[m]:.3f}" if m in row.metrics else "" for m in ("accuracy", "roc_auc", "f1")),
            row.created,
            row.run_id[:12],
        )
    console.print(
        table if rows else f"No versions of {name} yet: `mlops-lab train` or `mlops-lab publish` registers one."
    )


@app.command(
    short_help="Serve your own model: check it, describe it in the published copy, score sample rows, register it, "
    "make it live (the Lambda and the API pick it up without a redeploy)."
)
def publish(
    source: Annotated[
        str,
        typer.Argument(
            metavar="MODEL",
            help="A .onnx file, or an mlflow model: models:/<name>/<version>, models:/<name>@<alias>, runs:/<id>/<path>.",
        ),
    ],
    name: Annotated[
        str | None, typer.Option(help="Registered model name (default: from the file or URI).", show_default=False)
    ] = None,
    features: Annotated[
        str | None, typer.Option(help="a,b,c: names of a single-tensor model's columns, in order.", show_default=False)
    ] = None,
    features_from: Annotated[
        Path | None,
        typer.Option(exists=True, dir_okay=False, help="Take those names from this CSV's header.", show_default=False),
    ] = None,
    sample: Annotated[
        Path | None,
        typer.Option(
            exists=True,
            dir_okay=False,
            help="CSV rows to prove the model on (default: rows from its schema).",
            show_default=False,
        ),
    ] = None,
    mlflow: Annotated[
        bool | None,
        typer.Option(
            help="Register a version in mlflow (default: when the tracking server answers).", show_default=False
        ),
    ] = None,
    trust: Annotated[
        bool,
        typer.Option(
            "--trust",
            help="Load a scikit-learn model from a tracking server the lab did not start (MLFLOW_TRACKING_URI): "
            "loading one runs code from its artifact. Refused without this flag.",
        ),
    ] = False,
) -> None:
    """Serve your own model: check it, describe it in the published copy, score sample rows, register it, make it
    live (the Lambda and the API pick it up without a redeploy). Trust: reading an ONNX file runs no code, but
    loading a scikit-learn model (pickle or skops) runs code from its artifact, with your permissions: publish only
    models you trust; one from a tracking server the lab did not start needs --trust."""
    from mlops_lab import model_import

    if features and features_from:
        raise typer.BadParameter("give --features or --features-from, not both")
    names = [n.strip() for n in features.split(",")] if features else None
    if features_from is not None:
        names = model_import.header_of(features_from)
    aws = Aws()
    render.where(aws)
    with console.status(f"Publishing {source}..."):
        imported = model_import.import_model(
            get_settings(), aws, source, name=name, features=names, sample=sample, mlflow=mlflow, trust=trust
        )
    render.imported(imported)
