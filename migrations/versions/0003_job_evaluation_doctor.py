"""job evaluation summary and dataset doctor findings

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-02 19:00:00
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.add_column(sa.Column("evaluation", sa.JSON(), nullable=True))
        batch.add_column(sa.Column("doctor", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("fine_tuning_jobs") as batch:
        batch.drop_column("doctor")
        batch.drop_column("evaluation")
