"""Customers by the app's own id, and usage events: priced with ``catalog.service.meter_cost`` at the price in
force when received, charged through ``ledger.service``, kept forever under the app's own id.

Exactly once: an event's ``id`` is claimed first, by inserting its row (``ON CONFLICT DO NOTHING``), and only a
request that claimed it charges. A second request with the same id waits on the first one's claim (PostgreSQL's
unique index; SQLite's single writer), then finds the stored event and answers it (``replayed``). A refused
event's claim is undone with the rest of its request (single) or deleted (batch), so the id can be sent again.

Lock order: ids are claimed (sorted, in one statement) before any wallet is locked, and wallets are locked in id
order, so a request never waits for a claim while holding a wallet another claimer needs.

A batch charges each wallet once: one ledger ``spend`` of the sum of its events' costs. When the wallet cannot
pay for all of them, the ledger's refusal names what is available (the wallet stays locked), and the events that
fit are charged in order, skipping the ones that do not.

Rows are written once in the usual case: the claim writes each row with the ledger transaction id made in
advance for its wallet and the ``balance_after`` the charge is expected to give it (from the wallet as read
before it was locked); when the charge gives other figures (the wallet changed meanwhile, an event was refused
or claimed by another request), the rows are corrected in the same transaction. On PostgreSQL the claim is one
``INSERT ... SELECT`` over a JSON array bound as one parameter.

Events: each wallet a request charged pushes one ``balance.updated`` to its owner's stream, and each event
charged now (not a replay, not a refused one) queues one ``usage.recorded`` webhook per subscribed endpoint, in
the request's transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, cast
from zoneinfo import ZoneInfo

from pydantic_core import to_json
from sqlalchemy import String, Table, bindparam, delete, func, select, text, update
from sqlalchemy import cast as cast_
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.auth.models import User
from prepaid.catalog import service as catalog_service
from prepaid.catalog.models import Meter
from prepaid.db import utcnow
from prepaid.errors import Conflict, DomainError, IdempotencyError, InvalidRequest, NotFound
from prepaid.ids import new_id, new_ids
from prepaid.ledger import service as ledger_service
from prepaid.ledger.errors import InsufficientCredits
from prepaid.ledger.models import Account, Transaction
from prepaid.ledger.schemas import MAX_AMOUNT
from prepaid.metering.models import UsageEvent
from prepaid.metering.schemas import UsageCreate
from prepaid.money import CREDIT
from prepaid.notify import realtime, webhooks_out
from prepaid.pagination import Page, PageParams, paginate
from prepaid.settings import Settings

USAGE = cast(Table, UsageEvent.__table__)
USAGE_RECORDED = "usage.recorded"

# ---------------------------------------------------------------- customers


@dataclass(frozen=True)
class Provisioning:
    """Whether a caller may create an unknown customer on first use, and the grant a new one receives."""

    allowed: bool
    signup_credits: int  # in the credit asset's smallest unit
    actor: audit_service.Actor | None = None

    @classmethod
    def of(cls, settings: Settings, *, allowed: bool, actor: audit_service.Actor | None) -> Provisioning:
        return cls(
            allowed=allowed and settings.auto_provision,
            signup_credits=settings.signup_credits * 10**settings.credit_scale,
            actor=actor,
        )


NO_PROVISIONING = Provisioning(allowed=False, signup_credits=0)


def _customer_snapshot(user: User) -> dict[str, Any]:
    return {"external_id": user.external_id, "name": user.name, "email": user.email, "phone": user.phone}


async def find_customer(session: AsyncSession, reference: str) -> User:
    """A customer by user id or the app's external id; ``NotFound`` (param ``customer``) otherwise."""
    return await auth_service.find_customer(session, reference)


async def _create_customer(
    session: AsyncSession,
    *,
    external_id: str,
    provisioning: Provisioning,
    name: str = "",
    email: str | None = None,
    phone: str | None = None,
) -> tuple[User, bool]:
    """The customer with this external id, created now when unknown (and granted the signup credits once).
    Two first requests at once: the unique external id lets one create it; the other finds it."""
    try:
        async with session.begin_nested():
            user = await auth_service.create_user(
                session, email=email, password=None, name=name, external_id=external_id, phone=phone
            )
    except Conflict as error:
        # A concurrent first request created it (its commit is visible now), or the email is someone else's.
        existing = await session.scalar(select(User).where(User.external_id == external_id))
        if existing is None or existing.deleted_at is not None:
            raise error from None
        return existing, False
    if provisioning.signup_credits > 0:
        wallet = await ledger_service.default_wallet(session, user_id=user.id)
        await ledger_service.grant(
            session,
            wallet_id=wallet.id,
            amount=provisioning.signup_credits,
            idempotency_key=f"signup:{user.id}",
            source="promotional",
            counterparty="@promotions",
            reference=("user", user.id),
            memo="Signup credits",
        )
    if provisioning.actor is not None:
        await audit_service.record(
            session,
            actor=provisioning.actor,
            action="customer.create",
            object_type="user",
            object_id=user.id,
            before=None,
            after={**_customer_snapshot(user), "signup_credits": provisioning.signup_credits},
        )
    return user, True


