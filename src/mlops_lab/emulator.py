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
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import boto3

from mlops_lab import guard
from mlops_lab.aws import DEFAULT_REGION, Aws
from mlops_lab.settings import PROJECT_ROOT, Settings
from mlops_lab.stack import Service

REQUIREMENTS = PROJECT_ROOT / "localstack" / "requirements-ministack.txt"
HEALTH_PATH = "/_ministack/health"
SERVICE_NAME = "emulator"
# MiniStack's launcher with the lab's guard (src/mlops_lab/guard.py): a file the emulator's venv runs, since it cannot
# import mlops_lab. docs/using.md says what it refuses.
GUARD_FILE = Path(guard.__file__).resolve()


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


VENV_MARKER = ".mlops-lab-venv"  # in a venv the lab made: only such a folder is ever deleted to rebuild it
REQUIREMENTS_STAMP = ".requirements.sha256"  # what it was installed from (an older lab's venvs carry only this)


def ensure_installed(settings: Settings) -> EmulatorInstall:
    """Create (or refresh, when the pinned requirements change) the emulator's own virtualenv.

    A rebuild deletes the old venv only if the lab made it (its marker, or the requirements stamp older labs wrote):
    a LAB_EMULATOR_VENV that points at any other folder is refused (stack.NotTheLabs), and nothing is deleted."""
    from mlops_lab.stack import remove_tree

    install = EmulatorInstall(settings.emulator_venv)
    stamp = install.venv / REQUIREMENTS_STAMP
    wanted = hashlib.sha256(REQUIREMENTS.read_bytes()).hexdigest()
    if install.server.exists() and stamp.exists() and stamp.read_text() == wanted:
        return install
    python = find_python(settings.emulator_python)
    if install.venv.exists():
        remove_tree(install.venv, owner=install.venv, markers=(VENV_MARKER, REQUIREMENTS_STAMP))
    install.venv.mkdir(parents=True)
    (install.venv / VENV_MARKER).write_text(
        "The emulator's virtualenv, made by mlops-lab: it deletes and rebuilds it.\n"
    )
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


def service(settings: Settings, *, guarded: bool = True) -> Service:
    """MiniStack as a supervised process: its own venv's server, on the configured loopback port, behind the lab's
    guard (``guard.py ministack``: MiniStack's own entry point with its app wrapped). ``guarded=False`` runs MiniStack's
    ``ministack`` command bare: for the batch bench's side-by-side only (any web page could then drive it)."""
    install = EmulatorInstall(settings.emulator_venv)
    tmp_dir = settings.state_dir / "emulator" / "tmp"
    env = _server_environment(settings, tmp_dir)
    if guarded:
        env.update({**guard_environment(settings), guard.ENV_TOKEN_FILE: str(admin_token_path(settings))})
    return Service(
        name=SERVICE_NAME,
        command=[str(install.python), str(GUARD_FILE), "ministack"] if guarded else [str(install.server)],
        health_url=settings.emulator_url + HEALTH_PATH,
        env=env,
        description=f"MiniStack (S3, IAM, Lambda, ECR){' with IAM enforced' if settings.emulator_auth else ''}",
        url=settings.emulator_url,
        cleanup=(tmp_dir,),
    )


def guard_environment(settings: Settings) -> dict[str, str]:
    """What the guard of a server of the lab (the emulator, mlflow) reads (``guard.config_from_environment``): the
    lab's own origins and the Host names to accept beyond loopback ones."""
    return {
        guard.ENV_ORIGINS: ",".join(guard.lab_origins(settings)),
        guard.ENV_HOSTS: ",".join(guard.lab_hosts(settings)),
    }


def admin_token_path(settings: Settings) -> Path:
    """The lab's admin token for the emulator's ``/_ministack/*`` endpoints (mode 0600; made once, kept by `reset`)."""
    return settings.state_dir / "emulator" / "admin-token"


def admin_headers(settings: Settings) -> dict[str, str]:
    """The header the emulator's admin endpoints (``/_ministack/reset``, ``/_ministack/config``...) need; the token is
    made here if the emulator has not made it yet."""
    return {guard.TOKEN_HEADER: guard.read_token(admin_token_path(settings), create=True)}


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
SAGEMAKER_SERVICES = ("sagemaker", "sagemaker_runtime")  # service ids (spaces as _), sent to the lab's SageMaker


