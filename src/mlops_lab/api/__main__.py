"""``python -m mlops_lab.api [serve] [--host H] [--port P] [--model-source SRC]``.

``serve`` is accepted and ignored: SageMaker starts a container as ``docker run <image> serve``.
"""

from __future__ import annotations

import argparse

from mlops_lab.api import serve


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m mlops_lab.api", description=__doc__)
    parser.add_argument("mode", nargs="?", choices=["serve"], help="ignored (SageMaker's `serve`)")
    parser.add_argument("--host", help="default: LAB_API_HOST (127.0.0.1)")
    parser.add_argument("--port", type=int, help="default: LAB_API_PORT (8000)")
    parser.add_argument("--model-source", help="default: LAB_API_MODEL_SOURCE ('s3' = the model bucket)")
    args = parser.parse_args(argv)
    serve(host=args.host, port=args.port, model_source=args.model_source)


if __name__ == "__main__":
    main()
