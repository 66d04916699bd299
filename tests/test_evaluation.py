"""Evaluation plots: made on a holdout, logged to mlflow as figures (no server needed for the figures)."""

from __future__ import annotations

import json

import numpy as np
from mlflow import MlflowClient
from typer.testing import CliRunner

from mlops_lab import evaluation, training
from mlops_lab.cli import app
from tests.support import Lab

runner = CliRunner()
CLASSIFIER_PLOTS = {"roc_curve.png", "precision_recall_curve.png", "confusion_matrix.png", "calibration.png"}


def test_a_binary_classifier_gets_four_plots_and_their_numbers() -> None:
    rng = np.random.default_rng(0)
    y = rng.choice(["<=50K", ">50K"], size=400, p=[0.7, 0.3])
    positive = np.clip((y == ">50K") * 0.6 + rng.normal(0.2, 0.2, size=400), 0, 1)
    figures, metrics = evaluation.classifier_figures(y, np.column_stack([1 - positive, positive]), ["<=50K", ">50K"])
    assert set(figures) == CLASSIFIER_PLOTS
    assert 0.5 < metrics["average_precision"] <= 1 and 0 <= metrics["brier_score"] < 0.25
    roc_axes = figures["roc_curve.png"].axes[0]
    assert ">50K" in roc_axes.get_legend_handles_labels()[1][0]


def test_a_multi_class_classifier_gets_a_curve_per_class() -> None:
    rng = np.random.default_rng(1)
    classes = ["setosa", "versicolor", "virginica"]
    y = rng.choice(classes, size=300)
    scores = rng.random((300, 3)) + np.eye(3)[[classes.index(v) for v in y]]
    figures, metrics = evaluation.classifier_figures(y, scores / scores.sum(axis=1, keepdims=True), classes)
    assert set(figures) == CLASSIFIER_PLOTS
    assert {f"average_precision_{c}" for c in classes} <= set(metrics)
    assert len(figures["roc_curve.png"].axes[0].get_legend_handles_labels()[1]) == 3


def test_a_regressor_gets_residuals_and_predicted_vs_actual() -> None:
    actual = np.linspace(0, 100, 50)
    figures = evaluation.regressor_figures(actual, actual + np.sin(actual))
    assert set(figures) == {"residuals.png", "predicted_vs_actual.png"}


def test_each_training_run_logs_its_plots(mlflow_lab: Lab, cli_env: None) -> None:
    logged = training.train_and_log(mlflow_lab.settings, rows=3000, seed=9, run_name="plots")
    client = MlflowClient(mlflow_lab.settings.mlflow_tracking_uri)
    listed = {item.path for item in client.list_artifacts(logged.run_id, evaluation.PLOTS)}
    assert listed == {f"{evaluation.PLOTS}/{name}" for name in CLASSIFIER_PLOTS}
    metrics = client.get_run(logged.run_id).data.metrics
    assert {"average_precision", "brier_score"} <= set(metrics)
    listed_json = runner.invoke(app, ["models", "--json", "--name", logged.name])
    assert listed_json.exit_code == 0, listed_json.output
    versions = {row["version"]: row for row in json.loads(listed_json.stdout)["versions"]}
    assert versions[logged.version]["run_id"] == logged.run_id
