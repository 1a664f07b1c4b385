"""Settings, read only from the environment (``PREPAID_*``) or a ``.env`` file."""

from __future__ import annotations

from decimal import Decimal
from functools import cached_property
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

DEV_SECRET_KEY = "dev-only-insecure-secret-key-change-me"  # refused in production
KNOWN_WEAK_SECRETS = frozenset({"", DEV_SECRET_KEY, "secret", "changeme", "change-me", "password"})
MIN_SECRET_LENGTH = 32
KNOWN_GATEWAYS = ("sandbox", "razorpay", "stripe")


def _env(name: str) -> AliasChoices:
    """``PREPAID_NAME`` first, then the un-prefixed ``NAME`` apps already use, then the field name itself (so
    ``Settings(name=...)`` works)."""
    return AliasChoices(f"PREPAID_{name.upper()}", name.upper(), name)


class SettingsError(ValueError):
    """A configuration the server refuses to start with."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="PREPAID_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    env: Literal["development", "production"] = "development"
    database_url: str = "sqlite+aiosqlite:///prepaid.db"
    # Connections each server process keeps open, and how many more it may open for a burst (closed after).
    # About the concurrent requests one process serves; mind PostgreSQL's max_connections across processes.
    db_pool_size: int = Field(default=20, ge=1, le=1000)
    db_max_overflow: int = Field(default=0, ge=0, le=1000)
    secret_key: str = DEV_SECRET_KEY
    base_url: str = "http://127.0.0.1:8000"
    gateways: str = "sandbox"

    # Gateway keys (payments/gateways). Each is also read under the name apps already use (RAZORPAY_KEY_ID, ...)
    # when the PREPAID_ one is unset; secrets are SecretStr, never logged nor shown in a repr.
    razorpay_key_id: str | None = Field(default=None, validation_alias=_env("razorpay_key_id"))
    razorpay_key_secret: SecretStr | None = Field(default=None, validation_alias=_env("razorpay_key_secret"))
    razorpay_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("razorpay_webhook_secret")
    )
    razorpay_api_base: str = "https://api.razorpay.com"
    stripe_secret_key: SecretStr | None = Field(default=None, validation_alias=_env("stripe_secret_key"))
    stripe_publishable_key: str | None = Field(default=None, validation_alias=_env("stripe_publishable_key"))
    stripe_webhook_secret: SecretStr | None = Field(
        default=None, validation_alias=_env("stripe_webhook_secret")
    )
    stripe_api_base: str = "https://api.stripe.com"
    gateway_timeout: float = Field(default=30.0, gt=0, le=300)
    # The built-in sandbox gateway: send some of its webhooks twice and out of order (tests, staging).
    sandbox_chaos: bool = False

    redis_url: str | None = None
    smtp_url: str | None = None
    email_from: str = "prepaid <no-reply@localhost>"
    email_backend: Literal["auto", "smtp", "console", "memory"] = "auto"

    credit_scale: int = Field(default=0, ge=0, le=12)
    allow_user_transfers: bool = False

    # Tax on purchases, percent of the net price (18 for 18 %, at most 4 decimals): added on top (exclusive)
    # or reported as the part of the price that is tax (inclusive). See docs/decisions.md, "the quote".
    tax_percent: Decimal = Field(default=Decimal(0), ge=0, le=100, decimal_places=4)
    tax_inclusive: bool = False

    cors_origins: str = ""
    require_email_verification: bool = False
    report_tz: str = "UTC"
    # === metering: customers by external id ===
    # An API key with customers:write naming an unknown external_id creates that customer on first use, and
    # grants it signup_credits whole credits (times 10**credit_scale) once, as a promotional lot.
    auto_provision: bool = True
    signup_credits: int = Field(default=0, ge=0, le=1_000_000_000)
    # === end metering: customers by external id ===

    access_token_ttl: int = Field(default=15 * 60, ge=60)
    refresh_token_ttl: int = Field(default=30 * 24 * 3600, ge=3600)
    web_session_ttl: int = Field(default=7 * 24 * 3600, ge=600)
    password_reset_ttl: int = Field(default=3600, ge=300)
    email_verification_ttl: int = Field(default=3 * 24 * 3600, ge=600)
    idempotency_ttl: int = Field(default=24 * 3600, ge=60)
    # Seconds a pending order waits for its payment before it expires and its coupon reservation is released.
    order_ttl: int = Field(default=30 * 60, ge=60, le=7 * 24 * 3600)
    # ---- guest checkout and reconciliation
    # Orders with only an email, no login (POST /v1/guest_orders); off by default.
    guest_checkout: bool = False
    # Seconds an unpaid attempt waits before the reconciliation job first asks its gateway about it.
    reconcile_after: int = Field(default=5 * 60, ge=0, le=24 * 3600)
    # ---- notifications
    # Admins are alerted (at most once an hour) when more than this percent of the payment attempts settled in
    # the last hour failed, counted only once at least PAYMENT_FAILURE_ALERT_MIN_ATTEMPTS settled.
    payment_failure_alert_percent: int = Field(default=50, ge=1, le=100)
    payment_failure_alert_min_attempts: int = Field(default=10, ge=1, le=1_000_000)
    # ---- outgoing webhooks (notify/webhooks_out.py): seconds before the first retry (then doubling, for 3
    # days), and the seconds an app's endpoint has to answer.
    webhook_retry_base: float = Field(default=30.0, gt=0, le=3600)
    webhook_timeout: float = Field(default=10.0, gt=0, le=60)
    max_body_bytes: int = Field(default=1024 * 1024, ge=1024)

    rate_limits_enabled: bool = True
    rate_limit_login_ip: str = "30/minute"
    rate_limit_login_email: str = "10/15minute"
    rate_limit_auth: str = "20/minute"
    rate_limit_read: str = "1200/minute"
    rate_limit_write: str = "300/minute"
    rate_limit_order_create: str = "15/hour"
    rate_limit_order_verify: str = "10/15minute"

    run_jobs: bool = True
    job_interval: float = Field(default=2.0, gt=0)
    trusted_proxies: str = ""

    @field_validator("gateways")
    @classmethod
    def _known_gateways(cls, value: str) -> str:
        names = [name.strip() for name in value.split(",") if name.strip()]
        unknown = [name for name in names if name not in KNOWN_GATEWAYS]
        if unknown:
            raise ValueError(f"unknown gateway(s): {', '.join(unknown)}; known: {', '.join(KNOWN_GATEWAYS)}")
        if not names:
            raise ValueError("at least one gateway must be enabled")
        return ",".join(names)

    @model_validator(mode="after")
    def _production_is_safe(self) -> Settings:
        if self.env != "production":
            return self
        if self.secret_key in KNOWN_WEAK_SECRETS or len(self.secret_key) < MIN_SECRET_LENGTH:
            raise SettingsError(
                f"PREPAID_SECRET_KEY must be set to a random value of at least {MIN_SECRET_LENGTH} "
                "characters in production (try: python -c 'import secrets; print(secrets.token_urlsafe(48))')"
            )
        if "sandbox" in self.gateway_names:
            raise SettingsError("the sandbox gateway cannot be enabled in production (PREPAID_GATEWAYS)")
        if self.resolved_email_backend != "smtp" or not self.smtp_url:
            # console prints and memory keeps emails in a list: either way no reset link would ever arrive
            raise SettingsError("production needs a real mail server: set PREPAID_SMTP_URL")
        return self

    @cached_property
    def gateway_names(self) -> tuple[str, ...]:
        return tuple(self.gateways.split(","))

    @cached_property
    def cors_origin_list(self) -> list[str]:
        return [origin.strip() for origin in self.cors_origins.split(",") if origin.strip()]

    @property
    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

    @property
    def resolved_email_backend(self) -> str:
        if self.email_backend != "auto":
            return self.email_backend
        return "smtp" if self.smtp_url else "console"
