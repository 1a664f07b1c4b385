"""Users, passwords, tokens, API keys, web sessions and one-time links.

Secrets handed to a client (refresh tokens, API keys, session cookies, emailed links) are random and stored
only as SHA-256 hashes. Passwords use argon2. Access tokens are HS256 JWTs with the algorithm pinned, an
``exp`` and an ``iss``; every request re-reads the user, so deactivating someone stops their tokens at once.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any, TypeVar

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import Select, Text, bindparam, cast, func, inspect, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import make_transient_to_detached
from sqlalchemy.orm.attributes import set_committed_value
from sqlalchemy.orm.util import identity_key

from prepaid.audit import service as audit_service
from prepaid.auth.models import ApiKey, OneTimeToken, RefreshToken, User, WebSession
from prepaid.db import Base, utcnow
from prepaid.errors import AuthenticationError, Conflict, InvalidRequest, NotFound, PermissionDenied
from prepaid.ids import new_id
from prepaid.ledger import service as ledger_service
from prepaid.notify import service as notify_service
from prepaid.pagination import Page, PageParams, paginate
from prepaid.settings import Settings

JWT_ALGORITHM = "HS256"
JWT_ISSUER = "prepaid"
API_KEY_PREFIX = "sk_"
API_KEY_PUBLIC_LENGTH = 12
ROLES = ("user", "vendor", "admin")
USER_SCOPES = frozenset({"usage:write", "balance:read"})
ALL_SCOPES = frozenset({"usage:write", "balance:read", "customers:write", "orders:write", "admin"})
PERSONAL_FIELDS = ("email", "name", "phone", "external_id")
PASSWORD_RESET = "password_reset"
EMAIL_VERIFICATION = "email_verification"

_Row = TypeVar("_Row", bound=Base)
_hasher = PasswordHasher()
# Verified against when the email is unknown, so login takes the same time whether or not it exists.
_DUMMY_HASH = _hasher.hash(secrets.token_urlsafe(16))


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def hash_password(password: str) -> str:
    return _hasher.hash(password)


def verify_password(password_hash: str | None, password: str) -> bool:
    try:
        return _hasher.verify(password_hash or _DUMMY_HASH, password) and password_hash is not None
    except (VerificationError, InvalidHashError):
        return False


async def hash_password_off_loop(password: str) -> str:
    """argon2 is slow on purpose: it runs in a thread so the event loop keeps serving other requests."""
    return await asyncio.to_thread(hash_password, password)


async def verify_password_off_loop(password_hash: str | None, password: str) -> bool:
    return await asyncio.to_thread(verify_password, password_hash, password)


def normalize_email(email: str) -> str:
    return email.strip().lower()


@dataclass(frozen=True)
class Principal:
    """Who is calling: a user, through a bearer token, a browser session, or one of their API keys."""

    user: User
    api_key: ApiKey | None = None
    web_session: WebSession | None = None

    @property
    def is_admin(self) -> bool:
        if not self.user.is_admin:
            return False
        return self.api_key is None or "admin" in self.api_key.scopes

    @property
    def is_session(self) -> bool:
        """A person signed in (token or cookie), as opposed to an app with a key."""
        return self.api_key is None

    @property
    def caller_id(self) -> str:
        return self.api_key.id if self.api_key else self.user.id

    @property
    def audit_actor(self) -> audit_service.Actor:
        return audit_service.Actor(user_id=self.user.id, api_key_id=self.api_key.id if self.api_key else None)

    def has_scope(self, scope: str) -> bool:
        if self.api_key is None:
            return True
        return scope in self.api_key.scopes


@dataclass(frozen=True)
class TokenPair:
    access_token: str
    refresh_token: str
    expires_in: int


# ---------------------------------------------------------------- users


async def get_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None or user.deleted_at is not None:
        raise NotFound(f"No user {user_id}.", param="id")
    return user


async def users_by_id(session: AsyncSession, user_ids: Iterable[str]) -> dict[str, User]:
    """The users behind a page of rows, in one query (deleted ones included: their rows still name them)."""
    wanted = set(user_ids)
    if not wanted:
        return {}
    return {user.id: user for user in await session.scalars(select(User).where(User.id.in_(wanted)))}


async def get_user_by_email(session: AsyncSession, email: str) -> User | None:
    return await session.scalar(select(User).where(User.email == normalize_email(email)))


async def find_customer(session: AsyncSession, reference: str) -> User:
    """A customer named by their user id or by the app's own ``external_id`` (the id is tried first)."""
    user = await session.get(User, reference)
    if user is None:
        user = await session.scalar(select(User).where(User.external_id == reference))
    if user is None or user.deleted_at is not None:
        raise NotFound(f"No customer {reference}.", param="customer")
    return user


