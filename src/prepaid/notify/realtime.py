"""The realtime stream: events for one user, published after the transaction that caused them commits.

``emit(session, user_id=, type=, data=)`` is what services call. It does no I/O for the stream: the event waits
in the session until its transaction commits, then goes to this process's :class:`Hub`, which fans it out to
every server process:

- PostgreSQL (no Redis configured): ``NOTIFY prepaid_events`` from the hub's own connection, which also
  ``LISTEN``\\ s, so every process (this one included) receives it and pushes it to its own WebSocket clients;
- Redis (``PREPAID_REDIS_URL`` set): ``PUBLISH`` on a channel named after the database, the same way round;
- SQLite (one process): straight to this process's clients.

``balance.updated`` is not emitted by anyone: ``ledger.service`` notes every wallet a movement changed, with its
figures after it (``ledger.service.MOVED_WALLETS``), and this module announces each, once per wallet per
transaction (the last figures), to the wallet's owner when the transaction commits; so every movement (API
routes, usage, sessions, payments, refunds and clawbacks, chargebacks, expiry jobs) is announced and none can be
forgotten. A rolled-back transaction (or savepoint) publishes nothing it emitted or moved. Publishing is best effort and at most once:
a process that dies between its commit and the publish loses those stream events (the stream is a live view,
not a record: outgoing webhooks, written in the transaction through the outbox, are the record). Events
emitted with the same ``key`` in one transaction collapse to the last one (``balance.updated`` is keyed by its
wallet, so a batch of 1,000 usage events pushes one balance per wallet).

Types emitted in ``webhooks_out.EVENT_TYPES`` also queue an outgoing webhook delivery, in the same transaction,
for every endpoint subscribed to that type (see ``notify/webhooks_out.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import weakref
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import Engine, make_url
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import Session as SyncSession
from sqlalchemy.orm import SessionTransaction

from prepaid.db import utcnow
from prepaid.ids import new_id
from prepaid.ledger.service import MOVED_WALLETS, WalletBalance
from prepaid.observability import log

# What the stream pushes to a signed-in user.
STREAM_TYPES = frozenset(
    {"balance.updated", "session.tick", "session.ended", "wallet.low_balance", "order.paid"}
)
CHANNEL = "prepaid_events"
NOTIFY_LIMIT = 7900  # PostgreSQL refuses a NOTIFY payload of 8,000 bytes or more
SUBSCRIBER_QUEUE = 256  # events waiting for one slow client before it is disconnected
OUTGOING_QUEUE = 100_000  # events waiting to be published by this process before new ones are dropped
RECONNECT_AFTER = 1.0  # seconds before a lost LISTEN / SUBSCRIBE connection is opened again (then doubling)
RECONNECT_AT_MOST = 30.0

_PENDING = "prepaid_realtime_pending"


@dataclass
class _Pending:
    transaction: SessionTransaction | None
    key: str | None
    user_id: str
    event: dict[str, Any]


def _plain(value: Any) -> Any:
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if hasattr(value, "isoformat"):
        return value.isoformat()
    raise ValueError(f"event data must be JSON without floats, not {type(value).__name__}")


def make_event(*, type: str, data: dict[str, Any]) -> dict[str, Any]:
    """The event as clients and webhook receivers see it."""
    return {"id": new_id("pev"), "type": type, "created_at": utcnow().isoformat(), "data": _plain(data)}


async def emit(
    session: AsyncSession, *, user_id: str, type: str, data: dict[str, Any], key: str | None = None
) -> dict[str, Any]:
    """Queue an event for ``user_id``'s stream, published only after ``session``'s transaction commits.

    ``data`` holds facts (ids, integer amounts with their ``asset``/``currency``; no floats). Events of one
    transaction with the same ``key`` collapse to the last (``balance.updated`` defaults to its ``wallet_id``).
    Types in ``webhooks_out.EVENT_TYPES`` also queue outgoing webhook deliveries in this transaction.
    Returns the event."""
    built = make_event(type=type, data=data)
    if key is None and type == "balance.updated" and data.get("wallet_id"):
        key = f"balance:{data['wallet_id']}"
    if type in STREAM_TYPES:
        sync = session.sync_session
        pending: list[_Pending] = sync.info.setdefault(_PENDING, [])
        transaction = sync.get_nested_transaction() or sync.get_transaction()
        if key is not None:
            pending[:] = [p for p in pending if p.key != key or p.user_id != user_id]
        pending.append(_Pending(transaction=transaction, key=key, user_id=user_id, event=built))
    from prepaid.notify import webhooks_out  # webhooks_out imports this module

    if type in webhooks_out.EVENT_TYPES:
        await webhooks_out.enqueue(session, user_id=user_id, event=built)
    return built


def _descends(transaction: SessionTransaction | None, ancestor: SessionTransaction) -> bool:
    while transaction is not None:
        if transaction is ancestor:
            return True
        transaction = transaction.parent
    return False


# Every session's commit and rollback (class-level listeners: the ledger records on sessions this module never
# saw, a runner job's say). A session with nothing pending costs two dictionary look-ups.
@event.listens_for(SyncSession, "after_soft_rollback")
def _after_soft_rollback(sync: SyncSession, previous: SessionTransaction) -> None:
    pending: list[_Pending] | None = sync.info.get(_PENDING)
    if pending:
        pending[:] = [p for p in pending if not _descends(p.transaction, previous)]
    moved: list[tuple[SessionTransaction | None, WalletBalance]] | None = sync.info.get(MOVED_WALLETS)
    if moved:
        moved[:] = [(t, balance) for t, balance in moved if not _descends(t, previous)]


def balance_event(balance: WalletBalance) -> dict[str, Any]:
    """``balance.updated`` with a wallet's figures as the ledger left them (the answers' wallet, no ``object``)."""
    return make_event(
        type="balance.updated",
        data={
            "wallet_id": balance.wallet_id,
            "asset": balance.asset,
            "balance": balance.balance,
            "held": balance.held,
            "available": balance.available,
            "debt": balance.debt,
        },
    )


@event.listens_for(SyncSession, "after_commit")
def _after_commit(sync: SyncSession) -> None:
    pending: list[_Pending] = sync.info.pop(_PENDING, [])
    moved: list[tuple[SessionTransaction | None, WalletBalance]] = sync.info.pop(MOVED_WALLETS, [])
    if not pending and not moved:
        return
    last: dict[str, WalletBalance] = {}
    for _transaction, balance in moved:  # one event per wallet: its figures after the transaction's last move
        last.pop(balance.wallet_id, None)
        last[balance.wallet_id] = balance
    events = [{"user_id": p.user_id, **p.event} for p in pending]
    events += [
        {"user_id": balance.user_id, **balance_event(balance)}
        for balance in last.values()
        if balance.user_id is not None
    ]
    if not events:
        return
    hub = _HUBS.get(_engine_hub_key(sync.get_bind().engine))
    if hub is None:
        log.debug("realtime_no_hub", events=len(events))  # a CLI command: no stream in this process
        return
    hub.publish_nowait(events)


# ---------------------------------------------------------------- the hub: one per database per process


def hub_key(database_url: str) -> str:
    return make_url(database_url).render_as_string(hide_password=True)


_HUBS: dict[str, Hub] = {}
# Each engine's hub key, worked out once: rendering and parsing its URL cost about 20 us at every commit.
_ENGINE_HUB_KEYS: weakref.WeakKeyDictionary[Engine, str] = weakref.WeakKeyDictionary()


def _engine_hub_key(engine: Engine) -> str:
    key = _ENGINE_HUB_KEYS.get(engine)
    if key is None:
        key = _ENGINE_HUB_KEYS[engine] = hub_key(engine.url.render_as_string(hide_password=True))
    return key


@dataclass(eq=False)
class Subscriber:
    """One WebSocket connection's queue. ``overflowed`` is set when it fell too far behind."""

    user_id: str
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(SUBSCRIBER_QUEUE))
    overflowed: asyncio.Event = field(default_factory=asyncio.Event)


