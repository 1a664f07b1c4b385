"""Prefixed, time-sortable ids."""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from prepaid.ids import PREFIXES, has_prefix, new_id

CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
SHAPE = re.compile(rf"^[a-z]{{3,4}}_[{CROCKFORD}]{{26}}$")


def decode_millis(value: str) -> int:
    body = value.split("_", 1)[1]
    millis = 0
    for char in body[:10]:
        millis = millis * 32 + CROCKFORD.index(char)
    return millis


@pytest.mark.parametrize("prefix", sorted(PREFIXES))
def test_every_prefix_makes_a_well_formed_id(prefix: str) -> None:
    value = new_id(prefix)
    assert SHAPE.match(value), value
    assert value.startswith(prefix + "_")
    assert has_prefix(value, prefix)
    assert len(value) == len(prefix) + 27


def test_unknown_prefixes_are_refused() -> None:
    for prefix in ("usr_", "USR", "", "user", "xyz"):
        with pytest.raises(ValueError, match="unknown id prefix"):
            new_id(prefix)


def test_has_prefix_checks_prefix_and_length() -> None:
    value = new_id("usr")
    assert has_prefix(value, "usr")
    assert not has_prefix(value, "key")
    assert not has_prefix(value[:-1], "usr")
    assert not has_prefix(value + "A", "usr")
    assert not has_prefix("usr" + value[3:].replace("_", "-"), "usr")


def test_the_id_starts_with_the_time_it_was_made() -> None:
    before = time.time_ns() // 1_000_000
    value = new_id("usr")
    after = time.time_ns() // 1_000_000
    assert before <= decode_millis(value) <= after + 1


def test_ids_made_in_a_burst_are_unique_and_in_creation_order() -> None:
    made = [new_id("aud") for _ in range(20_000)]
    assert len(set(made)) == len(made)
    assert made == sorted(made)  # so newest-first lists follow creation order, even within a millisecond


def test_ids_stay_ordered_when_the_clock_steps_back(monkeypatch: pytest.MonkeyPatch) -> None:
    first = new_id("usr")
    now = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: now - 5_000_000_000)  # the system clock jumps back 5 s
    later = [new_id("usr") for _ in range(100)]
    assert [first, *later] == sorted([first, *later])
    assert len(set(later)) == len(later)


def test_ids_made_by_several_threads_are_unique() -> None:
    with ThreadPoolExecutor(max_workers=4) as pool:
        batches = list(pool.map(lambda _: [new_id("msg") for _ in range(2_000)], range(4)))
    made = [value for batch in batches for value in batch]
    assert len(set(made)) == len(made)
    for batch in batches:
        assert batch == sorted(batch)


def test_consecutive_ids_differ_in_their_random_part() -> None:
    a, b = new_id("key"), new_id("key")
    # different random tails even when made in the same millisecond
    assert a[-16:] != b[-16:]
    tails = {new_id("tok")[-16:] for _ in range(1_000)}
    assert len(tails) == 1_000
