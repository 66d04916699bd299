"""The lab's files: one `up` at a time (a lock in the state dir), recursive deletes only in folders the lab marked
as its own (`reset`, a service's temporary folders, the emulator venv's rebuild), ``~`` in paths meaning the home
folder, and the AWS config file edited in place of its one section, atomically, comments and other profiles kept."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlops_lab import emulator, ops, services, stack
from mlops_lab.errors import ExitCode, explain
from mlops_lab.settings import Settings
from tests.support import isolated_environment


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(_env_file=None, state_dir=tmp_path / "state", emulator_venv=tmp_path / "venv")


# -- one `up` at a time ---------------------------------------------------------------------------------------------


def test_a_second_up_while_one_holds_the_lock_fails_at_once(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    ran: list[str] = []
    monkeypatch.setattr(ops, "_bring_up", lambda *args: ran.append("up"))  # what `up` does once it holds the lock
    with stack.lab_lock(settings, "up"), pytest.raises(stack.LabBusy) as refused:
        ops.bring_up(settings, services=[])
    assert ran == []
    problem = explain(refused.value)
    assert problem.code == ExitCode.CONFLICT
    assert "another `mlops-lab up`" in problem.message and f"pid {os.getpid()}" in problem.message
    ops.bring_up(settings, services=[])  # released: the next one runs
    assert ran == ["up"]


def test_the_lock_is_held_across_processes_and_dropped_when_its_holder_dies(settings: Settings) -> None:
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\n"
            "from mlops_lab import stack\n"
            "from mlops_lab.settings import Settings\n"
            f"with stack.lab_lock(Settings(_env_file=None, state_dir={str(settings.state_dir)!r})):\n"
            "    print('held', flush=True)\n"
            "    time.sleep(60)\n",
        ],
        stdout=subprocess.PIPE,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"held\n"
        with pytest.raises(stack.LabBusy, match=f"pid {holder.pid}"), stack.lab_lock(settings):
            pass
    finally:
        holder.kill()
        holder.wait()
    with stack.lab_lock(settings):  # killed, not released: the kernel dropped its lock all the same
        pass


def test_reset_waits_for_no_one_while_up_runs(settings: Settings) -> None:
    stack.claim_state_dir(settings)
    (settings.state_dir / "mlflow").mkdir()
    with stack.lab_lock(settings, "up"), pytest.raises(stack.LabBusy):
        services.reset(settings)
    assert (settings.state_dir / "mlflow").exists()


# -- deletes only in the lab's own folders ----------------------------------------------------------------------------


def lab_state(settings: Settings) -> list[Path]:
    dirs = emulator.state_dirs(settings)
    folders = [dirs.s3, dirs.services, settings.state_dir / "mlflow"]
    for folder in folders:
        folder.mkdir(parents=True)
        (folder / "data").write_text("x")
    return folders


def test_reset_refuses_a_state_dir_the_lab_did_not_make(settings: Settings) -> None:
    """LAB_STATE_DIR set to a folder of the user's own (say their home): reset deletes nothing there."""
    folders = lab_state(settings)
    (settings.state_dir / "thesis.tex").write_text("years of work")
    with pytest.raises(services.ResetError, match=stack.STATE_MARKER):
        services.reset(settings)
    assert all(folder.exists() for folder in folders)
    assert (settings.state_dir / "thesis.tex").exists()
    assert not stack.is_marked(settings.state_dir)


def test_reset_deletes_the_lab_state_of_a_marked_state_dir(settings: Settings) -> None:
    stack.claim_state_dir(settings)
    folders = lab_state(settings)
    (settings.state_dir / "env.sh").write_text("export AWS_PROFILE=mlops-lab\n")
    _, deleted = services.reset(settings)
    assert sorted(data.path for data in deleted) == sorted(folders)
    assert not any(folder.exists() for folder in folders)
    assert (settings.state_dir / "env.sh").exists() and stack.is_marked(settings.state_dir)


def test_a_state_dir_of_an_older_lab_holding_only_its_files_is_taken_for_the_labs(settings: Settings) -> None:
    folders = lab_state(settings)  # emulator/, mlflow/: what the lab puts there, no marker yet
    services.reset(settings)
    assert not any(folder.exists() for folder in folders) and stack.is_marked(settings.state_dir)


