"""The authorisation matrix: every ``/v1`` operation, called by every kind of caller, answers as documented.

``MATRIX`` below is the contract, one row per operation in the OpenAPI document and one column per caller:

- ``anon``: no credentials.
- ``user``: the first user, signed in (bearer access token); the owner of every resource a path id names.
- ``other``: a second user, signed in, acting on the first user's resources (their API key id, their user id).
- ``admin``: a signed-in admin.
- ``key_usage`` / ``key_balance``: the first user's own API keys, holding only ``usage:write`` / ``balance:read``.
- ``server``: a server key an admin minted with every scope except ``admin``.
- ``server_admin``: a server key an admin minted with the ``admin`` scope.

Ledger rows act on the first user's wallets (``?customer=`` names the first user on the wallet lists, so
``other`` is refused naming someone else); each money-moving call gets a funded wallet, a fresh hold and a
fresh ``idempotency_key``. Debits and holds are made by apps (API keys with ``usage:write``) and admins, not by
a signed-in person; grants by admins only.

A cell is the exact status expected. 401 must be ``authentication_error``, 403 ``permission_error`` (wrong
role, a missing scope, or an API key on a route for signed-in people only), 404 ``not_found`` (another user's
resource: its existence is not revealed), and 2xx the route's success answer. Every request carries a valid
body, so what is tested is who may call, not what they send. Public routes (``/v1/auth/*``, the catalog's reads)
answer every caller, the anonymous one included.

A route added later without a row here fails ``test_matrix_covers_every_v1_operation``.
"""

from __future__ import annotations

import json
import re
import secrets
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import date, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import select

from prepaid.app import create_app
from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.catalog import service as catalog_service
from prepaid.db import Database, utcnow
from prepaid.ledger import service as ledger_service
from prepaid.metering import ai_holds as metering_ai_holds
from prepaid.metering import sessions as metering_sessions
from prepaid.notify import realtime, webhooks_out
from prepaid.notify import service as notify_service
from prepaid.notify.models import OutboxMessage, WebhookDelivery
from prepaid.payments import disputes as payments_disputes
from prepaid.payments import refunds as payments_refunds
from prepaid.payments import service as payments_service
from prepaid.payments.gateways import sandbox
from prepaid.settings import Settings
from tests import factories
from tests.factories import make_api_key, make_customer, make_user

ROLES = ("anon", "user", "other", "admin", "key_usage", "key_balance", "server", "server_admin")

MATRIX_TABLE = """
method  path                                  anon  user  other  admin  key_usage  key_balance  server  server_admin
POST    /v1/auth/register                     201   201   201    201    201        201          201     201
POST    /v1/auth/login                        200   200   200    200    200        200          200     200
POST    /v1/auth/refresh                      200   200   200    200    200        200          200     200
POST    /v1/auth/logout                       200   200   200    200    200        200          200     200
POST    /v1/auth/password_reset               202   202   202    202    202        202          202     202
POST    /v1/auth/password_reset/confirm       200   200   200    200    200        200          200     200
POST    /v1/auth/verify_email                 200   200   200    200    200        200          200     200
POST    /v1/auth/verify_email/resend          202   202   202    202    202        202          202     202
GET     /v1/me                                401   200   200    200    200        200          200     200
PATCH   /v1/me                                401   200   200    200    403        403          403     403
POST    /v1/me/delete                         401   200   200    200    403        403          403     403
GET     /v1/users                             401   403   403    200    403        403          403     200
GET     /v1/users/{user_id}                   401   403   403    200    403        403          403     200
PATCH   /v1/users/{user_id}                   401   403   403    200    403        403          403     200
POST    /v1/api_keys                          401   201   201    201    403        403          403     403
GET     /v1/api_keys                          401   200   200    200    403        403          403     403
DELETE  /v1/api_keys/{key_id}                 401   200   404    200    403        403          403     403
GET     /v1/audit_log                         401   403   403    200    403        403          403     200
GET     /v1/wallets                           401   200   403    200    403        200          200     200
POST    /v1/wallets                           401   201   403    201    403        403          201     201
GET     /v1/wallets/{wallet_id}               401   200   404    200    403        200          200     200
PATCH   /v1/wallets/{wallet_id}               401   200   404    200    403        403          200     200
GET     /v1/wallets/{wallet_id}/transactions  401   200   404    200    403        200          200     200
GET     /v1/wallets/{wallet_id}/lots          401   200   404    200    403        200          200     200
GET     /v1/transactions/{transaction_id}     401   200   404    200    403        200          200     200
POST    /v1/wallets/{wallet_id}/grants        401   403   403    201    403        403          403     201
POST    /v1/wallets/{wallet_id}/debits        401   403   403    201    201        403          201     201
POST    /v1/holds                             401   403   403    201    201        403          201     201
GET     /v1/holds/{hold_id}                   401   200   404    200    200        200          200     200
POST    /v1/holds/{hold_id}/capture           401   403   403    200    200        403          200     200
POST    /v1/holds/{hold_id}/release           401   403   403    200    200        403          200     200
POST    /v1/sessions                          401   403   403    201    201        403          201     201
GET     /v1/sessions                          401   200   403    200    200        200          200     200
GET     /v1/sessions/{session_id}             401   200   404    200    200        200          200     200
POST    /v1/sessions/{session_id}/heartbeat   401   403   403    200    200        403          200     200
POST    /v1/sessions/{session_id}/stop        401   403   403    200    200        403          200     200
POST    /v1/transfers                         401   201   404    201    201        403          201     201
PUT     /v1/customers/{external_id}           401   403   403    200    403        403          200     200
GET     /v1/customers/{external_id}           401   200   404    200    403        200          200     200
GET     /v1/customers/{external_id}/transactions  401  200  404  200  403  200  200  200
POST    /v1/usage                             401   403   403    201    201        403          201     201
POST    /v1/usage/batch                       401   403   403    200    200        403          200     200
GET     /v1/usage                             401   200   403    200    403        200          200     200
GET     /v1/usage/summary                     401   200   403    200    403        200          200     200
GET     /v1/plans                             200   200   200    200    200        200          200     200
POST    /v1/plans                             401   403   403    201    403        403          403     201
GET     /v1/plans/{plan_id}                   200   200   200    200    200        200          200     200
PATCH   /v1/plans/{plan_id}                   401   403   403    200    403        403          403     200
POST    /v1/plans/{plan_id}/archive           401   403   403    200    403        403          403     200
GET     /v1/catalog/unit_prices               200   200   200    200    200        200          200     200
PUT     /v1/catalog/unit_prices               401   403   403    200    403        403          403     200
GET     /v1/meters                            200   200   200    200    200        200          200     200
POST    /v1/meters                            401   403   403    201    403        403          403     201
GET     /v1/meters/{code}                     200   200   200    200    200        200          200     200
PATCH   /v1/meters/{code}                     401   403   403    200    403        403          403     200
POST    /v1/meters/{code}/archive             401   403   403    200    403        403          403     200
GET     /v1/discount_slabs                    200   200   200    200    200        200          200     200
PUT     /v1/discount_slabs                    401   403   403    200    403        403          403     200
GET     /v1/offers                            200   200   200    200    200        200          200     200
POST    /v1/offers                            401   403   403    201    403        403          403     201
GET     /v1/offers/{offer_id}                 200   200   200    200    200        200          200     200
PATCH   /v1/offers/{offer_id}                 401   403   403    200    403        403          403     200
POST    /v1/offers/{offer_id}/archive         401   403   403    200    403        403          403     200
GET     /v1/coupons                           401   403   403    200    403        403          403     200
POST    /v1/coupons                           401   403   403    201    403        403          403     201
POST    /v1/coupons/validate                  200   200   200    200    200        200          200     200
GET     /v1/coupons/{code}                    401   403   403    200    403        403          403     200
PATCH   /v1/coupons/{code}                    401   403   403    200    403        403          403     200
POST    /v1/coupons/{code}/archive            401   403   403    200    403        403          403     200
GET     /v1/coupons/{code}/assignments        401   403   403    200    403        403          403     200
POST    /v1/coupons/{code}/assignments        401   403   403    200    403        403          403     200
DELETE  /v1/coupons/{code}/assignments/{user_id}  401  403  403  200  403  403  403  200
GET     /v1/me/coupons                        401   200   200    200    200        200          200     200
POST    /v1/quotes                            200   200   200    200    200        200          200     200
POST    /v1/orders                            401   201   201    201    403        403          201     201
GET     /v1/orders                            401   200   200    200    403        200          200     200
GET     /v1/orders/{order_id}                 401   200   404    200    403        200          200     200
POST    /v1/orders/{order_id}/verify          401   200   404    200    403        403          200     200
POST    /v1/orders/{order_id}/retry           401   200   404    200    403        403          200     200
POST    /v1/orders/{order_id}/cancel          401   200   404    200    403        403          200     200
POST    /v1/webhooks/{gateway}                200   200   200    200    200        200          200     200
GET     /v1/admin/gateway_orders              401   403   403    200    403        403          403     200
GET     /v1/admin/stats                       401   403   403    200    403        403          403     200
POST    /v1/guest_orders                      404   404   404    404    404        404          404     404
POST    /v1/orders/{order_id}/refunds     401   403   403    201    403        403          403     201
GET     /v1/refunds                           401   403   403    200    403        403          403     200
GET     /v1/refunds/{refund_id}               401   403   403    200    403        403          403     200
POST    /v1/disputes                          401   201   404    201    403        403          201     201
GET     /v1/disputes                          401   200   200    200    403        200          200     200
GET     /v1/disputes/{dispute_id}             401   200   404    200    403        200          200     200
POST    /v1/disputes/{dispute_id}/messages    401   201   404    201    403        403          201     201
POST    /v1/disputes/{dispute_id}/resolve     401   403   403    200    403        403          403     200
GET     /v1/notifications                     401   200   200    200    403        403          403     403
POST    /v1/notifications/{notification_id}/read  401  200  404  404  403  403  403  403
DELETE  /v1/notifications/{notification_id}   401   200   404    404    403        403          403     403
POST    /v1/webhook_endpoints                 401   403   403    201    403        403          403     201
GET     /v1/webhook_endpoints                 401   403   403    200    403        403          403     200
DELETE  /v1/webhook_endpoints/{endpoint_id}   401   403   403    200    403        403          403     200
GET     /v1/webhook_endpoints/{endpoint_id}/deliveries  401  403  403  200  403  403  403  200
POST    /v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver  401  403  403  201  403  403  403  201
"""

