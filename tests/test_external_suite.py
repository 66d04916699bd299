"""`make test-external` (tests/external) as a user runs it: against an emulator the suite did not start.

Here that is a separate MiniStack server (the lab's emulator install, a fresh state dir, a free loopback port, IAM
enforced as the lab runs it) that the suite only reaches through the SDK's variables, run twice: with a layer, and with
the layer bundled into the function (LAB_LAMBDA_BUNDLE_LAYER=true, as for LocalStack's free image); the SDK's
``sagemaker`` client goes to the lab's SageMaker on that MiniStack (``AWS_ENDPOINT_URL_SAGEMAKER``). And the suite's
refusal of an AWS endpoint without LAB_EXTERNAL_ALLOW_AWS=1, which must come before it creates anything.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import boto3
import pytest

from mlops_lab import emulator, sagemaker, stack
from mlops_lab.layer import interpreter_target
from mlops_lab.settings import PROJECT_ROOT, Settings
from tests.external.support import ALLOW_AWS, REFUSED_EXIT_CODE, leftovers
from tests.support import free_port, lab_settings

EXTERNAL_TESTS = 6  # the tests in tests/external: each run must pass all of them
RUN_TIMEOUT_S = 420  # one run of the suite (here ~15-25 s; bounded in case the emulator hangs)
REGION = "us-east-1"
# Endpoint, region, credentials, profiles, config files (and mlflow's server, whose variable the session's mlflow
# fixtures rewrite): the inner run gets exactly the ones given, nothing inherited from this process.
INHERITED_AWAY = ("AWS_", "LAB_", "MLFLOW_TRACKING_", "PYTEST_")
PROXIES = ("HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "no_proxy", "all_proxy")


def clean_environment(tmp_path: Path, **sdk: str) -> dict[str, str]:
    """This process's environment without any SDK, lab or proxy configuration, plus ``sdk``; empty AWS config and
    credentials files, so no profile of this machine's can take part."""
    empty = tmp_path / "aws-config"
    empty.write_text("")
    env = {k: v for k, v in os.environ.items() if not k.startswith(INHERITED_AWAY) and k not in PROXIES}
    env.update({"AWS_CONFIG_FILE": str(empty), "AWS_SHARED_CREDENTIALS_FILE": str(empty), **sdk})
    return env


def run_suite(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pytest", "tests/external", "-q", "-p", "no:cacheprovider"],
        cwd=PROJECT_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )


@pytest.fixture(scope="module")
def separate_ministack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Settings]:
    """A MiniStack server of its own (not the session's stack), as the lab starts one, and the lab's SageMaker on it
    (its S3 the MiniStack's: the suite's transform job needs a SageMaker); stopped at the end."""
    settings = lab_settings(tmp_path_factory.mktemp("separate-ministack"), emulator_persist=False)
    emulator.ensure_installed(settings)
    service = emulator.service(settings)
    stack.start(settings, service)
    sagemaker_service = sagemaker.emulator_service(settings)
    try:
        stack.start(settings, sagemaker_service)
        yield settings
    finally:
        stack.stop(settings, sagemaker_service)
        stack.stop(settings, service)


@pytest.mark.parametrize("bundle_layer", [False, True], ids=["layer", "bundled-layer"])
def test_the_external_suite_passes_against_a_separate_ministack(
    separate_ministack: Settings, tmp_path: Path, bundle_layer: bool
) -> None:
    settings = separate_ministack
    # MiniStack runs Python functions on its own interpreter: the user says which (as for any emulator whose runtime
    # is not AWS's python3.12 x86_64), and the layer is built for it.
    python, platform = interpreter_target(str(emulator.EmulatorInstall(settings.emulator_venv).python))
    env = clean_environment(
        tmp_path,
        AWS_ENDPOINT_URL=settings.emulator_url,
        AWS_ENDPOINT_URL_SAGEMAKER=settings.sagemaker_emulator_url,  # the SDK's own per-service variable
        AWS_REGION=REGION,
        AWS_DEFAULT_REGION=REGION,
        AWS_ACCESS_KEY_ID="test",
        AWS_SECRET_ACCESS_KEY="test",
        LAB_STATE_DIR=str(tmp_path / "lab-state"),
        LAB_LAYER_PYTHON=python,
        LAB_LAYER_PLATFORM=platform,
        LAB_LAMBDA_BUNDLE_LAYER=str(bundle_layer).lower(),
    )
    run = run_suite(env)
    output = run.stdout + run.stderr
    assert run.returncode == 0, output[-6000:]
    assert re.search(rf"\b{EXTERNAL_TESTS} passed\b", output), output[-6000:]
    assert not re.search(r"\b\d+ (failed|errors?|skipped)\b", output), output[-6000:]
    torn_down = re.search(r"(ext-[0-9a-f]{8}): torn down by the suite's last test; nothing left", output)
    assert torn_down, output[-6000:]

    # Looked at from outside, on the server itself: nothing of that run (nor of any run: "ext-") is left.
    def client(service: str):  # type: ignore[no-untyped-def]
        return boto3.client(
            service,
            endpoint_url=settings.emulator_url,
            region_name=REGION,
            aws_access_key_id="test",
            aws_secret_access_key="test",
        )

    assert leftovers(client, "ext-") == []


def test_the_external_suite_refuses_aws_without_the_opt_in(tmp_path: Path) -> None:
    """An environment that resolves to AWS (a region, keys, no endpoint) and no LAB_EXTERNAL_ALLOW_AWS: the run stops
    before its first test, saying what it would create and how to allow it. Any request it made anyway would go to
    a proxy that is not there (and the keys are fake), so nothing can be created even if the refusal regressed."""
    dead_proxy = f"http://127.0.0.1:{free_port()}"
    env = clean_environment(
        tmp_path,
        AWS_REGION="eu-west-1",
        AWS_DEFAULT_REGION="eu-west-1",
        AWS_ACCESS_KEY_ID="AKIAEXTERNALSUITE000",
        AWS_SECRET_ACCESS_KEY="not-a-real-secret",
        HTTPS_PROXY=dead_proxy,
        HTTP_PROXY=dead_proxy,
    )
    run = run_suite(env)
    output = run.stdout + run.stderr
    assert run.returncode == REFUSED_EXIT_CODE, output[-4000:]
    assert "Refusing to run the external suite against AWS (AWS (eu-west-1))" in output, output[-4000:]
    assert f"set {ALLOW_AWS}=1 to allow it" in output
    assert "buckets (ext-" in output and "Lambda function" in output and "cents" in output
    assert "no tests ran" in output, output[-4000:]
    assert "ProxyError" not in output and "external teardown" not in output  # it asked AWS nothing
