"""units and their first exposure; per-arm, per-epoch sums of secondary and guardrail metrics;
an experiment's declared metrics and holdout

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-02 16:30:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "units",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.String(length=256), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("first_epoch", sa.Integer(), nullable=False),
        sa.Column("decisions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total", sa.Double(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_units_experiment_id_experiments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "unit_id", name=op.f("pk_units")),
    )
    op.create_table(
        "arm_metric_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("n", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("s", sa.Double(), nullable=False, server_default="0"),
        sa.Column("ss", sa.Double(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_arm_metric_stats_experiment_id_experiments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arm_metric_stats")),
        sa.UniqueConstraint("experiment_id", "metric", "arm", "epoch", name="uq_arm_metric_epoch"),
    )
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("metrics", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("holdout", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("holdout")
        batch_op.drop_column("metrics")
    op.drop_table("arm_metric_stats")
    op.drop_table("units")
