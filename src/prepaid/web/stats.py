"""The business in figures over a period: what the admin dashboard draws and ``GET /v1/admin/stats`` answers.

Typed functions taking the session (no FastAPI). Every figure is an integer: money in the currency's minor unit,
credits in the credit asset's smallest unit. Days are calendar days in ``PREPAID_REPORT_TZ`` (UTC by default).

- **Revenue** per day per currency: the money of orders fulfilled that day (``amount_paid``) less the money of
  the admins' refunds processed that day on fulfilled orders and of the chargebacks lost that day (the amount
  disputed): ``gross - refunded - chargebacks = net``. The automatic refund of a second, duplicate payment is
  left out, as that payment never counted.
- **Credits** per day, from the ledger's transactions by kind, measured on their system-account leg: ``sold``
  (``purchase``, out of ``@sales``), ``granted`` (``grant``: bonus, signup and admin grants; and the
  ``adjustment`` credits given to a wallet, such as a dispute's goodwill),
  ``spent`` (``spend`` and ``capture`` into ``@usage``; a refund's or a lost chargeback's clawback and capture
  are not spending, nor is a transfer between wallets, which has no system leg) and ``expired`` (``expire``,
  into ``@expired``). A ``reversal`` takes back, on its own day, what the transaction it reverses counted.
- **Orders by status**: the orders created in the period, counted by their status now.
- **Top customers**: per currency, of the users with an order fulfilled in the period, those who paid most
  (net of refunds and lost chargebacks) in the period, with the credits (bonus included) their orders
  fulfilled in the period granted.

Grouping by local day happens in the database: PostgreSQL converts with ``timezone()``; SQLite (no time zone
support) groups by UTC quarter hour, which every real UTC offset is a whole number of, and the quarters are
folded into local days here.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Integer,
    String,
    case,
    cast,
    func,
    literal,
    select,
    union_all,
)
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import aliased

from prepaid.auth.models import User
from prepaid.errors import InvalidRequest
from prepaid.ledger.models import Posting, Transaction
from prepaid.ledger.service import SYSTEM_ACCOUNTS
from prepaid.money import CREDIT
from prepaid.payments.models import ORDER_STATUSES, PaymentDispute, PaymentOrder, PaymentRefund

DEFAULT_DAYS = 30
MAX_DAYS = 366
TOP_CUSTOMERS = 10

# figure -> the (kinds, system account) legs it sums: "*" any system account. Credits going to wallets leave a
# system account (its leg is negative), credits coming back enter one (positive): "out" sums the first, "in"
# the second, so an adjustment that takes credits away never counts as granted.
CREDIT_FIGURES: dict[str, tuple[tuple[tuple[str, ...], str], str]] = {
    "sold": ((("purchase",), SYSTEM_ACCOUNTS["@sales"]), "out"),
    "granted": ((("grant", "adjustment"), "*"), "out"),
    "spent": ((("spend", "capture"), SYSTEM_ACCOUNTS["@usage"]), "in"),
    "expired": ((("expire",), SYSTEM_ACCOUNTS["@expired"]), "in"),
}


# ---------------------------------------------------------------- the period


@dataclass(frozen=True)
class Period:
    """Calendar days ``first`` to ``last``, both included, in ``zone``."""

    first: date
    last: date
    zone: ZoneInfo

    @property
    def days(self) -> list[date]:
        return [self.first + timedelta(days=offset) for offset in range((self.last - self.first).days + 1)]

    def _instant(self, day: date, *, edge: datetime) -> datetime:
        try:
            return datetime(day.year, day.month, day.day, tzinfo=self.zone).astimezone(UTC)
        except (OverflowError, ValueError):
            return edge

    @property
    def start(self) -> datetime:
        """The first instant of ``first`` (UTC)."""
        return self._instant(self.first, edge=datetime.min.replace(tzinfo=UTC))

    @property
    def end(self) -> datetime:
        """The first instant after ``last`` (UTC)."""
        if self.last == date.max:
            return datetime.max.replace(tzinfo=UTC)
        return self._instant(self.last + timedelta(days=1), edge=datetime.max.replace(tzinfo=UTC))


def report_zone(name: str) -> ZoneInfo:
    return ZoneInfo(name)


def period(first: date | None, last: date | None, *, zone: ZoneInfo, now: datetime) -> Period:
    """The period asked for: ``to`` defaults to today (in ``zone``), ``from`` to 29 days before ``to``;
    ``from`` after ``to``, or more than 366 days, is refused."""
    last = last if last is not None else now.astimezone(zone).date()
    if first is None:
        first = last - timedelta(days=DEFAULT_DAYS - 1) if last.toordinal() > DEFAULT_DAYS else date.min
    if first > last:
        raise InvalidRequest("from must not be after to.", code="invalid_period", param="from")
    if (last - first).days + 1 > MAX_DAYS:
        raise InvalidRequest(f"The period is at most {MAX_DAYS} days.", code="invalid_period", param="from")
    return Period(first=first, last=last, zone=zone)


# ---------------------------------------------------------------- grouping by local day


def _is_utc(zone: ZoneInfo) -> bool:
    return zone.key in ("UTC", "Etc/UTC", "Etc/UCT", "UCT", "Zulu", "Etc/Zulu", "Universal", "Etc/Universal")


def _bucket(column: Any, *, dialect: str, zone: ZoneInfo) -> ColumnElement[str]:
    """A text the database groups ``column`` (a UTC time) by, that ``_day_of`` turns into a local day."""
    if dialect == "postgresql":
        return func.to_char(func.timezone(literal(zone.key), column), "YYYY-MM-DD")
    if _is_utc(zone):
        return func.date(column)
    minute = cast(func.strftime("%M", column), Integer) // 15 * 15
    return func.strftime("%Y-%m-%d %H:", column, type_=String).concat(func.printf("%02d", minute))


def _day_of(bucket: str, zone: ZoneInfo) -> date:
    if len(bucket) == 10:
        return date.fromisoformat(bucket)
    return datetime.strptime(bucket, "%Y-%m-%d %H:%M").replace(tzinfo=UTC).astimezone(zone).date()


def _dialect(session: AsyncSession) -> str:
    return session.get_bind().dialect.name


# ---------------------------------------------------------------- the figures


@dataclass(frozen=True)
class RevenueDay:
    day: date
    currency: str
    gross: int
    refunded: int
    chargebacks: int = 0

    @property
    def net(self) -> int:
        return self.gross - self.refunded - self.chargebacks


@dataclass
class CreditsDay:
    day: date
    sold: int = 0
    granted: int = 0
    spent: int = 0
    expired: int = 0


@dataclass(frozen=True)
class StatusCount:
    status: str
    count: int


@dataclass(frozen=True)
class TopCustomer:
    user_id: str
    email: str | None
    name: str
    currency: str
    paid: int
    credits: int


@dataclass
class Stats:
    period: Period
    asset: str
    revenue: list[RevenueDay] = field(default_factory=list)
    credits: list[CreditsDay] = field(default_factory=list)
    orders_by_status: list[StatusCount] = field(default_factory=list)
    top_customers: list[TopCustomer] = field(default_factory=list)

    @property
    def currencies(self) -> list[str]:
        return sorted({row.currency for row in self.revenue} | {row.currency for row in self.top_customers})


def _money_back(period: Period, *, dialect: str) -> Any:
    """One row per sum of money given back in the period: the admins' refunds processed on fulfilled orders
    (``refunded``) and the chargebacks lost (``chargebacks``: the disputed amount, else the order's payment),
    with the day bucket, the buyer and the currency."""
    zone = period.zone
    refunds = (
        select(
            _bucket(PaymentRefund.processed_at, dialect=dialect, zone=zone).label("bucket"),
            PaymentOrder.user_id.label("user_id"),
            PaymentRefund.currency.label("currency"),
            PaymentRefund.amount.label("refunded"),
            literal(0, BigInteger).label("chargebacks"),
        )
        .join(PaymentOrder, PaymentOrder.id == PaymentRefund.order_id)
        .where(
            PaymentRefund.kind == "admin",
            PaymentRefund.status == "processed",
            PaymentOrder.fulfilled_at.is_not(None),
            PaymentRefund.processed_at >= period.start,
            PaymentRefund.processed_at < period.end,
        )
    )
    chargebacks = (
        select(
            _bucket(PaymentDispute.resolved_at, dialect=dialect, zone=zone).label("bucket"),
            PaymentOrder.user_id.label("user_id"),
            func.coalesce(PaymentDispute.currency, PaymentOrder.currency).label("currency"),
            literal(0, BigInteger).label("refunded"),
            func.coalesce(PaymentDispute.amount, PaymentOrder.amount_paid).label("chargebacks"),
        )
        .join(PaymentOrder, PaymentOrder.id == PaymentDispute.order_id)
        .where(
            PaymentDispute.kind == "chargeback",
            PaymentDispute.status == "lost",
            PaymentDispute.resolved_at >= period.start,
            PaymentDispute.resolved_at < period.end,
        )
    )
    return union_all(refunds, chargebacks).subquery()


async def revenue_per_day(session: AsyncSession, *, period: Period) -> list[RevenueDay]:
    """Per day and currency with any money in or out, oldest day first."""
    dialect, zone = _dialect(session), period.zone
    gross_rows = (
        select(
            _bucket(PaymentOrder.fulfilled_at, dialect=dialect, zone=zone).label("bucket"),
            PaymentOrder.currency.label("currency"),
            PaymentOrder.amount_paid.label("amount"),
        )
        .where(PaymentOrder.fulfilled_at >= period.start, PaymentOrder.fulfilled_at < period.end)
        .subquery()
    )
    back = _money_back(period, dialect=dialect)
    gross: dict[tuple[date, str], int] = defaultdict(int)
    refunded: dict[tuple[date, str], int] = defaultdict(int)
    lost: dict[tuple[date, str], int] = defaultdict(int)
    for bucket, currency, amount in await session.execute(
        select(gross_rows.c.bucket, gross_rows.c.currency, func.sum(gross_rows.c.amount)).group_by(
            gross_rows.c.bucket, gross_rows.c.currency
        )
    ):
        gross[(_day_of(bucket, zone), currency)] += int(amount or 0)
    for bucket, currency, refund_sum, chargeback_sum in await session.execute(
        select(
            back.c.bucket, back.c.currency, func.sum(back.c.refunded), func.sum(back.c.chargebacks)
        ).group_by(back.c.bucket, back.c.currency)
    ):
        refunded[(_day_of(bucket, zone), currency)] += int(refund_sum or 0)
        lost[(_day_of(bucket, zone), currency)] += int(chargeback_sum or 0)
    keys = sorted(set(gross) | set(refunded) | set(lost))
    return [
        RevenueDay(
            day=day,
            currency=cur,
            gross=gross.get((day, cur), 0),
            refunded=refunded.get((day, cur), 0),
            chargebacks=lost.get((day, cur), 0),
        )
        for day, cur in keys
    ]


def _system_legs(period: Period, *, dialect: str, reversals: bool) -> Any:
    """The credit legs on system accounts of the period's transactions of the figures' kinds (day bucket, kind,
    account, amount); with ``reversals``, the legs of the period's reversals of such transactions, named by the
    kind of the transaction they reverse."""
    kinds = sorted({kind for (kinds, _account), _way in CREDIT_FIGURES.values() for kind in kinds})
    made = Transaction if not reversals else aliased(Transaction, name="reversal")
    kind: Any = Transaction.kind
    legs = select(
        _bucket(made.created_at, dialect=dialect, zone=period.zone).label("bucket"),
        kind.label("kind"),
        Posting.account_id.label("account_id"),
        Posting.amount.label("amount"),
    ).join(made, made.id == Posting.transaction_id)
    if reversals:
        legs = legs.join(Transaction, Transaction.id == made.reverses_id).where(made.kind == "reversal")
    return legs.where(
        made.created_at >= period.start,
        made.created_at < period.end,
        Transaction.kind.in_(kinds),
        Posting.account_id.in_(list(SYSTEM_ACCOUNTS.values())),
        Posting.asset == CREDIT,
    ).subquery()


async def credits_per_day(session: AsyncSession, *, period: Period) -> list[CreditsDay]:
    """Every day of the period, oldest first, with credits sold, granted, spent and expired. A reversal made in
    the period takes back, on its own day, what the transaction it reverses counted (so a day may be negative)."""
    dialect, zone = _dialect(session), period.zone
    days = {day: CreditsDay(day=day) for day in period.days}
    for reversals in (False, True):
        legs = _system_legs(period, dialect=dialect, reversals=reversals)
        out_of = func.sum(case((legs.c.amount < 0, -legs.c.amount), else_=0))
        into = func.sum(case((legs.c.amount > 0, legs.c.amount), else_=0))
        result = await session.execute(
            select(legs.c.bucket, legs.c.kind, legs.c.account_id, out_of, into).group_by(
                legs.c.bucket, legs.c.kind, legs.c.account_id
            )
        )
        for bucket, kind, account_id, left, entered in result:
            row = days.get(_day_of(bucket, zone))
            if row is None:
                continue
            for name, ((figure_kinds, account), way) in CREDIT_FIGURES.items():
                if kind in figure_kinds and account in ("*", account_id):
                    # a reversal mirrors its original: what left the account comes back, and the reverse
                    counted = (
                        (left if way == "out" else entered)
                        if not reversals
                        else -(entered if way == "out" else left)
                    )
                    setattr(row, name, getattr(row, name) + int(counted or 0))
    return list(days.values())


async def orders_by_status(session: AsyncSession, *, period: Period) -> list[StatusCount]:
    """The orders created in the period by their status now, in the order statuses move (every status)."""
    result = await session.execute(
        select(PaymentOrder.status, func.count())
        .where(PaymentOrder.created_at >= period.start, PaymentOrder.created_at < period.end)
        .group_by(PaymentOrder.status)
    )
    counts = {status: int(count) for status, count in result}
    return [StatusCount(status=status, count=counts.get(status, 0)) for status in ORDER_STATUSES]


async def top_customers(
    session: AsyncSession, *, period: Period, limit: int = TOP_CUSTOMERS
) -> list[TopCustomer]:
    """Per currency (alphabetical), at most ``limit`` of the users with an order fulfilled in the period, who paid
    most in the period net of refunds and lost chargebacks, most first (then by user id)."""
    paid: dict[tuple[str, str], int] = defaultdict(int)
    credits: dict[tuple[str, str], int] = defaultdict(int)
    bought = await session.execute(
        select(
            PaymentOrder.user_id,
            PaymentOrder.currency,
            func.sum(PaymentOrder.amount_paid),
            func.sum(PaymentOrder.credits + PaymentOrder.bonus_credits),
        )
        .where(PaymentOrder.fulfilled_at >= period.start, PaymentOrder.fulfilled_at < period.end)
        .group_by(PaymentOrder.user_id, PaymentOrder.currency)
    )
    for user_id, currency, amount, granted in bought:
        paid[(user_id, currency)] += int(amount or 0)
        credits[(user_id, currency)] += int(granted or 0)
    back = _money_back(period, dialect=_dialect(session))
    returned = await session.execute(
        select(back.c.user_id, back.c.currency, func.sum(back.c.refunded + back.c.chargebacks)).group_by(
            back.c.user_id, back.c.currency
        )
    )
    for user_id, currency, amount in returned:
        paid[(user_id, currency)] -= int(amount or 0)
    keys = set(credits)  # those who bought in the period: a refund alone of an older order makes no customer
    chosen: list[tuple[str, str]] = []
    for currency in sorted({cur for _user, cur in keys}):
        ranked = sorted(
            (key for key in keys if key[1] == currency), key=lambda key: (-paid[key], -credits[key], key[0])
        )
        chosen.extend(ranked[:limit])
    users = {
        user.id: user
        for user in await session.scalars(select(User).where(User.id.in_({user_id for user_id, _ in chosen})))
    }
    return [
        TopCustomer(
            user_id=user_id,
            email=users[user_id].email if user_id in users else None,
            name=users[user_id].name if user_id in users else "",
            currency=currency,
            paid=paid[(user_id, currency)],
            credits=credits[(user_id, currency)],
        )
        for user_id, currency in chosen
    ]


async def compute_stats(session: AsyncSession, *, period: Period) -> Stats:
    return Stats(
        period=period,
        asset=CREDIT,
        revenue=await revenue_per_day(session, period=period),
        credits=await credits_per_day(session, period=period),
        orders_by_status=await orders_by_status(session, period=period),
        top_customers=await top_customers(session, period=period),
    )