class Backend:
    """Carries published messages (JSON text) to every process's hub."""

    async def start(self, hub: Hub) -> None:
        self.hub = hub

    async def send(self, message: str) -> None:
        self.hub.dispatch(message)

    async def stop(self) -> None:
        return None


class PostgresBackend(Backend):
    """LISTEN and NOTIFY on one dedicated asyncpg connection, reopened when it is lost."""

    def __init__(self, database_url: str) -> None:
        self.dsn = make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)
        self._connection: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()
        self._stopping = False

    async def start(self, hub: Hub) -> None:
        self.hub = hub
        self._task = asyncio.create_task(self._keep_listening(), name="prepaid-realtime-listen")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    def _on_notify(self, _connection: Any, _pid: int, _channel: str, payload: str) -> None:
        self.hub.dispatch(payload)

    async def _keep_listening(self) -> None:
        import asyncpg  # type: ignore[import-untyped]

        delay = RECONNECT_AFTER
        while not self._stopping:
            lost = asyncio.Event()
            try:
                connection = await asyncpg.connect(self.dsn)
                connection.add_termination_listener(lambda _c, lost=lost: lost.set())
                await connection.add_listener(CHANNEL, self._on_notify)
                self._connection = connection
                self._ready.set()
                delay = RECONNECT_AFTER
                await lost.wait()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("realtime_listen_failed", error_type=type(error).__name__, retry_in=delay)
            self._connection = None
            self._ready.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_AT_MOST)

    async def send(self, message: str) -> None:
        if self._connection is None:
            await asyncio.wait_for(self._ready.wait(), timeout=5)
        await self._connection.execute("SELECT pg_notify($1, $2)", CHANNEL, message)

    async def stop(self) -> None:
        self._stopping = True
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._connection is not None:
            with contextlib.suppress(Exception):
                await self._connection.close(timeout=2)


