"""`mlops-lab plan`: what bootstrap (and `deploy sagemaker`) would create, update or leave alone, and what it costs.

The resources come from bootstrap itself run as a dry run (the same comparisons, only reads), so the plan cannot
drift from what bootstrap does; those other commands make (`deploy sagemaker`'s with ``--sagemaker``, `image push`'s
repository when an image is assumed) come from the lab's inventory (``mlops_lab.ownership``), read by their tags. The cost is an estimate from a pinned, dated price table in the repo
(``pricing/aws-list-prices.json``) and stated assumptions about use, not a quote.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from botocore.exceptions import ClientError

from mlops_lab import ownership, sagemaker
from mlops_lab.aws import Aws, Change, is_not_found
from mlops_lab.bootstrap import bootstrap, build_lambda_layer
from mlops_lab.errors import Refused
from mlops_lab.settings import Settings

PRICES = Path(__file__).parent / "pricing" / "aws-list-prices.json"
HOURS_PER_MONTH = 730  # AWS's own convention for monthly prices
MODEL_MB = 2.0  # the published ONNX model (the lab's is ~1.8 MB)


class PlanError(Refused, ValueError):
    """A region or an instance type the price table does not have."""


@dataclass(frozen=True)
class Assumptions:
    """How the lab would be used: the estimate scales with these (each one a `plan` option)."""

    uploads_per_day: int = 100
    rows_per_file: int = 10_000
    bytes_per_row: int = 100  # the demo's CSV: 10,000 rows are 1.0 MB
    days: int = 30
    # Lambda time per file: start-up of the work plus rows at the rate measured end to end on the batch bench.
    seconds_per_file: float | None = None
    output_ratio: float = 1.6  # a predictions file's size over its input's (the columns plus label and probabilities)
    log_bytes_per_file: int = 1_000  # the handler's JSON log lines
    image_mb: float = 0.0  # the API's image in ECR, if you push one (`mlops-lab image push`)
    endpoint_hours: float = HOURS_PER_MONTH  # a SageMaker endpoint bills every hour it exists
    # Batch Transform (`mlops-lab transform`) bills each instance for the hours its jobs run, nothing in between.
    transform_instance_hours: float = 0.0
    transform_instance: str = "ml.m5.xlarge"

    @property
    def files(self) -> int:
        return self.uploads_per_day * self.days

    @property
    def lambda_seconds(self) -> float:
        if self.seconds_per_file is not None:
            return self.seconds_per_file
        return 0.1 + self.rows_per_file / 60_000

    @property
    def input_gb(self) -> float:
        return self.files * self.rows_per_file * self.bytes_per_row / 1e9


@dataclass(frozen=True)
class CostLine:
    service: str
    item: str
    quantity: float
    unit: str
    unit_price: float
    price_per: str  # what the unit price is for: "1M requests", "GB-second", ...
    monthly_usd: float


@dataclass
class Plan:
    target: str
    region: str
    changes: list[Change]
    costs: list[CostLine] = field(default_factory=list)
    assumptions: Assumptions = field(default_factory=Assumptions)
    prices_as_of: str = ""
    price_note: str = ""

    @property
    def total_usd(self) -> float:
        return sum(line.monthly_usd for line in self.costs)

    def to_json(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "region": self.region,
            "resources": [asdict(change) for change in self.changes],
            "assumptions": asdict(self.assumptions) | {"files_per_month": self.assumptions.files},
            "prices_as_of": self.prices_as_of,
            "costs": [asdict(line) for line in self.costs],
            "monthly_usd": round(self.total_usd, 4),
            "note": self.price_note,
        }


def load_prices(region: str) -> tuple[dict[str, Any], str, dict[str, Any]]:
    """(the region's prices, the table's date, the free tier); PlanError for a region the table does not have."""
    table = json.loads(PRICES.read_text())
    if region not in table["regions"]:
        raise PlanError(
            f"no prices for {region} in {PRICES.name} (it has {', '.join(sorted(table['regions']))}): add them there"
        )
    return table["regions"][region], table["as_of"], table["free_tier"]


def estimate(
    settings: Settings, region: str, assumptions: Assumptions, *, sagemaker_instance: str | None = None
) -> tuple[list[CostLine], str]:
    """Monthly cost lines at list prices (before the free tier), and the table's date."""
    prices, as_of, _ = load_prices(region)
    a = assumptions
    files = a.files
    gb_seconds = files * a.lambda_seconds * settings.lambda_memory_mb / 1024
    stored_gb = a.input_gb * (1 + a.output_ratio) + (45 + MODEL_MB) / 1000  # a month of files, the layer, the model

    def line(service: str, item: str, quantity: float, unit: str, price: float, per: float = 1) -> CostLine:
        per_text = {1e6: "1M ", 1000: "1,000 "}.get(per, "") + (unit if per != 1 else unit.removesuffix("s"))
        return CostLine(service, item, quantity, unit, price, per_text, quantity / per * price)

    costs = [
        line("Lambda", "requests", files, "invocations", prices["lambda_per_million_requests"], 1e6),
        line(
            "Lambda",
            f"compute at {settings.lambda_memory_mb} MB, {a.lambda_seconds:.2f} s a file",
            gb_seconds,
            "GB-seconds",
            prices["lambda_per_gb_second"],
        ),
        line("S3", "PUT: uploads and outputs", 2 * files, "requests", prices["s3_per_1000_put"], 1000),
        line("S3", "GET/HEAD: the function's reads", 2 * files, "requests", prices["s3_per_1000_get"], 1000),
        line(
            "S3",
            "storage: a month of inputs and outputs, the layer, the model",
            stored_gb,
            "GB-month",
            prices["s3_per_gb_month"],
        ),
        line(
            "CloudWatch Logs",
            "the function's log lines",
            files * a.log_bytes_per_file / 1e9,
            "GB",
            prices["logs_per_gb_ingested"],
        ),
        line("SQS", "failure queue: failed events only", 0, "requests", prices["sqs_per_million_requests"], 1e6),
    ]
    if a.image_mb:
        costs.append(line("ECR", "the API image", a.image_mb / 1000, "GB-month", prices["ecr_per_gb_month"]))
    if sagemaker_instance:
        hourly = prices["sagemaker_per_hour"].get(sagemaker_instance)
        if hourly is None:
            raise PlanError(f"no price for {sagemaker_instance} in {region} in {PRICES.name}")
        costs.append(
            line("SageMaker", f"endpoint, 1 x {sagemaker_instance}", a.endpoint_hours, "instance-hours", hourly)
        )
        costs.append(line("ECR", "mlflow's serving image (~1.5 GB)", 1.5, "GB-month", prices["ecr_per_gb_month"]))
    if a.transform_instance_hours:
        hourly = prices["sagemaker_per_hour"].get(a.transform_instance)
        if hourly is None:
            raise PlanError(f"no price for {a.transform_instance} in {region} in {PRICES.name}")
        costs.append(
            line(
                "SageMaker",
                f"Batch Transform, {a.transform_instance} while jobs run",
                a.transform_instance_hours,
                "instance-hours",
                hourly,
            )
        )
    return costs, as_of