def profile_settings(settings: Settings, name: str = PROFILE) -> dict[str, str]:
    """The emulator as an AWS profile: endpoint, region and its dummy credentials (the AWS CLI and SDKs read these
    from ``[profile mlops-lab]`` in the AWS config file), and its ``services`` section (:func:`profile_services`)."""
    environment = sdk_environment(settings)
    return {
        "endpoint_url": environment["AWS_ENDPOINT_URL"],
        "region": environment["AWS_DEFAULT_REGION"],
        "aws_access_key_id": environment["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": environment["AWS_SECRET_ACCESS_KEY"],
        "services": name,
    }


def profile_services(settings: Settings) -> dict[str, dict[str, str]]:
    """``[services mlops-lab]``: MiniStack has no SageMaker, so the SDK's ``sagemaker`` and ``sagemaker-runtime``
    clients of the profile go to the lab's SageMaker (a service-specific endpoint wins over the profile's own)."""
    return {service: {"endpoint_url": settings.sagemaker_emulator_url} for service in SAGEMAKER_SERVICES}


def aws_config_file() -> Path:
    """The AWS config file the SDK reads (``AWS_CONFIG_FILE``, else ``~/.aws/config``); ``~`` expanded."""
    return Path(os.environ.get("AWS_CONFIG_FILE") or Path.home() / ".aws" / "config").expanduser()


def write_profile(settings: Settings, name: str = PROFILE) -> tuple[Path, bool]:
    """Add or refresh ``[profile <name>]`` in the AWS config file; (the file, whether it changed).

    The file is edited as text: only that section is replaced (or added at the end), and everything else (other
    profiles, ``sso-session`` sections, comments, blank lines) stays byte for byte, which configparser's round trip
    would not do (it drops comments). It is written atomically: a temporary file in the same folder, then
    ``os.replace``, so a crash leaves the old file or the new one, never half of one. A config file that is a
    symbolic link (a dotfiles checkout) is edited where it points, and stays a link."""
    path = aws_config_file()
    target = path.resolve() if path.is_symlink() else path
    try:
        text = target.read_text()
    except FileNotFoundError:
        text = ""
    updated = with_profile(text, f"profile {name}", profile_settings(settings, name))
    updated = with_profile(updated, f"services {name}", profile_services(settings))
    if updated == text:
        return path, False
    _write_atomically(target, updated)
    return path, True


def with_profile(text: str, section: str, values: Mapping[str, str | Mapping[str, str]]) -> str:
    """``text`` (an AWS config file) with section ``[section]`` holding exactly ``values``; ``text`` itself when it
    already does. Comment and blank lines at the end of the replaced section stay: they introduce the next one."""
    import re

    header = re.compile(r"^\s*\[\s*([^\]]*?)\s*\]\s*(?:[#;].*)?$")
    lines = text.splitlines(keepends=True)
    titles = {i: found.group(1) for i, line in enumerate(lines) if (found := header.match(line))}
    headers = list(titles)
    ours = [i for i, title in titles.items() if title.split() == section.split()]
    block = [f"[{section}]\n", *(_option_lines(key, value) for key, value in values.items())]
    if not ours:
        before = text if not text or text.endswith("\n") else text + "\n"
        return before + ("\n" if before.strip() else "") + "".join(block)
    bounds = [*headers, len(lines)]
    spans = []
    for i in ours:
        stop = next(start for start in bounds if start > i)
        while stop > i + 1 and (not lines[stop - 1].strip() or lines[stop - 1].lstrip().startswith(("#", ";"))):
            stop -= 1
        spans.append((i, stop))
    if len(spans) == 1 and _option_values(lines[spans[0][0] + 1 : spans[0][1]]) == values:
        return text
    out, position = [], 0
    for n, (i, stop) in enumerate(spans):
        out += lines[position:i] + (block if n == 0 else [])  # a repeated section: its first place, once
        position = stop
    return "".join(out + lines[position:])


def _option_lines(key: str, value: str | Mapping[str, str]) -> str:
    """One option as the AWS config file writes it; a nested one (a ``services`` section's) as ``key =`` and
    indented ``sub = value`` lines."""
    if isinstance(value, str):
        return f"{key} = {value}\n"
    return f"{key} =\n" + "".join(f"  {sub} = {sub_value}\n" for sub, sub_value in value.items())


def _option_values(lines: list[str]) -> dict[str, str | dict[str, str]] | None:
    """``key = value`` lines (and nested ``key =`` + indented lines) as a dict, comments and blank lines skipped;
    None when they hold anything else."""
    values: dict[str, str | dict[str, str]] = {}
    nested: dict[str, str] | None = None
    for line in lines:
        stripped = line.strip()
        if not stripped or stripped.startswith(("#", ";")):
            continue
        key, equals, value = stripped.partition("=")
        if not equals:
            return None
        if line[:1].isspace():
            if nested is None:
                return None
            nested[key.strip()] = value.strip()
        elif value.strip():
            values[key.strip()], nested = value.strip(), None
        else:
            nested = values[key.strip()] = {}
    return values


def _write_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text`` afterwards, or (on any failure) exactly what it held before; its mode is kept (a new
    file is private: it holds credentials)."""
    import contextlib
    import stat
    import tempfile

    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else 0o600
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "w") as sink:
            sink.write(text)
            sink.flush()
            os.fsync(sink.fileno())
        os.chmod(temporary, mode)
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def lambda_python(settings: Settings, aws: Aws) -> Path | None:
    """The interpreter Lambda functions run on when ``aws`` points at this checkout's embedded emulator (MiniStack
    runs them on its own), else None: then they run on AWS's runtime (or a container's), not on anything here."""
    install = EmulatorInstall(settings.emulator_venv)
    pointed_here = aws.endpoint_url.rstrip("/") == settings.emulator_url
    return install.python if pointed_here and install.python.exists() else None


def is_lambda_worker(cmdline: bytes) -> bool:
    """Is this process (its /proc/<pid>/cmdline) one of MiniStack's Lambda workers (the bench samples their memory)?"""
    return b"_worker.py" in cmdline
