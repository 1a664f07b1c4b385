"""Signing and verifying ``Prepaid-Signature`` headers; standard library only, so an app that receives prepaid's
webhooks can import it (or copy it) without the server's dependencies.

The header is ``t=<unix seconds>,v1=<hex>``, where ``<hex>`` is HMAC-SHA256, keyed with the endpoint's secret,
of ``"<t>." + raw body``. A receiver checks the HMAC over the exact bytes it received (before any JSON parsing)
and that ``t`` is within ``tolerance`` seconds of its own clock, which stops a captured request being replayed
later. Several ``v1=`` values may be present (while a secret is being rotated); any match is accepted.
"""

from __future__ import annotations

import hashlib
import hmac
import time

HEADER = "Prepaid-Signature"
DEFAULT_TOLERANCE = 300


class SignatureError(ValueError):
    """The header is missing or malformed, no signature matches, or the timestamp is too old or too new."""


def compute_signature(secret: str, timestamp: int, body: bytes | str) -> str:
    raw = body.encode() if isinstance(body, str) else body
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + raw, hashlib.sha256).hexdigest()


def sign(secret: str, body: bytes | str, *, timestamp: int | None = None) -> str:
    """The header value for ``body`` signed now (or at ``timestamp``)."""
    at = int(time.time()) if timestamp is None else timestamp
    return f"t={at},v1={compute_signature(secret, at, body)}"


def verify_signature(
    secret: str,
    header: str | None,
    body: bytes | str,
    tolerance: int = DEFAULT_TOLERANCE,
    *,
    now: float | None = None,
) -> int:
    """Check a ``Prepaid-Signature`` header against the raw ``body``; returns its timestamp, or raises
    ``SignatureError``. ``tolerance`` (seconds) bounds how far ``t`` may be from now, either way."""
    if not header:
        raise SignatureError("no Prepaid-Signature header")
    timestamp: int | None = None
    signatures: list[str] = []
    for part in header.split(","):
        name, sep, value = part.strip().partition("=")
        if not sep:
            continue
        if name == "t":
            try:
                timestamp = int(value)
            except ValueError:
                raise SignatureError("the signature's timestamp is not a number") from None
        elif name == "v1":
            signatures.append(value)
    if timestamp is None or not signatures:
        raise SignatureError("the Prepaid-Signature header needs t= and v1=")
    current = time.time() if now is None else now
    if tolerance > 0 and abs(current - timestamp) > tolerance:
        raise SignatureError("the signature's timestamp is outside the tolerance")
    expected = compute_signature(secret, timestamp, body)
    if not any(hmac.compare_digest(expected, candidate) for candidate in signatures):
        raise SignatureError("no signature matches the body")
    return timestamp