async def create_user(
    session: AsyncSession,
    *,
    email: str | None,
    password: str | None,
    name: str = "",
    roles: list[str] | None = None,
    external_id: str | None = None,
    phone: str | None = None,
    email_verified: bool = False,
) -> User:
    # Hashed before the first query: a write transaction holds SQLite's lock from its first statement.
    password_hash = await hash_password_off_loop(password) if password else None
    normalized = normalize_email(email) if email else None
    if normalized and await get_user_by_email(session, normalized):
        raise Conflict("An account with this email already exists.", code="email_taken", param="email")
    if external_id and await session.scalar(select(User.id).where(User.external_id == external_id)):
        raise Conflict("A customer with this external_id already exists.", code="external_id_taken")
    user = User(
        id=new_id("usr"),
        email=normalized,
        password_hash=password_hash,
        name=name,
        roles=roles or ["user"],
        external_id=external_id,
        phone=phone,
        active=True,
        email_verified_at=utcnow() if email_verified else None,
    )
    session.add(user)
    try:
        await session.flush()  # the unique email constraint decides a race between two registrations
    except IntegrityError:
        raise Conflict(
            "An account with this email already exists.", code="email_taken", param="email"
        ) from None
    await ledger_service.open_wallet(session, user_id=user.id, name="Default", is_default=True)
    return user


async def register(
    session: AsyncSession, *, email: str, password: str, name: str, settings: Settings
) -> User:
    user = await create_user(session, email=email, password=password, name=name)
    await send_email_verification(session, user=user, settings=settings)
    return user


async def authenticate(session: AsyncSession, *, email: str, password: str, settings: Settings) -> User:
    user = await get_user_by_email(session, email)
    ok = await verify_password_off_loop(user.password_hash if user else None, password)
    if user is None or not ok or user.deleted_at is not None:
        raise AuthenticationError("Incorrect email or password.", code="invalid_credentials")
    if not user.active:
        raise AuthenticationError("This account is deactivated.", code="account_inactive")
    if settings.require_email_verification and not user.email_verified:
        raise PermissionDenied(
            "Verify your email address before signing in; we sent you a link.", code="email_not_verified"
        )
    return user


def _user_snapshot(user: User) -> dict[str, Any]:
    return {"name": user.name, "roles": list(user.roles), "active": user.active, "email": user.email}


async def update_profile(
    session: AsyncSession, *, user: User, name: str | None, phone: str | None, clear_phone: bool = False
) -> User:
    if name is not None:
        user.name = name
    if phone is not None or clear_phone:
        user.phone = phone
    return user


async def change_password(
    session: AsyncSession,
    *,
    user: User,
    current_password: str,
    new_password: str,
    keep_web_session: WebSession | None = None,
) -> None:
    """Set a new password and sign out every other login; the browser making the change stays signed in."""
    if not await verify_password_off_loop(user.password_hash, current_password):
        raise InvalidRequest(
            "The current password is incorrect.", code="invalid_password", param="current_password"
        )
    user.password_hash = await hash_password_off_loop(new_password)
    await revoke_all_sessions(
        session, user_id=user.id, keep_web_session_id=keep_web_session.id if keep_web_session else None
    )