async def customer_or_provision(
    session: AsyncSession, reference: str, *, provisioning: Provisioning
) -> tuple[User, bool]:
    """A customer by id or external id; an unknown one is created on first use when ``provisioning`` allows."""
    try:
        return await find_customer(session, reference), False
    except NotFound:
        if not provisioning.allowed or reference.startswith("usr_"):
            raise
    return await _create_customer(session, external_id=reference, provisioning=provisioning)


async def put_customer(
    session: AsyncSession,
    *,
    external_id: str,
    changes: dict[str, Any],
    provisioning: Provisioning,
    actor: audit_service.Actor,
) -> tuple[User, bool]:
    """Create (whatever ``PREPAID_AUTO_PROVISION`` says: this is an explicit creation) or update a customer by
    the app's own id; fields not given stay as they are."""
    email = changes.get("email")
    email = auth_service.normalize_email(email) if email else email
    existing = await session.scalar(select(User).where(User.external_id == external_id))
    if existing is None or existing.deleted_at is not None:
        if existing is not None:
            raise NotFound(f"No customer {external_id}.", param="external_id")
        return await _create_customer(
            session,
            external_id=external_id,
            provisioning=Provisioning(True, provisioning.signup_credits, actor),
            name=changes.get("name") or "",
            email=email,
            phone=changes.get("phone"),
        )
    before = _customer_snapshot(existing)
    if "email" in changes and email != existing.email:
        if email and await auth_service.get_user_by_email(session, email):
            raise Conflict("An account with this email already exists.", code="email_taken", param="email")
        existing.email = email
        existing.email_verified_at = None
    if "name" in changes:
        existing.name = changes["name"] or ""
    if "phone" in changes:
        existing.phone = changes["phone"]
    after = _customer_snapshot(existing)
    if after != before:
        await session.flush()  # the unique email index decides a race
        await audit_service.record(
            session,
            actor=actor,
            action="customer.update",
            object_type="user",
            object_id=existing.id,
            before=before,
            after=after,
        )
    return existing, False


async def customer_wallets(session: AsyncSession, *, user_id: str) -> list[Account]:
    wallets: list[Account] = []
    page = PageParams(limit=100)
    while True:
        found = await ledger_service.list_wallets(session, user_id=user_id, params=page)
        wallets.extend(found.data)
        if not found.has_more or not found.data:
            return sorted(wallets, key=lambda wallet: (not wallet.is_default, wallet.id))
        page = PageParams(limit=100, starting_after=found.data[-1].id)


# ---------------------------------------------------------------- usage events


