"""Batch Transform's record rules (sagemaker/transform_records.py) against outputs written by hand from AWS's pages:
splitting, packing, the JSONPath subset, joins, assembly, output keys and the request's validation. Pure: no server."""

from __future__ import annotations

import gzip
import itertools
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlops_lab.errors import ExitCode, LabError
from mlops_lab.sagemaker import transform_records as rules
from mlops_lab.sagemaker.transform_records import (
    AnswerCountMismatch,
    MiniBatch,
    RecordTooLarge,
    TransformRecordError,
    TransformSpec,
    TransformValidationError,
)

JSONL = "application/jsonlines"


def csv_spec(**overrides: object) -> TransformSpec:
    return TransformSpec(**{"split_type": "Line", "assemble_with": "Line", **overrides})


def json_spec(**overrides: object) -> TransformSpec:
    return TransformSpec(
        **{"content_type": JSONL, "accept": JSONL, "split_type": "Line", "assemble_with": "Line", **overrides}
    )


def request(**top: object) -> dict:
    """A CreateTransformJob request as boto3 sends it (mlflow's deploy_transform_job's shape), ``top`` merged in."""
    base = {
        "TransformJobName": "job",
        "ModelName": "model",
        "TransformInput": {
            "DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "s3://in-bucket/data/"}},
            "ContentType": "text/csv",
            "CompressionType": "None",
            "SplitType": "Line",
        },
        "TransformOutput": {"S3OutputPath": "s3://out-bucket/results", "Accept": "text/csv", "AssembleWith": "Line"},
        "TransformResources": {"InstanceType": "ml.m5.large", "InstanceCount": 1},
        "DataProcessing": {"InputFilter": "$", "OutputFilter": "$", "JoinSource": "None"},
    }
    for key, value in top.items():
        base[key] = {**base[key], **value} if isinstance(value, dict) and key in base else value
    return base


def refusal(req: dict) -> str:
    with pytest.raises(TransformValidationError) as caught:
        rules.spec_from_request(req)
    assert caught.value.exit_code == ExitCode.USAGE
    return str(caught.value)


# --- the request -----------------------------------------------------------------------------------------------------


def test_an_mlflow_request_gives_awss_defaults_for_what_it_leaves_out() -> None:
    spec = rules.spec_from_request(request())
    assert (spec.content_type, spec.split_type, spec.compression, spec.accept) == (
        "text/csv",
        "Line",
        "None",
        "text/csv",
    )
    assert (spec.batch_strategy, spec.max_payload_bytes, spec.assemble_with) == ("MultiRecord", 6 * 1024 * 1024, "Line")
    assert (spec.input_filter, spec.join_source, spec.output_filter) == ("$", "None", "$")
    assert (spec.max_concurrent_transforms, spec.invocations_timeout_s, spec.invocations_max_retries) == (1, 600, 3)


def test_every_parameter_of_the_request_reaches_the_spec() -> None:
    spec = rules.spec_from_request(
        request(
            TransformInput={"ContentType": "application/x-jsonlines", "CompressionType": "Gzip", "SplitType": "Line"},
            TransformOutput={"Accept": "application/jsonlines", "AssembleWith": "Line", "KmsKeyId": "alias/k"},
            BatchStrategy="SingleRecord",
            MaxPayloadInMB=20,
            MaxConcurrentTransforms=5,
            ModelClientConfig={"InvocationsTimeoutInSeconds": 3600, "InvocationsMaxRetries": 0},
            DataProcessing={
                "InputFilter": "$.features",
                "OutputFilter": "$['id','SageMakerOutput']",
                "JoinSource": "Input",
            },
        )
    )
    assert spec.content_type == "application/x-jsonlines" and not spec.is_csv
    assert (spec.compression, spec.batch_strategy, spec.max_payload_bytes) == ("Gzip", "SingleRecord", 20 * 1024 * 1024)
    assert (spec.max_concurrent_transforms, spec.invocations_timeout_s, spec.invocations_max_retries) == (5, 3600, 0)
    assert (spec.input_filter, spec.join_source, spec.output_filter) == (
        "$.features",
        "Input",
        "$['id','SageMakerOutput']",
    )


