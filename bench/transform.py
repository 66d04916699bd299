"""SageMaker Batch Transform on the lab's SageMaker, measured beside the Lambda batch path on the same rows (issue 21).

Starts its own stack (embedded emulator + the lab's SageMaker) on free loopback ports, state in a temp dir, so it
never touches `make up`'s. Prints tables; asserts nothing. Speeds are compared within one run, rounds alternating,
because these 2-core machines are noisy.

    .venv/bin/python bench/transform.py [--model course|lab] [--rows 1000000] [--instances 1,2]
                                        [--big-rows 10000000] [--rounds 2] [--concurrent 1]

- The same --rows rows scored by the Lambda path end to end (bench/batch.py's `end_to_end`: from the start of the
  upload until the predictions object exists, warm worker) and by a transform job per --instances count (one
  headerless CSV object, SplitType Line, MultiRecord, the default 6 MB payload, --concurrent mini-batches in flight
  per instance), timed from CreateTransformJob until DescribeTransformJob says Completed (workers' start included, as
  on AWS). The runner spreads the mini-batches of that one file over the instances. Labels compared row by row
  between the Lambda's predictions and the first round's `.out`s.
- --big-rows rows (0: skip) in one object through a transform job on the largest --instances count: the peak RSS
  (VmHWM) of each worker and of the server, sampled every 0.2 s, and the job's rows/s.

--model course scores the course's model.onnx (../shared/data/course) on its input_batch.csv rows, repeated; --model
lab trains the lab's heavier model (random forest, 100 trees) here and scores generated rows.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import os
import resource
import shutil
import statistics
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from batch import COURSE_DIR, console, course_rows, end_to_end, free_port, invoke_seconds, place_model
from rich.table import Table

from mlops_lab import emulator, ops, sagemaker, services, stack
from mlops_lab.aws import Aws
from mlops_lab.contract import prediction_key
from mlops_lab.sagemaker.batch_transform import keep_lab_progress
from mlops_lab.settings import Settings
from mlops_lab.synthetic import generate

MODEL_NAME = "bench-transform-model"
ROLE = "arn:aws:iam::000000000000:role/bench-transform"
SAMPLE_S = 0.2
TERMINAL = ("Completed", "Failed", "Stopped")
PAGE = os.sysconf("SC_PAGE_SIZE")
TICK = os.sysconf("SC_CLK_TCK")


def lab_rows(size: int, target: Path) -> None:
    """Generated rows for the lab's model, written a million at a time so a 10M-row file needs no 10M-row frame."""
    step = 1_000_000
    with target.open("w", newline="") as out:
        for start in range(0, size, step):
            frame = generate(min(step, size - start), seed=size + start, with_label=False)
            # As mlops_lab.data.write_csv writes the lab's CSV, the header only once.
            frame.to_csv(out, index=False, header=start == 0, lineterminator="\n")


def headerless(source: Path, target: Path) -> None:
    """``source`` without its header line: SageMaker sends a transform's records as they are, so the input has none."""
    with source.open("rb") as reader, target.open("wb") as writer:
        reader.readline()
        shutil.copyfileobj(reader, writer, 16 * 2**20)


def model_tarball(model_path: Path, target: Path) -> Path:
    """A model.tar.gz as SageMaker expects one: the model's files at the archive's top."""
    with tarfile.open(target, "w:gz") as archive:
        archive.add(model_path, arcname="model.onnx")
    return target


def proc_memory(pid: int) -> tuple[int, int]:
    """(peak RSS since the process started: VmHWM, current RSS) in bytes."""
    fields = dict(
        line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("Vm")
    )
    return int(fields["VmHWM"].split()[0]) * 1024, int(fields["VmRSS"].split()[0]) * 1024


def proc_cpu(pid: int) -> float:
    """User + system CPU seconds of one process so far."""
    values = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(values[11]) + int(values[12])) / TICK


@dataclass
class Sampled:
    peak_bytes: int = 0
    cpu_start: float | None = None
    cpu_last: float = 0.0

    @property
    def cpu_seconds(self) -> float:
        return self.cpu_last - (self.cpu_start or 0.0)


