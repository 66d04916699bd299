"""The embedded lab's lifecycle: up, down, status, env, install-emulator, demo."""

from __future__ import annotations

import json
import time
from typing import Annotated

import typer

from mlops_lab import emulator, ops, reconcile, registry, sagemaker, services
from mlops_lab.cli import render
from mlops_lab.cli.batch import predict_and_render
from mlops_lab.cli.render import console
from mlops_lab.settings import get_settings

app = typer.Typer()


@app.command()
def up(
    api: Annotated[bool, typer.Option(help="Also start the inference API.")] = True,
    mlflow: Annotated[bool, typer.Option(help="Also start the mlflow tracking server.")] = True,
    external: Annotated[
        bool,
        typer.Option(
            "--external",
            help="The services run elsewhere (docker compose): start none, only bootstrap and make a model live.",
        ),
    ] = False,
    lab_console: Annotated[
        bool, typer.Option("--console/--no-console", help="Also start the lab console (a web page).")
    ] = True,
) -> None:
    """Start the embedded stack (emulator, mlflow, API, console), bootstrap, make a model live, show the endpoints."""
    started = time.perf_counter()
    _up(api=api, mlflow=mlflow, external=external, with_console=lab_console)
    console.print(f"Ready in {time.perf_counter() - started:.1f} s.")


def _up(*, api: bool, mlflow: bool, external: bool = False, with_console: bool = True) -> ops.Lab:
    settings = get_settings()
    overriding = services.credentials_in_environment()  # the shell's own, before `up` points this process at the lab
    wanted = {
        emulator.SERVICE_NAME: True,
        registry.SERVICE_NAME: mlflow and not settings.mlflow_external,
        sagemaker.SERVICE_NAME: True,
        services.API: api,
        services.CONSOLE: with_console,
    }
    started = [] if external else [name for name, on in wanted.items() if on]
    lab = ops.bring_up(settings, services=started, report=render.Report())
    render.summary(lab.changes)
    render.backlog(reconcile.backlog(settings, lab.aws))
    if not external:
        render.services(settings, services.service_states(settings))
        if services.CONSOLE in started:
            console.print(f"Open the lab console: [bold]{settings.console_url}/[/]")
        console.print(
            f"Point your shell at the lab: [bold]source {lab.env_file}[/] (selects AWS profile {emulator.PROFILE})"
        )
        if overriding:
            console.print(f"[yellow]Note[/]: {', '.join(overriding)} in your shell win over the profile's credentials.")
        if settings.mlflow_external:
            console.print(f"Registry: your tracking server at {settings.mlflow_tracking_uri} (MLFLOW_TRACKING_URI).")
    return lab


@app.command()
def down() -> None:
    """Stop every embedded service (their state stays in the state dir: `up` brings it all back)."""
    settings = get_settings()
    stopped = services.stop_services(settings)
    console.print(f"Stopped: {', '.join(stopped)}" if stopped else "Nothing was running.")
    if services.stored_data(settings):
        console.print(
            f"Buckets, functions and mlflow's registry are kept in {settings.state_dir}: `mlops-lab reset` wipes them."
        )


@app.command()
def reset(yes: Annotated[bool, typer.Option("--yes", help="Do not ask for confirmation.")] = False) -> None:
    """Stop the embedded lab and delete its state: the emulator's (buckets, objects, functions...) and mlflow's."""
    settings = get_settings()
    data = services.stored_data(settings)
    if not data:
        console.print(f"Nothing to reset: no lab state in {settings.state_dir}.")
        return
    console.print("This deletes, for good:")
    for item in data:
        console.print(f"  {item.path}  [dim]({item.bytes / 1e6:,.1f} MB)[/]  {item.holds}")
    if not yes and not typer.confirm("Stop the lab and delete all of this?"):
        raise typer.Abort()
    stopped, deleted = services.reset(settings)
    console.print(
        (f"Stopped {', '.join(stopped)}. " if stopped else "")
        + f"Deleted {len(deleted)} folder(s). `mlops-lab up` starts an empty lab."
    )


@app.command()
def status(as_json: Annotated[bool, typer.Option("--json", help="Print the status as JSON.")] = False) -> None:
    """Show the embedded services, their endpoints and health, and the model they serve. Exits 5 when nothing
    runs, 7 when a service that should run is unhealthy."""
    settings = get_settings()
    states = services.service_states(settings)
    if any(state.name == emulator.SERVICE_NAME and state.healthy for state in states):
        render.where(emulator.aws(settings))  # the live model is read from it
    live = services.embedded_live_model(settings)
    verdict = services.lab_health(states)
    if as_json:
        print(json.dumps(services.status_json(states, live, verdict), indent=2))
    else:
        render.services(settings, states)
        render.live_model(live)
        if verdict.code:
            console.print(f"[red]{verdict.message}[/]")
    if verdict.code:
        raise typer.Exit(int(verdict.code))


