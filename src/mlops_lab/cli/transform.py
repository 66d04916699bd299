"""`mlops-lab transform`: SageMaker Batch Transform (the lab's SageMaker offline, AWS's on AWS)."""

from __future__ import annotations

import json
from enum import StrEnum
from typing import Annotated, Any

import typer

from mlops_lab.aws import Aws
from mlops_lab.cli import render
from mlops_lab.cli.render import console
from mlops_lab.sagemaker import batch_transform
from mlops_lab.settings import get_settings

app = typer.Typer()


class Strategy(StrEnum):
    MultiRecord = "MultiRecord"
    SingleRecord = "SingleRecord"


class Split(StrEnum):
    Line = "Line"
    none = "None"


class Join(StrEnum):
    Input = "Input"
    none = "None"


def _line(job: dict[str, Any]) -> str:
    progress = job.get("LabProgress") or {}
    counts = (
        f"{progress.get('FilesDone', 0)}/{progress.get('FilesTotal', 0)} files done, "
        f"{progress.get('FilesFailed', 0)} failed, {progress.get('RecordsScored', 0):,} records scored"
        if progress
        else ""
    )
    note = f"; {progress['Note']}" if progress.get("Note") else ""  # e.g. instances capped at the cores
    return f"{job['TransformJobName']}: {job['TransformJobStatus']}" + (f" ({counts}{note})" if counts else "")


@app.command("transform")
def transform(
    input_prefix: Annotated[str, typer.Argument(help="s3://bucket/prefix: every object under it is an input file.")],
    output_prefix: Annotated[str, typer.Argument(help="s3://bucket/prefix: <input>.out files go here.")],
    model: Annotated[
        str | None, typer.Option(help="A SageMaker model (default: the one `deploy sagemaker` made).")
    ] = None,
    name: Annotated[str | None, typer.Option(help="The job's name (default: lab-transform-<time>).")] = None,
    instances: Annotated[int, typer.Option(min=1, help="InstanceCount: worker processes offline.")] = 1,
    instance_type: Annotated[str, typer.Option(help="InstanceType (priced on AWS).")] = batch_transform.INSTANCE_TYPE,
    strategy: Annotated[Strategy | None, typer.Option(help="BatchStrategy (AWS's default: MultiRecord).")] = None,
    max_payload_mb: Annotated[int | None, typer.Option(help="MaxPayloadInMB (AWS's default: 6).")] = None,
    max_concurrent: Annotated[int | None, typer.Option(help="MaxConcurrentTransforms per instance.")] = None,
    split_type: Annotated[Split, typer.Option(help="SplitType: Line (a record a line) or None (a file a record).")] = (
        Split.Line
    ),
    assemble_with: Annotated[Split, typer.Option(help="AssembleWith: Line or None.")] = Split.Line,
    content_type: Annotated[str, typer.Option(help="text/csv or application/jsonlines.")] = "text/csv",
    accept: Annotated[str, typer.Option(help="The answer's type: text/csv or application/jsonlines.")] = "text/csv",
    gzip: Annotated[bool, typer.Option("--gzip", help="CompressionType Gzip: the inputs are gzipped.")] = False,
    manifest: Annotated[
        bool, typer.Option("--manifest", help="INPUT_PREFIX is a manifest file listing the inputs.")
    ] = False,
    input_filter: Annotated[str | None, typer.Option(help="DataProcessing InputFilter (JSONPath, e.g. $[1:]).")] = None,
    join_source: Annotated[
        Join | None, typer.Option(help="DataProcessing JoinSource: Input joins each answer.")
    ] = None,
    output_filter: Annotated[str | None, typer.Option(help="DataProcessing OutputFilter (JSONPath).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end (exit 12 unless Completed).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print DescribeTransformJob's answer as JSON.")] = False,
) -> None:
    """Run a SageMaker Batch Transform job over every file under INPUT_PREFIX, to AWS's contract.

    Offline the lab's SageMaker runs it on worker processes (INSTANCES of them, capped at this machine's cores); on
    AWS, SageMaker does, on instances billed by the hour (`mlops-lab plan` prices them)."""
    settings, aws = get_settings(), Aws()
    render.where(aws)
    url = None if aws.on_aws else settings.sagemaker_emulator_url
    options = batch_transform.TransformOptions(
        input_uri=input_prefix,
        output_uri=output_prefix,
        model=model,
        name=name,
        instances=instances,
        instance_type=instance_type,
        strategy=strategy.value if strategy else None,
        max_payload_mb=max_payload_mb,
        max_concurrent=max_concurrent,
        split_type=split_type.value,
        compression="Gzip" if gzip else None,
        assemble_with=assemble_with.value,
        content_type=content_type,
        accept=accept,
        input_filter=input_filter,
        join_source=join_source.value if join_source else None,
        output_filter=output_filter,
        manifest=manifest,
    )
    if url is None:
        from mlops_lab.plan import endpoint_hourly_usd

        hourly = endpoint_hourly_usd(aws.region, instance_type)
        price = f"${hourly:.3f} an instance-hour" if hourly is not None else "a price this lab's table does not have"
        console.print(
            f"[yellow]This runs a real SageMaker job[/]: {instances} x {instance_type} at {price}, billed while it "
            "runs (`mlops-lab plan --transform-hours` estimates a month)."
        )
    request = batch_transform.start(settings, aws, options, url=url)
    job_name = request["TransformJobName"]
    if not as_json:
        console.print(f"Started transform job [bold]{job_name}[/] on model {request['ModelName']}")
    if not wait:
        job = batch_transform.describe(aws, job_name, url=url)
        if as_json:
            print(json.dumps(job, default=str, indent=2))
        else:
            console.print(_line(job) + f"\nFollow it: mlops-lab transform-status {job_name} --wait")
        return
    seen: list[str] = []

    def show(job: dict[str, Any]) -> None:
        line = _line(job)
        if not as_json and (not seen or seen[-1] != line):
            console.print(line)
            seen.append(line)

    try:
        job = batch_transform.wait(aws, job_name, url=url, on_update=show)
    finally:
        if as_json:
            print(json.dumps(batch_transform.describe(aws, job_name, url=url), default=str, indent=2))
    if not as_json:
        console.print(f"[green]Completed[/]: outputs under {job['TransformOutput']['S3OutputPath']}")


