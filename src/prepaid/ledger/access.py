"""Who may see and move which ledger objects; the HTTP routes authorise through these.

- A person (signed in) and their own API keys act on that person's wallets only. Another user's wallet, hold
  or transaction answers ``404`` as if it did not exist, so ids reveal nothing.
- An admin (a signed-in admin, or an admin's key carrying the ``admin`` scope) acts on every wallet.
- A server key (minted by an admin, ``server=True``) acts on every customer's wallets within its scopes.
- Scopes: reading wallets, lots and transactions needs ``balance:read``; debits, holds and transfers
  ``usage:write``; opening and renaming wallets ``customers:write`` (a signed-in person holds every scope for
  their own wallets; user keys only ever carry ``usage:write`` and ``balance:read``). The ``admin`` scope
  implies them all.
- Debits and holds are made by apps (an API key with ``usage:write``) or admins, not by a signed-in person
  spending their own credits from a browser; reading a hold is open to its wallet's owner.

The ledger's own exactly-once key for a movement made through the API is the caller's ``idempotency_key``
scoped to the user behind the call (see ``ledger_key``).
"""

from __future__ import annotations

import hashlib

from sqlalchemy.ext.asyncio import AsyncSession

from prepaid.audit import service as audit_service
from prepaid.auth import service as auth_service
from prepaid.auth.service import Principal
from prepaid.errors import NotFound, PermissionDenied
from prepaid.ledger import service
from prepaid.ledger.models import Account, Hold, Transaction

READ = "balance:read"
SPEND = "usage:write"
MANAGE = "customers:write"
LEDGER_KEY_LENGTH = 255  # ledger_transaction.idempotency_key


def has_scope(principal: Principal, scope: str) -> bool:
    return principal.is_admin or principal.has_scope(scope)


def require_scope(principal: Principal, *scopes: str) -> None:
    """The caller holds one of ``scopes`` (an admin holds them all)."""
    if not any(has_scope(principal, scope) for scope in scopes):
        wanted = " or ".join(scopes)
        raise PermissionDenied(
            f"This API key lacks the {wanted} scope.", code="missing_scope", param=scopes[0]
        )


def require_app_or_admin(principal: Principal) -> None:
    """Debits and holds come from an app's API key with ``usage:write``, or from an admin."""
    if principal.is_session and not principal.is_admin:
        raise PermissionDenied(
            "Debits and holds are made with an API key holding usage:write, or by an admin.",
            code="api_key_required",
        )
    require_scope(principal, SPEND)


def acts_for_anyone(principal: Principal, *scopes: str) -> bool:
    """An admin, or a server key holding one of ``scopes``: it may act on any customer's wallets."""
    if principal.is_admin:
        return True
    key = principal.api_key
    return key is not None and key.server and any(scope in key.scopes for scope in scopes)


def _own(principal: Principal, wallet: Account, *scopes: str) -> bool:
    return wallet.user_id == principal.user.id or acts_for_anyone(principal, *scopes)


async def customer_id(session: AsyncSession, principal: Principal, customer: str | None, scope: str) -> str:
    """The user whose wallets a list or a new wallet is for: the caller, or the ``?customer=`` (a user id or
    an external id) an admin or a server key names."""
    if customer is None or customer in (principal.user.id, principal.user.external_id):
        return principal.user.id
    if not acts_for_anyone(principal, scope):
        raise PermissionDenied(
            "Only admins and server keys may name another customer.",
            code="customer_forbidden",
            param="customer",
        )
    return (await auth_service.find_customer(session, customer)).id


async def wallet(
    session: AsyncSession, principal: Principal, wallet_id: str, *scopes: str, param: str = "wallet_id"
) -> Account:
    """A wallet the caller may act on with one of ``scopes``; anyone else's is ``404``."""
    require_scope(principal, *scopes)
    try:
        found = await service.get_wallet(session, wallet_id)
    except NotFound:
        found = None
    if found is None or not _own(principal, found, *scopes):
        raise NotFound(f"No wallet {wallet_id}.", param=param)
    return found