async def admin_update_user(
    session: AsyncSession,
    *,
    actor: Principal,
    user_id: str,
    roles: Sequence[str] | None,
    active: bool | None,
    name: str | None,
) -> User:
    user = await get_user(session, user_id)
    before = _user_snapshot(user)
    if roles is not None:
        if actor.user.id == user.id and "admin" not in roles:
            raise InvalidRequest(
                "You cannot remove your own admin role.", code="self_demotion", param="roles"
            )
        user.roles = sorted(set(roles), key=ROLES.index)
    if active is not None:
        if actor.user.id == user.id and not active:
            raise InvalidRequest("You cannot deactivate yourself.", code="self_deactivation", param="active")
        user.active = active
        if not active:
            await revoke_all_sessions(session, user_id=user.id)
    if name is not None:
        user.name = name
    after = _user_snapshot(user)
    if after != before:
        await audit_service.record(
            session,
            actor=actor.audit_actor,
            action="user.update",
            object_type="user",
            object_id=user.id,
            before=before,
            after=after,
        )
    return user


async def list_users(
    session: AsyncSession,
    *,
    params: PageParams,
    email: str | None = None,
    role: str | None = None,
    search: str | None = None,
) -> Page[User]:
    """Users newest first. ``search`` (the admin panel's box) matches a user id exactly, or a part of the
    email or name, ignoring case."""
    stmt: Select[User] = select(User).where(User.deleted_at.is_(None))
    if search:
        pattern = "%" + search.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        stmt = stmt.where(
            or_(
                User.id == search,
                func.lower(User.email).like(pattern, escape="\\"),
                func.lower(User.name).like(pattern, escape="\\"),
            )
        )
    if email:
        stmt = stmt.where(User.email == normalize_email(email))
    if role:
        # roles is a JSON list; its text form holds each role quoted, on both engines.
        stmt = stmt.where(cast(User.roles, Text).contains(f'"{role}"'))
    return await paginate(session, stmt, User.id, params)