def test_an_unset_accept_is_the_inputs_content_type() -> None:
    req = request(TransformInput={"ContentType": "application/json"})
    del req["TransformOutput"]["Accept"]
    assert rules.spec_from_request(req).accept == "application/json"


def test_enum_values_are_refused_with_awss_message_naming_the_field() -> None:
    message = refusal(request(TransformInput={"SplitType": "Lines"}))
    assert message == (
        "1 validation error detected: Value 'Lines' at 'transformInput.splitType' failed to satisfy constraint: "
        "Member must satisfy enum value set: [None, Line, RecordIO, TFRecord]"
    )
    assert "'transformInput.compressionType'" in refusal(request(TransformInput={"CompressionType": "Zip"}))
    assert "'batchStrategy'" in refusal(request(BatchStrategy="Multi"))
    assert "'transformOutput.assembleWith'" in refusal(request(TransformOutput={"AssembleWith": "Newline"}))
    assert "'dataProcessing.joinSource'" in refusal(request(DataProcessing={"JoinSource": "Output"}))


def test_every_problem_of_a_request_is_named_at_once() -> None:
    message = refusal(request(MaxPayloadInMB=101, ModelClientConfig={"InvocationsMaxRetries": 4}))
    assert message.startswith("2 validation errors detected: ")
    assert (
        "Value '101' at 'maxPayloadInMB' failed to satisfy constraint: Member must have value less than or equal to 100"
        in message
    )
    assert "Value '4' at 'modelClientConfig.invocationsMaxRetries'" in message and "less than or equal to 3" in message


TIMEOUT_AT = "Value '{}' at 'modelClientConfig.invocationsTimeoutInSeconds' failed to satisfy constraint: "
RETRIES_AT = "Value '{}' at 'modelClientConfig.invocationsMaxRetries' failed to satisfy constraint: "


@pytest.mark.parametrize(
    ("config", "expected"),
    [
        (
            {"InvocationsTimeoutInSeconds": 0},
            TIMEOUT_AT.format(0) + "Member must have value greater than or equal to 1",
        ),
        (
            {"InvocationsTimeoutInSeconds": 3601},
            TIMEOUT_AT.format(3601) + "Member must have value less than or equal to 3600",
        ),
        ({"InvocationsMaxRetries": -1}, RETRIES_AT.format(-1) + "Member must have value greater than or equal to 0"),
    ],
)
def test_model_client_config_ranges(config: dict, expected: str) -> None:
    assert expected in refusal(request(ModelClientConfig=config))


def test_the_payload_limit_and_its_product_with_concurrency_are_capped_at_100_mb() -> None:
    assert rules.spec_from_request(request(MaxPayloadInMB=100)).max_payload_bytes == 100 * 1024 * 1024
    assert "Member must have value greater than or equal to 0" in refusal(request(MaxPayloadInMB=-1))
    message = refusal(request(MaxPayloadInMB=30, MaxConcurrentTransforms=4))
    assert "'maxConcurrentTransforms'" in message and "(4 * 30) must not exceed 100 MB" in message
    assert rules.spec_from_request(request(MaxPayloadInMB=25, MaxConcurrentTransforms=4)).max_concurrent_transforms == 4
    assert "Member must be an integer" in refusal(request(MaxPayloadInMB="6"))


def test_chunked_streaming_is_refused_as_not_offline() -> None:
    message = refusal(request(MaxPayloadInMB=0))
    assert "MaxPayloadInMB 0" in message and "lab does not stream" in message


@pytest.mark.parametrize("split", ["RecordIO", "TFRecord"])
def test_split_types_valid_on_aws_but_not_run_by_the_lab_say_so(split: str) -> None:
    assert f"SplitType '{split}' is valid on AWS but the lab does not run it" in refusal(
        request(TransformInput={"SplitType": split})
    )


