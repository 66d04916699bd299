"""Whose fault it is: the batch handler writes an error report only for a problem of the file itself, and raises every
other failure (S3 reading the input or taking the output, memory, /tmp, a model it cannot load) so that Lambda retries
the event and then keeps it in the failure queue. Called directly, ``handle(event, config, s3, models)``, against the
emulator's S3, with faults injected around the real client."""

from __future__ import annotations

import errno
import json
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from boto3.exceptions import S3UploadFailedError
from botocore.exceptions import ClientError, IncompleteReadError

from mlops_lab.contract import META_INPUT_ETAG, error_key, prediction_key
from mlops_lab.inference import TabularModel
from tests.support import Lab, error_code

PREFIX = "direct/faults/"  # in the model bucket: no notification watches it, so the deployed function never races


def s3_event(bucket: str, *keys: str) -> dict[str, Any]:
    return {
        "Records": [
            {"eventName": "ObjectCreated:Put", "s3": {"bucket": {"name": bucket}, "object": {"key": key}}}
            for key in keys
        ]
    }


def server_error(operation: str, code: str = "InternalError", status: int = 500) -> ClientError:
    return ClientError(
        {"Error": {"Code": code, "Message": f"injected {code}"}, "ResponseMetadata": {"HTTPStatusCode": status}},
        operation,
    )


class FaultyS3:
    """The real S3 client, except that ``faults[method](kwargs)`` may return an exception to raise instead of the
    call, or ``wrap[method](response)`` may replace what the call returned."""

    def __init__(
        self,
        real: Any,
        faults: dict[str, Callable[[dict[str, Any]], Exception | None]] | None = None,
        wrap: dict[str, Callable[[dict[str, Any], Any], Any]] | None = None,
    ) -> None:
        self._real, self._faults, self._wrap = real, faults or {}, wrap or {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self._real, name)
        fault, wrap = self._faults.get(name), self._wrap.get(name)
        if fault is None and wrap is None:
            return method

        def call(*args: Any, **kwargs: Any) -> Any:
            error = fault(kwargs) if fault else None
            if error is not None:
                raise error
            response = method(*args, **kwargs)
            return wrap(kwargs, response) if wrap else response

        return call


class BrokenBody:
    """A response body that breaks off after its first block, as a connection reset mid-download does."""

    def __init__(self, real: Any) -> None:
        self._real, self._reads = real, 0

    def read(self, amount: int | None = None) -> bytes:
        self._reads += 1
        if self._reads > 1:
            raise IncompleteReadError(actual_bytes=10, expected_bytes=10_000)
        return self._real.read(10)

    def __enter__(self) -> BrokenBody:
        return self

    def __exit__(self, *_: object) -> None:
        self._real.close()


class Run:
    """The handler's ``handle`` on the session's stack, with an S3 client (real, or with faults) of the test's."""

    def __init__(self, module: ModuleType, lab: Lab) -> None:
        settings = lab.settings
        self.module, self.lab, self.s3 = module, lab, lab.s3()
        self.bucket, self.output = settings.model_bucket, settings.output_bucket
        self.config = module.Config(settings.output_bucket, settings.model_bucket, settings.model_key)

    def put(self, name: str, body: bytes) -> str:
        key = PREFIX + name
        self.s3.put_object(Bucket=self.bucket, Key=key, Body=body)
        for output in (prediction_key(key), error_key(key)):  # from an earlier run of this test
            self.s3.delete_object(Bucket=self.output, Key=output)
        return key

    def __call__(self, *keys: str, s3: Any = None, config: Any = None) -> dict[str, Any]:
        return self.module.handle(
            s3_event(self.bucket, *keys), config or self.config, s3 or self.s3, self.module.ModelCache()
        )

    def outputs(self, key: str) -> dict[str, bool]:
        """Which outputs the run left for ``key``."""
        found = {}
        for kind, output in (("predictions", prediction_key(key)), ("report", error_key(key))):
            try:
                self.s3.head_object(Bucket=self.output, Key=output)
                found[kind] = True
            except ClientError as error:
                assert error_code(error) in ("404", "NoSuchKey", "NotFound")
                found[kind] = False
        return found

    def report(self, key: str) -> dict[str, Any]:
        return json.loads(self.s3.get_object(Bucket=self.output, Key=error_key(key))["Body"].read())


