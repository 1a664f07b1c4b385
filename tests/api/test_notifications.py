"""In-app notifications and the payment emails in the outbox, on both engines, through the ASGI app: a sandbox
payment that fails and then succeeds tells the buyer once each (however the verify call and the webhooks race);
a flagged order tells every admin; the list, read and delete routes show a person only their own."""

from __future__ import annotations

import asyncio
import json
import secrets
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select, update

from prepaid.audit import service as audit_service
from prepaid.catalog import service as catalog_service
from prepaid.db import Database, utcnow
from prepaid.notify import jobs as notify_jobs
from prepaid.notify import service as notify_service
from prepaid.notify.models import Notification, OutboxMessage
from prepaid.payments import service as payments_service
from prepaid.payments.gateways import sandbox
from prepaid.payments.gateways.sandbox_models import SandboxWebhook
from prepaid.payments.models import PaymentOrder
from tests import factories
from tests.factories import make_api_key, make_customer
from tests.helpers import assert_error
from tests.payments.test_checkout_pages_support import local, pay_on_sandbox

SUCCESS_CARD = "4111 1111 1111 1111"
DECLINED_CARD = "4000 0000 0000 0002"


def db_of(app: Any) -> Database:
    database: Database = app.state.db
    return database


async def make_plan(app: Any, *, credits: int = 500, bonus_credits: int = 50, inr: int = 450_000) -> str:
    async with db_of(app).transaction() as session:
        plan = await catalog_service.create_plan(
            session,
            actor=audit_service.Actor(user_id=None),
            code=f"plan-{secrets.token_hex(4)}",
            name="Notified plan",
            credits=credits,
            bonus_credits=bonus_credits,
            prices={"INR": inr},
        )
    return plan.code


async def sandbox_order(client: httpx.AsyncClient, buyer: factories.TestUser, plan: str) -> dict[str, Any]:
    response = await client.post(
        "/v1/orders", json={"plan": plan, "currency": "INR", "gateway": "sandbox"}, headers=buyer.headers
    )
    assert response.status_code == 201, response.text
    order: dict[str, Any] = response.json()
    return order


async def pay(app: Any, attempt: str, number: str) -> sandbox.Settled:
    """Pay the attempt on the sandbox with a test card; its webhooks are queued in the sandbox's tables."""
    card = sandbox.read_card(number, "12/40", "123", "Asha Rao", today=date.today())
    config = app.state.gateways["sandbox"].config
    return await sandbox.pay(db_of(app), config, attempt, method="card", outcome=card.outcome, card=card)


async def queued_webhooks(app: Any) -> list[tuple[bytes, dict[str, str]]]:
    """The sandbox's pending webhooks, signed as it sends them (delivered here through the ASGI app)."""
    async with db_of(app).transaction() as session:
        rows = list(await session.scalars(select(SandboxWebhook).where(SandboxWebhook.status == "pending")))
        for row in rows:
            row.status = "delivered"
    config = app.state.gateways["sandbox"].config
    signed = []
    for row in rows:
        raw = row.body.encode()
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": config.webhook_signature(raw),
            "x-razorpay-event-id": row.event_id,
        }
        signed.append((raw, headers))
    return signed


async def post_webhook(client: httpx.AsyncClient, raw: bytes, headers: dict[str, str]) -> httpx.Response:
    return await client.post("/v1/webhooks/sandbox", content=raw, headers=headers)


async def notifications_of(app: Any, user_id: str, kind: str | None = None) -> list[Notification]:
    async with db_of(app).transaction(write=False) as session:
        stmt = select(Notification).where(Notification.user_id == user_id).order_by(Notification.id)
        if kind is not None:
            stmt = stmt.where(Notification.kind == kind)
        return list(await session.scalars(stmt))


async def emails_to(app: Any, address: str, template: str) -> list[OutboxMessage]:
    async with db_of(app).transaction(write=False) as session:
        return list(
            await session.scalars(
                select(OutboxMessage).where(
                    OutboxMessage.recipient == address, OutboxMessage.template == template
                )
            )
        )


async def listed(client: httpx.AsyncClient, user: factories.TestUser, **params: Any) -> dict[str, Any]:
    response = await client.get("/v1/notifications", params=params, headers=user.headers)
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


# ---------------------------------------------------------------- payments tell the buyer


