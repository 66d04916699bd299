"""Every IAM policy the lab writes, checked by linters: what the emulator cannot tell (it accepts a policy AWS rejects,
and enforces only what it models).

The lab writes four: the batch-predict function's execution policy (``policies/batch-predict-policy.json`` as
bootstrap renders it) and its trust policy, and the SageMaker execution role's policy and trust policy
(``the sagemaker package``). Nothing else the lab creates holds an IAM policy (the invoke permission is Lambda's resource
policy, written by ``add_permission`` from its arguments).

- parliament (identity policies, with its community auditors), each policy rendered for a sample account in every
  partition. It has no trust-policy mode: on a trust policy it checks the principals, then stops at the missing
  ``Resource``, which a trust policy must not have.
- cfn-lint (AWS's own schemas for identity and trust policies, action names, informational checks too) on both
  roles as CloudFormation resources.
- Neither checks a service principal's name, so the last test pins each role's trusted service.

Findings that do not apply are listed in ``NOT_APPLICABLE`` with the reason; anything else fails.
"""

from __future__ import annotations

import copy
import json
import warnings
from typing import Any

import pytest
from cfnlint.api import ManualArgs, lint

from mlops_lab import batch_spec, cloudformation, sagemaker
from mlops_lab.settings import Settings

with warnings.catch_warnings():
    # parliament 1.6.4 imports pkg_resources (deprecated, hence setuptools pinned at 80.9.0 in the test extras) and
    # leaves its two data files open at import: noise about the tool, nothing about the policies.
    warnings.simplefilter("ignore")
    from parliament import analyze_policy_string

ACCOUNT = "123456789012"
PARTITIONS = {"aws": "eu-west-1", "aws-cn": "cn-north-1", "aws-us-gov": "us-gov-west-1"}

# (policy, parliament issue, detail) -> why the finding does not apply.
NOT_APPLICABLE = {
    ("sagemaker execution", "CREDENTIALS_EXPOSURE", ""): (
        "community auditor: ecr:GetAuthorizationToken returns a registry token. SageMaker needs it to pull the serving "
        "image; the action has no resource-level permissions (Resource must be *), and the token lets the role pull "
        "only what its other statements allow (BatchGetImage/GetDownloadUrlForLayer on the one repository)."
    ),
    ("lambda trust", "MALFORMED", "Statement contains neither Resource nor NotResource"): (
        "a trust policy is a resource policy on the role: AWS refuses a Resource element in it (cfn-lint's E3530 "
        "checks the trust policy instead)"
    ),
    ("sagemaker trust", "MALFORMED", "Statement contains neither Resource nor NotResource"): (
        "a trust policy is a resource policy on the role: AWS refuses a Resource element in it (cfn-lint's E3530 "
        "checks the trust policy instead)"
    ),
}


class SampleAws:
    """What the lab reads from ``Aws`` to render a policy."""

    def __init__(self, partition: str) -> None:
        self.partition, self.region, self.account_id = partition, PARTITIONS[partition], ACCOUNT


def lab_policies(partition: str) -> dict[str, dict[str, Any]]:
    settings, aws = Settings(_env_file=None), SampleAws(partition)
    return {
        "batch-predict execution": batch_spec.execution_policy(settings, aws),  # type: ignore[arg-type]
        "lambda trust": batch_spec.trust_policy(),
        "sagemaker execution": sagemaker.execution_policy(settings, aws),  # type: ignore[arg-type]
        "sagemaker trust": sagemaker.trust_policy(),
    }


def parliament_findings(policy: dict[str, Any]) -> set[tuple[str, str]]:
    analysed = analyze_policy_string(json.dumps(policy), include_community_auditors=True)
    return {(finding.issue, str(finding.detail or "")) for finding in analysed.findings}