@dataclass
class JobWatch:
    """While a job runs, every SAMPLE_S: the peak RSS and CPU seconds of each model container of this bench's state
    dir (``mlops_lab.api`` with ``--model-source`` under it) and of the named service processes."""

    state_dir: Path
    named: dict[str, int | None]
    workers: dict[int, Sampled] = field(default_factory=dict)
    services: dict[str, Sampled] = field(default_factory=dict)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __enter__(self) -> JobWatch:
        for name, pid in self.named.items():
            if pid is not None:
                # A service's CPU counts from here; its VmHWM is the peak since it started (the same before the job).
                self.services[name] = Sampled(cpu_start=proc_cpu(pid), cpu_last=proc_cpu(pid))
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        assert self._thread is not None
        self._thread.join()
        self._sample()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            self._sample()

    def _sample(self) -> None:
        marker = str(self.state_dir).encode()
        for proc in Path("/proc").glob("[0-9]*"):
            pid = int(proc.name)
            try:
                if pid not in self.workers:
                    cmdline = (proc / "cmdline").read_bytes()
                    if not (b"mlops_lab.api" in cmdline and b"--model-source" in cmdline and marker in cmdline):
                        continue
                    self.workers[pid] = Sampled(cpu_start=0.0)
                self._update(self.workers[pid], pid)
            except (OSError, KeyError, ValueError, IndexError):
                continue  # gone meanwhile: its last sample stands
        for name, pid in self.named.items():
            if pid is not None:
                try:
                    self._update(self.services[name], pid)
                except (OSError, KeyError, ValueError, IndexError):
                    continue

    @staticmethod
    def _update(sampled: Sampled, pid: int) -> None:
        peak, _ = proc_memory(pid)
        cpu = proc_cpu(pid)
        sampled.peak_bytes = max(sampled.peak_bytes, peak)
        sampled.cpu_start = cpu if sampled.cpu_start is None else sampled.cpu_start
        sampled.cpu_last = cpu


@dataclass
class JobResult:
    seconds: float
    status: str
    reason: str
    records: int
    watch: JobWatch


class Bench:
    """The stack's clients and the transform jobs run on it."""

    def __init__(self, settings: Settings, aws: Aws, concurrent: int) -> None:
        self.settings, self.aws, self.concurrent = settings, aws, concurrent
        self.s3 = aws.client("s3")
        self.sm = keep_lab_progress(
            aws.session.client("sagemaker", region_name=aws.region, endpoint_url=settings.sagemaker_emulator_url)
        )
        # Transform inputs in a bucket of their own: a .csv in the input bucket would also start the Lambda.
        self.bucket = f"{settings.prefix}-transform-bench"
        self.s3.create_bucket(Bucket=self.bucket)
        self._jobs = itertools.count(1)

    def create_model(self, model_path: Path, work: Path) -> None:
        key = "bench-transform/model.tar.gz"
        self.s3.upload_file(str(model_tarball(model_path, work / "model.tar.gz")), self.settings.model_bucket, key)
        self.sm.create_model(
            ModelName=MODEL_NAME,
            ExecutionRoleArn=ROLE,
            PrimaryContainer={"Image": "lab", "ModelDataUrl": f"s3://{self.settings.model_bucket}/{key}"},
        )

    def put_input(self, path: Path, prefix: str) -> str:
        self.s3.upload_file(str(path), self.bucket, f"{prefix}/{path.name}")
        return f"s3://{self.bucket}/{prefix}/"

    def transform(self, input_uri: str, instances: int) -> tuple[JobResult, str]:
        """One job over ``input_uri``, timed from CreateTransformJob until DescribeTransformJob says it ended;
        the result and the job's output prefix (a key prefix in the bench's bucket)."""
        name = f"bench-{next(self._jobs)}-x{instances}"
        out_prefix = f"out/{name}"
        named = {
            "server": stack.pid_of(self.settings, sagemaker.SERVICE_NAME),
            "emulator": stack.pid_of(self.settings, emulator.SERVICE_NAME),
        }
        with JobWatch(self.settings.state_dir, named) as watch:
            started = time.perf_counter()
            self.sm.create_transform_job(
                TransformJobName=name,
                ModelName=MODEL_NAME,
                MaxConcurrentTransforms=self.concurrent,
                BatchStrategy="MultiRecord",
                TransformInput={
                    "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": input_uri}},
                    "ContentType": "text/csv",
                    "SplitType": "Line",
                    "CompressionType": "None",
                },
                TransformOutput={
                    "S3OutputPath": f"s3://{self.bucket}/{out_prefix}",
                    "Accept": "text/csv",
                    "AssembleWith": "Line",
                },
                TransformResources={"InstanceType": "ml.m5.xlarge", "InstanceCount": instances},
            )
            while True:
                job = self.sm.describe_transform_job(TransformJobName=name)
                if job["TransformJobStatus"] in TERMINAL:
                    break
                time.sleep(0.1)
            seconds = time.perf_counter() - started
        progress = job.get("LabProgress", {})
        return (
            JobResult(
                seconds,
                job["TransformJobStatus"],
                job.get("FailureReason", "") or progress.get("Note", ""),
                progress.get("RecordsScored", 0),
                watch,
            ),
            out_prefix,
        )

    def delete_prefix(self, bucket: str, prefix: str) -> None:
        for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                self.s3.delete_object(Bucket=bucket, Key=item["Key"])


