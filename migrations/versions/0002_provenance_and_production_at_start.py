"""git state of versions; production version at an experiment's start

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-02 15:15:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

DIRTY_SUFFIX = "+dirty"


def upgrade() -> None:
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.add_column(sa.Column("git_state", sa.String(length=16), nullable=True))
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("production_version_at_start", sa.Integer(), nullable=True))
    # Earlier releases marked an edited file by a suffix on the commit: it becomes the state.
    op.execute(sa.text(
        "UPDATE versions SET git_state = 'dirty', "
        "git_commit = substr(git_commit, 1, length(git_commit) - :n) "
        "WHERE git_commit LIKE :pattern").bindparams(n=len(DIRTY_SUFFIX),
                                                    pattern=f"%{DIRTY_SUFFIX}"))
    op.execute("UPDATE versions SET git_state = 'clean' "
               "WHERE git_commit IS NOT NULL AND git_state IS NULL")


def downgrade() -> None:
    op.execute(sa.text("UPDATE versions SET git_commit = git_commit || :suffix "
                       "WHERE git_state = 'dirty'").bindparams(suffix=DIRTY_SUFFIX))
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("production_version_at_start")
    with op.batch_alter_table("versions", schema=None) as batch_op:
        batch_op.drop_column("git_state")
