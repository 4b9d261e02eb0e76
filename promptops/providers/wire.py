"""The OpenAI wire format: chat.completions and embeddings requests, responses and stream events."""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .results import StreamEvent, Usage

# Keys of a version's model settings that are promptops's own, not request parameters.
MODEL_SETTING_KEYS = ("provider", "name")
# Fields only the provider layer sets: a caller cannot replace the model or the conversation this way.
_OWN_FIELDS = ("model", "messages", "stream")
CHARS_PER_TOKEN = 4
"""The estimate used when a provider reports no usage: about four characters of English per token."""
_MESSAGE_OVERHEAD_TOKENS = 4  # role and separators, as OpenAI's own counting guide adds per message


class WireError(ValueError):
    """The upstream answer does not follow the OpenAI format (the provider maps it to UpstreamError)."""


@dataclass(frozen=True)
class ChatRequest:
    """A chat.completions request for a provider: its name (None: the default) and the JSON body."""

    provider: str | None
    body: Mapping[str, Any] = field(default_factory=dict)

    @property
    def model(self) -> str:
        """The model name sent upstream."""
        return str(self.body.get("model", ""))

    @property
    def stream(self) -> bool:
        """Whether the request asks for a stream."""
        return bool(self.body.get("stream"))

    def canonical(self) -> bytes:
        """The body as canonical JSON (sorted keys): what a response cache keys on."""
        return json.dumps(self.body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def message_dict(message: Any) -> dict[str, Any]:
    """A chat message as its JSON object, from a mapping or an object with role and content."""
    if isinstance(message, Mapping):
        return dict(message)
    return {"role": message.role, "content": message.content}


def build_chat_request(
    messages: Iterable[Any],
    model_settings: Mapping[str, Any],
    *,
    extra: Mapping[str, Any] | None = None,
    stream: bool = False,
) -> ChatRequest:
    """The upstream request: rendered messages, the version's model settings over the caller's fields.

    `model_settings` is the version's `model:` mapping: `provider` picks the provider, `name` is sent
    as `model`, and every other key is a request parameter that wins over the same key in `extra`.
    A stream always asks for the final usage chunk, so its tokens are counted when the provider can.
    """
    name = model_settings.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError("the model settings have no model name ('name')")
    provider = model_settings.get("provider")
    if provider is not None and not isinstance(provider, str):
        raise ValueError("the model settings' 'provider' must be a string")
    body: dict[str, Any] = {k: v for k, v in (extra or {}).items() if k not in _OWN_FIELDS}
    body.update({k: v for k, v in model_settings.items() if k not in MODEL_SETTING_KEYS})
    body["model"] = name
    body["messages"] = [message_dict(m) for m in messages]
    if stream:
        body["stream"] = True
        options = body.get("stream_options")
        body["stream_options"] = {**(options if isinstance(options, Mapping) else {}), "include_usage": True}
    else:
        body.pop("stream_options", None)
    return ChatRequest(provider=provider, body=body)


def parse_usage(value: Any) -> Usage | None:
    """The usage object of a response or chunk, or None when absent or unreadable."""
    if not isinstance(value, Mapping):
        return None
    prompt = _count(value.get("prompt_tokens"))
    # Embeddings report prompt tokens only.
    completion = _count(value.get("completion_tokens", 0))
    if prompt is None or completion is None:
        return None
    details = value.get("prompt_tokens_details")
    cached = _count(details.get("cached_tokens")) if isinstance(details, Mapping) else None
    return Usage(prompt_tokens=prompt, completion_tokens=completion, cached_tokens=cached or 0)


def _count(value: Any) -> int | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
    return int(value) if ok else None


def _load(data: bytes | str) -> Any:
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        pass  # orjson refuses some JSON the standard parser reads (NaN, integers past 64 bits)
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise WireError("the answer is not valid JSON") from None
    except RecursionError:  # nesting deeper than either parser goes
        raise WireError("the answer is JSON nested too deeply") from None
    return without_lone_surrogates(value)


def _clean_text(text: str) -> str:
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
        return text
    except UnicodeEncodeError:  # a lone surrogate: U+FFFD, as a UTF-8 decoder would show it
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def without_lone_surrogates(value: Any) -> Any:
    """The value with every string's lone surrogates replaced by U+FFFD.

    The standard parser reads a `\\ud800` escape that orjson refuses; such text cannot be encoded
    as UTF-8 (so neither answered to the caller nor stored), whatever else the answer holds."""
    if isinstance(value, str):
        return _clean_text(value)
    if not isinstance(value, dict | list):
        return value
    root: list[Any] = [value]
    stack: list[tuple[Any, Any]] = [(root, 0)]
    while stack:
        parent, key = stack.pop()
        item = parent[key]
        if isinstance(item, str):
            parent[key] = _clean_text(item)
        elif isinstance(item, dict):
            cleaned = {_clean_text(k): v for k, v in item.items()}
            parent[key] = cleaned
            stack.extend((cleaned, k) for k in cleaned)
        elif isinstance(item, list):
            stack.extend((item, i) for i in range(len(item)))
    return root[0]


@dataclass(frozen=True)
class ChatResponse:
    """A parsed non-stream chat completion."""

    body: Mapping[str, Any]
    message: Mapping[str, Any]
    finish_reason: str | None
    usage: Usage | None


def parse_chat_response(data: bytes) -> ChatResponse:
    """choices[0].message, finish_reason and usage of a chat completion body, or WireError."""
    body = _load(data)
    if not isinstance(body, Mapping):
        raise WireError("the answer is not a JSON object")
    choices = body.get("choices")
    if not isinstance(choices, list) or not choices or not isinstance(choices[0], Mapping):
        raise WireError("the answer has no choices")
    message = choices[0].get("message")
    if not isinstance(message, Mapping):
        raise WireError("the answer's first choice has no message")
    reason = choices[0].get("finish_reason")
    return ChatResponse(
        body=body,
        message=message,
        finish_reason=reason if isinstance(reason, str) else None,
        usage=parse_usage(body.get("usage")),
    )


def parse_embeddings_response(
    data: bytes, expected: int
) -> tuple[tuple[tuple[float, ...], ...], Usage | None]:
    """The vectors (in input order) and usage of an embeddings body, or WireError."""
    body = _load(data)
    items = body.get("data") if isinstance(body, Mapping) else None
    if not isinstance(items, list) or len(items) != expected:
        raise WireError(f"the answer does not hold {expected} embeddings")
    vectors: list[tuple[float, ...] | None] = [None] * expected
    for position, item in enumerate(items):
        index = item.get("index", position) if isinstance(item, Mapping) else None
        vector = item.get("embedding") if isinstance(item, Mapping) else None
        if not (
            isinstance(index, int)
            and 0 <= index < expected
            and isinstance(vector, list)
            and vector
            and all(isinstance(x, int | float) and not isinstance(x, bool) for x in vector)
        ):
            raise WireError("an embedding is malformed")
        vectors[index] = tuple(float(x) for x in vector)
    if any(v is None for v in vectors):
        raise WireError("the embeddings' indexes repeat")
    return tuple(v for v in vectors if v is not None), parse_usage(body.get("usage"))


class SSEParser:
    """Splits a byte stream into server-sent events (blank-line separated), bounding each event."""

    def __init__(self, *, max_event_bytes: int = 1_000_000) -> None:
        self.max_event_bytes = max_event_bytes
        self._buffer = b""
        self._carry = b""  # a CR that may be the first half of a CRLF split between reads

    def feed(self, chunk: bytes) -> list[bytes]:
        """The complete events in the bytes received so far (each ends with its blank line)."""
        data, self._carry = self._carry + chunk, b""
        if data.endswith(b"\r"):
            data, self._carry = data[:-1], b"\r"
        self._buffer += data.replace(b"\r\n", b"\n")
        events = []
        while (end := self._buffer.find(b"\n\n")) >= 0:
            events.append(self._buffer[: end + 2])
            self._buffer = self._buffer[end + 2 :]
        if len(self._buffer) > self.max_event_bytes:
            raise WireError(f"a stream event is larger than {self.max_event_bytes} bytes")
        return events

    @property
    def pending(self) -> bytes:
        """Bytes of an event not yet terminated."""
        return self._buffer + self._carry


def parse_event(raw: bytes) -> StreamEvent | None:
    """The meaning of one event: a chunk, `[DONE]`, or None for a comment or an empty event.

    An `error` object in the stream (some servers report failures that way) raises WireError.
    """
    if raw.startswith(b"data:") and raw.find(b"\n") == len(raw) - 2:
        # The usual event, one data line and its blank line: what the general case below gives.
        payload = raw[5:-2].lstrip(b" ").strip()
    else:
        lines = [line[5:].lstrip(b" ") for line in raw.split(b"\n") if line.startswith(b"data:")]
        if not lines:
            return None
        payload = b"\n".join(lines).strip()
    if payload == b"[DONE]":
        return StreamEvent(raw=raw, done=True)
    data = _load(payload)
    # `type(...) is dict` first: orjson gives dicts, and an ABC's isinstance is slow per event.
    if type(data) is not dict and not isinstance(data, Mapping):
        raise WireError("a stream chunk is not a JSON object")
    if "error" in data:
        raise WireError("the provider reported an error in the stream")
    choices = data.get("choices")
    first = (
        choices[0]
        if type(choices) is list and choices and (type(choices[0]) is dict or isinstance(choices[0], Mapping))
        else {}
    )
    delta = first.get("delta")
    reason = first.get("finish_reason")
    usage = data.get("usage")
    return StreamEvent(
        raw=raw,
        data=data,
        delta=delta if type(delta) is dict or isinstance(delta, Mapping) else None,
        finish_reason=reason if isinstance(reason, str) else None,
        usage=None if usage is None else parse_usage(usage),
    )


def estimate_tokens(text: str) -> int:
    """An estimate of the tokens in a text: its characters divided by CHARS_PER_TOKEN, rounded up."""
    return math.ceil(len(text) / CHARS_PER_TOKEN)


def estimate_prompt_tokens(messages: Sequence[Mapping[str, Any]]) -> int:
    """An estimate of the prompt tokens of chat messages, with a small per-message overhead."""
    total = 0
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else json.dumps(content, ensure_ascii=False)
        total += estimate_tokens(text) + _MESSAGE_OVERHEAD_TOKENS
    return total
