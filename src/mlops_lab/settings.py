"""The lab's one settings object.

Everything the lab names or sizes comes from here (environment variables prefixed ``LAB_``, or a ``.env`` file).
How to reach AWS is deliberately *not* here: boto3 resolves it from the SDK's own configuration (``AWS_PROFILE``
and its ``endpoint_url``, ``AWS_ENDPOINT_URL[_<SERVICE>]``, ``AWS_REGION``/``AWS_DEFAULT_REGION``, credentials), so
choosing a profile is the whole switch between the emulator (profile ``mlops-lab``) and an AWS account.

Why this is one module of some 500 lines: the one ``Settings`` class is the one list of settings, with the checks
that tie them together (the function's /tmp and its input limit); docs/configuration.md is generated from it.
"""

from __future__ import annotations

import hashlib
import json
import os
import platform
import re
import sys
from functools import lru_cache
from pathlib import Path
from typing import Annotated

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parents[2]
# mlflow's own variable as this process found it: mlflow.set_tracking_uri() rewrites MLFLOW_TRACKING_URI (for its
# subprocesses) whenever the lab talks to a tracking server, so the user's choice is read once, here.
USER_TRACKING_URI = os.environ.get("MLFLOW_TRACKING_URI") or None

# Every AWS resource the lab creates (and its registered models and experiments) carries this tag with the prefix as
# its value: teardown's check finds anything left by it (the tagging API). LAB_TAGS adds the user's own.
PREFIX_TAG = "mlops-lab:prefix"
# What every service the lab tags accepts (S3, IAM, Lambda, SQS, ECR, CloudWatch Logs, SageMaker): 50 tags, keys up to
# 128 characters and values up to 256 of these, no key under the reserved ``aws:``.
MAX_TAGS = 50
LOG_RETENTION_DAYS = (
    1,
    3,
    5,
    7,
    14,
    30,
    60,
    90,
    120,
    150,
    180,
    365,
    400,
    545,
    731,
    1096,
    1827,
    2192,
    2557,
    2922,
    3288,
    3653,
)
_TAG_TEXT = re.compile(r"^[\w\s.:/=+\-@]*$")

# The function's /tmp (its ephemeral storage) holds the input and its predictions at once. The predictions are the
# input's rows plus a prediction and probability columns: for rows of the lab's model's width that is well under
# twice the input, so /tmp is sized for the largest input allowed and twice that again, plus room to spare. The
# handler bounds each file's own output before scoring it and refuses one that could not fit.
TMP_OUTPUT_FACTOR = 2
TMP_SPARE_MB = 64
EPHEMERAL_MIN_MB, EPHEMERAL_MAX_MB = 512, 10240  # what Lambda allows (512: its default)