@pytest.fixture
def run(handler_module: ModuleType, lab_stack: Lab) -> Run:
    return Run(handler_module, lab_stack)


@pytest.fixture
def good_csv(sample_csv: Path) -> bytes:
    return sample_csv.read_bytes()


NOTHING = {"predictions": False, "report": False}


def is_input_get(bucket: str) -> Callable[[dict[str, Any]], bool]:
    return lambda kwargs: kwargs.get("Bucket") == bucket and str(kwargs.get("Key", "")).startswith(PREFIX)


# -- S3 ------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "status"), [("InternalError", 500), ("SlowDown", 503), ("AccessDenied", 403)], ids=["500", "503", "403"]
)
def test_an_s3_error_reading_the_input_is_raised_not_reported(
    run: Run, good_csv: bytes, code: str, status: int
) -> None:
    key = run.put(f"read-{code}.csv", good_csv)
    reading_input = is_input_get(run.bucket)
    s3 = FaultyS3(
        run.s3, {"get_object": lambda kw: server_error("GetObject", code, status) if reading_input(kw) else None}
    )
    with pytest.raises(ClientError) as raised:
        run(key, s3=s3)
    assert error_code(raised.value) == code
    assert run.outputs(key) == NOTHING  # above all: no "could not read this file" report blaming the file


def test_a_download_that_breaks_off_is_raised_not_reported(run: Run, good_csv: bytes) -> None:
    key = run.put("broken-body.csv", good_csv)
    reading_input = is_input_get(run.bucket)
    s3 = FaultyS3(
        run.s3,
        wrap={"get_object": lambda kw, r: {**r, "Body": BrokenBody(r["Body"])} if reading_input(kw) else r},
    )
    with pytest.raises(IncompleteReadError):
        run(key, s3=s3)
    assert run.outputs(key) == NOTHING


def test_an_input_deleted_before_it_was_read_is_the_inputs_problem(run: Run, good_csv: bytes) -> None:
    key = run.put("gone.csv", good_csv)
    run.s3.delete_object(Bucket=run.bucket, Key=key)
    (result,) = run(key)["results"]
    assert result["status"] == "rejected"
    assert "no longer exists" in run.report(key)["reason"]


def test_an_output_s3_will_not_take_is_raised(run: Run, good_csv: bytes) -> None:
    key = run.put("upload-fails.csv", good_csv)
    s3 = FaultyS3(run.s3, {"upload_file": lambda kw: S3UploadFailedError("injected: upload of the predictions failed")})
    with pytest.raises(S3UploadFailedError):
        run(key, s3=s3)
    assert run.outputs(key) == NOTHING


def test_an_error_report_s3_will_not_take_is_raised(run: Run) -> None:
    key = run.put("report-fails.csv", b"age\n1\n")  # a genuine input problem: missing columns
    s3 = FaultyS3(run.s3, {"put_object": lambda kw: server_error("PutObject")})
    with pytest.raises(ClientError):
        run(key, s3=s3)
    assert run.outputs(key) == NOTHING


# -- the machine: memory, /tmp ------------------------------------------------------------------------------------