ERROR_TYPES = {401: "authentication_error", 403: "permission_error", 404: "not_found"}


def _parse(table: str) -> dict[tuple[str, str], dict[str, int]]:
    lines = [line.split() for line in table.strip().splitlines()]
    header, rows = lines[0], lines[1:]
    assert tuple(header[2:]) == ROLES, "the table's columns must be ROLES, in order"
    matrix: dict[tuple[str, str], dict[str, int]] = {}
    for method, path, *cells in rows:
        assert len(cells) == len(ROLES), f"{method} {path}: one cell per role"
        assert (method, path) not in matrix, f"{method} {path} appears twice"
        matrix[(method, path)] = dict(zip(ROLES, (int(cell) for cell in cells), strict=True))
    return matrix


MATRIX = _parse(MATRIX_TABLE)


# ---------------------------------------------------------------- the callers


@dataclass
class World:
    app: Any
    user: factories.TestUser
    other: factories.TestUser
    admin: factories.TestUser
    keys: dict[str, factories.TestKey]
    with_password: factories.TestUser | None = None  # made once, on first use: for signing in

    @property
    def db(self) -> Database:
        database: Database = self.app.state.db
        return database

    def caller(self, role: str) -> factories.TestUser | None:
        """The person a role signs in as (None for the anonymous caller and for keys)."""
        return {"user": self.user, "other": self.other, "admin": self.admin}.get(role)

    def headers(self, role: str) -> dict[str, str]:
        if role == "anon":
            return {}
        person = self.caller(role)
        if person is not None:
            return person.headers
        return self.keys[role].headers


async def make_world(app: Any) -> World:
    user = await make_customer(app)
    admin = await make_customer(app, roles=["user", "admin"])
    keys = {
        "key_usage": await make_api_key(app, user, scopes=["usage:write"]),
        "key_balance": await make_api_key(app, user, scopes=["balance:read"]),
        "server": await make_api_key(
            app, admin, scopes=["customers:write", "orders:write", "usage:write", "balance:read"], server=True
        ),
        "server_admin": await make_api_key(app, admin, scopes=["admin"], server=True),
    }
    return World(app=app, user=user, other=await make_customer(app), admin=admin, keys=keys)


# ---------------------------------------------------------------- one valid request per operation


@dataclass
class Call:
    path: str
    json: dict[str, Any] | None = None
    content: bytes | None = None  # a raw body (a webhook) instead of ``json``, with its own ``headers``
    headers: dict[str, str] = field(default_factory=dict)


Prepare = Callable[[World, str], Awaitable[Call]]


