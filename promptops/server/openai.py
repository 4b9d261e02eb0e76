"""The gateway's routes: `POST /v1/chat/completions` (OpenAI-compatible, with its SSE and error
shape) and `POST /v1/prompts/{name}/complete`; both are thin over services/gateway.py.

A stream is sent as the gateway yields it; a client that disconnects cancels the sending task,
which closes the upstream request (the call is recorded `cancelled`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, MutableMapping
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from promptops import errors as e
from promptops.domain import text_problem
from promptops.server import metrics
from promptops.server.auth import principal_of
from promptops.server.errors import INTERNAL_ERROR, promptops_error_body, status_for
from promptops.server.metrics import answer_body_timeout, answer_too_large, declared_too_large, receive_within
from promptops.server.schemas.errors import ERROR_MEANINGS, error_responses
from promptops.services.completions import (
    MODEL_FORMS,
    Completion,
    CompletionRequest,
    check_cache,
    check_messages,
    json_kind,
    parse_model,
)
from promptops.services.completionstream import CompletionStream

log = logging.getLogger("promptops.server")
router = APIRouter()
CHAT_PATH = "/v1/chat/completions"
COMPLETE_PREFIX = "/v1/prompts/"
COMPLETE_SUFFIX = "/complete"
COMPLETE_ROUTE = "/v1/prompts/{name}/complete"

# Fields of a chat.completions body that promptops reads itself; everything else goes upstream.
_OWN = frozenset(("model", "messages", "variables", "user", "stream", "stream_options", "cache"))
_OPENAI_TYPES = {
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    429: "rate_limit_error",
}


Headers = Mapping[str, str]
"""What the handlers read of a request's headers, by lower-case name: starlette's `Headers`, or
the few that `GatewayPath` picked out of the ASGI scope."""


class JSONAnswer(Response):
    """A JSON response, its head built directly: the same head as starlette's
    `Response(body, status, media_type="application/json", headers=...)` (given headers
    lower-cased, then content-length and content-type), without its generic header handling."""

    media_type = "application/json"

    def __init__(
        self,
        body: bytes,
        status_code: int = 200,
        headers: Mapping[str, str] | None = None,
        *,
        raw_headers: list[tuple[bytes, bytes]] | None = None,
    ) -> None:
        self.status_code = status_code
        self.background = None
        self.body = body
        raw = (
            [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
            if headers
            else []
        )
        if raw_headers:  # already lower-case and encoded
            raw += raw_headers
        raw.append((b"content-length", b"%d" % len(body)))
        raw.append((b"content-type", b"application/json"))
        self.raw_headers = raw


def openai_error(exc: e.PromptOpsError) -> Response:
    """A promptops error in OpenAI's shape `{"error": {message, type, param, code}}`."""
    status = status_for(exc)
    kind = _OPENAI_TYPES.get(status, "invalid_request_error" if status < 500 else "api_error")
    body = {
        "error": {
            "message": exc.message,
            "type": kind,
            "param": getattr(exc, "field", None),
            "code": exc.code,
        }
    }
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return JSONAnswer(orjson.dumps(body), status, headers)


def cache_directive(headers: Headers, body_value: Any) -> str | None:
    """ "refresh", "bypass" or None from the body's `cache` or the Cache-Control header."""
    if body_value is not None:
        return check_cache(body_value)
    header = headers.get("cache-control")
    if not header:
        return None
    header = header.lower()
    directives = {d.strip().split("=")[0] for d in header.split(",")}
    if "no-store" in directives:
        return "bypass"
    if "no-cache" in directives:
        return "refresh"
    return None


