"""SageMaker through mlflow: `mlops-lab deploy sagemaker`.

The deployment itself is mlflow's own ``sagemaker`` deployments client, unpatched: it downloads the registered model
(``models:/<name>@champion``) through the tracking server, uploads it as ``model.tar.gz`` to the model bucket, then
creates the SageMaker model (image + execution role + model data), endpoint config and endpoint, and waits for
``InService``. What this package adds is what that client expects to exist, and where it talks to:

- ``control_plane``: where the SageMaker clients talk to (offline: moto, started as a service of the lab);
- ``prerequisites``: the image repository and the execution role mlflow's client expects;
- ``deployment``: ``deploy`` (create, replace, or recreate on moto), the lab's tags on what mlflow creates;
- ``delete``: ``delete_deployment`` (endpoint, configs, models, model data) and ``remaining``;
- ``invocations``: ``invoke_endpoint`` delivered to a container's ``/invocations`` (moto runs no containers).

The rest of the lab uses the names below through the package (``sagemaker.deploy(...)``), so that a test replacing
one of them on the package replaces it for every caller.
"""

from __future__ import annotations

from mlops_lab.sagemaker.control_plane import (
    ENDPOINT_VARIABLES,
    SERVICE_NAME,
    SageMakerUnreachable,
    emulator_service,
    ensure_emulator,
    sagemaker_client,
    sagemaker_endpoint,
)
from mlops_lab.sagemaker.delete import (
    CONFIG_SUFFIX,
    DELETE_WAIT,
    MODEL_SUFFIX,
    NAME_LIMIT,
    UNIQUE_ID_LENGTH,
    delete_deployment,
    delete_model_data,
    mlflow_base_name,
    name_pattern,
    remaining,
)
from mlops_lab.sagemaker.deployment import INSTANCE_TYPE, Deployment, deploy
from mlops_lab.sagemaker.invocations import forward_invocations, invoke_through_api
from mlops_lab.sagemaker.prerequisites import (
    EXECUTION_POLICY_NAME,
    ensure_repository,
    ensure_role,
    execution_policy,
    trust_policy,
)

__all__ = [
    "CONFIG_SUFFIX",
    "DELETE_WAIT",
    "ENDPOINT_VARIABLES",
    "EXECUTION_POLICY_NAME",
    "INSTANCE_TYPE",
    "MODEL_SUFFIX",
    "NAME_LIMIT",
    "SERVICE_NAME",
    "UNIQUE_ID_LENGTH",
    "Deployment",
    "SageMakerUnreachable",
    "delete_deployment",
    "delete_model_data",
    "deploy",
    "emulator_service",
    "ensure_emulator",
    "ensure_repository",
    "ensure_role",
    "execution_policy",
    "forward_invocations",
    "invoke_through_api",
    "mlflow_base_name",
    "name_pattern",
    "remaining",
    "sagemaker_client",
    "sagemaker_endpoint",
    "trust_policy",
]
