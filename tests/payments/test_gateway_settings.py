"""Gateway settings: the DESIGN's names, the un-prefixed names apps already use, secrets kept out of reprs, and
a factory that refuses a gateway enabled without its keys."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from prepaid.payments.gateways import GatewayNotConfigured, build_gateways
from prepaid.payments.gateways.razorpay import RazorpayGateway
from prepaid.payments.gateways.stripe import StripeGateway
from prepaid.settings import Settings

GATEWAY_ENV = (
    "RAZORPAY_KEY_ID",
    "RAZORPAY_KEY_SECRET",
    "RAZORPAY_WEBHOOK_SECRET",
    "STRIPE_SECRET_KEY",
    "STRIPE_PUBLISHABLE_KEY",
    "STRIPE_WEBHOOK_SECRET",
)
RAZORPAY = {
    "PREPAID_RAZORPAY_KEY_ID": "rzp_test_settings",
    "PREPAID_RAZORPAY_KEY_SECRET": "razorpay-secret-value-0001",
    "PREPAID_RAZORPAY_WEBHOOK_SECRET": "razorpay-webhook-secret-0001",
}
STRIPE = {
    "PREPAID_STRIPE_SECRET_KEY": "sk_test_settings_secret_0001",
    "PREPAID_STRIPE_PUBLISHABLE_KEY": "pk_test_settings_0001",
    "PREPAID_STRIPE_WEBHOOK_SECRET": "whsec_settings_secret_0001",
}


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No PREPAID_* or gateway keys from the machine, and no .env from the working folder."""
    for name in list(os.environ):
        if name.startswith("PREPAID_") or name in GATEWAY_ENV:
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def setenv(monkeypatch: pytest.MonkeyPatch, values: dict[str, str]) -> None:
    for name, value in values.items():
        monkeypatch.setenv(name, value)


def test_the_design_names_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {**RAZORPAY, **STRIPE, "PREPAID_GATEWAYS": "razorpay,stripe"})
    monkeypatch.setenv("PREPAID_RAZORPAY_API_BASE", "http://127.0.0.1:9999")
    monkeypatch.setenv("PREPAID_STRIPE_API_BASE", "http://127.0.0.1:9998")
    settings = Settings(_env_file=None)
    assert settings.gateway_names == ("razorpay", "stripe")
    assert settings.razorpay_key_id == "rzp_test_settings"
    assert settings.razorpay_key_secret is not None
    assert settings.razorpay_key_secret.get_secret_value() == "razorpay-secret-value-0001"
    assert settings.stripe_publishable_key == "pk_test_settings_0001"
    assert settings.stripe_webhook_secret is not None
    assert settings.stripe_webhook_secret.get_secret_value() == "whsec_settings_secret_0001"
    assert (settings.razorpay_api_base, settings.stripe_api_base) == (
        "http://127.0.0.1:9999",
        "http://127.0.0.1:9998",
    )


