"""The Lambda layer: what it holds, its size against AWS's limits, reproducibility."""

from __future__ import annotations

import io
import subprocess
import zipfile
from dataclasses import replace
from pathlib import Path

import pytest

from mlops_lab.emulator import EmulatorInstall
from mlops_lab.layer import (
    MAX_ZIPPED_BYTES,
    LayerTooLarge,
    build_layer,
    check_limits,
    interpreter_target,
    write_deterministic_zip,
)
from mlops_lab.settings import get_settings


@pytest.fixture(scope="module")
def aws_layer():  # type: ignore[no-untyped-def]
    """The layer for AWS's python3.12 x86_64 runtime: deflated, sources only (built once into the shared build dir)."""
    return build_layer(get_settings().build_dir, python="3.12", platform="manylinux_2_28_x86_64")


@pytest.fixture(scope="module")
def emulator_layer():  # type: ignore[no-untyped-def]
    """The layer bootstrap publishes to the embedded emulator: for its interpreter, stored, with that interpreter's
    bytecode. Built into the shared build dir, so the integration lane's bootstrap reuses it (and it reuses theirs)."""
    interpreter = EmulatorInstall(get_settings().emulator_venv).python
    if not interpreter.exists():
        pytest.skip("the emulator is not installed (make install)")
    python, platform = interpreter_target(str(interpreter))
    return build_layer(
        get_settings().build_dir, python=python, platform=platform, compress=False, bytecode_for=str(interpreter)
    )


def test_aws_layer_holds_the_runtime_and_the_core_only(aws_layer) -> None:  # type: ignore[no-untyped-def]
    names = zipfile.ZipFile(aws_layer.path).namelist()
    assert "python/mlops_lab/inference.py" in names
    assert "python/mlops_lab/__init__.py" in names
    assert any(n.startswith("python/onnxruntime/capi/onnxruntime_pybind11_state") for n in names)
    assert any(n.startswith("python/numpy/_core/_multiarray_umath.cpython-312") for n in names)
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]
    assert not [
        n for n in names if n.startswith(("python/pandas", "python/sklearn", "python/onnxruntime/transformers"))
    ]


def test_aws_layer_is_within_limits(aws_layer) -> None:  # type: ignore[no-untyped-def]
    check_limits(aws_layer)
    assert aws_layer.zipped_bytes <= 45 * 1000 * 1000  # headroom under the 50 MB direct-upload cap


def test_oversized_layer_is_refused_with_figures(aws_layer) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(LayerTooLarge, match=r"zipped 5\d\.\d MB > 50 MB"):
        check_limits(replace(aws_layer, zipped_bytes=MAX_ZIPPED_BYTES + 5_000_000))
    with pytest.raises(LayerTooLarge, match=r"unzipped 300\.0 MB > 250 MB"):
        check_limits(replace(aws_layer, unzipped_bytes=300_000_000))


def _is_bytecode(name: str) -> bool:
    return name.endswith(".pyc")


def _entries(path: Path, *, sources_only: bool = False) -> list[tuple[str, int, int, tuple[int, ...], int]]:
    return [
        (i.filename, i.CRC, i.file_size, i.date_time, i.external_attr)
        for i in zipfile.ZipFile(path).infolist()
        if not (sources_only and _is_bytecode(i.filename))
    ]


def _same_target(aws_layer, emulator_layer) -> None:  # type: ignore[no-untyped-def]
    """Skip unless the emulator runs AWS's interpreter (python3.12 x86_64, what the lab installs it with): only then
    do both layers hold the same wheels."""
    if (emulator_layer.python, emulator_layer.platform) != (aws_layer.python, aws_layer.platform):
        pytest.skip(f"the emulator's interpreter is py{emulator_layer.python} {emulator_layer.platform}, not AWS's")


def test_build_is_reproducible(aws_layer, emulator_layer) -> None:  # type: ignore[no-untyped-def]
    """Two independent builds (two pip installs: AWS's layer and the emulator's) zip the same entries, in the same
    order, with the same names, contents, timestamps and modes, apart from the emulator's bytecode; and equal entries
    always zip to equal bytes. So a rebuild has the same sha256 (bootstrap compares it to decide whether to
    republish)."""
    _same_target(aws_layer, emulator_layer)
    assert _entries(emulator_layer.path, sources_only=True) == _entries(aws_layer.path)
    entries = [("python/b.py", b"b = 2\n" * 500, 0o644), ("python/a.so", bytes(range(256)) * 40, 0o755)]
    zips = []
    for _ in range(2):
        sink = io.BytesIO()
        write_deterministic_zip(sink, iter(entries), compress=True)
        zips.append(sink.getvalue())
    assert zips[0] == zips[1]
    assert len({entry[3] for entry in _entries(aws_layer.path)}) == 1  # one fixed timestamp, not the build's time
    assert [i.filename for i in zipfile.ZipFile(io.BytesIO(zips[0])).infolist()] == ["python/b.py", "python/a.so"]


def test_the_emulators_layer_is_stored_with_the_same_files(aws_layer, emulator_layer) -> None:  # type: ignore[no-untyped-def]
    _same_target(aws_layer, emulator_layer)
    stored_infos = zipfile.ZipFile(emulator_layer.path).infolist()
    deflated_entries = {(i.filename, i.CRC, i.file_size) for i in zipfile.ZipFile(aws_layer.path).infolist()}
    assert {(i.filename, i.CRC, i.file_size) for i in stored_infos if not _is_bytecode(i.filename)} == deflated_entries
    assert {i.compress_type for i in stored_infos} == {zipfile.ZIP_STORED}
    assert {i.compress_type for i in zipfile.ZipFile(aws_layer.path).infolist()} == {zipfile.ZIP_DEFLATED}
    assert emulator_layer.description != aws_layer.description  # bootstrap republishes when the packing changes
    check_limits(emulator_layer)  # only the unzipped limit applies to a zip that never goes to AWS


def test_emulator_layer_carries_bytecode_its_interpreter_uses(emulator_layer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """The embedded layer ships pycs compiled by the emulator's interpreter, valid after extraction (new mtimes):
    with every source of onnxruntime's package turned into a syntax error, the import still works from bytecode."""
    interpreter = EmulatorInstall(get_settings().emulator_venv).python
    assert emulator_layer.bytecode and " pyc " in emulator_layer.description
    zipfile.ZipFile(emulator_layer.path).extractall(tmp_path / "opt")
    for source in (tmp_path / "opt/python/onnxruntime").rglob("*.py"):
        source.write_text("this is not python\n")
    code = "import numpy, onnxruntime, mlops_lab.inference; print(onnxruntime.__version__)"
    result = subprocess.run(
        [str(interpreter), "-c", code],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PYTHONPATH": str(tmp_path / "opt/python"), "PATH": "/usr/bin:/bin"},
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip() == "1.32.0"
    with pytest.raises(ValueError, match="cannot be compiled"):
        build_layer(
            tmp_path / "other",
            python="3.9",
            platform=emulator_layer.platform,
            compress=False,
            bytecode_for=str(interpreter),
        )
