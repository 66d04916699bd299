"""Expected failures, in words a person can act on: what happened, what to do, and a distinct exit code.

Every failure the library expects carries its own exit code as ``exit_code``, as click's
``ClickException.exit_code`` and mlflow's ``MlflowException.error_code`` do: a :class:`LabError` subclass defined by
the module that raises it (``inference.InputError`` carries the attribute alone: that module ships without the rest of
the lab). :func:`explain` turns an exception into one line and that code: anything carrying ``exit_code`` as it is,
the SDK's and the HTTP clients' exceptions by what they say. The CLI prints the line and exits with the code (the traceback only
with ``--debug``); the lab console shows the same line. Anything else is a bug: ``UNEXPECTED``.

This module is on the ground floor (docs/architecture.md): it imports nothing of the lab, so every module can raise
its errors and the Lambda layer ships it beside the inference core.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum
from urllib.parse import urlparse


class ExitCode(IntEnum):
    """`mlops-lab`'s exit codes (docs/errors.md lists them for users; tests/test_errors.py keeps the two equal)."""

    OK = 0
    REFUSED = 1  # a model or a file the lab will not take (and why), a rejected input
    USAGE = 2  # a wrong option or argument (click's own code)
    NO_CREDENTIALS = 3  # the SDK found no (valid) credentials
    UNREACHABLE = 4  # an endpoint (AWS, a remote server) does not answer
    NOT_RUNNING = 5  # the lab (or one of its services, or its resources) is not there: `up` / `bootstrap`
    TIMEOUT = 6  # something took longer than allowed
    UNHEALTHY = 7  # `status`: a service that should run does not answer its health check
    ACCESS_DENIED = 8  # the credentials work but may not do this
    FUNCTION_FAILED = 9  # the Lambda failed on an event after its retries (the event is in the failure queue)
    INCOMPLETE = 10  # `teardown`: something of the lab's is still there afterwards, or a service could not be checked
    CONFLICT = 11  # a name the lab needs is taken by something it does not own (a bucket of another account)
    JOB_FAILED = 12  # `transform --wait`: the SageMaker transform job ended Failed (or Stopped)
    INTERRUPTED = 130  # Ctrl-C
    UNEXPECTED = 70  # a bug: run again with --debug and report the traceback


@dataclass(frozen=True)
class Problem:
    code: ExitCode
    message: str  # one line: what happened and what to do

    def to_json(self) -> dict[str, object]:
        return {"error": self.message, "exit_code": int(self.code), "kind": self.code.name.lower()}


class LabError(RuntimeError):
    """An expected failure, with its exit code: a subclass sets ``exit_code`` for all its instances, a raise site
    may pass one. The message says what happened and what to do."""

    exit_code: ExitCode = ExitCode.REFUSED

    def __init__(self, message: str, exit_code: ExitCode | None = None) -> None:
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class Refused(LabError):
    """A model, a file or a request the lab will not take, and why."""

    exit_code = ExitCode.REFUSED


class NotRunning(LabError):
    """The lab, one of its services or resources is not there: `mlops-lab up` / `bootstrap`."""

    exit_code = ExitCode.NOT_RUNNING


class Unreachable(LabError):
    """An endpoint that is not the lab's own does not answer."""

    exit_code = ExitCode.UNREACHABLE


class TimedOut(LabError, TimeoutError):
    """Something took longer than allowed (also a ``TimeoutError``)."""

    exit_code = ExitCode.TIMEOUT


CREDENTIAL_CODES = frozenset(
    {
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "ExpiredToken",
        "ExpiredTokenException",
        "InvalidAccessKeyId",
        "SignatureDoesNotMatch",
        "InvalidSignatureException",
        "AuthFailure",
    }
)
DENIED_CODES = frozenset({"AccessDenied", "AccessDeniedException", "UnauthorizedOperation", "Forbidden", "403"})
MISSING_CODES = frozenset(
    {
        "NoSuchBucket",
        "ResourceNotFoundException",
        "AWS.SimpleQueueService.NonExistentQueue",
        "QueueDoesNotExist",
        "NoSuchEntity",
    }
)
TAKEN_CODES = frozenset({"BucketAlreadyExists"})  # the name is another account's
LOCAL_HOSTS = frozenset({"127.0.0.1", "localhost", "::1", "0.0.0.0", "emulator"})


