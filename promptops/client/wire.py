"""The SDK's HTTP wire: what a call sends, when it is tried again, and how an error answer becomes
an exception of `promptops.errors`. No I/O here: both clients send `Call`s through their own httpx
client and read the answers with `answer` and `transport_failed`."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final
from urllib.parse import quote

import httpx

from promptops import errors as e
from promptops.domain import PRODUCTION

RETRY_STATUS = frozenset({502, 503, 504})
"""Answers worth sending a request again for: the server or a proxy before it was unavailable."""
# Failures after which the server surely did not act on the request, so even a serve may be resent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
# How an error answer becomes an exception: by (status, code) first, then by status alone. Each
# builder takes the server's message, its `field` and what the call was about (for the ids the
# not-found errors carry).
_Build = Callable[[str, Any, Mapping[str, Any]], e.PromptOpsError]
_BY_CODE: dict[tuple[int, str], _Build] = {
    (404, "prompt_not_found"): lambda m, f, c: e.PromptNotFound(str(c.get("name", "?"))),
    (404, "version_not_found"): lambda m, f, c: e.VersionNotFound(
        str(c.get("name", "?")), int(c.get("version", 0))
    ),
    (404, "label_not_found"): lambda m, f, c: e.LabelNotFound(
        str(c.get("name", "?")), str(c.get("label", PRODUCTION))
    ),
    (404, "decision_not_found"): lambda m, f, c: e.DecisionNotFound(str(c.get("decision_id", "?"))),
    (404, "experiment_not_found"): lambda m, f, c: e.ExperimentNotFound(c.get("experiment_id", "?")),
    (409, "conflict"): lambda m, f, c: e.Conflict(m),
    **{(status, "invalid_variables"): (lambda m, f, c: e.VariableError(m, field=f)) for status in (413, 422)},
    **{(status, "render_error"): (lambda m, f, c: e.RenderError(m)) for status in (413, 422)},
}
_BY_STATUS: dict[int, _Build] = {
    404: lambda m, f, c: e.NotFound(m),
    413: lambda m, f, c: e.InvalidInput(m, field=f),
    422: lambda m, f, c: e.InvalidInput(m, field=f),
    401: lambda m, f, c: e.AuthError(m),
    403: lambda m, f, c: e.Forbidden(m),
    409: lambda m, f, c: e.ExperimentStateError(m),
    **{status: (lambda m, f, c: e.Unavailable(m)) for status in RETRY_STATUS},
}
_UPSTREAM: dict[str, type[e.PromptOpsError]] = {
    "upstream_error": e.UpstreamError,
    "upstream_timeout": e.UpstreamTimeout,
    "upstream_rate_limited": e.UpstreamRateLimited,
    "provider_not_configured": e.ProviderNotConfigured,
}


def error_of(resp: httpx.Response, context: Mapping[str, Any]) -> e.PromptOpsError:
    """The promptops exception for an error answer, carrying the server's message."""
    status = resp.status_code
    try:
        body = resp.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        field = body.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "", f"HTTP {status}: {resp.text[:200]}", None
    build = _BY_CODE.get((status, code)) or _BY_STATUS.get(status) or (lambda m, f, c: e.PromptOpsError(m))
    exc = build(message, field, context)
    exc.message = message
    exc.args = (message,)
    return exc


def complete_error_of(resp: httpx.Response, context: Mapping[str, Any]) -> e.PromptOpsError:
    """The exception of a failed `/complete`: the gateway's own errors keep their type."""
    try:
        body = resp.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return error_of(resp, context)
    cls = _UPSTREAM.get(code)
    if cls is e.ProviderNotConfigured:
        return e.ProviderNotConfigured(message, provider=None)
    if cls is not None:
        return cls(message, provider="", model=None)  # type: ignore[call-arg]
    return error_of(resp, context)


@dataclass(frozen=True)
class Call:
    """One request of the API and how to send it: whether it may be resent after a failure that
    may have reached the server (`idempotent`), the retries and timeout when not the client's, what
    it is about (`context`, for the ids its errors carry) and how its error answers are read."""

    method: str
    path: str
    json: Any = None
    idempotent: bool = True
    retries: int | None = None
    timeout: float | None = None
    context: Mapping[str, Any] = field(default_factory=dict)
    errors: Callable[[httpx.Response, Mapping[str, Any]], e.PromptOpsError] = error_of

    def tries(self, retries: int) -> int:
        """How many times it may be sent again after the first, given the client's setting."""
        return retries if self.retries is None else self.retries

    def send_options(self) -> dict[str, Any]:
        """The keyword arguments of httpx's `request` for this call."""
        options: dict[str, Any] = {"json": self.json}
        if self.timeout is not None:
            options["timeout"] = self.timeout
        return options


RETRY: Final = object()
"""What `answer` returns when the call should be sent again."""


def answer(call: Call, resp: httpx.Response, *, last: bool) -> Any:
    """The JSON of a successful answer, `RETRY` to send the call again (a 502/503/504 before the
    last attempt), or raises the exception of an error answer."""
    if resp.status_code < 400:
        return resp.json()
    if last or resp.status_code not in RETRY_STATUS:
        raise call.errors(resp, call.context)
    return RETRY


def transport_failed(call: Call, exc: httpx.TransportError, *, last: bool, base_url: str) -> None:
    """Returns when the call may be sent again after a transport failure; raises Unavailable on the
    last attempt, or when the server may have acted on a call that must not run twice."""
    if last or not (call.idempotent or isinstance(exc, _NOT_SENT)):
        raise e.Unavailable(
            f"promptops server at {base_url} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
        ) from exc


def path(*parts: str | int) -> str:
    """An API path with each part quoted: `path("prompts", name)` is `/v1/prompts/NAME`."""
    return "/v1/" + "/".join(quote(str(p), safe="") for p in parts)


def query(**params: str | None) -> str:
    """A query string of the parameters that are set (`?a=1&b=2`), or an empty string."""
    joined = "&".join(f"{k}={quote(v, safe='')}" for k, v in params.items() if v is not None)
    return f"?{joined}" if joined else ""


def body(variables: Mapping[str, Any] | None, **options: Any) -> dict[str, Any]:
    """A request body: the variables, then each option that is not None."""
    out: dict[str, Any] = {"variables": dict(variables or {})}
    out.update({k: v for k, v in options.items() if v is not None})
    return out


def feedback_body(decision_id: str, reward: float | bool, metric: str | None) -> dict[str, Any]:
    """The body of `POST /v1/feedback`."""
    out: dict[str, Any] = {"decision_id": decision_id, "reward": reward}
    if metric is not None:
        out["metric"] = metric
    return out
