"""model routing (traffic, shadow, history) and shadow scores

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

BigId = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "model_routing",
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("routing", sa.JSON(), nullable=False),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("model", name="pk_model_routing"),
    )
    op.create_table(
        "shadow_scores",
        sa.Column("id", BigId, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("model", sa.String(100), nullable=False),
        sa.Column("version", sa.String(100), nullable=False),
        sa.Column("fake_prob", sa.Float(), nullable=False),
        sa.Column("shadow_version", sa.String(100), nullable=False),
        sa.Column("shadow_fake_prob", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_shadow_scores"),
    )
    op.create_index(
        "ix_shadow_scores_pair",
        "shadow_scores",
        ["model", "version", "shadow_version", "created_at"],
    )


def downgrade() -> None:
    op.drop_index("ix_shadow_scores_pair", table_name="shadow_scores")
    op.drop_table("shadow_scores")
    op.drop_table("model_routing")
