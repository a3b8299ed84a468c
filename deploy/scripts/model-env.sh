# shellcheck shell=bash
# Shared by model-export.sh and model-import.sh: the project's venv and store, and the
# fsspec back end an URL needs.
PROJECT_ROOT=${PROJECT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
VENV=${VENV:-$PROJECT_ROOT/.venv}
BENTOML=$VENV/bin/bentoml
PYTHON=$VENV/bin/python
export BENTOML_HOME=${BENTOML_HOME:-$PROJECT_ROOT/.bentoml}
export BENTOML_DO_NOT_TRACK=true

log() { printf '[model %4ds] %s\n' "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

[ -x "$BENTOML" ] || die "$BENTOML not found: run make setup (or set VENV)"

# An S3-compatible endpoint for every client in the chain (fsspec passes FSSPEC_S3_* to
# s3fs; botocore reads AWS_ENDPOINT_URL).
if [ -n "${S3_ENDPOINT_URL:-}" ]; then
    export FSSPEC_S3_ENDPOINT_URL=$S3_ENDPOINT_URL AWS_ENDPOINT_URL=$S3_ENDPOINT_URL
fi

require_fs() {
    case "$1" in
        s3://* | s3a://*)
            "$PYTHON" -c 'import s3fs' 2>/dev/null || die "s3:// needs s3fs: $VENV/bin/pip install \"s3fs==\$($PYTHON -c 'import fsspec; print(fsspec.__version__)')\""
            ;;
        gs://* | gcs://*)
            "$PYTHON" -c 'import gcsfs' 2>/dev/null || die "gs:// needs gcsfs in $VENV"
            ;;
    esac
}