def test_augmented_manifests_and_https_uris_are_refused_as_lab_limits() -> None:
    source = {"DataSource": {"S3DataSource": {"S3DataType": "AugmentedManifestFile", "S3Uri": "s3://b/m"}}}
    assert "AugmentedManifestFile is valid on AWS but the lab does not read it" in refusal(
        request(TransformInput=source)
    )
    source = {"DataSource": {"S3DataSource": {"S3DataType": "S3Prefix", "S3Uri": "https://b.s3.amazonaws.com/x"}}}
    assert "the lab reads only s3://bucket/key" in refusal(request(TransformInput=source))
    message = refusal(request(TransformOutput={"S3OutputPath": "bucket/out"}))
    assert "at 'transformOutput.s3OutputPath' failed to satisfy constraint" in message


def test_missing_structures_and_content_type_are_named() -> None:
    req = request()
    del req["TransformOutput"]
    assert "Value null at 'transformOutput' failed to satisfy constraint: Member must not be null" in refusal(req)
    req = request()
    del req["TransformInput"]["ContentType"]
    assert "the lab's container needs one" in refusal(req)
    assert "'transformInput.contentType' is not one the lab" in refusal(
        request(TransformInput={"ContentType": "image/png"})
    )


@pytest.mark.parametrize("content_type", ["text/csv", JSONL, "application/x-jsonlines"])
def test_joins_need_line_split_and_line_assembly(content_type: str) -> None:
    processing = {"JoinSource": "Input"}
    fields = {"ContentType": content_type, "SplitType": "None"}
    output = {"Accept": content_type, "AssembleWith": "None"}
    message = refusal(request(TransformInput=fields, TransformOutput=output, DataProcessing=processing))
    assert f"JoinSource=Input on {content_type} needs TransformInput.SplitType=Line (got None)" in message
    assert f"JoinSource=Input on {content_type} needs TransformOutput.AssembleWith=Line (got None)" in message


def test_a_whole_json_document_may_be_joined_without_line_split() -> None:
    fields = {"ContentType": "application/json", "SplitType": "None"}
    output = {"Accept": "application/json", "AssembleWith": "None"}
    spec = rules.spec_from_request(
        request(TransformInput=fields, TransformOutput=output, DataProcessing={"JoinSource": "Input"})
    )
    assert spec.join_source == "Input"


def test_csv_filters_need_line_split() -> None:
    message = refusal(request(TransformInput={"SplitType": "None"}, DataProcessing={"InputFilter": "$[1:]"}))
    assert "an InputFilter or OutputFilter on text/csv needs TransformInput.SplitType=Line" in message


def test_a_join_across_formats_is_refused_as_a_lab_limit() -> None:
    message = refusal(request(TransformOutput={"Accept": JSONL}, DataProcessing={"JoinSource": "Input"}))
    assert "the lab joins and filters answers only in the input's format" in message


@pytest.mark.parametrize(
    ("path", "content_type", "says"),
    [
        ("$[0:2,246:]", "text/csv", "Invalid JsonPath: $[0:2,246:]"),  # AWS's own words for two ranges
        ("$[0:2,246:]", "text/csv", "only single range filters of format (eg: [1:5]) are supported"),
        ("$.id", "text/csv", "only index-based JSONPaths apply"),
        ("$['a']", "text/csv", "a CSV record is an array of fields"),
        ("$..id", JSONL, "invalid JsonPath"),
        ("$[?(@.a)]", JSONL, "no step, no filter"),
        ("$[::2]", "text/csv", "no step"),
        ("$.a['b','c.d']", JSONL, "nested children inside brackets are not supported"),
        ("id", JSONL, "a JSONPath starts with $"),
        ("$[1", "text/csv", "a [ without its ]"),
        ("$" + ".abcdefghij" * 6, JSONL, "Member must have length less than or equal to 63"),
    ],
)
def test_jsonpaths_outside_awss_subset_are_refused_when_the_job_is_created(
    path: str, content_type: str, says: str
) -> None:
    fields = {"ContentType": content_type}
    message = refusal(
        request(TransformInput=fields, TransformOutput={"Accept": content_type}, DataProcessing={"InputFilter": path})
    )
    assert "'dataProcessing.inputFilter'" in message and says.lower() in message.lower()


# --- records -------------------------------------------------------------------------------------------------------


