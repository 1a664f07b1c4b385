"""``Idempotency-Key`` on every POST under ``/v1``.

The first response to a key is stored for ``PREPAID_IDEMPOTENCY_TTL`` (24 h) and replayed, byte for byte,
for the same key and the same request (method, path, query and body); the same key with another request is
``400 idempotency_error``; a second request while the first is still running is ``409 conflict``.

Keys are scoped per caller (the user, the API key, or the client address when anonymous), so two callers
can never read each other's stored responses. A response is not stored when it is a server error, a refusal
for lack of credits (402), a rate limit, or a concurrency conflict: those are worth retrying with the same key.
A claim left behind by a process that died mid-request is considered abandoned after ``ABANDONED_AFTER`` and
may be taken again; the money operations behind a route carry their own idempotency keys, so that retry cannot
count twice.

Stored answers can hold secrets (a new API key, a token pair), so they are kept encrypted (AES-GCM) under a
key derived from ``PREPAID_SECRET_KEY`` and the request itself (caller, key and raw body, none of which is
stored): the database alone, or the secret alone, reads nothing; only a replay of the same request does.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Awaitable, Callable
from datetime import datetime, timedelta
from typing import Any

import anyio
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from sqlalchemy import Integer, LargeBinary, String, UniqueConstraint, delete, select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Mapped, mapped_column
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from prepaid.db import Base, Database, JSONType, UTCDateTime, utcnow
from prepaid.errors import Conflict, DomainError, IdempotencyError, InvalidRequest
from prepaid.ids import new_id

HEADER = "idempotency-key"
MAX_KEY_LENGTH = 255
ABANDONED_AFTER = timedelta(minutes=5)
# 402: not enough credits now is worth retrying with the same key after a top-up.
NOT_STORED_STATUSES = frozenset({402, 409, 429})
# Headers a replay must not repeat: they belong to the transport or are re-added by outer middleware.
NOT_REPLAYED_HEADERS = frozenset({b"content-length", b"date", b"server", b"x-request-id", b"set-cookie"})


class IdempotencyRecord(Base):
    __tablename__ = "idempotency_key"
    __table_args__ = (UniqueConstraint("caller", "key"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    caller: Mapped[str] = mapped_column(String(100))
    key: Mapped[str] = mapped_column(String(MAX_KEY_LENGTH))
    request_hash: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16), default="in_progress")
    response_status: Mapped[int | None] = mapped_column(Integer)
    response_headers: Mapped[list[list[str]] | None] = mapped_column(JSONType)
    response_body: Mapped[bytes | None] = mapped_column(LargeBinary)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime, index=True)


CallerResolver = Callable[[Scope], Awaitable[str | None]]


async def purge_expired(db: Database) -> int:
    """Job: forget keys past their lifetime."""
    async with db.transaction() as session:
        result = await session.execute(
            delete(IdempotencyRecord).where(IdempotencyRecord.expires_at < utcnow())
        )
        return int(getattr(result, "rowcount", 0) or 0)


def _request_hash(scope: Scope, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (scope["method"], scope["path"], scope.get("query_string", b"").decode("latin-1")):
        digest.update(part.encode() + b"\0")
    digest.update(body)
    return digest.hexdigest()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


async def _send(send: Send, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_error(send: Send, error: DomainError) -> None:
    body = json.dumps(error.body()).encode()
    await _send(send, error.status, [(b"content-type", b"application/json")], body)


def _cipher(secret_key: str, caller: str, key: str, body: bytes) -> AESGCM:
    material = b"\0".join([b"prepaid-idempotency-v1", caller.encode(), key.encode(), body])
    return AESGCM(hmac.new(secret_key.encode(), material, hashlib.sha256).digest())


def seal(cipher: AESGCM, plaintext: bytes) -> bytes:
    nonce = secrets.token_bytes(12)
    return nonce + cipher.encrypt(nonce, plaintext, None)


def unseal(cipher: AESGCM, sealed: bytes) -> bytes:
    return cipher.decrypt(sealed[:12], sealed[12:], None)


class IdempotencyMiddleware:
    def __init__(
        self,
        app: ASGIApp,
        *,
        database: Callable[[], Database],
        caller: CallerResolver,
        ttl: int,
        secret_key: str,
    ) -> None:
        self.app = app
        self.secret_key = secret_key
        self.database = database
        self.resolve_caller = caller
        self.ttl = timedelta(seconds=ttl)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or not scope["path"].startswith("/v1/"):
            await self.app(scope, receive, send)
            return
        key = _header(scope, HEADER.encode())
        if key is None:
            await self.app(scope, receive, send)
            return
        if not key or len(key) > MAX_KEY_LENGTH or not key.isprintable():
            await _send_error(
                send,
                InvalidRequest(
                    f"Idempotency-Key must be 1 to {MAX_KEY_LENGTH} printable characters.",
                    code="invalid_idempotency_key",
                    param="Idempotency-Key",
                ),
            )
            return

        body = await _read_body(receive)
        replay_receive = _replayer(body, receive)
        caller = await self.resolve_caller(scope)
        if caller is None:
            # No valid credential: the route answers 401 (or serves an anonymous route scoped by address).
            # The address is the client's as RequestContextMiddleware resolved it (behind a trusted proxy, the
            # forwarded one), so anonymous callers behind one proxy do not share a key space.
            client = scope.get("client") or ("unknown", 0)
            caller = f"anon:{scope.get('state', {}).get('client_ip') or client[0]}"
        request_hash = _request_hash(scope, body)
        cipher = _cipher(self.secret_key, caller, key, body)

        db = self.database()
        try:
            stored = await self._claim(db, caller, key, request_hash)
        except DomainError as error:
            await _send_error(send, error)
            return
        if stored is not None:
            headers = [
                (name.encode("latin-1"), value.encode("latin-1"))
                for name, value in stored.response_headers or []
            ]
            await _send(
                send,
                stored.response_status or 200,
                [*headers, (b"idempotent-replayed", b"true")],
                unseal(cipher, stored.response_body or b""),
            )
            return

        captured: dict[str, Any] = {"status": 500, "headers": [], "body": bytearray()}

        async def capture(message: Message) -> None:
            if message["type"] == "http.response.start":
                captured["status"] = message["status"]
                captured["headers"] = [
                    [name.decode("latin-1"), value.decode("latin-1")]
                    for name, value in message.get("headers", [])
                    if name.lower() not in NOT_REPLAYED_HEADERS
                ]
            elif message["type"] == "http.response.body":
                captured["body"].extend(message.get("body", b""))
            await send(message)

        try:
            await self.app(scope, replay_receive, capture)
        except BaseException:
            with anyio.CancelScope(shield=True):  # a client that hung up must not leave the key claimed
                await self._forget(db, caller, key)
            raise
        status = int(captured["status"])
        with anyio.CancelScope(shield=True):
            if status >= 500 or status in NOT_STORED_STATUSES:
                await self._forget(db, caller, key)
            else:
                sealed = seal(cipher, bytes(captured["body"]))
                await self._store(db, caller, key, status, captured["headers"], sealed)

    async def _claim(
        self, db: Database, caller: str, key: str, request_hash: str
    ) -> IdempotencyRecord | None:
        """Returns the stored record to replay, or None once this request owns the key."""
        now = utcnow()
        try:
            async with db.transaction() as session:
                record = await session.scalar(
                    select(IdempotencyRecord)
                    .where(IdempotencyRecord.caller == caller, IdempotencyRecord.key == key)
                    .with_for_update()
                )
                if record is not None:
                    abandoned = record.status == "in_progress" and record.created_at < now - ABANDONED_AFTER
                    if record.expires_at <= now or abandoned:
                        await session.delete(record)
                        await session.flush()  # the delete must reach the database before the insert below
                        record = None
                if record is not None:
                    if record.request_hash != request_hash:
                        raise IdempotencyError(
                            "This Idempotency-Key was already used with a different request.",
                            param="Idempotency-Key",
                        )
                    if record.status == "in_progress":
                        raise Conflict(
                            "A request with this Idempotency-Key is still being processed.",
                            code="idempotency_key_in_use",
                            param="Idempotency-Key",
                        )
                    return record
                session.add(
                    IdempotencyRecord(
                        id=new_id("idk"),
                        caller=caller,
                        key=key,
                        request_hash=request_hash,
                        status="in_progress",
                        created_at=now,
                        expires_at=now + self.ttl,
                    )
                )
        except IntegrityError:
            raise Conflict(
                "A request with this Idempotency-Key is still being processed.",
                code="idempotency_key_in_use",
                param="Idempotency-Key",
            ) from None
        return None

    async def _store(
        self, db: Database, caller: str, key: str, status: int, headers: list[list[str]], sealed_body: bytes
    ) -> None:
        async with db.transaction() as session:
            record = await session.scalar(
                select(IdempotencyRecord).where(
                    IdempotencyRecord.caller == caller, IdempotencyRecord.key == key
                )
            )
            if record is not None:
                record.status = "done"
                record.response_status = status
                record.response_headers = headers
                record.response_body = sealed_body

    async def _forget(self, db: Database, caller: str, key: str) -> None:
        async with db.transaction() as session:
            await session.execute(
                delete(IdempotencyRecord).where(
                    IdempotencyRecord.caller == caller,
                    IdempotencyRecord.key == key,
                    IdempotencyRecord.status == "in_progress",
                )
            )


async def _read_body(receive: Receive) -> bytes:
    chunks = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replayer(body: bytes, downstream: Receive) -> Receive:
    """Hands the already-read body to the app once, then passes on the client's own messages."""
    sent = False

    async def receive() -> Message:
        nonlocal sent
        if not sent:
            sent = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await downstream()

    return receive
