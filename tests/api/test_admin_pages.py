"""The admin panel's operations pages through the ASGI app on both engines, signed in through the login form as
a browser is: who may see them, every form's errors next to its field with nothing changed, a post without the
CSRF token refused, and each form's real effect (grant, freeze, roles, activation, refund, dispute reply and
resolution) read back through the services and the API."""

from __future__ import annotations

import html
import re
from typing import Any

import httpx
from sqlalchemy import func, select

from prepaid.audit.models import AuditLogEntry
from prepaid.auth import service as auth_service
from prepaid.ledger import service as ledger_service
from prepaid.ledger.models import Transaction
from prepaid.payments import service as payments_service
from tests.api.test_admin_stats import db_of, default_wallet_id, make_plan, paid_order
from tests.factories import TestUser, make_customer, make_user
from tests.helpers import browser_signed_in

XSS = '<script>window.pwned=1</script><svg onload="window.pwned=2">'
PAGES = (
    "/admin",
    "/admin/users",
    "/admin/orders",
    "/admin/gateway-orders",
    "/admin/disputes",
    "/admin/audit",
)


def error_for(page: str, field: str) -> str:
    found = re.search(rf'data-error-for="{field}" role="alert">([^<]*)<', page)
    assert found, f"no error slot for {field}"
    return html.unescape(found.group(1))


async def wallet_state(app: Any, user: TestUser) -> tuple[int, bool]:
    async with db_of(app).transaction(write=False) as session:
        wallet = await ledger_service.default_wallet(session, user_id=user.id)
        await session.refresh(wallet)
        return wallet.total, wallet.frozen


async def audit_count(app: Any) -> int:
    async with db_of(app).transaction(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(AuditLogEntry)) or 0)


async def transactions(app: Any) -> int:
    async with db_of(app).transaction(write=False) as session:
        return int(await session.scalar(select(func.count()).select_from(Transaction)) or 0)


async def test_only_admins_see_the_admin_pages(app: Any, client: httpx.AsyncClient) -> None:
    person = await make_user(app)
    for path in PAGES:
        anonymous = await client.get(path)
        assert anonymous.status_code == 303 and anonymous.headers["location"].startswith("/login?next="), path
    async with browser_signed_in(app, person) as (browser, csrf):
        for path in (*PAGES, f"/admin/users/{person.id}"):
            refused = await browser.get(path)
            assert refused.status_code == 403 and "Admins only" in refused.text, path
        wallet_id = await default_wallet_id(app, person)
        before = await audit_count(app)
        for path, data in (
            (f"/admin/users/{person.id}/roles", {"admin": "on"}),
            (f"/admin/users/{person.id}/grants", {"wallet": wallet_id, "amount": "50", "grant_key": "x"}),
            (f"/admin/users/{person.id}/wallets/{wallet_id}/frozen", {"frozen": "true"}),
        ):
            answer = await browser.post(path, data={**data, "csrf_token": csrf})
            assert answer.status_code == 403, path
    async with db_of(app).transaction(write=False) as session:
        assert (await auth_service.get_user(session, person.id)).roles == ["user"]
    assert await wallet_state(app, person) == (0, False)
    assert await audit_count(app) == before