async def test_a_declined_then_paid_order_tells_the_buyer_once_each_however_verify_and_webhooks_race(
    app: Any, client: httpx.AsyncClient
) -> None:
    buyer = await make_customer(app, name="Asha")
    plan = await make_plan(app)
    order = await sandbox_order(client, buyer, plan)

    declined = await pay(app, order["checkout"]["attempt"], DECLINED_CARD)
    assert declined.status == "failed"
    for raw, headers in await queued_webhooks(app):
        assert (await post_webhook(client, raw, headers)).status_code == 200
    failed = await notifications_of(app, buyer.id, "payment_failed")
    assert len(failed) == 1
    assert failed[0].data["order_id"] == order["id"] and failed[0].data["amount"] == 450_000
    assert failed[0].data["reason"]
    assert len(await emails_to(app, buyer.email, "payment_failed")) == 1

    retried = await client.post(f"/v1/orders/{order['id']}/retry", headers=buyer.headers)
    assert retried.status_code == 200, retried.text
    settled = await pay(app, retried.json()["checkout"]["attempt"], SUCCESS_CARD)
    assert settled.status == "captured"
    fields = dict(httpx.URL(settled.redirect_url).params)
    webhooks = await queued_webhooks(app)
    assert len(webhooks) >= 2  # payment.captured and order.paid
    answers = await asyncio.gather(
        client.post(f"/v1/orders/{order['id']}/verify", json=fields, headers=buyer.headers),
        *(post_webhook(client, raw, headers) for raw, headers in webhooks for _ in range(3)),
        client.post(f"/v1/orders/{order['id']}/verify", json=fields, headers=buyer.headers),
    )
    assert all(answer.status_code == 200 for answer in answers), [answer.text for answer in answers]
    assert answers[0].json()["status"] == "fulfilled"

    succeeded = await notifications_of(app, buyer.id, "payment_succeeded")
    assert len(succeeded) == 1
    assert succeeded[0].data == {
        "order_id": order["id"],
        "amount": 450_000,
        "currency": "INR",
        "credits": 500,
        "bonus_credits": 50,
        "wallet_id": succeeded[0].data["wallet_id"],
    }
    emails = await emails_to(app, buyer.email, "payment_succeeded")
    assert len(emails) == 1
    assert emails[0].payload["data"]["order_id"] == order["id"] and emails[0].payload["name"] == "Asha"
    # the failure of the first attempt is not told again
    assert len(await notifications_of(app, buyer.id, "payment_failed")) == 1

    page = await listed(client, buyer)
    assert [item["kind"] for item in page["data"]] == ["payment_succeeded", "payment_failed"]
    newest = page["data"][0]
    assert newest["title"] == "Payment received"
    assert "₹4,500.00" in newest["body"] and "500 credits" in newest["body"] and "50 bonus" in newest["body"]
    assert (newest["read"], newest["read_at"], newest["object"]) == (False, None, "notification")
    assert "₹4,500.00" in page["data"][1]["body"]


async def test_a_flagged_order_tells_every_admin_in_app_and_by_one_email(
    app: Any, client: httpx.AsyncClient
) -> None:
    admins = [await make_customer(app, roles=["user", "admin"]) for _ in range(2)]
    buyer = await make_customer(app)
    order = await sandbox_order(client, buyer, await make_plan(app))
    async with db_of(app).transaction(write=False) as session:
        gateway_order_id = (await payments_service.attempts_of(session, order["id"]))[-1].gateway_order_id
    # a captured payment of less than the order (a tampered amount), signed by the sandbox, delivered twice
    payment = {"id": f"pay_{secrets.token_hex(7)}", "entity": "payment", "amount": 100, "currency": "INR"}
    payment |= {"status": "captured", "order_id": gateway_order_id, "method": "card", "captured": True}
    body = {"entity": "event", "event": "payment.captured", "payload": {"payment": {"entity": payment}}}
    raw = json.dumps(body).encode()
    signature = app.state.gateways["sandbox"].config.webhook_signature(raw)
    for n in range(2):
        headers = {
            "Content-Type": "application/json",
            "X-Razorpay-Signature": signature,
            "x-razorpay-event-id": f"evt_flag_{n}_{secrets.token_hex(6)}",
        }
        assert (await post_webhook(client, raw, headers)).status_code == 200
    async with db_of(app).transaction(write=False) as session:
        stored = await session.get(PaymentOrder, order["id"])
        assert stored is not None and stored.status == "flagged"

    for admin in admins:
        flagged = await notifications_of(app, admin.id, "order_flagged")
        assert len(flagged) == 1, [n.data for n in flagged]
        assert flagged[0].data["order_id"] == order["id"] and "amount_mismatch" in flagged[0].data["reason"]
        assert len(await emails_to(app, admin.email, "order_flagged")) == 1
        shown = (await listed(client, admin))["data"]
        assert shown[0]["kind"] == "order_flagged" and order["id"] in shown[0]["body"]
    # the buyer is not told of the flag, nor of a success
    assert await notifications_of(app, buyer.id) == []


