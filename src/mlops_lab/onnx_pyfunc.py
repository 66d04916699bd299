"""The registered model's pyfunc: the ONNX export, scored by the lab's own inference core.

Logged "from code" (mlflow's models-from-code): this file is copied into the model, next to ``model.onnx`` and
``inference.py`` (a ``code_paths`` entry), so ``mlflow models serve`` and mlflow's SageMaker image score exactly what
the Lambda and the API score, with no dependency on the rest of the lab. Output: one row per input row, ``prediction``
plus ``probability_<class>`` (the batch Lambda's columns).
"""

from __future__ import annotations

from typing import Any

import mlflow
import pandas as pd

try:
    from mlops_lab.inference import PREDICTION_COLUMN, TabularModel, probability_column
except ImportError:  # inside a served model: code_paths puts inference.py itself on sys.path
    from inference import PREDICTION_COLUMN, TabularModel, probability_column  # type: ignore[no-redef]


class OnnxTabularModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context: Any) -> None:
        self.model = TabularModel(context.artifacts["onnx"])

    def predict(self, context: Any, model_input: pd.DataFrame, params: dict[str, Any] | None = None) -> pd.DataFrame:
        frame = pd.DataFrame(model_input)
        columns = {name: frame[name].tolist() for name in self.model.feature_names if name in frame}
        prediction = self.model.predict(columns)
        out = pd.DataFrame(prediction.probabilities, columns=[probability_column(c) for c in prediction.classes])
        out.insert(0, PREDICTION_COLUMN, prediction.labels.astype(str))
        return out


mlflow.models.set_model(OnnxTabularModel())