@app.command("install-emulator")
def install_emulator() -> None:
    """Install the emulator (MiniStack) into its own venv; `make install` runs this."""
    install = emulator.ensure_installed(get_settings())
    console.print(f"Emulator installed in {install.venv}")


@app.command()
def env(
    profile: Annotated[
        bool,
        typer.Option(
            "--profile", help="Write [profile mlops-lab] into your AWS config file (AWS_CONFIG_FILE or ~/.aws/config)."
        ),
    ] = False,
    keys: Annotated[
        bool,
        typer.Option(
            "--keys", help="Print the raw variables instead (endpoint, dummy keys, region); they override profiles."
        ),
    ] = False,
) -> None:
    """Print the shell export that selects the embedded emulator's AWS profile (`.lab/env.sh` holds the same)."""
    settings = get_settings()
    if keys:
        for key, value in emulator.sdk_environment(settings).items():
            print(f"export {key}={value}")
        return
    if profile:
        path, changed = emulator.write_profile(settings)
        typer.echo(f"{'Wrote' if changed else 'Already there'}: [profile {emulator.PROFILE}] in {path}", err=True)
    print(services.env_exports(settings), end="")
    overriding = services.credentials_in_environment()
    if overriding:
        typer.echo(f"Note: {', '.join(overriding)} set in this shell win over any profile's credentials.", err=True)


@app.command()
def demo(
    rows: Annotated[int, typer.Option(help="Sample rows to generate and score.")] = 10000,
    keep: Annotated[
        bool, typer.Option("--keep/--stop", help="Leave the lab running afterwards (--stop: stop what it started).")
    ] = True,
) -> None:
    """The whole flow on sample data: up, register + promote a model, batch through the Lambda, one API call; the
    lab stays up for you to look at (console, mlflow, API docs) until `make down`."""
    started = time.perf_counter()
    lab = _up(api=True, mlflow=True)
    try:
        _demo_pipeline(lab, rows)
    finally:
        if lab.started and not keep:
            lab.stop()
            console.print(f"Stopped what the demo started ({', '.join(lab.started)}); `make up` keeps the lab running.")
    console.print(f"Whole demo took {time.perf_counter() - started:.1f} s.")
    if keep:
        settings = lab.settings
        console.rule("The lab is running")
        console.print(
            f"  console     {settings.console_url}/   (jobs, models, upload a CSV, promote)\n"
            f"  mlflow      {settings.mlflow_tracking_uri}   (runs with their plots, the registry)\n"
            f"  API docs    {settings.api_url}/docs\n"
            "  logs        .venv/bin/mlops-lab logs \\[emulator|api|mlflow|console|function] \\[-f]"
        )
        console.print("[bold]`make down` stops it.[/]")


def _demo_pipeline(lab: ops.Lab, rows: int) -> None:
    settings = lab.settings
    console.rule("Registry: train -> mlflow run + version -> promote")
    logged, promotion = ops.register_demo_model(lab)
    console.print(
        f"Logged run {logged.run_id[:12]} (ROC AUC {logged.metrics['roc_auc']:.3f}) and registered "
        f"{logged.name} version {logged.version}"
    )
    render.promotion(promotion)

    console.rule("Batch: S3 upload -> Lambda -> S3")
    sample, record = ops.write_sample(settings, rows)
    result = predict_and_render(lab.aws, sample, None, 300)
    with result.local_path.open() as handle:
        preview = [next(handle) for _ in range(3)]
    console.print("[dim]" + "".join(preview).rstrip() + "[/]")

    console.rule("Online: POST /predict")
    answer = ops.predict_online(settings, record, version=logged.version, timeout=settings.api_model_poll_s + 20)
    console.print(f"curl -s {settings.api_url}/predict -H 'content-type: application/json' -d '{json.dumps(record)}'")
    console.print(answer)

    console.rule("Summary")
    counts = ", ".join(f"{label} {count:,}" for label, count in sorted((result.label_counts or {}).items()))
    console.print(
        f"Batch: {result.rows:,} rows scored by the Lambda in {result.seconds:.2f} s (upload -> predictions): {counts}\n"
        f"Online: {settings.api_url}/docs    Registry: {settings.mlflow_tracking_uri}    Console: {settings.console_url} "
        f"({logged.name} version {logged.version} is @champion and live)"
    )
