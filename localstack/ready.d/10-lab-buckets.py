"""Ready hook (ready.d convention: MiniStack, LocalStack and Floci run it once the gateway answers).

Creates the lab's three buckets if they are missing, so the mlflow server's artifact destination
(s3://<prefix>-model/mlflow) exists as soon as the emulator is healthy, and tags them as the lab's
(``mlops-lab:prefix=<prefix>``: bootstrap takes over only what carries it, mlops_lab.ownership); this emulator is the
lab's own, so buckets of its names here are the lab's. Everything else (role, layer, function,
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
_PREFIX_TAG = "mlops-lab:prefix"  # mlops_lab.settings.PREFIX_TAG (this file runs where the lab's package is not)
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
    try:
        _tags = {t["Key"]: t["Value"] for t in _s3.get_bucket_tagging(Bucket=_bucket)["TagSet"]}
    except ClientError:  # NoSuchTagSet
        _tags = {}
    if _tags.get(_PREFIX_TAG) != _prefix:  # S3 replaces the whole set: keep the others
        _tags[_PREFIX_TAG] = _prefix
        _s3.put_bucket_tagging(Bucket=_bucket, Tagging={"TagSet": [{"Key": k, "Value": v} for k, v in _tags.items()]})
