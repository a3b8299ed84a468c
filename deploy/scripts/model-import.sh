#!/usr/bin/env bash
# Fetch a model archive made by model-export.sh (or `bentoml models export`) into a model
# store: the project's (.bentoml/, then `make image DEEPFAKE_MODEL_TAG=...` bakes it into
# an image), or any BENTOML_HOME (a volume that a container mounts as its model store).
#
#   deploy/scripts/model-import.sh SOURCE
#     SOURCE  s3://bucket/prefix/deepfake_classifier-VERSION.bentomodel, or a local file
#
# Prints the imported tag. S3 needs s3fs (see model-export.sh).
set -euo pipefail
# shellcheck source=deploy/scripts/model-env.sh
source "$(dirname "$0")/model-env.sh"

src=${1:-}
[ -n "$src" ] || die "usage: $0 SOURCE (s3://.../NAME-VERSION.bentomodel or a file)"
require_fs "$src"

log "bentoml models import $src (into $BENTOML_HOME)"
if out=$("$BENTOML" models import "$src" 2>&1); then
    # Model(tag="name:version") imported.
    tag=$(echo "$out" | sed -n 's/.*tag="\([^"]*\)".*/\1/p' | tail -1)
else
    # Importing twice is fine: Item 'name:version' already exists in the store ...
    tag=$(echo "$out" | sed -n "s/.*Item '\([^']*\)' already exists.*/\1/p" | tail -1)
    [ -n "$tag" ] || { echo "$out" >&2; die "import failed"; }
fi
echo "$out" | tail -1 >&2
[ -n "$tag" ] || die "could not read the imported tag from: $out"
echo "$tag"
