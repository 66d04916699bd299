"""The registered model's pyfunc: the ONNX export, scored by the lab's own inference core.

Logged "from code" (mlflow's models-from-code): this file is copied into the model, next to ``model.onnx`` and
``inference.py`` (a ``code_paths`` entry), so ``mlflow models serve`` and mlflow's SageMaker image score exactly what
the Lambda and the API score, with no dependency on the rest of the lab. Output: one row per input row, the batch
Lambda's columns (``output_columns``): ``prediction`` — a classifier's label (str), a regressor's value (a float) — then
``probability_<class>`` per class when the model gives probabilities.
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

try:
    from mlops_lab.inference import PREDICTION_COLUMN, REGRESSOR, Prediction, TabularModel, probability_column
except ImportError:  # inside a served model: code_paths puts inference.py itself on sys.path
    from inference import (  # type: ignore[no-redef]
        PREDICTION_COLUMN,
        REGRESSOR,
        Prediction,
        TabularModel,
        probability_column,
    )


def prediction_frame(prediction: Prediction) -> pd.DataFrame:
    """``prediction`` as the pyfunc's output frame: ``prediction`` (a regressor's values as the model gives them,
    float32 or float64; else the labels as str), then the probability columns, if any (float32, as the core gives
    them)."""
    values = prediction.labels if prediction.kind == REGRESSOR else prediction.labels.astype(str)
    frame = pd.DataFrame({PREDICTION_COLUMN: values})
    for i, name in enumerate(prediction.classes):
        frame[probability_column(name)] = prediction.probabilities[:, i]
    return frame


class OnnxTabularModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = TabularModel(context.artifacts["onnx"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        columns = {name: frame[name].tolist() for name in self.model.feature_names if name in frame}
        return prediction_frame(self.model.predict(columns))


mlflow.models.set_model(OnnxTabularModel())