async def transfer_wallets(
    session: AsyncSession,
    principal: Principal,
    from_wallet: str,
    to_wallet: str,
    *,
    allow_user_transfers: bool,
) -> tuple[Account, Account]:
    """A transfer's two wallets: the source must be the caller's; the target too, unless the caller may act
    for anyone or ``PREPAID_ALLOW_USER_TRANSFERS`` lets users send credits to each other."""
    source = await wallet(session, principal, from_wallet, SPEND, param="from_wallet")
    try:
        target = await service.get_wallet(session, to_wallet)
    except NotFound:
        target = None
    if target is None or not (
        allow_user_transfers or target.user_id == source.user_id or acts_for_anyone(principal, SPEND)
    ):
        raise NotFound(
            f"No wallet {to_wallet} among yours"
            + ("." if allow_user_transfers else " (transfers to other users are turned off)."),
            param="to_wallet",
        )
    return source, target


def shows_balance(principal: Principal, wallet: Account) -> bool:
    """Whether the caller may see this wallet's balance (the target of a transfer to another user is not)."""
    return _own(principal, wallet, READ, SPEND)


def spending_owner(principal: Principal) -> str | None:
    """Who may debit or hold credits, and on whose wallets: an app's key with ``usage:write`` on its user's
    wallets only (the user id returned here, for ``ledger.service`` to lock only a wallet of that user and
    answer ``404`` for any other, as ``wallet`` does), a server key with ``usage:write`` or an admin on any
    (``None``). Anyone else is refused here, before any wallet is read."""
    require_app_or_admin(principal)
    return None if acts_for_anyone(principal, SPEND) else principal.user.id


async def spendable_wallet(
    session: AsyncSession, principal: Principal, wallet_id: str, *, param: str = "wallet_id"
) -> Account:
    """A wallet the caller may debit or hold credits on, read now (the debit and hold routes do not: they
    pass ``spending_owner`` to the service, whose lock checks it)."""
    require_app_or_admin(principal)
    return await wallet(session, principal, wallet_id, SPEND, param=param)


async def hold(session: AsyncSession, principal: Principal, hold_id: str, *scopes: str) -> Hold:
    """A hold on a wallet the caller may act on with one of ``scopes``; anyone else's is ``404``."""
    require_scope(principal, *scopes)
    try:
        found = await service.get_hold(session, hold_id)
        await wallet(session, principal, found.wallet_id, *scopes)
    except NotFound:
        raise NotFound(f"No hold {hold_id}.", param="hold_id") from None
    return found


async def transaction(session: AsyncSession, principal: Principal, transaction_id: str) -> Transaction:
    """A transaction that touched one of the caller's wallets (any, for admins and server keys)."""
    require_scope(principal, READ)
    missing = NotFound(f"No transaction {transaction_id}.", param="transaction_id")
    try:
        found = await service.get_transaction(session, transaction_id)
    except NotFound:
        raise missing from None
    if acts_for_anyone(principal, READ):
        return found
    for wallet_id in sorted(await service.transaction_wallet_ids(session, found.id)):
        if (await service.get_wallet(session, wallet_id)).user_id == principal.user.id:
            return found
    raise missing


def audit_actor(principal: Principal, owner_id: str | None) -> audit_service.Actor | None:
    """Who the audit log names for a change to a wallet of ``owner_id``: an admin's change, or any change to
    a wallet that is not the caller's own (a server key's); None for a person changing their own wallet."""
    if principal.is_admin or owner_id != principal.user.id:
        return principal.audit_actor
    return None


def ledger_key(principal: Principal, idempotency_key: str) -> str:
    """The ledger's exactly-once key for a movement asked for through the API: the body's ``idempotency_key``
    in the namespace of the user behind the call (a person and their own API keys share it, so a retry works
    across a key rotation), kept apart from the keys the server makes itself (``order:...``, ``hold:...``).
    Two users can never collide; a key too long for the column is replaced by its SHA-256."""
    scoped = f"api:{principal.user.id}:{idempotency_key}"
    if len(scoped) <= LEDGER_KEY_LENGTH:
        return scoped
    return f"api:{principal.user.id}:sha256:{hashlib.sha256(idempotency_key.encode()).hexdigest()}"
