"""Batch path benchmark: S3 upload -> Lambda -> predictions object, beside in-process parse + ONNX Runtime.

Starts its own embedded stack on a free loopback port (state in a temp dir), so it never touches `make up`'s.
Prints tables; asserts nothing. Ratios are from one run, side by side, because these machines are noisy.

    .venv/bin/python bench/batch.py [--model lab|course] [--sizes 10000,100000,1000000] [--warm-invokes 20]
                                    [--guard-rows 1000000] [--guard-rounds 3]

--model lab (default) trains the lab's own model here (random forest, 100 trees) and scores generated rows;
--model course scores the course's own model.onnx (../shared/data/course) on its input_batch.csv rows, repeated
to each size: a much cheaper model per row, so parsing and I/O weigh more against ONNX Runtime.

Then the guard's cost on the batch path (src/mlops_lab/guard.py: every S3 request of the upload and of the Lambda goes
through it): the same --guard-rows file end to end on the emulator behind the guard (as the lab runs it) and bare
(MiniStack's own `ministack` command, for this comparison only), alternating for --guard-rounds rounds in one run, the
emulator restarted between them with its state kept; and the guard's own time per request, in process. 0 rows: skipped.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import resource
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from mlops_lab import emulator, guard, ops, services, stack
from mlops_lab.aws import Aws
from mlops_lab.contract import prediction_key
from mlops_lab.data import write_csv
from mlops_lab.inference import TabularModel, read_csv_chunks, score_csv
from mlops_lab.layer import build_layer
from mlops_lab.settings import Settings
from mlops_lab.synthetic import generate

COURSE_DIR = Path(__file__).resolve().parents[2] / "shared" / "data" / "course"

console = Console() if Console().is_terminal else Console(width=160)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def course_rows(size: int, target: Path) -> None:
    """The course's input_batch.csv rows, repeated (and cut) to ``size`` rows."""
    header, *lines = (COURSE_DIR / "input_batch.csv").read_text().splitlines(keepends=True)
    with target.open("w") as out:
        out.write(header)
        for start in range(0, size, len(lines)):
            out.writelines(lines[: min(len(lines), size - start)])


def place_model(model_path: Path, model: str) -> None:
    """The bench's model at ``model_path`` before `up`'s recipe runs (it publishes that file instead of training its
    own): the course's model.onnx, or the lab's model trained here (random forest, 100 trees, 20,000 rows)."""
    model_path.parent.mkdir(parents=True)
    if model == "course":
        model_path.write_bytes((COURSE_DIR / "model.onnx").read_bytes())
    else:
        from mlops_lab.train import train_and_export

        train_and_export(None, model_path, rows=20000, seed=1)


def in_process(model_path: Path, csv_path: Path, chunk_rows: int) -> float:
    """Seconds to parse, cast, score and write predictions for a file, in this process (one ORT thread; score_csv
    overlaps parsing with scoring on a second thread, as in the Lambda)."""
    model = TabularModel(model_path, threads=1)
    started = time.perf_counter()
    with csv_path.open(newline="") as source, open(os.devnull, "w") as sink:
        score_csv(model, source, sink, chunk_rows=chunk_rows)
    return time.perf_counter() - started


def onnxruntime_only(model_path: Path, csv_path: Path, chunk_rows: int) -> float:
    """Seconds ONNX Runtime alone spends on the file's rows (inputs cast beforehand, not timed): the ceiling."""
    model = TabularModel(model_path, threads=1)
    with csv_path.open(newline="") as source:
        batches = [
            model.prepare(dict(zip(header, zip(*rows, strict=False), strict=True)))
            for _, header, rows in read_csv_chunks(source, model.feature_names, chunk_rows)
        ]
    started = time.perf_counter()
    for feeds in batches:
        model.session.run(None, feeds)
    return time.perf_counter() - started


class WorkerMemory:
    """Samples the RSS of the emulator's Lambda workers."""

    def __init__(self) -> None:
        self.peak_bytes = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def __enter__(self) -> WorkerMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    def _sample(self) -> None:
        page = os.sysconf("SC_PAGE_SIZE")
        while not self._stop.wait(0.05):
            for proc in Path("/proc").glob("[0-9]*"):
                try:
                    if emulator.is_lambda_worker((proc / "cmdline").read_bytes()):
                        rss = int((proc / "statm").read_text().split()[1]) * page
                        self.peak_bytes = max(self.peak_bytes, rss)
                except (OSError, IndexError, ValueError):
                    continue


