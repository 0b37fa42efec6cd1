"""X-Registry-Signature: `t=<unix time>,v1=<hex HMAC-SHA256 of "<t>.<body>" with the secret>`.

The time is inside what is signed, so a receiver that refuses signatures older than a few
minutes refuses replays of a captured delivery (README "Webhooks" shows the check).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix naming the kind, not a secret
# How old a signature a receiver should accept; signature_valid() defaults to it.
TOLERANCE_SECONDS = 300


def secret_generate() -> str:
    """A new webhook secret: 256 random bits, URL-safe."""
    return SECRET_PREFIX + secrets.token_urlsafe(32)


def signature_header(*, secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The X-Registry-Signature value for `body` sent at `timestamp` (unix seconds, default
    now)."""
    t = int(time.time()) if timestamp is None else timestamp
    digest = hmac.new(secret.encode(), f"{t}.".encode() + body, hashlib.sha256).hexdigest()
    return f"t={t},v1={digest}"


def signature_valid(
    *, secret: str, body: bytes, header: str, tolerance: int = TOLERANCE_SECONDS
) -> bool:
    """What a receiver checks: the header parses, its time is within `tolerance` seconds of
    now, and a v1 digest matches `body` (compared in constant time)."""
    try:
        fields = dict(item.split("=", 1) for item in header.split(","))
        stamp = fields["t"]
    except (KeyError, ValueError):
        return False
    # ASCII digits of a plausible length: int() would read other scripts' digits, and a
    # number past float range would make the subtraction raise.
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= 12):
        return False
    t = int(stamp)
    if abs(time.time() - t) > tolerance:
        return False
    expected = signature_header(secret=secret, body=body, timestamp=t).split("v1=", 1)[1]
    # As bytes: compare_digest refuses str holding anything but ASCII (a TypeError).
    return hmac.compare_digest(expected.encode(), fields.get("v1", "").encode())