async def delete_account(session: AsyncSession, *, user: User, password: str | None) -> None:
    """Anonymise the person and keep the ledger: rows stay, personal data goes, access ends."""
    if user.password_hash is not None and not await verify_password_off_loop(
        user.password_hash, password or ""
    ):
        raise InvalidRequest("The password is incorrect.", code="invalid_password", param="password")
    await revoke_all_sessions(session, user_id=user.id)
    await session.execute(
        update(ApiKey)
        .where(ApiKey.user_id == user.id, ApiKey.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    await audit_service.erase_personal_data(
        session, object_type="user", object_id=user.id, fields=PERSONAL_FIELDS
    )
    if user.email is not None:
        await notify_service.forget_recipient(session, recipient=user.email)
    user.email = None
    user.password_hash = None
    user.phone = None
    user.external_id = None
    user.name = "Deleted user"
    user.active = False
    user.deleted_at = utcnow()


# ---------------------------------------------------------------- tokens


def create_access_token(user: User, settings: Settings) -> str:
    now = utcnow()
    claims = {
        "sub": user.id,
        "iss": JWT_ISSUER,
        "iat": int(now.timestamp()),
        "exp": int((now + timedelta(seconds=settings.access_token_ttl)).timestamp()),
        "typ": "access",
        "jti": secrets.token_urlsafe(8),
    }
    return jwt.encode(claims, settings.secret_key, algorithm=JWT_ALGORITHM)


def decode_access_token(token: str, settings: Settings) -> str:
    try:
        claims = jwt.decode(
            token,
            settings.secret_key,
            algorithms=[JWT_ALGORITHM],
            issuer=JWT_ISSUER,
            options={"require": ["exp", "iss", "sub"]},
        )
    except jwt.ExpiredSignatureError:
        raise AuthenticationError("The access token has expired.", code="token_expired") from None
    except jwt.PyJWTError:
        raise AuthenticationError("The access token is invalid.", code="invalid_token") from None
    if claims.get("typ") != "access":
        raise AuthenticationError("The access token is invalid.", code="invalid_token")
    return str(claims["sub"])


async def _new_refresh_token(
    session: AsyncSession, *, user_id: str, family_id: str, settings: Settings
) -> str:
    secret = "rt_" + secrets.token_urlsafe(32)
    session.add(
        RefreshToken(
            id=new_id("rtk"),
            user_id=user_id,
            family_id=family_id,
            token_hash=sha256_hex(secret),
            expires_at=utcnow() + timedelta(seconds=settings.refresh_token_ttl),
        )
    )
    return secret


async def issue_tokens(session: AsyncSession, *, user: User, settings: Settings) -> TokenPair:
    refresh = await _new_refresh_token(session, user_id=user.id, family_id=new_id("rtk"), settings=settings)
    return TokenPair(create_access_token(user, settings), refresh, settings.access_token_ttl)


async def rotate_refresh_token(
    session: AsyncSession, *, refresh_token: str, settings: Settings
) -> TokenPair | None:
    """Spend a refresh token for a new pair.

    Presenting a spent token means it leaked: the whole family is revoked and None is returned (not raised),
    so that the caller commits the revocation before answering 401.
    """
    invalid = AuthenticationError("The refresh token is invalid.", code="invalid_refresh_token")
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(refresh_token)).with_for_update()
    )
    if token is None or token.revoked_at is not None or token.expires_at <= utcnow():
        raise invalid
    if token.spent_at is not None:
        await revoke_family(session, family_id=token.family_id)
        return None
    user = await session.get(User, token.user_id)
    if user is None or not user.active or user.deleted_at is not None:
        raise invalid
    token.spent_at = utcnow()
    refresh = await _new_refresh_token(session, user_id=user.id, family_id=token.family_id, settings=settings)
    return TokenPair(create_access_token(user, settings), refresh, settings.access_token_ttl)


async def revoke_family(session: AsyncSession, *, family_id: str) -> None:
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.family_id == family_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )


async def logout(session: AsyncSession, *, refresh_token: str) -> None:
    token = await session.scalar(
        select(RefreshToken).where(RefreshToken.token_hash == sha256_hex(refresh_token))
    )
    if token is not None:
        await revoke_family(session, family_id=token.family_id)


async def revoke_all_sessions(
    session: AsyncSession, *, user_id: str, keep_web_session_id: str | None = None
) -> None:
    now = utcnow()
    await session.execute(
        update(RefreshToken)
        .where(RefreshToken.user_id == user_id, RefreshToken.revoked_at.is_(None))
        .values(revoked_at=now)
    )
    web_sessions = update(WebSession).where(WebSession.user_id == user_id, WebSession.revoked_at.is_(None))
    if keep_web_session_id is not None:
        web_sessions = web_sessions.where(WebSession.id != keep_web_session_id)
    await session.execute(web_sessions.values(revoked_at=now))


# ---------------------------------------------------------------- API keys


def _split_api_key(raw: str) -> tuple[str, str] | None:
    if not raw.startswith(API_KEY_PREFIX) or len(raw) < len(API_KEY_PREFIX) + API_KEY_PUBLIC_LENGTH + 16:
        return None
    public = raw[: len(API_KEY_PREFIX) + API_KEY_PUBLIC_LENGTH]
    return public, raw