def end_to_end(settings: Settings, aws: Aws, csv_path: Path, key: str) -> tuple[float, float, int]:
    """Seconds from the start of the upload until the predictions object exists, seconds of that spent uploading,
    and the workers' peak RSS."""
    s3 = aws.client("s3")
    with WorkerMemory() as memory:
        started = time.perf_counter()
        s3.upload_file(str(csv_path), settings.input_bucket, key)
        uploaded = time.perf_counter() - started
        s3.get_waiter("object_exists").wait(
            Bucket=settings.output_bucket, Key=prediction_key(key), WaiterConfig={"Delay": 0.05, "MaxAttempts": 12000}
        )
        elapsed = time.perf_counter() - started
    return elapsed, uploaded, memory.peak_bytes


def invoke_seconds(aws: Aws, settings: Settings, key: str) -> float:
    event = {
        "Records": [
            {
                "eventName": "ObjectCreated:Put",
                "s3": {"bucket": {"name": settings.input_bucket}, "object": {"key": key}},
            }
        ]
    }
    started = time.perf_counter()
    response = aws.client("lambda").invoke(FunctionName=settings.function_name, Payload=json.dumps(event))
    elapsed = time.perf_counter() - started
    if "FunctionError" in response:
        raise RuntimeError(response["Payload"].read().decode())
    return elapsed


def force_cold(aws: Aws, settings: Settings, nonce: int) -> None:
    """A configuration change replaces the function's workers, so the next invoke starts cold."""
    lam = aws.client("lambda")
    current = lam.get_function_configuration(FunctionName=settings.function_name)["Environment"]["Variables"]
    lam.update_function_configuration(
        FunctionName=settings.function_name, Environment={"Variables": {**current, "BENCH_NONCE": str(nonce)}}
    )
    lam.get_waiter("function_updated_v2").wait(FunctionName=settings.function_name)


def restart_emulator(settings: Settings, *, guarded: bool) -> None:
    """Stop the emulator (it saves its state) and start it again, behind the lab's guard or bare."""
    services.stop_services(settings, [emulator.SERVICE_NAME])
    stack.start(settings, emulator.service(settings, guarded=guarded))


