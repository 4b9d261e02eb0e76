"""What a gateway call takes and gives: the request, its checks, and the completion.

A request names a prompt (routed like a serve, or pinned to a version or label), its variables, the
caller's conversation so far, a cache directive and the caller's other OpenAI fields. Every field is
checked before any decision is made: a malformed request is the caller's 422, never a call that
fails upstream (which would count against the arm).
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from promptops.domain import text_problem
from promptops.errors import InvalidInput, ModelNotFound
from promptops.promptfiles import ROLES
from promptops.providers import Usage
from promptops.services.cache import CacheEntry
from promptops.services.calls import CacheResult
from promptops.services.serving import Decision

MODEL_PREFIX = "promptops/"
MODEL_FORMS = "promptops/NAME, promptops/NAME@LABEL or promptops/NAME@vN"
_PIN = re.compile(r"^v([0-9]{1,9})$")
CACHE_CHOICES = ("refresh", "bypass")
"""What a caller may ask of the cache: skip the read and rewrite, or neither read nor write."""

_NUMBER = (("number",), "a number")
_INTEGER = (("integer",), "an integer")
_BOOLEAN = (("boolean",), "true or false")
_STRING = (("string",), "a string")
_OBJECT = (("object",), "an object")
_LIST = (("list",), "a list")
OPENAI_FIELDS: dict[str, tuple[tuple[str, ...], str]] = {
    "temperature": _NUMBER,
    "top_p": _NUMBER,
    "frequency_penalty": _NUMBER,
    "presence_penalty": _NUMBER,
    "max_tokens": _INTEGER,
    "max_completion_tokens": _INTEGER,
    "n": _INTEGER,
    "seed": _INTEGER,
    "top_logprobs": _INTEGER,
    "logprobs": _BOOLEAN,
    "parallel_tool_calls": _BOOLEAN,
    "store": _BOOLEAN,
    "stop": (("string", "list of strings"), "a string or a list of strings"),
    "tools": _LIST,
    "functions": _LIST,
    "modalities": _LIST,
    "tool_choice": (("string", "object"), "a string or an object"),
    "function_call": (("string", "object"), "a string or an object"),
    "response_format": _OBJECT,
    "logit_bias": _OBJECT,
    "metadata": _OBJECT,
    "prediction": _OBJECT,
    "audio": _OBJECT,
    "reasoning_effort": _STRING,
    "service_tier": _STRING,
}
"""The standard chat.completions fields a caller may pass through, with the JSON types each takes
(null is always allowed: it means the default). Other fields pass through unchecked."""


def json_kind(value: Any) -> str:
    """What a JSON value is, in words: for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "a list"
    return "an object" if isinstance(value, Mapping) else type(value).__name__


def _is(value: Any, kind: str) -> bool:
    if kind == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "string":
        return isinstance(value, str)
    if kind == "object":
        return isinstance(value, Mapping)
    if kind == "list":
        return isinstance(value, list | tuple)
    return isinstance(value, list | tuple) and all(isinstance(v, str) for v in value)  # list of strings


MAX_FIELD_DEPTH = 128
"""How deep a field that goes upstream may nest: the request to the provider is serialized by a
JSON writer that stops at 255 levels, so deeper input is the caller's 422, not a failed call."""


def nesting_depth(value: Any) -> int:
    """How many lists and objects deep a JSON value nests (0 for a scalar), without recursion."""
    deepest = 0
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, Mapping):
            children: Any = item.values()
        elif isinstance(item, list | tuple):
            children = item
        else:
            continue
        deepest = max(deepest, depth)
        stack.extend((child, depth + 1) for child in children)
    return deepest


def _check_depth(value: Any, where: str, field: str) -> None:
    if isinstance(value, Mapping | list | tuple) and nesting_depth(value) > MAX_FIELD_DEPTH:
        raise InvalidInput(f"{where} nests deeper than {MAX_FIELD_DEPTH} levels", field=field)


def check_openai_fields(fields: Mapping[str, Any]) -> None:
    """InvalidInput naming the first standard field whose value has the wrong JSON type, or any
    field nested too deeply to be sent on."""
    for name, value in fields.items():
        expected = OPENAI_FIELDS.get(name)
        if expected is not None and value is not None and not any(_is(value, k) for k in expected[0]):
            raise InvalidInput(f"{name} must be {expected[1]}, got {json_kind(value)}", field=name)
        _check_depth(value, name, name)