def test_the_names_apps_already_use_are_read_when_the_prefixed_ones_are_unset(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setenv(
        monkeypatch, {name.removeprefix("PREPAID_"): value for name, value in {**RAZORPAY, **STRIPE}.items()}
    )
    settings = Settings(_env_file=None)
    assert settings.razorpay_key_id == "rzp_test_settings"
    assert settings.stripe_secret_key is not None
    assert settings.stripe_secret_key.get_secret_value() == "sk_test_settings_secret_0001"
    # the prefixed name wins when both are set
    monkeypatch.setenv("PREPAID_STRIPE_SECRET_KEY", "sk_test_prefixed")
    monkeypatch.setenv("PREPAID_RAZORPAY_KEY_ID", "rzp_test_prefixed")
    settings = Settings(_env_file=None)
    assert (
        settings.stripe_secret_key is not None
        and settings.stripe_secret_key.get_secret_value() == "sk_test_prefixed"
    )
    assert settings.razorpay_key_id == "rzp_test_prefixed"


def test_the_dotenv_file_is_read_under_both_names(tmp_path: Path) -> None:
    (tmp_path / ".env").write_text(
        "STRIPE_WEBHOOK_SECRET=whsec_from_dotenv\nPREPAID_RAZORPAY_KEY_SECRET=rzp_from_dotenv\nRAZORPAY_KEY_SECRET=plain\n"
    )
    settings = Settings()
    assert settings.stripe_webhook_secret is not None
    assert settings.stripe_webhook_secret.get_secret_value() == "whsec_from_dotenv"
    assert settings.razorpay_key_secret is not None
    assert settings.razorpay_key_secret.get_secret_value() == "rzp_from_dotenv"


def test_secrets_never_show_in_a_repr(monkeypatch: pytest.MonkeyPatch) -> None:
    setenv(monkeypatch, {**RAZORPAY, **STRIPE, "PREPAID_GATEWAYS": "razorpay,stripe"})
    settings = Settings(_env_file=None)
    shown = repr(settings) + str(settings) + settings.model_dump_json()
    gateways = build_gateways(settings)
    shown += repr(gateways)
    for secret in (
        RAZORPAY["PREPAID_RAZORPAY_KEY_SECRET"],
        RAZORPAY["PREPAID_RAZORPAY_WEBHOOK_SECRET"],
        STRIPE["PREPAID_STRIPE_SECRET_KEY"],
        STRIPE["PREPAID_STRIPE_WEBHOOK_SECRET"],
    ):
        assert secret not in shown


async def test_the_factory_builds_the_enabled_gateways(monkeypatch: pytest.MonkeyPatch) -> None:
    default = build_gateways(Settings(_env_file=None))  # the default: the built-in sandbox only
    assert list(default) == ["sandbox"] and default["sandbox"].name == "sandbox"
    await default["sandbox"].aclose()
    setenv(monkeypatch, {**RAZORPAY, **STRIPE})
    monkeypatch.setenv("PREPAID_GATEWAYS", "sandbox,stripe")
    only_stripe = build_gateways(Settings(_env_file=None))
    assert list(only_stripe) == ["sandbox", "stripe"] and isinstance(only_stripe["stripe"], StripeGateway)
    monkeypatch.setenv("PREPAID_GATEWAYS", "razorpay,stripe")
    both = build_gateways(Settings(_env_file=None))
    assert isinstance(both["razorpay"], RazorpayGateway) and isinstance(both["stripe"], StripeGateway)
    assert both["razorpay"].api_base == "https://api.razorpay.com"
    assert both["stripe"].api_base == "https://api.stripe.com"
    for gateway in both.values():
        await gateway.aclose()
    for gateway in only_stripe.values():
        await gateway.aclose()


@pytest.mark.parametrize(
    ("gateways", "env", "missing"),
    [
        (
            "razorpay",
            {},
            "PREPAID_RAZORPAY_KEY_ID, PREPAID_RAZORPAY_KEY_SECRET, PREPAID_RAZORPAY_WEBHOOK_SECRET are",
        ),
        (
            "razorpay",
            {k: v for k, v in RAZORPAY.items() if "WEBHOOK" not in k},
            "PREPAID_RAZORPAY_WEBHOOK_SECRET is",
        ),
        ("stripe,razorpay", {**RAZORPAY}, "PREPAID_STRIPE_SECRET_KEY, PREPAID_STRIPE_PUBLISHABLE_KEY"),
        ("stripe", {**STRIPE, "PREPAID_STRIPE_PUBLISHABLE_KEY": "  "}, "PREPAID_STRIPE_PUBLISHABLE_KEY is"),
        ("stripe", {**STRIPE, "PREPAID_STRIPE_SECRET_KEY": ""}, "PREPAID_STRIPE_SECRET_KEY is"),
    ],
)
def test_a_gateway_enabled_without_its_keys_is_refused_clearly(
    monkeypatch: pytest.MonkeyPatch, gateways: str, env: dict[str, str], missing: str
) -> None:
    setenv(monkeypatch, {**env, "PREPAID_GATEWAYS": gateways})
    with pytest.raises(GatewayNotConfigured) as refused:
        build_gateways(Settings(_env_file=None))
    assert missing in str(refused.value) and "not set" in str(refused.value)


def test_an_api_base_that_is_not_a_url_or_not_https_in_production_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    setenv(monkeypatch, {**STRIPE, "PREPAID_GATEWAYS": "stripe", "PREPAID_STRIPE_API_BASE": "ftp://example"})
    with pytest.raises(GatewayNotConfigured, match="http"):
        build_gateways(Settings(_env_file=None))
    setenv(
        monkeypatch,
        {
            "PREPAID_STRIPE_API_BASE": "http://127.0.0.1:1",
            "PREPAID_ENV": "production",
            "PREPAID_SECRET_KEY": "p" * 40,
            "PREPAID_SMTP_URL": "smtp://mail.example.com:587",
        },
    )
    with pytest.raises(GatewayNotConfigured, match="https in production"):
        build_gateways(Settings(_env_file=None))
