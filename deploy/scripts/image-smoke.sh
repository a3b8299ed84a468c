#!/usr/bin/env bash
# Run the image as it would run in production and check it serves:
#   - with NO network (--network none): the model is inside, nothing is fetched at start;
#     the checks run inside the container against its own loopback (smoke_client.py);
#   - as a non-root user (the image's USER, and `id -u` in the running container);
#   - with the environment defaults of bentofile.yaml (TF_CPP_MIN_LOG_LEVEL);
#   - /readyz turns 200, a face photo posted to /api/v1/detect/ gets a sane verdict from the
#     model the image was built with; /livez and the health route answer;
#   - memory (PSS/RSS of the container's processes) idle and under a short load;
#   - SIGTERM stops it cleanly within the grace period.
#
#   IMAGE_TAG          image to test (default deepfake-detector:latest)
#   SMOKE_IMAGE        photo to post (default tests/fixtures/astronaut_face.png)
#   SMOKE_REQUESTS     requests of the load step (default 64; 0 skips it)
#   SMOKE_CONCURRENCY  concurrent clients of the load step (default 8)
#   READY_TIMEOUT      seconds to wait for /readyz (default 180)
#   SMOKE_RUN_OPTS     extra `run` options, e.g. "-e TF_NUM_INTRAOP_THREADS=1"
#   SMOKE_MODEL_ARCHIVE a .bentomodel (deploy/scripts/model-export.sh) to serve instead of
#                      the baked model, chosen by tag at start the way
#                      deploy/k8s/model-from-s3 does it: an init run of the image imports it
#                      into a store next to the baked model, the server mounts that store
#                      read-only and gets DEEPFAKE_MODEL_TAG=SMOKE_MODEL_TAG
#   KEEP_RUNNING=1     leave the container up (its name is printed)
set -euo pipefail
LOG_NAME=image-smoke
# shellcheck source=deploy/scripts/containers-env.sh
source "$(dirname "$0")/containers-env.sh"
cd "$PROJECT_ROOT"

IMAGE_TAG=${IMAGE_TAG:-deepfake-detector:latest}
SMOKE_IMAGE=${SMOKE_IMAGE:-tests/fixtures/astronaut_face.png}
SMOKE_REQUESTS=${SMOKE_REQUESTS:-64}
SMOKE_CONCURRENCY=${SMOKE_CONCURRENCY:-8}
READY_TIMEOUT=${READY_TIMEOUT:-180}
STOP_TIMEOUT=${STOP_TIMEOUT:-30}

oci_setup
oci_image_exists "$IMAGE_TAG" || die "no image $IMAGE_TAG: run make image"
[ -f "$SMOKE_IMAGE" ] || die "no photo $SMOKE_IMAGE"

# What the image says about itself.
image_user=$(oci image inspect "$IMAGE_TAG" --format '{{.Config.User}}')
expected_model=$(oci image inspect "$IMAGE_TAG" --format '{{range .Config.Env}}{{println .}}{{end}}' |
    sed -n 's/^DEEPFAKE_MODEL_TAG=//p')
size=$(oci image inspect "$IMAGE_TAG" --format '{{.Size}}')
log "image $IMAGE_TAG: $((size / 1000000)) MB, USER '${image_user}', DEEPFAKE_MODEL_TAG '${expected_model}'"
case "$image_user" in "" | root | 0 | 0:*) die "the image runs as root (USER '${image_user}')" ;; esac

name=deepfake-smoke-$$
store=$OCI_WORK/smoke-store-$$
cleanup() {
    if [ "${KEEP_RUNNING:-0}" = 1 ]; then
        log "left running: $name"
    else
        oci rm -f "$name" >/dev/null 2>&1 || true
        rm -rf "$store"
    fi
}
trap cleanup EXIT

