"""Benchmark the model API against baselines (prints a table; not a test).

    .venv/bin/python bench/api.py [--duration 5] [--rounds 3] [--connections 1,8,64] [--server-core 0] [--client-core 1]
                                  [--only bare,api] [--baseline-src DIR]

Every server is pinned to one core with ``taskset`` (all of them to the same core; only the one under load is busy);
the load generator ``wrk`` runs pinned to another core and targets 127.0.0.1 only. Each cell is ``--duration``
seconds of single-row POSTs at 1, 8 and 64 connections. The servers are started once and measured in interleaved
rounds (round 1: every row at 1 connection, then every row at 8, ...; round 2 the same), and each cell reports the
median over the rounds, so a burst of load from another job on a shared machine hits all rows alike instead of
whichever row happened to be running. The ratios (req/s ÷ the bare endpoint's, ÷ mlflow's) are the numbers to
compare across runs; absolute req/s depend on what else the machine is doing (a note on that is printed with the table).

Rows (one process, one uvicorn worker each):
  bare        FastAPI ``async def`` endpoint returning a constant (the framework's ceiling)
  api         ``mlops_lab.api`` POST /predict (schema validation + the shared ONNX core), access log on
  api-nolog   the same with LAB_API_ACCESS_LOG=false
  mlflow      ``mlflow models serve`` (env-manager local) on the same trained pipeline (sklearn flavor)
  course      course-style ``def`` endpoint: pydantic model -> pandas DataFrame per request -> sklearn predict_proba
  api-base    ``api`` from another source tree (``--baseline-src DIR``, e.g. ``git archive`` of an older commit's
              ``src``): a before/after comparison within one run

The model: a sklearn pipeline (scale, one-hot, random forest) trained here on the course's batch file (with
a synthetic label; synthetic rows when ../shared is absent), exported with skl2onnx the way the course model is.
wrk comes from Debian: ``apt-get install -y wrk``.
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import platform
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx
from pydantic import BaseModel

ROOT = Path(__file__).resolve().parents[1]
COURSE_CSV = ROOT.parent / "shared" / "data" / "course" / "input_batch.csv"
INT_COLUMNS = ["age", "capital_gain", "capital_loss", "hours_per_week"]
STR_COLUMNS = [
    "work_class",
    "education",
    "marital_status",
    "occupation",
    "relationship",
    "race",
    "sex",
    "native_country",
]


# -- the model ---------------------------------------------------------------------------------------------------


def training_frame(rows: int = 5000):
    import numpy as np
    import pandas as pd

    if COURSE_CSV.exists():
        frame = pd.read_csv(COURSE_CSV, nrows=rows)
    else:
        rng = np.random.default_rng(0)
        frame = pd.DataFrame(
            {
                "age": rng.integers(18, 90, rows),
                "capital_gain": rng.integers(0, 5000, rows),
                "capital_loss": rng.integers(0, 500, rows),
                "hours_per_week": rng.integers(1, 99, rows),
                **{c: rng.choice([f"{c}-{i}" for i in range(6)], rows) for c in STR_COLUMNS},
            }
        )
    for column in INT_COLUMNS:
        frame[column] = frame[column].astype("int64")
    for column in STR_COLUMNS:
        frame[column] = frame[column].astype(str)
    score = (frame["age"] > 40).astype(int) + (frame["hours_per_week"] > 45) + (frame["capital_gain"] > 0)
    frame = frame[INT_COLUMNS + STR_COLUMNS]
    return frame, np.where(score >= 2, ">50K", "<=50K")


def build_models(workdir: Path) -> dict:
    from skl2onnx import to_onnx
    from skl2onnx.common.data_types import Int64TensorType, StringTensorType
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, StandardScaler

    frame, target = training_frame()
    pipeline = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        ("num", StandardScaler(), INT_COLUMNS),
                        ("cat", OneHotEncoder(handle_unknown="ignore"), STR_COLUMNS),
                    ]
                ),
            ),
            ("clf", RandomForestClassifier(n_estimators=50, max_depth=10, random_state=0, n_jobs=1)),
        ]
    ).fit(frame, target)
    initial = [(c, Int64TensorType([None, 1])) for c in INT_COLUMNS] + [
        (c, StringTensorType([None, 1])) for c in STR_COLUMNS
    ]
    onx = to_onnx(pipeline, initial_types=initial, options={"zipmap": False}, target_opset={"": 17, "ai.onnx.ml": 3})
    entry = onx.metadata_props.add()
    entry.key, entry.value = "classes", json.dumps([str(c) for c in pipeline.classes_])
    (workdir / "model.onnx").write_bytes(onx.SerializeToString())
    with (workdir / "pipeline.pkl").open("wb") as handle:
        pickle.dump(pipeline, handle)
    record = {k: (int(v) if k in INT_COLUMNS else str(v)) for k, v in frame.iloc[0].items()}
    mlflow_dir = workdir / "mlflow-model"
    mlflow_error = None
    try:
        import mlflow.sklearn

        # our own model, just trained: trust the tree types skops would otherwise refuse to load
        mlflow.sklearn.save_model(
            pipeline, str(mlflow_dir), skops_trusted_types=["numpy.dtype", "sklearn.tree._tree.Tree"]
        )
    except Exception as exc:
        mlflow_error = f"{type(exc).__name__}: {exc}"
    return {"record": record, "mlflow_dir": mlflow_dir, "mlflow_error": mlflow_error}


# -- the baseline servers (run as `bench/api.py --serve KIND`) -------------------------------------------------------


class CourseRecord(BaseModel):
    age: int
    work_class: str
    education: str
    marital_status: str
    occupation: str
    relationship: str
    race: str
    sex: str
    capital_gain: int
    capital_loss: int
    hours_per_week: int
    native_country: str


def serve(kind: str, port: int, workdir: Path) -> None:
    import uvicorn
    from fastapi import FastAPI

    app = FastAPI()
    if kind == "bare":

        @app.post("/predict")
        async def constant() -> dict:
            return {"status": "ok"}

    elif kind == "course":
        import pandas as pd

        with (workdir / "pipeline.pkl").open("rb") as handle:
            pipeline = pickle.load(handle)

        @app.post("/predict")
        def predict(record: CourseRecord) -> dict:  # as in the course: a sync endpoint, a DataFrame per request
            frame = pd.DataFrame([record.model_dump()])
            probabilities = pipeline.predict_proba(frame)[0]
            classes = [str(c) for c in pipeline.classes_]
            return {
                "label": classes[int(probabilities.argmax())],
                "probabilities": dict(zip(classes, map(float, probabilities), strict=True)),
            }

    else:
        raise SystemExit(f"unknown kind {kind}")
    uvicorn.run(app, host="127.0.0.1", port=port, access_log=False, log_level="warning")


# -- running a cell ---------------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start(
    kind: str, workdir: Path, core: int, log: Path, baseline_src: Path | None = None
) -> tuple[subprocess.Popen, str, str, dict]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAB_")}
    env |= {
        "OMP_NUM_THREADS": "1",
        "MLFLOW_TRACKING_URI": f"file://{workdir}/mlruns",
        # mlflow's serve execs `uvicorn` by name: the one beside this interpreter
        "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
    }
    body: dict = {}
    if kind in ("api", "api-nolog", "api-base"):
        env |= {
            "LAB_API_MODEL_SOURCE": str(workdir / "model.onnx"),
            "LAB_API_MODEL_POLL_S": "0",
            "LAB_API_ACCESS_LOG": "false" if kind == "api-nolog" else "true",
        }
        if kind == "api-base":  # the other tree's mlops_lab shadows the installed one
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(baseline_src), env.get("PYTHONPATH")]))
        argv = [sys.executable, "-m", "mlops_lab.api", "--port", str(port)]
        path = "/predict"
    elif kind == "mlflow":
        mlflow = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or "mlflow"
        argv = [
            mlflow,
            "models",
            "serve",
            "-m",
            str(workdir / "mlflow-model"),
            "--env-manager",
            "local",
            "-h",
            "127.0.0.1",
            "-p",
            str(port),
            "-w",
            "1",
        ]
        path = "/invocations"
        body = {"split": True}
    else:
        argv = [sys.executable, __file__, "--serve", kind, "--port", str(port), "--workdir", str(workdir)]
        path = "/predict"
    with log.open("ab") as sink:
        process = subprocess.Popen(
            ["taskset", "-c", str(core), *argv], stdout=sink, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return process, f"http://127.0.0.1:{port}", path, body


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def wait_ready(process: subprocess.Popen, url: str, path: str, payload: bytes, timeout: float) -> str | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            return f"exited with {process.returncode}"
        try:
            response = httpx.post(url + path, content=payload, headers={"content-type": "application/json"}, timeout=5)
            if response.status_code == 200:
                return None
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    return f"not answering 200 within {timeout:.0f} s"


def group_cpu_seconds(pgid: int) -> float:
    """User + system CPU time of every process in a process group (a server and any workers it forked)."""
    ticks = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid:  # fields[0] is the state; [2] the process group; [11], [12] utime, stime
            ticks += int(fields[11]) + int(fields[12])
    return ticks / os.sysconf("SC_CLK_TCK")


def wrk(
    url: str, payload: bytes, connections: int, duration: int, core: int, workdir: Path, server_pgid: int | None = None
) -> dict:
    script = workdir / "post.lua"
    script.write_text(
        'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
        f"wrk.body = {json.dumps(payload.decode())}\n"
    )
    cpu_before = group_cpu_seconds(server_pgid) if server_pgid else None
    out = subprocess.run(
        [
            "taskset",
            "-c",
            str(core),
            "wrk",
            "-t1",
            f"-c{connections}",
            f"-d{duration}s",
            "--timeout",
            "10s",
            "--latency",
            "-s",
            str(script),
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    cpu = group_cpu_seconds(server_pgid) - cpu_before if server_pgid else None
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    percentiles = {p: _ms(v, u) for p, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    errors = re.search(r"Socket errors: (.*)", out)
    return {
        "rps": rps,
        "p50": percentiles.get("50"),
        "p99": percentiles.get("99"),
        "cpu_us": cpu / requests * 1e6 if cpu is not None and requests else None,
        "bad": int(non_2xx.group(1)) if non_2xx else 0,
        "socket_errors": errors.group(1) if errors else "",
    }


def _ms(value: str, unit: str) -> float:
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def machine_note() -> str:
    """What the figures were measured on, and how busy the machine was (other jobs share it)."""
    try:
        model = next(
            line.split(":", 1)[1].strip()
            for line in Path("/proc/cpuinfo").read_text().splitlines()
            if line.startswith("model name")
        )
    except (OSError, StopIteration):
        model = platform.processor() or "unknown CPU"
    extras = []
    for module in ("uvloop", "httptools"):
        try:
            __import__(module)
            extras.append(f"{module} yes")
        except ImportError:
            extras.append(f"{module} no")
    return f"{os.cpu_count()} cores ({model}), Python {platform.python_version()}, {', '.join(extras)}"


def load_average() -> str:
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=5, help="seconds per cell (default 5)")
    parser.add_argument("--rounds", type=int, default=1, help="interleaved rounds; cells report the median (default 1)")
    parser.add_argument("--connections", default="1,8,64")
    parser.add_argument("--server-core", type=int, default=0)
    parser.add_argument("--client-core", type=int, default=1)
    parser.add_argument("--only", help="comma-separated rows to run (bare,api,api-nolog,mlflow,course,api-base)")
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="a source tree (holding mlops_lab/) to run as row api-base, e.g. an older commit's src",
    )
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--workdir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, Path(args.workdir))
        return
    missing = [tool for tool in ("wrk", "taskset") if shutil.which(tool) is None]
    if missing:
        raise SystemExit(f"missing {', '.join(missing)}: install with `apt-get install -y wrk util-linux` (Debian)")
    connections = [int(c) for c in args.connections.split(",")]
    kinds = (args.only or "bare,api,api-nolog,mlflow,course").split(",")
    if args.baseline_src and "api-base" not in kinds:
        kinds.insert(kinds.index("api") + 1 if "api" in kinds else len(kinds), "api-base")
    if "api-base" in kinds and not (args.baseline_src and (args.baseline_src / "mlops_lab").is_dir()):
        raise SystemExit("row api-base needs --baseline-src DIR with DIR/mlops_lab in it")
    workdir = Path(tempfile.mkdtemp(prefix="bench-api-"))
    servers: dict[str, tuple[subprocess.Popen, str, str, bytes]] = {}
    problems: dict[str, str] = {}
    try:
        print(f"building the model in {workdir} ...", file=sys.stderr)
        built = build_models(workdir)
        record = built["record"]
        columns = list(record)
        bodies = {
            "records": json.dumps(record).encode(),
            "split": json.dumps({"dataframe_split": {"columns": columns, "data": [list(record.values())]}}).encode(),
        }
        for kind in kinds:
            payload = bodies["split"] if kind == "mlflow" else bodies["records"]
            if kind == "mlflow" and built["mlflow_error"]:
                problems[kind] = f"not run: saving the mlflow model failed ({built['mlflow_error']})"
                continue
            log = workdir / f"{kind}.log"
            process, url, path, _ = start(kind, workdir, args.server_core, log, args.baseline_src)
            servers[kind] = (process, url, path, payload)
            problem = wait_ready(process, url, path, payload, 120 if kind == "mlflow" else 60)
            if problem:
                tail = " | ".join(log.read_text(errors="replace").strip().splitlines()[-3:])
                problems[kind] = f"not run: server {problem} ({tail[:200]})"
                stop(servers.pop(kind)[0])
        load_before = load_average()
        samples: dict[str, dict[int, list[dict]]] = {kind: {n: [] for n in connections} for kind in servers}
        for round_ in range(1, args.rounds + 1):
            for n in connections:
                for kind, (process, url, path, payload) in servers.items():
                    print(f"round {round_}/{args.rounds}: {kind}, {n} connections ...", file=sys.stderr)
                    samples[kind][n].append(
                        wrk(url + path, payload, n, args.duration, args.client_core, workdir, process.pid)
                    )
        rows = []
        for kind in kinds:
            if kind in problems:
                rows.append((kind, None, problems[kind]))
            elif kind in samples:
                rows.append((kind, {n: median_cell(cells) for n, cells in samples[kind].items()}, None))
        print_table(rows, connections, args)
        print(f"\nmachine: {machine_note()}; load average (1/5/15 min) before: {load_before}, after: {load_average()}")
    finally:
        for process, *_ in servers.values():
            stop(process)
        shutil.rmtree(workdir, ignore_errors=True)


def median_cell(cells: list[dict]) -> dict:
    return {
        "rps": statistics.median(c["rps"] for c in cells),
        "p50": statistics.median(c["p50"] for c in cells),
        "p99": statistics.median(c["p99"] for c in cells),
        "cpu_us": statistics.median(c["cpu_us"] for c in cells) if all(c["cpu_us"] for c in cells) else None,
        "bad": sum(c["bad"] for c in cells),
    }


def print_table(rows, connections, args) -> None:
    rounds = f", median of {args.rounds} interleaved rounds" if args.rounds > 1 else ""
    print(
        f"\nsingle-row POST, servers pinned to core {args.server_core}, wrk on core {args.client_core}, "
        f"{args.duration} s per cell{rounds}; req/s, p50/p99 ms\n"
    )
    header = "| server | " + " | ".join(f"c={n} req/s | c={n} p50/p99" for n in connections) + " | non-2xx |"
    print(header)
    print("|" + "---|" * (2 * len(connections) + 2))
    for kind, cells, problem in rows:
        if problem:
            print(f"| {kind} | {problem[:160]} |" + " |" * (2 * len(connections)))
            continue
        parts = []
        bad = 0
        for n in connections:
            cell = cells[n]
            parts += [f"{cell['rps']:,.0f}", f"{cell['p50']:.2f} / {cell['p99']:.2f}"]
            bad += cell["bad"]
        print(f"| {kind} | " + " | ".join(parts) + f" | {bad} |")
    measured = {kind: cells for kind, cells, problem in rows if not problem}
    references = [ref for ref in ("bare", "mlflow") if ref in measured]
    cpu = [(kind, cells) for kind, cells in measured.items() if all(cells[n]["cpu_us"] for n in connections)]
    if cpu:
        print(
            "\nserver CPU time per request (µs, user + system, all the server's processes): less sensitive than req/s"
            " to other jobs taking the server's core\n"
        )
        print(
            "| server | "
            + " | ".join(f"c={n}" for n in connections)
            + (" | c=64 bare ÷ this |" if "bare" in measured and 64 in connections else " |")
        )
        print("|" + "---|" * (1 + len(connections) + ("bare" in measured and 64 in connections)))
        for kind, cells in cpu:
            ratio = ""
            if "bare" in measured and 64 in connections and measured["bare"][64]["cpu_us"]:
                ratio = f" | {measured['bare'][64]['cpu_us'] / cells[64]['cpu_us']:.0%}"
            print(f"| {kind} | " + " | ".join(f"{cells[n]['cpu_us']:.0f}" for n in connections) + ratio + " |")
    if not references:
        return
    print("\nratios: req/s ÷ the reference's req/s at the same number of connections\n")
    print("| server | " + " | ".join(f"c={n} ÷ {ref}" for ref in references for n in connections) + " |")
    print("|" + "---|" * (1 + len(references) * len(connections)))
    for kind, cells in measured.items():
        ratios = []
        for ref in references:
            for n in connections:
                value = cells[n]["rps"] / measured[ref][n]["rps"]
                ratios.append(f"{value:.0%}" if ref == "bare" else f"{value:,.1f}×")
        print(f"| {kind} | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main()
