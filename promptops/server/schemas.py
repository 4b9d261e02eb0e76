"""Request and response schemas of the HTTP API."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


class Strict(BaseModel):
    """A request body: unknown fields are refused."""

    model_config = ConfigDict(extra="forbid")


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
    reward: float | bool
    metric: str | None = Field(default=None, min_length=1, max_length=64)


class ExperimentCreate(Strict):
    """Start (or draft) an experiment over versions of a prompt."""

    prompt: str = Field(min_length=1, max_length=64)
    versions: list[int] = Field(min_length=2, max_length=20)
    metric: str = Field(default="reward", min_length=1, max_length=64)
    reward: Literal["binary", "continuous"] = "binary"
    strategy: Literal["thompson", "fixed"] = "thompson"
    weights: list[float] | None = None
    auto_promote: bool | None = None
    policy: dict[str, Any] = Field(default_factory=dict)
    status: Literal["running", "draft"] = "running"


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


class ArmPublic(BaseModel):
    """Figures of one arm."""

    version: int
    variant: str
    decisions: int
    feedback: int
    reward_sum: float
    n: int
    mean: float | None
    ci_low: float | None
    ci_high: float | None
    p_best: float | None
    expected_loss: float | None
    weight: float
    is_control: bool


class ExperimentPublic(BaseModel):
    """An experiment with per-arm figures."""

    model_config = ConfigDict(extra="allow")

    id: int
    prompt: str
    status: str
    winner: int | None
    metric: str
    reward: str
    strategy: str
    arms: list[ArmPublic]


class ErrorBody(BaseModel):
    """The error details."""

    code: str
    message: str


class ErrorPublic(BaseModel):
    """Every error answer has this shape."""

    error: ErrorBody
