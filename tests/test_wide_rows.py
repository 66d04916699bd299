"""Memory and /tmp fit together: a chunk is capped by text as well as by rows (a file of very wide rows cannot fill
the function's memory ``chunk_rows`` at a time), and the function's /tmp is sized for the largest input and its
predictions. The peak-memory measurement runs the handler in a process of its own, on a local stand-in for S3."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from mlops_lab import batch_spec
from mlops_lab.inference import TabularModel, read_csv_chunks, score_csv
from mlops_lab.settings import Settings
from tests.support import HANDLER_PATH, parse_csv, report

WIDE = 100_000  # characters of free text in each row of the wide files


def text_model() -> bytes:
    """A regressor over a free-text column (no vocabulary: any string goes) and a number: its prediction is the
    number. Scoring a file of huge notes costs what parsing them costs."""
    from onnx import TensorProto, helper

    note = helper.make_tensor_value_info("note", TensorProto.STRING, [None, 1])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 1])
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "wide-rows", [note, x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model.SerializeToString()


def wide_csv(rows: int, width: int = WIDE) -> str:
    return "note,x\n" + "".join(f"{chr(97 + i % 26) * width},{i}\n" for i in range(rows))


# -- chunks --------------------------------------------------------------------------------------------------------


def test_a_chunk_ends_at_the_line_that_reaches_the_cap() -> None:
    text = wide_csv(50, 10_000)
    chunks = list(read_csv_chunks(io.StringIO(text), ["note", "x"], 8192, chunk_chars=25_000))
    assert [len(rows) for _, _, rows in chunks] == [3] * 16 + [2]  # 3 lines of ~10 kB reach 25 kB
    assert [first for first, _, _ in chunks] == list(range(2, 52, 3))  # row numbers run on across chunks
    uncapped = list(read_csv_chunks(io.StringIO(text), ["note", "x"], 8192))
    assert len(uncapped) == 1
    assert [row for _, _, rows in chunks for row in rows] == uncapped[0][2]


def test_a_row_wider_than_the_cap_is_a_chunk_of_its_own() -> None:
    chunks = list(read_csv_chunks(io.StringIO(wide_csv(4, 1000)), ["note", "x"], 8192, chunk_chars=10))
    assert [len(rows) for _, _, rows in chunks] == [1, 1, 1, 1]


def test_the_row_cap_still_holds_under_the_text_cap() -> None:
    chunks = list(read_csv_chunks(io.StringIO(wide_csv(10, 5)), ["note", "x"], 4, chunk_chars=10**9))
    assert [len(rows) for _, _, rows in chunks] == [4, 4, 2]


def test_capped_scoring_writes_the_same_output() -> None:
    """The same rows and predictions however the file is cut (a chunk holding a quoted newline is re-encoded field
    by field, so its bytes may differ: its CSV does not)."""
    model, text = TabularModel(text_model()), wide_csv(40, 3_000) + 'with "quotes",1\n"two\nlines",2\n'
    outputs = []
    for cap in (None, 7_000, 1):
        sink = io.StringIO()
        summary = score_csv(model, io.StringIO(text, newline=""), sink, chunk_rows=8192, chunk_chars=cap)
        outputs.append((parse_csv(sink.getvalue()), summary.rows))
    assert outputs[0] == outputs[1] == outputs[2]
    assert outputs[0][1] == 42


# -- configuration: the function gets the cap, and /tmp room for input and output --------------------------------


def test_the_function_gets_the_cap_and_the_handler_reads_it(handler_module: ModuleType) -> None:
    settings = Settings(_env_file=None, chunk_mb=3)
    environment = batch_spec.function_environment(settings)
    assert environment["CHUNK_BYTES"] == str(3 * 1024 * 1024)
    assert handler_module.Config.from_env(environment).chunk_bytes == 3 * 1024 * 1024


@pytest.mark.parametrize(("max_input_mb", "ephemeral"), [(1, 512), (100, 512), (512, 1600), (3392, 10240)])
def test_tmp_is_sized_for_the_largest_input_and_its_output(max_input_mb: int, ephemeral: int) -> None:
    settings = Settings(_env_file=None, max_input_mb=max_input_mb)
    configuration = batch_spec.function_configuration(settings, "ROLE", None)
    assert configuration["EphemeralStorage"] == {"Size": ephemeral}
    assert ephemeral >= max_input_mb * 3  # the input, and up to twice its size of predictions


def test_an_input_limit_no_tmp_can_hold_is_refused() -> None:
    with pytest.raises(ValueError, match="at most 3392"):
        Settings(_env_file=None, max_input_mb=3393)


def test_an_ephemeral_storage_too_small_for_the_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="need 1600 MB of /tmp"):
        Settings(_env_file=None, max_input_mb=512, lambda_ephemeral_storage_mb=1024)
    assert Settings(_env_file=None, max_input_mb=512, lambda_ephemeral_storage_mb=2048).lambda_ephemeral_mb == 2048


def counted(handler_module: ModuleType, text: str) -> Any:
    data = text.encode()
    return handler_module.Counted(len(data), data.count(b"\n"), data.count(b'"'), data.count(b","))


def scored_bytes(model: TabularModel, text: str) -> int:
    sink = io.StringIO()
    score_csv(model, io.StringIO(text, newline=""), sink)
    return len(sink.getvalue().encode())


def test_the_output_bound_covers_the_worst_rows(handler_module: ModuleType) -> None:
    """The smallest rows a file can have (empty fields) grow the most: the bound still holds."""
    model = TabularModel(text_model())
    text = "note,x\n" + ",1\n" * 1000
    assert scored_bytes(model, text) <= handler_module.output_bound(model, counted(handler_module, text))


def test_the_output_bound_covers_rows_written_field_by_field(handler_module: ModuleType) -> None:
    """A quoted field spanning lines makes its chunk be written field by field: bare quotes come out doubled, in
    quotes. The bound counts the file's quotes for that; without them it would be short."""
    model = TabularModel(text_model())
    text = "note,x\n" + ('q"' * 40 + ",1\n") * 500 + '"two\nlines",2\n'
    written = scored_bytes(model, text)
    assert written <= handler_module.output_bound(model, counted(handler_module, text))
    unquoted = handler_module.Counted(len(text), text.count("\n"))
    assert written > handler_module.output_bound(model, unquoted)