def differing_labels(lambda_output: Path, transform_output: Path) -> tuple[int, int]:
    """(rows whose label differs, rows compared): the Lambda's ``prediction`` column (it has a header) against the
    first field of each `.out` line (no header). A row only one side has counts as differing."""
    with lambda_output.open(newline="") as lam, transform_output.open(newline="") as out:
        lam_rows, out_rows = csv.reader(lam), csv.reader(out)
        column = next(lam_rows).index("prediction")
        differ = compared = 0
        for lam_row, out_row in itertools.zip_longest(lam_rows, out_rows):
            compared += 1
            if lam_row is None or out_row is None or lam_row[column] != out_row[0]:
                differ += 1
    return differ, compared


def mib(value: float) -> str:
    return f"{value / 2**20:,.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", choices=["lab", "course"], default="course")
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--instances", default="1,2", help="instance counts to compare, e.g. 1,2")
    parser.add_argument("--big-rows", type=int, default=10_000_000, help="rows of the memory run; 0: skip it")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of the comparison, alternating order")
    parser.add_argument(
        "--concurrent",
        type=int,
        default=1,
        help="MaxConcurrentTransforms (per instance). 1: an instance is one core's worth of work, so 2 instances on "
        "this 2-core box use both; 2 (what the container's /execution-parameters advises: one mini-batch in ONNX "
        "Runtime while the next is parsed) lets one instance take ~1.3 cores, leaving a second little to add",
    )
    args = parser.parse_args()
    try:
        instance_counts = sorted({int(count) for count in args.instances.split(",")})
    except ValueError:
        raise SystemExit(f"--instances: a list of counts like 1,2, not {args.instances!r}") from None
    if not instance_counts or instance_counts[0] < 1 or args.rows < 1 or args.rounds < 1 or args.concurrent < 1:
        raise SystemExit("--instances, --rows, --rounds and --concurrent must be at least 1")
    if args.model == "course" and not (COURSE_DIR / "model.onnx").exists():
        raise SystemExit(f"--model course: no model.onnx in {COURSE_DIR}")

    began = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-transform-"))
    settings = Settings(
        state_dir=work / "lab",
        emulator_port=free_port(),
        sagemaker_emulator_port=free_port(),
        prefix="bench",
        max_input_mb=1024,
    )
    saved_env = dict(os.environ)
    # `up`'s recipe writes the emulator's AWS profile: into this run's own config file, not the person's ~/.aws.
    os.environ["AWS_CONFIG_FILE"] = str(work / "aws-config")
    console.print(
        f"[dim]stack in {work}; emulator {settings.emulator_url}, SageMaker {settings.sagemaker_emulator_url}"
    )
    model_path = settings.model_path
    place_model(model_path, args.model)
    write_rows = course_rows if args.model == "course" else lab_rows

    rates: dict[str, list[float]] = {"lambda": [], "lambda-scoring": []} | {f"x{n}": [] for n in instance_counts}
    jobs: dict[str, list[JobResult]] = {f"x{n}": [] for n in instance_counts}
    differences: dict[str, tuple[int, int]] = {}
    big: JobResult | None = None
    big_bytes = 0
    try:
        lab = ops.bring_up(settings, services=[emulator.SERVICE_NAME, sagemaker.SERVICE_NAME])
        bench = Bench(settings, lab.aws, args.concurrent)
        bench.create_model(model_path, work)

        with_header = work / f"rows-{args.rows}.csv"
        write_rows(args.rows, with_header)
        records = work / "records" / f"rows-{args.rows}.csv"
        records.parent.mkdir()
        headerless(with_header, records)
        input_uri = bench.put_input(records, "in/rows")

        # Warm both paths once, untimed: the Lambda's worker (as bench/batch.py does) and the model data's unpacking.
        tiny = work / "tiny.csv"
        write_rows(2, tiny)
        bench.s3.upload_file(str(tiny), settings.input_bucket, "bench/tiny.txt")  # .txt: no notification
        invoke_seconds(lab.aws, settings, "bench/tiny.txt")
        tiny_records = work / "tiny-records" / "tiny.csv"
        tiny_records.parent.mkdir()
        headerless(tiny, tiny_records)
        tiny_uri = bench.put_input(tiny_records, "in/tiny")
        warm, _ = bench.transform(tiny_uri, 1)
        if warm.status != "Completed":
            raise SystemExit(f"the warm-up transform job ended {warm.status}: {warm.reason}")
        # A second 2-row job per instance count: what a job costs before its first record (workers' start, /ping).
        startup = {count: bench.transform(tiny_uri, count)[0] for count in instance_counts}

        runs = ["lambda", *(f"x{n}" for n in instance_counts)]
        for round_ in range(args.rounds):
            for run in runs if round_ % 2 == 0 else runs[::-1]:
                console.print(f"[dim]round {round_ + 1}: {run}[/]")
                if run == "lambda":
                    key = f"bench/round-{round_}.csv"
                    elapsed, uploaded, _ = end_to_end(settings, lab.aws, with_header, key)
                    rates["lambda"].append(args.rows / elapsed)
                    rates["lambda-scoring"].append(args.rows / (elapsed - uploaded))
                    if round_ == 0:
                        bench.s3.download_file(settings.output_bucket, prediction_key(key), str(work / "lambda.csv"))
                    bench.s3.delete_object(Bucket=settings.input_bucket, Key=key)
                    bench.s3.delete_object(Bucket=settings.output_bucket, Key=prediction_key(key))
                    continue
                result, out_prefix = bench.transform(input_uri, int(run[1:]))
                jobs[run].append(result)
                rates[run].append(args.rows / result.seconds if result.status == "Completed" else 0.0)
                if round_ == 0 and result.status == "Completed":
                    bench.s3.download_file(bench.bucket, f"{out_prefix}/{records.name}.out", str(work / f"{run}.out"))
                bench.delete_prefix(bench.bucket, out_prefix)
        for run in jobs:
            if (work / f"{run}.out").exists():
                differences[run] = differing_labels(work / "lambda.csv", work / f"{run}.out")
        with_header.unlink()

        if args.big_rows:
            big_source = work / f"big-{args.big_rows}.csv"
            write_rows(args.big_rows, big_source)
            big_records = work / "big-records" / "big.csv"
            big_records.parent.mkdir()
            headerless(big_source, big_records)
            big_source.unlink()
            big_bytes = big_records.stat().st_size
            console.print(f"[dim]big run: {args.big_rows:,} rows, {big_bytes / 1e9:.2f} GB[/]")
            big_uri = bench.put_input(big_records, "in/big")
            big_records.unlink()
            big, out_prefix = bench.transform(big_uri, instance_counts[-1])
            bench.delete_prefix(bench.bucket, out_prefix)
    finally:
        services.stop_services(settings)
        os.environ.clear()
        os.environ.update(saved_env)

    render(args, instance_counts, rates, jobs, differences, big, big_bytes, startup)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    console.print(
        f"[dim]machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f} at the end, Python "
        f"{sys.version.split()[0]}; bench process peak RSS {peak:.0f} MiB; whole run {time.perf_counter() - began:.0f} s"
        "[/]"
    )
    shutil.rmtree(work, ignore_errors=True)


