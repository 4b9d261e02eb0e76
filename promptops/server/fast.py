"""A pure-ASGI fast path for the two routes that take the traffic: serve and feedback.

FastAPI's request machinery (dependency solving, body validation, its exception middlewares and
exit stack) cost as much as promptops's own work on a serve (bench/http.py). This layer, outermost
in the app, answers `POST /v1/prompts/{name}/serve` and `POST /v1/feedback` itself when the request
is ordinary: a JSON content type, a body that orjson parses and the request models of
`schemas/serving.py` accept, and a valid key (or auth off). It answers through the same functions
as the routes in `api.py` (`handlers.py`), so with the same JSON, status codes and metrics.

Anything else (another content type, malformed JSON, a field of the wrong type or size, a missing
or invalid key) is handed, body included, to the FastAPI app, whose routes stay the reference: they
are documented in /openapi.json and produce every validation and auth error. The fast path never
answers what FastAPI would answer differently.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from typing import Any

import orjson
from pydantic import ValidationError

from promptops import errors as e
from promptops.server import handlers
from promptops.server.auth import principal_of
from promptops.server.errors import INTERNAL_ERROR, promptops_error_body, send_json
from promptops.server.metrics import (
    BODY_SECONDS,
    answer_body_timeout,
    answer_too_large,
    declared_too_large,
    receive_within,
)
from promptops.server.schemas.serving import FeedbackCreate, ServeCreate

log = logging.getLogger("promptops.server")

SERVE_PREFIX = "/v1/prompts/"
SERVE_SUFFIX = "/serve"
FEEDBACK_PATH = "/v1/feedback"
SERVE_ROUTE = "/v1/prompts/{name}/serve"
JSON_HEADERS = b"application/json"
# orjson reads an integer beyond 64 bits as a float, the standard library (so FastAPI) as an int:
# a body with such a number falls through (19 digits reach 2**63).
LONG_NUMBER = re.compile(rb"\d{19}")


class FallThrough(Exception):
    """The request is not an ordinary one: FastAPI answers it."""


class FastPath:
    """Outermost ASGI layer (outside FastAPI's own middleware stack): serve and feedback without
    FastAPI; everything else, and every unusual serve or feedback, goes to `app`."""

    def __init__(self, app: Any, *, runtime: Any, max_body: int) -> None:
        self.app = app
        self.rt = runtime
        self.metrics = runtime.metrics
        self.max_body = max_body
        # Latency children by route and status, bound on first use (as the timing middleware
        # does, so /metrics shows the same series).
        self._latency: dict[str, dict[int, Any]] = {SERVE_ROUTE: {}, FEEDBACK_PATH: {}}

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and not scope.get("root_path"):
            path = scope["path"]
            if path == FEEDBACK_PATH:
                await self._handle(scope, receive, send, FEEDBACK_PATH, None)
                return
            if path.startswith(SERVE_PREFIX) and path.endswith(SERVE_SUFFIX):
                name = path[len(SERVE_PREFIX) : -len(SERVE_SUFFIX)]
                if name and "/" not in name:
                    await self._handle(scope, receive, send, SERVE_ROUTE, name)
                    return
        await self.app(scope, receive, send)

    async def _handle(
        self, scope: dict[str, Any], receive: Any, send: Any, route: str, name: str | None
    ) -> None:
        start = time.perf_counter()
        content_type = authorization = None
        for key, value in scope["headers"]:
            if key == b"content-length":
                if declared_too_large(value, self.max_body):
                    await answer_too_large(send, self.max_body)
                    return
            elif key == b"content-type":
                if content_type is None:
                    content_type = value
            elif key == b"authorization" and authorization is None:
                authorization = value
        # The body, within the limits.
        chunks: list[bytes] = []
        seen = 0
        more = True
        deadline = asyncio.get_running_loop().time() + BODY_SECONDS
        while more:
            try:
                message = await receive_within(receive, deadline)
            except TimeoutError:
                await answer_body_timeout(send)
                self._observe(route, 408, start)
                return
            if message["type"] != "http.request":  # the client went away: let FastAPI see it
                await self._fall_through(scope, receive, send, b"".join(chunks), message)
                return
            chunk = message.get("body", b"")
            seen += len(chunk)
            if seen > self.max_body:
                await answer_too_large(send, self.max_body)
                self._observe(route, 413, start)
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        try:
            if content_type != JSON_HEADERS or not body or LONG_NUMBER.search(body):
                raise FallThrough
            try:
                # FastAPI validates the same models: a body they refuse falls through, so
                # FastAPI words the refusal.
                if name is None:
                    parsed: Any = FeedbackCreate.model_validate(orjson.loads(body))
                else:
                    parsed = ServeCreate.model_validate(orjson.loads(body))
                principal_of(self.rt, authorization.decode("latin-1") if authorization else "")
            except (orjson.JSONDecodeError, ValidationError, e.AuthError):
                raise FallThrough from None
        except FallThrough:
            await self._fall_through(scope, receive, send, body, None)
            return
        status = 200
        try:
            if name is None:
                answer = await handlers.feedback(self.rt, parsed)
            else:
                answer = await handlers.serve(self.rt, name, parsed)
        except e.PromptOpsError as exc:
            status, content = promptops_error_body(exc)
            answer = orjson.dumps(content)
        except Exception as exc:
            # As FastAPI's server-error middleware does: log, answer 500, re-raise.
            log.exception("unexpected error")
            await _send(send, 500, orjson.dumps(INTERNAL_ERROR))
            raise exc
        await _send(send, status, answer)
        self._observe(route, status, start)

    def _observe(self, route: str, status: int, start: float) -> None:
        children = self._latency[route]
        child = children.get(status)
        if child is None:
            child = children[status] = self.metrics.child(self.metrics.latency, "POST", route, str(status))
        child.observe(time.perf_counter() - start)

    async def _fall_through(
        self, scope: dict[str, Any], receive: Any, send: Any, body: bytes, last: dict[str, Any] | None
    ) -> None:
        """Hand the request to the FastAPI app as if nothing had read its body."""
        replay: list[dict[str, Any]] = [{"type": "http.request", "body": body, "more_body": last is not None}]
        if last is not None:  # the client went away while sending the body
            replay.append(last)

        async def receive_again() -> dict[str, Any]:
            if replay:
                return replay.pop(0)
            return await receive()  # type: ignore[no-any-return]

        await self.app(scope, receive_again, send)


async def _send(send: Any, status: int, body: bytes) -> None:
    # Never a 401 (a refused key falls through), so no WWW-Authenticate header.
    await send_json(send, status, body)
