"""The account pages (``/account`` and below) through the ASGI app on both engines: sign-in required, figures
read through the services, forms refused without the session's CSRF token, errors next to their fields, user
text escaped, and one user never reaching another's wallet, order, dispute, key or notification (404)."""

from __future__ import annotations

import html
import re
import secrets
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest

from prepaid.audit import service as audit_service
from prepaid.catalog import service as catalog_service
from prepaid.db import utcnow
from prepaid.ledger import service as ledger_service
from prepaid.notify import service as notify_service
from prepaid.payments import service as payments_service
from tests.factories import TestUser, make_admin, make_api_key, make_customer, make_user
from tests.helpers import browser_signed_in
from tests.payments.test_orders_support import create_order, db_of, make_plan, stored_order

PAYS, DECLINED = "4111 1111 1111 1111", "4000 0000 0000 0002"
SCRIPT = "<script>window.pwned=1</script><svg onload=alert(1)>"


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"gateways": "sandbox"}


async def grant(app: Any, user: TestUser, amount: int, *, source: str = "paid", memo: str = "") -> str:
    async with db_of(app).transaction() as session:
        wallet = await ledger_service.default_wallet(session, user_id=user.id)
        await ledger_service.grant_credits(
            session,
            wallet_id=wallet.id,
            amount=amount,
            idempotency_key=secrets.token_hex(8),
            actor=audit_service.Actor(user_id=None),
            source=source,  # type: ignore[arg-type]
            memo=memo,
        )
        return wallet.id


async def wallet_row(app: Any, wallet_id: str) -> Any:
    async with db_of(app).transaction(write=False) as session:
        return await ledger_service.get_wallet(session, wallet_id)


def error_for(page: str, name: str) -> str:
    found = re.search(rf'data-error-for="{re.escape(name)}"[^>]*>([^<]*)<', page)
    return html.unescape(found.group(1)).strip() if found else ""


async def pay_on_sandbox(client: httpx.AsyncClient, redirect_url: str, card: str) -> None:
    """Pay an order's attempt on the sandbox's hosted page and follow the gateway back to our return page."""
    path = urlsplit(redirect_url).path
    page = await client.get(path)
    token = re.search(r'name="csrf_token" value="([^"]+)"', page.text)
    assert token, page.text
    data = {
        "csrf_token": html.unescape(token.group(1)),
        "method": "card",
        "card_number": card,
        "card_expiry": "12/39",
        "card_cvc": "123",
        "card_name": "Asha Rao",
    }
    paid = await client.post(path, data=data)
    assert paid.status_code == 303, paid.text
    target = urlsplit(paid.headers["location"])
    back = await client.get(f"{target.path}?{target.query}")
    assert back.status_code in (200, 303), back.text


async def sandbox_order(app: Any, client: httpx.AsyncClient, user: TestUser, card: str) -> str:
    plan = await make_plan(app, credits=500)
    order = await create_order(client, user, plan=plan, gateway="sandbox")
    await pay_on_sandbox(client, order["checkout"]["redirect_url"], card)
    return str(order["id"])


# ---------------------------------------------------------------- signed out


@pytest.mark.parametrize(
    "path",
    [
        "/account",
        "/account/transactions?kind=spend",
        "/account/orders",
        "/account/orders/ord_X",
        "/account/disputes",
        "/account/disputes/dsp_X",
        "/account/keys",
        "/account/notifications",
    ],
)
async def test_a_signed_out_visitor_is_sent_to_sign_in_and_back(client: httpx.AsyncClient, path: str) -> None:
    answer = await client.get(path)
    assert answer.status_code == 303
    assert answer.headers["location"].startswith("/login?next=/account")


async def test_a_signed_out_form_post_changes_nothing(client: httpx.AsyncClient) -> None:
    for path in ("/account/keys", "/account/orders/ord_X/retry", "/account/wallets/acc_X/threshold"):
        answer = await client.post(path, data={"csrf_token": "x", "name": "k", "scopes": "balance:read"})
        assert answer.status_code == 303, path
        assert answer.headers["location"].startswith("/login")


# ---------------------------------------------------------------- wallets


