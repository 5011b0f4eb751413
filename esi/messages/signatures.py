"""The signed webhook's check: `X-Esi-Timestamp` (Unix seconds) and `X-Esi-Signature: sha256=<hex>`, the HMAC-SHA256
with the shared secret of `<timestamp>.<body>` (the usual shape of a signed webhook, as Stripe's and GitHub's).

The timestamp is signed with the body, so a captured call replayed later is refused once it is older than the
tolerance (`<PREFIX>WEBHOOK_TOLERANCE`, 300 s by default); a repeat within it is harmless, the event being taken
once by its record id and version.
"""

from __future__ import annotations

import hashlib
import hmac

TIMESTAMP_HEADER = "X-Esi-Timestamp"
SIGNATURE_HEADER = "X-Esi-Signature"


class BadSignature(ValueError):
    """The call is not signed with the shared secret, or its timestamp is outside the tolerance."""


def sign(secret: str, body: bytes, timestamp: int) -> str:
    """The signature header's value of `body` sent at `timestamp` (what the DMS computes; the fake DMS uses it)."""
    mac = hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()
    return f"sha256={mac}"


def verify(
    secret: str | None, body: bytes, *, timestamp: str | None, signature: str | None, now: float, tolerance: float
) -> None:
    """Raise `BadSignature` (naming why) unless `signature` signs `body` at `timestamp` within `tolerance` of `now`."""
    if not secret:
        raise BadSignature("this source's webhook secret is not configured: every call is refused")
    if not timestamp or not signature:
        raise BadSignature(f"the {TIMESTAMP_HEADER} and {SIGNATURE_HEADER} headers are required")
    try:
        sent = int(timestamp)
    except ValueError:
        raise BadSignature(f"{TIMESTAMP_HEADER} must be Unix seconds, got {timestamp[:40]!r}") from None
    if abs(now - sent) > tolerance:
        raise BadSignature(f"the timestamp is {abs(now - sent):.0f} s from esi's clock (tolerance {tolerance:.0f} s)")
    if not hmac.compare_digest(sign(secret, body, sent).encode(), signature.strip().encode()):
        raise BadSignature("the signature does not match the body")
