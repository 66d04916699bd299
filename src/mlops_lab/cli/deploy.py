"""Serving elsewhere: the API's image in ECR, and SageMaker through mlflow's deployments client."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from mlops_lab import image, sagemaker
from mlops_lab.aws import Aws
from mlops_lab.cli import render
from mlops_lab.cli.render import console
from mlops_lab.errors import LabError
from mlops_lab.settings import Settings, get_settings

image_app = typer.Typer(help="The API's container image and its ECR repository.", no_args_is_help=True)
deploy_app = typer.Typer(help="Deploy the champion model elsewhere.", no_args_is_help=True)


def adopt_option(what: str) -> Any:
    return typer.Option(
        "--adopt",
        help=f"Take over {what} of the lab's name that lacks this lab's mlops-lab:prefix tag (adds the tag; "
        "teardown then deletes it). Without it such a one is refused (exit 11).",
    )


@image_app.command("push")
def image_push(
    tag: Annotated[str, typer.Option(help="Image tag.")] = "latest",
    base_image: Annotated[
        str | None, typer.Option(help="Build argument BASE_IMAGE (default python:3.12-slim).")
    ] = None,
    adopt: Annotated[bool, adopt_option("an ECR repository")] = False,
) -> None:
    """Create the ECR repository (idempotent, scan on push, lifecycle policy), build api/Dockerfile, tag, push. A
    repository of its name that is not this lab's is refused unless --adopt."""
    settings, aws = get_settings(), Aws()
    render.where(aws)
    try:
        result = image.build_and_push(settings, tag=tag, base_image=base_image, aws=aws, adopt=adopt)
    except image.EngineMissing as error:
        uri, _ = image.ensure_repository(settings, aws, adopt=adopt)  # what can be done without an engine still is
        console.print(f"ECR repository ready: {uri}\n[yellow]Not built or pushed[/]: {error}")
        raise typer.Exit(error.exit_code) from None
    console.print(f"[green]Pushed[/] {result.image}")


@deploy_app.command("sagemaker")
def deploy_sagemaker(
    model_uri: Annotated[str | None, typer.Option(help="Default: models:/<model>@champion.")] = None,
    emulate: Annotated[
        bool | None,
        typer.Option(
            help="Deploy to the lab's SageMaker (default: when the SDK resolves an emulator, not AWS).",
            show_default=False,
        ),
    ] = None,
    invoke: Annotated[
        bool, typer.Option(help="Offline, then send a CSV and a JSON invoke_endpoint to the new endpoint.")
    ] = True,
    delete: Annotated[
        bool,
        typer.Option("--delete", help="Delete the endpoint, its endpoint configs and models, and their model data."),
    ] = False,
    yes: Annotated[
        bool, typer.Option("--yes", help="On AWS, create (or delete) the endpoint without asking for confirmation.")
    ] = False,
    adopt: Annotated[bool, adopt_option("an image repository or execution role")] = False,
) -> None:
    """Deploy with mlflow's SageMaker deployments client: model, endpoint config, endpoint (create or replace);
    --delete deletes them. On AWS, asks first (or takes --yes). An image repository or execution role of the lab's
    names that is not this lab's is refused unless --adopt."""
    settings, aws = get_settings(), Aws()
    if emulate is None:
        emulate = not aws.on_aws
    if delete:
        _delete_sagemaker(settings, aws, emulate=emulate, yes=yes)
        return
    if not emulate:  # a real endpoint bills every hour it exists: say how much before creating it
        from mlops_lab.plan import HOURS_PER_MONTH, endpoint_hourly_usd

        hourly = endpoint_hourly_usd(aws.region)
        price = (
            f"${hourly:.3f} an hour (${hourly * HOURS_PER_MONTH:,.0f} a month)"
            if hourly is not None
            else "an hourly price this lab's table does not have for this region"
        )
        console.print(
            f"[yellow]This creates a real SageMaker endpoint[/] ({sagemaker.INSTANCE_TYPE}, {aws.region}) billed at "
            f"{price} until you delete it (`mlops-lab deploy sagemaker --delete`)."
        )
        _confirm("Create it?", yes=yes, what="create a billed SageMaker endpoint")
    render.where(aws)  # after the confirmation: refusing it makes no AWS call at all
    url = None
    if emulate:
        with console.status("Starting the lab's SageMaker..."):
            url = sagemaker.ensure_emulator(settings)
    with console.status(f"Deploying with mlflow's sagemaker:/{aws.region} client..."):
        deployment = sagemaker.deploy(settings, aws, model_uri=model_uri, sagemaker_url=url, adopt=adopt)
    for change in deployment.changes:
        render.change(change)
    where = f"on the lab's SageMaker at {url}" if url else "on AWS"
    console.print(
        f"[green]{deployment.mode}d[/] endpoint [bold]{deployment.endpoint}[/] ({deployment.status}) "
        f"{where}\n  model {deployment.model}: {deployment.model_uri}\n"
        f"  image {deployment.image}\n  role {deployment.role_arn}\n  model data {deployment.model_data}"
    )
    if invoke and url:
        for content_type, answer in sagemaker.invoke_endpoint(aws, deployment.endpoint, url):
            console.print(f"  invoke_endpoint {content_type} -> {answer[:200]}")


def _delete_sagemaker(settings: Settings, aws: Aws, *, emulate: bool, yes: bool) -> None:
    """`deploy sagemaker --delete`: on the lab's SageMaker when emulating (not started for this: stopped, it holds
    nothing)."""
    endpoint = settings.sagemaker_endpoint
    if not emulate:
        console.print(
            f"[yellow]This deletes the SageMaker endpoint {endpoint}[/] on AWS ({aws.region}), its endpoint configs "
            f"and models, and their model data in s3://{settings.model_bucket}."
        )
        _confirm("Delete them?", yes=yes, what="delete the SageMaker endpoint")
    render.where(aws)
    url = settings.sagemaker_emulator_url if emulate else None
    try:
        with console.status(f"Deleting SageMaker endpoint {endpoint}..."):
            changes = sagemaker.delete_deployment(settings, aws, sagemaker_url=url, on_change=render.change)
    except sagemaker.SageMakerUnreachable:
        if not emulate:
            raise
        console.print(
            f"the lab's SageMaker is not running at {url}: it keeps endpoints, configs and models in memory "
            "only, so there are none to delete."
        )
        changes = sagemaker.delete_model_data(settings, aws)  # what an earlier deploy uploaded may still be in S3
        for change in changes:
            render.change(change)
    console.print(f"[bold]{sum(c.action == 'deleted' for c in changes)} deleted[/].")


def _confirm(question: str, *, yes: bool, what: str) -> None:
    """Go on with --yes or the person's yes at a terminal; without a terminal to ask on, refuse (exit 1)."""
    if yes:
        return
    if not _interactive():
        raise LabError(f"Refused to {what} without confirmation (no terminal to ask on): run again with --yes.")
    if not typer.confirm(question):
        raise typer.Abort()


def _interactive() -> bool:
    return sys.stdin.isatty()
