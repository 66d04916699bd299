"""The lane of every test, declared here and nowhere else: what `make test-unit`, `make test-integration` and
`make test-slow` run (`make test` runs all three; docs/testing.md says what each costs).

- unit: starts no server and no process of the lab's; the lane as a whole takes well under a minute.
- integration: against the session's emulator stack (tests/conftest.py's ``lab_stack``, started once per run), or a
  server, process or stack a fixture starts; each test well under ~20 s once the stack is up.
- slow: the soak, the crash and restart tests, the browser tests, the CloudFormation deploy, the external suite's
  runs, the long schemathesis runs, and anything else over ~20 s of its own.

``LANE_OF`` maps a test module (its path under tests/), one test of it (``module::test``, every parametrization),
or one parametrization (``module::test[id]``) to its lane; the most specific entry wins. tests/conftest.py's hooks
mark each test with its lane (the markers ``unit``, ``integration`` and ``slow``). A test of a module the table does
not name, or a unit test whose fixtures start a server, fails before any of its fixtures runs, saying so; it is put
in the unit lane, the one CI runs first, so the table is fixed before anything else is waited for.
"""

from __future__ import annotations

from pathlib import Path

import pytest

UNIT, INTEGRATION, SLOW = "unit", "integration", "slow"
TESTS_DIR = Path(__file__).resolve().parent

# Fixtures that start a server (the emulator, mlflow, the API, the console, moto): a test whose fixture closure holds
# one of them is not a unit test, whatever the table says.
SERVER_FIXTURES = frozenset(
    {
        "lab_stack",  # the session's MiniStack, bootstrapped (tests/conftest.py)
        "mlflow_lab",  # mlflow's tracking server on the session's stack (tests/conftest.py)
        "api",  # the API as `up` runs it (tests/conftest.py)
        "live_server",  # the API as its image runs it (tests/api/conftest.py)
        "console_server",  # the lab console as `up` runs it (tests/console/conftest.py)
        "sagemaker_url",  # the lab's SageMaker (tests/test_sagemaker.py)
        "durable_lab",  # a stack of its own that the tests stop, kill and restart (tests/test_durability.py)
        "own_stack_env",  # settings for a stack the test brings up with `mlops-lab up` (tests/test_cli.py)
        "separate_ministack",  # a MiniStack the external suite runs against (tests/test_external_suite.py)
    }
)

