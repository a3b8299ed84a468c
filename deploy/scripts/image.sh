#!/usr/bin/env bash
# Build the Bento (code + locked packages + the model) and turn it into an OCI image with
# `bentoml containerize`: Docker where an engine answers, otherwise buildah (daemonless, no
# root daemon; see containers-env.sh). The model is baked in: the image needs no network
# and no object storage at start.
#
#   IMAGE_TAG           image name:tag (default deepfake-detector:latest)
#   DEEPFAKE_MODEL_TAG  the model to pack (default deepfake_classifier:latest, from .bentoml/);
#                       the image also gets it, resolved to its exact version, as its default
#                       DEEPFAKE_MODEL_TAG (a build argument of the generated Dockerfile)
#   BENTO_TAG           containerize this existing Bento instead of building one
#   LOCK_PLATFORM       `bentoml build --platform` (default x86_64-manylinux_2_36; an arm64
#                       image needs aarch64-manylinux_2_36, see deploy/README.md)
#   PLATFORM            docker only: the image platform, e.g. linux/arm64
#   CONTAINERIZE_OPTS   extra `bentoml containerize` arguments, e.g. "--opt push"
set -euo pipefail
LOG_NAME=image
# shellcheck source=deploy/scripts/containers-env.sh
source "$(dirname "$0")/containers-env.sh"
cd "$PROJECT_ROOT"

IMAGE_TAG=${IMAGE_TAG:-deepfake-detector:latest}
BENTOML=${BENTOML:-$PROJECT_ROOT/.venv/bin/bentoml}
PYTHON=${VENV_PYTHON:-$PROJECT_ROOT/.venv/bin/python}
export BENTOML_HOME=${BENTOML_HOME:-$PROJECT_ROOT/.bentoml}
export BENTOML_DO_NOT_TRACK=true
[ -x "$BENTOML" ] || die "$BENTOML not found: run make setup"

oci_setup

# 1. The Bento. Building again is cheap (seconds) and picks up the current code.
if [ -z "${BENTO_TAG:-}" ]; then
    log "bentoml build (model ${DEEPFAKE_MODEL_TAG:-deepfake_classifier:latest})"
    build_args=()
    [ -n "${LOCK_PLATFORM:-}" ] && build_args+=(--platform "$LOCK_PLATFORM")
    BENTO_TAG=$("$BENTOML" build "${build_args[@]}" -o tag | sed -n 's/^__tag__://p' | tail -1)
    [ -n "$BENTO_TAG" ] || die "bentoml build printed no tag"
fi
bento_dir=$("$BENTOML" get "$BENTO_TAG" -o path)
# The classifier the Bento serves, from its bento.yaml (beside it: the face detector's files).
model_tag=$("$PYTHON" - "$bento_dir/bento.yaml" <<'PY'
import sys

import yaml

from modeling.spec import DETECTOR_FILES_NAME

info = yaml.safe_load(open(sys.argv[1]))
tags = sorted({m["tag"] for s in info.get("services", []) for m in s.get("models", [])})
print(" ".join(t for t in tags if not t.startswith(DETECTOR_FILES_NAME + ":")))
PY
)
[ -n "$model_tag" ] || die "bento $BENTO_TAG references no model"
case "$model_tag" in *" "*) die "bento $BENTO_TAG references several classifiers: $model_tag" ;; esac
from_line=$(grep -m1 '^FROM' "$bento_dir/env/docker/Dockerfile")
log "bento $BENTO_TAG, model $model_tag, ${from_line}"

base=$(awk '/^FROM/ { print $2; exit }' "$bento_dir/env/docker/Dockerfile")
if ! oci_image_exists "$base" && ! oci_image_exists "docker.io/library/$base"; then
    # Without a Docker engine the builder would pull it, and a host that reaches only package
    # mirrors cannot: pull if a registry answers, else build it from the apt mirror.
    if [ "$OCI_ENGINE" != docker ] && ! timeout 60 podman pull -q "docker.io/library/$base" >/dev/null 2>&1; then
        log "$base is not present and no registry answers: building it from the apt mirror (base-image.sh)"
        BASE_TAG="docker.io/library/$base" bash "$(dirname "$0")/base-image.sh"
    fi
fi

# 2. The image.
args=(containerize "$BENTO_TAG" -t "$IMAGE_TAG" --opt "build-arg=DEEPFAKE_MODEL_TAG=$model_tag")
if [ "$OCI_ENGINE" = docker ]; then
    args+=(--backend docker)
    [ -n "${PLATFORM:-}" ] && args+=(--opt "platform=$PLATFORM")
else
    # host network: RUN steps reach the apt mirror and PyPI the way this host does (no CNI
    # bridge, no NAT rules needed in a sandbox).
    args+=(--backend buildah --opt network=host)
fi
# shellcheck disable=SC2206 # word splitting wanted
[ -n "${CONTAINERIZE_OPTS:-}" ] && args+=($CONTAINERIZE_OPTS)

mkdir -p "$OCI_WORK"
build_log=$OCI_WORK/containerize.log
log "bentoml ${args[*]}"
t0=$SECONDS
if ! "$BENTOML" "${args[@]}" >"$build_log" 2>&1; then
    grep -v UserWarning "$build_log" | tail -40 >&2
    die "containerize failed (log: $build_log)"
fi
# bentoml containerize logs a builder failure but may still exit 0: check the image is there.
oci_image_exists "$IMAGE_TAG" || { tail -40 "$build_log" >&2; die "no image $IMAGE_TAG after containerize"; }
build_s=$((SECONDS - t0))

size=$(oci image inspect "$IMAGE_TAG" --format '{{.Size}}')
user=$(oci image inspect "$IMAGE_TAG" --format '{{.Config.User}}')
log "built $IMAGE_TAG in ${build_s}s: $((size / 1000000)) MB, user '${user}', model $model_tag"
echo "$IMAGE_TAG"