async def test_grant_form_shows_errors_next_to_fields_changes_nothing_then_grants_once(
    app: Any, client: httpx.AsyncClient
) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    person = await make_customer(app, name="Grantee")
    wallet_id = await default_wallet_id(app, person)
    path = f"/admin/users/{person.id}/grants"
    async with browser_signed_in(app, admin) as (browser, csrf):
        page = await browser.get(f"/admin/users/{person.id}")
        assert page.status_code == 200 and wallet_id in page.text
        grant_key = re.search(r'name="grant_key" value="([^"]+)"', page.text)
        assert grant_key
        before = (await audit_count(app), await transactions(app))
        for data, field in (
            ({"wallet": wallet_id, "amount": "ten"}, "amount"),
            ({"wallet": wallet_id, "amount": ""}, "amount"),
            ({"wallet": wallet_id, "amount": "-5"}, "amount"),
            ({"wallet": wallet_id, "amount": "1e999999999"}, "amount"),  # not a float, not an overflow
            ({"wallet": wallet_id, "amount": "9" * 29}, "amount"),  # too many credits
            ({"wallet": wallet_id, "amount": "9" * 900}, "amount"),
            ({"wallet": wallet_id, "amount": "١٢"}, "amount"),  # digits, but not ASCII ones
            ({"wallet": wallet_id, "amount": "5", "expires_on": "2001-01-01"}, "expires_on"),
            ({"wallet": wallet_id, "amount": "5", "expires_on": "soon"}, "expires_on"),
            ({"wallet": wallet_id, "amount": "5", "source": "stolen"}, "source"),
            ({"wallet": "wal_not_theirs", "amount": "5"}, "wallet"),
        ):
            answer = await browser.post(
                path, data={**data, "grant_key": grant_key.group(1), "csrf_token": csrf}
            )
            assert answer.status_code == 400, (data, answer.status_code)
            assert error_for(answer.text, field), (data, answer.text[-2000:])
            assert 'aria-invalid="true"' in answer.text
        no_token = await browser.post(path, data={"wallet": wallet_id, "amount": "5", "grant_key": "k"})
        assert no_token.status_code == 403
        assert (await audit_count(app), await transactions(app)) == before
        assert await wallet_state(app, person) == (0, False)

        data = {"wallet": wallet_id, "amount": "25", "source": "promotional", "reason": "Welcome back"}
        for _ in range(2):  # the same form sent twice grants once
            done = await browser.post(
                path, data={**data, "grant_key": grant_key.group(1), "csrf_token": csrf}
            )
            assert (
                done.status_code == 303
                and done.headers["location"] == f"/admin/users/{person.id}?notice=granted"
            )
        assert await wallet_state(app, person) == (25, False)
        shown = await browser.get(done.headers["location"])
        assert "Credits granted." in shown.text
    wallets = (await client.get(f"/v1/wallets?customer={person.id}", headers=admin.headers)).json()["data"]
    assert (wallets[0]["balance"], wallets[0]["promotional"]) == (25, 25)
    entries = (await client.get("/v1/audit_log?action=wallet.grant", headers=admin.headers)).json()["data"]
    assert len(entries) == 1 and entries[0]["after"]["reason"] == "Welcome back"


