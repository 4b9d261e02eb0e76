"""secondary and guardrail metrics per unit: each unit's count and sum per metric; the unit of a
gateway call; call sums split by whether the decision had a unit

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-09 15:00:00.000000
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "unit_metrics",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("unit_id", sa.String(length=256), nullable=False),
        sa.Column("metric", sa.String(length=64), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("total", sa.Double(), nullable=False, server_default="0"),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_unit_metrics_experiment_id_experiments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", "unit_id", "metric", name=op.f("pk_unit_metrics")),
    )
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.add_column(sa.Column("unit_id", sa.String(length=256), nullable=True))
    with op.batch_alter_table("call_stats", schema=None) as batch_op:
        batch_op.add_column(sa.Column("with_unit", sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.drop_constraint("uq_call_stats", type_="unique")
        batch_op.create_unique_constraint("uq_call_stats", ["experiment_id", "arm", "epoch", "with_unit"])


def downgrade() -> None:
    # Rows of calls with a unit fold into the rows of the same arm and epoch.
    conn = op.get_bind()
    sums = ("calls", "errors", "cache_hits", "cost_n", "cost_sum", "cost_ss", "latency_sum", "latency_ss",
            "tokens_n", "prompt_tokens_sum", "completion_tokens_sum")
    table = sa.table("call_stats", sa.column("id", sa.Integer()), sa.column("experiment_id", sa.Integer()),
                     sa.column("arm", sa.Integer()), sa.column("epoch", sa.Integer()),
                     sa.column("with_unit", sa.Boolean()), sa.column("latency_hist", sa.JSON()),
                     *(sa.column(c) for c in sums))
    for row in conn.execute(sa.select(table).where(table.c.with_unit.is_(True))).mappings().all():
        key = ((table.c.experiment_id == row["experiment_id"]) & (table.c.arm == row["arm"])
               & (table.c.epoch == row["epoch"]) & table.c.with_unit.is_(False))
        other = conn.execute(sa.select(table).where(key)).mappings().first()
        if other is None:
            conn.execute(sa.update(table).where(table.c.id == row["id"]).values(with_unit=False))
            continue
        hist = list(other["latency_hist"] or [])
        for i, count in enumerate(row["latency_hist"] or []):
            hist.extend([0] * (i + 1 - len(hist)))
            hist[i] += count
        conn.execute(sa.update(table).where(table.c.id == other["id"]).values(
            latency_hist=hist, **{c: (other[c] or 0) + (row[c] or 0) for c in sums}))
        conn.execute(sa.delete(table).where(table.c.id == row["id"]))
    with op.batch_alter_table("call_stats", schema=None) as batch_op:
        batch_op.drop_constraint("uq_call_stats", type_="unique")
        batch_op.create_unique_constraint("uq_call_stats", ["experiment_id", "arm", "epoch"])
        batch_op.drop_column("with_unit")
    with op.batch_alter_table("calls", schema=None) as batch_op:
        batch_op.drop_column("unit_id")
    op.drop_table("unit_metrics")
