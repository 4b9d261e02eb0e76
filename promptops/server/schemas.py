"""Request and response schemas of the HTTP API."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictFloat,
    model_validator,
)

from promptops.domain import (
    ExperimentStatus,
    MissingFeedback,
    RewardKind,
    Strategy,
    metric_name_problem,
    text_problem,
)

TEXT_PROBLEM = "contains a NUL character or a lone surrogate"


def bad_text(value: Any) -> str | None:
    """Where a string in JSON-like data (keys and values, nested) holds a NUL character or a lone
    surrogate, or None: such text cannot be stored (PostgreSQL refuses NUL) or encoded (UTF-8
    refuses surrogates), so the edge refuses it before anything is recorded."""
    if _all_clean(value):  # the common case, without building any path
        return None
    return _locate(value, "body")


def _all_clean(value: Any) -> bool:
    # A loop, not recursion: JSON may nest deeper than Python's recursion limit.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if text_problem(item) is not None:
                return False
        elif kind is dict:
            for key, inner in item.items():
                if type(key) is str and text_problem(key) is not None:
                    return False
                stack.append(inner)
        elif kind is list:
            stack.extend(item)
    return True


def _locate(value: Any, where: str) -> str:
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        where, item = stack.pop()
        if type(item) is str:
            if text_problem(item) is not None:
                return where
        elif type(item) is dict:
            for key, inner in item.items():
                if type(key) is str and text_problem(key) is not None:
                    return where
                stack.append((f"{where}.{key}", inner))
        elif type(item) is list:
            stack.extend((f"{where}[{i}]", inner) for i, inner in enumerate(item))
    return where


def _metric_name(name: str) -> str:
    problem = metric_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


MetricName = Annotated[str, AfterValidator(_metric_name)]
"""A metric name, by the rule of `domain.metric_name_problem`."""


class Strict(BaseModel):
    """A request body: unknown fields and strings with NUL or lone surrogates are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data: Any) -> Any:
        where = bad_text(data)
        if where is not None:
            raise ValueError(f"{where} {TEXT_PROBLEM}")
        return data


class RenderCreate(Strict):
    """Render a version (production by default) without recording a decision."""

    variables: dict[str, Any] = Field(default_factory=dict)
    version: int | None = Field(default=None, ge=1)
    label: str | None = Field(default=None, max_length=64)


class ServeCreate(Strict):
    """Serve a prompt: an experiment arm if one runs, else production."""

    variables: dict[str, Any] = Field(default_factory=dict)
    unit_id: str | None = Field(default=None, max_length=256)


class FeedbackCreate(Strict):
    """A reward for a decision."""

    decision_id: str = Field(min_length=1, max_length=256)
    # Strict: a string "1" or "true" is refused, as the fast path refuses it; an int is a float.
    reward: StrictFloat | StrictBool
    metric: MetricName | None = None


class ExperimentCreate(Strict):
    """Start (or draft) an experiment over versions of a prompt."""

    prompt: str = Field(min_length=1, max_length=64)
    versions: list[int] = Field(min_length=2, max_length=20)
    metric: MetricName = "reward"
    reward: RewardKind = RewardKind.BINARY
    strategy: Strategy = Strategy.THOMPSON
    weights: list[float] | None = None
    auto_promote: bool | None = None
    policy: dict[str, Any] = Field(default_factory=dict)
    status: Literal["running", "draft"] = "running"
    metrics: list[str] = Field(default_factory=list, max_length=20)
    guardrails: list[dict[str, Any]] = Field(default_factory=list, max_length=20)


class PromoteCreate(Strict):
    """Promote a running experiment's winner by hand (the leader when no version is given)."""

    version: int | None = Field(default=None, ge=1)


class LabelCreate(Strict):
    """Move a label to a version."""

    version: int = Field(ge=1)


class FeedbackPublic(BaseModel):
    """The answer to a feedback."""

    status: Literal["recorded", "duplicate"]


class Message(BaseModel):
    """A rendered chat message."""

    role: str
    content: str


class RenderPublic(BaseModel):
    """A rendered prompt."""

    prompt: str
    version: int
    variant: str
    model: dict[str, Any]
    messages: list[Message] | None = None
    text: str | None = None


class ServePublic(RenderPublic):
    """A served prompt with its decision id."""

    decision_id: str
    experiment_id: int | None


class View(BaseModel):
    """An answer read from a service view: a field the schema does not name is an error, so the
    published schema and the answer cannot drift apart unnoticed."""

    model_config = ConfigDict(extra="forbid")


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


class AuditEntryPublic(View):
    """One entry of the audit log (the fields of `AuditEntry`)."""

    id: int
    at: float
    actor: str
    action: str
    prompt: str | None
    experiment_id: int | None
    message: str
    details: dict[str, Any]


class AuditPublic(View):
    """A page of the audit log, newest first."""

    entries: list[AuditEntryPublic]


class ErrorBody(BaseModel):
    """The error details."""

    code: str
    message: str


class ErrorPublic(BaseModel):
    """Every error answer has this shape."""

    error: ErrorBody