def test_line_split_handles_crlf_a_last_line_without_newline_and_skips_empty_lines() -> None:
    chunks = [b"a,1\r", b"\n\r\nb,2\n", b"\n", b"c,3"]
    assert list(rules.records(chunks, csv_spec())) == [b"a,1", b"b,2", b"c,3"]


def test_a_newline_split_across_chunks_still_ends_its_record() -> None:
    assert list(rules.records([b'{"a":', b"1}", b"\n", b'{"a":2}\n'], json_spec())) == [b'{"a":1}', b'{"a":2}']


def test_split_none_sends_the_whole_object_as_one_record() -> None:
    assert list(rules.records([b"a,1\n", b"b,2\n"], TransformSpec())) == [b"a,1\nb,2\n"]


def test_an_empty_object_has_no_records() -> None:
    assert list(rules.records([b""], csv_spec())) == []
    assert list(rules.records([], TransformSpec())) == []


def test_records_stream_rather_than_read_the_whole_object_first() -> None:
    consumed = []

    def chunks() -> Iterator[bytes]:
        for number in range(1000):
            consumed.append(number)
            yield b"x,%d\n" % number

    stream = rules.records(chunks(), csv_spec())
    assert next(stream) == b"x,0"
    assert len(consumed) == 1


def test_gzip_is_inflated_as_it_streams_member_after_member() -> None:
    body = gzip.compress(b"a,1\nb,2\n") + gzip.compress(b"c,3")
    chunks = [body[at : at + 3] for at in range(0, len(body), 3)]
    assert list(rules.records(chunks, csv_spec(compression="Gzip"))) == [b"a,1", b"b,2", b"c,3"]


