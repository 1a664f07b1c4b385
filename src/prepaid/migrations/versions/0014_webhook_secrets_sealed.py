"""outgoing webhooks: endpoint secrets sealed at rest (AES-GCM under a key derived from PREPAID_SECRET_KEY)

``notify_webhook_endpoint.secret`` (clear text) becomes ``secret_sealed`` (``webhooks_out.seal_secret``: AES-GCM
under a key derived from ``PREPAID_SECRET_KEY`` and the endpoint's id). Existing secrets are sealed on the way
up and unsealed on the way down, so both directions need the deployment's ``PREPAID_SECRET_KEY`` (read from the
environment, as ``prepaid migrate`` does for everything else); a deleted endpoint's forgotten secret ('') is
None up here and '' again down there.

Revision ID: 0014_webhook_secrets_sealed
Revises: 0013_webhooks_out
Create Date: 2026-11-26 14:30:00.000000
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_webhook_secrets_sealed"
down_revision: str | None = "0013_webhooks_out"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

TABLE = "notify_webhook_endpoint"
_endpoints = sa.table(
    TABLE,
    sa.column("id", sa.String()),
    sa.column("secret", sa.String()),
    sa.column("secret_sealed", sa.LargeBinary()),
)


def _secret_key() -> str:
    from prepaid.settings import Settings

    return Settings().secret_key


def upgrade() -> None:
    from prepaid.notify.webhooks_out import seal_secret

    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret_sealed", sa.LargeBinary(), nullable=True))
    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_endpoints.c.id, _endpoints.c.secret).where(_endpoints.c.secret != "")
    ).all()
    if rows:
        key = _secret_key()
        for endpoint_id, secret in rows:
            bind.execute(
                _endpoints.update()
                .where(_endpoints.c.id == endpoint_id)
                .values(secret_sealed=seal_secret(key, endpoint_id, secret))
            )
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.drop_column("secret")


def downgrade() -> None:
    from prepaid.notify.webhooks_out import unseal_secret

    bind = op.get_bind()
    rows = bind.execute(
        sa.select(_endpoints.c.id, _endpoints.c.secret_sealed).where(_endpoints.c.secret_sealed.is_not(None))
    ).all()
    # Every secret is opened before anything changes: with another PREPAID_SECRET_KEY this raises InvalidTag
    # and the schema is left as it was.
    key = _secret_key() if rows else ""
    opened = {endpoint_id: unseal_secret(key, endpoint_id, bytes(sealed)) for endpoint_id, sealed in rows}
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.add_column(sa.Column("secret", sa.String(length=100), nullable=True))
    bind.execute(_endpoints.update().where(_endpoints.c.secret_sealed.is_(None)).values(secret=""))
    for endpoint_id, secret in opened.items():
        bind.execute(_endpoints.update().where(_endpoints.c.id == endpoint_id).values(secret=secret))
    with op.batch_alter_table(TABLE, schema=None) as batch_op:
        batch_op.alter_column("secret", existing_type=sa.String(length=100), nullable=False)
        batch_op.drop_column("secret_sealed")