# ---------------------------------------------------------------- a person's own list


async def _notify(app: Any, user: factories.TestUser, balance: int) -> str:
    async with db_of(app).transaction() as session:
        made = await notify_service.notify(
            session,
            user_id=user.id,
            kind="low_balance",
            data={"wallet_id": "wal_x", "balance": balance, "threshold": 100},
        )
    assert made is not None
    return made.id


async def test_list_read_delete_and_another_users_notification_is_not_found(
    app: Any, client: httpx.AsyncClient
) -> None:
    user, other = await make_customer(app), await make_customer(app)
    ids = [await _notify(app, user, balance) for balance in (30, 20, 10)]
    theirs = await _notify(app, other, 5)

    page = await listed(client, user)
    assert [item["id"] for item in page["data"]] == ids[::-1]
    assert page["has_more"] is False
    assert page["data"][0]["body"] == "10 credits left, below 100."
    first = await listed(client, user, limit=2)
    assert ([item["id"] for item in first["data"]], first["has_more"]) == (ids[:0:-1], True)
    rest = await listed(client, user, limit=2, starting_after=ids[1])
    assert [item["id"] for item in rest["data"]] == [ids[0]]

    read = await client.post(f"/v1/notifications/{ids[1]}/read", headers=user.headers)
    assert read.status_code == 200, read.text
    assert read.json()["read"] is True and read.json()["read_at"] is not None
    again = await client.post(f"/v1/notifications/{ids[1]}/read", headers=user.headers)
    assert again.json()["read_at"] == read.json()["read_at"]  # the first reading is kept
    assert [item["id"] for item in (await listed(client, user, unread="true"))["data"]] == [ids[2], ids[0]]
    assert [item["id"] for item in (await listed(client, user, unread="false"))["data"]] == [ids[1]]

    # another user's: 404 for reading and deleting, and nothing changes
    for method, path in (
        ("POST", f"/v1/notifications/{theirs}/read"),
        ("DELETE", f"/v1/notifications/{theirs}"),
    ):
        answer = await client.request(method, path, headers=user.headers)
        assert_error(answer, 404, "not_found", "resource_missing", "notification_id")
    assert [item["id"] for item in (await listed(client, user))["data"]] == ids[::-1]
    theirs_now = (await listed(client, other))["data"]
    assert [(item["id"], item["read"]) for item in theirs_now] == [(theirs, False)]

    deleted = await client.delete(f"/v1/notifications/{ids[0]}", headers=user.headers)
    assert deleted.status_code == 200, deleted.text
    assert deleted.json() == {"object": "notification", "id": ids[0], "deleted": True}
    assert [item["id"] for item in (await listed(client, user))["data"]] == [ids[2], ids[1]]
    gone = await client.delete(f"/v1/notifications/{ids[0]}", headers=user.headers)
    assert_error(gone, 404, "not_found", "resource_missing", "notification_id")
    unknown = await client.post("/v1/notifications/ntf_nothing/read", headers=user.headers)
    assert_error(unknown, 404, "not_found", "resource_missing", "notification_id")


