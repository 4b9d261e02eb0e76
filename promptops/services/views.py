"""Typed read models: what the services answer, shared by the API, CLI, dashboard and metrics.

Frozen dataclasses: orjson encodes them as they are, and the API's `*Public` schemas are tested
field for field against them (tests/server/test_schemas.py). A render answers the domain's
`Rendered`; a serve answers `ServeView`, whose `payload()` is the JSON of the serve route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from promptops.domain import (
    PRODUCTION,
    ExperimentStatus,
    KeyRole,
    Message,
    MissingFeedback,
    Rendered,
    RewardKind,
    Strategy,
    rendered_payload,
)


def finite(x: Any) -> float | None:
    """A float, or None for a missing, NaN or infinite value (JSON has no NaN)."""
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


@dataclass(frozen=True, slots=True)
class ArmSnapshot:
    """One arm's figures at the last update."""

    mean: float | None = None
    sd: float | None = None
    ci_low: float | None = None
    ci_high: float | None = None
    p_best: float | None = None
    expected_loss: float | None = None
    p_beats_control: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ArmSnapshot:
        """Read back a stored arm (rows written before `sd` was kept have none)."""
        return cls(**{k: finite(d.get(k)) for k in cls.__dataclass_fields__})


@dataclass(frozen=True, slots=True)
class Snapshot:
    """An experiment's figures at its last update, stored in the experiment row as JSON."""

    arms: tuple[ArmSnapshot, ...] = ()
    reason: str | None = None
    srm_p: float | None = None
    value_remaining: float | None = None
    srm_alarm: bool = False
    checks_done: int = 0
    at: float | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Snapshot:
        """Read the stored JSON back (an empty snapshot for a row never updated)."""
        d = d or {}
        return cls(
            arms=tuple(ArmSnapshot.from_dict(a) for a in d.get("arms") or []),
            reason=d.get("reason"),
            srm_p=finite(d.get("srm_p")),
            value_remaining=finite(d.get("value_remaining")),
            srm_alarm=bool(d.get("srm_alarm", False)),
            checks_done=int(d.get("checks_done", 0)),
            at=d.get("at"),
        )

    def to_dict(self) -> dict[str, Any]:
        """The JSON stored in the experiment row (and as evidence in the audit log)."""
        return {
            "arms": [{k: getattr(a, k) for k in ArmSnapshot.__dataclass_fields__} for a in self.arms],
            "reason": self.reason,
            "srm_p": self.srm_p,
            "value_remaining": self.value_remaining,
            "srm_alarm": self.srm_alarm,
            "checks_done": self.checks_done,
            "at": self.at,
        }

    def arm(self, idx: int) -> ArmSnapshot:
        """An arm's figures (all None when the snapshot has none yet)."""
        return self.arms[idx] if idx < len(self.arms) else ArmSnapshot()


