"""The record rules of SageMaker Batch Transform, pure: what a ``CreateTransformJob`` request means, how one input
object becomes records and mini-batches, what ``DataProcessing``'s JSONPath subset selects and joins, and which bytes
go into ``<input>.out`` under which key. No AWS, no network, no processes: ``transform_jobs.py`` runs jobs on it.

Everything streams: an object arrives as chunks and leaves as mini-batches, so memory is bounded by
``MaxPayloadInMB`` (a record is never held past the limit: an over-long line is counted, not kept), never by the
object's size. AWS's pages (batch-transform, batch-transform-data-processing, API_CreateTransformJob,
API_TransformInput, API_TransformOutput, API_DataProcessing, API_ModelClientConfig) are the contract; where they are
silent or disagree, the choice is stated here, once:

- ``SplitType=Line`` splits on ``\\n``; a ``\\r`` before it is dropped (CRLF files), a last line without a newline
  is a record, and **empty lines are not records**. The pages do not say; an empty line carries no data, RFC 4180
  (which the data-processing page names for CSV) has no empty records, and sending one would make the container
  answer a line for nothing, shifting every later answer against its input in a join.
- An empty object has no records (its ``.out`` is empty), whatever the ``SplitType``.
- Slices are **inclusive of their end**: ``$[1:4]`` is the second to the fifth field. The data-processing page says
  so twice in words ("inclusive", "``[:5]``: the first column through the sixth"), while its operator table only
  quotes JavaScript's ``slice()``; the worked example is the more specific statement, so it wins.
- One range per bracket (``$[0,5:]`` yes, ``$[0:2,246:]`` no), with AWS's own message for the latter.
- ``AssembleWith=Line`` ends each output with exactly one ``\\n``: an answer that already ends with one is left
  alone (most containers end their answer with a newline; adding another would leave a blank line after every
  mini-batch, and line N of the ``.out`` would no longer be record N's answer).
- An answer to a one-record mini-batch is that record's answer whatever its lines (a pretty-printed JSON answer);
  an answer to N records must have exactly N lines.
- ``MaxConcurrentTransforms`` unset or 0 means 1 here (AWS asks the container's ``/execution-parameters`` first; the
  runner may), ``BatchStrategy`` unset means ``MultiRecord`` (the SageMaker SDK's local mode does the same), an
  unset ``Accept`` means the input's content type (so a join reads the answer as the input's format).

Why this is one module of ~830 lines: the request's validation, the splitting, the packing and the JSONPath subset
are one contract read off the same pages; every piece needs the others' choices (the payload limit, the format
family, the record index), and split up they would pass those back and forth through every call.
"""

from __future__ import annotations

import csv
import io
import json
import re
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple

from mlops_lab.errors import ExitCode, LabError

MB = 1024 * 1024
DEFAULT_MAX_PAYLOAD_MB = 6
MAX_PAYLOAD_MB = 100  # API_CreateTransformJob: MaxPayloadInMB, and MaxConcurrentTransforms * MaxPayloadInMB, <= 100
FILTER_MAX_LENGTH = 63  # API_DataProcessing: InputFilter/OutputFilter length
CSV = "text/csv"
JSON_TYPES = frozenset({"application/jsonlines", "application/x-jsonlines", "application/json"})
LINES_TYPES = frozenset({CSV, "application/jsonlines", "application/x-jsonlines"})  # one record a line, by nature
INFLATE_STEP = 1024 * 1024  # at most this much gunzipped output per call, so a small bomb stays small in memory
SPLIT_TYPES = ("None", "Line", "RecordIO", "TFRecord")
S3_DATA_TYPES = ("ManifestFile", "S3Prefix", "AugmentedManifestFile")


class TransformValidationError(LabError):
    """A ``CreateTransformJob`` request AWS (or the lab) refuses; the message is the ValidationException's."""

    exit_code = ExitCode.USAGE