def _json_body(raw: bytes) -> dict[str, Any]:
    try:
        body = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise e.InvalidInput(
            f"the body is not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        ) from None
    if not isinstance(body, dict):
        raise e.InvalidInput("the body must be a JSON object")
    return body


def _variables(value: Any) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise e.InvalidInput(f"variables must be an object, got {json_kind(value)}", field="variables")
    return value


def _unit(value: Any, field: str) -> str | None:
    if value is not None and (not isinstance(value, str) or len(value) > 256):
        got = f"{len(value)} characters" if isinstance(value, str) else json_kind(value)
        raise e.InvalidInput(f"{field} must be a string of at most 256 characters, got {got}", field=field)
    problem = text_problem(value) if value is not None else None
    if problem is not None:  # named as the caller sent it (`user` on chat.completions)
        raise e.InvalidInput(f"{field} {problem}", field=field)
    return value


def _flag(value: Any, field: str) -> bool:
    if value is not None and not isinstance(value, bool):
        raise e.InvalidInput(f"{field} must be true or false, got {json_kind(value)}", field=field)
    return bool(value)


def chat_request(headers: Headers, body: dict[str, Any]) -> tuple[CompletionRequest, bool]:
    """The gateway request of a chat.completions body, and whether it streams."""
    model = body.get("model")
    if not isinstance(model, str):
        # A model that is not a string is a malformed request (422), not an unknown model (404).
        problem = "is required" if model is None else f"must be a string, got {json_kind(model)}"
        raise e.InvalidInput(f"model {problem}: {MODEL_FORMS}", field="model")
    name, version, label = parse_model(model)
    stream = _flag(body.get("stream"), "stream")
    options = body.get("stream_options")
    if options is not None and not isinstance(options, dict):
        raise e.InvalidInput(
            f"stream_options must be an object, got {json_kind(options)}", field="stream_options"
        )
    include_usage = _flag((options or {}).get("include_usage"), "stream_options.include_usage")
    return CompletionRequest(
        name=name,
        variables=_variables(body.get("variables")),
        unit_id=_unit(body.get("user"), "user"),
        messages=check_messages(body.get("messages")),
        cache=cache_directive(headers, body.get("cache")),
        version=version,
        label=label,
        extra={k: v for k, v in body.items() if k not in _OWN},
        include_usage=include_usage,
    ), stream


def _headers(completion: Completion | CompletionStream) -> list[tuple[bytes, bytes]]:
    """The `x-promptops-*` response headers of a call, encoded for the ASGI head."""
    d = completion.decision
    return [
        (b"x-promptops-decision-id", d.id.encode("latin-1")),
        (b"x-promptops-version", b"%d" % d.rendered.version),
        (b"x-promptops-variant", d.rendered.variant.encode("latin-1")),
        (b"x-promptops-cache", completion.cache.encode("latin-1")),
    ]


class SSEResponse(Response):
    """Sends a gateway stream as Server-Sent Events; a disconnect cancels it (and the upstream)."""

    media_type = "text/event-stream"

    def __init__(self, stream: CompletionStream, headers: list[tuple[bytes, bytes]]) -> None:
        # starlette's head for these headers and media type, less its content-length.
        self.status_code = 200
        self.background = None
        self.body = b""
        self.raw_headers = [
            *headers,
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
            (b"content-type", b"text/event-stream; charset=utf-8"),
        ]
        self.stream = stream

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        whole = self.stream.replay()
        if whole is not None:  # a cache hit: every event is known, nothing to wait for
            try:
                await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
                await send({"type": "http.response.body", "body": whole})
            finally:
                await self.stream.aclose()
            return

        # This task sends; one more watches for the caller leaving, and then cancels the sending
        # (only while it sends: its cancellation is then raised inside the loop below).
        task = asyncio.current_task()
        assert task is not None
        sending = True
        left = False

        async def watch() -> None:
            nonlocal left
            while (await receive())["type"] != "http.disconnect":
                pass
            if sending:
                left = True
                task.cancel()

        watcher = asyncio.ensure_future(watch())
        try:
            await send({"type": "http.response.start", "status": 200, "headers": self.raw_headers})
            async for chunk in self.stream:
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        except asyncio.CancelledError:
            # Cancelled from outside (shutdown), even as well as by the watcher: not ours to swallow.
            if not left or task.uncancel():
                raise
        finally:
            sending = False
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            await self.stream.aclose()  # closes the upstream if it is still open, records the call


_OPENAI_INTERNAL = {
    "error": {
        "message": INTERNAL_ERROR["error"]["message"],
        "type": "api_error",
        "param": None,
        "code": INTERNAL_ERROR["error"]["code"],
    }
}
_OPENAI_SHAPE = ' OpenAI\'s error shape: `{"error": {message, type, param, code}}`.'
_GATEWAY_ERRORS = (401, 403, 404, 413, 422, 429, 502, 503, 504)


@router.post(
    "/v1/chat/completions",
    tags=["gateway"],
    responses={code: {"description": ERROR_MEANINGS[code] + _OPENAI_SHAPE} for code in _GATEWAY_ERRORS},
)
async def chat_completions(request: Request) -> Response:
    """OpenAI-compatible chat completions; `model` is `promptops/NAME[@LABEL|@vN]`."""
    return await answer_chat(request.app.state.runtime, request.headers, await request.body())


@router.post("/v1/prompts/{name}/complete", tags=["gateway"], responses=error_responses(*_GATEWAY_ERRORS))
async def complete(name: str, request: Request) -> Response:
    """Call the model of a prompt (an arm if an experiment runs); records the decision and call."""
    return await answer_complete(request.app.state.runtime, name, request.headers, await request.body())


async def answer_chat(
    rt: Any, headers: Headers, raw: bytes, after: list[Callable[[], None]] | None = None
) -> Response:
    """The answer to a chat.completions request (the route's, and `GatewayPath`'s; with `after`,
    see `Gateway.complete`)."""
    try:
        principal_of(rt, headers.get("authorization", ""))
        req, stream = chat_request(headers, _json_body(raw))
        if stream:
            opened = await rt.gateway.open_stream(req)
            return SSEResponse(opened, _headers(opened))
        completion = await rt.gateway.complete(req, after=after)
    except e.PromptOpsError as exc:
        return openai_error(exc)
    return JSONAnswer(orjson.dumps(completion.openai()), 200, raw_headers=_headers(completion))


async def answer_complete(
    rt: Any, name: str, headers: Headers, raw: bytes, after: list[Callable[[], None]] | None = None
) -> Response:
    """The answer to `POST /v1/prompts/{name}/complete` (the route's, and `GatewayPath`'s; with
    `after`, see `Gateway.complete`)."""
    try:
        principal_of(rt, headers.get("authorization", ""))
        body = _json_body(raw)
        unknown = set(body) - {"unit_id", "variables", "messages", "cache"}
        if unknown:
            raise e.InvalidInput(f"unknown field(s): {', '.join(sorted(unknown))}")
        req = CompletionRequest(
            name=name,
            variables=_variables(body.get("variables")),
            unit_id=_unit(body.get("unit_id"), "unit_id"),
            messages=check_messages(body.get("messages")),
            cache=cache_directive(headers, body.get("cache")),
        )
        completion = await rt.gateway.complete(req, after=after)
    except e.PromptOpsError as exc:
        status, content = promptops_error_body(exc)
        return JSONAnswer(
            orjson.dumps(content), status, {"WWW-Authenticate": "Bearer"} if status == 401 else None
        )
    return JSONAnswer(orjson.dumps(completion.payload()), 200, raw_headers=_headers(completion))


class GatewayPath:
    """Pure-ASGI layer that sends the gateway's two routes straight to their handlers: FastAPI's
    routing over every route and its middleware stack cost a noticeable share of a call
    (bench/gateway.py). The handlers are the same functions the FastAPI routes run."""

    def __init__(self, app: Any, *, runtime: Any, max_body: int) -> None:
        self.app = app
        self.rt = runtime
        self.max_body = max_body
        self._latency: dict[tuple[str, int], Any] = {}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path == CHAT_PATH:
                await self._handle(scope, receive, send, CHAT_PATH, None)
                return
            if path.startswith(COMPLETE_PREFIX) and path.endswith(COMPLETE_SUFFIX):
                name = path[len(COMPLETE_PREFIX) : -len(COMPLETE_SUFFIX)]
                if name and "/" not in name:
                    await self._handle(scope, receive, send, COMPLETE_ROUTE, name)
                    return
        await self.app(scope, receive, send)

    async def _handle(
        self, scope: dict[str, Any], receive: Any, send: Any, route: str, name: str | None
    ) -> None:
        start = time.perf_counter()
        # The headers the handlers read, first value of each (as starlette's Headers.get).
        headers: dict[str, str] = {}
        for key, value in scope["headers"]:
            if key == b"content-length":
                if declared_too_large(value, self.max_body):
                    await answer_too_large(send, self.max_body)
                    return
            elif key in _READ_HEADERS:
                headers.setdefault(key.decode("latin-1"), value.decode("latin-1"))
        chunks: list[bytes] = []
        seen = 0
        deadline = asyncio.get_running_loop().time() + metrics.BODY_SECONDS
        while True:
            try:
                message = await receive_within(receive, deadline)
            except TimeoutError:  # a body that never finishes holds no connection for ever
                await answer_body_timeout(send)
                self._observe(route, 408, start)
                return
            if message["type"] != "http.request":
                return  # the client left before sending its request
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                await answer_too_large(send, self.max_body)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        # The call's record waits until the answer is sent: the caller does not wait for it.
        after: list[Callable[[], None]] = []
        try:
            try:
                if name is None:
                    response = await answer_chat(self.rt, headers, body, after)
                else:
                    response = await answer_complete(self.rt, name, headers, body, after)
            except Exception:
                # As FastAPI's handler of unexpected errors does: log, answer 500 in the route's shape.
                log.exception("unexpected error")
                internal = _OPENAI_INTERNAL if name is None else INTERNAL_ERROR
                response = JSONAnswer(orjson.dumps(internal), 500)
            if isinstance(response, SSEResponse):
                status = [500]

                async def sending(message: MutableMapping[str, Any]) -> None:
                    if message["type"] == "http.response.start":
                        status[0] = message["status"]
                    await send(message)

                await response(scope, receive, sending)
                code = status[0]
            else:
                code = response.status_code
                await send({"type": "http.response.start", "status": code, "headers": response.raw_headers})
                await send({"type": "http.response.body", "body": response.body})
        finally:
            # Recorded whatever happened to the answer (a client that left, a failed send).
            for record in after:
                try:
                    record()
                except Exception:
                    log.exception("could not record a gateway call")
        self._observe(route, code, start)

    def _observe(self, route: str, status: int, start: float) -> None:
        key = (route, status)
        child = self._latency.get(key)
        if child is None:
            child = self._latency[key] = self.rt.metrics.child(
                self.rt.metrics.latency, "POST", route, str(status)
            )
        child.observe(time.perf_counter() - start)


_READ_HEADERS = frozenset((b"authorization", b"cache-control"))