def test_gzip_that_is_cut_short_or_not_gzip_fails_its_file_clearly() -> None:
    body = gzip.compress(b"a,1\n" * 1000)
    with pytest.raises(TransformRecordError, match="truncated"):
        list(rules.records([body[: len(body) // 2]], csv_spec(compression="Gzip")))
    with pytest.raises(TransformRecordError, match="not valid gzip"):
        list(rules.records([b"a,1\nb,2\n"], csv_spec(compression="Gzip")))


def test_a_gzip_bomb_comes_out_in_bounded_pieces() -> None:
    body = gzip.compress(b"0" * (5 * 1024 * 1024) + b"\n")
    pieces = list(rules._gunzipped([body]))
    assert max(len(piece) for piece in pieces) <= rules.INFLATE_STEP
    assert sum(len(piece) for piece in pieces) == 5 * 1024 * 1024 + 1


def test_a_line_longer_than_the_limit_is_counted_not_kept() -> None:
    spec = csv_spec(max_payload_bytes=8)
    stream = rules.records([b"ok,1\n", b"y" * 5, b"y" * 5, b"y" * 5, b"\r\nlater\n"], spec)
    assert next(stream) == b"ok,1"
    with pytest.raises(RecordTooLarge) as caught:
        next(stream)
    assert (caught.value.index, caught.value.size, caught.value.limit) == (1, 15, 8)
    assert "15 bytes, over MaxPayloadInMB (8 bytes)" in str(caught.value)


def test_a_whole_object_over_the_limit_is_too_large_with_its_full_size() -> None:
    with pytest.raises(RecordTooLarge) as caught:
        list(rules.records([b"12345", b"6789", b"0"], TransformSpec(max_payload_bytes=6)))
    assert (caught.value.index, caught.value.size) == (0, 10)


# --- mini-batches ---------------------------------------------------------------------------------------------------


def test_a_batch_exactly_at_the_limit_is_one_request() -> None:
    # "aaa\nbbb\ncc" is 3 + 1 + 3 + 1 + 2 = 10 bytes: the separators count.
    batches = list(rules.mini_batches([b"aaa", b"bbb", b"cc"], csv_spec(max_payload_bytes=10)))
    assert batches == [MiniBatch(b"aaa\nbbb\ncc", 0, 3)]


def test_one_byte_over_the_limit_starts_a_new_request() -> None:
    batches = list(rules.mini_batches([b"aaa", b"bbb", b"ccc"], csv_spec(max_payload_bytes=10)))
    assert batches == [MiniBatch(b"aaa\nbbb", 0, 2), MiniBatch(b"ccc", 2, 1)]


def test_single_record_sends_one_record_a_request() -> None:
    batches = list(rules.mini_batches([b"a", b"b", b"c"], csv_spec(batch_strategy="SingleRecord")))
    assert batches == [MiniBatch(b"a", 0, 1), MiniBatch(b"b", 1, 1), MiniBatch(b"c", 2, 1)]


def test_a_record_over_the_limit_names_its_index_and_size() -> None:
    with pytest.raises(RecordTooLarge) as caught:
        list(rules.mini_batches([b"ab", b"abcdefghijk", b"c"], csv_spec(max_payload_bytes=10)))
    assert (caught.value.index, caught.value.size) == (1, 11)
    assert isinstance(caught.value, LabError)


def test_the_limit_counts_the_filtered_payload_and_a_join_keeps_the_records_as_read() -> None:
    spec = csv_spec(max_payload_bytes=7, input_filter="$[1:]", join_source="Input")
    batches = list(rules.mini_batches([b"id1,a,b", b"id2,c,d", b"id3,e,f"], spec))
    assert batches == [
        MiniBatch(b"a,b\nc,d", 0, 2, (b"id1,a,b", b"id2,c,d")),
        MiniBatch(b"e,f", 2, 1, (b"id3,e,f",)),
    ]


def test_without_a_join_the_records_as_read_are_not_kept() -> None:
    (batch,) = rules.mini_batches([b"id1,a"], csv_spec(input_filter="$[1:]"))
    assert batch.originals == ()


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=1, max_value=30), max_size=40),
    limit=st.integers(min_value=30, max_value=120),
)
def test_packing_never_exceeds_the_limit_keeps_order_and_fills_each_request(sizes: list[int], limit: int) -> None:
    records = [(b"%d:" % number + b"x" * size)[: max(size, 1)] for number, size in enumerate(sizes)]
    batches = list(rules.mini_batches(records, csv_spec(max_payload_bytes=limit)))
    assert all(len(batch.payload) <= limit for batch in batches)
    assert [part for batch in batches for part in batch.payload.split(b"\n")] == records
    assert [batch.first for batch in batches] == [sum(b.count for b in batches[:n]) for n in range(len(batches))]
    for batch, following in itertools.pairwise(batches):
        next_record = records[following.first]
        assert len(batch.payload) + 1 + len(next_record) > limit  # greedy: the next record would not have fit


# --- the JSONPath subset on CSV and JSON records -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", b'0,1,"two, quoted",3,4,5,6'),
        ("$[1:]", b'1,"two, quoted",3,4,5,6'),
        ("$[0,-1]", b"0,6"),
        ("$[0,5:]", b"0,5,6"),
        ("$[2]", b'"two, quoted"'),
        ("$[1:3]", b'1,"two, quoted",3'),  # the end is inclusive (batch-transform-data-processing's example)
        ("$[:1]", b"0,1"),
        ("$[-2:]", b"5,6"),
        ("$[*]", b'0,1,"two, quoted",3,4,5,6'),
        ("$[1,3,5]", b"1,3,5"),
    ],
)
def test_csv_input_filters(path: str, expected: bytes) -> None:
    assert rules.input_filter(b'0,1,"two, quoted",3,4,5,6', csv_spec(input_filter=path)) == expected


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("$", b'{"id": 7, "features": [1, 2.5], "meta": {"a": "x", "b": {"c": true}}}'),
        ("$.features", b"[1,2.5]"),
        ("$['id','features']", b'{"id":7,"features":[1,2.5]}'),
        ("$.meta.b.c", b"true"),
        ("$.meta.*", b'["x",{"c":true}]'),
        ("$.features[1]", b"2.5"),
        ("$.meta.['a','b']", b'{"a":"x","b":{"c":true}}'),
        ('$["id"]', b"7"),
    ],
)
def test_json_input_filters(path: str, expected: bytes) -> None:
    record = b'{"id": 7, "features": [1, 2.5], "meta": {"a": "x", "b": {"c": true}}}'
    assert rules.input_filter(record, json_spec(input_filter=path)) == expected


