"""`mlops-lab jobs`: the recent batch jobs, as the console lists them (mlops_lab.jobs)."""

from __future__ import annotations

import json
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from mlops_lab import jobs as lab_jobs
from mlops_lab.aws import Aws
from mlops_lab.cli import render
from mlops_lab.cli.render import console
from mlops_lab.settings import get_settings

app = typer.Typer()


@app.command()
def jobs(
    limit: Annotated[int, typer.Option(help="How many of the newest uploads to show.")] = 20,
    as_json: Annotated[bool, typer.Option("--json", help="Print the jobs as JSON.")] = False,
) -> None:
    """The newest uploads to the input bucket and what became of each: rows and predictions, or the reason."""
    aws = Aws()
    render.where(aws)
    listed = lab_jobs.list_jobs(get_settings(), aws, limit=limit)
    if as_json:
        print(json.dumps([job.to_json() for job in listed], indent=2))
        return
    if not listed:
        console.print("No uploads yet: `mlops-lab predict FILE` (or the console's upload form) sends one.")
        return
    table = Table(title=f"{len(listed)} newest job(s)")
    for column in ("uploaded (UTC)", "input", "status", "rows", "predictions / reason", "model", "took"):
        table.add_column(column, overflow="fold")
    for job in listed:
        if job.status == "ok" and job.distribution:
            detail = ", ".join(f"{bar.label}: {bar.count:,}" for bar in job.distribution.bars)
        else:
            detail = job.reason
        table.add_row(
            f"{job.uploaded:%Y-%m-%d %H:%M:%S}",
            escape(job.key),
            job.status,
            f"{job.rows:,}" if job.rows is not None else "",
            escape(detail),
            escape(job.model),
            f"{job.seconds:.0f} s" if job.seconds is not None else "",
        )
    console.print(table)