@pytest.fixture
def no_memory_in_onnxruntime(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime failing an allocation, as it reports it: an exception of its own, not a MemoryError."""

    def run(self: TabularModel, names: Any, feeds: Any, *args: Any) -> Any:
        raise RuntimeError(
            "[ONNXRuntimeError] : 6 : RUNTIME_EXCEPTION : Non-zero status code returned while running Cast node. "
            "Failed to allocate memory for requested buffer of size 268435456"
        )

    original = TabularModel.__init__

    def init(self: TabularModel, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        monkeypatch.setattr(self.session, "run", run.__get__(self))

    monkeypatch.setattr(TabularModel, "__init__", init)


def test_onnxruntime_out_of_memory_is_raised_not_reported(
    run: Run, good_csv: bytes, no_memory_in_onnxruntime: None
) -> None:
    key = run.put("no-memory.csv", good_csv)
    with pytest.raises(MemoryError, match="Failed to allocate memory"):
        run(key)
    assert run.outputs(key) == NOTHING


def test_a_memory_error_while_scoring_is_raised_not_reported(
    run: Run, good_csv: bytes, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = run.put("memory-error.csv", good_csv)

    def out_of_memory(*args: Any, **kwargs: Any) -> Any:
        raise MemoryError

    monkeypatch.setattr(TabularModel, "prepare", out_of_memory)
    with pytest.raises(MemoryError):
        run(key)
    assert run.outputs(key) == NOTHING


class FullDisk:
    """``open`` as the handler's module sees it: files opened for writing fail with ENOSPC after ``room`` bytes."""

    def __init__(self, room: int, modes: tuple[str, ...]) -> None:
        self.room, self.modes = room, modes

    def __call__(self, file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = open(file, mode, *args, **kwargs)  # noqa: SIM115 - returned to the caller
        if mode not in self.modes:
            return handle
        room = self.room
        write = handle.write

        def limited(data: Any) -> int:
            nonlocal room
            room -= len(data)
            if room < 0:
                raise OSError(errno.ENOSPC, "No space left on device")
            return write(data)

        handle.write = limited
        return handle


@pytest.mark.parametrize(("room", "mode"), [(10_000, "wb"), (1_000, "w")], ids=["downloading", "writing-output"])
def test_a_full_tmp_is_raised_not_reported(
    run: Run, good_csv: bytes, handler_module: ModuleType, monkeypatch: pytest.MonkeyPatch, room: int, mode: str
) -> None:
    key = run.put(f"full-tmp-{mode}.csv", good_csv)
    monkeypatch.setattr(handler_module, "open", FullDisk(room, (mode,)), raising=False)
    with pytest.raises(OSError) as raised:
        run(key)
    assert raised.value.errno == errno.ENOSPC
    assert run.outputs(key) == NOTHING


def usage(total: int, free: int) -> Any:
    import shutil

    return shutil._ntuple_diskusage(total, total - free, free)  # type: ignore[attr-defined]


def test_no_room_left_on_tmp_now_is_raised_before_scoring(
    run: Run, good_csv: bytes, handler_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """/tmp could hold the output but is full of something else: not the file's fault."""
    key = run.put("tmp-taken.csv", good_csv)
    monkeypatch.setattr(handler_module.shutil, "disk_usage", lambda _: usage(10**12, len(good_csv)))
    with pytest.raises(OSError, match="no room on /tmp") as raised:
        run(key)
    assert raised.value.errno == errno.ENOSPC
    assert run.outputs(key) == NOTHING


def test_a_file_whose_output_could_never_fit_is_the_files_problem(
    run: Run, good_csv: bytes, handler_module: ModuleType, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Input plus its largest possible output exceed /tmp itself: split the file, as for the size limit."""
    key = run.put("never-fits.csv", good_csv)
    monkeypatch.setattr(handler_module.shutil, "disk_usage", lambda _: usage(2 * len(good_csv), len(good_csv)))
    (result,) = run(key)["results"]
    assert result["status"] == "rejected"
    assert "file too large for this function" in run.report(key)["reason"]


def test_the_output_bound_holds_for_the_real_output(run: Run, good_csv: bytes, handler_module: ModuleType) -> None:
    key = run.put("bound.csv", good_csv)
    run(key)
    written = len(run.s3.get_object(Bucket=run.output, Key=prediction_key(key))["Body"].read())
    model = TabularModel(run.s3.get_object(Bucket=run.bucket, Key=run.config.model_key)["Body"].read())
    counted = handler_module.Counted(len(good_csv), good_csv.count(b"\n"), good_csv.count(b'"'), good_csv.count(b","))
    bound = handler_module.output_bound(model, counted)
    assert written <= bound < 2 * written


# -- the model ----------------------------------------------------------------------------------------------------


def test_a_model_that_cannot_be_loaded_is_raised_not_reported(run: Run, good_csv: bytes, handler_module: Any) -> None:
    key = run.put("broken-model.csv", good_csv)
    run.s3.put_object(Bucket=run.bucket, Key=PREFIX + "broken.onnx", Body=b"this is not an ONNX model")
    config = handler_module.Config(run.output, run.bucket, PREFIX + "broken.onnx")
    with pytest.raises(handler_module.ModelUnavailable, match="cannot be loaded"):
        run(key, config=config)
    assert run.outputs(key) == NOTHING


def test_a_model_that_is_not_there_is_raised_not_reported(run: Run, good_csv: bytes, handler_module: Any) -> None:
    key = run.put("no-model.csv", good_csv)
    config = handler_module.Config(run.output, run.bucket, PREFIX + "missing.onnx")
    with pytest.raises(ClientError):
        run(key, config=config)
    assert run.outputs(key) == NOTHING


def test_a_model_s3_fails_to_serve_is_raised_not_reported(run: Run, good_csv: bytes) -> None:
    key = run.put("model-read-fails.csv", good_csv)
    model_key = run.config.model_key
    s3 = FaultyS3(run.s3, {"get_object": lambda kw: server_error("GetObject") if kw.get("Key") == model_key else None})
    with pytest.raises(ClientError):
        run(key, s3=s3)
    assert run.outputs(key) == NOTHING


# -- genuine input problems still get their report ----------------------------------------------------------------


def first_field(good_csv: bytes, value: bytes) -> bytes:
    """The good file with the first field of its first data row replaced by ``value``."""
    header, first, *rest = good_csv.splitlines(keepends=True)
    return header + value + first[first.index(b",") :] + b"".join(rest)


@pytest.mark.parametrize(
    ("name", "body", "reason"),
    [
        ("not-utf8.csv", lambda good: first_field(good, "\u00e9".encode("latin-1")), "not UTF-8 text"),
        ("huge-field.csv", lambda good: first_field(good, b"1" * 200_000), "could not read this file as CSV"),
        ("columns.csv", lambda good: b"age\n1\n", "missing columns"),
        ("values.csv", lambda good: first_field(good, b"forty"), "expects a number"),
        ("notes.csv.bak", lambda good: b"x", "not a CSV file"),
    ],
    ids=["not-utf8", "huge-field", "columns", "values", "not-csv"],
)
def test_input_problems_get_an_error_report(
    run: Run, good_csv: bytes, name: str, body: Callable[[bytes], bytes], reason: str
) -> None:
    key = run.put(name, body(good_csv))
    (result,) = run(key)["results"]
    assert result["status"] == "rejected"
    assert reason in run.report(key)["reason"]
    if name.endswith(".csv"):  # read, so the report records the input's ETag (a non-CSV key is refused unread)
        assert run.s3.head_object(Bucket=run.output, Key=error_key(key))["Metadata"][META_INPUT_ETAG]


def test_a_failure_stops_nothing_else_and_is_raised_once_the_rest_is_done(run: Run, good_csv: bytes) -> None:
    failing = run.put("together-failing.csv", good_csv)
    bad = run.put("together-bad.csv", b"age\n1\n")
    good = run.put("together-good.csv", good_csv)
    s3 = FaultyS3(run.s3, {"get_object": lambda kw: server_error("GetObject") if kw.get("Key") == failing else None})
    with pytest.raises(ClientError):
        run(failing, bad, good, s3=s3)
    assert run.outputs(failing) == NOTHING
    assert run.outputs(bad) == {"predictions": False, "report": True}
    assert run.outputs(good) == {"predictions": True, "report": False}


def test_the_entry_point_raises_what_lambda_must_retry(
    handler_module: ModuleType, run: Run, good_csv: bytes, lambda_context: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``handler(event, context)`` itself raises: that is what makes Lambda retry, then send to the failure queue."""
    key = run.put("entry-point.csv", good_csv)
    monkeypatch.setattr(handler_module, "s3_client", lambda: FaultyS3(run.s3, {"get_object": fail_input_get(key)}))
    monkeypatch.setattr(handler_module, "_models", handler_module.ModelCache())
    for name, value in {
        "OUTPUT_BUCKET": run.output,
        "MODEL_BUCKET": run.bucket,
        "MODEL_KEY": run.config.model_key,
    }.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ClientError):
        handler_module.handler(s3_event(run.bucket, key), lambda_context)
    assert run.outputs(key) == NOTHING


def fail_input_get(key: str) -> Callable[[dict[str, Any]], Exception | None]:
    return lambda kw: server_error("GetObject") if kw.get("Key") == key else None
