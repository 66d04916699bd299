"""The one place that knows which AWS emulator runs underneath: MiniStack, in its own virtualenv.

Everything else reaches AWS through the SDK's standard configuration (``AWS_ENDPOINT_URL`` and friends). What only an
emulator has lives here: installing it, its command, start-up environment and health path (as a ``stack.Service``),
the SDK variables that point at it, and which interpreter its Lambda functions run on.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import boto3

from mlops_lab.aws import DEFAULT_REGION, Aws
from mlops_lab.settings import PROJECT_ROOT, Settings
from mlops_lab.stack import Service

REQUIREMENTS = PROJECT_ROOT / "localstack" / "requirements-ministack.txt"
HEALTH_PATH = "/_ministack/health"
SERVICE_NAME = "emulator"


@dataclass(frozen=True)
class EmulatorInstall:
    venv: Path

    @property
    def python(self) -> Path:
        return self.venv / "bin" / "python"

    @property
    def server(self) -> Path:
        return self.venv / "bin" / "ministack"


def find_python(preferred: str | None = None) -> str:
    """The interpreter for the emulator's venv.

    MiniStack runs every Python function on its own interpreter, so a 3.12 here means the embedded Lambda runs the
    very layer built for AWS's python3.12 runtime. Where no 3.12 exists, the project's interpreter serves and the
    layer is built for it instead.
    """
    if preferred:
        return preferred
    candidates = [shutil.which("python3.12")]
    pyenv_root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    candidates += sorted((pyenv_root / "versions").glob("3.12*/bin/python3.12"), reverse=True)
    candidates += [Path("/usr/bin/python3.12"), Path("/usr/local/bin/python3.12")]
    for candidate in candidates:
        if candidate and _runs(str(candidate)):
            return str(candidate)
    return sys.executable


def _runs(python: str) -> bool:
    try:
        return subprocess.run([python, "-c", "import venv, ensurepip"], capture_output=True, timeout=20).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def ensure_installed(settings: Settings) -> EmulatorInstall:
    """Create (or refresh, when the pinned requirements change) the emulator's own virtualenv."""
    install = EmulatorInstall(settings.emulator_venv)
    stamp = install.venv / ".requirements.sha256"
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if install.server.exists() and stamp.exists() and stamp.read_text() == wanted:
        return install
    python = find_python(settings.emulator_python)
    if install.venv.exists():
        shutil.rmtree(install.venv)
    subprocess.run([python, "-m", "venv", str(install.venv)], check=True)
    result = subprocess.run(
        [
            str(install.python),
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "-r",
            str(REQUIREMENTS),
        ],
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise RuntimeError(f"installing the emulator into {install.venv} failed:\n{result.stderr[-3000:]}")
    stamp.write_text(wanted)
    return install


@dataclass(frozen=True)
class StateDirs:
    """Where MiniStack keeps what it persists. S3 objects are written as they arrive; every other service's state
    (IAM, Lambda, SQS, ECR, bucket settings such as the notification) only when it stops on SIGTERM, so after a
    crash those come back as they were at the last clean stop, and bootstrap repairs the rest."""

    services: Path
    s3: Path

    @property
    def all(self) -> tuple[Path, Path]:
        return (self.services, self.s3)


def state_dirs(settings: Settings) -> StateDirs:
    root = settings.state_dir / "emulator"
    return StateDirs(services=root / "state", s3=root / "s3")


def service(settings: Settings) -> Service:
    """MiniStack as a supervised process: its own venv's server, on the configured loopback port."""
    install = EmulatorInstall(settings.emulator_venv)
    tmp_dir = settings.state_dir / "emulator" / "tmp"
    return Service(
        name=SERVICE_NAME,
        command=[str(install.server)],
        health_url=settings.emulator_url + HEALTH_PATH,
        env=_server_environment(settings, tmp_dir),
        description=f"MiniStack (S3, IAM, Lambda, ECR){' with IAM enforced' if settings.emulator_auth else ''}",
        url=settings.emulator_url,
        cleanup=(tmp_dir,),
    )


def _server_environment(settings: Settings, tmp_dir: Path) -> dict[str, str]:
    """MiniStack's environment. Lambda workers inherit all of it, so it is built from scratch, not from ours."""
    keep = {"PATH", "HOME", "LANG", "LC_ALL", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE"}
    env = {key: value for key, value in os.environ.items() if key in keep}
    env.update(
        {
            "GATEWAY_PORT": str(settings.emulator_port),
            "BIND_HOST": settings.emulator_host,
            "MINISTACK_HOST": settings.emulator_host,
            # Its other listeners: the IoT mTLS one ignores BIND_HOST, so it stays off; SFTP/DSQL start only on use.
            "IOT_MTLS_ENABLED": "0",
            "SFTP_ENABLED": "0",
            "AUTH": "true" if settings.emulator_auth else "false",
            # Workers, their extracted code and layers live here; `down` deletes it (MiniStack can leave them behind).
            "TMPDIR": str(tmp_dir),
            # Handlers reach the emulator itself (an inherited endpoint pointing elsewhere would win otherwise).
            "AWS_ENDPOINT_URL": settings.emulator_url,
            # As AWS limits an account's concurrent executions; MiniStack's own default scales with memory (~585 here).
            "LAMBDA_ACCOUNT_CONCURRENCY": str(settings.emulator_lambda_concurrency),
            "LAMBDA_ASYNC_RETRY_BASE_SECONDS": str(settings.emulator_async_retry_base_s),
            "LOG_LEVEL": "INFO",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if settings.emulator_persist:
        dirs = state_dirs(settings)
        env.update(
            {"PERSIST_STATE": "1", "STATE_DIR": str(dirs.services), "S3_PERSIST": "1", "S3_DATA_DIR": str(dirs.s3)}
        )
    return env


def sdk_environment(settings: Settings) -> dict[str, str]:
    """The SDK variables that point the lab's scripts at the embedded emulator (its dummy credentials: it is local)."""
    return {
        "AWS_ENDPOINT_URL": settings.emulator_url,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_DEFAULT_REGION": os.environ.get("AWS_REGION") or os.environ.get("AWS_DEFAULT_REGION") or DEFAULT_REGION,
    }


def aws(settings: Settings) -> Aws:
    """An AWS session on this checkout's embedded emulator, whatever this process's SDK configuration says."""
    environment = sdk_environment(settings)
    session = boto3.session.Session(
        aws_access_key_id=environment["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=environment["AWS_SECRET_ACCESS_KEY"],
        region_name=environment["AWS_DEFAULT_REGION"],
    )
    return Aws(session, endpoint_url=settings.emulator_url)


PROFILE = "mlops-lab"  # the AWS profile that points at the embedded emulator (`mlops-lab env --profile`)


def profile_settings(settings: Settings) -> dict[str, str]:
    """The emulator as an AWS profile: endpoint, region and its dummy credentials (the AWS CLI and SDKs read these
    from ``[profile mlops-lab]`` in the AWS config file)."""
    environment = sdk_environment(settings)
    return {
        "endpoint_url": environment["AWS_ENDPOINT_URL"],
        "region": environment["AWS_DEFAULT_REGION"],
        "aws_access_key_id": environment["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": environment["AWS_SECRET_ACCESS_KEY"],
    }


def aws_config_file() -> Path:
    return Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()


def write_profile(settings: Settings, name: str = PROFILE) -> tuple[Path, bool]:
    """Add or refresh ``[profile <name>]`` in the AWS config file, leaving every other section as it is; (the file,
    whether it changed)."""
    import configparser

    path = aws_config_file()
    config = configparser.RawConfigParser()
    config.read(path)
    section = f"profile {name}"
    wanted = profile_settings(settings)
    if config.has_section(section) and dict(config.items(section)) == wanted:
        return path, False
    if not config.has_section(section):
        config.add_section(section)
    for key in list(config.options(section)):
        config.remove_option(section, key)
    for key, value in wanted.items():
        config.set(section, key, value)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as handle:
        config.write(handle)
    return path, True


def lambda_python(settings: Settings, aws: Aws) -> Path | None:
    """The interpreter Lambda functions run on when ``aws`` points at this checkout's embedded emulator (MiniStack
    runs them on its own), else None: then they run on AWS's runtime (or a container's), not on anything here."""
    install = EmulatorInstall(settings.emulator_venv)
    pointed_here = aws.endpoint_url.rstrip("/") == settings.emulator_url
    return install.python if pointed_here and install.python.exists() else None


def is_lambda_worker(cmdline: bytes) -> bool:
    """Is this process (its /proc/<pid>/cmdline) one of MiniStack's Lambda workers (the bench samples their memory)?"""
    return b"_worker.py" in cmdline
