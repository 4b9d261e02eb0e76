"""What a provider call gives back: token usage, the call's outcome, stream events, embeddings."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from .prices import ModelPrice


class CallStatus(StrEnum):
    """How a provider call ended."""

    OK = "ok"
    ERROR = "error"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"
    RATE_LIMITED = "rate_limited"


@dataclass(frozen=True)
class Usage:
    """Token counts of a call; `estimated` when the provider sent none and they were estimated."""

    prompt_tokens: int
    completion_tokens: int
    estimated: bool = False
    cached_tokens: int = 0  # prompt tokens the provider served from its prompt cache

    @property
    def total_tokens(self) -> int:
        """Prompt plus completion tokens."""
        return self.prompt_tokens + self.completion_tokens

    def as_openai(self) -> dict[str, int]:
        """The OpenAI `usage` object."""
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "total_tokens": self.total_tokens,
        }


@dataclass(frozen=True)
class CallResult:
    """One chat completion call, successful or not, with everything a call record stores."""

    provider: str
    model: str  # the model name sent upstream
    status: CallStatus
    message: Mapping[str, Any] | None = None  # choices[0].message: role, content, tool_calls, ...
    finish_reason: str | None = None
    usage: Usage | None = None
    cost_usd: float | None = None  # None when the price is unknown or there is no usage
    price: ModelPrice | None = None  # the unit prices the cost was computed with
    latency_ms: float = 0.0  # from the first attempt to the end of the answer
    ttft_ms: float | None = None  # streams: to the first content delta
    http_status: int | None = None
    attempts: int = 1
    may_have_been_processed: bool = False  # a failed or retried attempt may have been billed anyway
    error: str | None = None  # a short, sanitized description when status is not ok
    response: Mapping[str, Any] | None = None  # the upstream JSON body (non-stream calls)

    @property
    def content(self) -> str | None:
        """The text of the output message, if it has one."""
        content = self.message.get("content") if self.message else None
        return content if isinstance(content, str) else None

    @property
    def usage_estimated(self) -> bool:
        """Whether the token counts are estimates."""
        return self.usage is not None and self.usage.estimated


@dataclass(frozen=True)
class StreamEvent:
    """One server-sent event of a streaming completion: the raw bytes and what they mean."""

    raw: bytes  # the whole event, `data: ...` through its blank line, to pass through as is
    data: Mapping[str, Any] | None = None  # the parsed JSON; None for `[DONE]`
    done: bool = False  # the `[DONE]` sentinel
    delta: Mapping[str, Any] | None = None  # choices[0].delta
    finish_reason: str | None = None
    usage: Usage | None = None  # present on the final usage chunk

    @property
    def content(self) -> str | None:
        """The text this event adds to the answer."""
        content = self.delta.get("content") if self.delta else None
        return content if isinstance(content, str) else None

    @property
    def usage_only(self) -> bool:
        """The final usage chunk (no choices): a route drops it unless its caller asked for usage."""
        return self.usage is not None and not (self.data or {}).get("choices")


@dataclass(frozen=True)
class EmbeddingsResult:
    """An embeddings call: one vector per input, in input order."""

    provider: str
    model: str
    vectors: tuple[tuple[float, ...], ...]
    usage: Usage | None = None
    cost_usd: float | None = None
    price: ModelPrice | None = None
    latency_ms: float = 0.0
    http_status: int | None = None
    attempts: int = 1