async def create_api_key(
    session: AsyncSession,
    *,
    actor: Principal,
    name: str,
    scopes: list[str],
    server: bool,
) -> tuple[ApiKey, str]:
    """Mint a key; the secret is returned once and only its hash is kept."""
    unknown = sorted(set(scopes) - ALL_SCOPES)
    if unknown:
        raise InvalidRequest(f"Unknown scope(s): {', '.join(unknown)}.", code="invalid_scope", param="scopes")
    if not scopes:
        raise InvalidRequest("A key needs at least one scope.", code="invalid_scope", param="scopes")
    if not actor.is_admin:
        if server:
            raise PermissionDenied(
                "Only admins can mint server keys.", code="server_key_forbidden", param="server"
            )
        if not set(scopes) <= USER_SCOPES:
            raise PermissionDenied(
                "Your keys may carry only usage:write and balance:read.",
                code="scope_forbidden",
                param="scopes",
            )
    public = API_KEY_PREFIX + secrets.token_hex(API_KEY_PUBLIC_LENGTH // 2)
    secret = public + secrets.token_urlsafe(32)
    key = ApiKey(
        id=new_id("key"),
        user_id=actor.user.id,
        name=name,
        prefix=public,
        key_hash=sha256_hex(secret),
        scopes=sorted(set(scopes)),
        server=server,
    )
    session.add(key)
    await session.flush()  # fills created_at for the answer
    if actor.is_admin:
        await audit_service.record(
            session,
            actor=actor.audit_actor,
            action="api_key.create",
            object_type="api_key",
            object_id=key.id,
            before=None,
            after={"name": name, "scopes": key.scopes, "server": server},
        )
    return key, secret


def _visible_keys(actor: Principal) -> Select[ApiKey]:
    stmt = select(ApiKey).where(ApiKey.revoked_at.is_(None))
    return stmt if actor.is_admin else stmt.where(ApiKey.user_id == actor.user.id)


async def list_api_keys(session: AsyncSession, *, actor: Principal, params: PageParams) -> Page[ApiKey]:
    return await paginate(session, _visible_keys(actor), ApiKey.id, params)


async def own_api_keys(session: AsyncSession, *, user_id: str, key_id: str | None = None) -> list[ApiKey]:
    """A user's own live keys, newest first (``list_api_keys`` shows an admin everyone's, a page at a time)."""
    stmt = select(ApiKey).where(ApiKey.user_id == user_id, ApiKey.revoked_at.is_(None))
    if key_id is not None:
        stmt = stmt.where(ApiKey.id == key_id)
    return list(await session.scalars(stmt.order_by(ApiKey.id.desc())))


async def revoke_api_key(session: AsyncSession, *, actor: Principal, key_id: str) -> ApiKey:
    key = await session.scalar(_visible_keys(actor).where(ApiKey.id == key_id))
    if key is None:
        raise NotFound(f"No API key {key_id}.", param="id")
    key.revoked_at = utcnow()
    if actor.is_admin:
        await audit_service.record(
            session,
            actor=actor.audit_actor,
            action="api_key.revoke",
            object_type="api_key",
            object_id=key.id,
            before={"revoked": False},
            after={"revoked": True},
        )
    return key


# ---------------------------------------------------------------- web sessions


async def create_web_session(
    session: AsyncSession, *, user: User, user_agent: str, settings: Settings
) -> tuple[WebSession, str]:
    token = secrets.token_urlsafe(32)
    web_session = WebSession(
        id=new_id("wss"),
        user_id=user.id,
        token_hash=sha256_hex(token),
        csrf_token=secrets.token_urlsafe(32),
        expires_at=utcnow() + timedelta(seconds=settings.web_session_ttl),
        user_agent=user_agent[:500],
    )
    session.add(web_session)
    return web_session, token


async def end_web_session(session: AsyncSession, *, web_session: WebSession) -> None:
    web_session.revoked_at = utcnow()


def csrf_matches(web_session: WebSession, presented: str | None) -> bool:
    return presented is not None and hmac.compare_digest(web_session.csrf_token, presented)


# ---------------------------------------------------------------- who is calling


@dataclass(frozen=True)
class Credentials:
    bearer: str | None = None
    api_key: str | None = None
    session_cookie: str | None = None


async def resolve_principal(
    session: AsyncSession, *, credentials: Credentials, settings: Settings
) -> Principal | None:
    """The caller behind the presented credentials; None when none were presented.

    A bearer value starting with ``sk_`` is an API key; anything else is a JWT access token.
    """
    raw_key = credentials.api_key or (
        credentials.bearer if credentials.bearer and credentials.bearer.startswith(API_KEY_PREFIX) else None
    )
    if raw_key is not None:
        return await _principal_from_api_key(session, raw_key)
    if credentials.bearer is not None:
        user_id = decode_access_token(credentials.bearer, settings)
        return Principal(user=await _active_user(session, user_id))
    if credentials.session_cookie is not None:
        web_session = await session.scalar(
            select(WebSession).where(WebSession.token_hash == sha256_hex(credentials.session_cookie))
        )
        if web_session is None or web_session.revoked_at is not None or web_session.expires_at <= utcnow():
            raise AuthenticationError("Your session has ended; sign in again.", code="session_expired")
        return Principal(user=await _active_user(session, web_session.user_id), web_session=web_session)
    return None


async def _active_user(session: AsyncSession, user_id: str) -> User:
    user = await session.get(User, user_id)
    if user is None or not user.active or user.deleted_at is not None:
        raise AuthenticationError("This account is deactivated.", code="account_inactive")
    return user


# The key and its owner in one Core statement, built once: every column of both, by attribute name. A
# statement made per call costs its construction and cache key on every request, and loading two ORM entities
# through the ORM about 0.3 ms more than reading a row and making the two objects from it (``_as_loaded``).
_KEY_ATTRS = [(prop.key, prop.columns[0]) for prop in ApiKey.__mapper__.column_attrs]
_USER_ATTRS = [(prop.key, prop.columns[0]) for prop in User.__mapper__.column_attrs]
_KEY_AND_OWNER = (
    select(*(column for _key, column in _KEY_ATTRS), *(column for _key, column in _USER_ATTRS))
    .select_from(ApiKey.__table__)
    .join(User.__table__, User.__table__.c.id == ApiKey.__table__.c.user_id)
    .where(ApiKey.__table__.c.prefix == bindparam("prefix"))
)


def _as_loaded(session: AsyncSession, cls: type[_Row], values: dict[str, Any]) -> _Row:
    """The ORM object of a row read with Core, as a query of ``cls`` would give it: the one the session
    already holds (its expired attributes filled from the row), else a new persistent one with every column
    loaded (no query, nothing to write)."""
    found = session.sync_session.identity_map.get(identity_key(cls, values["id"]))
    if isinstance(found, cls):
        for attribute in inspect(found).expired_attributes & values.keys():
            set_committed_value(found, attribute, values[attribute])
        return found
    instance: _Row = cls.__mapper__.class_manager.new_instance()
    instance.__dict__.update(values)
    make_transient_to_detached(instance)  # every value committed, as if loaded
    session.add(instance)
    return instance


async def _principal_from_api_key(session: AsyncSession, raw: str) -> Principal:
    invalid = AuthenticationError("The API key is invalid or revoked.", code="invalid_api_key")
    parts = _split_api_key(raw)
    if parts is None:
        raise invalid
    public, secret = parts
    # The key and its owner in one query: keys are checked on every call.
    found = (await session.execute(_KEY_AND_OWNER, {"prefix": public})).first()
    if found is None:
        raise invalid
    split = len(_KEY_ATTRS)
    key = _as_loaded(session, ApiKey, {name: found[n] for n, (name, _c) in enumerate(_KEY_ATTRS)})
    user = _as_loaded(session, User, {name: found[split + n] for n, (name, _c) in enumerate(_USER_ATTRS)})
    if key.revoked_at is not None or not hmac.compare_digest(key.key_hash, sha256_hex(secret)):
        raise invalid
    if not user.active or user.deleted_at is not None:
        raise AuthenticationError("This account is deactivated.", code="account_inactive")
    if key.server and not user.is_admin:
        raise invalid  # server keys act on any customer: only while their owner is an admin
    return Principal(user=user, api_key=key)


# ---------------------------------------------------------------- emailed one-time links


async def _issue_one_time_token(session: AsyncSession, *, user: User, purpose: str, ttl: int) -> str:
    now = utcnow()
    # A new link replaces any earlier unused one for the same purpose.
    await session.execute(
        update(OneTimeToken)
        .where(
            OneTimeToken.user_id == user.id, OneTimeToken.purpose == purpose, OneTimeToken.used_at.is_(None)
        )
        .values(used_at=now)
    )
    token = secrets.token_urlsafe(32)
    session.add(
        OneTimeToken(
            id=new_id("tok"),
            user_id=user.id,
            purpose=purpose,
            token_hash=sha256_hex(token),
            expires_at=now + timedelta(seconds=ttl),
        )
    )
    return token


async def _redeem_one_time_token(session: AsyncSession, *, token: str, purpose: str) -> User:
    invalid = InvalidRequest(
        "This link is invalid, expired or already used.", code="invalid_token", param="token"
    )
    record = await session.scalar(
        select(OneTimeToken)
        .where(OneTimeToken.token_hash == sha256_hex(token), OneTimeToken.purpose == purpose)
        .with_for_update()
    )
    if record is None or record.used_at is not None or record.expires_at <= utcnow():
        raise invalid
    user = await session.get(User, record.user_id)
    if user is None or user.deleted_at is not None:
        raise invalid
    record.used_at = utcnow()
    return user


async def issue_password_link_token(session: AsyncSession, *, user: User, ttl: int) -> str:
    """A one-time token for a link that lets the holder choose the account's password (redeemed by
    ``reset_password``); it replaces any earlier unused one. For callers outside auth that email such a link
    (guest checkout's claim link)."""
    return await _issue_one_time_token(session, user=user, purpose=PASSWORD_RESET, ttl=ttl)


async def request_password_reset(session: AsyncSession, *, email: str, settings: Settings) -> None:
    """Email a reset link when the account exists; say nothing either way."""
    user = await get_user_by_email(session, email)
    if user is None or not user.active or user.email is None:
        return
    token = await _issue_one_time_token(
        session, user=user, purpose=PASSWORD_RESET, ttl=settings.password_reset_ttl
    )
    await notify_service.enqueue_email(
        session,
        to=user.email,
        template="password_reset",
        context={
            "name": user.name,
            "link": f"{settings.base_url.rstrip('/')}/reset-password?token={token}",
            "minutes": settings.password_reset_ttl // 60,
        },
    )


async def reset_password(session: AsyncSession, *, token: str, new_password: str) -> User:
    password_hash = await hash_password_off_loop(
        new_password
    )  # before the first write: no lock held meanwhile
    user = await _redeem_one_time_token(session, token=token, purpose=PASSWORD_RESET)
    user.password_hash = password_hash
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()  # the link reached the mailbox, which is what verification proves
    await revoke_all_sessions(session, user_id=user.id)
    return user


async def send_email_verification(session: AsyncSession, *, user: User, settings: Settings) -> None:
    if user.email is None or user.email_verified:
        return
    token = await _issue_one_time_token(
        session, user=user, purpose=EMAIL_VERIFICATION, ttl=settings.email_verification_ttl
    )
    await notify_service.enqueue_email(
        session,
        to=user.email,
        template="verify_email",
        context={"name": user.name, "link": f"{settings.base_url.rstrip('/')}/verify-email?token={token}"},
    )


async def resend_email_verification(session: AsyncSession, *, email: str, settings: Settings) -> None:
    """Send a new link when the account exists and is unverified; say nothing either way."""
    user = await get_user_by_email(session, email)
    if user is not None and user.active:
        await send_email_verification(session, user=user, settings=settings)


async def verify_email(session: AsyncSession, *, token: str) -> User:
    user = await _redeem_one_time_token(session, token=token, purpose=EMAIL_VERIFICATION)
    if user.email_verified_at is None:
        user.email_verified_at = utcnow()
    return user