def _legacy_request_hash(event: UsageCreate) -> str:
    """The hash stored by the first releases (a JSON dump of the event per event): still compared with the
    events stored then."""
    payload = {
        "customer": event.customer,
        "wallet": event.wallet,
        "meter": catalog_service.normalize_code(event.meter),
        "quantity": event.quantity,
        "input_tokens": event.input_tokens,
        "output_tokens": event.output_tokens,
        "cached_input_tokens": event.cached_input_tokens,
        "timestamp": event.timestamp.isoformat() if event.timestamp else None,
        "metadata": event.metadata,
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()


_HASH_MARK = "~"  # never in a legacy (hex) hash; with 63 hex digits it fills the column's 64 characters


def _request_hashes(events: Sequence[UsageCreate]) -> list[str]:
    """What identifies each event's request, to compare a repeat of its id with: the ``repr`` of the tuple of
    its canonical fields (``repr`` keeps ``None`` apart from ``"None"`` and an integer apart from a string):
    customer, wallet, the meter as stored, the counts, the time, the metadata as sorted JSON only when there is
    some; SHA-256, marked ``~``. The tuple's text is written directly, its first three fields once per batch
    (``test_request_hashes_are_the_repr_of_the_canonical_tuple`` holds it equal to ``repr``)."""
    heads: dict[tuple[str | None, str | None, str], str] = {}
    digests: list[str] = []
    sha256 = hashlib.sha256
    for event in events:
        target = (event.customer, event.wallet, event.meter)
        head = heads.get(target)
        if head is None:
            meter = catalog_service.normalize_code(event.meter)
            head = heads[target] = f"({event.customer!r}, {event.wallet!r}, {meter!r}, "
        metadata = event.metadata
        timestamp = event.timestamp
        canonical = (
            f"{head}{event.quantity!r}, {event.input_tokens!r}, {event.output_tokens!r}, "
            f"{event.cached_input_tokens!r}, {timestamp.isoformat() if timestamp else None!r}, "
            f"{json.dumps(metadata, sort_keys=True, default=str) if metadata else metadata!r})"
        )
        digests.append(_HASH_MARK + sha256(canonical.encode()).hexdigest()[:63])
    return digests


def _request_hash(event: UsageCreate) -> str:
    return _request_hashes([event])[0]


def _same_request(stored_hash: str, digest: str, event: UsageCreate) -> bool:
    if stored_hash.startswith(_HASH_MARK):
        return stored_hash == digest
    return stored_hash == _legacy_request_hash(event)


@dataclass
class UsageRow:
    """An event charged by this request, as stored (answered without reading the rows back)."""

    id: str
    event_id: str
    user_id: str
    wallet_id: str
    meter_code: str
    quantity: int | None
    input_tokens: int | None
    output_tokens: int | None
    cached_input_tokens: int | None
    cost: int
    asset: str
    balance_after: int
    transaction_id: str | None
    batch_id: str | None
    metadata_: dict[str, Any]
    occurred_at: datetime
    created_at: datetime


@dataclass
class Outcome:
    """One event's answer: its stored row (charged now, or found: ``replayed``), or why it was refused."""

    event: UsageCreate
    usage: UsageEvent | UsageRow | None = None
    replayed: bool = False
    error: DomainError | None = None


@dataclass
class _Pending:
    index: int
    event: UsageCreate
    digest: str
    user_id: str
    wallet: Account
    wallet_id: str  # the wallet's and meter's columns, read once per batch rather than once per event
    meter_code: str
    cost: int
    row_id: str = ""  # given to the claimed ones in bulk (``ids.new_ids``)


class _Refusals:
    """Per-batch caches of what was resolved (customers, wallets, meters) or refused."""

    def __init__(self) -> None:
        self.customers: dict[str, User | DomainError] = {}
        self.wallets: dict[str, Account | DomainError] = {}
        self.meters: dict[str, Meter | DomainError] = {}


def _other_owner(owner_id: str | None, user_id: str) -> bool:
    return owner_id is not None and owner_id != user_id


async def _resolve_wallet(
    session: AsyncSession,
    event: UsageCreate,
    *,
    owner_id: str | None,
    provisioning: Provisioning,
    cache: _Refusals,
) -> Account:
    if event.wallet is not None:
        found = cache.wallets.get(event.wallet)
        if found is None:
            try:
                found = await ledger_service.get_wallet(session, event.wallet)
                if _other_owner(owner_id, found.user_id or ""):
                    raise NotFound(f"No wallet {event.wallet}.", param="wallet")
            except NotFound:
                found = NotFound(f"No wallet {event.wallet}.", param="wallet")
            cache.wallets[event.wallet] = found
        if isinstance(found, DomainError):
            raise found
        return found
    assert event.customer is not None
    user = cache.customers.get(event.customer)
    if user is None:
        try:
            user, _ = await customer_or_provision(session, event.customer, provisioning=provisioning)
            if _other_owner(owner_id, user.id):
                raise NotFound(f"No customer {event.customer}.", param="customer")
        except DomainError as error:
            user = error
        cache.customers[event.customer] = user
    if isinstance(user, DomainError):
        raise user
    key = f"default:{user.id}"
    wallet = cache.wallets.get(key)
    if wallet is None:
        try:
            wallet = await ledger_service.default_wallet(session, user_id=user.id)
        except DomainError as error:
            wallet = error
        cache.wallets[key] = wallet
    if isinstance(wallet, DomainError):
        raise wallet
    return wallet


async def _resolve_meter(session: AsyncSession, code: str, cache: _Refusals) -> Meter:
    meter = cache.meters.get(code.lower())
    if meter is None:
        try:
            meter = await catalog_service.get_meter(session, code)
            if not catalog_service.is_usable(meter):
                raise Conflict(f"Meter {meter.code} is not active.", code="meter_inactive", param="meter")
        except NotFound:
            meter = NotFound(f"No meter {code}.", code="meter_not_found", param="meter")
        except DomainError as error:
            meter = error
        cache.meters[code.lower()] = meter
    if isinstance(meter, DomainError):
        raise meter
    return meter


def _cost(meter: Meter, event: UsageCreate) -> int:
    cost = catalog_service.meter_cost(
        meter,
        quantity=event.quantity,
        input_tokens=event.input_tokens or 0,
        output_tokens=event.output_tokens or 0,
        cached_input_tokens=event.cached_input_tokens or 0,
    )
    if cost > MAX_AMOUNT:
        raise InvalidRequest(
            f"This use would cost {cost}, more than one event may ({MAX_AMOUNT}).",
            code="cost_too_large",
            param="quantity" if meter.kind == "unit" else "output_tokens",
        )
    return cost


def _found_answer(
    found: UsageEvent, event: UsageCreate, digest: str, owner_id: str | None
) -> DomainError | None:
    """A stored event with this id: the same request by someone who may see it answers it again (None);
    otherwise the refusal."""
    if _other_owner(owner_id, found.user_id):
        return Conflict(
            "This usage id is already used in this deployment.", code="usage_id_taken", param="id"
        )
    if not _same_request(found.request_hash, digest, event):
        return IdempotencyError(
            "This usage id was already used for another event.", code="usage_id_reused", param="id"
        )
    return None


def _answer_stored(outcome: Outcome, found: UsageEvent, digest: str, owner_id: str | None) -> None:
    refusal = _found_answer(found, outcome.event, digest, owner_id)
    if refusal is not None:
        outcome.error = refusal
    else:
        outcome.usage, outcome.replayed = found, True


@dataclass
class _Claims:
    """What the claim rows of a request share, and what they are written with.

    The rows are written with the values the charge is expected to give them, so that in the usual case they
    need no second write: each wallet's ledger transaction id is made in advance (``transaction_ids``), and an
    event's ``balance_after`` is the wallet's ``available`` as read when it was resolved, less what this
    request charges it (``expected``), plus what the events after it on that wallet cost (``suffix``). The
    charge then checks: when the wallet had another ``available`` by the time it was locked, or the id was not
    used, or not every event was charged, the rows are corrected (in the same transaction)."""

    batch_id: str | None
    api_key_id: str | None
    now: datetime
    suffix: dict[str, int]
    expected: dict[str, int]
    transaction_ids: dict[str, str | None]


def _claims(pending: Sequence[_Pending], *, batch_id: str | None, api_key_id: str | None) -> _Claims:
    """Gives the events their row ids (in the order sent, in bulk) and the values their rows are written with."""
    for item, row_id in zip(pending, new_ids("usg", len(pending)), strict=True):
        item.row_id = row_id
    after: dict[str, int] = defaultdict(int)
    suffix: dict[str, int] = {}
    wallets: dict[str, Account] = {}
    for item in reversed(pending):
        suffix[item.row_id] = after[item.wallet_id]
        after[item.wallet_id] += item.cost
        wallets[item.wallet_id] = item.wallet
    return _Claims(
        batch_id=batch_id,
        api_key_id=api_key_id,
        now=utcnow(),
        suffix=suffix,
        expected={wallet_id: wallet.available - after[wallet_id] for wallet_id, wallet in wallets.items()},
        transaction_ids={wallet_id: new_id("txn") if after[wallet_id] else None for wallet_id in wallets},
    )


def _dialect(session: AsyncSession) -> str:
    return session.bind.dialect.name if session.bind is not None else "sqlite"


# PostgreSQL: the claim rows as one JSON array of arrays, bound as one parameter and taken apart by the server
# (one ``pydantic_core.to_json``, twice as fast as ``json.dumps`` here; per-column arrays cost the driver an
# ``isinstance`` check per element).
_PG_CLAIM = text(
    "INSERT INTO metering_usage (id, event_id, request_hash, user_id, wallet_id, meter_code, quantity, "
    "input_tokens, output_tokens, cached_input_tokens, cost, asset, balance_after, transaction_id, batch_id, "
    "api_key_id, metadata, occurred_at, created_at) "
    "SELECT r->>0, r->>1, r->>2, r->>3, r->>4, r->>5, (r->>6)::bigint, (r->>7)::bigint, (r->>8)::bigint, "
    "(r->>9)::bigint, (r->>10)::bigint, :asset, (r->>11)::bigint, r->>14, :batch_id, :api_key_id, r->12, "
    "COALESCE((r->>13)::timestamptz, :created_at), :created_at "
    "FROM jsonb_array_elements(CAST(:rows AS jsonb)) AS r "
    "ON CONFLICT (event_id) DO NOTHING RETURNING event_id"
)


async def _claim(session: AsyncSession, pending: Sequence[_Pending], claims: _Claims) -> set[str]:
    """Inserts the rows of the events whose ids are free and answers those ids; a concurrent claim of the same
    id waits for the first claimer to finish, and then finds the id taken (or free again, if it was refused).
    Rows are inserted in event id order: one claim order for every request."""
    if not pending:
        return set()
    ordered = sorted(pending, key=lambda item: item.event.id)
    now = claims.now
    if _dialect(session) == "postgresql":
        suffix, expected, transactions = claims.suffix, claims.expected, claims.transaction_ids
        values: list[list[Any]] = []
        for item in ordered:
            event = item.event
            values.append(
                [
                    item.row_id,
                    event.id,
                    item.digest,
                    item.user_id,
                    item.wallet_id,
                    item.meter_code,
                    event.quantity,
                    event.input_tokens,
                    event.output_tokens,
                    event.cached_input_tokens,
                    item.cost,
                    expected[item.wallet_id] + suffix[item.row_id],
                    event.metadata or {},
                    event.timestamp.isoformat() if event.timestamp else None,
                    transactions[item.wallet_id],
                ]
            )
        result = await session.execute(
            _PG_CLAIM,
            {
                "rows": to_json(values).decode(),
                "asset": CREDIT,
                "batch_id": claims.batch_id,
                "api_key_id": claims.api_key_id,
                "created_at": now,
            },
        )
        return set(result.scalars().all())
    # SQLite: one statement executed for many rows (SQLAlchemy's "insertmanyvalues", compiled once).
    rows = [
        {
            "id": item.row_id,
            "event_id": item.event.id,
            "request_hash": item.digest,
            "user_id": item.user_id,
            "wallet_id": item.wallet_id,
            "meter_code": item.meter_code,
            "quantity": item.event.quantity,
            "input_tokens": item.event.input_tokens,
            "output_tokens": item.event.output_tokens,
            "cached_input_tokens": item.event.cached_input_tokens,
            "cost": item.cost,
            "asset": CREDIT,
            "balance_after": claims.expected[item.wallet_id] + claims.suffix[item.row_id],
            "transaction_id": claims.transaction_ids[item.wallet_id],
            "batch_id": claims.batch_id,
            "api_key_id": claims.api_key_id,
            "metadata": item.event.metadata or {},
            "occurred_at": item.event.timestamp or now,
            "created_at": now,
        }
        for item in ordered
    ]
    stmt = (
        sqlite_insert(USAGE).on_conflict_do_nothing(index_elements=["event_id"]).returning(USAGE.c.event_id)
    )
    result = await session.execute(stmt, rows)
    return set(result.scalars().all())


def _pg_listed(name: str) -> Any:
    """The strings of a JSON array parameter, taken apart by PostgreSQL (for an array parameter the driver
    checks each element in Python)."""
    return select(func.jsonb_array_elements_text(cast_(bindparam(name, type_=String()), JSONB)))


def _among(session: AsyncSession, column: Any, values: list[str]) -> Any:
    """``column`` is one of ``values``: on PostgreSQL one JSON array parameter, an IN list on SQLite."""
    if _dialect(session) == "postgresql":
        listed = cast_(bindparam("values", json.dumps(values), type_=String()), JSONB)
        return column.in_(select(func.jsonb_array_elements_text(listed)))
    return column.in_(values)


_PG_STORED = select(UsageEvent).where(UsageEvent.event_id.in_(_pg_listed("event_ids")))  # built once


async def _stored(session: AsyncSession, event_ids: Sequence[str]) -> dict[str, UsageEvent]:
    found: dict[str, UsageEvent] = {}
    unique = sorted(set(event_ids))
    if _dialect(session) == "postgresql":
        if unique:
            rows = await session.scalars(_PG_STORED, {"event_ids": json.dumps(unique)})
            found.update({row.event_id: row for row in rows})
        return found
    for start in range(0, len(unique), 500):
        rows = await session.scalars(
            select(UsageEvent).where(UsageEvent.event_id.in_(unique[start : start + 500]))
        )
        found.update({row.event_id: row for row in rows})
    return found


async def _charge_wallet(
    session: AsyncSession,
    *,
    wallet: Account,
    items: list[_Pending],
    key: str,
    reference: tuple[str, str],
    owner_id: str | None,
    actor_user_id: str | None,
    transaction_id: str | None,
) -> tuple[list[_Pending], dict[int, DomainError], str | None, int]:
    """Charges what ``items`` cost to ``wallet`` in one ledger spend: all of them, or, when the wallet cannot
    pay for all, those that fit in order. Answers the charged items, the refusals, the transaction id (None
    when no credits moved) and the wallet's available credits after."""
    total = sum(item.cost for item in items)
    if total == 0:
        current = await ledger_service.get_wallet(session, wallet.id)
        return items, {}, None, current.available
    metadata = {"events": len(items)}
    try:
        movement = await ledger_service.spend(
            session,
            wallet_id=wallet.id,
            amount=total,
            idempotency_key=key,
            reference=reference,
            metadata=metadata,
            actor_user_id=actor_user_id,
            owner_id=owner_id,
            transaction_id=transaction_id,
        )
    except InsufficientCredits as refusal:
        if len(items) == 1:
            return [], {items[0].index: refusal}, None, int(refusal.extra["available"])
        # The wallet stays locked by this transaction: what it has cannot change until the end of it.
        limit = int(refusal.extra["available"]) + wallet.overdraft_limit
        charged: list[_Pending] = []
        refused: dict[int, DomainError] = {}
        spent = 0
        for item in items:
            if spent + item.cost <= limit:
                charged.append(item)
                spent += item.cost
            else:
                refused[item.index] = InsufficientCredits(
                    available=int(refusal.extra["available"]) - spent, asset=wallet.asset, wallet_id=wallet.id
                )
        if spent == 0:
            return charged, refused, None, int(refusal.extra["available"])
        try:
            movement = await ledger_service.spend(
                session,
                wallet_id=wallet.id,
                amount=spent,
                idempotency_key=f"{key}:fit",
                reference=reference,
                metadata={"events": len(charged)},
                actor_user_id=actor_user_id,
                owner_id=owner_id,
            )
        except DomainError as error:
            return [], {item.index: error for item in items}, None, 0
        return charged, refused, movement.transaction.id, movement.balances[wallet.id].available
    except DomainError as error:
        return [], {item.index: error for item in items}, None, 0
    return items, {}, movement.transaction.id, movement.balances[wallet.id].available


def _usage_data(row: UsageRow) -> dict[str, Any]:
    """What ``usage.recorded`` says of an event (the webhook body adds the customer's id and external id).
    The event's ``metadata`` is not carried: it is the app's own JSON, which may hold floats."""
    return {
        "usage_id": row.event_id,
        "wallet_id": row.wallet_id,
        "meter": row.meter_code,
        "quantity": row.quantity,
        "input_tokens": row.input_tokens,
        "output_tokens": row.output_tokens,
        "cached_input_tokens": row.cached_input_tokens,
        "cost": row.cost,
        "asset": row.asset,
        "balance_after": row.balance_after,
        "transaction_id": row.transaction_id,
        "batch_id": row.batch_id,
        "timestamp": row.occurred_at,
    }


async def _usage_recorded(session: AsyncSession, rows: Sequence[UsageRow]) -> None:
    """``usage.recorded`` for each event charged now, queued for the endpoints subscribed to it in this
    transaction. It is a webhook type only (not streamed), so it is queued with ``webhooks_out.enqueue``
    exactly as ``realtime.emit`` would; the endpoints are read once per transaction, so when the first event
    queues nothing no endpoint takes the type and the rest are not even built (a batch pays nothing for a
    webhook nobody subscribed to)."""
    for row in rows:
        event = realtime.make_event(type=USAGE_RECORDED, data=_usage_data(row))
        if not await webhooks_out.enqueue(session, user_id=row.user_id, event=event):
            return


def _suffix_values(items: list[_Pending], available_after: int) -> dict[str, int]:
    values: dict[str, int] = {}
    later = 0
    for item in reversed(items):
        values[item.row_id] = available_after + later
        later += item.cost
    return values


async def record_usage(
    session: AsyncSession,
    *,
    events: Sequence[UsageCreate],
    owner_id: str | None,
    provisioning: Provisioning,
    actor_user_id: str | None,
    api_key_id: str | None,
    batch_id: str | None = None,
) -> list[Outcome]:
    """Prices, claims and charges ``events`` (one, or a batch), answering each: charged, found again
    (``replayed``), or refused. With ``owner_id`` (a user's own key) only that user's wallets are reachable;
    another user's wallet or customer is not found. Nothing refused is stored or charged."""
    outcomes = [Outcome(event=event) for event in events]
    digests = _request_hashes(events)
    cache = _Refusals()
    pending: list[_Pending] = []
    first_of: dict[str, int] = {}
    # What a batch's events share, resolved once: their target (customer or wallet), meter and price.
    targets: dict[tuple[str | None, str | None], tuple[Account, str, str, str | None]] = {}
    meters: dict[str, tuple[Meter, str]] = {}
    costs: dict[tuple[str, int | None, int | None, int | None, int | None], int] = {}
    # New customers are created in one order by every request, so two batches never wait on each other.
    for customer in sorted({event.customer for event in events if event.customer and event.wallet is None}):
        probe = UsageCreate.model_construct(id="", meter="", customer=customer, wallet=None)
        with contextlib.suppress(DomainError):  # kept in the cache, answered per event below
            await _resolve_wallet(session, probe, owner_id=owner_id, provisioning=provisioning, cache=cache)
    refused_first: list[int] = []  # events refused before the claim; one whose id is stored answers as stored
    for index, event in enumerate(events):
        if event.id in first_of:  # the same id earlier in this batch: answered once it is settled
            continue
        first_of[event.id] = index
        try:
            target = targets.get((event.customer, event.wallet))
            if target is None:
                if (event.customer is None) == (event.wallet is None):
                    raise InvalidRequest(
                        "Give exactly one of customer or wallet.", code="customer_or_wallet", param="customer"
                    )
                wallet = await _resolve_wallet(
                    session, event, owner_id=owner_id, provisioning=provisioning, cache=cache
                )
                target = targets[(event.customer, event.wallet)] = (
                    wallet,
                    wallet.id,
                    wallet.asset,
                    wallet.user_id,
                )
            wallet, wallet_id, asset, user_id = target
            priced = meters.get(event.meter)
            if priced is None:
                meter = await _resolve_meter(session, event.meter, cache)
                priced = meters[event.meter] = (meter, meter.code)
            meter, meter_code = priced
            if asset != CREDIT:
                raise InvalidRequest("Usage is charged in credits.", code="asset_mismatch", param="wallet")
            counts = (
                meter_code,
                event.quantity,
                event.input_tokens,
                event.output_tokens,
                event.cached_input_tokens,
            )
            cost = costs.get(counts)
            if cost is None:
                cost = costs[counts] = _cost(meter, event)
        except DomainError as error:
            outcomes[index].error = error
            refused_first.append(index)
            continue
        assert user_id is not None
        pending.append(_Pending(index, event, digests[index], user_id, wallet, wallet_id, meter_code, cost))
    claims = _claims(pending, batch_id=batch_id, api_key_id=api_key_id)
    claimed = await _claim(session, pending, claims)
    # An id already stored (sent before, or by a request that finished meanwhile) is not claimed; it answers
    # the stored event, as does a refused event whose id is stored. Looked up only when there are any: a
    # lookup of every id first cost PostgreSQL about 8 ms per 1,000 new ids.
    taken = [item for item in pending if item.event.id not in claimed]
    if taken or refused_first:
        stored = await _stored(
            session, [item.event.id for item in taken] + [events[index].id for index in refused_first]
        )
        for item in taken:
            found = stored.get(item.event.id)
            if found is None:  # pragma: no cover - the claim failed, so a row exists
                outcomes[item.index].error = Conflict(
                    "This usage id is being recorded by another request.", code="usage_id_in_use", param="id"
                )
                continue
            _answer_stored(outcomes[item.index], found, item.digest, owner_id)
        for index in refused_first:
            if (found := stored.get(events[index].id)) is not None:
                outcomes[index].error = None
                _answer_stored(outcomes[index], found, digests[index], owner_id)
    # The rows of a wallet with a taken id counted its cost in their suffixes: they are rewritten below.
    uneven = {item.wallet_id for item in taken}
    if taken:
        pending = [item for item in pending if item.event.id in claimed]
    by_wallet: dict[str, list[_Pending]] = defaultdict(list)
    for item in pending:
        by_wallet[item.wallet_id].append(item)
    refused_rows: list[str] = []
    charged_rows: dict[str, _Pending] = {}
    final: dict[str, tuple[int, str | None]] = {}
    for wallet_id in sorted(by_wallet):  # wallets are locked in id order
        items = by_wallet[wallet_id]
        key = f"usage:{batch_id}:{wallet_id}" if batch_id else f"usage:{items[0].row_id}"
        reference = ("usage_batch", batch_id) if batch_id else ("usage", items[0].event.id)
        charged, refused, transaction_id, available_after = await _charge_wallet(
            session,
            wallet=items[0].wallet,
            items=items,
            key=key,
            reference=reference,
            owner_id=owner_id,
            actor_user_id=actor_user_id,
            transaction_id=claims.transaction_ids[wallet_id],
        )
        for index, refusal in refused.items():
            outcomes[index].error = refusal
        refused_rows.extend(item.row_id for item in items if item.index in refused)
        if not charged:
            continue
        table = USAGE
        if len(charged) == len(items) and wallet_id not in uneven:
            # The rows were written with the wallet's expected balance and transaction: when the charge gave
            # others (the wallet changed before it was locked), one statement shifts them all.
            for item in charged:
                final[item.row_id] = (claims.suffix[item.row_id] + available_after, transaction_id)
            shift = available_after - claims.expected[wallet_id]
            if shift or transaction_id != claims.transaction_ids[wallet_id]:
                await session.execute(
                    update(table)
                    .where(_among(session, table.c.id, [item.row_id for item in charged]))
                    .values(balance_after=table.c.balance_after + shift, transaction_id=transaction_id)
                )
        else:
            values = _suffix_values(charged, available_after)
            final.update({row_id: (after, transaction_id) for row_id, after in values.items()})
            await session.execute(
                update(table)
                .where(table.c.id == bindparam("row_id"))
                .values(balance_after=bindparam("after"), transaction_id=transaction_id),
                [{"row_id": row_id, "after": after} for row_id, after in values.items()],
                execution_options={"synchronize_session": False},
            )
        charged_rows.update({item.row_id: item for item in charged})
    if refused_rows:
        table = USAGE
        for start in range(0, len(refused_rows), 500):
            await session.execute(delete(table).where(table.c.id.in_(refused_rows[start : start + 500])))
    for row_id, item in charged_rows.items():
        after, transaction = final[row_id]
        event = item.event
        outcomes[item.index].usage = UsageRow(
            id=row_id,
            event_id=event.id,
            user_id=item.user_id,
            wallet_id=item.wallet_id,
            meter_code=item.meter_code,
            quantity=event.quantity,
            input_tokens=event.input_tokens,
            output_tokens=event.output_tokens,
            cached_input_tokens=event.cached_input_tokens,
            cost=item.cost,
            asset=CREDIT,
            balance_after=after,
            transaction_id=transaction,
            batch_id=claims.batch_id,
            metadata_=event.metadata or {},
            occurred_at=event.timestamp or claims.now,
            created_at=claims.now,
        )
    charged_now = sorted(charged_rows.values(), key=lambda item: item.index)
    await _usage_recorded(session, [cast(UsageRow, outcomes[item.index].usage) for item in charged_now])
    # Repeats of an id within the batch answer as their first occurrence settled.
    for index, event in enumerate(events):
        first = first_of.get(event.id)
        if first is None or first == index:
            continue
        settled = outcomes[first]
        if digests[first] != digests[index]:
            outcomes[index].error = IdempotencyError(
                "This usage id was already used for another event.", code="usage_id_reused", param="id"
            )
        elif settled.usage is not None:
            outcomes[index].usage, outcomes[index].replayed = settled.usage, True
        else:
            outcomes[index].error = settled.error
    return outcomes


# ---------------------------------------------------------------- reads


async def get_usage(session: AsyncSession, event_id: str) -> UsageEvent:
    found = await session.scalar(select(UsageEvent).where(UsageEvent.event_id == event_id))
    if found is None:
        raise NotFound(f"No usage event {event_id}.", param="id")
    return found


def _filtered(
    *,
    user_id: str | None,
    wallet_id: str | None,
    meter: str | None,
    since: datetime | None,
    until: datetime | None,
) -> Any:
    stmt = select(UsageEvent)
    if user_id is not None:
        stmt = stmt.where(UsageEvent.user_id == user_id)
    if wallet_id is not None:
        stmt = stmt.where(UsageEvent.wallet_id == wallet_id)
    if meter is not None:
        stmt = stmt.where(UsageEvent.meter_code == catalog_service.normalize_code(meter))
    if since is not None:
        stmt = stmt.where(UsageEvent.occurred_at >= since)
    if until is not None:
        stmt = stmt.where(UsageEvent.occurred_at < until)
    return stmt


async def list_usage(
    session: AsyncSession,
    *,
    params: PageParams,
    user_id: str | None = None,
    wallet_id: str | None = None,
    meter: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> Page[UsageEvent]:
    """Newest received first. The cursors are usage ids (the app's own), as the answers show them."""
    cursors: dict[str, str | None] = {"starting_after": None, "ending_before": None}
    for name in cursors:
        value = getattr(params, name)
        if value is not None:
            try:
                cursors[name] = (await get_usage(session, value)).id
            except NotFound:
                raise InvalidRequest(f"No usage event {value}.", code="invalid_cursor", param=name) from None
    inner = PageParams(limit=params.limit, **cursors)
    stmt = _filtered(user_id=user_id, wallet_id=wallet_id, meter=meter, since=since, until=until)
    return await paginate(session, stmt, UsageEvent.id, inner)


@dataclass
class SummaryRow:
    day: date
    meter: str
    asset: str
    events: int = 0
    quantity: int = 0
    input_tokens: int = 0
    output_tokens: int = 0
    cached_input_tokens: int = 0
    cost: int = 0


def report_zone(settings: Settings) -> ZoneInfo:
    return ZoneInfo(settings.report_tz)


async def summarize_usage(
    session: AsyncSession,
    *,
    zone: ZoneInfo,
    user_id: str | None = None,
    wallet_id: str | None = None,
    meter: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
) -> list[SummaryRow]:
    """Per meter per day (in ``zone``, ``PREPAID_REPORT_TZ``): events, counts and cost; newest day first."""
    base = _filtered(user_id=user_id, wallet_id=wallet_id, meter=meter, since=since, until=until)
    stmt = base.with_only_columns(
        UsageEvent.occurred_at,
        UsageEvent.meter_code,
        UsageEvent.asset,
        UsageEvent.quantity,
        UsageEvent.input_tokens,
        UsageEvent.output_tokens,
        UsageEvent.cached_input_tokens,
        UsageEvent.cost,
    )
    rows: dict[tuple[date, str, str], SummaryRow] = {}
    result = await session.execute(stmt)
    for occurred_at, meter_code, asset, quantity, inputs, outputs, cached, cost in result:
        day = occurred_at.astimezone(zone).date()
        row = rows.get((day, meter_code, asset))
        if row is None:
            row = rows[(day, meter_code, asset)] = SummaryRow(day=day, meter=meter_code, asset=asset)
        row.events += 1
        row.quantity += quantity or 0
        row.input_tokens += inputs or 0
        row.output_tokens += outputs or 0
        row.cached_input_tokens += cached or 0
        row.cost += cost
    return sorted(rows.values(), key=lambda row: (-row.day.toordinal(), row.meter))


async def customer_transactions(
    session: AsyncSession, *, wallet: Account, params: PageParams
) -> Page[Transaction]:
    return await ledger_service.list_transactions(session, wallet=wallet, params=params)
