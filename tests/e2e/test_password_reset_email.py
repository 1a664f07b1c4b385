"""The password-reset (and email-verification) emails, sent by the server process to a real SMTP server, and
their links used in the pages like a browser would: once, and only once."""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from email import message_from_bytes, policy
from email.message import EmailMessage
from typing import Any

import httpx
import pytest
from aiosmtpd.controller import Controller

from tests.e2e.conftest import (
    ServerFactory,
    ServerProcess,
    api_login,
    form_fields,
    free_port,
    poll,
    register,
    unique_email,
)

EMAIL_TIMEOUT = 15.0


class Inbox:
    """An aiosmtpd handler that keeps every message it is given."""

    def __init__(self) -> None:
        self.messages: list[EmailMessage] = []
        self._lock = threading.Lock()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        message = message_from_bytes(envelope.content, policy=policy.default)
        assert isinstance(message, EmailMessage)
        with self._lock:
            self.messages.append(message)
        return "250 Message accepted for delivery"

    def to(self, address: str) -> list[EmailMessage]:
        with self._lock:
            return [message for message in self.messages if message["To"] == address]

    def links_to(self, address: str, page: str) -> list[str] | None:
        """The one-time links to ``page`` (``/reset-password``, ``/verify-email``) emailed to ``address``."""
        found = [
            match.group(0)
            for message in self.to(address)
            for match in re.finditer(rf"\S+{page}\?token=\S+", _text_body(message))
        ]
        return found or None

    def resets_to(self, address: str) -> list[EmailMessage] | None:
        """The password-reset emails sent to ``address`` (registering also sends a verification email)."""
        found = [message for message in self.to(address) if "/reset-password?token=" in _text_body(message)]
        return found or None


@pytest.fixture(scope="module")
def smtp() -> Iterator[tuple[Inbox, int]]:
    inbox = Inbox()
    port = free_port()
    controller = Controller(inbox, hostname="127.0.0.1", port=port)
    controller.start()
    try:
        yield inbox, port
    finally:
        controller.stop()


@pytest.fixture(scope="module")
def mail_server(tmp_path_factory: pytest.TempPathFactory, smtp: tuple[Inbox, int]) -> Iterator[ServerProcess]:
    """A server sending its email to ``smtp``; each test uses addresses of its own."""
    factory = ServerFactory(tmp_path_factory.mktemp("mail"))
    try:
        yield factory.serve(PREPAID_SMTP_URL=f"smtp://127.0.0.1:{smtp[1]}")
    finally:
        factory.stop_all()


def _text_body(message: EmailMessage) -> str:
    part = message.get_body(preferencelist=("plain",))
    assert part is not None, message.as_string()
    content: str = part.get_content()
    return content


def _reset_link(message: EmailMessage) -> str:
    match = re.search(r"\S+/reset-password\?token=\S+", _text_body(message))
    assert match, _text_body(message)
    return match.group(0)


def _submit_link_form(link: str, action: str, **extra: str) -> httpx.Response:
    """Open an emailed link in a fresh browser, then submit the form on that page (csrf cookie and field)."""
    with httpx.Client(timeout=10.0) as browser:
        page = browser.get(link)
        assert page.status_code == 200, page.text
        fields = form_fields(page.text, action)
        assert browser.cookies.get("prepaid_csrf") == fields["csrf_token"]
        return browser.post(link.split("?", 1)[0], data={**fields, **extra})


def _submit_reset(link: str, *, password: str) -> httpx.Response:
    return _submit_link_form(link, "/reset-password", password=password)


