# The project image: the `mlops-lab` CLI with everything pyproject.toml pins (training, ONNX export, layer build) plus
# the mlflow client. docker-compose.yml runs it as the one-shot `bootstrap`; it is also a way to use the CLI without
# installing Python:  docker build -t mlops-lab . && docker run --rm -e AWS_ENDPOINT_URL=... mlops-lab status
# The source tree sits at /app (the CLI finds lambda/ and localstack/ next to src/, as in a checkout).
# Installs from ./wheels (a local wheelhouse, for offline builds) when it holds wheels, else from the package index.
ARG BASE_IMAGE=python:3.12-slim

FROM ${BASE_IMAGE} AS build
# Not in pyproject.toml's dependencies (the registry imports it lazily); pinned as the project's .venv resolves it.
ARG EXTRA_REQUIREMENTS="mlflow==3.17.2"
ENV PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_CACHE_DIR=1
COPY pyproject.toml wheel[s] /tmp/wheels/
RUN python3 -c 'import tomllib; deps = tomllib.load(open("/tmp/wheels/pyproject.toml", "rb"))["project"]["dependencies"]; print("\n".join(deps))' > /tmp/requirements.txt \
 && for req in ${EXTRA_REQUIREMENTS}; do \
        name="${req%%[=<>!~]*}"; grep -qi "^${name}[=<>!~ ]" /tmp/requirements.txt || echo "$req" >> /tmp/requirements.txt; \
    done \
 && python3 -m venv /opt/venv \
 && if ls /tmp/wheels/*.whl >/dev/null 2>&1; then \
        /opt/venv/bin/pip install --no-index --find-links /tmp/wheels -r /tmp/requirements.txt; \
    else \
        /opt/venv/bin/pip install -r /tmp/requirements.txt; \
    fi

FROM ${BASE_IMAGE}
COPY --from=build /opt/venv /opt/venv
# `mlops-lab`, run from the source tree (PYTHONPATH below), as pyproject.toml's console script does.
RUN useradd --create-home --uid 10001 lab \
 && printf '#!/bin/sh\nexec python3 -m mlops_lab.cli "$@"\n' > /usr/local/bin/mlops-lab \
 && chmod 755 /usr/local/bin/mlops-lab
COPY pyproject.toml README.md /app/
COPY src/ /app/src/
COPY lambda/ /app/lambda/
COPY localstack/requirements-ministack.txt /app/localstack/
USER lab
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONPATH=/app/src \
    PYTHONUNBUFFERED=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    MLFLOW_DISABLE_TELEMETRY=true \
    GIT_PYTHON_REFRESH=quiet \
    DO_NOT_TRACK=true \
    LAB_STATE_DIR=/tmp/lab \
    LAB_BUILD_DIR=/tmp/lab/build
ENTRYPOINT ["mlops-lab"]
CMD ["--help"]
