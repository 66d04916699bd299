"""How the CLI shows things: one console, changes, promotions, the services table."""

from __future__ import annotations

from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console
from rich.table import Table

from mlops_lab import jobs, ops, reconcile, recovery
from mlops_lab.aws import Aws, Change
from mlops_lab.contract import META_MODEL_NAME, META_MODEL_VERSION
from mlops_lab.registry import Promotion
from mlops_lab.services import ServiceState
from mlops_lab.settings import Settings
from mlops_lab.teardown import Report as TeardownReport

# Without a terminal (make, CI logs) rich would wrap at 80 columns and cut the endpoints table.
console = Console() if Console().is_terminal else Console(width=120)
errors = Console(stderr=True) if Console(stderr=True).is_terminal else Console(stderr=True, width=120)

_STYLE = {
    "created": "green",
    "published": "green",
    "updated": "yellow",
    "deleted": "red",
    "unchanged": "dim",
    "absent": "dim",
    "detached": "red",
    "unchecked": "yellow",
    "not ours": "yellow",  # exists under the lab's name without its tag: refused, or kept by teardown
    "kept": "yellow",
}


def where(aws: Aws) -> None:
    """The line every command that talks to AWS or the emulator prints first: where its calls go (on stderr, so a
    command's JSON on stdout stays JSON)."""
    errors.print(f"Talking to {aws.describe(account=True)}", markup=False, highlight=False)


def change(change: Change) -> None:
    style = _STYLE.get(change.action, "")
    detail = f"  [dim]{change.detail}[/]" if change.detail else ""
    console.print(f"  [{style}]{change.action:>9}[/]  {change.kind:<17} {change.name}{detail}")


def teardown_checks(report: TeardownReport) -> None:
    console.print("[bold]Checked afterwards[/] (by name, and by tag where the account has the tagging API):")
    for check in report.checks:
        if not check.checked:
            outcome = f"[yellow]not checked[/]: {check.note}"
        elif check.left:
            outcome = f"[red]still there[/]: {', '.join(check.left)}"
        else:
            outcome = "[green]nothing left[/]" + (f" [dim]({check.note})[/]" if check.note else "")
        console.print(f"  {check.service:<16} {check.looked_for}: {outcome}")
    for kept in report.kept:
        console.print(f"  [dim]kept[/]             {kept}")
    deleted = sum(change.action in ("deleted", "detached") for change in report.changes)
    verdict = "[green]Nothing of the lab's is left.[/]" if report.complete else "[red]Teardown is not complete.[/]"
    console.print(f"[bold]{deleted} deleted.[/] {verdict}")


def summary(changes: list[Change]) -> None:
    changed = [c for c in changes if c.action not in {"unchanged", "absent"}]
    if changed:
        console.print(f"[bold]{len(changed)} change(s)[/], {len(changes) - len(changed)} unchanged.")
    else:
        console.print("[bold]Nothing to change[/]: everything already exists as wanted.")


class Report(ops.Report):
    """``bring_up``'s progress on this console: spinners for steps, a line per change."""

    def step(self, message: str) -> AbstractContextManager[object]:
        return console.status(message)

    def note(self, message: str) -> None:
        console.print(message)

    def change(self, change_: Change) -> None:
        change(change_)


def promotion(promotion: Promotion) -> None:
    change(promotion.change)
    agreement = promotion.agreement
    checked = (
        f"ONNX agrees with sklearn on {agreement.rows:,} holdout rows (max |dp| {agreement.max_probability_diff:.1e}); "
        if agreement
        else ""
    )
    console.print(
        f"{checked}[bold]{promotion.name} version {promotion.version}[/] is now @champion and live "
        f"(was {promotion.previous or 'unversioned/none'}). The Lambda and the API pick it up without a redeploy."
    )


def imported(imported: Any) -> None:
    """`mlops-lab publish`'s result (a model_import.Imported)."""
    described = imported.description
    change(imported.change)
    shown = ", ".join(described.features[:12]) + (
        f", … ({len(described.features)})" if len(described.features) > 12 else ""
    )
    what = described.kind + (f" of {', '.join(described.classes)}" if described.classes else "")
    console.print(f"  {what}; inputs: {shown}")
    if described.categories:
        console.print(f"  categories read from the graph for: {', '.join(sorted(described.categories))}")
    for note in described.notes:
        console.print(f"  [yellow]note[/]: {note}")
    console.print(f"  {imported.checked} ({imported.sample_from})")
    version = f" version {imported.version}" if imported.version else " (not registered: mlflow not used)"
    was = f" (was {imported.previous})" if imported.previous else ""
    console.print(
        f"[bold]{imported.name}{version}[/] is now live{was}. The Lambda and the API pick it up without a redeploy."
    )


