"""Prefixed, time-sortable ids: ``usr_01JD3...``.

The body is 26 Crockford base32 characters: 48 bits of milliseconds since the epoch, then 80 random bits
(the ULID layout). Ids therefore sort by creation time, which cursor pagination relies on. Within one
millisecond a process keeps them ordered too (ULID's monotonic mode): the random part of the next id is the
last one plus a random step, so rows made in a burst still list newest first.
"""

from __future__ import annotations

import secrets
import threading
import time

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

PREFIXES = frozenset(
    {"usr", "key", "rtk", "wss", "tok", "idk", "msg", "aud", "job", "wal", "acc", "txn", "lot", "hold"}
    | {"pln", "mtr", "slb", "ofr"}  # catalog
    | {"cpn", "cpa", "rsv"}  # catalog: coupons, their assignments, redemption reservations
    | {"sbx"}  # the sandbox gateway: order_sbx_, pay_sbx_, rfnd_sbx_, evt_sbx_, whd_sbx_
    | {"ord", "att", "evt"}  # payments: orders, attempts, gateway events (the webhook inbox)
    | {"dsp", "dsm"}  # payments: disputes and chargebacks, their messages
    | {"rfd"}  # payments: refunds
    | {"ntf"}  # notify: in-app notifications
    | {"pev", "whe", "wdl"}  # notify: stream and webhook events, webhook endpoints, webhook deliveries
    | {"usg", "usb"}  # metering: usage events, usage batches
    | {"ses"}  # metering: metered sessions
)


def _encode(value: int, length: int) -> str:
    chars = []
    for _ in range(length):
        chars.append(_ALPHABET[value & 31])
        value >>= 5
    return "".join(reversed(chars))


_RANDOM_LIMIT = 1 << 80
_lock = threading.Lock()
_last = (0, 0)  # (milliseconds, random part) of the last id made in this process


def _next_parts() -> tuple[int, int]:
    global _last
    with _lock:
        millis = time.time_ns() // 1_000_000
        last_millis, last_random = _last
        if millis <= last_millis:  # same millisecond (or the clock stepped back): count up from the last id
            millis, random = last_millis, last_random + 1 + secrets.randbits(16)
            if random >= _RANDOM_LIMIT:
                millis, random = last_millis + 1, secrets.randbits(79)
        else:
            random = secrets.randbits(80)
        _last = (millis, random)
        return millis, random


def new_id(prefix: str) -> str:
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    millis, random = _next_parts()
    return f"{prefix}_{_encode(millis, 10)}{_encode(random, 16)}"


def has_prefix(value: str, prefix: str) -> bool:
    return value.startswith(prefix + "_") and len(value) == len(prefix) + 27


_PAIRS = [first + second for first in _ALPHABET for second in _ALPHABET]  # two characters per 10 bits


def new_ids(prefix: str, count: int) -> list[str]:
    """``count`` ids as ``new_id`` makes them, in increasing order, for a bulk insert: one lock, and the 130
    bits of each body written ten at a time."""
    if prefix not in PREFIXES:
        raise ValueError(f"unknown id prefix {prefix!r}")
    if count <= 0:
        return []
    global _last
    steps = secrets.token_bytes(2 * count)
    values: list[int] = []
    with _lock:
        millis = time.time_ns() // 1_000_000
        last_millis, random = _last
        if millis > last_millis:
            random = secrets.randbits(80)
        else:
            millis, random = last_millis, random + 1 + int.from_bytes(steps[:2], "big")
        for n in range(count):
            if n:
                random += 1 + (steps[2 * n] << 8 | steps[2 * n + 1])
            if random >= _RANDOM_LIMIT:
                millis, random = millis + 1, secrets.randbits(79)
            values.append((millis << 80) | random)
        _last = (millis, random)
    # The 48 bits of milliseconds (10 characters) change rarely within a batch: encoded once per value. The
    # 80 random bits are 16 characters, two per 10 bits.
    p = _PAIRS
    heads: dict[int, str] = {}
    ids: list[str] = []
    for v in values:
        millis = v >> 80
        head = heads.get(millis)
        if head is None:
            head = heads[millis] = f"{prefix}_{_encode(millis, 10)}"
        ids.append(
            head
            + p[v >> 70 & 1023]
            + p[v >> 60 & 1023]
            + p[v >> 50 & 1023]
            + p[v >> 40 & 1023]
            + p[v >> 30 & 1023]
            + p[v >> 20 & 1023]
            + p[v >> 10 & 1023]
            + p[v & 1023]
        )
    return ids