@dataclass(frozen=True, slots=True)
class ArmView:
    """One arm of an experiment: its counts and its figures at the last update."""

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
    calls: int
    error_rate: float | None
    cache_hit_rate: float | None
    cost_usd_mean: float | None
    cost_usd_total: float | None
    latency_ms_p50: float | None
    latency_ms_p95: float | None
    prompt_tokens_mean: float | None
    completion_tokens_mean: float | None
    units: int = 0  # units with a counted outcome
    new_units: int = 0  # units first exposed on this arm (what the SRM check counts)
    # secondary and guardrail metrics: {metric: {mean, ci_low, ci_high, n}}
    metrics: dict[str, dict[str, Any]] = field(default_factory=dict)
    # this challenger's guardrail verdicts: {metric, state, diff, diff_low, diff_high, relative,
    # sentence}
    guardrails: list[dict[str, Any]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class ExperimentView:
    """An experiment with its per-arm figures (the API's shape)."""

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
    arms: tuple[ArmView, ...]
    requires_eval: str | None = None
    gate: EvalGateView | None = None
    metrics: list[str] = field(default_factory=list)  # declared secondary metrics
    flags: list[str] = field(default_factory=list)  # raised safety flags: srm, feedback
    safety: list[dict[str, Any]] = field(default_factory=list)  # {flag, sentence, evidence}
    stop_reason: str | None = None  # winner, limit, equivalent, no_meaningful_winner, ...
    # the guarded rollout: {new_version, old_version, started_at, p_old_better, reason}
    holdout: dict[str, Any] | None = None


@dataclass(frozen=True, slots=True)
class EvalGateView:
    """Where an experiment's arms stand against the eval it requires before it starts."""

    eval: str
    passed: bool
    waiting: tuple[int, ...]  # versions with no run on the current dataset
    reasons: tuple[str, ...]  # why the runs there fail the gate
    message: str


@dataclass(frozen=True, slots=True)
class EpochView:
    """One epoch of an experiment: its weights, and P(best) and means at its start."""

    epoch: int
    started_at: float
    weights: list[float]
    matured_at_start: int
    p_best: list[float | None] | None
    mean: list[float | None] | None
    checked: bool
    assigned: list[int] = field(default_factory=list)
    holdout: bool = False  # an epoch of the guarded rollout


@dataclass(frozen=True, slots=True)
class KeyView:
    """An API key as listed (its prefix, never the key)."""

    id: int
    prefix: str
    role: KeyRole
    name: str
    created_at: float
    revoked_at: float | None


@dataclass(frozen=True, slots=True)
class AuditEntry:
    """One entry of the audit log."""

    id: int
    at: float
    actor: str
    action: str
    prompt: str | None
    experiment_id: int | None
    message: str
    details: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PromptSummary:
    """A prompt as listed: its production version, version count and last change."""

    name: str
    description: str
    tags: list[str]
    production_version: int | None
    versions: int
    source_path: str | None
    updated_at: float


@dataclass(frozen=True, slots=True)
class VersionView:
    """One version of a prompt as its history lists it, with its labels and provenance."""

    number: int
    variant: str
    content_hash: str
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_state: str | None
    created_at: float
    labels: list[str]


@dataclass(frozen=True, slots=True)
class VersionDetail:
    """One version read on its own: the fields of `VersionView`, its prompt and its content."""

    prompt: str
    number: int
    variant: str
    content_hash: str
    source_path: str | None
    git_commit: str | None
    git_author: str | None
    git_state: str | None
    created_at: float
    labels: list[str]
    content: dict[str, Any]


@dataclass(frozen=True, slots=True)
class PromptView:
    """A prompt with its labels (name -> version number) and its versions, newest first."""

    name: str
    description: str
    tags: list[str]
    source_path: str | None
    created_at: float
    updated_at: float
    labels: dict[str, int]
    versions: list[VersionView]

    @property
    def production_version(self) -> int | None:
        """The version holding the production label, if any."""
        return self.labels.get(PRODUCTION)


@dataclass(frozen=True, slots=True)
class LabelMove:
    """The answer to a label move: where the label points now and where it pointed before."""

    prompt: str
    label: str
    version: int
    previous: int | None


@dataclass(frozen=True, slots=True)
class ServeView:
    """A served prompt: the rendered version (chat `messages` or a `text`, with its model
    settings), the id of its decision, and the experiment that chose it (None: production)."""

    prompt: str
    version: int
    variant: str
    model: dict[str, Any]
    messages: tuple[Message, ...] | None
    text: str | None
    decision_id: str
    experiment_id: int | None

    @classmethod
    def of(cls, rendered: Rendered, *, decision_id: str, experiment_id: int | None) -> ServeView:
        """The view of a rendering served under a decision."""
        return cls(
            rendered.prompt,
            rendered.version,
            rendered.variant,
            rendered.model,
            rendered.messages,
            rendered.text,
            decision_id,
            experiment_id,
        )

    def payload(self) -> dict[str, Any]:
        """The JSON answer of a serve: the rendered prompt's fields (`messages` or `text`), then
        `decision_id` and `experiment_id`."""
        out = rendered_payload(self.prompt, self.version, self.variant, self.model, self.messages, self.text)
        out["decision_id"] = self.decision_id
        out["experiment_id"] = self.experiment_id
        return out
