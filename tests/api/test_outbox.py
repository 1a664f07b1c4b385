"""The transactional outbox: written with the change, delivered after commit, at most once per message."""

from __future__ import annotations

import asyncio
import itertools
import re
from datetime import timedelta
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from prepaid.db import Database, open_database, utcnow
from prepaid.notify import jobs
from prepaid.notify.email import MemoryMailer
from prepaid.notify.models import OutboxMessage
from prepaid.notify.service import enqueue_email
from prepaid.runner import Job, JobRunner
from prepaid.settings import Settings
from tests.factories import make_user

CONTEXT = {"name": "Ada", "link": "http://testserver/reset-password?token=one-time-secret", "minutes": 60}


class FailingMailer:
    """A mail server that refuses every message (the Mailer protocol, failing)."""

    def __init__(self) -> None:
        self.attempts = 0

    async def send(self, message: EmailMessage) -> None:
        self.attempts += 1
        raise ConnectionRefusedError("mail server down")


class Boom(Exception):
    pass


async def enqueue(db: Database, n: int = 1, *, to: str = "ada@example.com") -> list[str]:
    ids = []
    async with db.transaction() as session:
        for i in range(n):
            message = await enqueue_email(
                session, to=to, template="password_reset", context={**CONTEXT, "name": f"Ada {i}"}
            )
            ids.append(message.id)
    return ids


async def load(db: Database, message_id: str) -> OutboxMessage:
    async with db.transaction(write=False) as session:
        message = await session.get(OutboxMessage, message_id)
        assert message is not None
        return message


async def make_due(db: Database, message_id: str) -> None:
    async with db.transaction() as session:
        await session.execute(
            update(OutboxMessage)
            .where(OutboxMessage.id == message_id)
            .values(next_attempt_at=utcnow() - timedelta(seconds=1))
        )


def sent_ids(mailer: MemoryMailer) -> list[str]:
    """The outbox id of every message sent, from its Message-ID."""
    ids = []
    for message in mailer.outbox:
        found = re.fullmatch(r"<(msg_[0-9A-Z]{26})@prepaid>", str(message["Message-ID"]))
        assert found, message["Message-ID"]
        ids.append(found.group(1))
    return ids


async def test_a_message_enqueued_in_a_rolled_back_transaction_is_never_sent(app: Any, db: Database) -> None:
    with pytest.raises(Boom):
        async with db.transaction() as session:
            await enqueue_email(session, to="ada@example.com", template="password_reset", context=CONTEXT)
            raise Boom
    async with db.transaction(write=False) as session:
        assert list((await session.scalars(select(OutboxMessage))).all()) == []
    await app.state.runner.run_once()
    assert app.state.mailer.outbox == []


async def test_after_commit_the_runner_delivers_exactly_once(
    app: Any, db: Database, settings: Settings
) -> None:
    [message_id] = await enqueue(db)
    mailer: MemoryMailer = app.state.mailer
    assert mailer.outbox == []  # nothing leaves before the runner runs

    done = await app.state.runner.run_once()
    assert done["outbox"] == 1
    [email] = mailer.outbox
    assert email["To"] == "ada@example.com"
    assert email["From"] == settings.email_from
    assert email["Subject"] == "Reset your password"
    assert sent_ids(mailer) == [message_id]
    text = email.get_body(("plain",))
    html = email.get_body(("html",))
    assert text is not None and CONTEXT["link"] in text.get_content()
    assert html is not None and CONTEXT["link"] in html.get_content()

    for _ in range(3):
        assert (await app.state.runner.run_once())["outbox"] == 0
    assert len(mailer.outbox) == 1
    stored = await load(db, message_id)
    assert stored.status == "sent"
    assert stored.attempts == 1
    assert stored.sent_at is not None
    assert stored.payload == {}  # the one-time link is not kept once sent
    assert stored.last_error is None


@pytest.mark.parametrize("settings_overrides", [{"run_jobs": True, "job_interval": 0.05}])
async def test_the_runner_started_with_the_app_delivers_on_its_own(app: Any, db: Database) -> None:
    [message_id] = await enqueue(db)
    mailer: MemoryMailer = app.state.mailer
    async with asyncio.timeout(20):  # a bound on the wait, not a timing assertion
        while (await load(db, message_id)).status != "sent":
            await asyncio.sleep(0.02)
    assert sent_ids(mailer) == [message_id]


async def test_a_failing_job_does_not_stop_the_others(db: Database, settings: Settings) -> None:
    async def broken(_db: Database, _settings: Settings) -> int:
        raise RuntimeError("this job is broken")

    [message_id] = await enqueue(db)
    mailer = MemoryMailer()
    runner = JobRunner(db, settings, [Job("broken", broken), Job("outbox", jobs.delivery_job(mailer))])
    assert await runner.run_once() == {"broken": -1, "outbox": 1}
    assert sent_ids(mailer) == [message_id]


async def test_a_failed_send_backs_off_then_succeeds(app: Any, db: Database, settings: Settings) -> None:
    [message_id] = await enqueue(db)
    failing = FailingMailer()
    before = utcnow()
    assert await jobs.deliver_due(db, settings, failing) == 0
    stored = await load(db, message_id)
    assert stored.status == "pending"
    assert stored.attempts == 1
    assert "ConnectionRefusedError" in (stored.last_error or "")
    assert stored.next_attempt_at >= before + jobs.backoff(1)
    assert stored.payload == {**CONTEXT, "name": "Ada 0"}  # kept for the retry

    # not due yet: nobody tries again before the backoff
    assert await jobs.deliver_due(db, settings, failing) == 0
    assert failing.attempts == 1

    await make_due(db, message_id)
    assert await jobs.deliver_due(db, settings, failing) == 0
    stored = await load(db, message_id)
    assert stored.attempts == 2
    assert stored.next_attempt_at >= utcnow() + jobs.backoff(2) - timedelta(seconds=5)

    await make_due(db, message_id)
    mailer = MemoryMailer()
    assert await jobs.deliver_due(db, settings, mailer) == 1
    assert len(mailer.outbox) == 1
    stored = await load(db, message_id)
    assert stored.status == "sent"
    assert stored.attempts == 3
    assert stored.last_error is None
    assert stored.payload == {}