run_opts=()
if [ -n "${SMOKE_MODEL_ARCHIVE:-}" ]; then
    [ -n "${SMOKE_MODEL_TAG:-}" ] || die "SMOKE_MODEL_ARCHIVE needs SMOKE_MODEL_TAG"
    mkdir -p "$store/fetch" "$store/home"
    cp "$SMOKE_MODEL_ARCHIVE" "$store/fetch/model.bentomodel"
    chmod -R a+rwX "$store" # the image's user writes here (Kubernetes: fsGroup on an emptyDir)
    log "init: import $(basename "$SMOKE_MODEL_ARCHIVE") next to the baked model"
    # The same steps as the import-model init container of deploy/k8s/model-from-s3.
    # shellcheck disable=SC2016 # expanded by bash inside the container
    oci run --rm --network none -v "$store/fetch:/fetch" -v "$store/home:/store" \
        -e BENTOML_HOME=/store -e DEEPFAKE_MODEL_TAG="$SMOKE_MODEL_TAG" --entrypoint bash "$IMAGE_TAG" -ec '
            mkdir -p /store/models
            cp -a "$BENTO_PATH/models/." /store/models/
            bentoml models import /fetch/model.bentomodel
            bentoml models get "$DEEPFAKE_MODEL_TAG" >/dev/null'
    run_opts+=(-v "$store/home/models:/home/bentoml/bento/models:ro" -e "DEEPFAKE_MODEL_TAG=$SMOKE_MODEL_TAG")
    expected_model=$SMOKE_MODEL_TAG
fi

t0=$SECONDS
# shellcheck disable=SC2086 # SMOKE_RUN_OPTS: word splitting wanted
oci run -d --name "$name" --network none "${run_opts[@]}" ${SMOKE_RUN_OPTS:-} "$IMAGE_TAG" >/dev/null
client() { oci exec "$name" python /tmp/smoke/smoke_client.py "$@"; }
# The client and the photo go in by copy: no volume, no port, no network needed.
stage=$OCI_WORK/smoke-$$
mkdir -p "$stage"
cp deploy/scripts/smoke_client.py "$stage/"
photo=face.${SMOKE_IMAGE##*.}
cp "$SMOKE_IMAGE" "$stage/$photo"
chmod -R a+rX "$stage"
oci cp "$stage" "$name:/tmp/smoke"
rm -rf "$stage"
photo=/tmp/smoke/$photo

if ! client ready "$READY_TIMEOUT"; then
    oci logs "$name" 2>&1 | tail -40 >&2
    die "the server did not become ready"
fi
log "ready $((SECONDS - t0))s after start (no network)"

uid=$(oci exec "$name" id -u)
log "runs as: $(oci exec "$name" id)"
[ "$uid" != 0 ] || die "the server runs as root"
[ "$(oci exec "$name" printenv TF_CPP_MIN_LOG_LEVEL)" = 2 ] || die "TF_CPP_MIN_LOG_LEVEL default missing"

client detect "$photo" "$expected_model"
client memory | sed 's/^/idle /'
if [ "$SMOKE_REQUESTS" -gt 0 ]; then
    client load "$photo" "$SMOKE_REQUESTS" "$SMOKE_CONCURRENCY"
    client memory | sed 's/^/after load /'
fi

# Graceful stop: SIGTERM, then the engine's timeout before SIGKILL.
s0=$SECONDS
oci stop -t "$STOP_TIMEOUT" "$name" >/dev/null
stop_s=$((SECONDS - s0))
exit_code=$(oci inspect "$name" --format '{{.State.ExitCode}}')
log "SIGTERM -> stopped in ${stop_s}s, exit code $exit_code"
[ "$stop_s" -lt "$STOP_TIMEOUT" ] || die "the server ignored SIGTERM (killed after ${STOP_TIMEOUT}s)"
if oci logs "$name" 2>&1 | grep -E "Traceback|ERROR" >"$OCI_WORK/smoke-errors.log"; then
    log "note: errors in the server log (see $OCI_WORK/smoke-errors.log):"
    head -5 "$OCI_WORK/smoke-errors.log" >&2
fi
log "smoke test OK ($((SECONDS - t0))s)"