def live_model(metadata: dict[str, str] | None) -> None:
    if metadata is None:
        return
    name, version = metadata.get(META_MODEL_NAME), metadata.get(META_MODEL_VERSION)
    shown = f"{name or 'a model'}" + (f" version {version}" if version else " (unregistered)")
    console.print(f"live model: [bold]{shown}[/]")


def services(settings: Settings, states: list[ServiceState]) -> None:
    table = Table(title="mlops-lab")
    for column in ("service", "state", "endpoint", "what"):
        table.add_column(column)
    for state in states:
        if state.healthy:
            shown = "[green]healthy[/]"
        else:
            shown = "[yellow]starting/unhealthy[/]" if state.pid else "[dim]stopped[/]"
        table.add_row(state.name, shown + (f" (pid {state.pid})" if state.pid else ""), state.url, state.description)
    console.print(table)
    console.print(
        f"buckets: s3://{settings.input_bucket} (upload CSVs) -> s3://{settings.output_bucket}/predictions/ ; "
        f"model: s3://{settings.model_bucket}/{settings.model_key}"
    )


_RERUN_STYLE = {"ok": "green", "rejected": "yellow", "failed": "red"}


def rerun(rerun: recovery.Rerun) -> None:
    style = _RERUN_STYLE.get(rerun.status, "")
    console.print(f"  [{style}]{rerun.status:>9}[/]  s3://{rerun.bucket}/{rerun.key}  [dim]{rerun.detail}[/]")


def reconciliation(result: reconcile.ReconcileResult) -> None:
    verb = "would" if result.dry_run else "did"
    if result.dry_run:
        for action in result.actions:
            console.print(f"  [yellow]{action.action:>24}[/]  {action.key}  [dim]({action.reason})[/]")
    reruns = sum(action.action == "rerun" for action in result.actions)
    removals = len(result.actions) - reruns
    console.print(
        f"[bold]{result.inputs} input(s)[/]: {result.up_to_date} up to date; {verb} re-run {reruns} "
        f"and remove {removals} superseded output(s)."
        + (f" Cleared {result.cleared_failures} failure record(s) now resolved." if result.cleared_failures else "")
    )


def backlog(backlog: reconcile.Backlog) -> None:
    if backlog.inputs_without_output:
        console.print(
            f"[yellow]{backlog.inputs_without_output} input(s) have no output yet[/] (still running, or lost in a "
            "crash): `mlops-lab reconcile` completes them."
        )
    if backlog.failures:
        console.print(f"[yellow]{backlog.failures} failed event(s)[/]: `mlops-lab failures` shows them.")


_PLANNED = {"created": "create", "published": "publish", "updated": "update", "unchanged": "keep"}


def plan(result: Any) -> None:
    """`mlops-lab plan` (a plan.Plan): the resources and what would happen to each, then the cost estimate."""
    console.print(f"[bold]Plan[/] against {result.target}: nothing is changed.")
    for item in result.changes:
        action = _PLANNED.get(item.action, item.action)
        style = _STYLE.get(item.action, "")
        detail = f"  [dim]{item.detail}[/]" if item.detail else ""
        console.print(f"  [{style}]{action:>8}[/]  {item.kind:<19} {item.name}{detail}")
    todo = sum(item.action != "unchanged" for item in result.changes)
    console.print(f"[bold]{todo} to change[/], {len(result.changes) - todo} as wanted already.")
    if not result.costs:
        console.print(f"[yellow]No cost estimate[/]: {result.price_note}")
        return
    a = result.assumptions
    table = Table(
        title=f"Estimated monthly cost in {result.region} (prices of {result.prices_as_of}, USD)",
        caption=(
            f"Assumed: {a.uploads_per_day:,} uploads a day of {a.rows_per_file:,} rows ({a.bytes_per_row} B a row) "
            f"for {a.days} days = {a.files:,} files. {result.price_note}."
        ),
    )
    for column, justify in (
        ("service", "left"),
        ("what", "left"),
        ("quantity", "right"),
        ("unit price", "right"),
        ("per month", "right"),
    ):
        table.add_column(column, justify=justify)  # type: ignore[arg-type]
    for line in result.costs:
        table.add_row(
            line.service,
            line.item,
            f"{line.quantity:,.4g} {line.unit}",
            f"${line.unit_price:.10f}".rstrip("0").rstrip(".") + f" / {line.price_per}",
            f"{line.monthly_usd:,.2f}",
        )
    table.add_row("", "[bold]total[/]", "", "", f"[bold]{result.total_usd:,.2f}[/]")
    console.print(table)


def batch_result_json(result: jobs.BatchResult) -> dict[str, Any]:
    """`mlops-lab predict --json`: the result of one upload."""
    return {
        "status": result.status,
        "input": result.input_uri,
        "output": result.output_uri,
        "rows": result.rows,
        "seconds": round(result.seconds, 3),
        "model": result.model or None,
        "label_counts": result.label_counts,
        "value_range": list(result.value_range) if result.value_range else None,
        "error": result.error,
        "downloaded_to": str(result.local_path),
    }
