"""eval runs, their versions and cases; experiment eval gates

Revision ID: 0004
Revises: 0003
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "eval_runs",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("eval_name", sa.String(length=64), nullable=False),
        sa.Column("prompt_id", sa.Integer(), nullable=False),
        sa.Column("dataset_hash", sa.String(length=64), nullable=False),
        sa.Column("cases", sa.Integer(), nullable=False),
        sa.Column("repeat", sa.Integer(), nullable=False),
        sa.Column("threshold", sa.Double(), nullable=False),
        sa.Column("gate", sa.JSON(), nullable=False),
        sa.Column("baseline_version", sa.Integer(), nullable=True),
        sa.Column("gate_passed", sa.Boolean(), nullable=False),
        sa.Column("gate_reasons", sa.JSON(), nullable=False),
        sa.Column("source_path", sa.Text(), nullable=True),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Double(), nullable=False),
        sa.ForeignKeyConstraint(["prompt_id"], ["prompts.id"],
                                name=op.f("fk_eval_runs_prompt_id_prompts"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_runs")),
    )
    op.create_index("ix_eval_runs_eval_prompt", "eval_runs", ["eval_name", "prompt_id"])
    op.create_table(
        "eval_run_versions",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("variant", sa.String(length=64), nullable=False),
        sa.Column("passed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("errors", sa.Integer(), nullable=False),
        sa.Column("score_mean", sa.Double(), nullable=True),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("latency_ms_mean", sa.Double(), nullable=True),
        sa.Column("comparison", sa.JSON(), nullable=True),
        sa.Column("gate_passed", sa.Boolean(), nullable=False),
        sa.Column("gate_reasons", sa.JSON(), nullable=False),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"],
                                name=op.f("fk_eval_run_versions_run_id_eval_runs"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["version_id"], ["versions.id"],
                                name=op.f("fk_eval_run_versions_version_id_versions"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_run_versions")),
        sa.UniqueConstraint("run_id", "version_id", name="uq_eval_run_versions_run_version"),
    )
    op.create_index(op.f("ix_eval_run_versions_version_id"), "eval_run_versions", ["version_id"])
    op.create_table(
        "eval_cases",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.Integer(), nullable=False),
        sa.Column("version_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.Column("case_id", sa.String(length=200), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("score", sa.Double(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("outputs", sa.JSON(), nullable=False),
        sa.Column("assertions", sa.JSON(), nullable=False),
        sa.Column("cost_usd", sa.Double(), nullable=True),
        sa.Column("latency_ms", sa.Double(), nullable=True),
        sa.ForeignKeyConstraint(["run_id"], ["eval_runs.id"],
                                name=op.f("fk_eval_cases_run_id_eval_runs"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_eval_cases")),
    )
    op.create_index("ix_eval_cases_run_version", "eval_cases", ["run_id", "version_id"])
    op.create_table(
        "experiment_gates",
        sa.Column("experiment_id", sa.Integer(), nullable=False),
        sa.Column("eval_name", sa.String(length=64), nullable=False),
        sa.Column("auto_start", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(["experiment_id"], ["experiments.id"],
                                name=op.f("fk_experiment_gates_experiment_id_experiments"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("experiment_id", name=op.f("pk_experiment_gates")),
    )


def downgrade() -> None:
    op.drop_table("experiment_gates")
    op.drop_index("ix_eval_cases_run_version", table_name="eval_cases")
    op.drop_table("eval_cases")
    op.drop_index(op.f("ix_eval_run_versions_version_id"), table_name="eval_run_versions")
    op.drop_table("eval_run_versions")
    op.drop_index("ix_eval_runs_eval_prompt", table_name="eval_runs")
    op.drop_table("eval_runs")
