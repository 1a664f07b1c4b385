"""``prepaid reconcile`` as a real process on both engines: it settles an order paid at the sandbox whose
webhook and return never came (with a progress bar), then lists the gateway's orders beside ours and exits 1
while a mismatch remains."""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

import httpx
import pytest

from prepaid.settings import Settings
from tests.e2e.conftest import base_env, run_prepaid
from tests.factories import make_customer
from tests.payments.test_checkout_pages_support import PRICES, pay_on_sandbox
from tests.payments.test_orders_support import create_order, make_plan, stored_order, wallet_of


@pytest.fixture
def settings_overrides() -> dict[str, Any]:
    return {"gateways": "sandbox", "reconcile_after": 0}


def _env(settings: Settings) -> dict[str, str]:
    return base_env(
        PREPAID_DATABASE_URL=settings.database_url,
        PREPAID_SECRET_KEY=settings.secret_key,
        PREPAID_BASE_URL=settings.base_url,
        PREPAID_GATEWAYS="sandbox",
        PREPAID_RECONCILE_AFTER="0",
        PREPAID_EMAIL_BACKEND="memory",
        COLUMNS="200",  # the table's ids on one line
    )


async def test_reconcile_settles_a_lost_payment_and_reports_mismatches(
    app: Any, client: httpx.AsyncClient, settings: Settings, tmp_path: Path
) -> None:
    buyer = await make_customer(app)
    plan = await make_plan(app, credits=100, prices=PRICES)
    order = await create_order(client, buyer, plan=plan, gateway="sandbox")
    await pay_on_sandbox(client, order["checkout"]["redirect_url"])
    assert (await stored_order(app, order["id"])).status == "pending"

    done = run_prepaid("reconcile", env=_env(settings), cwd=tmp_path)
    assert done.returncode == 0, done.output
    assert "Settling pending orders" in done.output
    assert "1 order(s) settled" in done.output
    assert f"{order['id']} (sandbox): pending -> fulfilled" in done.output
    assert "0 with mismatches" in done.output
    assert (await stored_order(app, order["id"])).status == "fulfilled"
    assert (await wallet_of(app, buyer))["balance"] == 100

    stranger = await app.state.gateways["sandbox"].create_payment(
        reference=f"elsewhere{secrets.token_hex(4)}", amount=5_000, currency="INR", description="not ours"
    )
    flagged = run_prepaid("reconcile", "--no-settle", env=_env(settings), cwd=tmp_path)
    assert flagged.returncode == 1, flagged.output
    assert "1 with mismatches" in flagged.output
    assert stranger.gateway_order_id in flagged.output and "not_ours" in flagged.output

    unknown = run_prepaid("reconcile", "--gateway", "paypal", env=_env(settings), cwd=tmp_path)
    assert unknown.returncode == 2, unknown.output
    assert "paypal is not enabled" in unknown.output
