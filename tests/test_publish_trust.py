"""The trust boundary of `publish`: reading an ONNX file runs none of its content, loading a scikit-learn model runs
code from its artifact. From a tracking server the lab did not start (MLFLOW_TRACKING_URI), a scikit-learn model is
loaded only with ``--trust``; refused otherwise, before anything of it is loaded, with an error naming the flag."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from typer.testing import CliRunner

from mlops_lab import model_import, registry
from mlops_lab import settings as lab_settings
from mlops_lab.cli import app
from mlops_lab.errors import ExitCode, explain
from mlops_lab.settings import Settings
from tests import model_zoo
from tests.support import Lab, free_port, restoring_live_model

EXTERNAL = "https://mlflow.example.org"


@pytest.fixture
def external(monkeypatch: pytest.MonkeyPatch) -> Settings:
    """Settings whose registry is a tracking server of the user's own (MLFLOW_TRACKING_URI, read at start-up)."""
    monkeypatch.setattr(lab_settings, "USER_TRACKING_URI", EXTERNAL)
    settings = Settings(_env_file=None)
    assert settings.mlflow_external
    return settings


@pytest.fixture
def own() -> Settings:
    settings = Settings(_env_file=None)
    assert not settings.mlflow_external
    return settings


class Loads:
    """Stands in for mlflow's reading of a registered model: says which flavour it has and records what is loaded."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch, flavor: str) -> None:
        import mlflow.models
        import mlflow.onnx
        import mlflow.sklearn

        self.loaded: list[str] = []
        info = SimpleNamespace(flavors={flavor: {}, "python_function": {}}, metadata=None, signature=None)
        monkeypatch.setattr(registry, "client", lambda settings: None)
        monkeypatch.setattr(mlflow.models, "get_model_info", lambda uri: info)
        monkeypatch.setattr(model_import, "_input_example", lambda uri: None)
        monkeypatch.setattr(mlflow.sklearn, "load_model", self._load("sklearn"))
        monkeypatch.setattr(mlflow.onnx, "load_model", self._load("onnx"))

    def _load(self, flavor: str) -> Any:
        def load(uri: str) -> Any:
            self.loaded.append(flavor)
            raise LookupError(f"(the test stops at loading the {flavor} model)")

        return load


def test_a_scikit_learn_model_from_an_external_server_is_refused_without_trust(
    external: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    loads = Loads(monkeypatch, "sklearn")
    with pytest.raises(model_import.UntrustedModel) as refused:
        model_import.read_source(external, "models:/notebook/3")
    assert loads.loaded == []  # refused before any of it was loaded
    problem = explain(refused.value)
    assert problem.code == ExitCode.REFUSED
    assert "--trust" in problem.message and EXTERNAL in problem.message and "runs code" in problem.message


def test_trust_loads_it(external: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = Loads(monkeypatch, "sklearn")
    with pytest.raises(LookupError):
        model_import.read_source(external, "models:/notebook/3", trust=True)
    assert loads.loaded == ["sklearn"]


def test_the_labs_own_server_needs_no_flag(own: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    loads = Loads(monkeypatch, "sklearn")
    with pytest.raises(LookupError):
        model_import.read_source(own, "models:/notebook/3")
    assert loads.loaded == ["sklearn"]


def test_an_onnx_model_needs_no_flag_wherever_it_comes_from(
    external: Settings, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    loads = Loads(monkeypatch, "onnx")
    with pytest.raises(LookupError):
        model_import.read_source(external, "models:/onnx-model/1")
    assert loads.loaded == ["onnx"]
    path = model_zoo.tensor_classifier(tmp_path / "model.onnx", zipmap=False)
    assert model_import.read_source(external, str(path)).onnx == path.read_bytes()


def test_publish_passes_trust_on(own: Settings, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[bool] = []

    def read_source(settings: Settings, origin: str, *, sample: Any = None, trust: bool = False) -> Any:
        seen.append(trust)
        raise LookupError("stop")

    monkeypatch.setattr(model_import, "read_source", read_source)
    for trust in (False, True):
        with pytest.raises(LookupError):
            model_import.import_model(own, None, "models:/notebook/3", trust=trust)  # type: ignore[arg-type]
    assert seen == [False, True]


def test_publish_help_states_the_trust_boundary() -> None:
    result = CliRunner().invoke(app, ["publish", "--help"], env={"COLUMNS": "200", "NO_COLOR": "1"})
    assert result.exit_code == 0
    text = " ".join(result.output.split())
    assert "--trust" in text
    assert "runs code from its artifact" in text and "reading an ONNX file runs no code" in text


def test_the_docs_state_the_trust_boundary() -> None:
    text = " ".join((Path(__file__).parents[1] / "docs" / "using.md").read_text().split())
    assert "--trust" in text and "runs code" in text


# -- against a real tracking server the settings do not call their own ------------------------------------------------


def test_a_real_external_tracking_server_needs_trust(
    mlflow_lab: Lab, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The session's mlflow server, seen from settings whose own server would be elsewhere: it is a tracking server
    the lab did not start. A scikit-learn model logged there is refused; with trust, it is published."""
    import mlflow
    import mlflow.sklearn
    from sklearn.datasets import load_iris
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    data = load_iris(as_frame=True)
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(max_iter=500)).fit(data.data, data.target)
    registry.client(mlflow_lab.settings)
    mlflow.set_experiment("trust-boundary")
    with mlflow.start_run():
        logged = mlflow.sklearn.log_model(pipeline, name="model", input_example=data.data.head(5))
    monkeypatch.setattr(lab_settings, "USER_TRACKING_URI", mlflow_lab.settings.mlflow_server_url)
    settings = mlflow_lab.settings.model_copy(update={"mlflow_port": free_port()})
    assert settings.mlflow_external
    with pytest.raises(model_import.UntrustedModel, match="--trust"):
        model_import.import_model(settings, mlflow_lab.aws, logged.model_uri, mlflow=False)
    with restoring_live_model(mlflow_lab):
        imported = model_import.import_model(settings, mlflow_lab.aws, logged.model_uri, mlflow=False, trust=True)
    assert "ONNX agrees with scikit-learn" in imported.checked
