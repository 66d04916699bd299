"""The records of the lab's SageMaker, as moto keeps them, and AWS's errors as the SDK reads them: what the server
(``server.py``) and the transform jobs (``transform_jobs.py``) share."""

from __future__ import annotations

import json
from typing import Any

from mlops_lab.errors import LabError
from mlops_lab.sagemaker.control_plane import EMULATOR_ACCOUNT


class AwsError(LabError):
    """An AWS API error, as the SDK will read it: ``__type`` and ``message`` in the body, the HTTP status."""

    def __init__(self, code: str, message: str, status: int = 400, **extra: Any) -> None:
        super().__init__(message)
        self.code, self.message, self.status, self.extra = code, message, status, extra

    def body(self) -> bytes:
        return json.dumps({"__type": self.code, "message": self.message, **self.extra}).encode()


def validation(message: str) -> AwsError:
    return AwsError("ValidationException", message)


class MotoRecords:
    """Reads (and, for UpdateEndpoint, changes) the records moto keeps, for one region and account."""

    def __init__(self, region: str) -> None:
        self.region = region

    def backends(self) -> list[Any]:
        from moto.sagemaker.models import sagemaker_backends

        return [regions[self.region] for _, regions in sagemaker_backends.items() if self.region in regions]

    def endpoint(self, name: str) -> tuple[Any, Any]:
        """(backend, endpoint) of ``name``; AWS's ValidationError when there is none."""
        for backend in self.backends():
            if name in backend.endpoints:
                return backend, backend.endpoints[name]
        raise validation(f"Endpoint {name} of account {self.account()} not found.")

    def endpoint_config(self, backend: Any, name: str) -> Any:
        config = backend.endpoint_configs.get(name)
        if config is None:
            raise validation(f'Could not find endpoint configuration "{name}".')
        return config

    def model(self, backend: Any, name: str) -> Any:
        model = backend._models.get(name)  # moto's own store: describe_model's
        if model is None:
            raise validation(f'Could not find model "{name}".')
        return model

    def account(self) -> str:
        backends = self.backends()
        return backends[0].account_id if backends else EMULATOR_ACCOUNT


def primary_container(model: Any) -> dict[str, Any]:
    container = model.primary_container or (model.containers[0] if model.containers else None)
    if not container:
        raise validation(f"Model {model.model_name} has no container.")
    return container
