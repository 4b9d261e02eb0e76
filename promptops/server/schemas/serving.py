"""Render, serve and feedback: their requests and answers."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, StrictBool, StrictFloat

from promptops.server.schemas.common import MetricName, Strict, examples

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
