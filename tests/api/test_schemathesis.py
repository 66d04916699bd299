"""Property-based run of the whole API from its own ``/openapi.json``: schemathesis generates valid (positive) and
invalid (negative) requests for every operation; no request may cause a 5xx, and every response must match what the
document declares (status code, content type, schema).

Drives schemathesis' hypothesis strategies directly (its pytest plugin's ``from_fixture`` does not support pytest 9).
"""

from __future__ import annotations

from collections import Counter

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import positive_data_acceptance

from mlops_lab.api.app import create_app
from tests.support import lab_settings

KEY = "st-key"  # with a key set, schemathesis also checks that requests without it are refused
# Per run: the model, the examples per operation and generation mode (upper bounds), and at least how many requests
# that makes in all. The lab's kind of classifier gets a short run in the unit lane; it and a regressor (other inputs,
# other response rows) get their long runs in the slow lane (tests/lanes.py).
RUNS = {
    "classifier": ("small_model", {GenerationMode.POSITIVE: 15, GenerationMode.NEGATIVE: 10}, 60),
    "classifier-full": ("small_model", {GenerationMode.POSITIVE: 300, GenerationMode.NEGATIVE: 200}, 1000),
    "regressor": ("regressor_model", {GenerationMode.POSITIVE: 80, GenerationMode.NEGATIVE: 50}, 250),
}


@pytest.fixture(params=list(RUNS))
def api_run(request, tmp_path):
    """(the API's schema to generate requests from, the examples per mode, at least how many requests in all)."""
    model, examples_per_mode, at_least = RUNS[request.param]
    # schemathesis' ASGI client sends `Host: testserver`: a name the guard serves only when configured
    settings_ = lab_settings(
        tmp_path, api_model_poll_s=0, api_access_log=False, api_max_rows=20, api_key=KEY, allowed_hosts=["testserver"]
    )
    app = create_app(settings_, model_source=request.getfixturevalue(model))
    assert app.state.store.check()  # load now: the schema under test is the served model's
    return schemathesis.openapi.from_asgi("/openapi.json", app), examples_per_mode, at_least


def test_generated_requests(api_run):
    api_schema, examples_per_mode, at_least = api_run
    calls: Counter[tuple[str, str, int]] = Counter()
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) == 7  # /health /ready /ping /metadata /predict /invocations /execution-parameters
    for operation in operations:
        for mode, examples in examples_per_mode.items():

            @given(case=operation.as_strategy(generation_mode=mode))
            @settings(max_examples=examples, deadline=None, suppress_health_check=list(HealthCheck), database=None)
            def run(case):  # called at once, inside this iteration: the loop variables are the current ones
                response = case.call(headers={"X-API-Key": KEY})
                calls[(operation.label, mode.value, response.status_code)] += 1  # noqa: B023
                assert response.status_code < 500, (
                    f"{case.method} {case.path} -> {response.status_code}: {response.text}"
                )
                if mode is GenerationMode.POSITIVE:  # noqa: B023
                    # A CSV or JSON Lines body is documented as a string: most strings are not records of the model.
                    as_text = case.media_type in ("text/csv", "application/jsonlines")
                    excluded = [positive_data_acceptance] if as_text else []
                    case.validate_response(response, headers={"X-API-Key": KEY}, excluded_checks=excluded)

            try:
                run()
            except Unsatisfiable:  # nothing to make invalid (e.g. a GET without parameters)
                assert mode is GenerationMode.NEGATIVE, operation.label
    total = sum(calls.values())
    print(f"\nschemathesis: {total} generated requests")
    for key, count in sorted(calls.items()):
        print(f"  {count:5d}  {key}")
    assert total >= at_least
    # valid requests reached every operation's success path (with the key, the model loaded) ...
    assert {label for label, mode, status in calls if mode == "positive" and status == 200} == {
        operation.label for operation in operations
    }
    # ... and invalid bodies were refused by the validation, not only by the key check or the limits
    assert {label for label, mode, status in calls if mode == "negative" and status == 422} == {
        "POST /predict",
        "POST /invocations",
    }
