"""The batch path as the lab wants it, written once: the role's policies, the function's package and configuration,
its asynchronous invocation, the S3 invoke permission and notification. Bootstrap compares AWS with these (and
creates or updates), plan reads bootstrap's dry run, and the CloudFormation export renders the same values.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import zipfile
from pathlib import Path
from string import Template
from typing import Any

from mlops_lab.aws import Aws
from mlops_lab.contract import INPUT_SUFFIX
from mlops_lab.layer import LayerArtifact, write_deterministic_zip
from mlops_lab.settings import PROJECT_ROOT, Settings

POLICY_DIR = Path(__file__).parent / "policies"
HANDLER_DIR = PROJECT_ROOT / "lambda" / "batch_predict"
INLINE_POLICY_NAME = "batch-predict"
NOTIFICATION_ID = "batch-predict-csv"
# SQS keeps a message at most 14 days: failures wait that long for `mlops-lab redrive` (the default is 4 days).
FAILURE_RETENTION_S = 14 * 24 * 3600


# -- what is wanted -----------------------------------------------------------------------------------------------


def trust_policy() -> dict[str, Any]:
    return json.loads((POLICY_DIR / "lambda-trust-policy.json").read_text())


def execution_policy(settings: Settings, aws: Aws) -> dict[str, Any]:
    template = Template((POLICY_DIR / "batch-predict-policy.json").read_text())
    return json.loads(
        template.substitute(
            Partition=aws.partition,
            Region=aws.region,
            AccountId=aws.account_id,
            FunctionName=settings.function_name,
            InputBucket=settings.input_bucket,
            OutputBucket=settings.output_bucket,
            ModelBucket=settings.model_bucket,
            ModelKey=settings.model_key,
            FailureQueue=settings.failure_queue_name,
        )
    )


def function_package(bundled_layer: LayerArtifact | None = None) -> bytes:
    """The function's code zip: the thin handler (the layer brings the rest); with ``bundled_layer``, the layer's
    ``python/`` tree as well, at the zip's root (which Lambda puts on sys.path, as it does a layer's ``python/``)."""
    entries = [(path.name, path.read_bytes(), 0o644) for path in sorted(HANDLER_DIR.glob("*.py"))]
    compress = True
    if bundled_layer is not None:
        compress = bundled_layer.compressed
        with zipfile.ZipFile(bundled_layer.path) as layer_zip:
            entries += [
                (info.filename.removeprefix("python/"), layer_zip.read(info), (info.external_attr >> 16) & 0o777)
                for info in layer_zip.infolist()
                if info.filename.startswith("python/") and not info.is_dir()
            ]
    buffer = io.BytesIO()
    write_deterministic_zip(buffer, entries, compress=compress)
    return buffer.getvalue()


def code_sha256(package: bytes) -> str:
    return base64.b64encode(hashlib.sha256(package).digest()).decode()


def function_environment(settings: Settings) -> dict[str, str]:
    return {
        "OUTPUT_BUCKET": settings.output_bucket,
        "MODEL_BUCKET": settings.model_bucket,
        "MODEL_KEY": settings.model_key,
        "MAX_INPUT_BYTES": str(settings.max_input_mb * 1024 * 1024),
        "CHUNK_ROWS": str(settings.chunk_rows),
        "CHUNK_BYTES": str(settings.chunk_mb * 1024 * 1024),
    }


def async_invocation(settings: Settings, queue_arn: str) -> dict[str, Any]:
    """How Lambda handles an event S3 hands it: this many retries, this maximum age, then the failure queue."""
    return {
        "MaximumRetryAttempts": settings.lambda_retry_attempts,
        "MaximumEventAgeInSeconds": settings.lambda_max_event_age_s,
        "DestinationConfig": {"OnFailure": {"Destination": queue_arn}},
    }


FUNCTION_HANDLER = "handler.handler"
FUNCTION_DESCRIPTION = "mlops-lab: CSV in the input bucket -> predictions in the output bucket"
ROLE_DESCRIPTION = "Execution role of the mlops-lab batch-predict Lambda"
INVOKE_ACTION = "lambda:InvokeFunction"
INVOKE_PRINCIPAL = "s3.amazonaws.com"  # S3 invokes the function for the bucket notification


def layer_runtimes(settings: Settings) -> list[str]:
    """The runtimes the layer declares it is built for."""
    return [settings.lambda_runtime]


def function_configuration(settings: Settings, role_arn: str, layer_arn: str | None) -> dict[str, Any]:
    """The function's configuration (all but its code), as Lambda's API takes and returns it."""
    return {
        "Runtime": settings.lambda_runtime,
        "Handler": FUNCTION_HANDLER,
        "Role": role_arn,
        "MemorySize": settings.lambda_memory_mb,
        "Timeout": settings.lambda_timeout_s,
        # /tmp holds an input and its predictions at once: sized from LAB_MAX_INPUT_MB (settings.lambda_ephemeral_mb).
        "EphemeralStorage": {"Size": settings.lambda_ephemeral_mb},
        "Layers": [layer_arn] if layer_arn else [],
        "Environment": {"Variables": function_environment(settings)},
    }


def invoke_permission_statement_id(settings: Settings) -> str:
    return f"s3-invoke-{settings.input_bucket}"


def notification_configuration(function_arn: str) -> dict[str, Any]:
    # An explicit Id and a lower-case rule name: that is how S3 returns them, so a re-run can compare for equality.
    return {
        "LambdaFunctionConfigurations": [
            {
                "Id": NOTIFICATION_ID,
                "LambdaFunctionArn": function_arn,
                "Events": ["s3:ObjectCreated:*"],
                "Filter": {"Key": {"FilterRules": [{"Name": "suffix", "Value": INPUT_SUFFIX}]}},
            }
        ]
    }
