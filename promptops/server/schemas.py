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
    MAX_ARMS,
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


def examples(*items: dict[str, Any]) -> ConfigDict:
    """A model configuration whose JSON schema shows these examples."""
    return ConfigDict(json_schema_extra={"examples": list(items)})


_VARIABLES = "Values of the prompt's declared variables; values are data, never templates."


class RenderCreate(Strict):
    """Render a version (production by default) without recording a decision."""

    model_config = examples(
        {"variables": {"message": "Where is my parcel?"}},
        {"variables": {"message": "Refund please"}, "version": 2},
    )

    variables: dict[str, Any] = Field(default_factory=dict, description=_VARIABLES)
    version: int | None = Field(default=None, ge=1, description="A version number; not with label.")
    label: str | None = Field(
        default=None, max_length=64, description="A label such as `staging`; default `production`."
    )


class ServeCreate(Strict):
    """Serve a prompt: an experiment arm if one runs, else production."""

    model_config = examples({"variables": {"message": "Where is my parcel?"}, "unit_id": "user-42"})

    variables: dict[str, Any] = Field(default_factory=dict, description=_VARIABLES)
    unit_id: str | None = Field(
        default=None,
        max_length=256,
        description="A user, session or conversation: it keeps the arm of its first serve.",
    )


class FeedbackCreate(Strict):
    """A reward for a decision."""

    model_config = examples(
        {"decision_id": "d_7f3a9c2e.Xc1", "reward": 1},
        {"decision_id": "d_7f3a9c2e.Xc1", "reward": 812, "metric": "latency_ms"},
    )

    decision_id: str = Field(min_length=1, max_length=256, description="The `decision_id` of a serve.")
    # Strict: a string "1" or "true" is refused, as the fast path refuses it; an int is a float.
    reward: StrictFloat | StrictBool = Field(
        description="The primary metric: 0 or 1 (binary) or in [0, 1] (continuous); another "
        "metric: any finite number."
    )
    metric: MetricName | None = Field(
        default=None, description="The metric; default the experiment's primary metric."
    )