async def _fresh_refresh_token(world: World) -> str:
    async with world.db.transaction() as session:
        user = await auth_service.get_user(session, world.user.id)
        pair = await auth_service.issue_tokens(session, user=user, settings=world.app.state.settings)
    return pair.refresh_token


async def _emailed_token(world: World, *, email: str, template: str) -> str:
    """The token in the link of the newest email of ``template`` sent to ``email`` (through the outbox)."""
    async with world.db.transaction(write=False) as session:
        message = await session.scalar(
            select(OutboxMessage)
            .where(OutboxMessage.recipient == email, OutboxMessage.template == template)
            .order_by(OutboxMessage.id.desc())
            .limit(1)
        )
    assert message is not None, f"no {template} email to {email}"
    found = re.search(r"token=([^&\s]+)", str(message.payload["link"]))
    assert found is not None
    return found.group(1)


async def _register(world: World, role: str) -> Call:
    email = f"new-{secrets.token_hex(4)}@example.com"
    return Call("/v1/auth/register", {"email": email, "password": "a long enough password", "name": "New"})


async def _login(world: World, role: str) -> Call:
    world.with_password = person = world.with_password or await make_user(world.app)
    return Call("/v1/auth/login", {"email": person.email, "password": person.password})


async def _refresh(world: World, role: str) -> Call:
    return Call("/v1/auth/refresh", {"refresh_token": await _fresh_refresh_token(world)})


async def _logout(world: World, role: str) -> Call:
    return Call("/v1/auth/logout", {"refresh_token": await _fresh_refresh_token(world)})


async def _password_reset(world: World, role: str) -> Call:
    return Call("/v1/auth/password_reset", {"email": world.user.email})


async def _password_reset_confirm(world: World, role: str) -> Call:
    # A throwaway account: confirming a reset signs its owner out everywhere.
    person = await make_customer(world.app)
    async with world.db.transaction() as session:
        await auth_service.request_password_reset(
            session, email=person.email, settings=world.app.state.settings
        )
    token = await _emailed_token(world, email=person.email, template="password_reset")
    return Call("/v1/auth/password_reset/confirm", {"token": token, "password": "a brand new password"})


async def _verify_email(world: World, role: str) -> Call:
    person = await make_customer(world.app, verified=False)
    async with world.db.transaction() as session:
        user = await auth_service.get_user(session, person.id)
        await auth_service.send_email_verification(session, user=user, settings=world.app.state.settings)
    token = await _emailed_token(world, email=person.email, template="verify_email")
    return Call("/v1/auth/verify_email", {"token": token})


async def _verify_email_resend(world: World, role: str) -> Call:
    return Call("/v1/auth/verify_email/resend", {"email": "someone@example.com"})


async def _me(world: World, role: str) -> Call:
    return Call("/v1/me")


async def _update_me(world: World, role: str) -> Call:
    return Call("/v1/me", {"name": "Renamed Myself"})


async def _delete_me(world: World, role: str) -> Call:
    return Call("/v1/me/delete", {})


async def _users(world: World, role: str) -> Call:
    return Call("/v1/users")


async def _user(world: World, role: str) -> Call:
    return Call(f"/v1/users/{world.user.id}")


async def _update_user(world: World, role: str) -> Call:
    return Call(f"/v1/users/{world.user.id}", {"name": "Renamed By Someone"})


async def _create_key(world: World, role: str) -> Call:
    return Call("/v1/api_keys", {"name": "ci", "scopes": ["balance:read"]})


async def _list_keys(world: World, role: str) -> Call:
    return Call("/v1/api_keys")


async def _revoke_key(world: World, role: str) -> Call:
    key = await make_api_key(world.app, world.user, scopes=["balance:read"])
    return Call(f"/v1/api_keys/{key.id}")


async def _audit_log(world: World, role: str) -> Call:
    return Call("/v1/audit_log")


async def _user_wallet(world: World) -> str:
    async with world.db.transaction(write=False) as session:
        wallet = await ledger_service.default_wallet(session, user_id=world.user.id)
    return wallet.id


async def _funded_wallet(world: World, amount: int = 100) -> str:
    wallet_id = await _user_wallet(world)
    async with world.db.transaction() as session:
        await ledger_service.grant(
            session, wallet_id=wallet_id, amount=amount, idempotency_key=f"matrix:{secrets.token_hex(8)}"
        )
    return wallet_id


async def _pending_hold(world: World) -> str:
    wallet_id = await _funded_wallet(world)
    async with world.db.transaction() as session:
        movement = await ledger_service.hold(
            session,
            wallet_id=wallet_id,
            amount=10,
            expires_at=utcnow() + timedelta(hours=1),
            idempotency_key=f"matrix:{secrets.token_hex(8)}",
        )
    assert movement.hold is not None
    return movement.hold.id


def _key() -> str:
    return f"matrix-{secrets.token_hex(8)}"


async def _wallets(world: World, role: str) -> Call:
    return Call(f"/v1/wallets?customer={world.user.id}")


async def _create_wallet(world: World, role: str) -> Call:
    return Call(f"/v1/wallets?customer={world.user.id}", {"name": f"agent of {role}"})


async def _wallet(world: World, role: str) -> Call:
    return Call(f"/v1/wallets/{await _user_wallet(world)}")


async def _update_wallet(world: World, role: str) -> Call:
    return Call(f"/v1/wallets/{await _user_wallet(world)}", {"name": "Renamed wallet"})


async def _wallet_transactions(world: World, role: str) -> Call:
    return Call(f"/v1/wallets/{await _funded_wallet(world)}/transactions")


async def _wallet_lots(world: World, role: str) -> Call:
    return Call(f"/v1/wallets/{await _funded_wallet(world)}/lots")


async def _transaction(world: World, role: str) -> Call:
    wallet_id = await _user_wallet(world)
    async with world.db.transaction() as session:
        movement = await ledger_service.grant(session, wallet_id=wallet_id, amount=5, idempotency_key=_key())
    return Call(f"/v1/transactions/{movement.transaction.id}")


async def _grant(world: World, role: str) -> Call:
    return Call(f"/v1/wallets/{await _user_wallet(world)}/grants", {"amount": 50, "idempotency_key": _key()})


async def _debit(world: World, role: str) -> Call:
    return Call(f"/v1/wallets/{await _funded_wallet(world)}/debits", {"amount": 7, "idempotency_key": _key()})


async def _create_hold(world: World, role: str) -> Call:
    body = {"wallet": await _funded_wallet(world), "amount": 7, "expires_in": 60, "idempotency_key": _key()}
    return Call("/v1/holds", body)


async def _hold(world: World, role: str) -> Call:
    return Call(f"/v1/holds/{await _pending_hold(world)}")


