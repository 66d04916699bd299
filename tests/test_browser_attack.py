"""Another web page against the running lab, in a real browser (issue 20): headless Chromium (Debian's, driven by
Playwright) opens pages served from another origin and lets them do what any page may do to 127.0.0.1.

The attacker's pages come from a small HTTP server of this module on a port of its own, reached as
``http://evil.test:<port>`` (Chromium maps ``evil.test`` to 127.0.0.1: ``--host-resolver-rules``) and, for mlflow's
``localhost`` loophole, as ``http://localhost:<port>``. Against the session's emulator (``lab_stack``), mlflow
(``mlflow_lab``), a console and an API with a key (``LAB_API_KEY``) of this module's, they try: a Lambda function
created and invoked through the emulator's API (signed with the well-known key ``test``: MiniStack takes any
signature), the emulator's reset (a form POST), an S3 PUT and a form upload over the live model, the failure queue
read (SQS ReceiveMessage), a registered model created in mlflow, the console's promote and upload (form POSTs),
``/predict``, the lab's SageMaker (a model created, an endpoint invoked), and a DNS-rebound name. Each must be refused; after each, the buckets, the function, the live model
object and the registry are as they were (boto3 and mlflow's client look).
"""

from __future__ import annotations

import base64
import dataclasses
import http.server
import io
import json
import os
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from mlops_lab import model, registry, sagemaker, services, stack, training
from tests.support import Lab, RunningApi, free_port, running_api, running_lab

CHROMIUM = os.environ.get("LAB_TEST_CHROMIUM", "/usr/bin/chromium")
EVIL = "evil.test"  # mapped to 127.0.0.1 inside Chromium only
API_KEY = "the-labs-api-key"
FORGED_DATE = "20260101T000000Z"
WAIT_MS = 60_000

# Its attacks would publish and promote if they got through: the model live before this module is live again after.
pytestmark = pytest.mark.usefixtures("live_model_put_back")


def forged_authorization(service: str) -> str:
    """What a page can compute without any secret: MiniStack takes the well-known key `test` with any signature."""
    return (
        f"AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/{service}/aws4_request, "
        f"SignedHeaders=host;x-amz-date, Signature={'0' * 64}"
    )


# -- the lab under attack -----------------------------------------------------------------------------------------


@dataclasses.dataclass
class Target:
    lab: Lab
    console_url: str
    api: RunningApi
    version: str  # a registered version of the demo model, not live: what a forged promote would make live

    @property
    def settings(self) -> Any:
        return self.lab.settings