@app.command("transform-status")
def transform_status(
    name: Annotated[str | None, typer.Argument(help="A job's name (default: list the latest jobs).")] = None,
    wait: Annotated[bool, typer.Option("--wait", help="Follow the job to its end (exit 12 unless Completed).")] = False,
    as_json: Annotated[bool, typer.Option("--json", help="Print the answer as JSON.")] = False,
) -> None:
    """A transform job's state and progress, or the latest jobs."""
    settings, aws = get_settings(), Aws()
    render.where(aws)
    url = None if aws.on_aws else settings.sagemaker_emulator_url
    if name is None:
        jobs = batch_transform.list_jobs(aws, url=url)
        if as_json:
            print(json.dumps(jobs, default=str, indent=2))
        for job in [] if as_json else jobs:
            reason = f": {job['FailureReason']}" if job.get("FailureReason") else ""
            console.print(f"{job['TransformJobName']}  {job['TransformJobStatus']}  {job['CreationTime']}{reason}")
        return
    job = (
        batch_transform.wait(aws, name, url=url, on_update=None if as_json else lambda j: console.print(_line(j)))
        if wait
        else batch_transform.describe(aws, name, url=url)
    )
    if as_json:
        print(json.dumps(job, default=str, indent=2))
    elif not wait:
        console.print(_line(job) + (f"\n{job['FailureReason']}" if job.get("FailureReason") else ""))