async def _capture(world: World, role: str) -> Call:
    return Call(f"/v1/holds/{await _pending_hold(world)}/capture", {"amount": 4, "idempotency_key": _key()})


async def _release(world: World, role: str) -> Call:
    return Call(f"/v1/holds/{await _pending_hold(world)}/release", {"idempotency_key": _key()})


async def _transfer(world: World, role: str) -> Call:
    source = await _funded_wallet(world)
    async with world.db.transaction() as session:
        target = await ledger_service.open_wallet(session, user_id=world.user.id, name="agent")
    body = {"from_wallet": source, "to_wallet": target.id, "amount": 9, "idempotency_key": _key()}
    return Call("/v1/transfers", body)


# ---------------------------------------------------------------- metering: customers by external id, usage


async def _external_id(world: World) -> str:
    """The first user's external id (given one on first use), as an app names its customer."""
    async with world.db.transaction() as session:
        user = await auth_service.get_user(session, world.user.id)
        if user.external_id is None:
            user.external_id = f"matrix-{secrets.token_hex(6)}"
        return user.external_id


async def _put_customer(world: World, role: str) -> Call:
    return Call(f"/v1/customers/{await _external_id(world)}", {"name": "Matrix"})


async def _customer(world: World, role: str) -> Call:
    return Call(f"/v1/customers/{await _external_id(world)}")


async def _customer_transactions(world: World, role: str) -> Call:
    return Call(f"/v1/customers/{await _external_id(world)}/transactions")


async def _usage_event(world: World) -> dict[str, Any]:
    meter = await _catalog_meter(world)
    wallet = await _funded_wallet(world)
    return {"id": f"matrix-{secrets.token_hex(8)}", "wallet": wallet, "meter": meter, "quantity": 3}


async def _record_usage(world: World, role: str) -> Call:
    return Call("/v1/usage", await _usage_event(world))


async def _record_usage_batch(world: World, role: str) -> Call:
    return Call("/v1/usage/batch", {"events": [await _usage_event(world)]})


async def _usage_list(world: World, role: str) -> Call:
    return Call(f"/v1/usage?customer={world.user.id}")


async def _usage_summary(world: World, role: str) -> Call:
    return Call(f"/v1/usage/summary?customer={world.user.id}")


# ---------------------------------------------------------------- metering: AI holds, metered sessions


async def _matrix_meter(world: World, code: str, **fields: Any) -> str:
    async with world.db.transaction(write=False) as session:
        if code in {meter.code for meter in await catalog_service.list_meters(session)}:
            return code
    async with world.db.transaction() as session:
        meter = await catalog_service.create_meter(
            session, actor=_catalog_actor(world), code=code, name=code, **fields
        )
    return meter.code


async def _ai_hold_body(world: World) -> dict[str, Any]:
    meter = await _matrix_meter(
        world, "matrix-model", kind="model", input_price=1_000_000, output_price=1_000_000
    )
    wallet = await _funded_wallet(world)
    return {
        "wallet": wallet,
        "estimate": {"meter": meter, "input_tokens": 3, "max_output_tokens": 4},
        "idempotency_key": _key(),
    }


async def _create_ai_hold(world: World, role: str) -> Call:
    return Call("/v1/holds", await _ai_hold_body(world))


async def _capture_ai_hold(world: World, role: str) -> Call:
    body = await _ai_hold_body(world)
    async with world.db.transaction() as session:
        movement = await metering_ai_holds.hold_estimate(
            session,
            wallet_id=body["wallet"],
            owner_id=None,
            meter=body["estimate"]["meter"],
            input_tokens=3,
            max_output_tokens=4,
            cached_input_tokens=0,
            expires_at=utcnow() + timedelta(hours=1),
            idempotency_key=f"matrix:{secrets.token_hex(8)}",
        )
    assert movement.hold is not None
    return Call(
        f"/v1/holds/{movement.hold.id}/capture",
        {"usage": {"input_tokens": 3, "output_tokens": 2}, "idempotency_key": _key()},
    )


async def _session_meter(world: World) -> str:
    return await _matrix_meter(world, "matrix-minute", kind="unit", unit="minute", price=60)


async def _start_session(world: World, role: str) -> Call:
    await _funded_wallet(world)
    return Call("/v1/sessions", {"meter": await _session_meter(world), "customer": world.user.id})


async def _running_session(world: World) -> str:
    meter = await _session_meter(world)
    await _funded_wallet(world)
    async with world.db.transaction() as session:
        wallet = await ledger_service.default_wallet(session, user_id=world.user.id)
        metered = await metering_sessions.start_session(
            session, user_id=world.user.id, wallet=wallet, meter_code=meter, now=utcnow()
        )
    return metered.id


async def _sessions(world: World, role: str) -> Call:
    return Call(f"/v1/sessions?customer={world.user.id}")


async def _session(world: World, role: str) -> Call:
    return Call(f"/v1/sessions/{await _running_session(world)}")


async def _session_heartbeat(world: World, role: str) -> Call:
    return Call(f"/v1/sessions/{await _running_session(world)}/heartbeat", {"metrics": {"viewers": 1}})


async def _stop_session(world: World, role: str) -> Call:
    return Call(f"/v1/sessions/{await _running_session(world)}/stop", {})


# ---------------------------------------------------------------- catalog (admin writes; public reads)


def _catalog_actor(world: World) -> audit_service.Actor:
    return audit_service.Actor(user_id=world.admin.id)


async def _catalog_plan(world: World) -> str:
    async with world.db.transaction() as session:
        plan = await catalog_service.create_plan(
            session,
            actor=_catalog_actor(world),
            code=f"matrix-{secrets.token_hex(4)}",
            name="Matrix plan",
            credits=100,
            prices={"INR": 100_000},
        )
    return plan.id


async def _catalog_meter(world: World) -> str:
    async with world.db.transaction() as session:
        meter = await catalog_service.create_meter(
            session,
            actor=_catalog_actor(world),
            code=f"matrix-{secrets.token_hex(4)}",
            name="Matrix meter",
            kind="unit",
            unit="call",
            price=1,
        )
    return meter.code


async def _catalog_offer(world: World) -> str:
    async with world.db.transaction() as session:
        offer = await catalog_service.create_offer(
            session, actor=_catalog_actor(world), name="Matrix offer", kind="percent_off", percent_bps=500
        )
    return offer.id


async def _plans(world: World, role: str) -> Call:
    return Call("/v1/plans")


async def _create_plan(world: World, role: str) -> Call:
    body = {"code": f"new-{secrets.token_hex(4)}", "name": "New", "credits": 10, "prices": {"INR": 1_000}}
    return Call("/v1/plans", body)


