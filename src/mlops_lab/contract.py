"""The batch contract, written once: where a CSV's outputs land and what their S3 metadata says.

Ships in the Lambda layer beside the inference core (this file imports nothing), so the handler, the CLI, the tests
and the bench all import the same names. The output *columns* (``prediction``, ``probability_<class>``) belong to
the core that writes them: ``mlops_lab.inference.PREDICTION_COLUMN`` and ``probability_column``.

Output keys are derived from the input key alone, so a redelivered event overwrites instead of duplicating.
"""

INPUT_SUFFIX = ".csv"  # the keys whose upload invokes the function (the notification's filter; S3 matches it exactly)
PREDICTIONS_PREFIX = "predictions/"
ERRORS_PREFIX = "errors/"
ERROR_SUFFIX = ".json"

# S3 metadata of a predictions object and of an error report: the ETag of the input they were written for, so that
# `reconcile` can tell an output of this very input from one of an earlier upload under the same key.
META_INPUT_ETAG = "input-etag"
# S3 metadata of a predictions object.
META_ROWS = "rows"  # rows scored
META_MODEL_ETAG = "model-etag"  # the published model object that scored them
# Shared by a predictions object (the model that scored it) and the published model object (what it is).
META_MODEL_NAME = "model-name"  # its registered name
META_MODEL_VERSION = "model-version"
META_MODEL_KIND = "model-kind"  # classifier | regressor (a predictions object)
# S3 metadata of the published model object.
META_RUN_ID = "run-id"


def prediction_key(input_key: str) -> str:
    """``predictions/<input key>``: the scored CSV."""
    return f"{PREDICTIONS_PREFIX}{input_key}"


def error_key(input_key: str) -> str:
    """``errors/<input key>.json``: why the input could not be scored."""
    return f"{ERRORS_PREFIX}{input_key}{ERROR_SUFFIX}"