async def test_wallets_show_balance_split_and_escaped_names(app: Any) -> None:
    user = await make_user(app, name=SCRIPT)
    wallet_id = await grant(app, user, 1500, source="paid", memo=SCRIPT)
    await grant(app, user, 250, source="promotional")
    async with db_of(app).transaction() as session:
        await ledger_service.create_wallet(session, user_id=user.id, name=f"Agent {SCRIPT}")
    async with browser_signed_in(app, user) as (browser, _csrf):
        page = (await browser.get("/account")).text
        assert re.search(r'id="balance" data-figure="balance">1,750<', page)
        card = page[page.index(f'id="wallet-{wallet_id}"') :]
        assert re.search(r'data-figure="paid">1,500<', card)
        assert re.search(r'data-figure="promotional">250<', card)
        assert "<script>window.pwned" not in page and "<svg onload" not in page
        assert "Agent &lt;script&gt;window.pwned=1&lt;/script&gt;&lt;svg onload=alert(1)&gt;" in page
        assert '<script src="/static/account.js" defer></script>' in page
        assert 'id="no-spending"' in page and "<svg" not in page  # nothing spent: no chart

        transactions = (await browser.get("/account/transactions")).text
        assert "&lt;script&gt;window.pwned=1&lt;/script&gt;" in transactions
        assert "<script>window.pwned" not in transactions


async def test_the_low_balance_threshold_form_shows_errors_next_to_the_field(app: Any) -> None:
    user = await make_user(app)
    wallet_id = await grant(app, user, 100)
    async with browser_signed_in(app, user) as (browser, csrf):
        action = f"/account/wallets/{wallet_id}/threshold"
        refused = await browser.post(action, data={"csrf_token": csrf, "low_balance_threshold": "-5"})
        assert refused.status_code == 400
        assert "number of credits" in error_for(refused.text, "low_balance_threshold")
        assert 'value="-5"' in refused.text
        assert (await wallet_row(app, wallet_id)).low_balance_threshold is None

        saved = await browser.post(action, data={"csrf_token": csrf, "low_balance_threshold": "40"})
        assert saved.status_code == 303
        assert (await wallet_row(app, wallet_id)).low_balance_threshold == 40

        no_token = await browser.post(action, data={"low_balance_threshold": "7"})
        assert no_token.status_code == 403
        assert (await wallet_row(app, wallet_id)).low_balance_threshold == 40

        cleared = await browser.post(action, data={"csrf_token": csrf, "low_balance_threshold": ""})
        assert cleared.status_code == 303
        assert (await wallet_row(app, wallet_id)).low_balance_threshold is None

    other = await make_user(app)
    async with browser_signed_in(app, other) as (browser, csrf):
        stranger = await browser.post(
            f"/account/wallets/{wallet_id}/threshold", data={"csrf_token": csrf, "low_balance_threshold": "1"}
        )
        assert stranger.status_code == 404
        assert (await browser.get(f"/account/transactions?wallet={wallet_id}")).status_code == 404
    assert (await wallet_row(app, wallet_id)).low_balance_threshold is None


async def test_transactions_filter_by_kind_and_day_and_page_with_cursors(app: Any) -> None:
    user = await make_user(app)
    for number in range(23):
        await grant(app, user, number + 1, memo=f"grant number {number}")
    async with browser_signed_in(app, user) as (browser, _csrf):
        first = await browser.get("/account/transactions")
        assert first.status_code == 200
        assert first.text.count('<td class="reason">') == 20
        assert "grant number 22" in first.text and "grant number 2<" not in first.text
        older = re.search(r'href="([^"]+)" rel="next"', first.text)
        assert older is not None
        second = await browser.get("/account/transactions" + html.unescape(older.group(1)))
        assert second.text.count('<td class="reason">') == 3
        assert "grant number 0<" in second.text
        assert 'rel="next"' not in second.text and 'rel="prev"' in second.text

        spends = await browser.get("/account/transactions?kind=spend")
        assert spends.text.count('<td class="reason">') == 0
        future = await browser.get("/account/transactions?since=2999-01-01")
        assert future.text.count('<td class="reason">') == 0

        bad = await browser.get("/account/transactions?kind=theft&since=yesterday")
        assert bad.status_code == 400
        assert error_for(bad.text, "kind") and "YYYY-MM-DD" in error_for(bad.text, "since")