LANE_OF: dict[str, str] = {
    # -- the API (tests/api): TestClient, in process -------------------------------------------------------------
    "api/test_app.py": UNIT,
    "api/test_batch_contract.py": UNIT,
    "api/test_fast_path.py": UNIT,
    "api/test_image.py": UNIT,
    "api/test_live.py": INTEGRATION,
    "api/test_model_kinds.py": UNIT,
    "api/test_schemathesis.py": UNIT,
    "api/test_schemathesis.py::test_generated_requests[classifier-full]": SLOW,
    "api/test_schemathesis.py::test_generated_requests[regressor]": SLOW,
    # -- the lab console (tests/console) ---------------------------------------------------------------------------
    "console/test_app.py": UNIT,
    "console/test_browser.py": SLOW,
    "console/test_console.py": INTEGRATION,
    "console/test_model_cache.py": UNIT,
    # -- suites run against a stack someone else started (skipped, or not collected, in these lanes) -------------
    "compose/test_console.py": INTEGRATION,  # `make test-compose`
    "compose/test_stack.py": INTEGRATION,
    "external/test_external_pipeline.py": INTEGRATION,  # `make test-external`, and test_external_suite.py
    # -- the rest, module by module --------------------------------------------------------------------------------
    "test_any_account.py": INTEGRATION,
    "test_browser_attack.py": SLOW,  # Chromium
    "test_cli.py": INTEGRATION,
    "test_cli.py::test_help_lists_the_pipeline_steps": UNIT,
    "test_cli.py::test_predict_missing_file_is_a_usage_error": UNIT,
    "test_cloudformation.py": UNIT,
    "test_cloudformation.py::test_template_deploys_scores_a_csv_and_deletes_cleanly": SLOW,
    "test_data.py": UNIT,
    "test_docs.py": UNIT,
    "test_durability.py": SLOW,
    "test_errors.py": UNIT,
    "test_evaluation.py": UNIT,
    "test_evaluation.py::test_each_training_run_logs_its_plots": INTEGRATION,
    "test_external_suite.py": UNIT,
    "test_external_suite.py::test_the_external_suite_passes_against_a_separate_ministack": SLOW,
    "test_guard.py": UNIT,
    "test_guard_live.py": INTEGRATION,
    "test_handler.py": UNIT,
    "test_handler.py::test_bad_file_does_not_stop_the_good_one": INTEGRATION,
    "test_handler.py::test_handler_scores_every_record": INTEGRATION,
    "test_handler.py::test_model_is_cached_until_its_etag_changes": INTEGRATION,
    "test_handler_faults.py": INTEGRATION,
    "test_inference.py": UNIT,
    "test_jobs.py": UNIT,
    "test_jobs.py::test_jobs_lists_predictions_and_rejections_newest_first": INTEGRATION,
    "test_jobs.py::test_predict_json": INTEGRATION,
    "test_lab_files.py": UNIT,
    "test_layer.py": UNIT,
    "test_layering.py": UNIT,
    "test_logs.py": UNIT,
    "test_logs.py::test_logs_function_follow_sees_a_new_invocation": INTEGRATION,
    "test_logs.py::test_logs_function_reads_the_log_group_on_the_emulator": INTEGRATION,
    "test_logs.py::test_logs_of_a_service_file": INTEGRATION,
    "test_model_describe.py": UNIT,
    "test_mlflow_transform.py": INTEGRATION,
    "test_model_import.py": INTEGRATION,
    "test_ownership.py": INTEGRATION,
    "test_ownership.py::test_two_long_prefixes_never_share_sagemaker_names": UNIT,
    "test_ownership.py::test_teardown_goes_by_the_inventorys_names": UNIT,
    "test_pipeline.py": INTEGRATION,
    "test_plan.py": UNIT,
    "test_plan.py::test_plan_by_command_as_json": INTEGRATION,
    "test_plan.py::test_plan_for_a_new_prefix_lists_everything_and_creates_nothing": INTEGRATION,
    "test_plan.py::test_plan_for_the_running_lab_changes_nothing_and_sees_drift": INTEGRATION,
    "test_policy_lint.py": UNIT,
    "test_processes.py": INTEGRATION,  # like test_stack.py: small processes of its own
    "test_publish_trust.py": UNIT,
    "test_publish_trust.py::test_a_real_external_tracking_server_needs_trust": INTEGRATION,
    "test_recovery.py": UNIT,
    "test_registry.py": INTEGRATION,
    "test_registry.py::test_train_without_a_server_still_works": UNIT,
    "test_sagemaker.py": INTEGRATION,
    "test_sagemaker_server.py": INTEGRATION,
    "test_sagemaker.py::test_cli_refuses_a_real_endpoint_without_yes": UNIT,
    "test_sagemaker.py::test_mlflow_names_are_the_ones_delete_looks_for": UNIT,
    "test_sdk_conventions.py": UNIT,
    "test_sdk_conventions.py::test_the_profile_reaches_the_running_emulator": INTEGRATION,
    "test_stack.py": INTEGRATION,  # it starts (and kills) small processes of its own: seconds, not a server
    "test_staleness.py": INTEGRATION,
    "test_teardown.py": INTEGRATION,
    "test_teardown.py::test_lab_tags_are_validated_as_aws_takes_them": UNIT,
    "test_train.py": UNIT,
    "test_transform_jobs.py": INTEGRATION,
    "test_transform_records.py": UNIT,
    "test_wide_rows.py": UNIT,
    "test_wide_rows.py::test_byte_cap_bounds_peak_memory_of_wide_rows": INTEGRATION,  # a subprocess, ~5 s
}


# Why a test has no lane it can run in (tests/conftest.py fails it with this before its fixtures are set up).
LANE_PROBLEM = pytest.StashKey[str]()


def lane_of(item: pytest.Item) -> str | None:
    """The lane ``LANE_OF`` gives ``item``: its parametrization's entry, else its test's, else its module's."""
    module = Path(str(item.path)).resolve().relative_to(TESTS_DIR).as_posix()
    name = getattr(item, "originalname", item.name)
    for key in (f"{module}::{item.name}", f"{module}::{name}", module):
        if key in LANE_OF:
            return LANE_OF[key]
    return None


def mark_lanes(items: list[pytest.Item]) -> None:
    """Mark every collected test with its lane; one without a lane it can run in is stashed a ``LANE_PROBLEM``."""
    for item in items:
        lane = lane_of(item)
        servers = SERVER_FIXTURES.intersection(getattr(item, "fixturenames", ()))
        if lane is None:
            module = item.nodeid.split("::")[0]
            item.stash[LANE_PROBLEM] = f"tests/lanes.py names no lane for {module}: add it to LANE_OF"
        elif lane == UNIT and servers:
            item.stash[LANE_PROBLEM] = (
                f"tests/lanes.py puts it in the unit lane, but its fixtures start a server "
                f"({', '.join(sorted(servers))}): give it the integration or the slow lane there"
            )
        item.add_marker(lane or UNIT)
