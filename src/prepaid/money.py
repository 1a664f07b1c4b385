"""Assets and their minor units. Amounts are integers in the smallest unit everywhere; ``Decimal`` only for
display and rate math.

The credit asset's scale (``PREPAID_CREDIT_SCALE``, decimals) is fixed when the database is created: with
scale 0 one credit is 1; with scale 6, one credit is 1,000,000 and a millionth of a credit is 1.
"""

from __future__ import annotations

from decimal import Decimal

CREDIT = "credit"

# ISO 4217 minor units of the currencies the gateways take.
CURRENCY_MINOR_UNITS = {"INR": 2, "USD": 2, "EUR": 2, "GBP": 2, "JPY": 0, "AUD": 2, "CAD": 2, "SGD": 2}


def to_display(amount: int, scale: int) -> Decimal:
    return Decimal(amount).scaleb(-scale)
