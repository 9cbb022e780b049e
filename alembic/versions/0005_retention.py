"""retention and usage: datasets' last use and copy size, pending object deletions

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("datasets", sa.Column("last_used_at", sa.DateTime(timezone=True), nullable=True))
    op.add_column("datasets", sa.Column("copy_bytes", sa.BigInteger(), nullable=True))
    # A dataset's last use so far: the creation of its newest job.
    op.execute(
        "UPDATE datasets SET last_used_at = "
        "(SELECT max(jobs.created_at) FROM jobs WHERE jobs.dataset_id = datasets.id)"
    )
    op.create_index(op.f("ix_jobs_finished_at"), "jobs", ["finished_at"])
    op.create_table(
        "pending_object_deletions",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("bucket", sa.String(length=16), nullable=False),
        sa.Column("prefix", sa.String(length=512), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_pending_object_deletions")),
    )


def downgrade() -> None:
    op.drop_table("pending_object_deletions")
    op.drop_index(op.f("ix_jobs_finished_at"), table_name="jobs")
    # Plain ALTER TABLE ... DROP COLUMN (SQLite 3.35+), as 0003 does.
    op.drop_column("datasets", "copy_bytes")
    op.drop_column("datasets", "last_used_at")
