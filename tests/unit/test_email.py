"""Email: templates that escape what they are given, SMTP settings read from one URL, the backends."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from email import message_from_bytes
from email.message import EmailMessage, Message
from typing import Any

import pytest
from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session
from jinja2 import UndefinedError

from prepaid.notify.email import ConsoleMailer, MemoryMailer, SmtpMailer, build_mailer, render_email
from prepaid.settings import Settings

HOSTILE_NAME = '<script>alert("owned")</script>'
HOSTILE_LINK = 'https://example.com/reset?token=abc"><img src=x onerror=alert(1)>'


def render(template: str = "password_reset", **context: Any) -> EmailMessage:
    values = {"name": "Ada", "link": "https://credits.example.com/reset-password?token=t0k", "minutes": 60}
    values.update(context)
    return render_email(
        template=template,
        context=values,
        to="ada@example.com",
        sender="prepaid <no-reply@example.com>",
        message_id="msg_01JD3AAAAAAAAAAAAAAAAAAAAA",
    )


def parts(message: EmailMessage) -> tuple[str, str]:
    text = message.get_body(("plain",))
    html = message.get_body(("html",))
    assert text is not None and html is not None
    return str(text.get_content()), str(html.get_content())


# ---------------------------------------------------------------- templates


@pytest.mark.parametrize("template", ["password_reset", "verify_email"])
def test_html_templates_escape_what_they_are_given(template: str) -> None:
    text, html = parts(render(template, name=HOSTILE_NAME, link=HOSTILE_LINK))
    assert "<script>" not in html
    assert "&lt;script&gt;" in html
    assert "<img" not in html
    assert "&#34;&gt;&lt;img" in html or "&quot;&gt;&lt;img" in html
    # plain text is not HTML: it carries the values as they are
    assert HOSTILE_NAME in text
    assert HOSTILE_LINK in text


def test_a_rendered_email_has_both_parts_and_the_headers() -> None:
    message = render(minutes=45)
    assert message["To"] == "ada@example.com"
    assert message["From"] == "prepaid <no-reply@example.com>"
    assert message["Subject"] == "Reset your password"
    assert message.get_content_type() == "multipart/alternative"
    text, html = parts(message)
    for body in (text, html):
        assert "https://credits.example.com/reset-password?token=t0k" in body
        assert "45 minutes" in body
        assert "Ada" in body
    assert '<a href="https://credits.example.com/reset-password?token=t0k">' in html


def test_the_message_id_is_the_outbox_id_every_time() -> None:
    first, second = render(), render()
    assert first["Message-ID"] == second["Message-ID"] == "<msg_01JD3AAAAAAAAAAAAAAAAAAAAA@prepaid>"


def test_a_missing_template_value_is_an_error_not_a_blank() -> None:
    with pytest.raises(UndefinedError):
        render_email(
            template="password_reset",
            context={"name": "Ada"},
            to="ada@example.com",
            sender="no-reply@example.com",
            message_id="msg_x",
        )


def test_a_recipient_cannot_inject_headers() -> None:
    with pytest.raises(ValueError):
        render_email(
            template="verify_email",
            context={"name": "Ada", "link": "https://x.example.com"},
            to="ada@example.com\r\nBcc: everyone@example.com",
            sender="no-reply@example.com",
            message_id="msg_x",
        )


# ---------------------------------------------------------------- SMTP URL


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        # no starttls parameter: STARTTLS whenever the server offers it (None, aiosmtplib's "if supported")
        ("smtp://mail.example.com", ("mail.example.com", 25, None, None, False, None)),
        ("smtp://mail.example.com:2525", ("mail.example.com", 2525, None, None, False, None)),
        (
            "smtp://apikey:s%40cr%3At@mail.example.com:587?starttls=true",
            ("mail.example.com", 587, "apikey", "s@cr:t", False, True),
        ),
        ("smtp://u:p@mail.example.com:587?starttls=1", ("mail.example.com", 587, "u", "p", False, True)),
        ("smtp://mail.example.com:587?starttls=false", ("mail.example.com", 587, None, None, False, False)),
        ("smtps://mail.example.com", ("mail.example.com", 465, None, None, True, False)),
        (
            "smtps://user%40example.com:pw@mail.example.com:2465",
            ("mail.example.com", 2465, "user@example.com", "pw", True, False),
        ),
    ],
)
def test_smtp_settings_are_read_from_the_url(url: str, expected: tuple[Any, ...]) -> None:
    mailer = SmtpMailer(url)
    assert (
        mailer.hostname,
        mailer.port,
        mailer.username,
        mailer.password,
        mailer.use_tls,
        mailer.start_tls,
    ) == expected


@pytest.mark.parametrize(
    "url", ["http://mail.example.com", "mail.example.com:25", "smtpx://mail.example.com"]
)
def test_an_smtp_url_with_another_scheme_is_refused(url: str) -> None:
    with pytest.raises(ValueError, match="smtp://"):
        SmtpMailer(url)


def make_settings(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_the_backend_follows_the_settings() -> None:
    assert isinstance(build_mailer(make_settings()), ConsoleMailer)
    assert isinstance(build_mailer(make_settings(email_backend="memory")), MemoryMailer)
    smtp = build_mailer(make_settings(smtp_url="smtp://mail.example.com:2525"))
    assert isinstance(smtp, SmtpMailer)
    assert smtp.port == 2525
    assert isinstance(
        build_mailer(make_settings(smtp_url="smtp://x.example.com", email_backend="console")), ConsoleMailer
    )
    with pytest.raises(ValueError, match="PREPAID_SMTP_URL"):
        build_mailer(make_settings(email_backend="smtp"))


async def test_the_console_backend_prints_the_message(capsys: pytest.CaptureFixture[str]) -> None:
    await ConsoleMailer().send(render())
    assert "Subject: Reset your password" in capsys.readouterr().out


# ---------------------------------------------------------------- a real SMTP server


class Inbox:
    def __init__(self) -> None:
        self.messages: list[Message] = []
        self.envelopes: list[tuple[str, list[str]]] = []

    async def handle_DATA(self, server: Any, session: Session, envelope: Envelope) -> str:
        assert isinstance(envelope.content, bytes)
        self.messages.append(message_from_bytes(envelope.content))
        self.envelopes.append((str(envelope.mail_from), list(envelope.rcpt_tos)))
        return "250 OK"


@pytest.fixture
async def smtp_server() -> AsyncIterator[tuple[Inbox, int, list[tuple[str, str]]]]:
    """aiosmtpd on a free port, served by the test's own event loop."""
    inbox, logins = Inbox(), []

    def authenticate(server: Any, session: Any, envelope: Any, mechanism: str, data: Any) -> AuthResult:
        assert isinstance(data, LoginPassword)
        logins.append((data.login.decode(), data.password.decode()))
        return AuthResult(success=data.password == b"p@ss:word")

    server = await asyncio.get_running_loop().create_server(
        lambda: SMTP(inbox, hostname="127.0.0.1", authenticator=authenticate, auth_require_tls=False),
        "127.0.0.1",
        0,
    )
    try:
        yield inbox, int(server.sockets[0].getsockname()[1]), logins
    finally:
        server.close()
        await server.wait_closed()


async def test_the_smtp_backend_delivers_to_a_real_server_with_credentials_from_the_url(
    smtp_server: tuple[Inbox, int, list[tuple[str, str]]],
) -> None:
    inbox, port, logins = smtp_server
    mailer = SmtpMailer(f"smtp://mailer:p%40ss%3Aword@127.0.0.1:{port}", timeout=10)
    await mailer.send(render(name="Grace"))
    assert logins == [("mailer", "p@ss:word")]
    [received] = inbox.messages
    assert received["To"] == "ada@example.com"
    assert received["Message-ID"] == "<msg_01JD3AAAAAAAAAAAAAAAAAAAAA@prepaid>"
    assert inbox.envelopes == [("no-reply@example.com", ["ada@example.com"])]
    assert "Grace" in received.as_string()
