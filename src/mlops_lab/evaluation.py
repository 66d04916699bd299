"""Evaluation plots for a training run, made on its holdout and logged to mlflow (``mlflow.log_figure``).

A classifier gets a ROC curve, a precision-recall curve, a confusion matrix and a calibration plot (binary: of the
positive class; multi-class: one curve per class, one-vs-rest, and the calibration of the predicted class's
confidence); a regressor gets residuals and predicted-vs-actual. They land under ``plots/`` in the run's artifacts,
with the same names in every run, so mlflow's run comparison shows them side by side; the numbers behind them
(average precision, Brier score) are logged as metrics too. matplotlib draws off screen (Agg backend).
"""

from __future__ import annotations

from typing import Any

import numpy as np

PLOTS = "plots"


def _pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg", force=True)  # no display here, nor wanted
    import matplotlib.pyplot as plt

    return plt


def classifier_figures(
    y_true: Any, probabilities: np.ndarray, classes: list[str] | np.ndarray
) -> tuple[dict[str, Any], dict[str, float]]:
    """Figures ({artifact file name: figure}) and summary metrics of a classifier's holdout predictions.
    ``probabilities`` has one column per class, in ``classes`` order; the last class is the positive one of a
    binary classifier (scikit-learn's order)."""
    from sklearn.calibration import CalibrationDisplay
    from sklearn.metrics import (
        ConfusionMatrixDisplay,
        PrecisionRecallDisplay,
        RocCurveDisplay,
        average_precision_score,
        brier_score_loss,
    )

    plt = _pyplot()
    y = np.asarray(y_true).astype(str)
    labels = [str(c) for c in classes]
    probabilities = np.asarray(probabilities, dtype=float)
    predicted = np.asarray(labels)[probabilities.argmax(axis=1)]
    binary = len(labels) == 2
    targets = [labels[1]] if binary else labels
    figures: dict[str, Any] = {}
    metrics: dict[str, float] = {}

    roc, roc_ax = plt.subplots(figsize=(5.5, 5))
    pr, pr_ax = plt.subplots(figsize=(5.5, 5))
    for target in targets:
        column = probabilities[:, labels.index(target)]
        positive = y == target
        name = target if not binary else f"{target} (positive)"
        RocCurveDisplay.from_predictions(positive, column, name=name, ax=roc_ax)
        PrecisionRecallDisplay.from_predictions(positive, column, name=name, ax=pr_ax)
        key = "" if binary else f"_{_metric_name(target)}"
        metrics[f"average_precision{key}"] = float(average_precision_score(positive, column))
    roc_ax.plot([0, 1], [0, 1], linestyle="--", color="grey", linewidth=1)
    roc_ax.set_title("ROC on the holdout")
    pr_ax.set_title("Precision-recall on the holdout")
    figures["roc_curve.png"], figures["precision_recall_curve.png"] = roc, pr

    confusion, confusion_ax = plt.subplots(figsize=(5.5, 5))
    ConfusionMatrixDisplay.from_predictions(y, predicted, labels=labels, ax=confusion_ax, colorbar=False)
    confusion_ax.set_title("Confusion matrix on the holdout")
    figures["confusion_matrix.png"] = confusion

    calibration, calibration_ax = plt.subplots(figsize=(5.5, 5))
    if binary:
        column = probabilities[:, 1]
        CalibrationDisplay.from_predictions(y == labels[1], column, n_bins=10, name=labels[1], ax=calibration_ax)
        metrics["brier_score"] = float(brier_score_loss(y == labels[1], column))
    else:  # the confidence of the predicted class against how often it is right
        confidence = probabilities.max(axis=1)
        CalibrationDisplay.from_predictions(
            predicted == y, confidence, n_bins=10, name="predicted class", ax=calibration_ax
        )
    calibration_ax.set_title("Calibration on the holdout")
    figures["calibration.png"] = calibration
    for figure in figures.values():
        figure.tight_layout()
    return figures, metrics


def regressor_figures(y_true: Any, y_pred: Any) -> dict[str, Any]:
    """Residuals against the prediction, and predicted against actual, of a regressor's holdout predictions."""
    from sklearn.metrics import PredictionErrorDisplay

    plt = _pyplot()
    actual, predicted = np.asarray(y_true, dtype=float), np.asarray(y_pred, dtype=float)
    figures = {}
    for name, kind, title in (
        ("residuals.png", "residual_vs_predicted", "Residuals on the holdout"),
        ("predicted_vs_actual.png", "actual_vs_predicted", "Predicted vs actual on the holdout"),
    ):
        figure, ax = plt.subplots(figsize=(5.5, 5))
        PredictionErrorDisplay.from_predictions(actual, predicted, kind=kind, ax=ax)
        ax.set_title(title)
        figure.tight_layout()
        figures[name] = figure
    return figures


def log_figures(figures: dict[str, Any]) -> list[str]:
    """Log each figure into the active mlflow run under ``plots/``; close them; the artifact paths."""
    import mlflow

    plt = _pyplot()
    paths = []
    for name, figure in figures.items():
        path = f"{PLOTS}/{name}"
        mlflow.log_figure(figure, path)
        plt.close(figure)
        paths.append(path)
    return paths


def log_classifier_evaluation(pipeline: Any, features: Any, y_true: Any) -> list[str]:
    """Score ``features`` with the fitted ``pipeline`` and log the classifier's plots and their metrics into the
    active mlflow run; the artifact paths."""
    import mlflow

    figures, metrics = classifier_figures(y_true, pipeline.predict_proba(features), list(pipeline.classes_))
    mlflow.log_metrics(metrics)
    return log_figures(figures)


def _metric_name(label: str) -> str:
    return "".join(c if c.isalnum() or c in "_-." else "_" for c in label)
