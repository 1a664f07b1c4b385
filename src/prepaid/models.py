"""Imports every domain's models so that ``Base.metadata`` knows all tables (for Alembic and checks)."""

from __future__ import annotations


def load_all_models() -> None:
    from prepaid import idempotency  # noqa: F401
    from prepaid.audit import models as audit_models  # noqa: F401
    from prepaid.auth import models as auth_models  # noqa: F401
    from prepaid.catalog import models as catalog_models  # noqa: F401
    from prepaid.ledger import models as ledger_models  # noqa: F401
    from prepaid.metering import models as metering_models  # noqa: F401
    from prepaid.notify import models as notify_models  # noqa: F401
    from prepaid.payments import models as payments_models  # noqa: F401
    from prepaid.payments.gateways import sandbox_models  # noqa: F401