@pytest.fixture(scope="module")
def target(mlflow_lab: Lab, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    """The session's emulator and mlflow, plus a console and an API (with a key) of this module's, as `up` runs them."""
    settings = mlflow_lab.settings
    version = training.train_and_log(settings, rows=3000, seed=21, run_name="not-to-be-promoted").version
    console_settings = settings.model_copy(update={"console_port": free_port()})
    console = services.console_service(console_settings)
    console_state = console_settings.model_copy(update={"state_dir": tmp_path_factory.mktemp("attacked-console")})
    api_settings = settings.model_copy(
        update={
            "api_port": free_port(),
            "api_key": API_KEY,
            "api_access_log": True,
            "state_dir": tmp_path_factory.mktemp("attacked-api"),
        }
    )
    stack.start(console_state, console)
    try:
        with running_api(api_settings) as api, running_lab(settings, [sagemaker.SERVICE_NAME]):
            yield Target(mlflow_lab, console.url, api, version)
    finally:
        stack.stop(console_state, console)


@dataclasses.dataclass(frozen=True)
class Snapshot:
    """What the attacks are after, as boto3 and mlflow's client see it."""

    buckets: tuple[str, ...]
    function_sha: str
    live_model: bytes
    live_version: str | None
    registered: frozenset[str]
    versions: int


def snapshot(target: Target) -> Snapshot:
    settings, aws = target.settings, target.lab.aws
    s3 = aws.client("s3")
    buckets = tuple(sorted(b["Name"] for b in s3.list_buckets()["Buckets"] if b["Name"] in settings.buckets))
    function = aws.client("lambda").get_function_configuration(FunctionName=settings.function_name)
    client = registry.client(settings)
    names = frozenset(m.name for m in client.search_registered_models())
    return Snapshot(
        buckets=buckets,
        function_sha=function["CodeSha256"],
        live_model=s3.get_object(Bucket=settings.model_bucket, Key=settings.model_key)["Body"].read(),
        live_version=model.live_version(settings, aws),
        registered=names,
        versions=len(client.search_model_versions(f"name = '{settings.model_name}'")),
    )


@pytest.fixture
def intact(target: Target) -> Iterator[Snapshot]:
    """The lab as it was before the test's attack; after it, the same (all three buckets, the function, the live
    model's bytes and version, the registry's models and versions)."""
    before = snapshot(target)
    assert before.buckets == tuple(sorted(target.settings.buckets))
    yield before
    after = snapshot(target)
    assert after == before, "the attack changed the lab"


# -- the attacker -------------------------------------------------------------------------------------------------


class Attacker:
    """Another site: serves the pages it is given, on its own port, to whoever asks."""

    def __init__(self) -> None:
        self.pages: dict[str, str] = {}
        self.port = free_port()
        pages = self.pages

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                body = pages.get(self.path.split("?")[0], "not here").encode()
                self.send_response(200 if self.path.split("?")[0] in pages else 404)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def page(self, path: str, html: str, host: str = EVIL) -> str:
        self.pages[path] = html
        return f"http://{host}:{self.port}{path}"


@pytest.fixture(scope="module")
def attacker() -> Iterator[Attacker]:
    site = Attacker()
    site.thread.start()
    try:
        yield site
    finally:
        site.server.shutdown()
        site.thread.join(timeout=10)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (Debian's) that resolves evil.test to 127.0.0.1, as a rebinding or local attacker's would."""
    if not Path(CHROMIUM).exists():
        message = f"no Chromium at {CHROMIUM}: `make install` installs Debian's chromium as root (apt-get)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    from playwright.sync_api import sync_playwright

    args = [
        "--no-sandbox",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        f"--host-resolver-rules=MAP {EVIL} 127.0.0.1",
    ]
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=args)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any, target: Target) -> Iterator[Any]:
    """A fresh page of a person who has the console open (its session cookie is in the browser)."""
    context = browser.new_context()
    context.set_default_timeout(WAIT_MS)
    opened = context.new_page()
    opened.goto(target.console_url)
    try:
        yield opened
    finally:
        context.close()


# Each fetch's outcome as the page sees it: the status and body it could read, or the error it got instead.
HARNESS = """<!doctype html><html><body><script>
window.results = {};
async function attempt(name, url, init) {
  try {
    const response = await fetch(url, init);
    window.results[name] = {status: response.status, body: (await response.text()).slice(0, 300), error: null};
  } catch (error) {
    window.results[name] = {status: null, body: null, error: String(error)};
  }
}
(async () => {
%s
  window.done = true;
})();
</script></body></html>"""


def run_fetches(page: Any, attacker: Attacker, name: str, script: str, host: str = EVIL) -> dict[str, Any]:
    page.goto(attacker.page(f"/{name}", HARNESS % script, host))
    page.wait_for_function("window.done === true", timeout=WAIT_MS)
    return page.evaluate("window.results")


def submit_form(page: Any, attacker: Attacker, name: str, action: str, fields: str, script: str = "") -> Any:
    """The answer (status, text) the person's browser gets when another site's page submits a form to ``action`` on
    load."""
    html = f"""<!doctype html><html><body>
<form id="f" method="post" action="{action}" enctype="{"multipart/form-data" if 'type="file"' in fields else "application/x-www-form-urlencoded"}">
{fields}</form>
<script>{script}document.getElementById("f").submit();</script></body></html>"""
    with page.expect_response(lambda response: response.url.split("?")[0] == action) as answer:
        page.goto(attacker.page(f"/{name}", html), wait_until="commit")  # a 204 answer leaves the page loading
    return answer.value


def unread(results: dict[str, Any]) -> list[str]:
    """The attempts whose answer the page could read (none should be)."""
    return [f"{name}: {result}" for name, result in results.items() if result["error"] is None]


# -- the attacks --------------------------------------------------------------------------------------------------


def lambda_zip(marker: Path) -> str:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr(
            "index.py",
            f"import pathlib\n\ndef handler(event, context):\n    pathlib.Path({str(marker)!r}).write_text('ran')\n"
            "    return {'ran': True}\n",
        )
    return base64.b64encode(buffer.getvalue()).decode()


def test_a_page_cannot_create_and_invoke_a_lambda_function(
    page: Any, attacker: Attacker, target: Target, intact: Snapshot, tmp_path: Path
) -> None:
    settings, aws = target.settings, target.lab.aws
    marker = tmp_path / "code-ran-here"
    role = aws.client("iam").get_role(RoleName=settings.role_name)["Role"]["Arn"]
    function = {
        "FunctionName": "evil-fn",
        "Runtime": settings.lambda_runtime,
        "Role": role,
        "Handler": "index.handler",
        "Code": {"ZipFile": lambda_zip(marker)},
    }
    headers = {"Authorization": forged_authorization("lambda"), "X-Amz-Date": FORGED_DATE}
    url = settings.emulator_url
    results = run_fetches(
        page,
        attacker,
        "lambda",
        f"""
  const headers = {json.dumps(headers | {"Content-Type": "application/json"})};
  await attempt("create", "{url}/2015-03-31/functions", {{method: "POST", headers, body: {json.dumps(json.dumps(function))}}});
  await attempt("invoke", "{url}/2015-03-31/functions/evil-fn/invocations", {{method: "POST", headers, body: "{{}}"}});
  await attempt("invoke the lab's", "{url}/2015-03-31/functions/{settings.function_name}/invocations",
                {{method: "POST", headers, body: "{{}}"}});""",
    )
    assert not unread(results), results
    with pytest.raises(ClientError, match="ResourceNotFound"):
        aws.client("lambda").get_function(FunctionName="evil-fn")
    assert not marker.exists(), "the page's code ran on this machine"


def test_a_page_cannot_reset_the_emulator(page: Any, attacker: Attacker, target: Target, intact: Snapshot) -> None:
    action = f"{target.settings.emulator_url}/_ministack/reset"
    assert submit_form(page, attacker, "reset", action, '<input type="hidden" name="init" value="1">').status == 403


def test_a_page_cannot_overwrite_the_live_model(
    page: Any, attacker: Attacker, target: Target, intact: Snapshot
) -> None:
    settings = target.settings
    url = f"{settings.emulator_url}/{settings.model_bucket}/{settings.model_key}"
    headers = {
        "Authorization": forged_authorization("s3"),
        "X-Amz-Date": FORGED_DATE,
        "x-amz-content-sha256": "UNSIGNED-PAYLOAD",
    }
    results = run_fetches(
        page,
        attacker,
        "s3-put",
        f"""
  await attempt("put", "{url}", {{method: "PUT", headers: {json.dumps(headers)}, body: "not a model"}});
  await attempt("delete", "{url}", {{method: "DELETE", headers: {json.dumps(headers)}}});""",
    )
    assert not unread(results), results
    # A form upload (S3's POST Object, no preflight), its policy signed with the well-known secret `test`, as a page's
    # script can sign it: MiniStack takes it (and it needs no CORS grant to do its work).
    s3 = boto3.client(
        "s3",
        endpoint_url=settings.emulator_url,
        region_name="us-east-1",
        aws_access_key_id="test",
        aws_secret_access_key="test",
    )
    post = s3.generate_presigned_post(settings.model_bucket, settings.model_key, ExpiresIn=600)
    hidden = "".join(f'<input type="hidden" name="{name}" value="{value}">' for name, value in post["fields"].items())
    attach = """const files = new DataTransfer();
files.items.add(new File(["not a model"], "model.onnx"));
document.getElementById("file").files = files.files;
"""
    fields = hidden + '<input type="file" name="file" id="file">'
    assert submit_form(page, attacker, "s3-post", post["url"], fields, attach).status == 403


def test_a_page_cannot_read_the_failure_queue(page: Any, attacker: Attacker, target: Target, intact: Snapshot) -> None:
    settings, sqs = target.settings, target.lab.aws.client("sqs")
    queue = sqs.get_queue_url(QueueName=settings.failure_queue_name)["QueueUrl"]
    sent = sqs.send_message(QueueUrl=queue, MessageBody=json.dumps({"secret": "a failed event's record"}))
    try:
        # A "simple" POST (form body, credentials in the query string): no preflight, and MiniStack answers `*`.
        query = (
            "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=test%2F20260101%2Fus-east-1%2Fsqs%2Faws4_request"
            f"&X-Amz-Date={FORGED_DATE}&X-Amz-SignedHeaders=host&X-Amz-Signature=00"
        )
        body = f"Action=ReceiveMessage&QueueUrl={queue}&Version=2012-11-05&VisibilityTimeout=0&MaxNumberOfMessages=10"
        results = run_fetches(
            page,
            attacker,
            "sqs",
            f"""
  await attempt("receive", "{settings.emulator_url}/?{query}", {{method: "POST",
      headers: {{"Content-Type": "application/x-www-form-urlencoded"}}, body: "{body}"}});""",
        )
        assert not unread(results), results
        received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10, VisibilityTimeout=0)
        assert sent["MessageId"] in [message["MessageId"] for message in received.get("Messages", [])]
    finally:
        received = sqs.receive_message(QueueUrl=queue, MaxNumberOfMessages=10)
        for message in received.get("Messages", []):
            if message["MessageId"] == sent["MessageId"]:
                sqs.delete_message(QueueUrl=queue, ReceiptHandle=message["ReceiptHandle"])


FORM_RECORD = '<input type="hidden" name="39,State-gov,77516" value="">'


def test_a_page_cannot_drive_the_labs_sagemaker(
    page: Any, attacker: Attacker, target: Target, intact: Snapshot
) -> None:
    """A model and a transform job created through the SageMaker API (a JSON call: preflighted), and an endpoint
    invoked with a "simple" text/plain POST (no preflight): all refused, nothing made."""
    settings = target.settings
    url = settings.sagemaker_emulator_url
    headers = {
        "Authorization": forged_authorization("sagemaker"),
        "X-Amz-Date": FORGED_DATE,
        "Content-Type": "application/x-amz-json-1.1",
    }
    create_model = {
        "ModelName": "evil-model",
        "ExecutionRoleArn": "arn:aws:iam::000000000000:role/evil",
        "PrimaryContainer": {"Image": "evil", "ModelDataUrl": f"s3://{settings.model_bucket}/{settings.model_key}"},
    }
    results = run_fetches(
        page,
        attacker,
        "sagemaker",
        f"""
  const headers = {json.dumps(headers)};
  await attempt("create model", "{url}/", {{method: "POST",
      headers: {{...headers, "X-Amz-Target": "SageMaker.CreateModel"}}, body: {json.dumps(json.dumps(create_model))}}});
  await attempt("list models", "{url}/", {{method: "POST",
      headers: {{...headers, "X-Amz-Target": "SageMaker.ListModels"}}, body: "{{}}"}});
  await attempt("invoke", "{url}/endpoints/any/invocations", {{method: "POST",
      headers: {{"Content-Type": "text/plain"}}, body: "39,State-gov"}});""",
    )
    assert not unread(results), results
    # A form POST needs no preflight and is always sent: the guard answers it, not the server behind it.
    invoked = submit_form(page, attacker, "sagemaker-form", f"{url}/endpoints/any/invocations", FORM_RECORD)
    assert invoked.status == 403 and invoked.headers.get("x-lab-guard") == "refused"
    sm = boto3.client("sagemaker", endpoint_url=url, region_name=target.lab.aws.region)
    assert "evil-model" not in [m["ModelName"] for m in sm.list_models(MaxResults=100)["Models"]]


@pytest.mark.parametrize("host", [EVIL, "localhost"])  # mlflow's own options let any http://localhost:<port> in
def test_a_page_cannot_write_to_mlflows_registry(
    page: Any, attacker: Attacker, target: Target, intact: Snapshot, host: str
) -> None:
    url = f"{target.settings.mlflow_server_url}/ajax-api/2.0/mlflow/registered-models/create"
    name = f"evil-model-{host.split('.')[0]}"
    body = json.dumps(json.dumps({"name": name}))
    results = run_fetches(
        page,
        attacker,
        f"mlflow-{host}",
        f"""
  await attempt("json", "{url}", {{method: "POST", headers: {{"Content-Type": "application/json"}}, body: {body}}});
  await attempt("simple", "{url}", {{method: "POST", headers: {{"Content-Type": "text/plain"}}, body: {body}}});
  await attempt("no-cors", "{url}", {{method: "POST", mode: "no-cors", body: {body}}});""",
        host=host,
    )
    assert [r["status"] for r in results.values()] == [None, None, 0], results  # no-cors: opaque, but sent
    assert name not in {m.name for m in registry.client(target.settings).search_registered_models()}


def test_a_page_cannot_promote_or_upload_through_the_console(
    page: Any, attacker: Attacker, target: Target, intact: Snapshot
) -> None:
    settings = target.settings
    promote = f"""<input type="hidden" name="name" value="{settings.model_name}">
<input type="hidden" name="version" value="{target.version}"><input type="hidden" name="csrf_token" value="guessed">"""
    refused = submit_form(page, attacker, "promote", f"{target.console_url}/promote", promote)
    assert refused.status == 403 and "request from another origin" in refused.text()
    upload = """<input type="file" name="file" id="file"><input type="hidden" name="key" value="attack/evil.csv">
<input type="hidden" name="csrf_token" value="guessed">"""
    attach = """const files = new DataTransfer();
files.items.add(new File(["age,sex\\n39,Male\\n"], "evil.csv", {type: "text/csv"}));
document.getElementById("file").files = files.files;
"""
    assert submit_form(page, attacker, "upload", f"{target.console_url}/upload", upload, attach).status == 403
    with pytest.raises(ClientError):
        target.lab.aws.client("s3").head_object(Bucket=settings.input_bucket, Key="attack/evil.csv")


def test_a_page_cannot_use_the_api(page: Any, attacker: Attacker, target: Target, intact: Snapshot) -> None:
    log = target.api.log
    seen = len(log.read_text().splitlines())
    url = f"{target.api.url}/predict"
    record = json.dumps(json.dumps({"age": 39}))
    results = run_fetches(
        page,
        attacker,
        "api",
        f"""
  await attempt("simple", "{url}", {{method: "POST", headers: {{"Content-Type": "text/plain"}}, body: {record}}});
  await attempt("guessed key", "{url}", {{method: "POST",
      headers: {{"Content-Type": "application/json", "X-API-Key": "guessed"}}, body: {record}}});""",
    )
    assert not unread(results), results
    lines = [json.loads(line) for line in log.read_text().splitlines()[seen:] if line.startswith("{")]
    statuses = [(line["method"], line["status"]) for line in lines if line.get("path") == "/predict"]
    # refused by the guard (403) before the key was even looked at (401), the preflight included
    assert statuses and {status for _, status in statuses} == {403}, statuses


def test_a_rebound_name_reaches_no_server(page: Any, target: Target, intact: Snapshot) -> None:
    """DNS rebinding: a page's own name, now resolving to 127.0.0.1, arrives in Host and gets 400 on every port."""
    settings = target.settings
    for port, path in (
        (settings.emulator_port, "/_ministack/health"),
        (settings.mlflow_port, "/ajax-api/2.0/mlflow/registered-models/search"),
        (int(target.api.url.rsplit(":", 1)[1]), "/metadata"),
        (int(target.console_url.rsplit(":", 1)[1]), "/"),
    ):
        response = page.goto(f"http://{EVIL}:{port}{path}")
        assert response is not None and response.status == 400, (port, response and response.status)