def test_password_reset_email_link_works_once(mail_server: ServerProcess, smtp: tuple[Inbox, int]) -> None:
    inbox, _port = smtp
    email = unique_email("forgetful")
    old_password, new_password = "old password 12345", "new password 67890"
    with mail_server.client() as http:
        register(http, email=email, password=old_password, name="Forgetful")
        before_reset = api_login(http, email=email, password=old_password)
        assert before_reset.status_code == 200
        nobody = unique_email("nobody")
        stranger = http.post("/v1/auth/password_reset", json={"email": nobody})
        asked = http.post("/v1/auth/password_reset", json={"email": email})
    assert stranger.status_code == 202
    assert asked.status_code == 202
    assert asked.json()["message"] == stranger.json()["message"]  # says nothing about who has an account

    messages = poll(lambda: inbox.resets_to(email), timeout=EMAIL_TIMEOUT, what=f"the reset email to {email}")
    assert len(messages) == 1
    assert inbox.to(nobody) == []  # asked first, so it would have arrived first
    message = messages[0]
    assert "password" in message["Subject"].lower()
    link = _reset_link(message)
    assert link.startswith(f"{mail_server.base_url}/reset-password?token=")
    html_part = message.get_body(preferencelist=("html",))
    assert html_part is not None

    done = _submit_reset(link, password=new_password)
    assert done.status_code == 200, done.text
    assert "Password changed" in done.text

    again = _submit_reset(link, password="third password 000")
    assert again.status_code == 400, again.text
    assert "Link not valid" in again.text
    assert "already used" in again.text

    with mail_server.client() as http:
        assert api_login(http, email=email, password=new_password).status_code == 200
        old = api_login(http, email=email, password=old_password)
        assert old.status_code == 401
        assert api_login(http, email=email, password="third password 000").status_code == 401
        # A reset signs out every session that existed before it.
        refresh = http.post("/v1/auth/refresh", json={"refresh_token": before_reset.json()["refresh_token"]})
        assert refresh.status_code == 401, refresh.text


def test_reset_form_without_the_csrf_cookie_changes_nothing(
    mail_server: ServerProcess, smtp: tuple[Inbox, int]
) -> None:
    inbox, _port = smtp
    email = unique_email("careful")
    with mail_server.client() as http:
        register(http, email=email, password="first password 111")
        assert http.post("/v1/auth/password_reset", json={"email": email}).status_code == 202
    message = poll(lambda: inbox.resets_to(email), timeout=EMAIL_TIMEOUT, what="the reset email")[0]
    link = _reset_link(message)
    with httpx.Client(timeout=10.0) as browser:
        fields = form_fields(browser.get(link).text, "/reset-password")
    # A forged cross-site post: the right token and a field value, but not the browser's cookie.
    with httpx.Client(timeout=10.0) as attacker:
        forged = attacker.post(link.split("?", 1)[0], data={**fields, "password": "attacker password 1"})
    assert forged.status_code == 403
    with mail_server.client() as http:
        assert api_login(http, email=email, password="attacker password 1").status_code == 401
        assert api_login(http, email=email, password="first password 111").status_code == 200
    # The link was not spent by the refused post.
    assert _submit_reset(link, password="second password 222").status_code == 200


def test_verification_email_link_confirms_the_address_once(
    mail_server: ServerProcess, smtp: tuple[Inbox, int]
) -> None:
    inbox, _port = smtp
    email = unique_email("newcomer")
    with mail_server.client() as http:
        register(http, email=email, password="newcomer password 1")
        token = api_login(http, email=email, password="newcomer password 1").json()["access_token"]
        headers = {"Authorization": f"Bearer {token}"}
        assert http.get("/v1/me", headers=headers).json()["email_verified"] is False

        links = poll(lambda: inbox.links_to(email, "/verify-email"), timeout=EMAIL_TIMEOUT, what="the email")
        assert len(links) == 1
        assert links[0].startswith(f"{mail_server.base_url}/verify-email?token=")

        confirmed = _submit_link_form(links[0], "/verify-email")
        assert confirmed.status_code == 200, confirmed.text
        assert "Email confirmed" in confirmed.text
        assert http.get("/v1/me", headers=headers).json()["email_verified"] is True

        again = _submit_link_form(links[0], "/verify-email")
        assert again.status_code == 400, again.text
        assert "Link not valid" in again.text