async def _plan(world: World, role: str) -> Call:
    return Call(f"/v1/plans/{await _catalog_plan(world)}")


async def _update_plan(world: World, role: str) -> Call:
    return Call(f"/v1/plans/{await _catalog_plan(world)}", {"name": "Renamed plan"})


async def _archive_plan(world: World, role: str) -> Call:
    return Call(f"/v1/plans/{await _catalog_plan(world)}/archive")


async def _unit_prices(world: World, role: str) -> Call:
    return Call("/v1/catalog/unit_prices")


async def _replace_unit_prices(world: World, role: str) -> Call:
    return Call("/v1/catalog/unit_prices", {"unit_prices": [{"currency": "INR", "unit_amount": 1_000}]})


async def _meters(world: World, role: str) -> Call:
    return Call("/v1/meters")


async def _create_meter(world: World, role: str) -> Call:
    body = {"code": f"new-{secrets.token_hex(4)}", "name": "New", "kind": "unit", "unit": "call", "price": 1}
    return Call("/v1/meters", body)


async def _meter(world: World, role: str) -> Call:
    return Call(f"/v1/meters/{await _catalog_meter(world)}")


async def _update_meter(world: World, role: str) -> Call:
    return Call(f"/v1/meters/{await _catalog_meter(world)}", {"price": 2})


async def _archive_meter(world: World, role: str) -> Call:
    return Call(f"/v1/meters/{await _catalog_meter(world)}/archive")


async def _discount_slabs(world: World, role: str) -> Call:
    return Call("/v1/discount_slabs")


async def _replace_discount_slabs(world: World, role: str) -> Call:
    return Call("/v1/discount_slabs", {"slabs": [{"min_credits": 1_000, "percent": "5"}]})


async def _offers(world: World, role: str) -> Call:
    return Call("/v1/offers")


async def _create_offer(world: World, role: str) -> Call:
    return Call("/v1/offers", {"name": "New offer", "kind": "bonus_credits", "bonus_credits": 10})


async def _offer(world: World, role: str) -> Call:
    return Call(f"/v1/offers/{await _catalog_offer(world)}")


async def _update_offer(world: World, role: str) -> Call:
    return Call(f"/v1/offers/{await _catalog_offer(world)}", {"name": "Renamed offer"})


async def _archive_offer(world: World, role: str) -> Call:
    return Call(f"/v1/offers/{await _catalog_offer(world)}/archive")


# ---------------------------------------------------------------- coupons and quotes (admin writes; anyone quotes)


async def _matrix_coupon(world: World, *, assign_to: str | None = None) -> str:
    """A public 10 % coupon on every plan (allotted to ``assign_to`` if given); its code, in lower case."""
    async with world.db.transaction() as session:
        coupon = await catalog_service.create_coupon(
            session,
            actor=_catalog_actor(world),
            code=f"MATRIX-{secrets.token_hex(4)}",
            kind="percent_off",
            percent_bps=1000,
        )
        if assign_to is not None:
            await catalog_service.assign_coupon(
                session, code=coupon.code, user_ids=[assign_to], actor=_catalog_actor(world)
            )
    return coupon.code.lower()


async def _matrix_purchase(world: World) -> dict[str, Any]:
    plan_id = await _catalog_plan(world)
    async with world.db.transaction(write=False) as session:
        plan = await catalog_service.get_plan(session, plan_id)
    return {"plan": plan.code, "currency": "INR"}


async def _coupons(world: World, role: str) -> Call:
    return Call("/v1/coupons")


async def _create_coupon(world: World, role: str) -> Call:
    return Call("/v1/coupons", {"code": f"NEW-{secrets.token_hex(4)}", "kind": "percent_off", "percent": 5})


async def _validate_coupon(world: World, role: str) -> Call:
    purchase = await _matrix_purchase(world)
    return Call("/v1/coupons/validate", {**purchase, "coupon": await _matrix_coupon(world)})


async def _coupon(world: World, role: str) -> Call:
    return Call(f"/v1/coupons/{await _matrix_coupon(world)}")


async def _update_coupon(world: World, role: str) -> Call:
    return Call(f"/v1/coupons/{await _matrix_coupon(world)}", {"percent": 20})


async def _archive_coupon(world: World, role: str) -> Call:
    return Call(f"/v1/coupons/{await _matrix_coupon(world)}/archive")


async def _coupon_assignments(world: World, role: str) -> Call:
    return Call(f"/v1/coupons/{await _matrix_coupon(world, assign_to=world.user.id)}/assignments")


async def _assign_coupon(world: World, role: str) -> Call:
    return Call(f"/v1/coupons/{await _matrix_coupon(world)}/assignments", {"user_ids": [world.user.id]})


async def _withdraw_coupon(world: World, role: str) -> Call:
    code = await _matrix_coupon(world, assign_to=world.user.id)
    return Call(f"/v1/coupons/{code}/assignments/{world.user.id}")


async def _my_coupons(world: World, role: str) -> Call:
    return Call("/v1/me/coupons")


async def _quote(world: World, role: str) -> Call:
    return Call("/v1/quotes", {**await _matrix_purchase(world), "coupon": await _matrix_coupon(world)})


# ---------------------------------------------------------------- orders (the default sandbox gateway) and webhooks


async def _sandbox_order(world: World) -> tuple[str, str]:
    """A pending order of the first user on the sandbox: its id and its attempt's id."""
    purchase = await _matrix_purchase(world)
    order = await payments_service.place_order(
        world.db,
        buyer_id=world.user.id,
        purchase=payments_service.Purchase(currency="INR", plan_code=purchase["plan"], gateway="sandbox"),
        gateways=world.app.state.gateways,
        settings=world.app.state.settings,
        client_ip=None,
        user_agent=None,
    )
    async with world.db.transaction(write=False) as session:
        attempts = await payments_service.attempts_of(session, order.id)
    return order.id, attempts[-1].id


async def _create_order(world: World, role: str) -> Call:
    return Call("/v1/orders", {**await _matrix_purchase(world), "gateway": "sandbox"})


async def _orders(world: World, role: str) -> Call:
    return Call("/v1/orders")


async def _order(world: World, role: str) -> Call:
    order_id, _attempt = await _sandbox_order(world)
    return Call(f"/v1/orders/{order_id}")


async def _verify_order(world: World, role: str) -> Call:
    """Paid with the sandbox's test card; the body is the signed callback its checkout hands back."""
    order_id, attempt = await _sandbox_order(world)
    gateway = world.app.state.gateways["sandbox"]
    card = sandbox.read_card("4111 1111 1111 1111", "12/40", "123", "Matrix", today=date.today())
    settled = await sandbox.pay(
        world.db, gateway.config, attempt, method="card", outcome="captured", card=card
    )
    return Call(f"/v1/orders/{order_id}/verify", dict(httpx.URL(settled.redirect_url).params))


