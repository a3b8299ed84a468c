#!/usr/bin/env bash
# The redis-server the scale-out tests start (tests/redis_server.py: one per test module, on a
# free loopback port, in a temp folder, stopped after): Debian's redis-server package (apt,
# needs root). Idempotent: when it is there it only checks and exits. The package's own
# service is not started (a policy-rc.d that refuses it is in place for the install, unless
# one already is): nothing system-wide is left running. Without root the apt step is left out
# with a note; the Redis tests then skip, except under CI=true where they fail
# (tests/redis_server.py).
set -euo pipefail

log() { echo "setup-redis: $*" >&2; }

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi

as_root=()
[ "$(id -u)" = 0 ] || as_root=(sudo -n)
if [ "${#as_root[@]}" -gt 0 ] && ! sudo -n true 2>/dev/null; then
    log "redis-server missing and not root: not installed (Redis tests will skip, or fail under CI=true)"
    exit 0
fi

policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    # invoke-rc.d (and deb-systemd-invoke) ask this first: 101 = do not start the service.
    printf '#!/bin/sh\nexit 101\n' | "${as_root[@]}" tee "$policy" >/dev/null
    "${as_root[@]}" chmod 755 "$policy"
    trap '"${as_root[@]}" rm -f "$policy"' EXIT
fi
log "installing redis-server (apt)"
export DEBIAN_FRONTEND=noninteractive
"${as_root[@]}" apt-get update -qq
# Wait for a dpkg lock held by another install (the browser's) instead of failing at once.
"${as_root[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends \
    redis-server >/dev/null
command -v redis-server >/dev/null 2>&1 || { log "redis-server installed but not on PATH"; exit 1; }
