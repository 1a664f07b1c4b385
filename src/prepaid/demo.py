"""Demo data for ``prepaid demo``: an admin and a demo user, and the catalog: five plans, unit prices, discount
slabs, unit meters, a price table for well-known AI models and a public coupon (see docs/decisions.md,
"Catalog"). The catalog is written through ``catalog.service``, like any other change to it."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from decimal import ROUND_CEILING, Decimal
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.catalog import service as catalog_service
from prepaid.ledger.models import LedgerMeta

DEMO_ADMIN_EMAIL = "admin@example.com"
DEMO_USER_EMAIL = "demo@example.com"


@dataclass(frozen=True)
class CreatedAccount:
    email: str
    password: str
    role: str


def generate_password() -> str:
    return secrets.token_urlsafe(12)


async def ensure_admin(session: AsyncSession, *, email: str, password: str | None) -> tuple[str, str | None]:
    """Create the admin, or promote an existing account. Returns the user id and the password to print
    (None when an existing account keeps its password)."""
    user = await auth_service.get_user_by_email(session, email)
    if user is None:
        password = password or generate_password()
        user = await auth_service.create_user(
            session,
            email=email,
            password=password,
            name="Admin",
            roles=["user", "admin"],
            email_verified=True,
        )
        return user.id, password
    if "admin" not in user.roles:
        user.roles = [*user.roles, "admin"]
    user.active = True
    if password is not None:
        user.password_hash = auth_service.hash_password(password)
    return user.id, password


async def seed(session: AsyncSession, *, credit_scale: int | None = None) -> list[CreatedAccount]:
    """Idempotent: only accounts that do not exist yet are created, and only their passwords are returned.
    The catalog is seeded too (see ``seed_catalog``), at the database's credit scale unless one is given."""
    if credit_scale is None:
        stored = await session.get(LedgerMeta, "credit_scale")
        credit_scale = int(stored.value) if stored is not None else 0
    await seed_catalog(session, credit_scale=credit_scale)
    created: list[CreatedAccount] = []
    if await auth_service.get_user_by_email(session, DEMO_ADMIN_EMAIL) is None:
        _user_id, password = await ensure_admin(session, email=DEMO_ADMIN_EMAIL, password=None)
        created.append(CreatedAccount(DEMO_ADMIN_EMAIL, password or "", "admin"))
    if await auth_service.get_user_by_email(session, DEMO_USER_EMAIL) is None:
        password = generate_password()
        await auth_service.create_user(
            session, email=DEMO_USER_EMAIL, password=password, name="Demo User", email_verified=True
        )
        created.append(CreatedAccount(DEMO_USER_EMAIL, password, "user"))
    return created


# ---------------------------------------------------------------- the demo catalog

# (code, name, whole credits, popular, {currency: price in minor units}). INR is the table; USD and EUR
# are the INR prices at about 85 INR per USD and 92 INR per EUR, rounded to a price a shop would show.
DEMO_PLANS: tuple[tuple[str, str, int, bool, dict[str, int]], ...] = (
    ("basic", "Basic", 100, False, {"INR": 1_000_00, "USD": 11_99, "EUR": 10_99}),
    ("standard", "Standard", 500, True, {"INR": 4_500_00, "USD": 52_99, "EUR": 48_99}),
    ("premium", "Premium", 1_000, False, {"INR": 8_000_00, "USD": 93_99, "EUR": 86_99}),
    ("enterprise", "Enterprise", 3_000, False, {"INR": 20_000_00, "USD": 234_99, "EUR": 216_99}),
    ("ultimate", "Ultimate", 5_000, False, {"INR": 30_000_00, "USD": 349_99, "EUR": 324_99}),
)
# Custom quantities: the price of one whole credit (10 INR), from 10 to 100,000 credits.
DEMO_UNIT_PRICES = (("INR", 10_00), ("USD", 12), ("EUR", 11))
DEMO_UNIT_MIN, DEMO_UNIT_MAX = 10, 100_000
# Volume discounts on custom quantities and plans alike: (whole credits bought, basis points).
DEMO_SLABS = ((2_000, 500), (10_000, 1_000), (50_000, 1_500))