def roles_template(settings: Settings) -> dict[str, Any]:
    """Both roles the lab creates, as CloudFormation resources: the batch-predict role of the exported template, and
    the SageMaker role with its policies rendered the same way."""
    return {
        "AWSTemplateFormatVersion": cloudformation.TEMPLATE_VERSION,
        "Resources": {
            "BatchPredictRole": cloudformation.template(settings)["Resources"][cloudformation.ROLE],
            "SageMakerRole": {
                "Type": "AWS::IAM::Role",
                "Properties": {
                    "RoleName": settings.sagemaker_role_name,
                    "AssumeRolePolicyDocument": sagemaker.trust_policy(),
                    "Policies": [
                        {
                            "PolicyName": sagemaker.EXECUTION_POLICY_NAME,
                            "PolicyDocument": cloudformation.deploy_time(sagemaker.execution_policy, settings),
                        }
                    ],
                },
            },
        },
    }


def cfn_lint_findings(document: dict[str, Any]) -> list[str]:
    config = ManualArgs(regions=[PARTITIONS[p] for p in PARTITIONS], include_checks=["I"])
    return [f"{match.rule.id} {match.message}" for match in lint(json.dumps(document), config=config)]


@pytest.mark.parametrize("partition", PARTITIONS)
@pytest.mark.parametrize("name", ["batch-predict execution", "lambda trust", "sagemaker execution", "sagemaker trust"])
def test_policy_passes_parliament(name: str, partition: str) -> None:
    findings = parliament_findings(lab_policies(partition)[name])
    assert {finding for finding in findings if (name, *finding) not in NOT_APPLICABLE} == set()


def test_every_suppression_is_still_needed() -> None:
    """A suppressed finding that no longer occurs is removed from NOT_APPLICABLE, not left to hide a later one."""
    occurring = {
        (name, *finding) for name, policy in lab_policies("aws").items() for finding in parliament_findings(policy)
    }
    assert set(NOT_APPLICABLE) <= occurring


def test_roles_pass_cfn_lint() -> None:
    assert cfn_lint_findings(roles_template(Settings(_env_file=None))) == []


def _statement(policy: dict[str, Any], sid: str) -> dict[str, Any]:
    return next(statement for statement in policy["Statement"] if statement.get("Sid") == sid)


@pytest.mark.parametrize(
    ("break_it", "issue"),
    [
        (
            lambda p: _statement(p, "ReadUploadedCsv").update(Resource="arn:aws:s3:::mlops-lab-input"),
            "RESOURCE_MISMATCH",
        ),
        (lambda p: _statement(p, "ReadPublishedModel").update(Action="s3:GetObjects"), "UNKNOWN_ACTION"),
        (
            lambda p: _statement(p, "SendFailedEventsToFailureQueue").update(Action="sqs:*", Resource="*"),
            "RESOURCE_STAR",
        ),
    ],
    ids=["bucket-arn-for-an-object-action", "misspelt-action", "wildcard"],
)
def test_parliament_catches_a_broken_execution_policy(break_it: Any, issue: str) -> None:
    policy = copy.deepcopy(lab_policies("aws")["batch-predict execution"])
    break_it(policy)
    assert issue in {found for found, _ in parliament_findings(policy)}


@pytest.mark.parametrize(
    ("break_it", "rule"),
    [
        (lambda trust: trust["Statement"][0].update(Resource="*"), "E3530"),
        (lambda trust: trust["Statement"][0].update(Action="sts:AssumeRoles"), "W3037"),
        (lambda trust: trust["Statement"][0].pop("Principal"), "E3530"),
    ],
    ids=["resource-in-a-trust-policy", "misspelt-action", "no-principal"],
)
def test_cfn_lint_catches_a_broken_trust_policy(break_it: Any, rule: str) -> None:
    document = roles_template(Settings(_env_file=None))
    break_it(document["Resources"]["SageMakerRole"]["Properties"]["AssumeRolePolicyDocument"])
    assert rule in {finding.split()[0] for finding in cfn_lint_findings(document)}


@pytest.mark.parametrize(
    ("trust", "service"),
    [(batch_spec.trust_policy, "lambda.amazonaws.com"), (sagemaker.trust_policy, "sagemaker.amazonaws.com")],
    ids=["lambda", "sagemaker"],
)
def test_each_role_trusts_only_its_service(trust: Any, service: str) -> None:
    """What neither linter checks: the service principal's name (a misspelt one is valid syntax, and no one could
    assume the role), and that nothing else may assume the role."""
    assert trust()["Statement"] == [{"Effect": "Allow", "Principal": {"Service": service}, "Action": "sts:AssumeRole"}]
