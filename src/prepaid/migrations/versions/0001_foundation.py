"""foundation: users, auth, api keys, outbox, audit log, idempotency

Revision ID: 0001
Revises:
Create Date: 2026-11-26 06:55:20.710973
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

import prepaid.db

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_log_entry",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("actor_user_id", sa.String(length=32), nullable=True),
        sa.Column("actor_api_key_id", sa.String(length=32), nullable=True),
        sa.Column("action", sa.String(length=100), nullable=False),
        sa.Column("object_type", sa.String(length=50), nullable=False),
        sa.Column("object_id", sa.String(length=64), nullable=True),
        sa.Column("before", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("after", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True),
        sa.Column("request_id", sa.String(length=64), nullable=True),
        sa.Column("ip", sa.String(length=64), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log_entry")),
    )
    with op.batch_alter_table("audit_log_entry", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_audit_log_entry_action"), ["action"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_entry_actor_user_id"), ["actor_user_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_entry_created_at"), ["created_at"], unique=False)
        batch_op.create_index(batch_op.f("ix_audit_log_entry_object_id"), ["object_id"], unique=False)

    op.create_table(
        "auth_user",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("email", sa.String(length=320), nullable=True),
        sa.Column("password_hash", sa.String(length=255), nullable=True),
        sa.Column("phone", sa.String(length=32), nullable=True),
        sa.Column("external_id", sa.String(length=128), nullable=True),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("roles", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("active", sa.Boolean(), nullable=False),
        sa.Column("email_verified_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("deleted_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("updated_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_user")),
        sa.UniqueConstraint("email", name=op.f("uq_auth_user_email")),
        sa.UniqueConstraint("external_id", name=op.f("uq_auth_user_external_id")),
    )
    op.create_table(
        "idempotency_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("caller", sa.String(length=100), nullable=False),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.String(length=64), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column(
            "response_headers", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=True
        ),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_idempotency_key")),
        sa.UniqueConstraint("caller", "key", name=op.f("uq_idempotency_key_caller_key")),
    )
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_idempotency_key_expires_at"), ["expires_at"], unique=False)

    op.create_table(
        "notify_outbox",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("channel", sa.String(length=32), nullable=False),
        sa.Column("recipient", sa.String(length=320), nullable=False),
        sa.Column("template", sa.String(length=100), nullable=False),
        sa.Column("payload", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("claimed_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("sent_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_notify_outbox")),
    )
    with op.batch_alter_table("notify_outbox", schema=None) as batch_op:
        batch_op.create_index(
            "ix_notify_outbox_status_next_attempt_at", ["status", "next_attempt_at"], unique=False
        )

    op.create_table(
        "auth_api_key",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("prefix", sa.String(length=32), nullable=False),
        sa.Column("key_hash", sa.String(length=64), nullable=False),
        sa.Column("scopes", sa.JSON().with_variant(postgresql.JSONB(), "postgresql"), nullable=False),
        sa.Column("server", sa.Boolean(), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"], ["auth_user.id"], name=op.f("fk_auth_api_key_user_id_auth_user"), ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_api_key")),
        sa.UniqueConstraint("prefix", name=op.f("uq_auth_api_key_prefix")),
    )
    with op.batch_alter_table("auth_api_key", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_api_key_user_id"), ["user_id"], unique=False)

    op.create_table(
        "auth_one_time_token",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("purpose", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("used_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_user.id"],
            name=op.f("fk_auth_one_time_token_user_id_auth_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_one_time_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_one_time_token_token_hash")),
    )
    with op.batch_alter_table("auth_one_time_token", schema=None) as batch_op:
        batch_op.create_index("ix_auth_one_time_token_user_purpose", ["user_id", "purpose"], unique=False)

    op.create_table(
        "auth_refresh_token",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("family_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("spent_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("revoked_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_user.id"],
            name=op.f("fk_auth_refresh_token_user_id_auth_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_refresh_token")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_refresh_token_token_hash")),
    )
    with op.batch_alter_table("auth_refresh_token", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_refresh_token_family_id"), ["family_id"], unique=False)
        batch_op.create_index(batch_op.f("ix_auth_refresh_token_user_id"), ["user_id"], unique=False)

    op.create_table(
        "auth_web_session",
        sa.Column("id", sa.String(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=32), nullable=False),
        sa.Column("token_hash", sa.String(length=64), nullable=False),
        sa.Column("csrf_token", sa.String(length=64), nullable=False),
        sa.Column("created_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("expires_at", prepaid.db.UTCDateTime(), nullable=False),
        sa.Column("revoked_at", prepaid.db.UTCDateTime(), nullable=True),
        sa.Column("user_agent", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["auth_user.id"],
            name=op.f("fk_auth_web_session_user_id_auth_user"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_auth_web_session")),
        sa.UniqueConstraint("token_hash", name=op.f("uq_auth_web_session_token_hash")),
    )
    with op.batch_alter_table("auth_web_session", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_auth_web_session_user_id"), ["user_id"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("auth_web_session", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_web_session_user_id"))

    op.drop_table("auth_web_session")
    with op.batch_alter_table("auth_refresh_token", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_refresh_token_user_id"))
        batch_op.drop_index(batch_op.f("ix_auth_refresh_token_family_id"))

    op.drop_table("auth_refresh_token")
    with op.batch_alter_table("auth_one_time_token", schema=None) as batch_op:
        batch_op.drop_index("ix_auth_one_time_token_user_purpose")

    op.drop_table("auth_one_time_token")
    with op.batch_alter_table("auth_api_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_auth_api_key_user_id"))

    op.drop_table("auth_api_key")
    with op.batch_alter_table("notify_outbox", schema=None) as batch_op:
        batch_op.drop_index("ix_notify_outbox_status_next_attempt_at")

    op.drop_table("notify_outbox")
    with op.batch_alter_table("idempotency_key", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_idempotency_key_expires_at"))

    op.drop_table("idempotency_key")
    op.drop_table("auth_user")
    with op.batch_alter_table("audit_log_entry", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_audit_log_entry_object_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_entry_created_at"))
        batch_op.drop_index(batch_op.f("ix_audit_log_entry_actor_user_id"))
        batch_op.drop_index(batch_op.f("ix_audit_log_entry_action"))

    op.drop_table("audit_log_entry")