def cpu_seconds(pid: int | None) -> float:
    """User + system CPU seconds of one process so far (the emulator's own: where the guard runs, not its workers)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def guard_comparison(
    settings: Settings, aws: Aws, write_rows: Any, size: int, rounds: int, work: Path, tiny: Path
) -> dict[str, dict[str, list[float]]]:
    """End to end at ``size`` rows, emulator bare and behind the guard, alternating, each on a warm worker: rows/s,
    and the CPU seconds the emulator's own process spent on it (what the guard adds to, and what the other processes
    on a busy machine move less than they move wall time)."""
    path = work / f"guard-{size}.csv"
    write_rows(size, path)
    s3 = aws.client("s3")
    s3.upload_file(str(tiny), settings.input_bucket, "bench/guard-tiny.txt")  # .txt: no notification
    measured: dict[str, dict[str, list[float]]] = {mode: {"rate": [], "cpu": []} for mode in ("bare", "guard")}
    for round_ in range(rounds):
        for mode in ("bare", "guard") if round_ % 2 == 0 else ("guard", "bare"):
            restart_emulator(settings, guarded=mode == "guard")
            invoke_seconds(aws, settings, "bench/guard-tiny.txt")  # a warm worker, as in the throughput table
            key = f"bench/guard-{mode}-{round_}.csv"
            pid = stack.pid_of(settings, emulator.SERVICE_NAME)
            cpu_before = cpu_seconds(pid)
            elapsed, _, _ = end_to_end(settings, aws, path, key)
            measured[mode]["cpu"].append(cpu_seconds(pid) - cpu_before)
            measured[mode]["rate"].append(size / elapsed)
            s3.delete_object(Bucket=settings.input_bucket, Key=key)
            s3.delete_object(Bucket=settings.output_bucket, Key=prediction_key(key))
    restart_emulator(settings, guarded=True)
    path.unlink()
    return measured


def guard_microseconds(requests: int = 200_000) -> float:
    """The guard's own time per request (in this process): an S3 GET's headers, as boto3 sends them, to a no-op app."""
    import asyncio

    async def app(scope: Any, receive: Any, send: Any) -> None:
        return None

    wrapped = guard.Guard(
        app,
        origins=["http://127.0.0.1:8001"],
        admin_prefix=guard.MINISTACK_ADMIN,
        admin_open=guard.MINISTACK_OPEN,
        token="t",
    )
    headers = [
        (b"host", b"127.0.0.1:4566"),
        (b"accept-encoding", b"identity"),
        (
            b"user-agent",
            b"Boto3/1.43.106 md/Botocore#1.43.106 ua/2.1 os/linux lang/python#3.12.1 cfg/retry-mode#legacy",
        ),
        (b"x-amz-date", b"20260101T000000Z"),
        (b"x-amz-content-sha256", b"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"),
        (b"authorization", b"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/s3/aws4_request, SignedHeaders=h"),
        (b"amz-sdk-invocation-id", b"0f9c8a4e-3c1e-4a44-9a55-3f0b2f5b8c11"),
        (b"amz-sdk-request", b"attempt=1"),
    ]
    scope = {"type": "http", "method": "GET", "path": "/bench-input/key.csv", "scheme": "http", "headers": headers}

    async def run(target: Any) -> float:
        started = time.perf_counter()
        for _ in range(requests):
            await target(scope, None, None)
        return time.perf_counter() - started

    bare, guarded = asyncio.run(run(app)), asyncio.run(run(wrapped))
    return (guarded - bare) / requests * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["lab", "course"], default="lab")
    parser.add_argument("--sizes", default="10000,100000,1000000")
    parser.add_argument("--warm-invokes", type=int, default=20)
    parser.add_argument("--cold-invokes", type=int, default=3)
    parser.add_argument("--guard-rows", type=int, default=1_000_000, help="rows of the guard comparison; 0: skip it")
    parser.add_argument(
        "--guard-rounds", type=int, default=3, help="rounds of the guard comparison (each: bare + guard)"
    )
    args = parser.parse_args()
    sizes = [int(size) for size in args.sizes.split(",")]
    if args.model == "course" and not (COURSE_DIR / "model.onnx").exists():
        raise SystemExit(f"--model course: no model.onnx in {COURSE_DIR}")

    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    settings = Settings(state_dir=work / "lab", emulator_port=free_port(), prefix="bench", max_input_mb=1024)
    saved_env = dict(os.environ)
    # `up`'s recipe writes the emulator's AWS profile: into this run's own config file, not the person's ~/.aws.
    os.environ["AWS_CONFIG_FILE"] = str(work / "aws-config")
    console.print(f"[dim]stack in {work}; emulator on {settings.emulator_url}[/]")
    # The model file in place before bring_up, which publishes it (as `up` does) instead of training its own.
    model_path = settings.model_path
    place_model(model_path, args.model)
    if args.model == "course":
        write_rows = course_rows
    else:

        def write_rows(size: int, target: Path) -> None:
            write_csv(generate(size, seed=size, with_label=False), target)

    try:
        lab = ops.bring_up(settings, services=[emulator.SERVICE_NAME])
        aws = lab.aws

        # Latency of one tiny file: cold (fresh worker) and warm, beside scoring it in-process.
        tiny = work / "tiny.csv"
        write_rows(1, tiny)
        aws.client("s3").upload_file(str(tiny), settings.input_bucket, "bench/tiny.txt")  # .txt: no notification
        tiny_key = "bench/tiny.txt"
        cold = []
        for nonce in range(args.cold_invokes):
            force_cold(aws, settings, nonce)
            cold.append(invoke_seconds(aws, settings, tiny_key))
        warm = [invoke_seconds(aws, settings, tiny_key) for _ in range(args.warm_invokes)]
        model = TabularModel(model_path, threads=1)
        tiny_in_process = []
        for _ in range(args.warm_invokes):
            started = time.perf_counter()
            with tiny.open(newline="") as source:
                score_csv(model, source, io.StringIO(), chunk_rows=settings.chunk_rows)
            tiny_in_process.append(time.perf_counter() - started)

        # Throughput at each size, warm worker.
        rows_table = []
        for size in sizes:
            path = work / f"rows-{size}.csv"
            write_rows(size, path)
            ceiling = onnxruntime_only(model_path, path, settings.chunk_rows)
            local = in_process(model_path, path, settings.chunk_rows)
            remote, upload, worker_peak = end_to_end(settings, aws, path, f"bench/rows-{size}.csv")
            rows_table.append((size, path.stat().st_size, ceiling, local, remote, upload, worker_peak))
            path.unlink()

        guard_rates = (
            guard_comparison(settings, aws, write_rows, args.guard_rows, args.guard_rounds, work, tiny)
            if args.guard_rows
            else None
        )

        aws_layer = build_layer(settings.build_dir, python="3.12", platform="manylinux_2_28_x86_64")
    finally:
        services.stop_services(settings)
        os.environ.clear()
        os.environ.update(saved_env)

    model_name = "the course's model.onnx" if args.model == "course" else "the lab's model (random forest, 100 trees)"
    console.print(f"model: {model_name}")
    throughput = Table(title="Batch scoring: end to end (upload -> predictions object) vs in-process vs ORT alone")
    for column in (
        "rows",
        "file",
        "ORT alone rows/s",
        "in-process rows/s",
        "end-to-end rows/s",
        "e2e / in-process",
        "e2e / ORT alone",
        "of e2e: upload",
        "worker peak RSS",
    ):
        throughput.add_column(column, justify="right")
    for size, file_bytes, ceiling, local, remote, upload, worker_peak in rows_table:
        throughput.add_row(
            f"{size:,}",
            f"{file_bytes / 1e6:.1f} MB",
            f"{size / ceiling:,.0f}",
            f"{size / local:,.0f}",
            f"{size / remote:,.0f}",
            f"{local / remote:.0%}",
            f"{ceiling / remote:.0%}",
            f"{upload:.1f} s of {remote:.1f} s",
            f"{worker_peak / 2**20:,.0f} MiB",
        )
    latency = Table(title="Invocation latency (1-row file, synchronous invoke)")
    for column in ("", "median", "min", "max", "n"):
        latency.add_column(column, justify="right")
    for name, values in (("cold start", cold), ("warm", warm), ("in-process scoring", tiny_in_process)):
        latency.add_row(
            name,
            f"{statistics.median(values) * 1000:.1f} ms",
            f"{min(values) * 1000:.1f} ms",
            f"{max(values) * 1000:.1f} ms",
            str(len(values)),
        )
    overhead = statistics.median(warm) - statistics.median(tiny_in_process)
    sizes_table = Table(title="Layer (AWS target: py3.12 manylinux_2_28_x86_64)")
    for column in ("zipped", "unzipped", "AWS limits"):
        sizes_table.add_column(column, justify="right")
    sizes_table.add_row(
        f"{aws_layer.zipped_bytes / 1e6:.1f} MB",
        f"{aws_layer.unzipped_bytes / 1e6:.1f} MB",
        "50 MB zipped (direct upload) / 250 MB unzipped",
    )
    tables = [throughput, latency, sizes_table]
    if guard_rates is not None:
        guard_table = Table(
            title=f"The guard on the batch path: {args.guard_rows:,} rows end to end, warm worker, rounds alternating"
        )
        for column in ("emulator", *(f"round {i + 1}" for i in range(args.guard_rounds)), "median", "vs bare"):
            guard_table.add_column(column, justify="right")
        guard_table.add_column("emulator CPU (median)", justify="right")
        bare_rate = statistics.median(guard_rates["bare"]["rate"])
        bare_cpu = statistics.median(guard_rates["bare"]["cpu"])
        for mode, name in (
            ("bare", "bare MiniStack (`ministack`)"),
            ("guard", "behind the guard (as the lab runs it)"),
        ):
            rate, cpu = statistics.median(guard_rates[mode]["rate"]), statistics.median(guard_rates[mode]["cpu"])
            guard_table.add_row(
                name,
                *(f"{value:,.0f} rows/s" for value in guard_rates[mode]["rate"]),
                f"{rate:,.0f} rows/s",
                f"{rate / bare_rate:.1%}",
                f"{cpu:.2f} s ({cpu / bare_cpu:.1%})",
            )
        tables.append(guard_table)
    for table in tables:
        console.print(table)
    if guard_rates is not None:
        console.print(
            f"the guard's own time per request (in process, an S3 GET's headers): {guard_microseconds():.2f} µs"
        )
    console.print(f"warm overhead (warm invoke - in-process scoring of the same file): {overhead * 1000:.1f} ms")
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(
        f"[dim]machine: {os.cpu_count()} cores, Python {sys.version.split()[0]}; bench process peak RSS "
        f"{peak:.0f} MiB[/]"
    )


if __name__ == "__main__":
    main()