class RedisBackend(Backend):
    """PUBLISH and SUBSCRIBE on a channel named after the database (several deployments may share a Redis)."""

    def __init__(self, redis_url: str, database_url: str) -> None:
        self.redis_url = redis_url
        digest = hashlib.sha256(hub_key(database_url).encode()).hexdigest()[:16]
        self.channel = f"prepaid:events:{digest}"
        self._client: Any = None
        self._task: asyncio.Task[None] | None = None
        self._ready = asyncio.Event()

    async def start(self, hub: Hub) -> None:
        import redis.asyncio as redis

        self.hub = hub
        self._client = redis.from_url(self.redis_url)
        self._task = asyncio.create_task(self._keep_listening(), name="prepaid-realtime-subscribe")
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._ready.wait(), timeout=5)

    async def _keep_listening(self) -> None:
        delay = RECONNECT_AFTER
        while True:
            try:
                async with self._client.pubsub() as pubsub:
                    await pubsub.subscribe(self.channel)
                    self._ready.set()
                    delay = RECONNECT_AFTER
                    async for message in pubsub.listen():
                        if message.get("type") == "message":
                            data = message["data"]
                            self.hub.dispatch(data.decode() if isinstance(data, bytes) else data)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("realtime_subscribe_failed", error_type=type(error).__name__, retry_in=delay)
            self._ready.clear()
            await asyncio.sleep(delay)
            delay = min(delay * 2, RECONNECT_AT_MOST)

    async def send(self, message: str) -> None:
        await self._client.publish(self.channel, message)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        if self._client is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()