# The longest endpoint name mlflow keeps whole in "<endpoint>-config-<20 hex>" (SageMaker's 63 characters; mlflow
# middle-truncates the endpoint's part beyond this: mlops_lab.sagemaker.delete.mlflow_base_name).
SAGEMAKER_WHOLE_NAME = 63 - len("-config-") - 20


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="LAB_", env_file=".env", extra="ignore")

    prefix: str = Field(
        "mlops-lab",
        pattern=r"^[a-z0-9][a-z0-9-]{1,40}[a-z0-9]$",
        description="The start of every AWS resource name the lab creates (`<prefix>-input`, `<prefix>-batch-predict`, "
        "...) and the value of its `mlops-lab:prefix` tag. Bucket names are global: choose your own on AWS.",
    )
    tags: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description="Your own tags on every resource, beside `mlops-lab:prefix`: `team=ml,cost-center=1234` or a JSON "
        "object.",
    )

    state_dir: Path = Field(
        PROJECT_ROOT / ".lab",
        description="Where the embedded stack keeps its state (the emulator's, mlflow's), logs and pid files.",
    )
    # Installs and builds shared by every stack on this checkout (tests run their own stacks in temp state dirs).
    emulator_venv: Path = Field(
        PROJECT_ROOT / ".lab" / "emulator-venv", description="The emulator's own virtualenv (MiniStack)."
    )
    build_dir: Path = Field(PROJECT_ROOT / ".lab" / "build", description="Where the layer zips are built.")

    # Embedded emulator (MiniStack), run as a server from its own virtualenv.
    emulator_host: str = Field("127.0.0.1", description="The address the embedded emulator listens on.")
    emulator_port: int = Field(4566, description="The embedded emulator's port (the `mlops-lab` profile's endpoint).")
    emulator_python: str | None = Field(
        None,
        description="The interpreter for the emulator's venv; default: a Python 3.12 if one is installed (on `PATH`, "
        "under pyenv), else this one.",
    )
    emulator_auth: bool = Field(True, description="Enforce IAM in the emulator, as AWS does.")
    emulator_persist: bool = Field(
        True,
        description="Keep buckets, objects, IAM, Lambda, SQS... under `<state dir>/emulator` across `down`/`up` "
        "(`mlops-lab reset` wipes them).",
    )
    # Lambda executions the emulator runs at once, account-wide: AWS's limit for a new account. MiniStack has no cap of
    # its own that fits a laptop (one ~100 MB worker per concurrent invocation); above it invocations are throttled
    # as on AWS, and throttled events that run out of retries land in the failure queue.
    emulator_lambda_concurrency: int = Field(
        10,
        ge=1,
        le=1000,
        description="Lambda executions the emulator runs at once (a new AWS account's limit); above it invocations are "
        "throttled.",
    )
    # Wait before the emulator's first retry of a failed or throttled event (then twice that). AWS waits about a
    # minute and keeps retrying throttled events for hours; MiniStack's 1 s lets a burst of 50 uploads on 10 slots
    # exhaust its retries while the first workers are still starting.
    emulator_async_retry_base_s: float = Field(
        5.0,
        ge=0.1,
        le=60,
        description="Seconds before the emulator retries a failed or throttled event (twice that before the second "
        "retry).",
    )

    # The batch-predict Lambda.
    lambda_runtime: str = Field("python3.12", description="The function's Lambda runtime.")
    lambda_memory_mb: int = Field(1024, ge=128, le=10240, description="The function's memory, in MB.")
    lambda_timeout_s: int = Field(300, ge=1, le=900, description="The function's timeout, in seconds.")
    # Unzipped limits are the same either way (250 MB).
    lambda_bundle_layer: bool = Field(
        False,
        description="Put the layer's files into the function's own code zip instead of attaching a layer: for "
        "emulators that accept layers but do not apply them at run time (LocalStack's free 4.14.0).",
    )
    # S3 invokes the function asynchronously: after this many retries (AWS allows 0-2), or once an event is this old,
    # the event goes to the failure queue (`mlops-lab failures`, `mlops-lab redrive`).
    lambda_retry_attempts: int = Field(
        2, ge=0, le=2, description="Retries of an event the function failed on before it goes to the failure queue."
    )
    lambda_max_event_age_s: int = Field(
        3600, ge=60, le=21600, description="Seconds after which an event not yet processed goes to the failure queue."
    )
    # CloudWatch keeps logs forever, billed, unless told otherwise.
    log_retention_days: int = Field(
        30,
        description="Days the function's log group keeps its logs: one of the periods CloudWatch Logs takes (1, 3, 5, "
        "7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653).",
    )
    max_input_mb: int = Field(
        512,
        ge=1,
        description="Uploads larger than this (MB) get an error report instead of predictions. The function's /tmp "
        "is sized for it (`LAB_LAMBDA_EPHEMERAL_STORAGE_MB`): at most 3392.",
    )
    lambda_ephemeral_storage_mb: int | None = Field(
        None,
        ge=EPHEMERAL_MIN_MB,
        le=EPHEMERAL_MAX_MB,
        description="The function's /tmp (ephemeral storage), in MB: it holds an input and its predictions at once. "
        "Default: sized from `LAB_MAX_INPUT_MB` (3 x it + 64, at least 512); a smaller value is refused.",
    )
    chunk_rows: int = Field(
        8192, ge=1, description="Rows the function reads and scores at a time (its memory stays bounded)."
    )
    chunk_mb: int = Field(
        8,
        ge=1,
        le=1024,
        description="A chunk also ends once its rows reach this much text (MB), so a file of very wide rows cannot "
        "fill the function's memory `LAB_CHUNK_ROWS` at a time.",
    )

    # Layer build target for real AWS (and for an emulator in a container, whose interpreter is not ours to run).
    # Empty means this interpreter's X.Y / this machine's architecture: what compose's bootstrap container sets,
    # since it is built from the same base image as the emulator's.
    layer_python: str = Field(
        "3.12", description="The Python (`X.Y`) the layer is built for; empty: the one running `mlops-lab`."
    )
    layer_platform: str = Field(
        "manylinux_2_28_x86_64",
        description="The wheel platform the layer is built for; empty: `manylinux_2_28_<this machine>`.",
    )

    # The model the Lambda and API serve, as published in the model bucket.
    model_key: str = Field(
        "models/income-classifier/model.onnx",
        description="The live model's key in the model bucket: what the Lambda and the API read.",
    )
    model_name: str = Field(
        "income-classifier",
        description="The demo model's registered name: what `train` registers, and the default of `--name` when no "
        "model is live.",
    )

    # The online API (mlops_lab.api): `python -m mlops_lab.api`, or the image (which sets host 0.0.0.0, port 8080).
    api_host: str = Field("127.0.0.1", description="The address the API listens on.")
    api_port: int = Field(8000, ge=1, le=65535, description="The API's port.")
    api_key: str | None = Field(
        None,
        description="When set, `/predict`, `/invocations` and `/metadata` need header `X-API-Key: <key>` (or "
        "`Authorization: Bearer <key>`), else 401.",
    )
    api_max_body_bytes: int = Field(1_048_576, ge=1, description="Larger request bodies get 413.")
    api_max_rows: int = Field(1000, ge=1, description="More rows in one request get 413.")
    api_model_source: str = Field(
        "s3",
        description="What the API serves: `s3` (`s3://<prefix>-model/<model key>`, what bootstrap and `promote` "
        "publish), an `s3://bucket/key`, a file path, or the registry (`models:/<name>@<alias>`, "
        "`models:/<name>/<version>`).",
    )
    api_model_poll_s: float = Field(
        10.0, ge=0, description="Seconds between the API's looks for a newly published model; 0: never."
    )
    api_access_log: bool = Field(True, description="One JSON line per request on stderr.")

    # The lab console (mlops_lab.console): a web page on the lab for people; `up` starts it, compose runs it.
    console_host: str = Field("127.0.0.1", description="The address the lab console listens on.")
    console_port: int = Field(8001, ge=1, le=65535, description="The lab console's port.")
    # A person's browser may reach mlflow and the API elsewhere than the lab does (compose: the host's published
    # ports, not the containers' names).
    console_mlflow_link: str | None = Field(
        None, description="The console's link to mlflow's UI; default: the tracking URI."
    )
    console_api_link: str | None = Field(
        None, description="The console's link to the API (its `/docs`); default: the API's URL."
    )
    # What the guard of the emulator, mlflow and the API (mlops_lab.guard, docs/using.md) accepts in `Host`.
    allowed_hosts: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Host names the emulator, mlflow and the API answer besides loopback names (`127.0.0.1`, "
        "`localhost`, `[::1]`), comma-separated (compose sets each service's own name); `*`: any (the API image on "
        "EC2 or SageMaker). Any other `Host` gets 400 (DNS rebinding).",
    )

    # The mlflow tracking server (mlops_lab.registry): runs, registry, promotion. Artifacts go through the server into
    # s3://{model_bucket}/{mlflow_artifacts_prefix} (served artifacts: clients need no S3 credentials).
    mlflow_host: str = Field("127.0.0.1", description="The address the embedded mlflow tracking server listens on.")
    mlflow_port: int = Field(5000, ge=1, le=65535, description="The embedded mlflow tracking server's port.")
    mlflow_backend_uri: str | None = Field(
        None,
        description="mlflow's database, any SQLAlchemy URI (`postgresql+psycopg://user:pw@host/mlflow`); default: "
        "sqlite in `<state dir>/mlflow/mlflow.db`.",
    )
    mlflow_artifacts_prefix: str = Field(
        "mlflow", description="Where mlflow's artifacts go in the model bucket: `s3://<prefix>-model/<this>/`."
    )
    mlflow_experiment: str = Field("income-classifier", description="The experiment `train` logs its runs to.")
    # SageMaker through mlflow's deployments client. Offline the control plane is moto (MiniStack has no SageMaker).
    sagemaker_emulator_port: int = Field(
        5005,
        ge=1,
        le=65535,
        description="The port of the lab's SageMaker (endpoints, invoke_endpoint, Batch Transform; `up` starts it).",
    )
    sagemaker_endpoint_name: str | None = Field(
        None, description="The SageMaker endpoint; default: `<prefix>-endpoint`."
    )

    @field_validator("tags", mode="before")
    @classmethod
    def _parse_tags(cls, value: object) -> object:
        if not isinstance(value, str):
            return value
        text = value.strip()
        if text.startswith("{"):
            return json.loads(text)
        pairs = [item.partition("=") for item in text.split(",") if item.strip()]
        if any(not sep for _, sep, _ in pairs):
            raise ValueError(f"LAB_TAGS={value!r}: write key=value pairs separated by commas, or a JSON object")
        return {key.strip(): tag.strip() for key, _, tag in pairs}

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _parse_hosts(cls, value: object) -> object:
        if isinstance(value, str):
            return [name.strip() for name in value.split(",") if name.strip()]
        return value

    @field_validator("tags")
    @classmethod
    def _valid_tags(cls, tags: dict[str, str]) -> dict[str, str]:
        for key, value in tags.items():
            if key == PREFIX_TAG or key.lower().startswith("aws:"):
                raise ValueError(f"tag {key!r} is reserved (the lab sets {PREFIX_TAG}; AWS reserves aws:)")
            if not 1 <= len(key) <= 128 or len(value) > 256 or not _TAG_TEXT.match(key + value):
                raise ValueError(
                    f"tag {key}={value!r}: keys 1-128 and values 0-256 characters of letters, digits, spaces "
                    "and _ . : / = + - @"
                )
        # Room for mlops-lab:prefix and the one tag mlflow's SageMaker client adds (model_uri, or app_name).
        if len(tags) > MAX_TAGS - 2:
            raise ValueError(f"{len(tags)} tags in LAB_TAGS: at most {MAX_TAGS - 2} beside the lab's own")
        return tags

    @field_validator("state_dir", "emulator_venv", "build_dir")
    @classmethod
    def _home_expanded(cls, path: Path) -> Path:
        """``~`` means the home folder, as in a shell: never a folder named ``~`` under the current one."""
        return path.expanduser()

    @field_validator("emulator_python")
    @classmethod
    def _home_expanded_text(cls, value: str | None) -> str | None:
        return os.path.expanduser(value) if value else value

    @model_validator(mode="after")
    def _tmp_holds_input_and_output(self) -> Settings:
        needed = self.tmp_needed_mb
        if needed > EPHEMERAL_MAX_MB:
            largest = (EPHEMERAL_MAX_MB - TMP_SPARE_MB) // (1 + TMP_OUTPUT_FACTOR)
            raise ValueError(
                f"LAB_MAX_INPUT_MB={self.max_input_mb}: an input that large and its predictions need {needed} MB of "
                f"the function's /tmp, more than Lambda's {EPHEMERAL_MAX_MB} MB: at most {largest}"
            )
        if self.lambda_ephemeral_storage_mb is not None and self.lambda_ephemeral_storage_mb < needed:
            raise ValueError(
                f"LAB_LAMBDA_EPHEMERAL_STORAGE_MB={self.lambda_ephemeral_storage_mb}: an input of "
                f"LAB_MAX_INPUT_MB={self.max_input_mb} and its predictions need {needed} MB of /tmp; raise it, lower "
                "LAB_MAX_INPUT_MB, or unset it (sized from LAB_MAX_INPUT_MB)"
            )
        return self

    @property
    def tmp_needed_mb(self) -> int:
        """The /tmp the function needs for the largest input and its predictions (see TMP_OUTPUT_FACTOR)."""
        return self.max_input_mb * (1 + TMP_OUTPUT_FACTOR) + TMP_SPARE_MB

    @property
    def lambda_ephemeral_mb(self) -> int:
        """The function's ephemeral storage (/tmp), as bootstrap configures it."""
        return self.lambda_ephemeral_storage_mb or max(EPHEMERAL_MIN_MB, self.tmp_needed_mb)

    @property
    def resource_tags(self) -> dict[str, str]:
        """The tags every resource the lab creates carries."""
        return {PREFIX_TAG: self.prefix, **self.tags}

    @field_validator("log_retention_days")
    @classmethod
    def _retention_cloudwatch_takes(cls, days: int) -> int:
        if days not in LOG_RETENTION_DAYS:
            raise ValueError(f"CloudWatch Logs keeps logs for one of {', '.join(map(str, LOG_RETENTION_DAYS))} days")
        return days

    @field_validator("layer_python")
    @classmethod
    def _this_python_when_empty(cls, value: str) -> str:
        return value or "{}.{}".format(*sys.version_info[:2])

    @field_validator("layer_platform")
    @classmethod
    def _this_machine_when_empty(cls, value: str) -> str:
        return value or f"manylinux_2_28_{platform.machine()}"

    @property
    def input_bucket(self) -> str:
        return f"{self.prefix}-input"

    @property
    def output_bucket(self) -> str:
        return f"{self.prefix}-output"

    @property
    def model_bucket(self) -> str:
        return f"{self.prefix}-model"

    @property
    def buckets(self) -> tuple[str, str, str]:
        return (self.input_bucket, self.output_bucket, self.model_bucket)

    @property
    def log_group(self) -> str:
        """The function's CloudWatch Logs group (bootstrap creates it, with retention and tags, before Lambda would)."""
        return f"/aws/lambda/{self.function_name}"

    @property
    def function_name(self) -> str:
        return f"{self.prefix}-batch-predict"

    @property
    def role_name(self) -> str:
        return f"{self.prefix}-batch-predict-role"

    @property
    def failure_queue_name(self) -> str:
        """The SQS queue that receives the events the function failed on (its on-failure destination)."""
        return f"{self.prefix}-batch-predict-failures"

    @property
    def layer_name(self) -> str:
        return f"{self.prefix}-onnxruntime"

    @property
    def emulator_url(self) -> str:
        return f"http://{self.emulator_host}:{self.emulator_port}"

    @property
    def model_path(self) -> Path:
        """Where `train` writes the ONNX model before publishing it."""
        return self.state_dir / "models" / "model.onnx"

    @property
    def mlflow_server_url(self) -> str:
        """The embedded mlflow tracking server this lab runs (`up`)."""
        return f"http://{self.mlflow_host}:{self.mlflow_port}"

    @property
    def mlflow_tracking_uri(self) -> str:
        """Where the lab's registry is: ``MLFLOW_TRACKING_URI`` when set (mlflow's own variable; https and its
        MLFLOW_TRACKING_USERNAME/PASSWORD/TOKEN auth included), else the embedded server."""
        return USER_TRACKING_URI or self.mlflow_server_url

    @property
    def mlflow_external(self) -> bool:
        """Is the registry a tracking server of the user's own (so `up` starts none)?"""
        return self.mlflow_tracking_uri.rstrip("/") != self.mlflow_server_url

    @property
    def mlflow_backend_store_uri(self) -> str:
        return self.mlflow_backend_uri or f"sqlite:///{self.state_dir / 'mlflow' / 'mlflow.db'}"

    @property
    def mlflow_artifacts_destination(self) -> str:
        return f"s3://{self.model_bucket}/{self.mlflow_artifacts_prefix.strip('/')}"

    @property
    def api_url(self) -> str:
        return f"http://{self.api_host}:{self.api_port}"

    @property
    def console_url(self) -> str:
        return f"http://{self.console_host}:{self.console_port}"

    @property
    def api_repository(self) -> str:
        """The ECR repository of the API's image (`mlops-lab image push`)."""
        return f"{self.prefix}-api"

    @property
    def sagemaker_endpoint(self) -> str:
        """``<prefix>-endpoint``; a long prefix is cut and given a hash of itself, so that the name stays whole in the
        names mlflow gives the endpoint's models and configs (it middle-truncates longer ones, and two long prefixes
        could then share them: one lab's teardown would find the other's)."""
        if self.sagemaker_endpoint_name:
            return self.sagemaker_endpoint_name
        name = f"{self.prefix}-endpoint"
        if len(name) <= SAGEMAKER_WHOLE_NAME:
            return name
        digest = hashlib.sha256(self.prefix.encode()).hexdigest()[:8]
        head = self.prefix[: SAGEMAKER_WHOLE_NAME - len(f"--{digest}-endpoint") + 1].rstrip("-")
        return f"{head}-{digest}-endpoint"

    @property
    def sagemaker_repository(self) -> str:
        """The ECR repository mlflow's SageMaker client takes its serving image from."""
        return f"{self.prefix}-mlflow-pyfunc"

    @property
    def sagemaker_role_name(self) -> str:
        return f"{self.prefix}-sagemaker-role"

    @property
    def sagemaker_log_group(self) -> str:
        """Where a SageMaker endpoint's containers log on AWS (SageMaker makes it; teardown deletes it)."""
        return f"/aws/sagemaker/Endpoints/{self.sagemaker_endpoint}"

    @property
    def sagemaker_emulator_url(self) -> str:
        return f"http://{self.emulator_host}:{self.sagemaker_emulator_port}"


def as_environment(settings: Settings) -> dict[str, str]:
    """These settings as the ``LAB_*`` variables a child process (the API, the console) reads them back from."""
    return {
        f"LAB_{name.upper()}": _as_variable(value) for name, value in settings.model_dump().items() if value is not None
    }


def _as_variable(value: object) -> str:
    if isinstance(value, dict):
        return json.dumps(value)
    if isinstance(value, list):  # comma-separated, as a person writes them (allowed_hosts)
        return ",".join(map(str, value))
    return str(value)


@lru_cache
def get_settings() -> Settings:
    return Settings()
