"""Typed, frozen results of the SDK (`promptops.Client` and `promptops.AsyncClient`).

Each result is read from the server's JSON by `from_json`. Fields are attributes
(`served.decision_id`); `result["decision_id"]` reads the same field, for code written against the
plain dictionaries earlier releases returned.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from typing import Any, Self


class _Fields:
    """Dict-style reading of a dataclass's fields."""

    def __getitem__(self, key: str) -> Any:
        if key not in {f.name for f in fields(self)}:  # type: ignore[arg-type]
            raise KeyError(key)
        return getattr(self, key)


@dataclass(frozen=True)
class Message(_Fields):
    """One rendered chat message."""

    role: str
    content: str


def _messages(data: Mapping[str, Any]) -> tuple[Message, ...] | None:
    raw = data.get("messages")
    return None if raw is None else tuple(Message(str(m["role"]), str(m["content"])) for m in raw)


@dataclass(frozen=True)
class RenderResult(_Fields):
    """A rendered prompt: chat `messages` or a `text`, with the version's model settings."""

    prompt: str
    version: int
    variant: str
    model: Mapping[str, Any]
    messages: tuple[Message, ...] | None = None
    text: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read the body of `POST /v1/prompts/{name}/render`."""
        return cls(
            prompt=str(data["prompt"]),
            version=int(data["version"]),
            variant=str(data["variant"]),
            model=dict(data.get("model") or {}),
            messages=_messages(data),
            text=data.get("text"),
        )


@dataclass(frozen=True)
class ServeResult(_Fields):
    """A served prompt. `decision_id` names it in feedback; a fallback rendered locally while
    the server was unreachable has `fallback=True` and no decision (and, rendered from a prompt
    file, no version number)."""

    prompt: str
    version: int | None
    variant: str
    model: Mapping[str, Any]
    decision_id: str | None
    experiment_id: int | None
    fallback: bool = False
    messages: tuple[Message, ...] | None = None
    text: str | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any], *, fallback: bool = False) -> Self:
        """Read the body of `POST /v1/prompts/{name}/serve` (or a local rendering)."""
        version = data.get("version")
        return cls(
            prompt=str(data["prompt"]),
            version=None if version is None else int(version),
            variant=str(data["variant"]),
            model=dict(data.get("model") or {}),
            decision_id=data.get("decision_id"),
            experiment_id=data.get("experiment_id"),
            fallback=fallback,
            messages=_messages(data),
            text=data.get("text"),
        )

    def rendered(self) -> RenderResult:
        """The rendered prompt alone, without the decision."""
        if self.version is None:
            raise ValueError("rendered from a prompt file: there is no version number")
        return RenderResult(
            prompt=self.prompt,
            version=self.version,
            variant=self.variant,
            model=self.model,
            messages=self.messages,
            text=self.text,
        )


@dataclass(frozen=True)
class Version(_Fields):
    """One version of a prompt, without its content."""

    number: int
    variant: str
    content_hash: str
    labels: tuple[str, ...] = ()
    source_path: str | None = None
    git_commit: str | None = None
    git_author: str | None = None
    created_at: float | None = None

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read one entry of a prompt's `versions`."""
        return cls(
            number=int(data["number"]),
            variant=str(data["variant"]),
            content_hash=str(data.get("content_hash") or ""),
            labels=tuple(data.get("labels") or ()),
            source_path=data.get("source_path"),
            git_commit=data.get("git_commit"),
            git_author=data.get("git_author"),
            created_at=data.get("created_at"),
        )


@dataclass(frozen=True)
class Prompt(_Fields):
    """A prompt with its versions (newest first) and its labels (label -> version number)."""

    name: str
    description: str
    tags: tuple[str, ...]
    labels: Mapping[str, int]
    versions: tuple[Version, ...]

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read the body of `GET /v1/prompts/{name}`."""
        return cls(
            name=str(data["name"]),
            description=str(data.get("description") or ""),
            tags=tuple(data.get("tags") or ()),
            labels={str(k): int(v) for k, v in (data.get("labels") or {}).items()},
            versions=tuple(Version.from_json(v) for v in data.get("versions") or ()),
        )

    @property
    def production(self) -> int | None:
        """The version number that holds `production`, if any."""
        return self.labels.get("production")


@dataclass(frozen=True)
class Arm(_Fields):
    """Figures of one arm of an experiment; `n` onward cover matured outcomes only."""

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

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read one entry of an experiment's `arms`."""
        values: dict[str, Any] = {f.name: data.get(f.name) for f in fields(cls)}
        return cls(**values)


@dataclass(frozen=True)
class Experiment(_Fields):
    """An experiment with per-arm figures, the control first."""

    id: int
    prompt: str
    status: str
    winner: int | None
    metric: str
    reward: str
    strategy: str
    arms: tuple[Arm, ...]
    reason: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Self:
        """Read the body of `GET /v1/experiments/{id}`; fields not named here stay in `extra`."""
        known = {f.name for f in fields(cls)}
        return cls(
            id=int(data["id"]),
            prompt=str(data["prompt"]),
            status=str(data["status"]),
            winner=data.get("winner"),
            metric=str(data.get("metric") or ""),
            reward=str(data.get("reward") or ""),
            strategy=str(data.get("strategy") or ""),
            arms=tuple(Arm.from_json(a) for a in data.get("arms") or ()),
            reason=data.get("reason"),
            extra={k: v for k, v in data.items() if k not in known},
        )


@dataclass(frozen=True)
class CompleteResult(_Fields):
    """The answer of a call through the gateway (`Client.complete`)."""

    decision_id: str
    prompt: str
    version: int
    variant: str
    experiment_id: int | None
    model: str
    content: str | None
    role: str
    finish_reason: str | None
    prompt_tokens: int | None
    completion_tokens: int | None
    cost_usd: float | None
    latency_ms: float
    cache: str

    @classmethod
    def from_json(cls, body: Mapping[str, Any]) -> Self:
        """The result of the JSON answer of `/complete`."""
        usage = body.get("usage") or {}
        output = body.get("output") or {}
        return cls(
            decision_id=body["decision_id"],
            prompt=body["prompt"],
            version=int(body["version"]),
            variant=body["variant"],
            experiment_id=body.get("experiment_id"),
            model=str(body.get("model")),
            content=output.get("content"),
            role=output.get("role", "assistant"),
            finish_reason=body.get("finish_reason"),
            prompt_tokens=usage.get("prompt_tokens"),
            completion_tokens=usage.get("completion_tokens"),
            cost_usd=body.get("cost_usd"),
            latency_ms=float(body.get("latency_ms") or 0.0),
            cache=str(body.get("cache")),
        )