def test_backoff_grows_and_is_capped() -> None:
    delays = [jobs.backoff(n) for n in range(1, 12)]
    assert delays[0] == jobs.BASE_BACKOFF
    assert all(a <= b for a, b in itertools.pairwise(delays))
    assert delays[1] == 2 * delays[0]
    assert max(delays) == jobs.MAX_BACKOFF


async def test_after_the_last_attempt_a_message_is_failed_for_good(db: Database, settings: Settings) -> None:
    [message_id] = await enqueue(db)
    failing = FailingMailer()
    for attempt in range(1, jobs.MAX_ATTEMPTS + 1):
        await make_due(db, message_id)
        await jobs.deliver_due(db, settings, failing)
        stored = await load(db, message_id)
        assert stored.attempts == attempt
        assert stored.status == ("failed" if attempt == jobs.MAX_ATTEMPTS else "pending")
    await make_due(db, message_id)
    mailer = MemoryMailer()
    assert await jobs.deliver_due(db, settings, mailer) == 0
    assert mailer.outbox == []
    assert failing.attempts == jobs.MAX_ATTEMPTS
    assert (await load(db, message_id)).status == "failed"


async def test_a_message_stuck_in_sending_is_failed_never_sent_again(
    db: Database, settings: Settings
) -> None:
    stuck, recent = await enqueue(db, 2)
    async with db.transaction() as session:
        for message_id, claimed in (
            (stuck, jobs.STUCK_AFTER + timedelta(minutes=1)),
            (recent, timedelta(minutes=1)),
        ):
            await session.execute(
                update(OutboxMessage)
                .where(OutboxMessage.id == message_id)
                .values(status="sending", attempts=1, claimed_at=utcnow() - claimed)
            )
    mailer = MemoryMailer()
    assert await jobs.deliver_due(db, settings, mailer) == 0
    assert mailer.outbox == []
    stored = await load(db, stuck)
    assert stored.status == "failed"
    assert "at most once" in (stored.last_error or "")
    assert (await load(db, recent)).status == "sending"  # it may still be on its way: left alone
    assert await jobs.deliver_due(db, settings, mailer) == 0
    assert mailer.outbox == []


async def test_an_unknown_template_fails_without_stopping_the_batch(db: Database, settings: Settings) -> None:
    [good] = await enqueue(db)
    async with db.transaction() as session:
        bad = await enqueue_email(session, to="bob@example.com", template="no_such_template", context={})
    mailer = MemoryMailer()
    assert await jobs.deliver_due(db, settings, mailer) == 1
    assert [m["To"] for m in mailer.outbox] == ["ada@example.com"]
    assert (await load(db, good)).status == "sent"
    failed = await load(db, bad.id)
    assert failed.status == "pending"
    assert "TemplateNotFound" in (failed.last_error or "")


async def test_password_reset_goes_through_the_outbox(
    app: Any, client: httpx.AsyncClient, db: Database
) -> None:
    user = await make_user(app)
    response = await client.post("/v1/auth/password_reset", json={"email": user.email})
    assert response.status_code == 202
    unknown = await client.post("/v1/auth/password_reset", json={"email": "nobody@example.com"})
    assert unknown.status_code == 202
    assert app.state.mailer.outbox == []  # nothing is sent inside the request
    await app.state.runner.run_once()
    [email] = app.state.mailer.outbox
    assert email["To"] == user.email
    text = email.get_body(("plain",))
    assert text is not None and "http://testserver/reset-password?token=" in text.get_content()


ON_POSTGRES_ONLY = pytest.mark.parametrize("engine_name", ["postgresql"])  # SQLite serves one process


@ON_POSTGRES_ONLY
async def test_concurrent_deliveries_never_send_a_message_twice(db: Database, settings: Settings) -> None:
    ids = await enqueue(db, 45)

    class SlowMailer(MemoryMailer):
        async def send(self, message: EmailMessage) -> None:
            await asyncio.sleep(0)  # let the other worker run between sends
            await super().send(message)

    mailer = SlowMailer()
    other = open_database(settings.database_url)  # a second process has its own connections
    try:
        for _ in range(4):
            await asyncio.gather(
                *(jobs.deliver_due(database, settings, mailer) for database in (db, other, db, other))
            )
    finally:
        await other.dispose()
    sent = sent_ids(mailer)
    assert sorted(sent) == sorted(ids)  # each one, once
    for message_id in ids:
        assert (await load(db, message_id)).status == "sent"


@ON_POSTGRES_ONLY
async def test_a_message_locked_by_another_claim_is_skipped_not_waited_for(
    db: Database, settings: Settings
) -> None:
    locked, free = await enqueue(db, 2)
    other = open_database(settings.database_url)
    mailer = MemoryMailer()
    try:
        async with other.transaction() as session:
            # another worker is mid-claim on this row
            await session.execute(select(OutboxMessage).where(OutboxMessage.id == locked).with_for_update())
            delivered = await asyncio.wait_for(jobs.deliver_due(db, settings, mailer), timeout=30)
        assert delivered == 1
        assert [m["To"] for m in mailer.outbox] == ["ada@example.com"]
        assert sent_ids(mailer) == [free]
        assert (await load(db, locked)).status == "pending"
    finally:
        await other.dispose()