class Hub:
    """This process's end of the stream: publishes committed events and hands received ones to subscribers."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.subscribers: dict[str, set[Subscriber]] = {}
        self._outgoing: asyncio.Queue[list[dict[str, Any]]] = asyncio.Queue(OUTGOING_QUEUE)
        self._task: asyncio.Task[None] | None = None
        self.users = 0

    async def start(self) -> None:
        await self.backend.start(self)
        self._task = asyncio.create_task(self._publish_loop(), name="prepaid-realtime-publish")

    async def stop(self) -> None:
        if self._task is not None:
            # Publish what already committed before going.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._outgoing.join(), timeout=2)
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        await self.backend.stop()

    def publish_nowait(self, events: list[dict[str, Any]]) -> None:
        try:
            self._outgoing.put_nowait(events)
        except asyncio.QueueFull:
            log.warning("realtime_dropped", events=len(events))

    async def _publish_loop(self) -> None:
        while True:
            batch = [await self._outgoing.get()]
            while not self._outgoing.empty():
                batch.append(self._outgoing.get_nowait())
            try:
                for message in _messages(event for events in batch for event in events):
                    await self.backend.send(message)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("realtime_publish_failed", error_type=type(error).__name__)
            finally:
                for _ in batch:
                    self._outgoing.task_done()

    def dispatch(self, message: str) -> None:
        try:
            events = json.loads(message)
        except ValueError:
            return
        for item in events if isinstance(events, list) else []:
            user_id = item.pop("user_id", None)
            for subscriber in list(self.subscribers.get(user_id, ())):
                try:
                    subscriber.queue.put_nowait(item)
                except asyncio.QueueFull:
                    subscriber.overflowed.set()

    def subscribe(self, user_id: str) -> Subscriber:
        subscriber = Subscriber(user_id=user_id)
        self.subscribers.setdefault(user_id, set()).add(subscriber)
        return subscriber

    def unsubscribe(self, subscriber: Subscriber) -> None:
        found = self.subscribers.get(subscriber.user_id)
        if found is not None:
            found.discard(subscriber)
            if not found:
                del self.subscribers[subscriber.user_id]


def _messages(events: Iterable[dict[str, Any]]) -> Iterable[str]:
    """JSON arrays of events, each under PostgreSQL's NOTIFY limit."""
    chunk: list[str] = []
    size = 2
    for item in events:
        text = json.dumps(item, separators=(",", ":"))
        if len(text.encode()) + 2 > NOTIFY_LIMIT:
            log.warning("realtime_event_too_large", type=item.get("type"))
            continue
        if chunk and size + len(text.encode()) + 1 > NOTIFY_LIMIT:
            yield "[" + ",".join(chunk) + "]"
            chunk, size = [], 2
        chunk.append(text)
        size += len(text.encode()) + 1
    if chunk:
        yield "[" + ",".join(chunk) + "]"


def build_backend(*, database_url: str, redis_url: str | None) -> Backend:
    if redis_url:
        return RedisBackend(redis_url, database_url)
    if database_url.startswith("postgresql"):
        return PostgresBackend(database_url)
    return Backend()


@contextlib.asynccontextmanager
async def running_hub(*, database_url: str, redis_url: str | None) -> AsyncIterator[Hub]:
    """The app's lifespan: start this process's hub for its database, stop it at shutdown. Two apps of one
    process on the same database (tests) share one hub."""
    key = hub_key(database_url)
    hub = _HUBS.get(key)
    if hub is None:
        hub = Hub(build_backend(database_url=database_url, redis_url=redis_url))
        await hub.start()
        _HUBS[key] = hub
    hub.users += 1
    try:
        yield hub
    finally:
        hub.users -= 1
        if hub.users == 0:
            _HUBS.pop(key, None)
            await hub.stop()


# ---------------------------------------------------------------- events other domains announce


async def order_paid(
    session: AsyncSession,
    *,
    user_id: str,
    order_id: str,
    wallet_id: str,
    amount: int,
    currency: str,
    credits: int,
    bonus_credits: int,
) -> None:
    """A fulfilled order: ``order.paid`` (stream and webhooks); the grant's ``balance.updated`` comes from the
    ledger's own record of the movement."""
    from prepaid.money import CREDIT

    await emit(
        session,
        user_id=user_id,
        type="order.paid",
        data={
            "order_id": order_id,
            "wallet_id": wallet_id,
            "amount": amount,
            "currency": currency,
            "credits": credits,
            "bonus_credits": bonus_credits,
            "asset": CREDIT,
        },
    )
