"""``python -m mlops_lab.api [serve] [--host H] [--port P] [--model-source SRC]``.

``serve`` is accepted and ignored: SageMaker starts a container as ``docker run <image> serve``.

The model served is, first found:

1. ``--model-source``;
2. ``LAB_API_MODEL_SOURCE`` (the environment or ``.env``);
3. inside a SageMaker container (``SAGEMAKER_BATCH=true``, or ``/opt/ml/model`` exists): ``/opt/ml/model``, the model
   data SageMaker unpacked there;
4. ``s3``: the model bucket's live model.

A source is ``s3``, ``s3://bucket/key``, ``models:/name@alias`` or ``models:/name/version``, a directory (its one
``.onnx`` file: an extracted ``model.tar.gz``, an mlflow model directory, a folder with a ``model.onnx``) or a file.
"""

from __future__ import annotations

import argparse
import sys

from mlops_lab.api import serve
from mlops_lab.errors import LabError, explain


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m mlops_lab.api", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mode", nargs="?", choices=["serve"], help="ignored (SageMaker's `serve`)")
    parser.add_argument("--host", help="default: LAB_API_HOST (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: LAB_API_PORT (8000)")
    parser.add_argument("--model-source", help="default: see above")
    args = parser.parse_args(argv)
    try:
        serve(host=args.host, port=args.port, model_source=args.model_source)
    except LabError as error:  # a container that cannot start says why in one line (SageMaker shows the log's end)
        problem = explain(error)
        print(f"mlops_lab.api: {problem.message}", file=sys.stderr)
        raise SystemExit(int(problem.code)) from None


if __name__ == "__main__":
    main()