async def test_bad_list_parameters_are_refused_clearly(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    await _notify(app, user, 1)
    bad = await client.get("/v1/notifications", params={"unread": "perhaps"}, headers=user.headers)
    assert bad.status_code == 400, bad.text
    assert bad.json()["error"]["param"] == "unread"
    too_many = await client.get("/v1/notifications", params={"limit": 101}, headers=user.headers)
    assert too_many.status_code == 400, too_many.text
    assert len((await listed(client, user))["data"]) == 1


async def test_an_api_key_cannot_read_notifications(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_customer(app)
    await _notify(app, user, 1)
    key = await make_api_key(app, user, scopes=["balance:read"])
    answer = await client.get("/v1/notifications", headers=key.headers)
    assert_error(answer, 403, "permission_error", "session_required")


# ---------------------------------------------------------------- the failure-rate alert


async def test_the_failure_rate_alert_fires_above_the_threshold_at_most_once_an_hour(
    app: Any, client: httpx.AsyncClient
) -> None:
    settings = app.state.settings.model_copy(
        update={"payment_failure_alert_percent": 50, "payment_failure_alert_min_attempts": 4}
    )
    admin = await make_customer(app, roles=["user", "admin"])
    buyer = await make_customer(app)
    plan = await make_plan(app)

    async def settle(number: str) -> None:
        order = await sandbox_order(client, buyer, plan)
        await pay(app, order["checkout"]["attempt"], number)
        for raw, headers in await queued_webhooks(app):
            assert (await post_webhook(client, raw, headers)).status_code == 200

    async def run_job() -> int:
        return await notify_jobs.payment_failure_alert(db_of(app), settings)

    for number in (SUCCESS_CARD, DECLINED_CARD, SUCCESS_CARD):
        await settle(number)
    assert await run_job() == 0  # too few settled attempts to judge
    await settle(DECLINED_CARD)
    assert await run_job() == 0  # 2 of 4 failed: 50 %, not above it
    await settle(DECLINED_CARD)
    assert await run_job() == 1  # 3 of 5
    assert await run_job() == 0  # not again within the hour
    await settle(DECLINED_CARD)
    assert await run_job() == 0

    alerts = await notifications_of(app, admin.id, "failure_rate_high")
    assert len(alerts) == 1
    assert {k: alerts[0].data[k] for k in ("failed", "total", "rate_percent", "threshold_percent")} == {
        "failed": 3,
        "total": 5,
        "rate_percent": 60,
        "threshold_percent": 50,
    }
    assert len(await emails_to(app, admin.email, "failure_rate_high")) == 1
    assert await notifications_of(app, buyer.id, "failure_rate_high") == []

    # an hour later (the mark moved back), the rate still above the threshold alerts again
    async with db_of(app).transaction() as session:
        await session.execute(
            update(notify_jobs.AlertMark).values(fired_at=utcnow() - timedelta(hours=1, minutes=1))
        )
    assert await run_job() == 1
    assert len(await notifications_of(app, admin.id, "failure_rate_high")) == 2


async def test_notify_admins_tells_each_admin_once_per_dedupe_key_and_refuses_bad_facts(app: Any) -> None:
    admins = [await make_customer(app, roles=["user", "admin"]) for _ in range(2)]
    customer = await make_customer(app)
    facts = {"order_id": "ord_x", "amount": 100, "currency": "INR", "dispute_id": "dsp_x"}
    for _ in range(2):
        async with db_of(app).transaction() as session:
            await notify_service.notify_admins(
                session, kind="chargeback_opened", data=facts, dedupe_key="cb:1"
            )
    for admin in admins:
        assert len(await notifications_of(app, admin.id, "chargeback_opened")) == 1
        assert len(await emails_to(app, admin.email, "chargeback_opened")) == 1
    assert await notifications_of(app, customer.id) == []
    async with db_of(app).transaction() as session:
        for kind, data in (("payment_teleported", {}), ("low_balance", {"balance": 1.5})):
            with pytest.raises(ValueError):
                await notify_service.notify(session, user_id=customer.id, kind=kind, data=data)
    assert await notifications_of(app, customer.id) == []


async def test_deleting_the_account_deletes_its_notifications(app: Any, client: httpx.AsyncClient) -> None:
    user, other = await make_customer(app), await make_customer(app)
    await _notify(app, user, 1)
    kept = await _notify(app, other, 2)
    deleted = await client.post("/v1/me/delete", json={}, headers=user.headers)
    assert deleted.status_code == 200, deleted.text
    assert await notifications_of(app, user.id) == []
    assert [n.id for n in await notifications_of(app, other.id)] == [kept]
    assert await emails_to(app, user.email, "low_balance") == []  # the waiting email is erased, not sent


@pytest.mark.parametrize("settings_overrides", [{"gateways": "sandbox", "guest_checkout": True}])
async def test_a_guest_order_on_an_accounts_email_is_told_in_app_and_only_by_guest_checkouts_email(
    app: Any, client: httpx.AsyncClient
) -> None:
    owner = await make_customer(app)
    plan = await make_plan(app)
    answer = await client.post(
        "/v1/guest_orders", json={"email": owner.email, "plan": plan, "currency": "INR", "gateway": "sandbox"}
    )
    assert answer.status_code == 201, answer.text
    order = answer.json()
    opened = await client.get(local(order["checkout_url"]))
    assert opened.status_code == 303, opened.text
    back = await pay_on_sandbox(client, opened.headers["location"])
    assert (await client.get(local(back))).status_code == 303
    async with db_of(app).transaction(write=False) as session:
        stored = await session.get(PaymentOrder, order["id"])
        assert stored is not None and stored.status == "fulfilled"

    [told] = await notifications_of(app, owner.id, "payment_succeeded")
    assert told.data["order_id"] == order["id"]
    assert await emails_to(app, owner.email, "payment_succeeded") == []
