"""Experiments: creating and promoting, and their figures per arm and per epoch."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field

from promptops.domain import (
    MAX_ARMS,
    ExperimentStatus,
    MissingFeedback,
    RewardKind,
    Strategy,
    arm_count_problem,
)
from promptops.server.schemas.common import MetricName, Strict, examples
from promptops.server.schemas.glossary import View


def _arm_count(versions: list[int]) -> list[int]:
    problem = arm_count_problem(len(versions))
    if problem:
        raise ValueError(problem)
    return versions


class ExperimentCreate(Strict):
    """Start (or draft) an experiment over versions of a prompt."""

    model_config = examples({"prompt": "support-triage", "versions": [1, 2], "metric": "resolved"})

    prompt: str = Field(min_length=1, max_length=64, description="The prompt's name.")
    # The bounds come from `arm_count_problem`, so the API words them as prompt files do.
    versions: Annotated[list[int], AfterValidator(_arm_count)] = Field(
        description=f"Two to {MAX_ARMS} versions; the first is the control.",
        json_schema_extra={"minItems": 2, "maxItems": MAX_ARMS},
    )
    metric: MetricName = Field(default="reward", description="The primary metric, named by feedback.")
    reward: RewardKind = Field(default=RewardKind.BINARY, description="0/1 rewards, or rewards in [0, 1].")
    strategy: Strategy = Field(
        default=Strategy.THOMPSON, description="Thompson sampling, or the fixed `weights`."
    )
    weights: list[float] | None = Field(
        default=None, description="Fixed weights per version (strategy fixed)."
    )
    auto_promote: bool | None = Field(
        default=None, description="Promote the winner by itself when the stopping rule is met."
    )
    policy: dict[str, Any] = Field(default_factory=dict, description="Overrides of the policy settings.")
    status: Literal["running", "draft"] = Field(
        default="running", description="Start now, or create a draft."
    )
    requires_eval: str | None = Field(
        default=None,
        pattern=r"^[a-z0-9][a-z0-9._-]{0,63}$",
        description="An eval every version must pass before the experiment starts (a draft until then).",
    )
    metrics: list[MetricName] = Field(
        default_factory=list,
        max_length=20,
        description="Secondary metrics: reported per arm with intervals, never decide.",
    )
    guardrails: list[dict[str, Any]] = Field(
        default_factory=list,
        max_length=20,
        description="Guardrails: {metric, max_increase | max_decrease | max_increase_abs | "
        "max_decrease_abs}; a challenger worse than the control by more is blocked.",
    )


class PromoteCreate(Strict):
    """Promote a running experiment's winner by hand (the leader when no version is given)."""

    model_config = examples({"version": 2}, {})

    version: int | None = Field(default=None, ge=1, description="The winner; default the current leader.")


class MetricPublic(View):
    """One arm's estimate of a secondary or guardrail metric with its 95% interval."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    n: int


class GuardrailPublic(View):
    """A challenger's standing on one guardrail: the change against the control and a sentence."""

    metric: str
    state: Literal["allowed", "pending", "blocked"]
    diff: float | None
    diff_low: float | None
    diff_high: float | None
    relative: bool
    sentence: str


class HoldoutPublic(View):
    """The guarded rollout: the promoted and the previous version, and the latest rollback test."""

    new_version: int
    old_version: int
    started_at: float | None
    p_old_better: float | None
    reason: str | None


class SafetyPublic(View):
    """A safety flag that froze promotion, with its sentence and evidence."""

    flag: Literal["srm", "feedback"]
    sentence: str
    evidence: dict[str, Any]


class ArmPublic(View):
    """Figures of one arm (the fields of `ArmView`)."""

    version: int
    variant: str
    decisions: int
    feedback: int
    reward_sum: float
    n: int
    mean: float | None
    sd: float | None
    ci_low: float | None
    ci_high: float | None
    p_best: float | None
    expected_loss: float | None
    p_beats_control: float | None
    weight: float
    is_control: bool
    calls: int = 0
    error_rate: float | None = None
    cache_hit_rate: float | None = None
    cost_usd_mean: float | None = None
    cost_usd_total: float | None = None
    latency_ms_p50: float | None = None
    latency_ms_p95: float | None = None
    prompt_tokens_mean: float | None = None
    completion_tokens_mean: float | None = None
    units: int = 0
    new_units: int = 0
    metrics: dict[str, MetricPublic]
    guardrails: list[GuardrailPublic]


class EvalGatePublic(View):
    """Where an experiment's arms stand against the eval it requires (`EvalGateView`)."""

    eval: str
    passed: bool
    waiting: list[int]
    reasons: list[str]
    message: str


class ExperimentPublic(View):
    """An experiment with per-arm figures (the fields of `ExperimentView`)."""

    id: int
    prompt: str
    status: ExperimentStatus
    winner: int | None
    metric: str
    reward: RewardKind
    strategy: Strategy
    auto_promote: bool
    source: str
    control_version: int | None
    production_at_start: int | None
    control_is_production: bool | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    end_reason: str | None
    epoch: int
    matured: int
    last_update_at: float | None
    policy: dict[str, Any]
    missing_feedback: MissingFeedback
    reason: str | None
    srm_alarm: bool
    srm_p: float | None
    value_remaining: float | None
    checks_done: int
    arms: list[ArmPublic]
    requires_eval: str | None = None
    gate: EvalGatePublic | None = None
    metrics: list[str]
    flags: list[Literal["srm", "feedback"]]
    safety: list[SafetyPublic]
    stop_reason: str | None
    holdout: HoldoutPublic | None


class ExperimentListPublic(View):
    """Experiments, newest first."""

    experiments: list[ExperimentPublic]


class EpochPublic(View):
    """One epoch of an experiment (the fields of `EpochView`)."""

    epoch: int
    started_at: float
    weights: list[float]
    matured_at_start: int
    p_best: list[float | None] | None
    mean: list[float | None] | None
    checked: bool
    assigned: list[int]
    holdout: bool


class HistoryPublic(View):
    """An experiment's epochs, oldest first."""

    epochs: list[EpochPublic]