def one_line(text: str, limit: int = 400) -> str:
    """The first line of ``text`` (a log tail or a traceback follows in some messages), cut to ``limit``."""
    first = next((line.strip() for line in str(text).splitlines() if line.strip()), "")
    more = " (more with --debug)" if "\n" in str(text).strip() else ""
    return (first[: limit - 1] + "…" if len(first) > limit else first) + more


def _is_local(url: str) -> bool:
    return (urlparse(url).hostname or "") in LOCAL_HOSTS


def explain(error: BaseException) -> Problem:
    """What ``error`` means for the person at the keyboard: one line and an exit code."""
    from botocore import exceptions as boto

    if isinstance(error, KeyboardInterrupt):
        return Problem(ExitCode.INTERRUPTED, "Interrupted.")
    carried = getattr(error, "exit_code", None)
    if isinstance(carried, int) and carried in ExitCode.__members__.values():
        refusal = isinstance(error, Refused) or not isinstance(error, LabError)
        prefix = "Refused: " if carried == ExitCode.REFUSED and refusal else ""
        return Problem(ExitCode(carried), prefix + one_line(str(error)))
    if isinstance(error, boto.NoCredentialsError | boto.PartialCredentialsError | boto.CredentialRetrievalError):
        return Problem(
            ExitCode.NO_CREDENTIALS,
            f"No AWS credentials ({one_line(str(error))}): for the emulator `source .lab/env.sh`; for AWS configure "
            "a profile (`aws configure`) or set AWS_PROFILE / AWS_ACCESS_KEY_ID.",
        )
    if isinstance(error, boto.EndpointConnectionError | boto.ConnectTimeoutError | boto.ConnectionClosedError):
        url = getattr(error, "kwargs", {}).get("endpoint_url", "")
        if _is_local(url):
            return Problem(
                ExitCode.NOT_RUNNING,
                f"The emulator does not answer at {url}: start the lab with `mlops-lab up` (or `make up`).",
            )
        return Problem(
            ExitCode.UNREACHABLE,
            f"Cannot reach {url or 'the endpoint'}: check the network, AWS_ENDPOINT_URL and the region.",
        )
    if isinstance(error, boto.ReadTimeoutError):
        return Problem(ExitCode.TIMEOUT, f"Timed out waiting for an answer ({one_line(str(error))}); try again.")
    if isinstance(error, boto.ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        operation = getattr(error, "operation_name", "")
        if code in CREDENTIAL_CODES:
            return Problem(
                ExitCode.NO_CREDENTIALS,
                f"The credentials were refused ({code} on {operation}): check AWS_PROFILE / the keys, or for the "
                "emulator `source .lab/env.sh`.",
            )
        if code in DENIED_CODES:
            return Problem(
                ExitCode.ACCESS_DENIED,
                f"Access denied ({code} on {operation}): these credentials may not do this; use a role or user "
                "allowed to (`mlops-lab plan` lists what bootstrap creates).",
            )
        if code in TAKEN_CODES:
            return Problem(
                ExitCode.CONFLICT,
                f"A name the lab needs is taken ({code} on {operation}): bucket names are global and another account "
                "owns this one. Choose another prefix (LAB_PREFIX).",
            )
        if code in MISSING_CODES:
            return Problem(
                ExitCode.NOT_RUNNING,
                f"A lab resource is missing ({code} on {operation}): run `mlops-lab bootstrap` "
                "(or `mlops-lab up` for the embedded lab).",
            )
    if _is_http_connect_error(error):
        return Problem(
            ExitCode.NOT_RUNNING, f"A lab service does not answer ({one_line(str(error))}): `mlops-lab status`."
        )
    if isinstance(error, TimeoutError) or type(error).__name__ in ("ReadTimeout", "TimeoutException"):
        return Problem(ExitCode.TIMEOUT, f"Timed out: {one_line(str(error))}")
    return Problem(
        ExitCode.UNEXPECTED,
        f"Unexpected error: {type(error).__name__}: {one_line(str(error))}. "
        "Run the command again with --debug for the traceback.",
    )


def _is_http_connect_error(error: BaseException) -> bool:
    import httpx

    if isinstance(error, httpx.ConnectError):
        return True
    try:
        import requests
    except ImportError:  # pragma: no cover - mlflow brings requests
        return False
    return isinstance(error, requests.ConnectionError)