# The model table: public list prices in USD per million tokens (input, cached input, output), as the
# providers published them in 2025, converted at DEMO_INR_PER_USD and 10 INR per credit, rounded up.
DEMO_INR_PER_USD = Decimal(85)
DEMO_INR_PER_CREDIT = Decimal(10)
DEMO_MODELS: tuple[tuple[str, str, str, str, str], ...] = (
    ("gpt-4o", "OpenAI GPT-4o", "2.50", "1.25", "10.00"),
    ("gpt-4o-mini", "OpenAI GPT-4o mini", "0.15", "0.075", "0.60"),
    ("claude-sonnet", "Anthropic Claude Sonnet 4", "3.00", "0.30", "15.00"),
    ("claude-haiku", "Anthropic Claude 3.5 Haiku", "0.80", "0.08", "4.00"),
    ("gemini-flash", "Google Gemini 2.0 Flash", "0.10", "0.025", "0.40"),
)
# (code, name, unit, whole credits as a Decimal, per units).
DEMO_UNIT_METERS: tuple[tuple[str, str, str, str, int], ...] = (
    ("api_call", "API call", "call", "0.1", 1),
    ("image", "Image generation", "image", "2", 1),
    ("voice_second", "Voice, billed per second", "second", "1", 60),
    ("voice_minute", "Voice, billed per minute", "minute", "1", 1),
)


def usd_to_credits(usd: str, *, credit_scale: int) -> int:
    """A USD price in the credit asset's smallest unit at the demo's rates, rounded up (never sold below cost)."""
    credits = Decimal(usd) * DEMO_INR_PER_USD / DEMO_INR_PER_CREDIT
    return int(credits.scaleb(credit_scale).to_integral_value(rounding=ROUND_CEILING))


def _credit_units(whole: str, credit_scale: int) -> tuple[int, int]:
    """A price in credits (``"0.1"``) as an integer amount per ``per`` multiplier that stays exact at any
    scale: 0.1 credit at scale 0 is 1 credit per 10 units."""
    value = Decimal(whole).scaleb(credit_scale)
    multiplier = 1
    while value != value.to_integral_value():
        value *= 10
        multiplier *= 10
    return int(value), multiplier


# The demo coupon: 10 % off any plan or custom quantity, for anyone with the code.
DEMO_COUPON: dict[str, Any] = {
    "code": "WELCOME10",
    "kind": "percent_off",
    "percent_bps": 1_000,
    "description": "Welcome: 10 % off any plan or custom quantity.",
}
# Whoever seeds the demo: the server itself, not a person (the audit log shows no user).
SEED_ACTOR = audit_service.Actor(user_id=None)


def demo_catalog(*, credit_scale: int) -> catalog_service.CatalogSeed:
    """The demo catalog at a credit scale."""
    one = 10**credit_scale
    plans = [
        {
            "code": code,
            "name": name,
            "description": f"{credits:,} credits",
            "credits": credits * one,
            "popular": popular,
            "sort_order": (order + 1) * 10,
            "prices": prices,
        }
        for order, (code, name, credits, popular, prices) in enumerate(DEMO_PLANS)
    ]
    models = [
        {
            "code": code,
            "name": name,
            "description": f"USD {input_usd} / {cached_usd} / {output_usd} per million tokens "
            f"(input / cached input / output) at {DEMO_INR_PER_USD} INR per USD",
            "kind": "model",
            "input_price": usd_to_credits(input_usd, credit_scale=credit_scale),
            "cached_input_price": usd_to_credits(cached_usd, credit_scale=credit_scale),
            "output_price": usd_to_credits(output_usd, credit_scale=credit_scale),
        }
        for code, name, input_usd, cached_usd, output_usd in DEMO_MODELS
    ]
    units = []
    for code, name, unit, whole, per in DEMO_UNIT_METERS:
        price, multiplier = _credit_units(whole, credit_scale)
        units.append(
            {
                "code": code,
                "name": name,
                "kind": "unit",
                "unit": unit,
                "price": price,
                "per": per * multiplier,
            }
        )
    return catalog_service.CatalogSeed(
        plans=plans,
        unit_prices=[
            catalog_service.UnitPriceInput(currency, amount, DEMO_UNIT_MIN, DEMO_UNIT_MAX)
            for currency, amount in DEMO_UNIT_PRICES
        ],
        slabs=[catalog_service.SlabInput(credits * one, bps) for credits, bps in DEMO_SLABS],
        meters=models + units,
        coupons=[DEMO_COUPON],
    )


async def seed_catalog(session: AsyncSession, *, credit_scale: int) -> None:
    """Add what is missing (by code, currency, or an empty slab list), through the catalog's own service; an
    admin's later changes are kept."""
    await catalog_service.seed_catalog(
        session, actor=SEED_ACTOR, seed=demo_catalog(credit_scale=credit_scale)
    )