async def _retry_order(world: World, role: str) -> Call:
    order_id, attempt = await _sandbox_order(world)
    async with world.db.transaction() as session:
        await payments_service.record_failure(session, attempt_id=attempt, reason="declined", now=utcnow())
    return Call(f"/v1/orders/{order_id}/retry", {})


async def _cancel_order(world: World, role: str) -> Call:
    order_id, _attempt = await _sandbox_order(world)
    return Call(f"/v1/orders/{order_id}/cancel", {})


async def _webhook(world: World, role: str) -> Call:
    """A webhook signed by the sandbox (authenticated by its signature, whoever the caller is)."""
    order_id, _attempt = await _sandbox_order(world)
    async with world.db.transaction(write=False) as session:
        gateway_order_id = (await payments_service.attempts_of(session, order_id))[-1].gateway_order_id
    payment = {"id": f"pay_matrix{secrets.token_hex(6)}", "entity": "payment", "amount": 100_000}
    payment |= {"currency": "INR", "status": "failed", "order_id": gateway_order_id, "method": "card"}
    body = {"entity": "event", "event": "payment.failed", "payload": {"payment": {"entity": payment}}}
    raw = json.dumps(body).encode()
    signature = world.app.state.gateways["sandbox"].config.webhook_signature(raw)
    headers = {
        "Content-Type": "application/json",
        "X-Razorpay-Signature": signature,
        "x-razorpay-event-id": f"evt_matrix_{secrets.token_hex(8)}",
    }
    return Call("/v1/webhooks/sandbox", content=raw, headers=headers)


# ---------------------------------------------------------------- reconciliation and guest checkout


async def _gateway_orders(world: World, role: str) -> Call:
    await _sandbox_order(world)
    return Call("/v1/admin/gateway_orders?gateway=sandbox")


async def _admin_stats(world: World, role: str) -> Call:
    return Call("/v1/admin/stats?from=2026-01-01&to=2026-01-31")


async def _guest_order(world: World, role: str) -> Call:
    """Guest checkout is off by default (PREPAID_GUEST_CHECKOUT): the route answers 404 to every caller."""
    purchase = await _matrix_purchase(world)
    return Call("/v1/guest_orders", {**purchase, "email": f"guest-{secrets.token_hex(4)}@example.com"})


# ---------------------------------------------------------------- notifications (the first user's own)


async def _user_notification(world: World) -> str:
    async with world.db.transaction() as session:
        made = await notify_service.notify(
            session,
            user_id=world.user.id,
            kind="low_balance",
            data={"wallet_id": "wal_matrix", "balance": 5, "threshold": 10},
        )
    assert made is not None
    return made.id


async def _notifications(world: World, role: str) -> Call:
    return Call("/v1/notifications?unread=true")


async def _read_notification(world: World, role: str) -> Call:
    return Call(f"/v1/notifications/{await _user_notification(world)}/read", {})


async def _delete_notification(world: World, role: str) -> Call:
    return Call(f"/v1/notifications/{await _user_notification(world)}")


# ---------------------------------------------------------------- disputes (on the first user's sandbox orders)


async def _user_dispute(world: World) -> str:
    order_id, _attempt = await _sandbox_order(world)
    async with world.db.transaction() as session:
        dispute = await payments_disputes.open_dispute(
            session,
            order_id=order_id,
            category="other",
            message="Something is off.",
            author_id=world.user.id,
            author_role="customer",
            owner_id=world.user.id,
            now=utcnow(),
        )
    return dispute.id


async def _create_dispute(world: World, role: str) -> Call:
    order_id, _attempt = await _sandbox_order(world)
    return Call("/v1/disputes", {"order": order_id, "category": "not_credited", "message": "No credits."})


async def _disputes(world: World, role: str) -> Call:
    return Call("/v1/disputes")


async def _dispute(world: World, role: str) -> Call:
    return Call(f"/v1/disputes/{await _user_dispute(world)}")


async def _dispute_message(world: World, role: str) -> Call:
    return Call(f"/v1/disputes/{await _user_dispute(world)}/messages", {"message": "Any news?"})


async def _resolve_dispute(world: World, role: str) -> Call:
    return Call(f"/v1/disputes/{await _user_dispute(world)}/resolve", {"resolution": "reject", "note": "No."})


# ---------------------------------------------------------------- refunds (admins', on a paid sandbox order)


async def _paid_sandbox_order(world: World) -> str:
    order_id, attempt = await _sandbox_order(world)
    gateway = world.app.state.gateways["sandbox"]
    card = sandbox.read_card("4111 1111 1111 1111", "12/40", "123", "Matrix", today=date.today())
    settled = await sandbox.pay(
        world.db, gateway.config, attempt, method="card", outcome="captured", card=card
    )
    await payments_service.verify_order(
        world.db,
        order_id=order_id,
        attempt_id=None,
        fields=dict(httpx.URL(settled.redirect_url).params),
        gateways=world.app.state.gateways,
    )
    return order_id


async def _create_refund(world: World, role: str) -> Call:
    return Call(f"/v1/orders/{await _paid_sandbox_order(world)}/refunds", {"amount": 100, "clawback": "none"})


async def _refunds(world: World, role: str) -> Call:
    return Call("/v1/refunds?status=processed")


async def _refund(world: World, role: str) -> Call:
    refund = await payments_refunds.place_refund(
        world.db,
        order_id=await _paid_sandbox_order(world),
        amount=100,
        reason=None,
        clawback="none",
        gateways=world.app.state.gateways,
        actor=None,
    )
    return Call(f"/v1/refunds/{refund.id}")


# ---------------------------------------------------------------- outgoing webhook endpoints (admins')


async def _webhook_endpoint(world: World) -> str:
    async with world.db.transaction() as session:
        endpoint, _secret = await webhooks_out.create_endpoint(
            session,
            url="https://app.example.com/hooks",
            event_types=["order.paid"],
            description=None,
            settings=world.app.state.settings,
        )
    return endpoint.id


async def _webhook_delivery(world: World) -> tuple[str, str]:
    endpoint_id = await _webhook_endpoint(world)
    async with world.db.transaction() as session:
        await realtime.emit(
            session, user_id=world.user.id, type="order.paid", data={"order_id": "ord_matrix"}
        )
        delivery_id = await session.scalar(
            select(WebhookDelivery.id).where(WebhookDelivery.endpoint_id == endpoint_id)
        )
    assert delivery_id is not None
    return endpoint_id, delivery_id