def test_the_first_write_marks_a_new_state_dir(settings: Settings) -> None:
    assert not settings.state_dir.exists()
    stack.claim_state_dir(settings)
    assert stack.is_marked(settings.state_dir)


def test_a_delete_never_leaves_the_marked_folder(settings: Settings, tmp_path: Path) -> None:
    stack.claim_state_dir(settings)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("x")
    link = settings.state_dir / "emulator" / "tmp"
    link.parent.mkdir()
    link.symlink_to(outside, target_is_directory=True)
    for path in (link, tmp_path, settings.state_dir / ".." / "outside"):
        with pytest.raises(stack.NotTheLabs):
            stack.remove_tree(path, owner=settings.state_dir)
    assert (outside / "keep").exists()


def test_stop_leaves_a_services_folders_in_a_folder_not_the_labs(settings: Settings) -> None:
    settings.state_dir.mkdir()
    (settings.state_dir / "thesis.tex").write_text("years of work")
    tmp = settings.state_dir / "emulator" / "tmp"
    tmp.mkdir(parents=True)
    (tmp / "worker").write_text("x")
    stack.stop(settings, stack.Service("probe", ["true"], "http://127.0.0.1:9/", cleanup=(tmp,)))
    assert (tmp / "worker").exists()
    stack.claim_state_dir(settings)
    assert not stack.is_marked(settings.state_dir)  # holding a file the lab did not make: never marked


def test_the_venv_rebuild_refuses_a_folder_the_lab_did_not_make(settings: Settings) -> None:
    venv = settings.emulator_venv
    venv.mkdir()
    (venv / "my-project.py").write_text("print('mine')")
    with pytest.raises(stack.NotTheLabs, match=r"no \.mlops-lab-venv"):
        emulator.ensure_installed(settings.model_copy(update={"emulator_python": sys.executable}))
    assert (venv / "my-project.py").exists()


def test_the_venv_rebuild_replaces_the_labs_own_venv(settings: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    venv = settings.emulator_venv
    venv.mkdir()
    (venv / emulator.VENV_MARKER).write_text("")
    (venv / "stale").write_text("x")
    calls: list[list[str]] = []

    def run(command: list[str], **kwargs: Any) -> subprocess.CompletedProcess[str]:
        calls.append(command)
        return subprocess.CompletedProcess(command, 0 if "venv" in command else 1, "", "no network here")

    monkeypatch.setattr(emulator.subprocess, "run", run)
    with pytest.raises(RuntimeError, match="no network here"):
        emulator.ensure_installed(settings.model_copy(update={"emulator_python": sys.executable}))
    assert not (venv / "stale").exists() and (venv / emulator.VENV_MARKER).exists()
    assert calls[0] == [sys.executable, "-m", "venv", str(venv)]


# -- ~ means home -------------------------------------------------------------------------------------------------


def test_home_is_expanded_in_every_path_setting(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path))
    with isolated_environment(
        LAB_STATE_DIR="~/lab",
        LAB_EMULATOR_VENV="~/lab/venv",
        LAB_BUILD_DIR="~/lab/build",
        LAB_EMULATOR_PYTHON="~/bin/python3.12",
    ):
        settings = Settings(_env_file=None)
    assert settings.state_dir == tmp_path / "lab"
    assert settings.emulator_venv == tmp_path / "lab" / "venv"
    assert settings.build_dir == tmp_path / "lab" / "build"
    assert settings.emulator_python == f"{tmp_path}/bin/python3.12"


# -- the AWS config file --------------------------------------------------------------------------------------------

CONFIG = """\
# My AWS config. Do not lose these notes.
[default]
; Ireland
region = eu-west-1
output = json

[profile mlops-lab]
# written by an older lab
endpoint_url = http://127.0.0.1:1111
region = eu-west-1

; the work account: SSO
[profile work]
sso_session = corp
sso_account_id = 123456789012
s3 =
    addressing_style = path

[sso-session corp]
sso_start_url = https://corp.awsapps.com/start
"""


