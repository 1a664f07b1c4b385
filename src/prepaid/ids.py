"""Prefixed, time-sortable ids: ``usr_01JD3...``.

The body is 26 Crockford base32 characters: 48 bits of milliseconds since the epoch, then 80 random bits
(the ULID layout). Ids therefore sort by creation time, which cursor pagination relies on. Within one
millisecond the random part keeps them unique but not ordered; newest-first lists stay stable because they
order by the id itself.
"""

from __future__ import annotations

import secrets
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

PREFIXES = frozenset({"usr", "key", "rtk", "wss", "tok", "idk", "msg", "aud", "job"})


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    millis = time.time_ns() // 1_000_000
    return f"{prefix}_{_encode(millis, 10)}{_encode(secrets.randbits(80), 16)}"


def has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 27
