"""`mlops-lab plan`: bootstrap as a dry run (every resource, nothing changed) and the cost estimate's arithmetic."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from mlops_lab.cli import app
from mlops_lab.plan import PRICES, Assumptions, PlanError, estimate, make_plan
from mlops_lab.settings import Settings
from tests.support import Lab

runner = CliRunner()


# -- the estimate -------------------------------------------------------------------------------------------------


def test_the_estimate_is_the_price_table_times_the_assumptions() -> None:
    settings = Settings(_env_file=None, lambda_memory_mb=2048)
    use = Assumptions(uploads_per_day=100, days=30, rows_per_file=10_000, bytes_per_row=100, seconds_per_file=0.5)
    lines = {
        (line.service, line.item.split(":")[0].split(" at ")[0]): line
        for line in estimate(settings, "us-east-1", use)[0]
    }
    assert lines[("Lambda", "requests")].monthly_usd == pytest.approx(3000 / 1e6 * 0.20)
    compute = lines[("Lambda", "compute")]
    assert compute.quantity == pytest.approx(3000 * 0.5 * 2) and compute.monthly_usd == pytest.approx(
        3000 * 0.0000166667
    )
    assert lines[("S3", "PUT")].monthly_usd == pytest.approx(6000 / 1000 * 0.005)
    # A month of 1 MB inputs and 1.6 MB outputs (3000 of each), the 45 MB layer and the 2 MB model.
    assert lines[("S3", "storage")].quantity == pytest.approx(3000 * 1e6 * 2.6 / 1e9 + 0.047)
    endpoint = estimate(settings, "eu-west-1", use, sagemaker_instance="ml.m5.large")[0]
    (hours,) = [line for line in endpoint if line.service == "SageMaker"]
    assert hours.quantity == 730 and hours.monthly_usd == pytest.approx(730 * 0.128)
    batch = Assumptions(transform_instance_hours=12, transform_instance="ml.m5.xlarge")
    (transform,) = [line for line in estimate(settings, "us-east-1", batch)[0] if line.service == "SageMaker"]
    assert transform.quantity == 12 and transform.monthly_usd == pytest.approx(12 * 0.23)  # billed while jobs run
    assert not [line for line in estimate(settings, "us-east-1", use)[0] if line.service == "SageMaker"]
    with pytest.raises(PlanError, match=r"no price for ml\.p5\.48xlarge"):
        estimate(settings, "us-east-1", Assumptions(transform_instance_hours=1, transform_instance="ml.p5.48xlarge"))


def test_a_region_without_prices_is_said_not_guessed() -> None:
    with pytest.raises(PlanError, match="no prices for ap-south-2"):
        estimate(Settings(_env_file=None), "ap-south-2", Assumptions())


def test_the_price_table_is_dated_and_complete() -> None:
    table = json.loads(PRICES.read_text())
    assert table["as_of"] and table["currency"] == "USD" and table["sources"]
    keys = set(table["regions"]["us-east-1"])
    for region, prices in table["regions"].items():
        assert set(prices) == keys, region
        assert all(value > 0 for key, value in prices.items() if key != "sagemaker_per_hour"), region
        assert "ml.m5.large" in prices["sagemaker_per_hour"], region  # what `deploy sagemaker` creates


# -- the dry run, on the session's emulator -----------------------------------------------------------------------


def inventory(lab: Lab) -> dict[str, list[str]]:
    aws = lab.aws
    return {
        "buckets": sorted(b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]),
        "functions": sorted(f["FunctionName"] for f in aws.client("lambda").list_functions()["Functions"]),
        "layers": sorted(layer["LayerName"] for layer in aws.client("lambda").list_layers()["Layers"]),
        "roles": sorted(r["RoleName"] for r in aws.client("iam").list_roles()["Roles"]),
        "queues": sorted(aws.client("sqs").list_queues().get("QueueUrls", [])),
        "repositories": sorted(r["repositoryName"] for r in aws.client("ecr").describe_repositories()["repositories"]),
        "log groups": sorted(g["logGroupName"] for g in aws.client("logs").describe_log_groups()["logGroups"]),
        "tags": sorted(  # a dry run over existing resources tags nothing either
            f"{m['ResourceARN']} {sorted((t['Key'], t['Value']) for t in m['Tags'])}"
            for m in aws.client("resourcegroupstaggingapi").get_resources()["ResourceTagMappingList"]
        ),
    }


def test_plan_for_a_new_prefix_lists_everything_and_creates_nothing(lab_stack: Lab) -> None:
    settings = lab_stack.settings.model_copy(update={"prefix": "lab-planned"})
    before = inventory(lab_stack)
    plan = make_plan(settings, lab_stack.aws, Assumptions(), with_sagemaker=True)
    assert inventory(lab_stack) == before
    assert [(c.kind, c.action) for c in plan.changes] == [
        ("bucket", "created"),
        ("bucket", "created"),
        ("bucket", "created"),
        ("queue", "created"),
        ("role", "created"),
        ("role policy", "created"),
        ("log group", "created"),
        ("layer", "published"),
        ("function", "created"),
        ("async invocation", "created"),
        ("invoke permission", "created"),
        ("notification", "created"),
        ("ecr repository", "created"),
        ("role", "created"),
        ("role policy", "created"),
        ("SageMaker endpoint", "created"),
    ]
    assert all("lab-planned" in c.name for c in plan.changes)
    assert plan.total_usd > 80 and {line.service for line in plan.costs} >= {"Lambda", "S3", "SageMaker"}


def test_plan_for_the_running_lab_changes_nothing_and_sees_drift(lab_stack: Lab) -> None:
    plan = make_plan(lab_stack.settings, lab_stack.aws, Assumptions())
    assert {c.action for c in plan.changes} == {"unchanged"}, plan.changes
    # Wanted differs from what exists (a new timeout): the plan says so, and the function keeps its timeout.
    lam = lab_stack.aws.client("lambda")
    timeout = lam.get_function_configuration(FunctionName=lab_stack.settings.function_name)["Timeout"]
    wanted = lab_stack.settings.model_copy(update={"lambda_timeout_s": timeout + 7})
    (function,) = [c for c in make_plan(wanted, lab_stack.aws, Assumptions()).changes if c.kind == "function"]
    assert (function.action, function.detail) == ("updated", "timeout")
    assert lam.get_function_configuration(FunctionName=lab_stack.settings.function_name)["Timeout"] == timeout


def test_plan_by_command_as_json(cli_env: None) -> None:
    result = runner.invoke(app, ["plan", "--json", "--uploads-per-day", "1000"])
    assert result.exit_code == 0, result.output
    document = json.loads(result.stdout)  # stdout only: the line saying where the command talks goes to stderr
    assert {r["action"] for r in document["resources"]} == {"unchanged"} and len(document["resources"]) == 12
    assert document["assumptions"]["files_per_month"] == 30_000 and document["monthly_usd"] > 0
    assert document["prices_as_of"] and "emulator" in document["target"]
    table = runner.invoke(app, ["plan"])
    assert table.exit_code == 0 and "nothing is changed" in table.output and "total" in table.output, table.output