async def test_spending_is_charted_per_day_per_meter(app: Any, client: httpx.AsyncClient) -> None:
    user = await make_user(app)
    wallet_id = await grant(app, user, 1000)
    async with db_of(app).transaction() as session:
        for code, price in (("api-calls", 3), ("emails", 2)):
            await catalog_service.create_meter(
                session,
                actor=audit_service.Actor(user_id=None),
                code=code,
                name=code,
                kind="unit",
                unit="call",
                price=price,
            )
    key = await make_api_key(app, user, scopes=["usage:write"])
    for meter, quantity in (("api-calls", 10), ("emails", 4), ("api-calls", 5)):
        used = await client.post(
            "/v1/usage",
            json={"id": secrets.token_hex(8), "wallet": wallet_id, "meter": meter, "quantity": quantity},
            headers={"X-API-Key": key.secret},
        )
        assert used.status_code == 201, used.text
    async with browser_signed_in(app, user) as (browser, _csrf):
        page = (await browser.get("/account")).text
    assert "53 credits spent in this period" in page  # 15 calls at 3, 4 emails at 2
    assert 'aria-label="Credits spent per day per meter, last 30 days"' in page
    legend = page[page.index('class="legend"') :]
    assert legend.index("api-calls") < legend.index("emails")
    assert re.search(r"<title>[A-Z][a-z]{2} \d{2} · api-calls: 45</title>", page)
    assert re.search(r"<title>[A-Z][a-z]{2} \d{2} · emails: 8</title>", page)


# ---------------------------------------------------------------- orders and disputes


