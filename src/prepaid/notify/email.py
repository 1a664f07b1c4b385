"""Email: Jinja2 templates (HTML and text) and the backends that send them.

Backends: ``smtp`` (aiosmtplib; ``PREPAID_SMTP_URL`` like ``smtp://user:pass@host:587?starttls=true`` or
``smtps://host:465``), ``console`` (prints the message to standard output: the development default, refused in
production) and ``memory`` (keeps messages in a list, for tests).
"""

from __future__ import annotations

import sys
from decimal import Decimal
from email.message import EmailMessage
from typing import Any, Protocol
from urllib.parse import parse_qs, unquote, urlsplit

import aiosmtplib
from jinja2 import Environment, PackageLoader, StrictUndefined, select_autoescape

from prepaid.money import CURRENCY_MINOR_UNITS, to_display
from prepaid.settings import Settings

_SYMBOLS = {"INR": "\u20b9", "USD": "$", "EUR": "\u20ac", "GBP": "\u00a3", "JPY": "\u00a5"}


def format_money(amount: int, currency: str) -> str:
    """``49900, "INR"`` -> ``\u20b9499.00``; a currency without a well-known symbol keeps its code
    (``12.00 AUD``). The amount is in the currency's minor unit."""
    code = currency.upper()
    digits = CURRENCY_MINOR_UNITS.get(code, 2)
    number = f"{to_display(abs(amount), digits):,.{digits}f}"
    sign = "-" if amount < 0 else ""
    symbol = _SYMBOLS.get(code)
    return f"{sign}{symbol}{number}" if symbol else f"{sign}{number} {code}"


def format_credits(amount: int, scale: int) -> str:
    """Credits in the credit asset's smallest unit, shown whole: ``1500000`` at scale 6 -> ``1.5``; thousands
    separated (``12,000``)."""
    value = to_display(amount, scale)
    if value == value.to_integral_value():
        return f"{value.quantize(Decimal(1)):,f}"
    return f"{value.normalize():,f}"


_templates = Environment(
    loader=PackageLoader("prepaid.notify", "templates"),
    autoescape=select_autoescape(["html", "svg"]),
    undefined=StrictUndefined,
    keep_trailing_newline=True,
)
_templates.filters["money"] = format_money
_templates.filters["credits"] = format_credits


def presentation_context(settings: Settings) -> dict[str, Any]:
    """What every notification template may use besides its own payload: the server's public address (links)
    and the credit scale (to show credits)."""
    return {"base_url": settings.base_url.rstrip("/"), "credit_scale": settings.credit_scale}


def render_inapp(*, kind: str, data: dict[str, Any], settings: Settings) -> tuple[str, str]:
    """An in-app notification's ``(title, body)``: ``inapp/{kind}.txt``, whose first line is the title."""
    context = {**presentation_context(settings), "kind": kind, "data": data}
    text = _templates.get_template(f"inapp/{kind}.txt").render(context).strip()
    title, _, body = text.partition("\n")
    return title.strip(), body.strip()


def render_email(
    *, template: str, context: dict[str, Any], to: str, sender: str, message_id: str
) -> EmailMessage:
    subject = _templates.get_template(f"email/{template}.subject.txt").render(context).strip()
    text = _templates.get_template(f"email/{template}.txt").render(context)
    html = _templates.get_template(f"email/{template}.html").render(context)
    message = EmailMessage()
    message["From"] = sender
    message["To"] = to
    message["Subject"] = subject
    # The outbox id alone names the message (no time or random part, unlike make_msgid), so every send of
    # one outbox message carries the same Message-ID and a receiver can drop a duplicate.
    message["Message-ID"] = f"<{message_id}@prepaid>"
    message.set_content(text)
    message.add_alternative(html, subtype="html")
    return message


class Mailer(Protocol):
    async def send(self, message: EmailMessage) -> None: ...


class SmtpMailer:
    def __init__(self, url: str, *, timeout: float = 20.0) -> None:
        parts = urlsplit(url)
        if parts.scheme not in ("smtp", "smtps"):
            raise ValueError("PREPAID_SMTP_URL must start with smtp:// or smtps://")
        query = parse_qs(parts.query)
        self.hostname = parts.hostname or "localhost"
        self.port = parts.port or (465 if parts.scheme == "smtps" else 25)
        self.username = unquote(parts.username) if parts.username else None
        self.password = unquote(parts.password) if parts.password else None
        self.use_tls = parts.scheme == "smtps"
        # STARTTLS: "true" requires it, "false" never uses it, absent uses it whenever the server offers it
        # (and never on smtps://, which is TLS from the first byte).
        choice = query.get("starttls", [""])[0].lower()
        self.start_tls: bool | None = None
        if self.use_tls or choice in ("0", "false", "no"):
            self.start_tls = False
        elif choice in ("1", "true", "yes"):
            self.start_tls = True
        self.timeout = timeout

    async def send(self, message: EmailMessage) -> None:
        await aiosmtplib.send(
            message,
            hostname=self.hostname,
            port=self.port,
            username=self.username,
            password=self.password,
            use_tls=self.use_tls,
            start_tls=self.start_tls,
            timeout=self.timeout,
        )


class ConsoleMailer:
    """Development only: the email is written to standard output instead of being sent."""

    async def send(self, message: EmailMessage) -> None:
        # The text part decoded: as_string() quoted-printable-encodes it, breaking the links a developer copies.
        body = message.get_body(preferencelist=("plain",))
        text = body.get_content() if body is not None else message.as_string()
        headers = "".join(f"{name}: {message[name]}\n" for name in ("From", "To", "Subject"))
        sys.stdout.write(f"\n----- email (console backend) -----\n{headers}\n{text}\n-----\n")
        sys.stdout.flush()


class MemoryMailer:
    def __init__(self) -> None:
        self.outbox: list[EmailMessage] = []

    async def send(self, message: EmailMessage) -> None:
        self.outbox.append(message)


def build_mailer(settings: Settings) -> Mailer:
    backend = settings.resolved_email_backend
    if backend == "smtp":
        if not settings.smtp_url:
            raise ValueError("PREPAID_EMAIL_BACKEND=smtp needs PREPAID_SMTP_URL")
        return SmtpMailer(settings.smtp_url)
    if backend == "memory":
        return MemoryMailer()
    return ConsoleMailer()
