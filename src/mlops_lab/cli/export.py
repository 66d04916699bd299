"""Export what bootstrap builds for other tools: `mlops-lab export cloudformation`."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from mlops_lab import batch_spec, bootstrap, cloudformation
from mlops_lab.aws import Aws
from mlops_lab.cli.render import console
from mlops_lab.settings import get_settings

app = typer.Typer(help="Export what bootstrap builds, as infrastructure as code.", no_args_is_help=True)


@app.command("cloudformation")
def export_cloudformation(
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write the template here (default: standard output).")
    ] = None,
    fmt: Annotated[
        str | None,
        typer.Option(
            "--format", help="json or yaml (default: from the output's suffix, else json).", show_default=False
        ),
    ] = None,
    code: Annotated[
        Path | None,
        typer.Option(help="Also write the function's code zip here (what bootstrap deploys), for FunctionKey."),
    ] = None,
) -> None:
    """A CloudFormation template of exactly what `bootstrap` creates for LAB_PREFIX (layer and code from S3)."""
    settings = get_settings()
    if code is not None:
        # With LAB_LAMBDA_BUNDLE_LAYER the code zip carries the layer, as bootstrap's does.
        bundled = bootstrap.build_lambda_layer(settings, Aws()) if settings.lambda_bundle_layer else None
        code.write_bytes(batch_spec.function_package(bundled))
        console.print(f"{code}: the function's code, {code.stat().st_size / 1e3:.0f} kB", highlight=False)
    if fmt is None:
        fmt = "yaml" if output is not None and output.suffix in {".yaml", ".yml"} else "json"
    document = cloudformation.template(settings)
    text = cloudformation.render(document, fmt)
    if output is None:
        typer.echo(text, nl=False)
        return
    output.write_text(text)
    parameters = " ".join(f"{name}=..." for name in document["Parameters"] if name != cloudformation.LAYER_DESCRIPTION)
    console.print(
        f"{output}: {len(document['Resources'])} resources for prefix {settings.prefix}. Upload the zips, then\n"
        f"  aws cloudformation deploy --template-file {output} --stack-name {settings.prefix} "
        f"--capabilities CAPABILITY_NAMED_IAM --parameter-overrides {parameters}",
        soft_wrap=True,
    )