# -- peak memory of a file of wide rows, with and without the cap -------------------------------------------------

MEASURE = """
import importlib.util, io, json, os, sys, time
from pathlib import Path

handler_path, data_path, model_path, chunk_bytes = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
spec = importlib.util.spec_from_file_location("batch_predict_handler", handler_path)
handler = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = handler
spec.loader.exec_module(handler)
handler.logger.disabled = True


class LocalS3:
    "The calls the handler makes, on local files."

    def head_object(self, Bucket, Key):
        return {"ETag": '"model"'}

    def get_object(self, Bucket, Key, IfMatch=None):
        if Key == "model.onnx":
            return {"ETag": '"model"', "Body": io.BytesIO(Path(model_path).read_bytes())}
        return {"ETag": '"input"', "ContentLength": os.path.getsize(data_path), "Body": open(data_path, "rb")}

    def upload_file(self, path, bucket, key, ExtraArgs=None):
        self.uploaded = os.path.getsize(path)

    def put_object(self, **kwargs):
        raise AssertionError(kwargs["Body"][:2000])


def rss():
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


s3, models = LocalS3(), handler.ModelCache()
config = handler.Config("out", "in", "model.onnx", max_input_bytes=1 << 40, chunk_bytes=chunk_bytes)
models.get(s3, "in", "model.onnx")
before = rss()
started = time.perf_counter()
event = {"Records": [{"s3": {"bucket": {"name": "in"}, "object": {"key": "wide.csv"}}}]}
(result,) = handler.handle(event, config, s3, models)["results"]
seconds = time.perf_counter() - started
# VmHWM: this program's own high-water mark (ru_maxrss would also count the forked parent's pages before the exec).
peak = next(int(line.split()[1]) for line in open("/proc/self/status") if line.startswith("VmHWM:")) * 1024
print(json.dumps({"rows": result["rows"], "before": before, "peak": peak, "seconds": seconds, "out": s3.uploaded}))
"""


def measure(tmp_path: Path, data: Path, chunk_bytes: int) -> dict[str, Any]:
    model = tmp_path / "text.onnx"
    model.write_bytes(text_model())
    script = tmp_path / "measure.py"
    script.write_text(MEASURE)
    done = subprocess.run(
        [sys.executable, str(script), str(HANDLER_PATH), str(data), str(model), str(chunk_bytes)],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout)


def test_byte_cap_bounds_peak_memory_of_wide_rows(tmp_path: Path) -> None:
    """1,000 rows of 100 kB of text (~100 MB): 8192 rows a chunk means the whole file in memory at once, several
    times over (its lines, the parsed fields, the output lines); capped at 8 MB a chunk is ~80 rows."""
    rows = 1000
    data = tmp_path / "wide.csv"
    with data.open("w") as sink:
        sink.write("note,x\n")
        for i in range(rows):
            sink.write(f"{chr(97 + i % 26) * WIDE},{i}\n")
    uncapped = measure(tmp_path, data, 1 << 62)
    capped = measure(tmp_path, data, 8 * 1024 * 1024)
    growth = {name: (m["peak"] - m["before"]) / 2**20 for name, m in (("uncapped", uncapped), ("capped", capped))}
    report(
        f"wide rows ({rows} x {WIDE // 1000} kB, {data.stat().st_size / 2**20:.0f} MiB) through the handler: peak RSS "
        f"{uncapped['peak'] / 2**20:.0f} MiB uncapped (+{growth['uncapped']:.0f} MiB scoring, "
        f"{uncapped['seconds']:.1f} s), {capped['peak'] / 2**20:.0f} MiB with 8 MiB chunks "
        f"(+{growth['capped']:.0f} MiB, {capped['seconds']:.1f} s)"
    )
    assert uncapped["rows"] == capped["rows"] == rows
    assert uncapped["out"] == capped["out"]
    assert growth["capped"] < 100  # about two chunks' text, a few times over
    assert growth["uncapped"] > 3 * growth["capped"]
