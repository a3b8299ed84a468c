#!/usr/bin/env bash
# Publish a model from the project's store (.bentoml/) to object storage, the BentoML way:
# `bentoml models export` writes one `<name>-<version>.bentomodel` archive (the model files
# plus the metadata model_info reports) to any fsspec URL.
#
#   deploy/scripts/model-export.sh [MODEL_TAG] [DEST]
#     MODEL_TAG  default deepfake_classifier:latest (resolved to its exact version)
#     DEST       default $MODEL_STORE_URL; s3://bucket/prefix/ (a folder: ends with /),
#                or a local folder, or a full .bentomodel path
#
# S3 and S3-compatible stores (MinIO, Ceph, R2, ...) need s3fs in the venv, at the version of
# the fsspec BentoML uses:  .venv/bin/pip install "s3fs==$(.venv/bin/python -c 'import fsspec; print(fsspec.__version__)')"
# Credentials come from the usual AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
# AWS_PROFILE, ...); an S3-compatible endpoint from S3_ENDPOINT_URL (or AWS_ENDPOINT_URL).
set -euo pipefail
# shellcheck source=deploy/scripts/model-env.sh
source "$(dirname "$0")/model-env.sh"

tag=${1:-deepfake_classifier:latest}
dest=${2:-${MODEL_STORE_URL:-}}
[ -n "$dest" ] || die "usage: $0 [MODEL_TAG] DEST (or set MODEL_STORE_URL)"
require_fs "$dest"

# Pin "latest" to the version it means now, so the archive's name says which model it is.
info=$("$BENTOML" models get "$tag" -o json) || die "no model $tag in $BENTOML_HOME"
tag=$(echo "$info" | "$PYTHON" -c 'import json, sys; m = json.load(sys.stdin); print(m["name"] + ":" + m["version"])')
log "bentoml models export $tag $dest"
written=$("$BENTOML" models export "$tag" "$dest" | tail -1)
log "$written"
echo "$tag"