async def test_freeze_roles_and_activation_forms(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    person = await make_customer(app)
    wallet_id = await default_wallet_id(app, person)
    async with browser_signed_in(app, admin) as (browser, csrf):
        frozen = await browser.post(
            f"/admin/users/{person.id}/wallets/{wallet_id}/frozen",
            data={"frozen": "true", "csrf_token": csrf},
        )
        assert frozen.status_code == 303
        assert await wallet_state(app, person) == (0, True)
        spend = await client.post(
            f"/v1/wallets/{wallet_id}/grants",
            json={"amount": 5, "idempotency_key": "frozen-grant"},
            headers=admin.headers,
        )
        assert spend.status_code == 201  # credits may still come in; spending is what a freeze stops
        unfrozen = await browser.post(
            f"/admin/users/{person.id}/wallets/{wallet_id}/frozen",
            data={"frozen": "false", "csrf_token": csrf},
        )
        assert unfrozen.status_code == 303 and (await wallet_state(app, person))[1] is False
        wrong = await browser.post(
            f"/admin/users/{admin.id}/wallets/{wallet_id}/frozen", data={"frozen": "true", "csrf_token": csrf}
        )
        assert wrong.status_code == 400 and error_for(wrong.text, "form")
        assert (await wallet_state(app, person))[1] is False

        promoted = await browser.post(
            f"/admin/users/{person.id}/roles", data={"admin": "on", "csrf_token": csrf}
        )
        assert promoted.status_code == 303
        myself = await browser.post(f"/admin/users/{admin.id}/roles", data={"csrf_token": csrf})
        assert myself.status_code == 400 and "own admin role" in error_for(myself.text, "admin")
        deactivated = await browser.post(
            f"/admin/users/{person.id}/active", data={"active": "false", "csrf_token": csrf}
        )
        assert deactivated.status_code == 303
        bad = await browser.post(
            f"/admin/users/{person.id}/active", data={"active": "maybe", "csrf_token": csrf}
        )
        assert bad.status_code == 400 and error_for(bad.text, "active")
    async with db_of(app).transaction(write=False) as session:
        changed = await auth_service.get_user(session, person.id)
        assert (changed.roles, changed.active) == (["user", "admin"], False)
        assert "admin" in (await auth_service.get_user(session, admin.id)).roles
    assert (await client.get("/v1/me", headers=person.headers)).status_code == 401  # signed out everywhere


async def test_users_search_and_pages_show_hostile_text_as_text(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    hostile = await make_customer(app, name=XSS, email="mallory-search@example.com")
    await make_customer(app, name="Someone else")
    order_id = await paid_order(app, client, hostile, await make_plan(app), user_agent=f"Agent {XSS}")
    dispute = await client.post(
        "/v1/disputes",
        json={"order": order_id, "category": "other", "message": f"Help {XSS}"},
        headers=hostile.headers,
    )
    assert dispute.status_code == 201, dispute.text
    async with browser_signed_in(app, admin) as (browser, _csrf):
        found = await browser.get("/admin/users", params={"q": "MALLORY-search"})
        assert hostile.id in found.text and "Someone else" not in found.text
        for path in (
            "/admin",
            "/admin/users",
            f"/admin/users/{hostile.id}",
            "/admin/orders",
            f"/admin/orders/{order_id}",
            "/admin/disputes",
            f"/admin/disputes/{dispute.json()['id']}",
        ):
            page = await browser.get(path)
            assert page.status_code == 200, (path, page.text[-1500:])
            assert "<script>window.pwned" not in page.text and "<svg onload" not in page.text, path
            assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in page.text, path
        dashboard = await browser.get("/admin")
        assert dashboard.text.count("&lt;svg onload=") >= 2  # the top customers' chart and table


async def test_orders_filters_detail_and_the_refund_form(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    buyer = await make_customer(app, name="Refundee")
    other = await make_customer(app, name="Bystander")
    plan = await make_plan(app)
    order_id = await paid_order(app, client, buyer, plan, user_agent="Refundee's browser")
    await paid_order(app, client, other, plan)
    async with browser_signed_in(app, admin) as (browser, csrf):
        mine = await browser.get("/admin/orders", params={"user": buyer.email, "status": "fulfilled"})
        assert order_id in mine.text and "Bystander" not in mine.text
        nobody = await browser.get("/admin/orders", params={"user": "nobody@example.com", "status": "lost"})
        assert nobody.status_code == 400
        assert error_for(nobody.text, "user") and error_for(nobody.text, "status")
        detail = await browser.get(f"/admin/orders/{order_id}")
        assert "Refundee&#39;s browser" in detail.text and "fulfilled" in detail.text
        before = await wallet_state(app, buyer)
        for data, field, status in (
            ({"amount": "lots", "clawback": "available"}, "amount", 400),
            ({"amount": "1.234", "clawback": "available"}, "amount", 400),
            ({"amount": "1.00000000000000000000000000001", "clawback": "available"}, "amount", 400),
            ({"amount": "1e3", "clawback": "available"}, "amount", 400),
            ({"amount": "250", "clawback": "sometimes"}, "clawback", 400),
            ({"amount": "5000", "clawback": "available"}, "amount", 400),  # more than the ₹1,000 paid
        ):
            answer = await browser.post(
                f"/admin/orders/{order_id}/refunds", data={**data, "csrf_token": csrf}
            )
            assert answer.status_code == status, (data, answer.text[-1500:])
            assert error_for(answer.text, field), data
        no_token = await browser.post(f"/admin/orders/{order_id}/refunds", data={"clawback": "available"})
        assert no_token.status_code == 403
        assert await wallet_state(app, buyer) == before
        refunds = (await client.get(f"/v1/refunds?order={order_id}", headers=admin.headers)).json()["data"]
        assert refunds == []
        done = await browser.post(
            f"/admin/orders/{order_id}/refunds",
            data={
                "amount": "250.00",
                "reason": "Partly unhappy",
                "clawback": "available",
                "csrf_token": csrf,
            },
        )
        assert done.status_code == 303, done.text[-1500:]
        shown = await browser.get(done.headers["location"])
        assert "Refund made." in shown.text and "partially_refunded" in shown.text
        assert 'id="refund-form"' in shown.text  # ₹750 is left to refund
    order = (await client.get(f"/v1/orders/{order_id}", headers=buyer.headers)).json()
    assert order["status"] == "partially_refunded"
    assert await wallet_state(app, buyer) == (before[0] - 30, False)  # a quarter of 100 + 20 bonus


async def test_disputes_reply_and_resolve_forms(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    buyer = await make_customer(app, name="Disputer")
    order_id = await paid_order(app, client, buyer, await make_plan(app))
    opened = await client.post(
        "/v1/disputes",
        json={"order": order_id, "category": "wrong_amount", "message": "I was charged twice?"},
        headers=buyer.headers,
    )
    dispute_id = opened.json()["id"]
    async with browser_signed_in(app, admin) as (browser, csrf):
        listed = await browser.get("/admin/disputes", params={"status": "open"})
        assert dispute_id in listed.text
        detail = await browser.get(f"/admin/disputes/{dispute_id}")
        assert "I was charged twice?" in detail.text and "captured" in detail.text  # the gateway's view
        empty = await browser.post(
            f"/admin/disputes/{dispute_id}/messages", data={"message": "  ", "csrf_token": csrf}
        )
        assert empty.status_code == 400 and error_for(empty.text, "message")
        no_note = await browser.post(
            f"/admin/disputes/{dispute_id}/resolve",
            data={"resolution": "reject", "note": "", "csrf_token": csrf},
        )
        assert no_note.status_code == 400 and error_for(no_note.text, "note")
        bad_credits = await browser.post(
            f"/admin/disputes/{dispute_id}/resolve",
            data={"resolution": "grant_credits", "note": "Sorry", "credits": "x", "csrf_token": csrf},
        )
        assert bad_credits.status_code == 400 and error_for(bad_credits.text, "credits")
        no_token = await browser.post(
            f"/admin/disputes/{dispute_id}/resolve", data={"resolution": "reject", "note": "n"}
        )
        assert no_token.status_code == 403
        assert (await client.get(f"/v1/disputes/{dispute_id}", headers=buyer.headers)).json()[
            "status"
        ] == "open"
        replied = await browser.post(
            f"/admin/disputes/{dispute_id}/messages", data={"message": "Looking into it", "csrf_token": csrf}
        )
        assert replied.status_code == 303
        resolved = await browser.post(
            f"/admin/disputes/{dispute_id}/resolve",
            data={"resolution": "grant_credits", "note": "Goodwill", "credits": "15", "csrf_token": csrf},
        )
        assert resolved.status_code == 303, resolved.text[-1500:]
        closed = await browser.get(f"/admin/disputes/{dispute_id}")
        assert 'id="resolve-form"' not in closed.text and "Goodwill" in closed.text
    seen = (await client.get(f"/v1/disputes/{dispute_id}", headers=buyer.headers)).json()
    assert (seen["status"], seen["resolution"], seen["granted_credits"]) == ("resolved", "grant_credits", 15)
    assert [m["body"] for m in seen["messages"]][:2] == ["I was charged twice?", "Looking into it"]


async def test_gateway_orders_dashboard_and_audit_pages(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    buyer = await make_customer(app, name="Dash buyer")
    order_id = await paid_order(app, client, buyer, await make_plan(app))
    async with browser_signed_in(app, admin) as (browser, _csrf):
        compared = await browser.get("/admin/gateway-orders")
        assert compared.status_code == 200 and order_id in compared.text and "agrees" in compared.text
        too_long = await browser.get(
            "/admin/gateway-orders", params={"from": "2026-01-01", "to": "2026-03-01"}
        )
        assert too_long.status_code == 400 and error_for(too_long.text, "from")
        dashboard = await browser.get("/admin")
        assert 'data-revenue="INR"' in dashboard.text and "₹1,000.00" in dashboard.text
        assert dashboard.text.count("<svg") >= 5 and "Dash buyer" in dashboard.text
        backwards = await browser.get("/admin", params={"from": "2026-02-02", "to": "2026-02-01"})
        assert backwards.status_code == 400 and error_for(backwards.text, "from")
        async with db_of(app).transaction() as session:
            for index in range(30):
                user = await auth_service.get_user(session, buyer.id)
                await auth_service.admin_update_user(
                    session,
                    actor=auth_service.Principal(user=user),
                    user_id=buyer.id,
                    roles=None,
                    active=None,
                    name=f"Name {index}",
                )
        first = await browser.get("/admin/audit", params={"object_id": buyer.id})
        assert first.text.count("user.update") == 25
        older = re.search(r'href="([^"]+)">Older<', first.text)
        assert older
        second = await browser.get(html.unescape(older.group(1)))
        assert second.text.count("user.update") == 5 and "Newer" in second.text
    async with db_of(app).transaction(write=False) as session:
        assert (await payments_service.get_order(session, order_id)).status == "fulfilled"


async def test_odd_addresses_and_filters_answer_without_crashing(app: Any, client: httpx.AsyncClient) -> None:
    admin = await make_user(app, roles=["user", "admin"])
    async with browser_signed_in(app, admin) as (browser, csrf):
        for path, expected in (
            ("/admin?from=0001-01-01&to=0001-12-31", 200),
            ("/admin?from=9999-12-31&to=9999-12-31", 200),
            ("/admin?from=2020-01-01&to=2026-01-01", 400),
            ("/admin?from=tomorrow", 400),
            ("/admin/users?q=%25_%5C&starting_after=zzz&ending_before=aaa", 200),
            ("/admin/users/usr_missing", 404),
            ("/admin/orders?from=9999-12-31&to=9999-12-31&starting_after=x", 200),
            ("/admin/orders/ord_missing", 404),
            ("/admin/gateway-orders?gateway=nope", 400),
            ("/admin/gateway-orders?from=2001-01-01", 400),
            ("/admin/disputes?status=maybe&kind=odd", 400),
            ("/admin/disputes/dsp_missing", 404),
            ("/admin/audit?action=nothing&ending_before=zzz", 200),
            ("/admin/users?q=%00%C3%A9%F0%9F%92%B8", 200),
            ("/admin/orders?user=%00", 200),  # a NUL is dropped: no filter
            ("/admin/orders?user=a%00%40b", 400),
            ("/admin/audit?action=%00&object_id=%00&actor=%00", 200),
            ("/admin/audit?starting_after=%00", 200),
            ("/admin?from=2026-02-30", 400),
            ("/admin/users/%00", 404),
        ):
            answer = await browser.get(path)
            assert answer.status_code == expected, (path, answer.status_code, answer.text[-800:])
        for path, data in (
            ("/admin/users/usr_missing/roles", {"admin": "on"}),
            ("/admin/users/usr_missing/grants", {"wallet": "wal_x", "amount": "1"}),
            ("/admin/orders/ord_missing/refunds", {"clawback": "available"}),
            ("/admin/disputes/dsp_missing/messages", {"message": "hello"}),
            ("/admin/disputes/dsp_missing/resolve", {"resolution": "reject", "note": "no"}),
        ):
            answer = await browser.post(path, data={**data, "csrf_token": csrf})
            assert answer.status_code == 404, (path, answer.status_code, answer.text[-800:])
