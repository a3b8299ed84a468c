"""The settings of the server the page talks to: a byte limit small enough to exceed with a
photo, and a rate limit above what the other tests send (the rate-limit test uses up the
rest, after every other test: the `uses_up_rate_limit` marker)."""

from __future__ import annotations

MAX_UPLOAD_BYTES = 200_000
RATE_LIMIT_PER_MINUTE = 30
SERVER_ENV = {
    "DEEPFAKE_MAX_UPLOAD_BYTES": str(MAX_UPLOAD_BYTES),
    "DEEPFAKE_RATE_LIMITS": f"{RATE_LIMIT_PER_MINUTE}/minute",
}
