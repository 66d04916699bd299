"""Build the Lambda layer: onnxruntime + numpy + the lab's inference core, as a reproducible zip.

The same recipe serves two targets: AWS (``--python 3.12 --platform manylinux_2_28_x86_64``) and, in embedded mode,
the emulator's own interpreter (MiniStack runs every Python function on the interpreter it was started with).
"""

from __future__ import annotations

import hashlib
import shutil
import stat
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import mlops_lab
from mlops_lab import contract, inference
from mlops_lab.errors import Refused

# What the function needs at run time, and nothing else: pandas and sklearn stay out (size limits).
# onnxruntime's other requirements (protobuf, flatbuffers, packaging, sympy) are only used by its tools, which are
# stripped below, so they are not installed either.
LAYER_REQUIREMENTS = ("onnxruntime==1.32.0", "numpy==2.4.6")

# AWS limits for a layer uploaded through S3; direct upload is capped at 50 MB zipped as well.
MAX_ZIPPED_BYTES = 50 * 1000 * 1000
MAX_UNZIPPED_BYTES = 250 * 1000 * 1000

# Parts of the wheels never imported by InferenceSession + numpy arrays: tooling, tests, type stubs, bytecode.
_STRIP_DIRS = {"__pycache__", "tests", "testing"}
_STRIP_PATHS = (
    "onnxruntime/transformers",
    "onnxruntime/quantization",
    "onnxruntime/tools",
    "onnxruntime/datasets",
    "numpy/f2py",
    "numpy/typing",
    "numpy/_pyinstaller",
    "bin",
)
_STRIP_SUFFIXES = (".pyi", ".pyc", ".pxd", ".h")
_ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)

# How every layer version the lab publishes begins its description (layers cannot be tagged: this is how the lab
# tells its own versions, see mlops_lab.ownership).
DESCRIPTION_MARK = "onnxruntime+numpy+mlops_lab.inference"


class LayerTooLarge(Refused):
    pass


@dataclass(frozen=True)
class LayerArtifact:
    path: Path
    sha256: str
    zipped_bytes: int
    unzipped_bytes: int
    python: str
    platform: str
    compressed: bool = True
    bytecode: bool = False

    @property
    def description(self) -> str:
        """Stored as the layer version's description, so bootstrap can tell whether this build is published."""
        packing = ("" if self.compressed else " stored") + (" pyc" if self.bytecode else "")
        return f"{DESCRIPTION_MARK} py{self.python} {self.platform}{packing} sha256:{self.sha256[:16]}"


