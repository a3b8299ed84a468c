#!/usr/bin/env bash
# Build the base image the Bento's generated Dockerfile starts FROM (python:3.11-slim) from
# Debian's archive, for hosts that reach no container registry (air-gapped, or behind a
# proxy that only passes package mirrors). Nothing is pulled: debootstrap installs a
# Debian 12 "minbase" root file system with python3.11 + pip + venv from the apt mirror
# this host already uses, and the result is imported under the name the Dockerfile expects,
# so `bentoml containerize` finds it locally.
#
#   BASE_TAG       name to import as (default docker.io/library/python:3.11-slim)
#   BASE_SUITE     Debian suite (default bookworm: Python 3.11, as bentofile.yaml asks)
#   BASE_MIRROR    apt mirror (default: the host's first one)
#   BASE_EXTRA_CA  1 (default): trust the host's extra CAs (/usr/local/share/ca-certificates,
#                  e.g. a corporate proxy's) inside the build and the image; 0: don't
#   FORCE=1        rebuild even if the image exists
#
# Where a registry is reachable you do not need this: the real python:3.11-slim is pulled.
set -euo pipefail
LOG_NAME=base-image
# shellcheck source=deploy/scripts/containers-env.sh
source "$(dirname "$0")/containers-env.sh"

BASE_TAG=${BASE_TAG:-docker.io/library/python:3.11-slim}
BASE_SUITE=${BASE_SUITE:-bookworm}
BASE_EXTRA_CA=${BASE_EXTRA_CA:-1}

OCI_EXTRA_TOOLS=debootstrap oci_setup

if oci_image_exists "$BASE_TAG" && [ "${FORCE:-0}" != 1 ]; then
    log "$BASE_TAG exists ($OCI_ENGINE); FORCE=1 rebuilds it"
    exit 0
fi
[ "$(id -u)" = 0 ] || die "debootstrap needs root"

if [ -z "${BASE_MIRROR:-}" ]; then
    BASE_MIRROR=$(sed -n 's/^URIs:[[:space:]]*//p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -1)
    [ -n "$BASE_MIRROR" ] || BASE_MIRROR=$(awk '$1 == "deb" { print $2; exit }' /etc/apt/sources.list 2>/dev/null)
    [ -n "$BASE_MIRROR" ] || BASE_MIRROR=http://deb.debian.org/debian
fi

rootfs=$OCI_WORK/base-rootfs
tarball=$OCI_WORK/base-rootfs.tar
cleanup() { rm -rf "$rootfs" "$tarball"; }
trap cleanup EXIT
rm -rf "$rootfs"
mkdir -p "$OCI_WORK"

log "debootstrap $BASE_SUITE (minbase + python3, pip, venv) from $BASE_MIRROR"
debootstrap --variant=minbase --include=python3,python3-pip,python3-venv,ca-certificates \
    "$BASE_SUITE" "$rootfs" "$BASE_MIRROR" >"$OCI_WORK/debootstrap.log" 2>&1 ||
    { tail -20 "$OCI_WORK/debootstrap.log" >&2; die "debootstrap failed (log: $OCI_WORK/debootstrap.log)"; }

if [ "$BASE_EXTRA_CA" = 1 ] && compgen -G "/usr/local/share/ca-certificates/*.crt" >/dev/null; then
    log "trusting the host's extra CAs: $(cd /usr/local/share/ca-certificates && echo ./*.crt)"
    cp /usr/local/share/ca-certificates/*.crt "$rootfs/usr/local/share/ca-certificates/"
fi
chroot "$rootfs" update-ca-certificates >/dev/null
# The host's apt settings that make its mirror usable (e.g. Check-Valid-Until for a
# snapshot mirror, a proxy): the Dockerfile runs apt-get inside this image.
grep -lE 'Check-Valid-Until|Check-Date|Acquire::.*Proxy' /etc/apt/apt.conf.d/* 2>/dev/null |
    xargs -r cp -t "$rootfs/etc/apt/apt.conf.d/"

# Make it behave like the official python:3.11-slim where the Dockerfile relies on it:
ln -sf python3 "$rootfs/usr/bin/python"             # `python` exists
rm -f "$rootfs"/usr/lib/python3*/EXTERNALLY-MANAGED  # the Dockerfile runs `pip install uv` system-wide
chroot "$rootfs" apt-get clean
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/log/*.log
python_version=$(chroot "$rootfs" python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')
[ "$python_version" = 3.11 ] || die "$BASE_SUITE ships Python $python_version, bentofile.yaml wants 3.11"

tar -C "$rootfs" --numeric-owner -cf "$tarball" .
# SSL_CERT_FILE: uv (which the Dockerfile uses to install packages) otherwise trusts only
# its bundled roots and fails behind a TLS-intercepting proxy ("UnknownIssuer").
oci import \
    --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
    --change 'ENV LANG=C.UTF-8' \
    --change 'ENV SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt' \
    --change 'CMD ["python3"]' \
    "$tarball" "$BASE_TAG" >/dev/null
log "imported $BASE_TAG ($OCI_ENGINE): Python $python_version, $(du -sh "$tarball" | cut -f1) uncompressed"