def endpoint_hourly_usd(region: str, instance_type: str = sagemaker.INSTANCE_TYPE) -> float | None:
    """A SageMaker endpoint's price per hour, or None when the table does not have it."""
    try:
        prices, _, _ = load_prices(region)
    except PlanError:
        return None
    return prices["sagemaker_per_hour"].get(instance_type)


def made_by_changes(settings: Settings, aws: Aws, made_by: str, *, adopt: bool = False) -> list[Change]:
    """What the command ``made_by`` would do to the inventory's resources it makes, told by their tags: create what is
    not there, keep what is the lab's, refuse ("not ours") what is not, or with ``adopt`` tag it."""
    changes = []
    for resource in ownership.inventory(settings):
        if resource.made_by != made_by:
            continue
        tags = resource.read_tags(aws)
        if tags is None:
            changes.append(Change(resource.kind, resource.name, "created"))
        elif ownership.is_ours(tags, settings):
            changes.append(Change(resource.kind, resource.name, "unchanged"))
        elif adopt:
            changes.append(Change(resource.kind, resource.name, "updated", f"tags: adopted ({ownership.whose(tags)})"))
        else:
            why = f"{ownership.whose(tags)}: `{made_by}` refuses it without --adopt"
            changes.append(Change(resource.kind, resource.name, "not ours", why))
    return changes


def sagemaker_changes(settings: Settings, aws: Aws, *, adopt: bool = False) -> list[Change]:
    """What `deploy sagemaker` would create: its image repository, its role, and the endpoint (with its model and
    endpoint config; mlflow's client replaces an existing one)."""
    owned = made_by_changes(settings, aws, "deploy sagemaker", adopt=adopt)
    changes = [change for change in owned if change.kind != "role" or change.action == "not ours"]
    # The role's own dry run compares its trust and policy too, so it says more than its tags (unless refused).
    if not any(change.kind == "role" for change in changes):
        changes += sagemaker.ensure_role(settings, aws, dry_run=True)[1]
    endpoint = settings.sagemaker_endpoint
    if not aws.on_aws:  # offline, SageMaker's control plane is moto, started by the deploy itself
        return [*changes, Change("SageMaker endpoint", endpoint, "created", "model, endpoint config, endpoint (moto)")]
    try:
        aws.client("sagemaker").describe_endpoint(EndpointName=endpoint)
        action = "updated"
    except ClientError as error:
        if not (is_not_found(error) or "Could not find" in str(error)):
            raise
        action = "created"
    return [*changes, Change("SageMaker endpoint", endpoint, action, "model, endpoint config, endpoint")]


def make_plan(
    settings: Settings, aws: Aws, assumptions: Assumptions, *, with_sagemaker: bool = False, adopt: bool = False
) -> Plan:
    """Bootstrap as a dry run (and `image push`'s and `deploy sagemaker`'s resources), priced for the session's region; resources that
    exist without the lab's tag are "not ours" (or, with ``adopt``, what bootstrap --adopt would change)."""
    changes = bootstrap(settings, aws, build_lambda_layer(settings, aws), dry_run=True, adopt=adopt)
    if assumptions.image_mb:
        changes += made_by_changes(settings, aws, "image push", adopt=adopt)
    if with_sagemaker:
        changes += sagemaker_changes(settings, aws, adopt=adopt)
    plan = Plan(aws.describe(account=True), aws.region, changes, assumptions=assumptions)
    try:
        plan.costs, plan.prices_as_of = estimate(
            settings, aws.region, assumptions, sagemaker_instance=sagemaker.INSTANCE_TYPE if with_sagemaker else None
        )
    except PlanError as error:
        plan.price_note = str(error)
        return plan
    free = load_prices(aws.region)[2]
    plan.price_note = (
        f"list prices before the free tier ({free['lambda_requests_per_month'] / 1e6:g}M Lambda requests and "
        f"{free['lambda_gb_seconds_per_month']:,} GB-seconds a month are free)"
        + ("; on the emulator nothing is billed: this is what the same use would cost on AWS" if not aws.on_aws else "")
    )
    return plan
