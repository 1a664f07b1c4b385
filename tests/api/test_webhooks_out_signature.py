"""``prepaid.webhook_signature``, the helper apps use to check ``Prepaid-Signature`` (no database): the HMAC is
over ``"t." + the exact body``; a tampered body, another secret, a stale or future timestamp, or a malformed
header is refused; a header carrying several ``v1`` values (a secret being rotated) verifies when any matches.
The module imports nothing of the server's."""

from __future__ import annotations

import hashlib
import hmac
import subprocess
import sys

import pytest

from prepaid.webhook_signature import SignatureError, compute_signature, sign, verify_signature

SECRET = "whsec_test_secret"
BODY = b'{"id":"pev_1","type":"order.paid","data":{"credits":500}}'
NOW = 1_800_000_000


def test_the_signature_is_hmac_sha256_hex_of_timestamp_dot_body() -> None:
    expected = hmac.new(SECRET.encode(), b"1800000000." + BODY, hashlib.sha256).hexdigest()
    assert compute_signature(SECRET, NOW, BODY) == expected
    assert sign(SECRET, BODY, timestamp=NOW) == f"t={NOW},v1={expected}"
    assert verify_signature(SECRET, f"t={NOW},v1={expected}", BODY, now=NOW) == NOW
    assert verify_signature(SECRET, f"t={NOW},v1={expected}", BODY.decode(), now=NOW + 299) == NOW


@pytest.mark.parametrize(
    ("header", "body", "secret", "now"),
    [
        (sign(SECRET, BODY, timestamp=NOW), BODY.replace(b"500", b"900"), SECRET, NOW),  # tampered body
        (sign(SECRET, BODY, timestamp=NOW), BODY + b" ", SECRET, NOW),  # one byte more
        (sign(SECRET, BODY, timestamp=NOW), BODY, "whsec_another", NOW),  # another secret
        (sign(SECRET, BODY, timestamp=NOW), BODY, SECRET, NOW + 301),  # replayed too late
        (sign(SECRET, BODY, timestamp=NOW), BODY, SECRET, NOW - 301),  # from the future
        (sign(SECRET, BODY, timestamp=NOW).replace(f"t={NOW}", f"t={NOW + 1}"), BODY, SECRET, NOW),  # new t
        (f"v1={compute_signature(SECRET, NOW, BODY)}", BODY, SECRET, NOW),  # no timestamp
        (f"t={NOW}", BODY, SECRET, NOW),  # no signature
        ("t=soon,v1=abc", BODY, SECRET, NOW),  # not a number
        ("", BODY, SECRET, NOW),
        (None, BODY, SECRET, NOW),
    ],
)
def test_a_bad_signature_is_refused(header: str | None, body: bytes, secret: str, now: int) -> None:
    with pytest.raises(SignatureError):
        verify_signature(secret, header, body, now=now)


def test_any_of_several_signatures_may_match_and_tolerance_is_the_callers() -> None:
    header = f"t={NOW},v1={'0' * 64},v1={compute_signature(SECRET, NOW, BODY)}"
    assert verify_signature(SECRET, header, BODY, now=NOW) == NOW
    assert verify_signature(SECRET, header, BODY, tolerance=3600, now=NOW + 3000) == NOW
    with pytest.raises(SignatureError):
        verify_signature(SECRET, header, BODY, tolerance=60, now=NOW + 61)


def test_the_helper_imports_nothing_of_the_server() -> None:
    code = (
        "import sys, prepaid.webhook_signature; "
        "print(sorted(m for m in sys.modules if m.startswith('prepaid')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "['prepaid', 'prepaid.webhook_signature']"