async def test_a_declined_order_offers_retry_which_opens_the_checkout_again(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    order_id = await sandbox_order(app, client, user, DECLINED)
    assert (await stored_order(app, order_id)).status == "pending"  # until the gateway's payment.failed
    async with db_of(app).transaction() as session:  # that webhook's processing (no job runs in these tests)
        attempt = (await payments_service.attempts_of(session, order_id))[-1]
        await payments_service.record_failure(
            session, attempt_id=attempt.id, reason="Your payment was declined by the bank.", now=utcnow()
        )
    assert (await stored_order(app, order_id)).status == "failed"
    async with browser_signed_in(app, user) as (browser, csrf):
        orders = (await browser.get("/account/orders")).text
        row = orders[orders.index(f'id="order-{order_id}"') :]
        assert 'data-status="failed"' in row[:2000] and ">Retry</button>" in row[:2000]

        assert (await browser.post(f"/account/orders/{order_id}/retry", data={})).status_code == 403
        assert (await stored_order(app, order_id)).attempt_count == 1

        retried = await browser.post(f"/account/orders/{order_id}/retry", data={"csrf_token": csrf})
        assert retried.status_code == 303
        assert retried.headers["location"].startswith(f"http://testserver/checkout/{order_id}?e=")
        order = await stored_order(app, order_id)
        assert (order.status, order.attempt_count) == ("pending", 2)

    other = await make_user(app)
    async with browser_signed_in(app, other) as (browser, csrf):
        assert (await browser.get(f"/account/orders/{order_id}")).status_code == 404
        stranger = await browser.post(f"/account/orders/{order_id}/retry", data={"csrf_token": csrf})
        assert stranger.status_code == 404
        assert order_id not in (await browser.get("/account/orders")).text
    assert (await stored_order(app, order_id)).attempt_count == 2


async def test_a_dispute_is_raised_on_a_paid_order_and_its_thread_is_escaped_and_private(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    order_id = await sandbox_order(app, client, user, PAYS)
    assert (await stored_order(app, order_id)).status == "fulfilled"
    async with browser_signed_in(app, user) as (browser, csrf):
        action = f"/account/orders/{order_id}/disputes"
        empty = await browser.post(action, data={"csrf_token": csrf, "category": "other", "message": "  "})
        assert empty.status_code == 400 and error_for(empty.text, "message")
        bad_category = await browser.post(action, data={"csrf_token": csrf, "category": "x", "message": "hi"})
        assert bad_category.status_code == 400 and error_for(bad_category.text, "category")
        assert (await browser.post(action, data={"category": "other", "message": "hi"})).status_code == 403

        raised = await browser.post(
            action,
            data={"csrf_token": csrf, "category": "wrong_amount", "message": f"Charged twice {SCRIPT}"},
        )
        assert raised.status_code == 303
        dispute_path = raised.headers["location"]
        thread = (await browser.get(dispute_path)).text
        assert "Charged twice &lt;script&gt;window.pwned=1&lt;/script&gt;" in thread
        assert "<script>window.pwned" not in thread
        assert 'data-status="open"' in thread

        again = await browser.post(action, data={"csrf_token": csrf, "category": "other", "message": "again"})
        assert again.status_code == 409 and "already has an open dispute" in error_for(again.text, "form")

        added = await browser.post(
            f"{dispute_path}/messages", data={"csrf_token": csrf, "message": "Any news?"}
        )
        assert added.status_code == 303
        thread = (await browser.get(dispute_path)).text
        assert thread.count('data-role="customer"') == 2 and "Any news?" in thread
        assert dispute_path.rsplit("/", 1)[1] in (await browser.get("/account/disputes")).text

    other = await make_user(app)
    async with browser_signed_in(app, other) as (browser, csrf):
        assert (await browser.get(dispute_path)).status_code == 404
        sneaky = await browser.post(f"{dispute_path}/messages", data={"csrf_token": csrf, "message": "mine"})
        assert sneaky.status_code == 404
        on_theirs = await browser.post(
            f"/account/orders/{order_id}/disputes",
            data={"csrf_token": csrf, "category": "other", "message": "mine"},
        )
        assert on_theirs.status_code == 404
    async with browser_signed_in(app, user) as (browser, _csrf):
        assert "mine" not in (await browser.get(dispute_path)).text


# ---------------------------------------------------------------- API keys and notifications


async def test_an_api_key_is_shown_once_works_and_stops_when_revoked(
    app: Any, client: httpx.AsyncClient
) -> None:
    user = await make_user(app)
    async with browser_signed_in(app, user) as (browser, csrf):
        none = await browser.post("/account/keys", data={"csrf_token": csrf, "name": "empty"})
        assert none.status_code == 400 and error_for(none.text, "scopes")
        forbidden = await browser.post(
            "/account/keys", data={"csrf_token": csrf, "name": "x", "scopes": ["orders:write"]}
        )
        assert forbidden.status_code == 400 and error_for(forbidden.text, "scopes")
        assert (
            await browser.post("/account/keys", data={"name": "x", "scopes": ["balance:read"]})
        ).status_code == 403

        created = await browser.post(
            "/account/keys", data={"csrf_token": csrf, "name": f"bot {SCRIPT}", "scopes": ["balance:read"]}
        )
        assert created.status_code == 201
        assert created.headers["cache-control"] == "no-store"
        secret = re.search(r'<code id="new-key-secret">([^<]+)</code>', created.text)
        assert secret is not None
        key = html.unescape(secret.group(1))
        assert "bot &lt;script&gt;" in created.text and "<script>window" not in created.text
        listed = (await browser.get("/account/keys")).text
        assert key not in listed and "bot &lt;script&gt;" in listed
        key_id = re.search(r'data-key="([^"]+)"', listed)
        assert key_id is not None

    me = await client.get("/v1/me", headers={"X-API-Key": key})
    assert me.status_code == 200 and me.json()["id"] == user.id

    other = await make_user(app)
    async with browser_signed_in(app, other) as (browser, csrf):
        stranger = await browser.post(f"/account/keys/{key_id.group(1)}/revoke", data={"csrf_token": csrf})
        assert stranger.status_code == 404
    assert (await client.get("/v1/me", headers={"X-API-Key": key})).status_code == 200

    async with browser_signed_in(app, user) as (browser, csrf):
        revoked = await browser.post(f"/account/keys/{key_id.group(1)}/revoke", data={"csrf_token": csrf})
        assert revoked.status_code == 303
        assert key_id.group(1) not in (await browser.get("/account/keys")).text
    assert (await client.get("/v1/me", headers={"X-API-Key": key})).status_code == 401


async def test_notifications_are_listed_and_marked_read_by_their_owner_only(app: Any) -> None:
    user = await make_user(app)
    async with db_of(app).transaction() as session:
        made = await notify_service.notify(
            session, user_id=user.id, kind="low_balance", data={"balance": 5, "threshold": 10}, email=False
        )
        assert made is not None
        notification_id = made.id
    other = await make_user(app)
    async with browser_signed_in(app, other) as (browser, csrf):
        assert notification_id not in (await browser.get("/account/notifications")).text
        stranger = await browser.post(
            f"/account/notifications/{notification_id}/read", data={"csrf_token": csrf}
        )
        assert stranger.status_code == 404
    async with browser_signed_in(app, user) as (browser, csrf):
        page = (await browser.get("/account/notifications?unread=true")).text
        assert "Low balance" in page and "5 credits left, below 10" in page
        assert f'data-notification="{notification_id}" data-read="false"' in page
        read = await browser.post(f"/account/notifications/{notification_id}/read", data={"csrf_token": csrf})
        assert read.status_code == 303
        assert notification_id not in (await browser.get("/account/notifications?unread=true")).text
        assert (
            f'data-notification="{notification_id}" data-read="true"'
            in (await browser.get("/account/notifications")).text
        )


# ---------------------------------------------------------------- odd input


@pytest.mark.parametrize(
    "path",
    [
        "/account/orders/%00",
        "/account/orders/%C3%A9",
        "/account/disputes/%00",
        "/account/transactions?wallet=%00",
        "/account/transactions?starting_after=%00",
        "/account/orders?starting_after=%00",
        "/account/notifications?ending_before=%00",
    ],
)
async def test_an_odd_id_or_cursor_in_the_url_is_a_page_not_a_crash(app: Any, path: str) -> None:
    """PostgreSQL refuses NUL in text: such an id never reaches the driver (a 404 page, or an empty list)."""
    user = await make_user(app)
    async with browser_signed_in(app, user) as (browser, csrf):
        page = await browser.get(path)
        assert page.status_code in (200, 404), page.text
        assert page.headers["content-type"].startswith("text/html")
        for action in (
            "/account/orders/%00/retry",
            "/account/disputes/%00/messages",
            "/account/keys/%00/revoke",
        ):
            posted = await browser.post(action, data={"csrf_token": csrf, "message": "hello"})
            assert posted.status_code == 404 and posted.headers["content-type"].startswith("text/html")


async def test_odd_filters_and_form_values_are_errors_next_to_their_fields(app: Any) -> None:
    user = await make_user(app)
    wallet_id = await grant(app, user, 100)
    async with browser_signed_in(app, user) as (browser, csrf):
        for query, field in (
            ("until=9999-12-31", "until"),  # the day after it was an OverflowError: a 500
            ("since=0001-01-01", "since"),  # before UTC's year 1 in an eastern zone: likewise
            ("since=2026-02-30", "since"),
        ):
            page = await browser.get(f"/account/transactions?{query}")
            assert page.status_code == 400, (query, page.text)
            assert error_for(page.text, field), query
        for path in ("/account/notifications?unread=maybe", f"/account?saved={'x' * 100}"):
            page = await browser.get(path)  # once FastAPI's JSON error (a bool, a max_length)
            assert page.status_code == 200 and page.headers["content-type"].startswith("text/html"), path

        action = f"/account/wallets/{wallet_id}/threshold"
        for text in ("\u0661\u0662", "12.5", "9" * 30, "x" * 2000):
            refused = await browser.post(action, data={"csrf_token": csrf, "low_balance_threshold": text})
            assert refused.status_code == 400, (text, refused.text)
            assert "number of credits" in error_for(refused.text, "low_balance_threshold")
        assert (await wallet_row(app, wallet_id)).low_balance_threshold is None
        saved = await browser.post(action, data={"csrf_token": csrf, "low_balance_threshold": "1,000"})
        assert saved.status_code == 303
        assert (await wallet_row(app, wallet_id)).low_balance_threshold == 1000

        nul = await browser.post(
            "/account/keys", data={"csrf_token": csrf, "name": "a\x00b", "scopes": ["balance:read"]}
        )
        assert nul.status_code == 400 and "control characters" in error_for(nul.text, "name")
        long_name = await browser.post(
            "/account/keys", data={"csrf_token": csrf, "name": "n" * 1500, "scopes": ["balance:read"]}
        )
        assert long_name.status_code == 400 and error_for(long_name.text, "name")
        assert 'data-key="' not in (await browser.get("/account/keys")).text


async def test_an_admin_sees_and_revokes_its_own_keys_among_everyone_elses(app: Any) -> None:
    """``list_api_keys`` shows an admin every user's keys, 100 at a time: the account page lists the admin's own
    keys however many others there are."""
    admin = await make_admin(app)
    async with browser_signed_in(app, admin) as (browser, csrf):
        created = await browser.post(
            "/account/keys", data={"csrf_token": csrf, "name": "mine", "scopes": ["balance:read"]}
        )
        assert created.status_code == 201
    others = [await make_customer(app) for _ in range(3)]
    for number in range(101):
        await make_api_key(app, others[number % 3], scopes=["balance:read"])
    async with browser_signed_in(app, admin) as (browser, csrf):
        listed = (await browser.get("/account/keys")).text
        key_ids = re.findall(r'data-key="([^"]+)"', listed)
        assert len(key_ids) == 1 and ">mine<" in listed
        revoked = await browser.post(f"/account/keys/{key_ids[0]}/revoke", data={"csrf_token": csrf})
        assert revoked.status_code == 303
        assert 'data-key="' not in (await browser.get("/account/keys")).text