def render(
    args: argparse.Namespace,
    instance_counts: list[int],
    rates: dict[str, list[float]],
    jobs: dict[str, list[JobResult]],
    differences: dict[str, tuple[int, int]],
    big: JobResult | None,
    big_bytes: int,
    startup: dict[int, JobResult],
) -> None:
    model = "the course's model.onnx" if args.model == "course" else "the lab's model (random forest, 100 trees)"
    console.print(
        f"model: {model}; {args.rows:,} rows; transform: one headerless CSV object, SplitType Line, MultiRecord, "
        f"6 MB payloads, MaxConcurrentTransforms {args.concurrent} per instance; {args.rounds} rounds, alternating"
    )
    lambda_rate = statistics.median(rates["lambda"])
    table = Table(title="Lambda path vs Batch Transform on the same rows (rows/s; ratio of medians to the Lambda's)")
    for column in ("path", *(f"round {i + 1}" for i in range(args.rounds)), "median", "vs Lambda", "labels differing"):
        table.add_column(column, justify="right")
    table.add_row(
        "Lambda end to end (upload → predictions object)",
        *(f"{rate:,.0f}" for rate in rates["lambda"]),
        f"{lambda_rate:,.0f}",
        "100%",
        "—",
    )
    table.add_row(
        "Lambda, upload time left out",
        *(f"{rate:,.0f}" for rate in rates["lambda-scoring"]),
        f"{statistics.median(rates['lambda-scoring']):,.0f}",
        f"{statistics.median(rates['lambda-scoring']) / lambda_rate:.0%}",
        "—",
    )
    for count in instance_counts:
        run = f"x{count}"
        rate = statistics.median(rates[run])
        differ = differences.get(run)
        table.add_row(
            f"transform, {count} instance{'s' if count > 1 else ''} (Create → Completed)",
            *(f"{value:,.0f}" for value in rates[run]),
            f"{rate:,.0f}",
            f"{rate / lambda_rate:.0%}",
            f"{differ[0]:,} of {differ[1]:,} (must be 0)" if differ else "not compared (job failed)",
        )
    console.print(table)
    if len(instance_counts) > 1:
        base = statistics.median(rates[f"x{instance_counts[0]}"])
        speed = Table(title=f"Instances: speed-up over {instance_counts[0]} (medians)")
        for column in ("instances", "rows/s", "speed-up"):
            speed.add_column(column, justify="right")
        for count in instance_counts:
            rate = statistics.median(rates[f"x{count}"])
            speed.add_row(str(count), f"{rate:,.0f}", f"{rate / base:.2f}x" if base else "—")
        console.print(speed)
    phases = Table(title="Where a job's time goes: wall time, CPU seconds by process (workers: since they started)")
    for column in ("job", "status", "wall", "workers CPU", "cores the workers used", "server CPU", "emulator CPU"):
        phases.add_column(column, justify="right")
    for count, result in startup.items():
        phases.add_row(*job_phases(f"2-row job, x{count} (start-up)", result))
    for run, results in jobs.items():
        for number, result in enumerate(results, 1):
            phases.add_row(*job_phases(f"{run} round {number}", result))
    if big is not None:
        phases.add_row(*job_phases("big", big))
    console.print(phases)
    if big is not None:
        memory = Table(
            title=f"{args.big_rows:,} rows in one {big_bytes / 1e9:.2f} GB object, {len(big.watch.workers)} "
            f"instance(s): peak RSS (VmHWM, sampled every {SAMPLE_S} s)"
        )
        for column in ("process", "peak RSS", "CPU"):
            memory.add_column(column, justify="right")
        for pid, sampled in sorted(big.watch.workers.items()):
            memory.add_row(f"worker (pid {pid})", mib(sampled.peak_bytes), f"{sampled.cpu_seconds:.1f} s")
        for name, sampled in big.watch.services.items():
            memory.add_row(f"{name} (peak since it started)", mib(sampled.peak_bytes), f"{sampled.cpu_seconds:.1f} s")
        console.print(memory)
        rate = big.records / big.seconds if big.status == "Completed" else 0.0
        console.print(
            f"big job: {big.status} {big.reason} in {big.seconds:.1f} s, {big.records:,} records scored, "
            f"{rate:,.0f} rows/s; worker peak (goal < 512 MiB): "
            f"{mib(max((s.peak_bytes for s in big.watch.workers.values()), default=0))}"
        )


def job_phases(label: str, result: JobResult) -> list[str]:
    workers_cpu = sum(sampled.cpu_seconds for sampled in result.watch.workers.values())
    services_ = result.watch.services
    return [
        label,
        result.status + (f" ({result.reason})" if result.reason else ""),
        f"{result.seconds:.1f} s",
        f"{workers_cpu:.1f} s",
        f"{workers_cpu / result.seconds:.2f}",
        f"{services_['server'].cpu_seconds:.1f} s" if "server" in services_ else "—",
        f"{services_['emulator'].cpu_seconds:.1f} s" if "emulator" in services_ else "—",
    ]


if __name__ == "__main__":
    main()