def test_json_array_records_take_index_paths() -> None:
    assert rules.input_filter(b"[10, 20, 30, 40]", json_spec(input_filter="$[1:2]")) == b"[20,30]"
    assert rules.input_filter(b"[10, 20, 30, 40]", json_spec(input_filter="$[-1]")) == b"40"


def test_a_path_after_a_wildcard_maps_over_its_matches() -> None:
    record = b'{"items": [{"p": 1}, {"q": 2}, {"p": 3}]}'
    assert rules.input_filter(record, json_spec(input_filter="$.items[*].p")) == b"[1,3]"


def test_an_index_outside_the_record_or_a_missing_member_fails_the_record() -> None:
    with pytest.raises(TransformRecordError, match="index 9 is outside the record's 3 elements"):
        rules.input_filter(b"a,b,c", csv_spec(input_filter="$[0,9]"))
    with pytest.raises(TransformRecordError, match="the record has no 'features'"):
        rules.input_filter(b'{"id": 1}', json_spec(input_filter="$.features"))
    with pytest.raises(TransformRecordError, match="record 2: "):
        list(rules.mini_batches([b'{"features": 1}', b'{"id": 1}'], json_spec(input_filter="$.features")))


def test_a_record_that_is_not_its_format_fails_clearly() -> None:
    with pytest.raises(TransformRecordError, match="is not JSON"):
        rules.input_filter(b"{oops", json_spec(input_filter="$.a"))
    with pytest.raises(TransformRecordError, match="not one CSV row"):
        rules.input_filter(b'a,"b', csv_spec(input_filter="$[0]"))


# --- answers, joins, assembly -----------------------------------------------------------------------------------------


def test_a_csv_join_puts_the_answers_fields_after_the_inputs_then_filters() -> None:
    spec = csv_spec(input_filter="$[1:]", join_source="Input", output_filter="$[0,-1]")
    batch = MiniBatch(b'"x, y",2\n3,4', 0, 2, (b'id-1,"x, y",2', b"id-2,3,4"))
    assert rules.assemble_batch(b"0.9\r\n0.1\r\n", batch, spec) == b"id-1,0.9\nid-2,0.1\n"


def test_a_csv_join_keeps_quoted_fields_whole() -> None:
    spec = csv_spec(join_source="Input")
    assert rules.join_and_filter(b'1,"a, b",c', b'"yes, sure"', spec) == b'1,"a, b",c,"yes, sure"'


def test_a_json_join_adds_sagemaker_output_to_the_input_object() -> None:
    spec = json_spec(input_filter="$.features", join_source="Input", output_filter="$['id','SageMakerOutput']")
    joined = rules.join_and_filter(b'{"id": "r1", "features": [1, 2]}', b'{"label": 1}', spec)
    assert joined == b'{"id":"r1","SageMakerOutput":{"label":1}}'
    whole = rules.join_and_filter(b'{"id": "r1"}', b"0.5", json_spec(join_source="Input"))
    assert whole == b'{"id":"r1","SageMakerOutput":0.5}'


def test_a_json_join_wraps_an_input_that_is_not_an_object() -> None:
    joined = rules.join_and_filter(b"[1, 2]", b'{"label": 0}', json_spec(join_source="Input"))
    assert joined == b'{"SageMakerInput":[1,2],"SageMakerOutput":{"label":0}}'


def test_an_output_filter_without_a_join_filters_the_answer() -> None:
    spec = csv_spec(output_filter="$[1]")
    batch = MiniBatch(b"r1\nr2", 4, 2)
    assert rules.assemble_batch(b"a,0.3\nb,0.7\n", batch, spec) == b"0.3\n0.7\n"