async def _create_webhook_endpoint(world: World, role: str) -> Call:
    return Call(
        "/v1/webhook_endpoints", {"url": "https://app.example.com/hooks", "event_types": ["order.paid"]}
    )


async def _webhook_endpoints(world: World, role: str) -> Call:
    return Call("/v1/webhook_endpoints")


async def _delete_webhook_endpoint(world: World, role: str) -> Call:
    return Call(f"/v1/webhook_endpoints/{await _webhook_endpoint(world)}")


async def _webhook_deliveries(world: World, role: str) -> Call:
    endpoint_id, _delivery_id = await _webhook_delivery(world)
    return Call(f"/v1/webhook_endpoints/{endpoint_id}/deliveries")


async def _redeliver_webhook(world: World, role: str) -> Call:
    endpoint_id, delivery_id = await _webhook_delivery(world)
    return Call(f"/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver")


REQUESTS: dict[tuple[str, str], Prepare] = {
    ("POST", "/v1/auth/register"): _register,
    ("POST", "/v1/auth/login"): _login,
    ("POST", "/v1/auth/refresh"): _refresh,
    ("POST", "/v1/auth/logout"): _logout,
    ("POST", "/v1/auth/password_reset"): _password_reset,
    ("POST", "/v1/auth/password_reset/confirm"): _password_reset_confirm,
    ("POST", "/v1/auth/verify_email"): _verify_email,
    ("POST", "/v1/auth/verify_email/resend"): _verify_email_resend,
    ("GET", "/v1/me"): _me,
    ("PATCH", "/v1/me"): _update_me,
    ("POST", "/v1/me/delete"): _delete_me,
    ("GET", "/v1/users"): _users,
    ("GET", "/v1/users/{user_id}"): _user,
    ("PATCH", "/v1/users/{user_id}"): _update_user,
    ("POST", "/v1/api_keys"): _create_key,
    ("GET", "/v1/api_keys"): _list_keys,
    ("DELETE", "/v1/api_keys/{key_id}"): _revoke_key,
    ("GET", "/v1/audit_log"): _audit_log,
    ("GET", "/v1/wallets"): _wallets,
    ("POST", "/v1/wallets"): _create_wallet,
    ("GET", "/v1/wallets/{wallet_id}"): _wallet,
    ("PATCH", "/v1/wallets/{wallet_id}"): _update_wallet,
    ("GET", "/v1/wallets/{wallet_id}/transactions"): _wallet_transactions,
    ("GET", "/v1/wallets/{wallet_id}/lots"): _wallet_lots,
    ("GET", "/v1/transactions/{transaction_id}"): _transaction,
    ("POST", "/v1/wallets/{wallet_id}/grants"): _grant,
    ("POST", "/v1/wallets/{wallet_id}/debits"): _debit,
    ("POST", "/v1/holds"): _create_hold,
    ("GET", "/v1/holds/{hold_id}"): _hold,
    ("POST", "/v1/holds/{hold_id}/capture"): _capture,
    ("POST", "/v1/holds/{hold_id}/release"): _release,
    ("POST", "/v1/sessions"): _start_session,
    ("GET", "/v1/sessions"): _sessions,
    ("GET", "/v1/sessions/{session_id}"): _session,
    ("POST", "/v1/sessions/{session_id}/heartbeat"): _session_heartbeat,
    ("POST", "/v1/sessions/{session_id}/stop"): _stop_session,
    ("POST", "/v1/transfers"): _transfer,
    ("PUT", "/v1/customers/{external_id}"): _put_customer,
    ("GET", "/v1/customers/{external_id}"): _customer,
    ("GET", "/v1/customers/{external_id}/transactions"): _customer_transactions,
    ("POST", "/v1/usage"): _record_usage,
    ("POST", "/v1/usage/batch"): _record_usage_batch,
    ("GET", "/v1/usage"): _usage_list,
    ("GET", "/v1/usage/summary"): _usage_summary,
    ("GET", "/v1/plans"): _plans,
    ("POST", "/v1/plans"): _create_plan,
    ("GET", "/v1/plans/{plan_id}"): _plan,
    ("PATCH", "/v1/plans/{plan_id}"): _update_plan,
    ("POST", "/v1/plans/{plan_id}/archive"): _archive_plan,
    ("GET", "/v1/catalog/unit_prices"): _unit_prices,
    ("PUT", "/v1/catalog/unit_prices"): _replace_unit_prices,
    ("GET", "/v1/meters"): _meters,
    ("POST", "/v1/meters"): _create_meter,
    ("GET", "/v1/meters/{code}"): _meter,
    ("PATCH", "/v1/meters/{code}"): _update_meter,
    ("POST", "/v1/meters/{code}/archive"): _archive_meter,
    ("GET", "/v1/discount_slabs"): _discount_slabs,
    ("PUT", "/v1/discount_slabs"): _replace_discount_slabs,
    ("GET", "/v1/offers"): _offers,
    ("POST", "/v1/offers"): _create_offer,
    ("GET", "/v1/offers/{offer_id}"): _offer,
    ("PATCH", "/v1/offers/{offer_id}"): _update_offer,
    ("POST", "/v1/offers/{offer_id}/archive"): _archive_offer,
    ("GET", "/v1/coupons"): _coupons,
    ("POST", "/v1/coupons"): _create_coupon,
    ("POST", "/v1/coupons/validate"): _validate_coupon,
    ("GET", "/v1/coupons/{code}"): _coupon,
    ("PATCH", "/v1/coupons/{code}"): _update_coupon,
    ("POST", "/v1/coupons/{code}/archive"): _archive_coupon,
    ("GET", "/v1/coupons/{code}/assignments"): _coupon_assignments,
    ("POST", "/v1/coupons/{code}/assignments"): _assign_coupon,
    ("DELETE", "/v1/coupons/{code}/assignments/{user_id}"): _withdraw_coupon,
    ("GET", "/v1/me/coupons"): _my_coupons,
    ("POST", "/v1/quotes"): _quote,
    ("POST", "/v1/orders"): _create_order,
    ("GET", "/v1/orders"): _orders,
    ("GET", "/v1/orders/{order_id}"): _order,
    ("POST", "/v1/orders/{order_id}/verify"): _verify_order,
    ("POST", "/v1/orders/{order_id}/retry"): _retry_order,
    ("POST", "/v1/orders/{order_id}/cancel"): _cancel_order,
    ("POST", "/v1/webhooks/{gateway}"): _webhook,
    ("GET", "/v1/admin/gateway_orders"): _gateway_orders,
    ("GET", "/v1/admin/stats"): _admin_stats,
    ("POST", "/v1/guest_orders"): _guest_order,
    ("POST", "/v1/orders/{order_id}/refunds"): _create_refund,
    ("GET", "/v1/refunds"): _refunds,
    ("GET", "/v1/refunds/{refund_id}"): _refund,
    ("POST", "/v1/disputes"): _create_dispute,
    ("GET", "/v1/disputes"): _disputes,
    ("GET", "/v1/disputes/{dispute_id}"): _dispute,
    ("POST", "/v1/disputes/{dispute_id}/messages"): _dispute_message,
    ("POST", "/v1/disputes/{dispute_id}/resolve"): _resolve_dispute,
    ("GET", "/v1/notifications"): _notifications,
    ("POST", "/v1/notifications/{notification_id}/read"): _read_notification,
    ("DELETE", "/v1/notifications/{notification_id}"): _delete_notification,
    ("POST", "/v1/webhook_endpoints"): _create_webhook_endpoint,
    ("GET", "/v1/webhook_endpoints"): _webhook_endpoints,
    ("DELETE", "/v1/webhook_endpoints/{endpoint_id}"): _delete_webhook_endpoint,
    ("GET", "/v1/webhook_endpoints/{endpoint_id}/deliveries"): _webhook_deliveries,
    ("POST", "/v1/webhook_endpoints/{endpoint_id}/deliveries/{delivery_id}/redeliver"): _redeliver_webhook,
}

