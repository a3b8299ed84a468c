# shellcheck shell=bash
# Sourced by the other deploy/scripts: picks the container tool and, for the daemonless
# path (buildah + podman), installs it with apt and writes a configuration that keeps all
# of its state in the project's git-ignored work dir ($OCI_WORK, default .oci-build/).
#
#   OCI_ENGINE   docker | podman   (default: docker when `docker info` answers, else podman)
#   OCI_WORK     state dir for podman/buildah: storage, run root, logs (default .oci-build)
#   OCI_STORAGE_DRIVER  overlay (default) | vfs (slower, for file systems without overlay)
#
# Why a config of our own (verified on Debian 12 hosts without a Docker engine):
#   - crun 1.8 (Debian's default OCI runtime) refuses hybrid cgroups ("cgroups in hybrid
#     mode not supported"); runc works, so runtime = "runc".
#   - podman's default ulimits (nofile 1048576) exceed the hard limits of unprivileged
#     sandboxes ("setrlimit RLIMIT_NOFILE: Operation not permitted"); we cap them at the
#     machine's hard limits.
#   - the storage lives under the project, not /var/lib/containers, so `rm -rf .oci-build`
#     undoes everything and nothing system-wide is touched but the apt packages.

PROJECT_ROOT=${PROJECT_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
OCI_WORK=${OCI_WORK:-$PROJECT_ROOT/.oci-build}
OCI_STORAGE_DRIVER=${OCI_STORAGE_DRIVER:-overlay}

log() { printf '[%s %4ds] %s\n' "${LOG_NAME:-oci}" "$SECONDS" "$*" >&2; }
die() { log "error: $*"; exit 1; }

# docker when an engine answers (a developer laptop, GitHub's runners), else podman/buildah.
if [ -z "${OCI_ENGINE:-}" ]; then
    if command -v docker >/dev/null 2>&1 && timeout 10 docker info >/dev/null 2>&1; then
        OCI_ENGINE=docker
    else
        OCI_ENGINE=podman
    fi
fi

# The daemonless tools from Debian/Ubuntu's archive (apt; nothing downloaded from elsewhere).
# Arguments: the commands needed (default: the container tools and debootstrap).
oci_install_tools() {
    local wanted=("$@") missing=() tool
    [ $# -eq 0 ] && wanted=(buildah podman runc debootstrap)
    for tool in "${wanted[@]}"; do
        command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
    done
    [ ${#missing[@]} -eq 0 ] && return 0
    command -v apt-get >/dev/null 2>&1 || die "need ${missing[*]}; install them (no apt-get here)"
    [ "$(id -u)" = 0 ] || die "need ${missing[*]}: run as root, or sudo apt-get install ${missing[*]}"
    local packages=("${missing[@]}")
    case " ${missing[*]} " in
        *" podman "*) packages+=(conmon containernetworking-plugins iptables uidmap) ;;
    esac
    log "apt-get install ${packages[*]}"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${packages[@]}" >/dev/null
}

# min(hard limit, 16384): podman may not raise a limit above the hard one.
_oci_ulimit() {
    local v
    v=$(ulimit -H"$1")
    [ "$v" = unlimited ] && v=16384
    echo $((v < 16384 ? v : 16384))
}

oci_write_config() {
    mkdir -p "$OCI_WORK"
    local nofile nproc
    nofile=$(_oci_ulimit n)
    nproc=$(_oci_ulimit u)
    cat >"$OCI_WORK/storage.conf" <<CONF
[storage]
driver = "$OCI_STORAGE_DRIVER"
graphroot = "$OCI_WORK/storage"
runroot = "$OCI_WORK/run"
CONF
    cat >"$OCI_WORK/containers.conf" <<CONF
[containers]
default_ulimits = ["nofile=$nofile:$nofile", "nproc=$nproc:$nproc"]

[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
    export CONTAINERS_STORAGE_CONF=$OCI_WORK/storage.conf
    export CONTAINERS_CONF=$OCI_WORK/containers.conf
}

# Set up whichever engine was picked (plus the tools in OCI_EXTRA_TOOLS, in the same apt
# run); after this `oci ...` runs docker or podman.
oci_setup() {
    local extra
    read -r -a extra <<<"${OCI_EXTRA_TOOLS:-}"
    if [ "$OCI_ENGINE" = podman ]; then
        oci_install_tools buildah podman runc "${extra[@]}"
        oci_write_config
    elif [ ${#extra[@]} -gt 0 ]; then
        oci_install_tools "${extra[@]}"
    fi
}

oci() { "$OCI_ENGINE" "$@"; }

oci_image_exists() {
    if [ "$OCI_ENGINE" = docker ]; then
        docker image inspect "$1" >/dev/null 2>&1
    else
        podman image exists "$1"
    fi
}