class TransformRecordError(LabError):
    """A record, an answer or an input object the rules cannot process: it fails its file, not the job's others."""

    exit_code = ExitCode.REFUSED

    def __init__(self, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.index = index  # 0-based record index in its object, when one record is to blame


class RecordTooLarge(TransformRecordError):
    """A record larger than ``MaxPayloadInMB``: AWS fails its file rather than cut it."""

    def __init__(self, index: int, size: int, limit: int) -> None:
        super().__init__(
            f"the record is {size} bytes, over MaxPayloadInMB ({limit} bytes): raise MaxPayloadInMB "
            f"(at most {MAX_PAYLOAD_MB}) or make the record smaller",
            index,
        )
        self.size, self.limit = size, limit


class AnswerCountMismatch(TransformRecordError):
    """The container answered a mini-batch with a different number of lines than it had records."""

    def __init__(self, first: int, expected: int, got: int) -> None:
        super().__init__(
            f"the container answered {got} lines to a mini-batch of {expected} records (records {first + 1}-"
            f"{first + expected}): a join or an OutputFilter needs one answer line per record",
            first,
        )
        self.expected, self.got = expected, got


# --- JSONPath: the subset on the data-processing page ---------------------------------------------------------------

_NAME = re.compile(r"[^.\[\]'\"*,\s]+")
_INDEX_ITEM = re.compile(r"\s*(-?\d+)\s*")
_SLICE_ITEM = re.compile(r"\s*(-?\d+)?\s*:\s*(-?\d+)?\s*")
_QUOTED = re.compile(r"\s*(?:'([^']*)'|\"([^\"]*)\")\s*")


@dataclass(frozen=True)
class _Step:
    kind: str  # "name" | "names" | "indexes" | "wildcard"
    names: tuple[str, ...] = ()
    indexes: tuple[int, ...] = ()
    span: tuple[int | None, int | None] | None = None  # the one range of an index bracket, end inclusive

    @property
    def single(self) -> bool:
        """One node in, one node out (Jayway's 'definite' step)."""
        return self.kind in ("name", "names") or (
            self.kind == "indexes" and self.span is None and len(self.indexes) == 1
        )


class JsonPathSyntaxError(ValueError):
    """A filter outside AWS's JSONPath subset (made a TransformValidationError before it reaches anyone)."""

    exit_code = ExitCode.USAGE


@dataclass(frozen=True)
class JsonPath:
    """A compiled ``InputFilter``/``OutputFilter``: ``$``, ``.name``, ``.*``/``[*]``, ``['a','b']``, ``[1,3]``,
    ``[2:5]`` and an index list with one range (``[0,5:]``)."""

    text: str
    steps: tuple[_Step, ...]

    @property
    def is_root(self) -> bool:
        return not self.steps

    @property
    def index_only(self) -> bool:
        """Fits a CSV record (a flat array of fields): at most one step, an index bracket or a wildcard."""
        return len(self.steps) <= 1 and all(step.kind in ("indexes", "wildcard") for step in self.steps)

    def select(self, value: Any) -> Any:
        """What the path selects in ``value``: one value for a definite path, else the list of matches."""
        nodes, definite = [value], True
        for step in self.steps:
            definite = definite and step.single
            nodes = [found for node in nodes for found in _apply(step, node, strict=definite)]
        return nodes[0] if definite else nodes


def parse_path(text: str) -> JsonPath:
    """``text`` compiled, or ``JsonPathSyntaxError`` saying what of it AWS's subset does not have."""
    if not text.startswith("$"):
        raise JsonPathSyntaxError("a JSONPath starts with $")
    steps: list[_Step] = []
    at = 1
    while at < len(text):
        if text.startswith(".[", at) or text[at] == "[":
            start = at + (2 if text[at] == "." else 1)
            end = _bracket_end(text, start)
            steps.append(_bracket(text[start:end]))
            at = end + 1
        elif text.startswith(".*", at):
            steps.append(_Step("wildcard"))
            at += 2
        elif text[at] == "." and (name := _NAME.match(text, at + 1)):
            steps.append(_Step("name", names=(name.group(),)))
            at = name.end()
        else:
            raise JsonPathSyntaxError(f"unexpected {text[at:]!r} (AWS supports $, .name, .*, ['a','b'], [1,3], [2:5])")
    return JsonPath(text, tuple(steps))  # steps after a wildcard or a range map over its matches, as Jayway's do


def _bracket_end(text: str, start: int) -> int:
    quote = None
    for at in range(start, len(text)):
        char = text[at]
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == "]":
            return at
    raise JsonPathSyntaxError("a [ without its ]")


def _bracket(inner: str) -> _Step:
    if inner.strip() == "*":
        return _Step("wildcard")
    if inner.strip()[:1] in ("'", '"'):
        names = []
        for part in _split_top(inner):
            quoted = _QUOTED.fullmatch(part)
            if not quoted:
                raise JsonPathSyntaxError(f"[{inner}] mixes quoted names with something else")
            name = quoted.group(1) if quoted.group(1) is not None else quoted.group(2)
            if "." in name:
                raise JsonPathSyntaxError(f"'{name}': nested children inside brackets are not supported")
            names.append(name)
        return _Step("names", names=tuple(names)) if len(names) > 1 else _Step("name", names=tuple(names))
    indexes: list[int] = []
    span = None
    for part in inner.split(","):
        if index := _INDEX_ITEM.fullmatch(part):
            indexes.append(int(index.group(1)))
        elif sliced := _SLICE_ITEM.fullmatch(part):
            if span is not None:
                raise JsonPathSyntaxError(
                    f"only single range filters of format (eg: [1:5]) are supported. Format [{inner}] is not supported"
                )
            span = (_opt_int(sliced.group(1)), _opt_int(sliced.group(2)))
        else:
            raise JsonPathSyntaxError(
                f"[{inner}]: an index is a whole number, a range is start:end (no step, no filter)"
            )
    return _Step("indexes", indexes=tuple(indexes), span=span)


def _split_top(inner: str) -> list[str]:
    """``inner`` split on the commas outside quotes."""
    parts, quote, current = [], None, []
    for char in inner:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char == ",":
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return parts


def _opt_int(text: str | None) -> int | None:
    return None if text is None else int(text)


def _apply(step: _Step, node: Any, strict: bool) -> list[Any]:
    """The nodes ``step`` selects in ``node``. ``strict`` (a definite path) makes a miss an error; on an indefinite
    path a node without the member is skipped, as Jayway does."""
    if step.kind == "wildcard":
        if isinstance(node, dict):
            return list(node.values())
        if isinstance(node, list):
            return list(node)
        return _miss(strict, f"* needs an object or an array, not {_kind(node)}")
    if step.kind in ("name", "names"):
        if not isinstance(node, dict):
            return _miss(strict, f"['{step.names[0]}'] needs an object, not {_kind(node)}")
        missing = [name for name in step.names if name not in node]
        if missing:
            return _miss(strict, f"the record has no {', '.join(repr(name) for name in missing)}")
        if step.kind == "name":
            return [node[step.names[0]]]
        return [{name: node[name] for name in step.names}]
    if not isinstance(node, list):
        return _miss(strict, f"an index needs an array, not {_kind(node)}")
    size = len(node)
    for index in step.indexes:
        if not -size <= index < size:
            raise TransformRecordError(f"index {index} is outside the record's {size} elements")
    picked = [node[index] for index in step.indexes]
    if step.span is not None:
        start, end = step.span
        start = 0 if start is None else (start + size if start < 0 else start)
        end = size - 1 if end is None else (end + size if end < 0 else end)
        picked.extend(node[max(start, 0) : min(end, size - 1) + 1])
    return picked


def _miss(strict: bool, reason: str) -> list[Any]:
    if strict:
        raise TransformRecordError(reason)
    return []


def _kind(value: Any) -> str:
    return {dict: "an object", list: "an array", str: "a string"}.get(type(value), f"the value {value!r}")


# --- the spec ------------------------------------------------------------------------------------------------------


def _media(content_type: str) -> str:
    return content_type.split(";", 1)[0].strip().lower()


def _failed(value: Any, where: str, rule: str) -> str:
    """One problem in the words of AWS's ValidationException."""
    return f"Value '{value}' at '{where}' failed to satisfy constraint: Member must {rule}"


def _enum(value: Any, where: str, allowed: Sequence[str]) -> str:
    return _failed(value, where, f"satisfy enum value set: [{', '.join(allowed)}]")


def _at_most(value: Any, where: str, limit: int) -> str:
    return _failed(value, where, f"have value less than or equal to {limit}")


def _at_least(value: Any, where: str, limit: int) -> str:
    return _failed(value, where, f"have value greater than or equal to {limit}")


def _raise(problems: list[str]) -> None:
    if problems:
        count = len(problems)
        raise TransformValidationError(
            f"{count} validation error{'s' if count > 1 else ''} detected: {'; '.join(problems)}"
        )


@dataclass(frozen=True)
class TransformSpec:
    """How one transform job reads, batches, filters and writes records; checked when made (bad values raise
    :class:`TransformValidationError` naming the request's field, as AWS's ValidationException does)."""

    content_type: str = CSV
    split_type: str = "None"
    compression: str = "None"
    batch_strategy: str = "MultiRecord"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_MB * MB
    accept: str = CSV
    assemble_with: str = "None"
    input_filter: str = "$"
    join_source: str = "None"
    output_filter: str = "$"
    max_concurrent_transforms: int = 1
    invocations_timeout_s: int = 600
    invocations_max_retries: int = 3
    input_path: JsonPath = field(init=False, repr=False, compare=False)
    output_path: JsonPath = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        problems = self._problems()
        _raise(problems)

    @property
    def is_csv(self) -> bool:
        return _media(self.content_type) == CSV

    @property
    def per_record_output(self) -> bool:
        """Whether the answer must be split into one answer per record (a join, or an OutputFilter to apply)."""
        return self.join_source == "Input" or not self.output_path.is_root

    def _problems(self) -> list[str]:
        problems: list[str] = []
        media = _media(self.content_type)
        if media != CSV and media not in JSON_TYPES:
            problems.append(
                f"Value '{self.content_type}' at 'transformInput.contentType' is not one the lab can split and "
                f"filter: use text/csv or application/jsonlines (application/x-jsonlines, application/json)"
            )
        if _media(self.accept) != CSV and _media(self.accept) not in JSON_TYPES:
            problems.append(
                f"Value '{self.accept}' at 'transformOutput.accept' is not one the lab's container answers: use "
                f"text/csv or application/jsonlines (application/x-jsonlines, application/json)"
            )
        if self.split_type in ("RecordIO", "TFRecord"):
            problems.append(
                f"SplitType '{self.split_type}' is valid on AWS but the lab does not run it: use Line or None"
            )
        elif self.split_type not in SPLIT_TYPES:
            problems.append(_enum(self.split_type, "transformInput.splitType", SPLIT_TYPES))
        if self.compression not in ("None", "Gzip"):
            problems.append(_enum(self.compression, "transformInput.compressionType", ("None", "Gzip")))
        if self.batch_strategy not in ("MultiRecord", "SingleRecord"):
            problems.append(_enum(self.batch_strategy, "batchStrategy", ("MultiRecord", "SingleRecord")))
        if self.assemble_with not in ("None", "Line"):
            problems.append(_enum(self.assemble_with, "transformOutput.assembleWith", ("None", "Line")))
        if self.join_source not in ("None", "Input"):
            problems.append(_enum(self.join_source, "dataProcessing.joinSource", ("None", "Input")))
        problems += self._payload_problems()
        if not 1 <= self.invocations_timeout_s <= 3600:
            where = "modelClientConfig.invocationsTimeoutInSeconds"
            check = _at_least if self.invocations_timeout_s < 1 else _at_most
            problems.append(check(self.invocations_timeout_s, where, 1 if self.invocations_timeout_s < 1 else 3600))
        if not 0 <= self.invocations_max_retries <= 3:
            where = "modelClientConfig.invocationsMaxRetries"
            check = _at_least if self.invocations_max_retries < 0 else _at_most
            problems.append(check(self.invocations_max_retries, where, 0 if self.invocations_max_retries < 0 else 3))
        if self.max_concurrent_transforms < 1:
            problems.append(_at_least(self.max_concurrent_transforms, "maxConcurrentTransforms", 1))
        for name, text in (("inputFilter", self.input_filter), ("outputFilter", self.output_filter)):
            path, problem = self._compile(name, text)
            object.__setattr__(self, "input_path" if name == "inputFilter" else "output_path", path)
            if problem:
                problems.append(problem)
        if not problems:
            problems += self._processing_problems()
        return problems

    def _payload_problems(self) -> list[str]:
        size = self.max_payload_bytes
        shown = size // MB if size % MB == 0 else f"{size} bytes"
        if size == 0:
            return [
                "MaxPayloadInMB 0 (HTTP chunked streaming of whole objects) is valid on AWS but the lab does not "
                f"stream: use 1-{MAX_PAYLOAD_MB}"
            ]
        if size < 0:
            return [_at_least(shown, "maxPayloadInMB", 0)]
        if size > MAX_PAYLOAD_MB * MB:
            return [_at_most(shown, "maxPayloadInMB", MAX_PAYLOAD_MB)]
        return []

    def _compile(self, name: str, text: str) -> tuple[JsonPath, str | None]:
        where = f"dataProcessing.{name}"
        if len(text) > FILTER_MAX_LENGTH:
            return JsonPath("$", ()), _failed(text, where, f"have length less than or equal to {FILTER_MAX_LENGTH}")
        try:
            path = parse_path(text or "$")
        except JsonPathSyntaxError as error:
            return JsonPath("$", ()), f"Value '{text}' at '{where}' is an invalid JsonPath: {text}: {error}"
        if self.is_csv and not path.index_only:
            return path, (
                f"Value '{text}' at '{where}' does not fit text/csv: a CSV record is an array of fields, so only "
                f"index-based JSONPaths apply (such as $[0], $[1:], $[0,-1])"
            )
        return path, None

    def _processing_problems(self) -> list[str]:
        """The combinations the data-processing page requires."""
        problems = []
        media = _media(self.content_type)
        processing = self.join_source == "Input" or not (self.input_path.is_root and self.output_path.is_root)
        lines_format = media in LINES_TYPES
        if processing and (self.is_csv or (self.join_source == "Input" and lines_format)):
            what = "JoinSource=Input" if self.join_source == "Input" else "an InputFilter or OutputFilter"
            if self.split_type != "Line":
                problems.append(f"{what} on {media} needs TransformInput.SplitType=Line (got {self.split_type})")
            if self.assemble_with != "Line":
                problems.append(f"{what} on {media} needs TransformOutput.AssembleWith=Line (got {self.assemble_with})")
        if self.per_record_output and (_media(self.accept) == CSV) != self.is_csv:
            problems.append(
                f"the lab joins and filters answers only in the input's format: ContentType {self.content_type} "
                f"with Accept {self.accept}; set Accept to the same format"
            )
        return problems


def spec_from_request(request: dict[str, Any]) -> TransformSpec:
    """The spec of a ``CreateTransformJob`` request dict as boto3 sends it; refused with AWS's validation message."""
    problems: list[str] = []
    transform_input = _member(request, "TransformInput", dict, problems) or {}
    transform_output = _member(request, "TransformOutput", dict, problems) or {}
    processing = _member(request, "DataProcessing", dict, problems, required=False) or {}
    client = _member(request, "ModelClientConfig", dict, problems, required=False) or {}
    source = ((transform_input.get("DataSource") or {}).get("S3DataSource")) or {}
    if transform_input and not source:
        problems.append(_null("transformInput.dataSource.s3DataSource"))
    data_type = source.get("S3DataType", "S3Prefix")
    if data_type == "AugmentedManifestFile":
        problems.append("S3DataType AugmentedManifestFile is valid on AWS but the lab does not read it: use S3Prefix")
    elif data_type not in S3_DATA_TYPES:
        where = "transformInput.dataSource.s3DataSource.s3DataType"
        problems.append(_enum(data_type, where, S3_DATA_TYPES))
    uris = [(source, "S3Uri", "transformInput.dataSource.s3DataSource.s3Uri")]
    uris.append((transform_output, "S3OutputPath", "transformOutput.s3OutputPath"))
    for parent, name, where in uris:
        if parent:  # a missing parent is reported already
            try:
                split_s3_uri(parent.get(name) if isinstance(parent.get(name), str) else "", where)
            except TransformValidationError as error:
                problems.append(str(error))
    payload_mb = _integer(request, "MaxPayloadInMB", "maxPayloadInMB", DEFAULT_MAX_PAYLOAD_MB, problems)
    concurrent = _integer(request, "MaxConcurrentTransforms", "maxConcurrentTransforms", 0, problems)
    if concurrent < 0:
        problems.append(_at_least(concurrent, "maxConcurrentTransforms", 0))
    elif concurrent > 0 and payload_mb > 0 and concurrent * payload_mb > MAX_PAYLOAD_MB:
        problems.append(
            f"Value '{concurrent}' at 'maxConcurrentTransforms' failed to satisfy constraint: MaxConcurrentTransforms "
            f"* MaxPayloadInMB ({concurrent} * {payload_mb}) must not exceed {MAX_PAYLOAD_MB} MB"
        )
    timeout = _integer(
        client, "InvocationsTimeoutInSeconds", "modelClientConfig.invocationsTimeoutInSeconds", 600, problems
    )
    retries = _integer(client, "InvocationsMaxRetries", "modelClientConfig.invocationsMaxRetries", 3, problems)
    content_type = transform_input.get("ContentType")
    if content_type is not None and not isinstance(content_type, str):
        problems.append(_failed(content_type, "transformInput.contentType", "be a string"))
    elif transform_input and not content_type:
        problems.append(
            "TransformInput.ContentType is optional on AWS (the container then gets no Content-Type), but the lab's "
            "container needs one: text/csv or application/jsonlines"
        )
    _raise(problems)
    return TransformSpec(
        content_type=content_type,
        split_type=transform_input.get("SplitType") or "None",
        compression=transform_input.get("CompressionType") or "None",
        batch_strategy=request.get("BatchStrategy") or "MultiRecord",
        max_payload_bytes=payload_mb * MB,
        accept=transform_output.get("Accept") or content_type,
        assemble_with=transform_output.get("AssembleWith") or "None",
        input_filter=processing.get("InputFilter") or "$",
        join_source=processing.get("JoinSource") or "None",
        output_filter=processing.get("OutputFilter") or "$",
        max_concurrent_transforms=concurrent or 1,
        invocations_timeout_s=timeout,
        invocations_max_retries=retries,
    )


def _member(parent: dict[str, Any], name: str, kind: type, problems: list[str], required: bool = True) -> Any:
    value, where = parent.get(name), name[0].lower() + name[1:]
    if value is None:
        if required:
            problems.append(_null(where))
        return None
    if not isinstance(value, kind):
        problems.append(_failed(value, where, "be a structure"))
        return None
    return value


def _null(where: str) -> str:
    return f"Value null at '{where}' failed to satisfy constraint: Member must not be null"


def _integer(parent: dict[str, Any], name: str, where: str, default: int, problems: list[str]) -> int:
    value = parent.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        problems.append(_failed(value, where, "be an integer"))
        return default
    return value


# --- records and mini-batches ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MiniBatch:
    """One request's body: ``count`` records from index ``first`` of their object, joined by ``\\n``.
    ``originals`` holds the records as read (before the InputFilter) only when the job joins them to the answers."""

    payload: bytes
    first: int
    count: int
    originals: tuple[bytes, ...] = ()


def records(chunks: Iterable[bytes], spec: TransformSpec) -> Iterator[bytes]:
    """The records of one input object, read from its ``chunks`` as they come (gunzipped when ``Gzip``)."""
    data = _gunzipped(chunks) if spec.compression == "Gzip" else (chunk for chunk in chunks if chunk)
    if spec.split_type == "Line":
        return _lines(iter(data), spec.max_payload_bytes)
    return _whole(iter(data), spec.max_payload_bytes)


def _whole(data: Iterator[bytes], limit: int) -> Iterator[bytes]:
    parts, size = [], 0
    for chunk in data:
        size += len(chunk)
        if size > limit:
            raise RecordTooLarge(0, size + sum(len(rest) for rest in data), limit)
        parts.append(chunk)
    if size:
        yield b"".join(parts)


def _lines(data: Iterator[bytes], limit: int) -> Iterator[bytes]:
    index, pending = 0, bytearray()
    for chunk in data:
        start = 0
        while (end := chunk.find(b"\n", start)) >= 0:
            pending += chunk[start:end]
            start = end + 1
            if pending.endswith(b"\r"):
                del pending[-1]
            if pending:  # an empty line is no record (see the module's docstring)
                if len(pending) > limit:
                    raise RecordTooLarge(index, len(pending), limit)
                yield bytes(pending)
                index += 1
            pending.clear()
        pending += chunk[start:]
        if len(pending) > limit + 1:  # + 1: a "\r" the line's CRLF ending would drop
            raise RecordTooLarge(index, _rest_of_line(len(pending), pending.endswith(b"\r"), data), limit)
    if pending.endswith(b"\r"):
        del pending[-1]
    if pending:
        if len(pending) > limit:
            raise RecordTooLarge(index, len(pending), limit)
        yield bytes(pending)


def _rest_of_line(size: int, ends_with_cr: bool, data: Iterator[bytes]) -> int:
    """The full length of a line too long to keep: the rest is counted as it streams past, not held."""
    for chunk in data:
        end = chunk.find(b"\n")
        if end < 0:
            size += len(chunk)
            ends_with_cr = chunk.endswith(b"\r") if chunk else ends_with_cr
            continue
        size += end
        ends_with_cr = chunk[:end].endswith(b"\r") if end else ends_with_cr
        break
    return size - 1 if ends_with_cr else size


def _gunzipped(chunks: Iterable[bytes]) -> Iterator[bytes]:
    """``chunks`` of gzip, inflated as they stream; concatenated members read as one stream, as ``gunzip`` does."""
    inflater, member_open = zlib.decompressobj(16 + zlib.MAX_WBITS), False
    for chunk in chunks:
        data = chunk
        while data:
            member_open = True
            try:
                out = inflater.decompress(data, INFLATE_STEP)
            except zlib.error as error:
                raise TransformRecordError(f"the object is not valid gzip (CompressionType=Gzip): {error}") from error
            if out:
                yield out
            if inflater.eof:
                data = inflater.unused_data
                inflater, member_open = zlib.decompressobj(16 + zlib.MAX_WBITS), False
                if not data.strip(b"\0"):  # gzip's trailing zero padding (tape blocks) ends the stream
                    break
                continue
            data = inflater.unconsumed_tail
            while not data and len(out) == INFLATE_STEP:  # output may still be waiting inside zlib
                out = inflater.decompress(b"", INFLATE_STEP)
                if out:
                    yield out
    if member_open and not inflater.eof:
        raise TransformRecordError("the gzip object ends early (truncated): upload it again whole")


def input_filter(record: bytes, spec: TransformSpec) -> bytes:
    """``record`` as sent to the container: the part ``InputFilter`` selects."""
    if spec.input_path.is_root:
        return record
    return _encode(spec.input_path.select(_decode(record, spec.is_csv)), spec.is_csv)


def mini_batches(records: Iterable[bytes], spec: TransformSpec) -> Iterator[MiniBatch]:
    """``records`` packed into requests: ``MultiRecord`` as many whole records as fit in ``MaxPayloadInMB`` (bytes of
    the payload sent, separators counted), ``SingleRecord`` (or ``SplitType=None``) one each."""
    limit, joining = spec.max_payload_bytes, spec.join_source == "Input"
    single = spec.batch_strategy == "SingleRecord" or spec.split_type == "None"
    sent: list[bytes] = []
    kept: list[bytes] = []
    first, size = 0, 0
    for index, record in enumerate(records):
        try:
            filtered = input_filter(record, spec)
        except TransformRecordError as error:
            raise TransformRecordError(f"record {index + 1}: {error}", index) from error
        if len(filtered) > limit:
            raise RecordTooLarge(index, len(filtered), limit)
        if sent and (single or size + 1 + len(filtered) > limit):
            yield MiniBatch(b"\n".join(sent), first, len(sent), tuple(kept))
            sent, kept, size = [], [], 0
        if not sent:
            first, size = index, len(filtered)
        else:
            size += 1 + len(filtered)
        sent.append(filtered)
        if joining:
            kept.append(record)
    if sent:
        yield MiniBatch(b"\n".join(sent), first, len(sent), tuple(kept))


# --- answers, joins and output ---------------------------------------------------------------------------------------


def split_answer(answer: bytes, batch: MiniBatch, spec: TransformSpec) -> list[bytes]:
    """The container's ``answer`` to ``batch`` as one answer per record (its lines); a count that differs from the
    batch's raises :class:`AnswerCountMismatch`."""
    body = answer.rstrip(b"\r\n")
    if batch.count == 1:
        return [body]
    lines = [line[:-1] if line.endswith(b"\r") else line for line in body.split(b"\n")] if body else []
    if len(lines) != batch.count:
        raise AnswerCountMismatch(batch.first, batch.count, len(lines))
    return lines


def join_and_filter(input_record: bytes, answer_record: bytes, spec: TransformSpec) -> bytes:
    """One record's output: its answer joined to its input (``JoinSource=Input``: CSV the input's fields then the
    answer's; JSON the input object plus ``SageMakerOutput``, or ``SageMakerInput`` and ``SageMakerOutput`` when
    the input is not an object), then the part ``OutputFilter`` selects. ``input_record`` is the record as read."""
    csv_format = spec.is_csv
    if spec.join_source != "Input" and spec.output_path.is_root:
        return answer_record
    answer = _decode(answer_record, csv_format, "the answer")
    if spec.join_source == "Input":
        original = _decode(input_record, csv_format)
        if csv_format:
            joined: Any = original + answer
        elif isinstance(original, dict):
            joined = {**original, "SageMakerOutput": answer}
        else:
            joined = {"SageMakerInput": original, "SageMakerOutput": answer}
    else:
        joined = answer
    return _encode(spec.output_path.select(joined), csv_format)


def _decode(record: bytes, csv_format: bool, what: str = "the record") -> Any:
    try:
        text = record.decode("utf-8")
        if csv_format:
            rows = list(csv.reader([text], strict=True))
            return rows[0] if rows else []
        return json.loads(text)
    except UnicodeDecodeError as error:
        raise TransformRecordError(f"{what} is not UTF-8: {error}") from error
    except csv.Error as error:
        raise TransformRecordError(f"{what} is not one CSV row: {error}") from error
    except json.JSONDecodeError as error:
        raise TransformRecordError(f"{what} is not JSON: {error}") from error


def _encode(value: Any, csv_format: bool) -> bytes:
    if csv_format:
        out = io.StringIO()
        csv.writer(out, lineterminator="").writerow(value if isinstance(value, list) else [value])
        return out.getvalue().encode("utf-8")
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def assemble(output: bytes | Sequence[bytes], spec: TransformSpec) -> bytes:
    """The bytes a mini-batch adds to its ``.out``: ``output`` is the container's whole answer or the per-record
    outputs. ``AssembleWith=Line`` ends each with exactly one ``\\n`` (an answer ending in one is left alone: see
    the module's docstring); ``None`` concatenates as is."""
    line = spec.assemble_with == "Line"
    if isinstance(output, bytes | bytearray):
        return bytes(output) + b"\n" if line and not output.endswith(b"\n") else bytes(output)
    return b"".join(part + b"\n" for part in output) if line else b"".join(output)


def assemble_batch(answer: bytes, batch: MiniBatch, spec: TransformSpec) -> bytes:
    """What ``batch``'s ``answer`` writes to the ``.out``: joined and filtered per record when the job asks it."""
    if not spec.per_record_output:
        return assemble(answer, spec)
    answers = split_answer(answer, batch, spec)
    inputs = batch.originals or (b"",) * batch.count
    outputs = []
    for offset, (original, answered) in enumerate(zip(inputs, answers, strict=True)):
        try:
            outputs.append(join_and_filter(original, answered, spec))
        except TransformRecordError as error:
            raise TransformRecordError(f"record {batch.first + offset + 1}: {error}", batch.first + offset) from error
    return assemble(outputs, spec)


# --- S3 keys -------------------------------------------------------------------------------------------------------

_S3_URI = re.compile(r"s3://([^/]+)/?(.*)", re.DOTALL)


def split_s3_uri(uri: str, where: str = "S3Uri") -> tuple[str, str]:
    """``(bucket, key or prefix)`` of ``s3://bucket/key``."""
    if uri.startswith("https://"):
        raise TransformValidationError(
            f"Value '{uri}' at '{where}': https:// S3 URLs are valid on AWS but the lab reads only s3://bucket/key"
        )
    match = _S3_URI.fullmatch(uri or "")
    if not match or len(uri) > 1024:
        raise TransformValidationError(
            f"Value '{uri}' at '{where}' failed to satisfy constraint: Member must satisfy regular expression "
            f"pattern: ^(https|s3)://([^/]+)/?(.*)$"
        )
    return match.group(1), match.group(2)


def relative_key(key: str, prefix: str) -> str:
    """``key``'s path below ``prefix``'s folder: a prefix ending in a partial name (``data/part``) stands for the
    objects of its folder (``data/``) starting so, and each keeps its own name (``part-0001.csv``)."""
    if not key.startswith(prefix):
        raise TransformRecordError(f"s3 key {key!r} is not under the prefix {prefix!r}")
    return key[prefix.rfind("/") + 1 :]


def output_key(output_prefix: str, relative: str) -> str:
    """The ``.out`` key of an input at ``relative`` (see :func:`relative_key`) under ``S3OutputPath``'s key part."""
    folder = output_prefix if not output_prefix or output_prefix.endswith("/") else output_prefix + "/"
    return f"{folder}{relative}.out"


def output_location(input_key: str, input_prefix: str, output_path: str) -> tuple[str, str]:
    """``(bucket, key)`` of the ``.out`` of the object ``input_key`` found under ``input_prefix``."""
    bucket, prefix = split_s3_uri(output_path, "transformOutput.s3OutputPath")
    return bucket, output_key(prefix, relative_key(input_key, input_prefix))


class ManifestEntry(NamedTuple):
    uri: str  # s3://bucket/key of one input object
    relative: str  # its path below the manifest's prefix folder: where its .out goes under S3OutputPath


def manifest_entries(manifest: bytes) -> list[ManifestEntry]:
    """The objects a ``ManifestFile`` lists: ``[{"prefix": "s3://b/p/"}, "rel1", "rel2", ...]``, each the prefix and
    the relative path put together as written (API_TransformS3DataSource)."""
    try:
        listing = json.loads(manifest.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise TransformRecordError(f"the manifest is not JSON: {error}") from error
    if not (isinstance(listing, list) and listing and isinstance(listing[0], dict) and "prefix" in listing[0]):
        raise TransformRecordError('the manifest must be a JSON array starting with {"prefix": "s3://bucket/prefix/"}')
    prefix = listing[0]["prefix"]
    if not isinstance(prefix, str):
        raise TransformRecordError("the manifest's prefix must be a string s3://bucket/prefix/")
    try:
        bucket, prefix_key = split_s3_uri(prefix, "manifest prefix")
    except TransformValidationError as error:
        raise TransformRecordError(str(error)) from error
    entries = []
    for position, relative in enumerate(listing[1:], start=2):
        if not isinstance(relative, str) or not relative:
            raise TransformRecordError(f"manifest entry {position} is not a relative path string: {relative!r}")
        key = prefix_key + relative
        entries.append(ManifestEntry(f"s3://{bucket}/{key}", relative_key(key, prefix_key)))
    return entries