@dataclass(frozen=True)
class CompletionRequest:
    """One call through the gateway: which prompt, its variables, the conversation and options."""

    name: str
    variables: Mapping[str, Any] = field(default_factory=dict)
    unit_id: str | None = None
    messages: Sequence[Mapping[str, Any]] = ()
    cache: str | None = None  # None, "refresh" or "bypass"
    version: int | None = None  # pins a version: no experiment routing
    label: str | None = None  # pins the version holding a label
    extra: Mapping[str, Any] = field(default_factory=dict)  # caller's fields for the upstream body
    include_usage: bool = False  # streams: send the final usage chunk


def parse_model(model: Any) -> tuple[str, int | None, str | None]:
    """(prompt name, pinned version, pinned label) of a `promptops/NAME[@vN|@LABEL]` model name."""
    if not isinstance(model, str) or not model.startswith(MODEL_PREFIX) or len(model) > 200:
        raise ModelNotFound(model if isinstance(model, str) else repr(model))
    problem = text_problem(model)
    if problem:  # a pin is looked up in the database, which refuses such text
        raise InvalidInput(f"model {problem}", field="model")
    name, _, pin = model[len(MODEL_PREFIX) :].partition("@")
    if not name or (_ and not pin):
        raise ModelNotFound(model)
    if not pin:
        return name, None, None
    number = _PIN.match(pin)
    return (name, int(number.group(1)), None) if number else (name, None, pin)


def check_messages(messages: Any) -> list[dict[str, Any]]:
    """The caller's messages as a list of chat messages, or InvalidInput."""
    if messages is None:
        return []
    if not isinstance(messages, list | tuple):
        raise InvalidInput(
            'messages must be a list of chat messages ({"role": ..., "content": ...}), '
            f"got {json_kind(messages)}",
            field="messages",
        )
    out = []
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise InvalidInput(
                f"messages[{i}] must be an object with a role among {', '.join(ROLES)}", field="messages"
            )
        # Checked here so a malformed message is the caller's 422, not the provider's 502.
        if not isinstance(m.get("content"), str | list | None):
            raise InvalidInput(
                f"messages[{i}].content must be a string, a list of parts or null", field="messages"
            )
        _check_depth(m, f"messages[{i}]", "messages")
        out.append(m)
    return out


def check_cache(value: Any) -> str | None:
    """A caller's cache directive: None, "refresh" or "bypass", or InvalidInput."""
    if value is not None and value not in CACHE_CHOICES:
        got = repr(value[:40]) if isinstance(value, str) else json_kind(value)
        raise InvalidInput(f'cache must be "refresh" or "bypass", got {got}', field="cache")
    return value  # type: ignore[no-any-return]


def entry_usage(entry: CacheEntry) -> Usage | None:
    """The token usage of the call that made a cache entry."""
    return entry.usage


@dataclass(frozen=True)
class Completion:
    """The answer of a non-stream call, with its decision and the facts of the call."""

    decision: Decision
    provider: str
    model: str
    message: Mapping[str, Any]
    finish_reason: str | None
    usage: Usage | None
    cost_usd: float | None
    latency_ms: float
    cache: CacheResult
    response: Mapping[str, Any] | None = None  # the upstream body, passed through on a miss

    def payload(self) -> dict[str, Any]:
        """The JSON answer of `POST /v1/prompts/{name}/complete`."""
        r = self.decision.rendered
        content = self.message.get("content")
        return {
            "decision_id": self.decision.id,
            "prompt": r.prompt,
            "version": r.version,
            "variant": r.variant,
            "experiment_id": self.decision.token.experiment_id,
            "model": self.model,
            "output": {"role": self.message.get("role", "assistant"), "content": content},
            "finish_reason": self.finish_reason,
            "usage": self.usage.as_openai() if self.usage else None,
            "cost_usd": self.cost_usd,
            "latency_ms": round(self.latency_ms, 3),
            "cache": str(self.cache),
        }

    def openai(self) -> dict[str, Any]:
        """The OpenAI chat.completion body, its id the decision id."""
        if self.response is not None:
            return {**self.response, "id": self.decision.id}
        body: dict[str, Any] = {
            "id": self.decision.id,
            "object": "chat.completion",
            "created": int(time.time()),
            "model": self.model,
            "choices": [{"index": 0, "message": dict(self.message), "finish_reason": self.finish_reason}],
        }
        if self.usage is not None:
            body["usage"] = self.usage.as_openai()
        return body