def interpreter_target(python: str) -> tuple[str, str]:
    """(X.Y, manylinux platform) of an interpreter, for building a layer it can import."""
    out = subprocess.run(
        [
            python,
            "-c",
            "import platform, sys; print(f'{sys.version_info[0]}.{sys.version_info[1]}', platform.machine())",
        ],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()
    return out[0], f"manylinux_2_28_{out[1]}"


def build_layer(
    out_dir: Path,
    *,
    python: str = "3.12",
    platform: str = "manylinux_2_28_x86_64",
    compress: bool = True,
    bytecode_for: str | None = None,
) -> LayerArtifact:
    """Build (or reuse a cached build of) the layer zip for one target.

    ``compress=False`` stores entries uncompressed: same content, ~3x the bytes, but it extracts ~4.5x faster, and
    MiniStack extracts the layer again for every new worker (most of a cold start). Only the embedded emulator gets
    it; AWS gets the deflated zip, well under its 50 MB direct-upload limit.

    ``bytecode_for`` (an interpreter of version ``python``) adds the modules' bytecode, compiled by it: importing
    numpy + onnxruntime from source costs ~0.5 s more per cold start than from bytecode. The pycs are
    ``unchecked-hash`` because an extracted file's mtime is the extraction time, which would make mtime-checked
    pycs stale. Only for the embedded emulator: with bytecode the AWS zip would be ~51 MB, over the 50 MB limit.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    bytecode = "bytecode" if bytecode_for else ""
    key = hashlib.sha256(
        "\n".join([*LAYER_REQUIREMENTS, python, platform, str(compress), bytecode, _core_fingerprint()]).encode()
    ).hexdigest()[:16]
    packing = ("" if compress else "-stored") + ("-pyc" if bytecode_for else "")
    target = out_dir / f"layer-py{python}-{platform}{packing}-{key}.zip"
    if not target.exists():
        if bytecode_for:  # before the download: a mismatch is known at once
            _check_compiler(bytecode_for, python)
        with tempfile.TemporaryDirectory(prefix="layer-") as tmp:
            root = Path(tmp) / "python"  # Lambda puts <layer>/python on sys.path
            _pip_install(root, python=python, platform=platform)
            _strip(root)
            _add_core(root)
            if bytecode_for:
                _compile(root, bytecode_for)
            _write_zip(Path(tmp), target.with_suffix(".tmp"), compress=compress)
        target.with_suffix(".tmp").replace(target)
    return _describe(target, python, platform, compress, bytecode=bytecode_for is not None)


def check_limits(artifact: LayerArtifact) -> None:
    problems = []
    if artifact.compressed and artifact.zipped_bytes > MAX_ZIPPED_BYTES:  # a stored zip is for the emulator only
        problems.append(f"zipped {artifact.zipped_bytes / 1e6:.1f} MB > {MAX_ZIPPED_BYTES / 1e6:.0f} MB")
    if artifact.unzipped_bytes > MAX_UNZIPPED_BYTES:
        problems.append(f"unzipped {artifact.unzipped_bytes / 1e6:.1f} MB > {MAX_UNZIPPED_BYTES / 1e6:.0f} MB")
    if problems:
        raise LayerTooLarge(f"layer {artifact.path.name} is over AWS's limits: {'; '.join(problems)}")


def _pip_install(root: Path, *, python: str, platform: str) -> None:
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "install",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--only-binary=:all:",
        "--implementation",
        "cp",
        "--python-version",
        python,
        "--platform",
        platform,
        "--target",
        str(root),
        *LAYER_REQUIREMENTS,
    ]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise RuntimeError(
            f"pip could not fetch the layer's wheels for py{python} {platform}:\n{result.stderr[-2000:]}"
        )


def _strip(root: Path) -> None:
    for rel in _STRIP_PATHS:
        shutil.rmtree(root / rel, ignore_errors=True)
    for path in sorted(root.rglob("*"), reverse=True):
        if path.is_dir() and path.name in _STRIP_DIRS:
            shutil.rmtree(path, ignore_errors=True)
        elif path.is_file() and path.suffix in _STRIP_SUFFIXES:
            path.unlink()


def _check_compiler(interpreter: str, python: str) -> None:
    version = subprocess.run(
        [interpreter, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    if version != python:
        raise ValueError(f"bytecode for py{python} cannot be compiled by {interpreter} (Python {version})")


def _compile(root: Path, interpreter: str) -> None:
    subprocess.run(
        [interpreter, "-m", "compileall", "-q", "-j", "0", "--invalidation-mode", "unchecked-hash", str(root)],
        check=True,
        capture_output=True,
    )


def _core_files() -> list[Path]:
    return [Path(mlops_lab.__file__), Path(inference.__file__), Path(contract.__file__)]


def _core_fingerprint() -> str:
    return hashlib.sha256(b"".join(path.read_bytes() for path in _core_files())).hexdigest()


def _add_core(root: Path) -> None:
    package = root / "mlops_lab"
    package.mkdir()
    for path in _core_files():
        shutil.copy2(path, package / path.name)


def _write_zip(base: Path, target: Path, *, compress: bool = True) -> None:
    files = sorted(p for p in base.rglob("*") if p.is_file())
    entries = (
        (path.relative_to(base).as_posix(), path.read_bytes(), 0o755 if path.stat().st_mode & stat.S_IXUSR else 0o644)
        for path in files
    )
    with target.open("wb") as sink:
        write_deterministic_zip(sink, entries, compress=compress)


def write_deterministic_zip(
    sink: IO[bytes], entries: Iterable[tuple[str, bytes, int]], *, compress: bool = True
) -> None:
    """Zip ``(name, content, mode)`` entries with fixed timestamps, in the given order, so equal inputs give equal
    bytes (and so an equal CodeSha256: bootstrap compares it to decide whether to update)."""
    method = zipfile.ZIP_DEFLATED if compress else zipfile.ZIP_STORED
    with zipfile.ZipFile(sink, "w", compression=method, compresslevel=9 if compress else None) as archive:
        for name, content, mode in entries:
            info = zipfile.ZipInfo(name, date_time=_ZIP_EPOCH)
            info.external_attr = mode << 16
            info.compress_type = method
            archive.writestr(info, content)


def _describe(path: Path, python: str, platform: str, compressed: bool, *, bytecode: bool) -> LayerArtifact:
    with zipfile.ZipFile(path) as archive:
        unzipped = sum(item.file_size for item in archive.infolist())
    return LayerArtifact(
        path=path,
        sha256=hashlib.sha256(path.read_bytes()).hexdigest(),
        zipped_bytes=path.stat().st_size,
        unzipped_bytes=unzipped,
        python=python,
        platform=platform,
        compressed=compressed,
        bytecode=bytecode,
    )
