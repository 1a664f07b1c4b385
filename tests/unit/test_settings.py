"""Settings come from the environment or ``.env``; a production start refuses what is unsafe."""

from __future__ import annotations

import os
import secrets
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from prepaid.settings import DEV_SECRET_KEY, Settings

STRONG = secrets.token_urlsafe(48)
SAFE_PRODUCTION = {
    "env": "production",
    "secret_key": STRONG,
    "gateways": "stripe",
    "smtp_url": "smtp://mail.example.com:587?starttls=true",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PREPAID_* from the machine running the tests, and no .env from the working folder."""
    for name in list(os.environ):
        if name.startswith("PREPAID_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def make(**values: Any) -> Settings:
    return Settings(_env_file=None, **values)


def test_development_defaults_run_out_of_the_box() -> None:
    settings = make()
    assert settings.env == "development"
    assert settings.secret_key == DEV_SECRET_KEY
    assert settings.gateway_names == ("sandbox",)
    assert settings.database_url.startswith("sqlite+aiosqlite:///")
    assert settings.resolved_email_backend == "console"
    assert settings.cors_origin_list == []
    assert settings.max_body_bytes == 1024 * 1024
    assert settings.idempotency_ttl == 24 * 3600


def test_a_safe_production_configuration_is_accepted() -> None:
    settings = make(**SAFE_PRODUCTION)
    assert settings.env == "production"
    assert settings.resolved_email_backend == "smtp"


@pytest.mark.parametrize(
    "secret",
    [None, DEV_SECRET_KEY, "", "secret", "changeme", "password", "short-but-random-Zq81xV", "x" * 31],
    ids=["missing", "dev-default", "empty", "secret", "changeme", "password", "short", "31-chars"],
)
def test_production_refuses_a_missing_or_weak_secret(secret: str | None) -> None:
    values = {**SAFE_PRODUCTION}
    if secret is None:
        del values["secret_key"]
    else:
        values["secret_key"] = secret
    with pytest.raises(ValidationError, match="PREPAID_SECRET_KEY") as refused:
        make(**values)
    if secret and len(secret) > 20:
        assert secret not in refused.value.errors()[0]["msg"]  # a refused secret is not echoed
    assert make(**{**values, "env": "development"}).env == "development"


def test_a_32_character_secret_is_enough() -> None:
    assert make(**{**SAFE_PRODUCTION, "secret_key": "k" * 32}).secret_key == "k" * 32


@pytest.mark.parametrize("gateways", ["sandbox", "stripe,sandbox", " razorpay , sandbox "])
def test_production_refuses_the_sandbox_gateway(gateways: str) -> None:
    with pytest.raises(ValidationError, match="sandbox gateway cannot be enabled in production"):
        make(**{**SAFE_PRODUCTION, "gateways": gateways})


@pytest.mark.parametrize(
    "mail",
    [{}, {"email_backend": "console"}, {"email_backend": "memory"}, {"email_backend": "smtp"}],
    ids=["no-smtp-url", "console", "memory", "smtp-without-url"],
)
def test_production_refuses_a_missing_mail_server(mail: dict[str, str]) -> None:
    values = {key: value for key, value in SAFE_PRODUCTION.items() if key != "smtp_url"}
    with pytest.raises(ValidationError, match="PREPAID_SMTP_URL"):
        make(**values, **mail)
    with pytest.raises(ValidationError, match="PREPAID_SMTP_URL"):
        make(**SAFE_PRODUCTION, email_backend="memory")


@pytest.mark.parametrize("gateways", ["paypal", "stripe,paypal", "sandbox;stripe", "Stripe2"])
def test_unknown_gateway_names_are_refused(gateways: str) -> None:
    with pytest.raises(ValidationError, match="unknown gateway") as refused:
        make(gateways=gateways)
    assert "sandbox, razorpay, stripe" in str(refused.value)  # the message lists the known ones


@pytest.mark.parametrize("gateways", ["", " , ", ","])
def test_at_least_one_gateway_is_needed(gateways: str) -> None:
    with pytest.raises(ValidationError, match="at least one gateway"):
        make(gateways=gateways)


def test_gateway_lists_are_trimmed() -> None:
    settings = make(gateways=" stripe , razorpay,sandbox ")
    assert settings.gateways == "stripe,razorpay,sandbox"
    assert settings.gateway_names == ("stripe", "razorpay", "sandbox")


def test_values_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {
        "PREPAID_ENV": "production",
        "PREPAID_SECRET_KEY": STRONG,
        "PREPAID_GATEWAYS": "razorpay",
        "PREPAID_SMTP_URL": "smtps://mail.example.com",
        "PREPAID_CORS_ORIGINS": "https://a.example.com, https://b.example.com,",
        "PREPAID_RATE_LIMIT_LOGIN_IP": "5/minute",
        "PREPAID_REDIS_URL": "redis://127.0.0.1:6379/3",
    }.items():
        monkeypatch.setenv(name, value)
    settings = make()
    assert settings.env == "production"
    assert settings.secret_key == STRONG
    assert settings.gateway_names == ("razorpay",)
    assert settings.cors_origin_list == ["https://a.example.com", "https://b.example.com"]
    assert settings.rate_limit_login_ip == "5/minute"
    assert settings.redis_url == "redis://127.0.0.1:6379/3"


def test_production_refusal_applies_to_the_environment_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PREPAID_ENV", "production")
    monkeypatch.setenv("PREPAID_GATEWAYS", "stripe")
    monkeypatch.setenv("PREPAID_SMTP_URL", "smtp://mail.example.com")
    with pytest.raises(ValidationError, match="PREPAID_SECRET_KEY"):
        make()


def test_values_come_from_a_dotenv_file(tmp_path: Path) -> None:
    env_file = tmp_path / ".env"
    env_file.write_text(
        f"PREPAID_SECRET_KEY={STRONG}\nPREPAID_BASE_URL=https://credits.example.com\nOTHER=1\n"
    )
    settings = Settings(_env_file=str(env_file))
    assert settings.secret_key == STRONG
    assert settings.base_url == "https://credits.example.com"
    assert Settings().secret_key == STRONG  # .env in the working folder is read by default


@pytest.mark.parametrize(
    "values",
    [
        {"env": "staging"},
        {"idempotency_ttl": 10},
        {"max_body_bytes": 10},
        {"email_backend": "carrier-pigeon"},
    ],
)
def test_invalid_values_are_refused(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        make(**values)
