"""Ready hook (ready.d convention: MiniStack, LocalStack and Floci run it once the gateway answers).

Creates the lab's three buckets if they are missing, so the mlflow server's artifact destination
(s3://<prefix>-model/mlflow) exists as soon as the emulator is healthy. Everything else (role, layer, function,
notification, model) is the bootstrap one-shot's job (`mlops-lab bootstrap`, idempotent; it also creates these
buckets when this hook did not run). Uses boto3 only: MiniStack's environment and LocalStack's both have it.
LocalStack runs .py hooks inside its own interpreter, so this file does its work at import, with no sys.exit().
"""

import os

import boto3
from botocore.exceptions import ClientError

_prefix = os.environ.get("LAB_PREFIX", "mlops-lab")
_region = os.environ.get("AWS_DEFAULT_REGION") or os.environ.get("AWS_REGION") or "us-east-1"
_s3 = boto3.client(
    "s3",
    endpoint_url=os.environ.get("AWS_ENDPOINT_URL") or f"http://127.0.0.1:{os.environ.get('GATEWAY_PORT', '4566')}",
    region_name=_region,
    aws_access_key_id=os.environ.get("AWS_ACCESS_KEY_ID") or "test",
    aws_secret_access_key=os.environ.get("AWS_SECRET_ACCESS_KEY") or "test",
)
for _bucket in (f"{_prefix}-input", f"{_prefix}-output", f"{_prefix}-model"):
    try:
        _s3.head_bucket(Bucket=_bucket)
        print(f"lab hook: bucket {_bucket} exists")
    except ClientError:
        _kwargs = {"Bucket": _bucket}
        if _region != "us-east-1":
            _kwargs["CreateBucketConfiguration"] = {"LocationConstraint": _region}
        _s3.create_bucket(**_kwargs)
        print(f"lab hook: created bucket {_bucket}")