class ExperimentCreate(Strict):
    """Start (or draft) an experiment over versions of a prompt."""

    model_config = examples({"prompt": "support-triage", "versions": [1, 2], "metric": "resolved"})

    prompt: str = Field(min_length=1, max_length=64, description="The prompt's name.")
    versions: list[int] = Field(
        min_length=2, max_length=MAX_ARMS, description="Two or more versions; the first is the control."
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


class LabelCreate(Strict):
    """Move a label to a version."""

    model_config = examples({"version": 3})

    version: int = Field(ge=1, description="The version that gets the label.")


class FeedbackPublic(BaseModel):
    """The answer to a feedback."""

    model_config = examples({"status": "recorded"}, {"status": "duplicate"})

    status: Literal["recorded", "duplicate"] = Field(
        description="`duplicate`: this decision already had a value for this metric."
    )


class Message(BaseModel):
    """A rendered chat message."""

    role: str = Field(description="system, user or assistant.")
    content: str = Field(description="The rendered text.")


_MESSAGES = [
    {"role": "system", "content": "Answer with one category."},
    {"role": "user", "content": "Text: Where is my parcel?"},
]


class RenderPublic(BaseModel):
    """A rendered prompt."""

    model_config = examples(
        {
            "prompt": "support-triage",
            "version": 1,
            "variant": "main",
            "model": {"name": "gpt-4o-mini", "temperature": 0},
            "messages": _MESSAGES,
        }
    )

    prompt: str = Field(description="The prompt's name.")
    version: int = Field(description="The version rendered.")
    variant: str = Field(description="The variant the version came from (`main`: top level).")
    model: dict[str, Any] = Field(description="The version's model settings, passed through.")
    messages: list[Message] | None = Field(default=None, description="Chat prompts: the messages.")
    text: str | None = Field(default=None, description="Text prompts: the text.")


class ServePublic(RenderPublic):
    """A served prompt with its decision id."""

    model_config = examples(
        {
            "decision_id": "d_7f3a9c2e.Xc1",
            "prompt": "support-triage",
            "version": 2,
            "variant": "few-shot",
            "experiment_id": 4,
            "model": {"name": "gpt-4o-mini"},
            "messages": _MESSAGES,
        }
    )

    decision_id: str = Field(description="Name it in feedback.")
    experiment_id: int | None = Field(description="The experiment that chose the version, if any.")


# What the fields of the answers read from service views mean: one glossary, so a field is
# described alike wherever it appears (an arm, an experiment, an epoch, an audit entry).
FIELD_DOCS = {
    "version": "The version number.",
    "variant": "The variant the version came from (`main`: top level).",
    "decisions": "Serves of this arm.",
    "feedback": "Primary-metric values received.",
    "reward_sum": "Sum of the primary-metric values received.",
    "n": "Matured outcomes the statistics use.",
    "mean": "Posterior mean of the matured outcomes.",
    "sd": "Posterior standard deviation of the mean.",
    "ci_low": "Lower end of the 95% credible interval.",
    "ci_high": "Upper end of the 95% credible interval.",
    "p_best": "Probability of being the best arm.",
    "expected_loss": "Expected loss of choosing this arm.",
    "p_beats_control": "Probability of beating the control.",
    "weight": "Current share of traffic.",
    "is_control": "Whether this is the control (the first arm).",
    "calls": "Gateway calls made with this arm.",
    "error_rate": "Share of gateway calls that failed.",
    "cache_hit_rate": "Share of gateway calls answered from the cache.",
    "cost_usd_mean": "Mean cost of a call in USD.",
    "cost_usd_total": "Total cost of the calls in USD.",
    "latency_ms_p50": "Median call latency in ms.",
    "latency_ms_p95": "95th percentile latency in ms.",
    "prompt_tokens_mean": "Mean prompt tokens a call.",
    "completion_tokens_mean": "Mean completion tokens a call.",
    "id": "The id.",
    "prompt": "The prompt's name.",
    "status": "The experiment's status.",
    "winner": "The promoted version, once there is one.",
    "metric": "The primary metric.",
    "reward": "binary (0/1) or continuous (in [0, 1]).",
    "strategy": "thompson or fixed.",
    "auto_promote": "Whether the winner is promoted by itself.",
    "source": "Where the experiment was declared: `file` or `api`.",
    "control_version": "The control's version (the first arm).",
    "production_at_start": "The version that held production when the experiment started.",
    "control_is_production": "Whether the control held production at the start.",
    "created_at": "When it was created (Unix seconds).",
    "started_at": "When it started (Unix seconds).",
    "ended_at": "When it ended (Unix seconds).",
    "end_reason": "Why it ended.",
    "epoch": "The current epoch (allocation update) number.",
    "matured": "Outcomes matured so far, all arms.",
    "last_update_at": "When the allocation was last updated (Unix seconds).",
    "policy": "The policy settings in force.",
    "missing_feedback": "How a decision without feedback counts: zero or ignore.",
    "reason": "The latest update's explanation.",
    "srm_alarm": "Whether a sample ratio mismatch froze promotion.",
    "srm_p": "The sample-ratio test's p-value.",
    "value_remaining": "The leader's possible shortfall (95th percentile), relative to its mean.",
    "checks_done": "Stopping checks done so far.",
    "arms": "One entry per version, the control first.",
    "experiments": "Experiments, newest first.",
    "weights": "Traffic shares per arm in this epoch.",
    "matured_at_start": "Outcomes matured when the epoch started.",
    "checked": "Whether the stopping rule was checked at this epoch.",
    "assigned": "Decisions per arm in this epoch.",
    "epochs": "Epochs, oldest first.",
    "at": "When (Unix seconds).",
    "actor": "Who: `cli:USER`, an API key's name, or the system.",
    "action": "What happened, e.g. `label.move`.",
    "experiment_id": "The experiment concerned, if any.",
    "message": "What happened, for people.",
    "details": "Structured details (evidence of a promotion).",
    "entries": "Entries, newest first.",
    "units": "Units (a unit_id, else a decision) with a counted matured outcome.",
    "new_units": "Units first exposed on this arm: what the sample-ratio check counts.",
    "metrics": "Secondary and guardrail metrics: the declared names, or per arm {mean, ci_low, ci_high, n}.",
    "guardrails": "This challenger's guardrail verdicts with the estimated change.",
    "flags": "Safety flags that froze promotion: srm, feedback.",
    "safety": "Each raised safety flag with its sentence and the counts behind it.",
    "stop_reason": "Why the policy ended it: winner, limit, equivalent, no_meaningful_winner, guardrails.",
    "holdout": "The guarded rollout: the promoted and the previous version and the latest test.",
    "requires_eval": "The eval every arm must pass before the experiment starts, if any.",
    "gate": "Where the arms stand against the required eval (null when none is required).",
    "eval": "The eval's name.",
    "passed": "Whether every arm passed the gate.",
    "waiting": "Versions with no run of the eval on its current dataset.",
    "reasons": "Why the runs there fail the gate.",
    "state": "allowed, pending or blocked.",
    "diff": "The challenger's mean minus the control's.",
    "diff_low": "Low end of the 95% interval of the difference.",
    "diff_high": "High end of the 95% interval of the difference.",
    "relative": "Whether the margin is relative to the control's mean.",
    "sentence": "The verdict or the flag in words.",
    "flag": "srm or feedback.",
    "evidence": "The counts behind a flag.",
    "new_version": "The promoted version.",
    "old_version": "The previous production version, holding the holdout share.",
    "p_old_better": "P(the previous version is better) on the most recent matured decisions.",
    "prompts": "Prompts, by name.",
    "name": "The prompt's name.",
    "description": "What the prompt is for.",
    "tags": "Free-form tags from the prompt file.",
    "production_version": "The version holding the production label, if any.",
    "source_path": "The file it was synced from.",
    "updated_at": "When it last changed (Unix seconds).",
    "number": "The version number.",
    "content_hash": "Hash of the version's content.",
    "git_commit": "The git commit of the file at sync, if known.",
    "git_author": "The author of that commit, if known.",
    "git_state": "The file's git state at sync: `dirty` or `untracked` when not as committed.",
    "content": "The version's content: messages or template, model and variables.",
    "label": "The label's name.",
    "previous": "The version the label held before, if any.",
}
"""Descriptions of the fields of the answers read from service views."""


def _describe_fields(schema: dict[str, Any]) -> None:
    for name, prop in schema.get("properties", {}).items():
        prop.setdefault("description", FIELD_DOCS.get(name, ""))


class View(BaseModel):
    """An answer read from a service view: a field the schema does not name is an error, so the
    published schema and the answer cannot drift apart unnoticed."""

    model_config = ConfigDict(extra="forbid", json_schema_extra=_describe_fields)


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


class PromptSummaryPublic(View):
    """A prompt as listed (the fields of `PromptSummary`)."""

    name: str
    description: str
    tags: list[str]
    production_version: int | None
    versions: int = Field(description="How many versions it has.")
    source_path: str | None
    updated_at: float


class PromptListPublic(View):
    """Every prompt, by name."""

    prompts: list[PromptSummaryPublic]


class VersionPublic(View):
    """One version in a prompt's history (the fields of `VersionView`)."""

    number: int
    variant: str
    content_hash: str
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_state: str | None
    created_at: float
    labels: list[str] = Field(description="The labels this version holds.")


class VersionDetailPublic(View):
    """One version with its content (the fields of `VersionDetail`)."""

    prompt: str
    number: int
    variant: str
    content_hash: str
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_state: str | None
    created_at: float
    labels: list[str] = Field(description="The labels this version holds.")
    content: dict[str, Any]


class PromptPublic(View):
    """A prompt with its labels and versions, newest first (the fields of `PromptView`)."""

    name: str
    description: str
    tags: list[str]
    source_path: str | None
    created_at: float
    updated_at: float
    labels: dict[str, int] = Field(description="Each label and the version it points at.")
    versions: list[VersionPublic] = Field(description="Its versions, newest first.")


class LabelMovePublic(View):
    """Where a label points after a move, and where it pointed before (the fields of
    `LabelMove`)."""

    prompt: str
    label: str
    version: int
    previous: int | None


class ErrorBody(BaseModel):
    """The error details."""

    code: str = Field(description="A stable machine-readable code, e.g. `prompt_not_found`.")
    message: str = Field(description="What went wrong, for people.")


class ErrorPublic(BaseModel):
    """Every error answer has this shape."""

    model_config = examples({"error": {"code": "prompt_not_found", "message": "prompt 'nope' not found"}})

    error: ErrorBody = Field(description="The error.")


ERROR_MEANINGS = {
    401: "No API key, or an unknown or revoked one.",
    403: "The key's role may not do this, or a cross-origin or foreign-Host request would change something.",
    404: "The prompt, version, label, decision or experiment does not exist.",
    409: "The experiment is not in a state that allows this.",
    413: "The request body is larger than the server accepts.",
    422: "The request is malformed: a value of the wrong type or range, or variables the prompt refuses.",
    429: "The model provider is rate-limiting the calls; retry later.",
    502: "The model provider failed or answered something unreadable.",
    503: "The database (or, for the gateway, the provider's configuration) is unavailable.",
    504: "The model provider did not answer in time.",
}
"""What each error status of the API means, as the OpenAPI document says."""


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """The OpenAPI `responses` of a route that can answer these error statuses."""
    return {code: {"model": ErrorPublic, "description": ERROR_MEANINGS[code]} for code in codes}
