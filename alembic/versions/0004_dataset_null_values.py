"""dataset null values: the CSV null tokens an upload or import gave

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-16
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # NULL for every existing dataset: the default list, should it be validated again.
    op.add_column("datasets", sa.Column("null_values", sa.JSON(), nullable=True))


def downgrade() -> None:
    # A plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), as 0003 does.
    op.drop_column("datasets", "null_values")
