#!/bin/sh
# The mlflow tracking server as the lab runs it: registry + tracking in MLFLOW_BACKEND_STORE_URI (sqlite on the
# /var/lib/mlflow volume by default; any SQLAlchemy URI, e.g. postgresql+psycopg://...), artifacts proxied by the
# server into MLFLOW_ARTIFACTS_DESTINATION (default s3://$LAB_PREFIX-model/mlflow, through AWS_ENDPOINT_URL /
# MLFLOW_S3_ENDPOINT_URL when set), so clients need no S3 credentials. Telemetry off.
# Extra arguments are passed to `mlflow server` (e.g. --allowed-hosts, or --artifacts-destination to override).
set -eu

export MLFLOW_DISABLE_TELEMETRY=true DO_NOT_TRACK=true
# The job runner serves GenAI jobs the lab does not use (a huey worker pool): off unless asked for.
export MLFLOW_SERVER_ENABLE_JOB_EXECUTION="${MLFLOW_SERVER_ENABLE_JOB_EXECUTION:-false}"
backend="${MLFLOW_BACKEND_STORE_URI:-sqlite:////var/lib/mlflow/mlflow.db}"
destination="${MLFLOW_ARTIFACTS_DESTINATION:-s3://${LAB_PREFIX:-mlops-lab}-model/mlflow}"
if [ -n "${AWS_ENDPOINT_URL:-}" ] && [ -z "${MLFLOW_S3_ENDPOINT_URL:-}" ]; then
    export MLFLOW_S3_ENDPOINT_URL="$AWS_ENDPOINT_URL"
fi

case " $* " in
    *" --artifacts-destination "*) set -- "$@" ;;
    *) set -- --artifacts-destination "$destination" "$@" ;;
esac

# Through the lab's guard (src/mlops_lab/guard.py): mlflow's own server, its app wrapped (LAB_GUARD_ORIGINS: the lab's
# own origins as a browser sees them).
exec python3 /opt/lab/lab_guard.py mlflow \
    --host "${MLFLOW_HOST:-0.0.0.0}" \
    --port "${MLFLOW_PORT:-5000}" \
    --workers "${MLFLOW_WORKERS:-1}" \
    --backend-store-uri "$backend" \
    --serve-artifacts \
    "$@"
