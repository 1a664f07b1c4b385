"""The cost function: one ceiling over the whole use, integer arithmetic only, at the edges."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
from hypothesis import given
from hypothesis import strategies as st

from prepaid.catalog.service import meter_cost
from prepaid.errors import InvalidRequest


@dataclass(frozen=True)
class M:
    kind: str
    price: int | None = None
    per: int | None = None
    input_price: int | None = None
    output_price: int | None = None
    cached_input_price: int | None = None


def unit(price: int, per: int = 1) -> M:
    return M("unit", price=price, per=per)


def model(input_price: int, output_price: int, cached_input_price: int) -> M:
    return M(
        "model", input_price=input_price, output_price=output_price, cached_input_price=cached_input_price
    )


# ---------------------------------------------------------------- unit meters


def test_zero_quantity_costs_nothing() -> None:
    assert meter_cost(unit(7, 3), quantity=0) == 0


@pytest.mark.parametrize(
    ("price", "per", "quantity", "cost"),
    [
        (5, 1, 1, 5),  # one unit
        (5, 1, 4, 20),
        (1, 60, 60, 1),  # an exact multiple of per
        (1, 60, 120, 2),
        (1, 60, 61, 2),  # one over rounds up
        (1, 60, 1, 1),  # any use of a priced meter costs at least one unit
        (3, 10, 7, 3),  # 21/10 -> 3
        (3, 10, 10, 3),
        (0, 1, 1_000_000, 0),  # a free meter
    ],
)
def test_unit_meter_rounds_up_once(price: int, per: int, quantity: int, cost: int) -> None:
    assert meter_cost(unit(price, per), quantity=quantity) == cost


def test_huge_quantities_stay_exact() -> None:
    # Far past 2**63 in the product: Python integers, no float anywhere.
    quantity = 10**18 + 1
    assert meter_cost(unit(10**15 - 1, 7), quantity=quantity) == -(-(quantity * (10**15 - 1)) // 7)
    assert meter_cost(unit(1, 3), quantity=3 * 10**30 + 1) == 10**30 + 1


@pytest.mark.parametrize("bad", [-1, -(10**20)])
def test_negative_quantity_is_refused(bad: int) -> None:
    with pytest.raises(InvalidRequest) as error:
        meter_cost(unit(1), quantity=bad)
    assert (error.value.code, error.value.param) == ("negative_quantity", "quantity")


@pytest.mark.parametrize("bad", [1.5, True, "3"])
def test_a_quantity_must_be_a_whole_number(bad: object) -> None:
    with pytest.raises(InvalidRequest) as error:
        meter_cost(unit(1), quantity=bad)  # type: ignore[arg-type]
    assert error.value.param == "quantity"


def test_a_unit_meter_needs_a_quantity_and_no_tokens() -> None:
    with pytest.raises(InvalidRequest) as missing:
        meter_cost(unit(1))
    assert (missing.value.code, missing.value.param) == ("missing_field", "quantity")
    with pytest.raises(InvalidRequest) as tokens:
        meter_cost(unit(1), quantity=1, output_tokens=5)
    assert tokens.value.param == "output_tokens"


# ---------------------------------------------------------------- model meters


def test_no_tokens_cost_nothing() -> None:
    assert meter_cost(model(2500, 10000, 1250)) == 0


def test_one_ceiling_over_the_sum_not_one_per_part() -> None:
    meter = model(1, 1, 1)
    # Each part alone would round up to 1 credit unit; the sum (1.5 million) rounds up once to 2.
    assert meter_cost(meter, input_tokens=500_000, output_tokens=500_000, cached_input_tokens=500_000) == 2


@pytest.mark.parametrize(
    ("tokens", "cost"),
    [
        (1_000_000, 3),  # an exact million
        (2_000_000, 6),
        (1_000_001, 4),  # one over
        (1, 1),  # a single token of a priced model costs one unit
        (333_333, 1),  # 999,999 / 1,000,000 -> 1
        (333_334, 2),  # 1,000,002 / 1,000,000 -> 2
    ],
)
def test_model_meter_edges(tokens: int, cost: int) -> None:
    assert meter_cost(model(3, 0, 0), input_tokens=tokens) == cost


def test_each_token_kind_has_its_own_price() -> None:
    meter = model(input_price=2_500_000, output_price=10_000_000, cached_input_price=1_250_000)
    assert meter_cost(meter, input_tokens=1_000) == 2_500
    assert meter_cost(meter, output_tokens=1_000) == 10_000
    assert meter_cost(meter, cached_input_tokens=1_000) == 1_250
    assert meter_cost(meter, input_tokens=1_000, output_tokens=1_000, cached_input_tokens=1_000) == 13_750


def test_huge_token_counts_stay_exact() -> None:
    meter = model(10**15, 10**15, 10**15)
    assert meter_cost(meter, input_tokens=10**18, output_tokens=1, cached_input_tokens=0) == 10**27 + 10**9


@pytest.mark.parametrize("param", ["input_tokens", "output_tokens", "cached_input_tokens"])
def test_negative_token_counts_are_refused(param: str) -> None:
    with pytest.raises(InvalidRequest) as error:
        meter_cost(model(1, 1, 1), **{param: -1})
    assert (error.value.code, error.value.param) == ("negative_quantity", param)


def test_a_model_meter_takes_no_quantity() -> None:
    with pytest.raises(InvalidRequest) as error:
        meter_cost(model(1, 1, 1), quantity=10)
    assert error.value.param == "quantity"


@given(
    price=st.integers(0, 10**15),
    per=st.integers(1, 10**9),
    quantity=st.integers(0, 10**18),
)
def test_unit_cost_is_the_smallest_integer_covering_the_exact_price(
    price: int, per: int, quantity: int
) -> None:
    cost = meter_cost(unit(price, per), quantity=quantity)
    # cost * per >= quantity * price > (cost - 1) * per: never under, never a whole unit over.
    assert cost * per >= quantity * price > (cost - 1) * per or (cost == 0 and quantity * price == 0)


@given(
    prices=st.tuples(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**12)),
    tokens=st.tuples(st.integers(0, 10**12), st.integers(0, 10**12), st.integers(0, 10**12)),
)
def test_model_cost_is_the_smallest_integer_covering_the_exact_price(
    prices: tuple[int, int, int], tokens: tuple[int, int, int]
) -> None:
    meter = model(*prices)
    cost = meter_cost(meter, input_tokens=tokens[0], output_tokens=tokens[1], cached_input_tokens=tokens[2])
    exact = sum(p * t for p, t in zip(prices, tokens, strict=True))
    assert cost * 1_000_000 >= exact > (cost - 1) * 1_000_000 or (cost == 0 and exact == 0)
