"""Metering service."""

from __future__ import annotations

# === usage (customers by external id, usage events) ===
# The rules live in prepaid.metering.usage; these are the names the routes call.
from prepaid.metering.usage import (
    NO_PROVISIONING,
    Outcome,
    Provisioning,
    UsageRow,
    customer_or_provision,
    customer_transactions,
    customer_wallets,
    find_customer,
    get_usage,
    list_usage,
    put_customer,
    record_usage,
    report_zone,
    summarize_usage,
)

__all__ = [
    "NO_PROVISIONING",
    "Outcome",
    "Provisioning",
    "UsageRow",
    "customer_or_provision",
    "customer_transactions",
    "customer_wallets",
    "find_customer",
    "get_usage",
    "list_usage",
    "put_customer",
    "record_usage",
    "report_zone",
    "summarize_usage",
]
# === end usage ===