def test_an_answer_with_the_wrong_number_of_lines_names_both_counts() -> None:
    spec = csv_spec(join_source="Input")
    batch = MiniBatch(b"1\n2\n3", 10, 3, (b"1", b"2", b"3"))
    with pytest.raises(AnswerCountMismatch) as caught:
        rules.split_answer(b"a\nb\n", batch, spec)
    assert (caught.value.expected, caught.value.got, caught.value.index) == (3, 2, 10)
    assert "answered 2 lines to a mini-batch of 3 records (records 11-13)" in str(caught.value)


def test_the_answer_to_one_record_is_that_records_answer_whatever_its_lines() -> None:
    batch = MiniBatch(b'{"a": 1}', 0, 1)
    assert rules.split_answer(b'{\n  "label": 1\n}\n', batch, json_spec()) == [b'{\n  "label": 1\n}']


def test_answers_split_on_crlf() -> None:
    assert rules.split_answer(b"1\r\n2\r\n", MiniBatch(b"a\nb", 0, 2), csv_spec()) == [b"1", b"2"]


def test_line_assembly_ends_each_output_with_exactly_one_newline() -> None:
    spec = csv_spec()
    assert rules.assemble(b"1\n2", spec) == b"1\n2\n"
    assert rules.assemble(b"1\n2\n", spec) == b"1\n2\n"  # not "1\n2\n\n": line N stays record N's answer
    assert rules.assemble([b"a", b"b"], spec) == b"a\nb\n"


def test_none_assembly_concatenates_as_is() -> None:
    spec = csv_spec(assemble_with="None")
    assert rules.assemble(b"1\n2", spec) == b"1\n2"
    assert rules.assemble([b"a", b"b"], spec) == b"ab"


def test_without_processing_the_answer_is_written_untouched() -> None:
    batch = MiniBatch(b"x\ny", 0, 2)
    assert rules.assemble_batch(b"only one line", batch, csv_spec()) == b"only one line\n"


# --- output keys and manifests --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("key", "prefix", "output_path", "expected"),
    [
        ("data/a.csv", "data/", "s3://out/results", ("out", "results/a.csv.out")),
        ("data/2024/01/a.csv", "data/", "s3://out/results/", ("out", "results/2024/01/a.csv.out")),
        ("data/2024/01/a.csv", "data/2024", "s3://out/r", ("out", "r/2024/01/a.csv.out")),
        ("data/part-0001.csv", "data/part", "s3://out/r", ("out", "r/part-0001.csv.out")),
        ("data/a.csv", "data/a.csv", "s3://out", ("out", "a.csv.out")),
        ("a.csv", "", "s3://out/", ("out", "a.csv.out")),
    ],
)
def test_output_keys_keep_the_inputs_path_below_its_prefix_folder(
    key: str, prefix: str, output_path: str, expected: tuple[str, str]
) -> None:
    assert rules.output_location(key, prefix, output_path) == expected


def test_a_key_outside_its_prefix_is_refused() -> None:
    with pytest.raises(TransformRecordError, match="not under the prefix"):
        rules.relative_key("other/a.csv", "data/")


def test_manifest_entries_are_the_prefix_and_each_relative_path() -> None:
    manifest = b'[{"prefix": "s3://customer_bucket/some/prefix/"}, "relative/path/to/custdata-1", "custdata-2"]'
    assert rules.manifest_entries(manifest) == [
        ("s3://customer_bucket/some/prefix/relative/path/to/custdata-1", "relative/path/to/custdata-1"),
        ("s3://customer_bucket/some/prefix/custdata-2", "custdata-2"),
    ]
    assert rules.output_key("results", rules.manifest_entries(manifest)[0].relative) == (
        "results/relative/path/to/custdata-1.out"
    )


@pytest.mark.parametrize(
    ("manifest", "says"),
    [
        (b"not json", "not JSON"),
        (b'["s3://b/a.csv"]', 'starting with {"prefix"'),
        (b'[{"prefix": "s3://b/p/"}, 7]', "manifest entry 2 is not a relative path"),
        (b'[{"prefix": "b/p/"}, "a"]', "regular expression"),
    ],
)
def test_a_bad_manifest_says_what_is_wrong(manifest: bytes, says: str) -> None:
    with pytest.raises(TransformRecordError) as caught:
        rules.manifest_entries(manifest)
    assert says in str(caught.value)
