"""Payment gateways behind one protocol (``base.Gateway``), built from the settings.

``build_gateways(settings)`` makes the adapters of the real gateways named in ``PREPAID_GATEWAYS``
(``razorpay``, ``stripe``) and refuses, naming the missing settings, a gateway enabled without its keys. The
built-in ``sandbox`` gateway (``sandbox.py``) is built here too: it needs no keys (its secrets are derived from
``PREPAID_SECRET_KEY``) and writes its own tables through ``database`` (the app's), or through a database of its
own opened from ``PREPAID_DATABASE_URL`` when none is given.
"""

from __future__ import annotations

from pydantic import SecretStr

from prepaid.db import Database
from prepaid.payments.gateways.base import (
    EventType,
    Gateway,
    GatewayCheckout,
    GatewayError,
    GatewayEvent,
    GatewayNotConfigured,
    GatewayOrder,
    GatewayPayment,
    GatewayRefund,
    GatewayRefused,
    GatewayUnavailable,
    InvalidSignature,
    PaymentStatus,
    RefundStatus,
    VerifiedCallback,
    check_amount,
)
from prepaid.settings import Settings

REAL_GATEWAYS = ("razorpay", "stripe")

__all__ = [
    "REAL_GATEWAYS",
    "EventType",
    "Gateway",
    "GatewayCheckout",
    "GatewayError",
    "GatewayEvent",
    "GatewayNotConfigured",
    "GatewayOrder",
    "GatewayPayment",
    "GatewayRefund",
    "GatewayRefused",
    "GatewayUnavailable",
    "InvalidSignature",
    "PaymentStatus",
    "RefundStatus",
    "VerifiedCallback",
    "build_gateways",
    "check_amount",
]


def _secret(value: SecretStr | None) -> str:
    return value.get_secret_value().strip() if value is not None else ""


def _text(value: str | None) -> str:
    return value.strip() if value else ""


def _require(gateway: str, values: dict[str, str]) -> None:
    missing = [name for name, value in values.items() if not value]
    if missing:
        raise GatewayNotConfigured(
            f"The {gateway} gateway is enabled (PREPAID_GATEWAYS) but {', '.join(missing)} "
            f"{'is' if len(missing) == 1 else 'are'} not set (the un-prefixed names "
            f"{', '.join(name.removeprefix('PREPAID_') for name in missing)} are read too)."
        )


def _api_base(name: str, value: str) -> str:
    if not value.startswith(("https://", "http://")):
        raise GatewayNotConfigured(f"{name} must be an http(s) URL, not {value!r}.")
    return value


def build_gateways(settings: Settings, *, database: Database | None = None) -> dict[str, Gateway]:
    """The gateways enabled in the settings, by name. Refuses (``GatewayNotConfigured``) an enabled gateway
    without its keys, and a production server whose API base is not https."""
    gateways: dict[str, Gateway] = {}
    production = settings.env == "production"
    for name in settings.gateway_names:
        if name == "sandbox":
            from prepaid.payments.gateways.sandbox import SandboxGateway

            gateways[name] = SandboxGateway.from_settings(settings, database=database)
        elif name == "razorpay":
            from prepaid.payments.gateways.razorpay import RazorpayGateway

            keys = {
                "PREPAID_RAZORPAY_KEY_ID": _text(settings.razorpay_key_id),
                "PREPAID_RAZORPAY_KEY_SECRET": _secret(settings.razorpay_key_secret),
                "PREPAID_RAZORPAY_WEBHOOK_SECRET": _secret(settings.razorpay_webhook_secret),
            }
            _require("razorpay", keys)
            base = _api_base("PREPAID_RAZORPAY_API_BASE", settings.razorpay_api_base)
            if production and not base.startswith("https://"):
                raise GatewayNotConfigured("PREPAID_RAZORPAY_API_BASE must be https in production.")
            gateways[name] = RazorpayGateway(
                key_id=keys["PREPAID_RAZORPAY_KEY_ID"],
                key_secret=keys["PREPAID_RAZORPAY_KEY_SECRET"],
                webhook_secret=keys["PREPAID_RAZORPAY_WEBHOOK_SECRET"],
                api_base=base,
                timeout=settings.gateway_timeout,
            )
        elif name == "stripe":
            from prepaid.payments.gateways.stripe import StripeGateway

            keys = {
                "PREPAID_STRIPE_SECRET_KEY": _secret(settings.stripe_secret_key),
                "PREPAID_STRIPE_PUBLISHABLE_KEY": _text(settings.stripe_publishable_key),
                "PREPAID_STRIPE_WEBHOOK_SECRET": _secret(settings.stripe_webhook_secret),
            }
            _require("stripe", keys)
            base = _api_base("PREPAID_STRIPE_API_BASE", settings.stripe_api_base)
            if production and not base.startswith("https://"):
                raise GatewayNotConfigured("PREPAID_STRIPE_API_BASE must be https in production.")
            gateways[name] = StripeGateway(
                secret_key=keys["PREPAID_STRIPE_SECRET_KEY"],
                publishable_key=keys["PREPAID_STRIPE_PUBLISHABLE_KEY"],
                webhook_secret=keys["PREPAID_STRIPE_WEBHOOK_SECRET"],
                api_base=base,
                timeout=settings.gateway_timeout,
            )
    return gateways
