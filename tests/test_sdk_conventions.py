"""The switch between the emulator and AWS follows the SDK's own conventions: the endpoint boto3 resolves (a profile's
endpoint_url, per-service variables) decides "emulator or AWS"; the emulator is an AWS profile; env.sh selects it and
leaves a shell's own credentials alone; MLFLOW_TRACKING_URI (with mlflow's auth variables) names the registry."""

from __future__ import annotations

import base64
import configparser
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest
from typer.testing import CliRunner

from mlops_lab import emulator, registry, services
from mlops_lab import settings as settings_module
from mlops_lab.aws import Aws, is_aws_endpoint
from mlops_lab.cli import app
from mlops_lab.settings import Settings, get_settings
from tests.support import Lab, free_port

runner = CliRunner()
ENDPOINT_VARIABLES = ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE")


@pytest.fixture
def clean_sdk(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No endpoint variables, no profile, an empty AWS config file of the test's own."""
    for name in ENDPOINT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    config = tmp_path / "config"
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-1")
    return config


def test_aws_is_told_from_the_endpoint_the_sdk_resolves(clean_sdk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    aws = Aws(boto3.session.Session())
    assert aws.on_aws and aws.endpoint_url == "https://s3.eu-west-1.amazonaws.com"
    assert aws.describe() == "AWS (eu-west-1)"
    # A per-service variable alone (no AWS_ENDPOINT_URL) is an emulator too.
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://127.0.0.1:4566")
    aws = Aws(boto3.session.Session())
    assert not aws.on_aws and aws.describe() == "emulator at http://127.0.0.1:4566 (eu-west-1)"
    assert is_aws_endpoint("https://s3.cn-north-1.amazonaws.com.cn") and not is_aws_endpoint("http://localhost:4566")


def test_a_profiles_endpoint_url_counts(clean_sdk: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AWS_DEFAULT_REGION")  # (a region variable would win over the profile's, as the SDK says)
    monkeypatch.delenv("AWS_REGION", raising=False)
    clean_sdk.write_text("[profile other]\nendpoint_url = http://127.0.0.1:9999\nregion = ap-southeast-2\n")
    aws = Aws(boto3.session.Session(profile_name="other"))
    assert not aws.on_aws and aws.region == "ap-southeast-2"
    assert aws.describe() == "emulator at http://127.0.0.1:9999 (ap-southeast-2, profile other)"


def test_aws_region_wins_over_aws_default_region_and_the_profile(
    clean_sdk: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """As the SDKs' standard says (boto3 alone reads only AWS_DEFAULT_REGION and the profile)."""
    clean_sdk.write_text("[default]\nregion = ap-southeast-2\n")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-west-2")
    monkeypatch.setenv("AWS_REGION", "eu-central-1")
    aws = Aws()
    assert aws.region == "eu-central-1" and aws.endpoint_url == "https://s3.eu-central-1.amazonaws.com"
    monkeypatch.delenv("AWS_REGION")
    assert Aws().region == "us-west-2"
    monkeypatch.delenv("AWS_DEFAULT_REGION")
    assert Aws().region == "ap-southeast-2"


def test_env_profile_writes_the_emulators_profile_and_keeps_the_rest(clean_sdk: Path) -> None:
    clean_sdk.write_text("[default]\nregion = eu-central-1\n\n[profile work]\nregion = us-west-2\n")
    settings = Settings(_env_file=None, emulator_port=4599)
    path, changed = emulator.write_profile(settings)
    assert (path, changed) == (clean_sdk, True)
    config = configparser.RawConfigParser()
    config.read(clean_sdk)
    assert config.get("default", "region") == "eu-central-1" and config.get("profile work", "region") == "us-west-2"
    assert dict(config.items("profile mlops-lab")) == {
        "endpoint_url": "http://127.0.0.1:4599",
        "region": "eu-west-1",
        "aws_access_key_id": "test",
        "aws_secret_access_key": "test",
        "services": "mlops-lab",
    }
    assert "services mlops-lab" in config.sections()
    assert emulator.write_profile(settings) == (clean_sdk, False)  # nothing to change the second time
    exports = services.env_exports(settings)
    assert "export AWS_PROFILE=mlops-lab\n" in exports
    assert "AWS_ACCESS_KEY_ID" not in exports and "AWS_ENDPOINT_URL" not in exports  # a shell's own keys stay


def test_the_profile_reaches_the_running_emulator(
    lab_stack: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """What env.sh does, as the AWS CLI or a notebook would: choose the profile, nothing else."""
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "config"))
    get_settings.cache_clear()
    result = runner.invoke(
        app,
        ["env", "--profile"],
        env={"LAB_EMULATOR_PORT": str(lab_stack.settings.emulator_port), "AWS_CONFIG_FILE": str(tmp_path / "config")},
    )
    get_settings.cache_clear()
    assert result.exit_code == 0 and result.stdout.endswith("export AWS_PROFILE=mlops-lab\n"), result.output
    for name in ("AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        monkeypatch.delenv(name, raising=False)
    aws = Aws(boto3.session.Session(profile_name="mlops-lab"))
    assert not aws.on_aws and aws.endpoint_url == lab_stack.settings.emulator_url
    buckets = {b["Name"] for b in aws.client("s3").list_buckets()["Buckets"]}
    assert lab_stack.settings.input_bucket in buckets


class _AuthHealth(http.server.BaseHTTPRequestHandler):
    """/health that answers 200 only with the right basic-auth header (as a tracking server behind auth does)."""

    expected = "Basic " + base64.b64encode(b"ada:s3cret").decode()

    def do_GET(self) -> None:
        ok = self.path == "/health" and self.headers.get("Authorization") == self.expected
        self.send_response(200 if ok else 401)
        self.end_headers()

    def log_message(self, *_: object) -> None:
        pass


@pytest.fixture
def auth_server() -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", free_port()), _AuthHealth)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join(timeout=5)


def test_mlflow_tracking_uri_and_its_auth_are_honoured(auth_server: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """The user's MLFLOW_TRACKING_URI, as the process started with it: mlflow.set_tracking_uri() rewrites the variable
    whenever the lab talks to a server (here, as in any session that used mlflow before), and that is not a choice."""
    settings = Settings(_env_file=None)
    monkeypatch.setattr(settings_module, "USER_TRACKING_URI", None)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:1")  # what set_tracking_uri leaves behind
    assert settings.mlflow_tracking_uri == settings.mlflow_server_url and not settings.mlflow_external
    monkeypatch.setattr(settings_module, "USER_TRACKING_URI", auth_server)
    assert settings.mlflow_tracking_uri == auth_server and settings.mlflow_external
    assert not registry.server_reachable(settings)  # no credentials: 401
    monkeypatch.setenv("MLFLOW_TRACKING_USERNAME", "ada")
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "s3cret")
    assert registry.server_reachable(settings)
