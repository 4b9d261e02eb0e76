"""The one place where errors become HTTP answers: JSON for the API, a page for the dashboard."""

from __future__ import annotations

import logging
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import Response

from promptops import errors as e

STATUS: list[tuple[type[e.PromptOpsError], int]] = [
    (e.Forbidden, 403),
    (e.AuthError, 401),
    (e.NotFound, 404),
    (e.ExperimentStateError, 409),
    (e.Conflict, 409),
    (e.InvalidPromptFile, 422),
    (e.InvalidInput, 422),
    (e.RenderError, 422),
    (e.Unavailable, 503),
    (e.ProviderNotConfigured, 503),
    (e.UpstreamTimeout, 504),
    (e.UpstreamRateLimited, 429),
    (e.UpstreamError, 502),
]

HTTP_CODES = {
    400: "bad_request",
    401: "unauthorized",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    408: "request_timeout",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_input",
    429: "too_many_requests",
    503: "unavailable",
}


def status_for(exc: e.PromptOpsError) -> int:
    """The HTTP status of a promptops error."""
    for cls, status in STATUS:
        if isinstance(exc, cls):
            return status
    return 400


UNAVAILABLE_MESSAGE = "the database is unavailable; try again shortly"


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """The JSON body of every error answer: `{"error": {"code", "message", ...}}`."""
    return {"error": {"code": code, "message": message, **extra}}


INTERNAL_ERROR = error_body("internal_error", "internal error; see the server log")
"""The body of a 500: what went wrong goes to the server log only."""


def promptops_error_body(exc: e.PromptOpsError) -> tuple[int, dict[str, Any]]:
    """The status and JSON body of a promptops error on an API route: a code and a plain
    message; what a database failure says beyond that (driver messages, SQL) goes to the server
    log only. Upstream errors keep their message: the provider layer already cut and redacted it."""
    status = status_for(exc)
    if isinstance(exc, e.Unavailable):
        logging.getLogger("promptops.server").warning("answered %d: %s", status, exc.message)
        return status, error_body(exc.code, UNAVAILABLE_MESSAGE)
    extra: dict[str, Any] = {}
    if isinstance(exc, e.InvalidPromptFile):
        extra["problems"] = [str(p) for p in exc.problems]
    field = getattr(exc, "field", None)
    if field:
        extra["field"] = field
    return status, error_body(exc.code, exc.message, **extra)


def json_error(status: int, body: dict[str, Any]) -> Response:
    """The JSON answer of an error body."""
    headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
    return Response(orjson.dumps(body), status_code=status, media_type="application/json", headers=headers)


def wants_html(request: Request) -> bool:
    """Dashboard pages answer errors with a page; everything else with JSON."""
    path = request.url.path
    if path.startswith(("/v1", "/healthz", "/metrics", "/openapi", "/docs", "/static")):
        return False
    return "text/html" in request.headers.get("accept", "")


def _answer(request: Request, status: int, body: dict[str, Any]) -> Response:
    page = getattr(request.app.state, "error_page", None)
    if page is not None and wants_html(request):
        return page(request, status, body["error"]["message"])
    return json_error(status, body)


def validation_problem(err: Any) -> str:
    """One line for one pydantic error: where, then what (without pydantic's "Value error, "
    prefix, and without a second location when the message names its own)."""
    loc = ".".join(str(x) for x in err.get("loc", ()) if x != "body")
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "value_error":
        msg = msg.removeprefix("Value error, ")
    if not loc and msg.startswith("body."):
        return msg
    return f"{loc or 'body'}: {msg}"


def install(app: FastAPI) -> None:
    """Register the handlers."""

    @app.exception_handler(e.PromptOpsError)
    async def _promptops(request: Request, exc: e.PromptOpsError) -> Response:
        return _answer(request, *promptops_error_body(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        problems = [validation_problem(err) for err in exc.errors()[:20]]
        return _answer(
            request,
            422,
            error_body("invalid_input", "; ".join(problems) or "invalid request", problems=problems),
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        code = HTTP_CODES.get(exc.status_code, "error")
        message = exc.detail if isinstance(exc.detail, str) else code.replace("_", " ")
        if exc.status_code == 404 and message == "Not Found":
            message = f"no route {request.method} {request.url.path}"
        return _answer(request, exc.status_code, error_body(code, message))

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> Response:
        logging.getLogger("promptops.server").exception("unexpected error")
        return _answer(request, 500, INTERNAL_ERROR)


async def send_json(send: Any, status: int, body: bytes, *headers: tuple[bytes, bytes]) -> None:
    """Answer a raw ASGI request with a JSON body: the given headers, then content-length and
    content-type (starlette's order), for the layers that answer before FastAPI does."""
    head = [*headers, (b"content-length", b"%d" % len(body)), (b"content-type", b"application/json")]
    await send({"type": "http.response.start", "status": status, "headers": head})
    await send({"type": "http.response.body", "body": body})
