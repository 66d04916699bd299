"""The AWS resources of the batch path: plan, bootstrap, teardown, and the layer they publish."""

from __future__ import annotations

import json
from typing import Annotated

import typer

from mlops_lab import bootstrap as lab_bootstrap
from mlops_lab import teardown as lab_teardown
from mlops_lab.aws import Aws
from mlops_lab.cli import render
from mlops_lab.cli.render import console
from mlops_lab.errors import ExitCode, LabError
from mlops_lab.settings import get_settings

app = typer.Typer()


AdoptOption = Annotated[
    bool,
    typer.Option(
        "--adopt",
        help="Take over resources of the lab's names that exist without its mlops-lab:prefix tag (adds the tag; "
        "teardown then deletes them). Without it they are refused.",
    ),
]


@app.command()
def bootstrap(adopt: AdoptOption = False) -> None:
    """Create the buckets, role, layer, function, permission and notification (idempotent); refuse resources of the
    lab's names that are not its own, unless --adopt."""
    aws = Aws()
    render.where(aws)
    render.summary(lab_bootstrap.run_bootstrap(get_settings(), aws, on_change=render.change, adopt=adopt))


@app.command()
def teardown(
    yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False,
    keep_registry: Annotated[
        bool,
        typer.Option(
            "--keep-registry",
            help="Keep mlflow's artifacts (s3://<model bucket>/mlflow/) and the registry's entries; the rest goes.",
        ),
    ] = False,
) -> None:
    """Delete everything the lab created under its prefix (SageMaker endpoint, function, layer, roles, queue, log
    group, ECR repositories, buckets with their objects, the registry's entries), then check that nothing is left."""
    settings, aws = get_settings(), Aws()
    registry_note = (
        "mlflow's artifacts and registry are kept"
        if keep_registry
        else f"with the model bucket go mlflow's artifacts: the registered models and experiments of {settings.prefix} "
        f"on {settings.mlflow_tracking_uri} are deleted too (--keep-registry keeps them)"
    )
    if not yes and not typer.confirm(
        f"Delete the lab's resources (prefix {settings.prefix}) on {aws.describe(account=True)}; {registry_note}?"
    ):
        raise typer.Abort()
    console.print(f"[bold]Teardown[/] of {settings.prefix} on {aws.describe(account=True)}; {registry_note}.")
    report = lab_teardown.teardown(settings, aws, keep_registry=keep_registry, on_change=render.change)
    render.teardown_checks(report)
    if not report.complete:
        raise LabError(
            f"teardown is not complete: {'; '.join(report.left) or 'nothing found left'}"
            + "".join(f"; {check.service} not checked ({check.note})" for check in report.unchecked),
            ExitCode.INCOMPLETE,
        )


@app.command("build-layer")
def build_layer(
    python: Annotated[str | None, typer.Option(help="Target Python X.Y (default: the emulator's, else 3.12).")] = None,
    platform: Annotated[str | None, typer.Option(help="Wheel platform tag, e.g. manylinux_2_28_x86_64.")] = None,
) -> None:
    """Build the Lambda layer zip (onnxruntime + numpy + the inference core); refuse it over AWS's limits."""
    with console.status("Building the layer..."):
        artifact = lab_bootstrap.build_lambda_layer(get_settings(), Aws(), python, platform)
    console.print(
        f"{artifact.path}\n  py{artifact.python} {artifact.platform}: {artifact.zipped_bytes / 1e6:.1f} MB "
        f"{'zipped' if artifact.compressed else 'stored (emulator only: extracts faster)'}, "
        f"{artifact.unzipped_bytes / 1e6:.1f} MB unzipped, sha256 {artifact.sha256[:16]}"
    )


@app.command()
def plan(
    uploads_per_day: Annotated[int, typer.Option(help="Assumed CSV uploads a day.")] = 100,
    rows_per_file: Annotated[int, typer.Option(help="Assumed rows in a file.")] = 10_000,
    bytes_per_row: Annotated[int, typer.Option(help="Assumed bytes a row (the demo's: 100).")] = 100,
    seconds_per_file: Annotated[
        float | None,
        typer.Option(help="Lambda seconds a file (default: 0.1 s + rows at 60,000 rows/s).", show_default=False),
    ] = None,
    image_mb: Annotated[float, typer.Option(help="Size of an API image you push to ECR, if any.")] = 0.0,
    with_sagemaker: Annotated[
        bool, typer.Option("--sagemaker", help="Include `deploy sagemaker`'s resources and its endpoint's cost.")
    ] = False,
    transform_hours: Annotated[
        float, typer.Option(help="Instance-hours a month of Batch Transform jobs (`mlops-lab transform`).")
    ] = 0.0,
    transform_instance: Annotated[str, typer.Option(help="The transform jobs' instance type.")] = "ml.m5.xlarge",
    as_json: Annotated[bool, typer.Option("--json", help="Print the plan as JSON.")] = False,
    adopt: AdoptOption = False,
) -> None:
    """What bootstrap would create, update or leave (a dry run: nothing is changed) and an estimate of its cost."""
    from mlops_lab.plan import Assumptions, make_plan

    assumptions = Assumptions(
        uploads_per_day=uploads_per_day,
        rows_per_file=rows_per_file,
        bytes_per_row=bytes_per_row,
        seconds_per_file=seconds_per_file,
        image_mb=image_mb,
        transform_instance_hours=transform_hours,
        transform_instance=transform_instance,
    )
    aws = Aws()
    render.where(aws)
    result = make_plan(get_settings(), aws, assumptions, with_sagemaker=with_sagemaker, adopt=adopt)
    if as_json:
        print(json.dumps(result.to_json(), indent=2))
        return
    render.plan(result)
