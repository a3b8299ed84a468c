#!/usr/bin/env bash
# The browser the browser tests drive (tests/browser/): Debian's chromium + chromium-driver
# (apt, needs root) and selenium in the project's .venv. Idempotent: when all is there it
# only checks and exits (well under a second). Without root the apt step is left out with a
# note; the browser tests then skip, except under CI=true where they fail (tests/browser/conftest.py).
#
#   VENV           the virtualenv to install selenium into (default .venv)
#   SELENIUM_REQ   the pin (default: selenium's line in requirements-dev.txt, else 4.51.0, the
#                  newest whose dependencies the package mirror satisfies: 4.52 needs a newer
#                  certifi than it has)
set -euo pipefail
cd "$(dirname "$0")/.."

log() { echo "setup-browser: $*" >&2; }

VENV=${VENV:-.venv}
SELENIUM_REQ=${SELENIUM_REQ:-$(grep -iE '^selenium==' requirements-dev.txt 2>/dev/null || echo selenium==4.51.0)}

browser_present() {
    { command -v chromium || command -v chromium-browser || command -v google-chrome; } >/dev/null 2>&1 &&
        command -v chromedriver >/dev/null 2>&1
}

if ! browser_present; then
    as_root=()
    [ "$(id -u)" = 0 ] || as_root=(sudo -n)
    if [ "${#as_root[@]}" -gt 0 ] && ! sudo -n true 2>/dev/null; then
        log "chromium/chromedriver missing and not root: not installed (browser tests will skip, or fail under CI=true)"
    else
        log "installing chromium and chromium-driver (apt)"
        export DEBIAN_FRONTEND=noninteractive
        "${as_root[@]}" apt-get update -qq
        # Wait for a dpkg lock held by another install instead of failing at once.
        "${as_root[@]}" apt-get install -y -qq -o DPkg::Lock::Timeout=300 --no-install-recommends \
            chromium chromium-driver >/dev/null
        browser_present || { log "chromium installed but chromium/chromedriver not on PATH"; exit 1; }
    fi
fi

if ! "$VENV/bin/python" -c 'import selenium' 2>/dev/null; then
    log "installing $SELENIUM_REQ into $VENV"
    "$VENV/bin/python" -m pip install --quiet "$SELENIUM_REQ"
fi