# The same operations with another kind of body: each must answer every caller as its row says. Holds for AI
# calls are the ledger's hold routes with an estimate (and a capture with token counts) instead of an amount.
VARIANTS: dict[tuple[str, str], Callable[[World, str], Awaitable[Call]]] = {
    ("POST", "/v1/holds"): _create_ai_hold,
    ("POST", "/v1/holds/{hold_id}/capture"): _capture_ai_hold,
}

# Operations whose success changes the callers themselves (deleting your account ends your keys too): each
# caller gets a world of its own, so one cell cannot change the answer of the next.
FRESH_WORLD_PER_CALLER = frozenset({("POST", "/v1/me/delete")})


# ---------------------------------------------------------------- the tests


def _v1_operations(app: Any) -> set[tuple[str, str]]:
    paths: dict[str, dict[str, Any]] = app.openapi()["paths"]
    methods = {"get", "put", "post", "delete", "patch", "head", "options", "trace"}
    return {
        (method.upper(), path)
        for path, item in paths.items()
        if path.startswith("/v1/")
        for method in item
        if method in methods
    }


def test_matrix_covers_every_v1_operation(tmp_path: Any) -> None:
    settings = Settings(
        _env_file=None, database_url=f"sqlite+aiosqlite:///{tmp_path}/unused.db", secret_key="x" * 48
    )
    operations = _v1_operations(create_app(settings))
    assert operations, "the OpenAPI document lists no /v1 operation"
    missing = sorted(operations - MATRIX.keys())
    stale = sorted(MATRIX.keys() - operations)
    assert not missing, f"operations without a row in MATRIX_TABLE: {missing}"
    assert not stale, f"rows in MATRIX_TABLE for operations that no longer exist: {stale}"
    assert REQUESTS.keys() == MATRIX.keys(), "every row needs a valid request in REQUESTS"


def _check(method: str, path: str, role: str, expected: int, response: httpx.Response) -> str | None:
    where = f"{method} {path} as {role}"
    if response.status_code != expected:
        return f"{where}: expected {expected}, got {response.status_code} {response.text[:300]}"
    if expected in ERROR_TYPES:
        error = response.json().get("error", {})
        if error.get("type") != ERROR_TYPES[expected]:
            return f"{where}: expected error type {ERROR_TYPES[expected]}, got {response.text[:300]}"
    return None


@pytest.mark.parametrize(("method", "path"), sorted(MATRIX), ids=[f"{m} {p}" for m, p in sorted(MATRIX)])
async def test_each_caller_gets_the_documented_answer(
    app: Any, client: httpx.AsyncClient, method: str, path: str
) -> None:
    prepare = REQUESTS[(method, path)]
    shared = None if (method, path) in FRESH_WORLD_PER_CALLER else await make_world(app)
    failures = []
    for role in ROLES:
        world = shared or await make_world(app)
        call = await prepare(world, role)
        headers = {**world.headers(role), **call.headers}
        if call.content is not None:
            response = await client.request(method, call.path, content=call.content, headers=headers)
        else:
            response = await client.request(method, call.path, json=call.json, headers=headers)
        problem = _check(method, path, role, MATRIX[(method, path)][role], response)
        if problem:
            failures.append(problem)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize(("method", "path"), sorted(VARIANTS), ids=[f"{m} {p}" for m, p in sorted(VARIANTS)])
async def test_each_caller_gets_the_documented_answer_with_the_other_body(
    app: Any, client: httpx.AsyncClient, method: str, path: str
) -> None:
    world = await make_world(app)
    failures = []
    for role in ROLES:
        call = await VARIANTS[(method, path)](world, role)
        response = await client.request(method, call.path, json=call.json, headers=world.headers(role))
        problem = _check(method, path, role, MATRIX[(method, path)][role], response)
        if problem:
            failures.append(problem)
    assert not failures, "\n".join(failures)


async def test_another_users_keys_are_not_listed(app: Any, client: httpx.AsyncClient) -> None:
    world = await make_world(app)
    own = await client.get("/v1/api_keys", headers=world.user.headers)
    others = await client.get("/v1/api_keys", headers=world.other.headers)
    everyone = await client.get("/v1/api_keys", headers=world.admin.headers)
    user_key_ids = {world.keys["key_usage"].id, world.keys["key_balance"].id}
    assert {key["id"] for key in own.json()["data"]} == user_key_ids
    assert others.json()["data"] == []
    assert user_key_ids | {world.keys["server"].id} <= {key["id"] for key in everyone.json()["data"]}


async def test_a_refused_call_changes_nothing(app: Any, client: httpx.AsyncClient) -> None:
    """403 and 404 are not just answers: the other user's attempt left the key working and the name unchanged."""
    world = await make_world(app)
    key = world.keys["key_balance"]
    refused = await client.delete(f"/v1/api_keys/{key.id}", headers=world.other.headers)
    assert refused.status_code == 404
    renamed = await client.patch(
        f"/v1/users/{world.user.id}", json={"name": "Hijacked"}, headers=world.keys["server"].headers
    )
    assert renamed.status_code == 403
    me = await client.get("/v1/me", headers=key.headers)
    assert me.status_code == 200
    assert me.json()["name"] == "Test User"
