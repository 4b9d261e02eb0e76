"""SQLAlchemy 2.0 tables of the registry, experiments, decisions, feedback, keys and audit log.

Times are stored as UTC seconds since the epoch (double precision): comparisons on the hot path and
in the maturation query stay cheap and identical on SQLite and PostgreSQL.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Double,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

NAMING = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base with a naming convention so migrations are stable across databases."""

    metadata = MetaData(naming_convention=NAMING)
    type_annotation_map = {dict[str, Any]: JSON, list[Any]: JSON}


class PromptRow(Base):
    """A prompt: a name and its metadata; content lives in versions."""

    __tablename__ = "prompts"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    description: Mapped[str] = mapped_column(Text, default="")
    tags: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    updated_at: Mapped[float] = mapped_column(Double)


class VersionRow(Base):
    """An immutable snapshot of one prompt's content."""

    __tablename__ = "versions"
    __table_args__ = (
        UniqueConstraint("prompt_id", "number", name="uq_versions_prompt_number"),
        UniqueConstraint("prompt_id", "content_hash", name="uq_versions_prompt_hash"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    number: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(64), default="main")
    content: Mapped[dict[str, Any]] = mapped_column(JSON)
    content_hash: Mapped[str] = mapped_column(String(64))
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    git_commit: Mapped[str | None] = mapped_column(String(64), nullable=True)
    git_author: Mapped[str | None] = mapped_column(Text, nullable=True)
    # clean | dirty (uncommitted changes) | untracked (in no commit); NULL outside a git work tree.
    git_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    created_at: Mapped[float] = mapped_column(Double)


class LabelRow(Base):
    """A label of a prompt pointing at one version."""

    __tablename__ = "labels"
    __table_args__ = (UniqueConstraint("prompt_id", "name", name="uq_labels_prompt_name"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    name: Mapped[str] = mapped_column(String(64))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    updated_at: Mapped[float] = mapped_column(Double)


ACTOR_LENGTH = 128
"""The longest actor name stored; longer ones are cut to it (`fit_actor`)."""


def fit_actor(actor: str) -> str:
    """An actor name cut to the column's length, the same on every database."""
    return actor[:ACTOR_LENGTH]


class AuditRow(Base):
    """An append-only record of a change: who, what, when, with evidence in `details`."""

    __tablename__ = "audit_log"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    at: Mapped[float] = mapped_column(Double, index=True)
    actor: Mapped[str] = mapped_column(String(ACTOR_LENGTH))
    action: Mapped[str] = mapped_column(String(64))
    prompt_id: Mapped[int | None] = mapped_column(
        ForeignKey("prompts.id", ondelete="SET NULL"), nullable=True, index=True
    )
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ExperimentRow(Base):
    """An experiment over versions of one prompt, with its policy state and latest snapshot."""

    __tablename__ = "experiments"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"), index=True)
    # Set to prompt_id while running, NULL otherwise: a unique column enforces one running per prompt.
    running_prompt_id: Mapped[int | None] = mapped_column(Integer, nullable=True, unique=True)
    status: Mapped[str] = mapped_column(String(16))
    metric: Mapped[str] = mapped_column(String(64))
    reward: Mapped[str] = mapped_column(String(16))
    strategy: Mapped[str] = mapped_column(String(16))
    fixed_weights: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    auto_promote: Mapped[bool] = mapped_column(Boolean, default=True)
    policy: Mapped[dict[str, Any]] = mapped_column(JSON)
    control_arm: Mapped[int] = mapped_column(Integer, default=0)
    # The version number that held production when the experiment started (NULL before the start).
    production_version_at_start: Mapped[int | None] = mapped_column(Integer, nullable=True)
    source: Mapped[str] = mapped_column(String(16), default="api")
    declared_hash: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    created_at: Mapped[float] = mapped_column(Double)
    started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    ended_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    winner_arm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epoch_started_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    weights: Mapped[list[Any]] = mapped_column(JSON, default=list)
    policy_state: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    snapshot: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    matured_total: Mapped[int] = mapped_column(Integer, default=0)
    last_update_at: Mapped[float | None] = mapped_column(Double, nullable=True)
    update_seq: Mapped[int] = mapped_column(Integer, default=0)
    # Secondary metrics declared besides the primary one (guardrail metrics are in the policy).
    metrics: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    # The guarded rollout while status is `holdout`: {new, old, started_at, decisions_at_start}.
    holdout: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # How far the feedback-validity counts (`arm_feedback_stats`) have folded: decisions decided
    # at or before `validity_cutoff` and matured in an update up to `validity_seq` are counted;
    # no decision of an update before `validity_low` is left to count.
    validity_cutoff: Mapped[float | None] = mapped_column(Double, nullable=True)
    validity_seq: Mapped[int] = mapped_column(Integer, default=0)
    validity_low: Mapped[int] = mapped_column(Integer, default=1)


class ArmRow(Base):
    """One arm of an experiment: a version, with counters of everything received."""

    __tablename__ = "experiment_arms"
    __table_args__ = (UniqueConstraint("experiment_id", "idx", name="uq_arms_experiment_idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id"))
    decisions: Mapped[int] = mapped_column(Integer, default=0)
    feedback: Mapped[int] = mapped_column(Integer, default=0)
    reward_sum: Mapped[float] = mapped_column(Double, default=0.0)


class EpochRow(Base):
    """One epoch of constant allocation: its weights and the statistics at its start."""

    __tablename__ = "epochs"
    __table_args__ = (UniqueConstraint("experiment_id", "idx", name="uq_epochs_experiment_idx"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    idx: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[float] = mapped_column(Double)
    weights: Mapped[list[Any]] = mapped_column(JSON)
    matured_at_start: Mapped[int] = mapped_column(Integer, default=0)
    summary: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)


class ArmEpochRow(Base):
    """Matured-outcome sums and decision counts of one arm in one epoch."""

    __tablename__ = "arm_epoch_stats"
    __table_args__ = (UniqueConstraint("experiment_id", "arm", "epoch", name="uq_arm_epoch"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    arm: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    assigned: Mapped[int] = mapped_column(Integer, default=0)
    n: Mapped[int] = mapped_column(Integer, default=0)
    s: Mapped[float] = mapped_column(Double, default=0.0)
    ss: Mapped[float] = mapped_column(Double, default=0.0)


class UnitRow(Base):
    """A unit (a user, a session) of an experiment: its arm, the epoch of its first exposure,
    its matured decisions, and the count and sum of its counted matured primary values."""

    __tablename__ = "units"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    unit_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    arm: Mapped[int] = mapped_column(Integer)
    first_epoch: Mapped[int] = mapped_column(Integer)
    decisions: Mapped[int] = mapped_column(Integer, default=0)
    count: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[float] = mapped_column(Double, default=0.0)


class UnitMetricRow(Base):
    """The count and sum of one unit's matured values of one secondary or guardrail metric (its
    feedback within the window and its gateway calls), so its mean can move between cells."""

    __tablename__ = "unit_metrics"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    unit_id: Mapped[str] = mapped_column(String(256), primary_key=True)
    metric: Mapped[str] = mapped_column(String(64), primary_key=True)
    count: Mapped[int] = mapped_column(Integer, default=0)
    total: Mapped[float] = mapped_column(Double, default=0.0)


class ArmMetricRow(Base):
    """Matured sums of one secondary or guardrail metric for one arm in one epoch: per decision
    for decisions without a unit, per unit (its mean, in its first epoch) otherwise."""

    __tablename__ = "arm_metric_stats"
    __table_args__ = (
        UniqueConstraint("experiment_id", "metric", "arm", "epoch", name="uq_arm_metric_epoch"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    metric: Mapped[str] = mapped_column(String(64))
    arm: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    n: Mapped[int] = mapped_column(Integer, default=0)
    s: Mapped[float] = mapped_column(Double, default=0.0)
    ss: Mapped[float] = mapped_column(Double, default=0.0)


class ArmFeedbackRow(Base):
    """Feedback-validity counts of one arm: its matured decisions at least two windows old, how
    many got their primary feedback within the window, and how many only after it."""

    __tablename__ = "arm_feedback_stats"
    __table_args__ = (UniqueConstraint("experiment_id", "arm", name="uq_arm_feedback"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    arm: Mapped[int] = mapped_column(Integer)
    eligible: Mapped[int] = mapped_column(Integer, default=0)
    on_time: Mapped[int] = mapped_column(Integer, default=0)
    late: Mapped[int] = mapped_column(Integer, default=0)


class LateFeedbackRow(Base):
    """A primary feedback that came after its decision's window, stored with the feedback and
    waiting until its decision is old enough to enter the feedback-validity counts."""

    __tablename__ = "late_feedback"
    __table_args__ = (Index("ix_late_feedback_waiting", "experiment_id", "decided_at"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # No foreign key, like decisions: the feedback path must not wait on the experiment's row
    # lock, which the epoch update holds for its whole transaction.
    experiment_id: Mapped[int] = mapped_column(Integer)
    arm: Mapped[int] = mapped_column(Integer)
    decided_at: Mapped[float] = mapped_column(Double)


class DecisionRow(Base):
    """One serve: which version went out, under which experiment, arm and epoch."""

    __tablename__ = "decisions"
    __table_args__ = (Index("ix_decisions_maturing", "experiment_id", "counted_in", "decided_at"),)
    id: Mapped[str] = mapped_column(String(128), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(Integer)
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    arm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    unit_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    decided_at: Mapped[float] = mapped_column(Double)
    # 0 until the decision matures and enters the statistics; then the update batch that counted it.
    counted_in: Mapped[int] = mapped_column(Integer, default=0)


class FeedbackRow(Base):
    """One reward for a decision and metric; unique per (decision, metric)."""

    __tablename__ = "feedback"
    __table_args__ = (UniqueConstraint("decision_id", "metric", name="uq_feedback_decision_metric"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    decision_id: Mapped[str] = mapped_column(String(128))
    metric: Mapped[str] = mapped_column(String(64))
    reward: Mapped[float] = mapped_column(Double)
    received_at: Mapped[float] = mapped_column(Double)


class ApiKeyRow(Base):
    """An API key: only its SHA-256 hash is stored."""

    __tablename__ = "api_keys"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    prefix: Mapped[str] = mapped_column(String(16), index=True)
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    role: Mapped[str] = mapped_column(String(16))
    name: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Double)
    revoked_at: Mapped[float | None] = mapped_column(Double, nullable=True)


class MetaRow(Base):
    """Key-value state shared by all servers: the change counter and the signing secret."""

    __tablename__ = "meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


class CallRow(Base):
    """One gateway call to a provider (or a cache hit), recorded with its decision."""

    __tablename__ = "calls"
    __table_args__ = (Index("ix_calls_prompt_created", "prompt_id", "created_at"),)
    decision_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    prompt_id: Mapped[int] = mapped_column(Integer)
    version_id: Mapped[int] = mapped_column(Integer)
    experiment_id: Mapped[int | None] = mapped_column(Integer, nullable=True, index=True)
    arm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    epoch: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The decision's unit: its calls' built-in metrics count per unit, at maturation.
    unit_id: Mapped[str | None] = mapped_column(String(256), nullable=True)
    created_at: Mapped[float] = mapped_column(Double)
    status: Mapped[str] = mapped_column(String(16))
    http_status: Mapped[int | None] = mapped_column(Integer, nullable=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    cache: Mapped[str] = mapped_column(String(8))
    prompt_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    completion_tokens: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tokens_estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_usd: Mapped[float | None] = mapped_column(Double, nullable=True)
    input_per_mtok: Mapped[float | None] = mapped_column(Double, nullable=True)
    output_per_mtok: Mapped[float | None] = mapped_column(Double, nullable=True)
    latency_ms: Mapped[float] = mapped_column(Double)
    ttft_ms: Mapped[float | None] = mapped_column(Double, nullable=True)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The cache key of the upstream request: the most frequent recent ones warm a new production.
    request_key: Mapped[str | None] = mapped_column(String(64), nullable=True)
    variables: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    output: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)


class CallStatsRow(Base):
    """Running sums of the calls of one arm in one epoch: usage without scanning the call log.
    Calls of decisions with a unit have their own row (`with_unit`): their built-in metrics
    count per unit at maturation, not per call."""

    __tablename__ = "call_stats"
    __table_args__ = (UniqueConstraint("experiment_id", "arm", "epoch", "with_unit", name="uq_call_stats"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    experiment_id: Mapped[int] = mapped_column(ForeignKey("experiments.id", ondelete="CASCADE"))
    arm: Mapped[int] = mapped_column(Integer)
    epoch: Mapped[int] = mapped_column(Integer)
    with_unit: Mapped[bool] = mapped_column(Boolean, default=False)
    calls: Mapped[int] = mapped_column(Integer, default=0)
    errors: Mapped[int] = mapped_column(Integer, default=0)
    cache_hits: Mapped[int] = mapped_column(Integer, default=0)
    cost_n: Mapped[int] = mapped_column(Integer, default=0)
    cost_sum: Mapped[float] = mapped_column(Double, default=0.0)
    cost_ss: Mapped[float] = mapped_column(Double, default=0.0)
    latency_sum: Mapped[float] = mapped_column(Double, default=0.0)
    latency_ss: Mapped[float] = mapped_column(Double, default=0.0)
    tokens_n: Mapped[int] = mapped_column(Integer, default=0)
    prompt_tokens_sum: Mapped[float] = mapped_column(Double, default=0.0)
    completion_tokens_sum: Mapped[float] = mapped_column(Double, default=0.0)
    latency_hist: Mapped[list[Any]] = mapped_column(JSON, default=list)


class ResponseCacheRow(Base):
    """A cached upstream answer, keyed by a hash of the provider and the exact request."""

    __tablename__ = "response_cache"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    prompt: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True)
    provider: Mapped[str] = mapped_column(String(64))
    model: Mapped[str] = mapped_column(String(256))
    entry: Mapped[dict[str, Any]] = mapped_column(JSON)
    created_at: Mapped[float] = mapped_column(Double)
    used_at: Mapped[float] = mapped_column(Double, index=True)
    hits: Mapped[int] = mapped_column(Integer, default=0)


class EvalRunRow(Base):
    """One run of an eval over versions of its prompt: the dataset it used and the gate's verdict."""

    __tablename__ = "eval_runs"
    __table_args__ = (Index("ix_eval_runs_eval_prompt", "eval_name", "prompt_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    eval_name: Mapped[str] = mapped_column(String(64))
    prompt_id: Mapped[int] = mapped_column(ForeignKey("prompts.id", ondelete="CASCADE"))
    dataset_hash: Mapped[str] = mapped_column(String(64))
    cases: Mapped[int] = mapped_column(Integer)
    repeat: Mapped[int] = mapped_column(Integer, default=1)
    threshold: Mapped[float] = mapped_column(Double, default=1.0)
    gate: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    baseline_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    gate_passed: Mapped[bool] = mapped_column(Boolean, default=True)
    gate_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)
    source_path: Mapped[str | None] = mapped_column(Text, nullable=True)
    actor: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Double)


class EvalRunVersionRow(Base):
    """One version's figures in an eval run, its comparison with the baseline and its verdict."""

    __tablename__ = "eval_run_versions"
    __table_args__ = (UniqueConstraint("run_id", "version_id", name="uq_eval_run_versions_run_version"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(ForeignKey("versions.id", ondelete="CASCADE"), index=True)
    position: Mapped[int] = mapped_column(Integer)
    number: Mapped[int] = mapped_column(Integer)
    variant: Mapped[str] = mapped_column(String(64))
    passed: Mapped[int] = mapped_column(Integer)
    failed: Mapped[int] = mapped_column(Integer)
    errors: Mapped[int] = mapped_column(Integer)
    score_mean: Mapped[float | None] = mapped_column(Double, nullable=True)
    cost_usd: Mapped[float | None] = mapped_column(Double, nullable=True)
    latency_ms_mean: Mapped[float | None] = mapped_column(Double, nullable=True)
    comparison: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    gate_passed: Mapped[bool] = mapped_column(Boolean, default=True)
    gate_reasons: Mapped[list[Any]] = mapped_column(JSON, default=list)


class EvalCaseRow(Base):
    """One case of one version in an eval run: its outcome, outputs and assertion results."""

    __tablename__ = "eval_cases"
    __table_args__ = (Index("ix_eval_cases_run_version", "run_id", "version_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    run_id: Mapped[int] = mapped_column(ForeignKey("eval_runs.id", ondelete="CASCADE"))
    version_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)
    case_id: Mapped[str] = mapped_column(String(200))
    status: Mapped[str] = mapped_column(String(16))
    score: Mapped[float] = mapped_column(Double)
    reason: Mapped[str] = mapped_column(Text, default="")
    outputs: Mapped[list[Any]] = mapped_column(JSON, default=list)
    assertions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    cost_usd: Mapped[float | None] = mapped_column(Double, nullable=True)
    latency_ms: Mapped[float | None] = mapped_column(Double, nullable=True)


class ExperimentGateRow(Base):
    """An experiment's eval gate: the eval each arm must pass, and whether to start on passing."""

    __tablename__ = "experiment_gates"
    experiment_id: Mapped[int] = mapped_column(
        ForeignKey("experiments.id", ondelete="CASCADE"), primary_key=True
    )
    eval_name: Mapped[str] = mapped_column(String(64))
    auto_start: Mapped[bool] = mapped_column(Boolean, default=True)
