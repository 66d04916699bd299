"""SageMaker through mlflow: `mlops-lab deploy sagemaker`.

The deployment itself is mlflow's own ``sagemaker`` deployments client, unpatched: it downloads the registered model
(``models:/<name>@champion``) through the tracking server, uploads it as ``model.tar.gz`` to the model bucket, then
creates the SageMaker model (image + execution role + model data), endpoint config and endpoint, and waits for
``InService``. What this package adds is what that client expects to exist, and where it talks to:

- ``control_plane``: where the SageMaker clients talk to (offline: the lab's SageMaker, a service of the lab);
- ``server``, ``records``, ``workers``: the lab's SageMaker itself (moto's records, endpoints served, UpdateEndpoint);
- ``transform_jobs``, ``transform_runner``, ``transform_records``: Batch Transform jobs that really run, to AWS's rules;
- ``batch_transform``: `mlops-lab transform`, the SDK's calls that start and follow a job;
- ``prerequisites``: the image repository and the execution role mlflow's client expects;
- ``deployment``: ``deploy`` (create, replace, or recreate on moto), the lab's tags on what mlflow creates;
- ``delete``: ``delete_deployment`` (endpoint, configs, models, model data) and ``remaining``;
- ``invocations``: `deploy sagemaker`'s round trip through ``invoke_endpoint``.

The rest of the lab uses the names below through the package (``sagemaker.deploy(...)``), so that a test replacing
one of them on the package replaces it for every caller.
"""

from __future__ import annotations

from mlops_lab.sagemaker.control_plane import (
    ENDPOINT_VARIABLES,
    HEALTH_PATH,
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
from mlops_lab.sagemaker.invocations import invoke_endpoint
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
    "HEALTH_PATH",
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
    "invoke_endpoint",
    "mlflow_base_name",
    "name_pattern",
    "remaining",
    "sagemaker_client",
    "sagemaker_endpoint",
    "trust_policy",
]