@pytest.fixture
def config_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "aws" / "config"
    path.parent.mkdir()
    monkeypatch.setenv("AWS_CONFIG_FILE", str(path))
    return path


def profile_lines(settings: Settings) -> list[str]:
    return ["[profile mlops-lab]", *(f"{key} = {value}" for key, value in emulator.profile_settings(settings).items())]


SDK_IDS = ("SAGEMAKER", "SAGEMAKER_RUNTIME", "S3")


def services_block(settings: Settings) -> str:
    """The profile's ``services`` section, as the AWS CLI writes a nested setting (``key =`` and indented lines)."""
    url = settings.sagemaker_emulator_url
    return f"[services mlops-lab]\nsagemaker =\n  endpoint_url = {url}\nsagemaker_runtime =\n  endpoint_url = {url}\n"


def test_the_profile_replaces_its_section_and_keeps_every_other_line(settings: Settings, config_file: Path) -> None:
    config_file.write_text(CONFIG)
    config_file.chmod(0o640)
    assert emulator.write_profile(settings) == (config_file, True)
    text = config_file.read_text()
    before, _, after = CONFIG.partition("[profile mlops-lab]\n# written by an older lab\n")
    after = after[after.index("\n; the work account") :]
    assert text == before + "\n".join(profile_lines(settings)) + "\n" + after + "\n" + services_block(settings)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o640
    assert emulator.write_profile(settings) == (config_file, False)  # already so: the file is not rewritten
    assert config_file.read_text() == text
    import botocore.session

    with isolated_environment(AWS_CONFIG_FILE=str(config_file)):
        profiles = botocore.session.Session().full_config["profiles"]
    assert profiles["mlops-lab"]["endpoint_url"] == settings.emulator_url
    assert profiles["work"]["s3"] == {"addressing_style": "path"}
    assert profiles["default"]["region"] == "eu-west-1"
    # Only the profile: an AWS_ENDPOINT_URL in the environment wins over a profile's `services` section (the SDK's
    # order), and the session's tests set one.
    endpoint_variables = dict.fromkeys(["AWS_ENDPOINT_URL", *(f"AWS_ENDPOINT_URL_{s}" for s in SDK_IDS)])
    with isolated_environment(AWS_CONFIG_FILE=str(config_file), AWS_PROFILE="mlops-lab", **endpoint_variables):
        import boto3

        session = boto3.session.Session()
        for service in ("sagemaker", "sagemaker-runtime"):  # the lab's SageMaker, not the emulator (it has none)
            assert session.client(service).meta.endpoint_url == settings.sagemaker_emulator_url
        assert session.client("s3").meta.endpoint_url == settings.emulator_url


def test_the_profile_is_added_at_the_end_of_a_file_without_it(settings: Settings, config_file: Path) -> None:
    config_file.write_text("# mine\n[default]\nregion = eu-west-1")
    emulator.write_profile(settings)
    assert config_file.read_text() == "# mine\n[default]\nregion = eu-west-1\n\n" + "\n".join(
        profile_lines(settings)
    ) + "\n\n" + services_block(settings)


def test_a_new_config_file_is_private(settings: Settings, config_file: Path) -> None:
    emulator.write_profile(settings)
    assert config_file.read_text() == "\n".join(profile_lines(settings)) + "\n\n" + services_block(settings)
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600


def test_a_failed_write_leaves_the_file_as_it_was(
    settings: Settings, config_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_file.write_text(CONFIG)

    def crash(*args: Any) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk full"):
        emulator.write_profile(settings)
    assert config_file.read_text() == CONFIG
    assert sorted(path.name for path in config_file.parent.iterdir()) == ["config"]  # no temporary file left


def test_a_linked_config_file_stays_a_link(settings: Settings, config_file: Path, tmp_path: Path) -> None:
    dotfiles = tmp_path / "dotfiles"
    dotfiles.mkdir()
    (dotfiles / "aws-config").write_text(CONFIG)
    config_file.symlink_to(dotfiles / "aws-config")
    emulator.write_profile(settings)
    assert config_file.is_symlink()
    assert settings.emulator_url in (dotfiles / "aws-config").read_text()
