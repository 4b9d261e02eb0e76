"""feedback-validity counts kept per arm and folded at each update, late primary feedback waiting
for its decision to enter them, and how far each experiment has folded

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-09 10:00:00.000000

Experiments running during the upgrade keep their counts: the late primary feedback they already
have is queued, and their first update counts every matured decision old enough.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

_LIVE = ("running", "holdout")
_DEFAULT_WINDOW_HOURS = 1.0


def upgrade() -> None:
    op.create_table(
        "arm_feedback_stats",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("eligible", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("on_time", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("late", sa.Integer(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_arm_feedback_stats_experiment_id_experiments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_arm_feedback_stats")),
        sa.UniqueConstraint("experiment_id", "arm", name="uq_arm_feedback"),
    )
    op.create_table(
        "late_feedback",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("arm", sa.Integer(), nullable=False),
        sa.Column("decided_at", sa.Double(), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_late_feedback")),
    )
    op.create_index("ix_late_feedback_waiting", "late_feedback", ["experiment_id", "decided_at"])
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.add_column(sa.Column("validity_cutoff", sa.Double(), nullable=True))
        batch_op.add_column(sa.Column("validity_seq", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("validity_low", sa.Integer(), nullable=False, server_default="1"))
    _queue_late_feedback()


def _queue_late_feedback() -> None:
    """Queue the late primary feedback of live experiments, as the feedback path now does."""
    conn = op.get_bind()
    experiments = sa.table(
        "experiments",
        sa.column("id", sa.Integer()),
        sa.column("status", sa.String()),
        sa.column("metric", sa.String()),
        sa.column("policy", sa.JSON()),
    )
    live = conn.execute(
        sa.select(experiments.c.id, experiments.c.metric, experiments.c.policy).where(
            experiments.c.status.in_(_LIVE)
        )
    ).all()
    for exp_id, metric, policy in live:
        hours = (policy or {}).get("attribution_window_hours", _DEFAULT_WINDOW_HOURS)
        conn.execute(
            sa.text(
                "INSERT INTO late_feedback (experiment_id, arm, decided_at) "
                "SELECT d.experiment_id, d.arm, d.decided_at FROM feedback f "
                "JOIN decisions d ON d.id = f.decision_id "
                "WHERE d.experiment_id = :exp AND d.arm IS NOT NULL AND f.metric = :metric "
                "AND f.received_at > d.decided_at + :window"
            ),
            {"exp": exp_id, "metric": metric, "window": float(hours) * 3600.0},
        )


def downgrade() -> None:
    with op.batch_alter_table("experiments", schema=None) as batch_op:
        batch_op.drop_column("validity_low")
        batch_op.drop_column("validity_seq")
        batch_op.drop_column("validity_cutoff")
    op.drop_index("ix_late_feedback_waiting", table_name="late_feedback")
    op.drop_table("late_feedback")
    op.drop_table("arm_feedback_stats")
