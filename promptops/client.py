"""The httpx SDK: `Client` and `AsyncClient` for serving prompts and sending feedback.

Both retry connection failures and 502/503/504 answers with exponential backoff (never a 4xx), and
map error answers to the exceptions of `promptops.errors` with the server's message. Each keeps the
content of the production version of every prompt it has served or rendered, re-checking the
`production` label once it is older than `cache_ttl`; when the server cannot be reached, `serve`
renders that version locally and answers with `fallback=True` and no decision id.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import httpx

from promptops import errors as e
from promptops.domain import PRODUCTION, PromptContent
from promptops.rendering import Renderer

RETRY_STATUS = frozenset({502, 503, 504})
# Failures after which the server surely did not act on the request, so even a serve may be resent.
_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.RemoteProtocolError)
# How an error answer becomes an exception: by (status, code) first, then by status alone. Each
# builder takes the server's message, its `field` and what the call was about (for the ids the
# not-found errors carry).
_Build = Callable[[str, Any, Mapping[str, Any]], e.PromptOpsError]
_BY_CODE: dict[tuple[int, str], _Build] = {
    (404, "prompt_not_found"): lambda m, f, c: e.PromptNotFound(str(c.get("name", "?"))),
    (404, "version_not_found"): lambda m, f, c: e.VersionNotFound(
        str(c.get("name", "?")), int(c.get("version", 0))),
    (404, "label_not_found"): lambda m, f, c: e.LabelNotFound(
        str(c.get("name", "?")), str(c.get("label", PRODUCTION))),
    (404, "decision_not_found"): lambda m, f, c: e.DecisionNotFound(
        str(c.get("decision_id", "?"))),
    (404, "experiment_not_found"): lambda m, f, c: e.ExperimentNotFound(
        c.get("experiment_id", "?")),
    (409, "conflict"): lambda m, f, c: e.Conflict(m),
    **{(status, "invalid_variables"): (lambda m, f, c: e.VariableError(m, field=f))
       for status in (413, 422)},
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


@dataclass
class _Production:
    """The cached production version of one prompt."""

    number: int
    variant: str
    content: PromptContent
    checked: float  # monotonic time the label was last confirmed by the server


class _Cache:
    """Production versions by prompt, and the immutable content of every version seen."""

    def __init__(self, ttl: float) -> None:
        self.ttl = ttl
        self._lock = threading.Lock()
        self.production: dict[str, _Production] = {}
        self.versions: dict[tuple[str, int], tuple[str, PromptContent]] = {}

    def stale(self, name: str) -> bool:
        """Whether the production entry is missing or older than the TTL."""
        entry = self.production.get(name)
        return entry is None or time.monotonic() - entry.checked > self.ttl

    def confirm(self, name: str, number: int) -> bool:
        """Mark `number` as production now; False when its content must be fetched first."""
        with self._lock:
            entry = self.production.get(name)
            if entry is not None and entry.number == number:
                entry.checked = time.monotonic()
                return True
            known = self.versions.get((name, number))
            if known is None:
                return False
            self.production[name] = _Production(number, known[0], known[1], time.monotonic())
            return True

    def store(self, name: str, version: Mapping[str, Any]) -> None:
        """Keep a version read from `/v1/prompts/{name}/versions/{n}` and make it production."""
        number = int(version["number"])
        content = PromptContent.from_dict(version["content"])
        variant = str(version.get("variant") or "main")
        with self._lock:
            self.versions[(name, number)] = (variant, content)
            self.production[name] = _Production(number, variant, content, time.monotonic())

    def drop(self, name: str) -> None:
        """Forget the production version of a prompt (it has none any more)."""
        with self._lock:
            self.production.pop(name, None)

    def get(self, name: str) -> _Production | None:
        """The last known production version, however old."""
        return self.production.get(name)


def _path(*parts: str | int) -> str:
    return "/v1/" + "/".join(quote(str(p), safe="") for p in parts)


def _error(resp: httpx.Response, context: Mapping[str, Any]) -> e.PromptOpsError:
    """The promptops exception for an error answer, carrying the server's message."""
    status = resp.status_code
    try:
        body = resp.json()["error"]
        code, message = str(body["code"]), str(body["message"])
        field = body.get("field")
    except (ValueError, KeyError, TypeError):
        code, message, field = "", f"HTTP {status}: {resp.text[:200]}", None
    build = (_BY_CODE.get((status, code)) or _BY_STATUS.get(status)
             or (lambda m, f, c: e.PromptOpsError(m)))
    exc = build(message, field, context)
    exc.message = message
    exc.args = (message,)
    return exc


@dataclass(frozen=True)
class CompleteResult:
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
    def from_json(cls, body: Mapping[str, Any]) -> CompleteResult:
        """The result of the JSON answer of `/complete`."""
        usage = body.get("usage") or {}
        output = body.get("output") or {}
        return cls(decision_id=body["decision_id"], prompt=body["prompt"],
                   version=int(body["version"]), variant=body["variant"],
                   experiment_id=body.get("experiment_id"), model=str(body.get("model")),
                   content=output.get("content"), role=output.get("role", "assistant"),
                   finish_reason=body.get("finish_reason"),
                   prompt_tokens=usage.get("prompt_tokens"),
                   completion_tokens=usage.get("completion_tokens"),
                   cost_usd=body.get("cost_usd"), latency_ms=float(body.get("latency_ms") or 0.0),
                   cache=str(body.get("cache")))


_UPSTREAM: dict[str, type[e.PromptOpsError]] = {
    "upstream_error": e.UpstreamError, "upstream_timeout": e.UpstreamTimeout,
    "upstream_rate_limited": e.UpstreamRateLimited,
    "provider_not_configured": e.ProviderNotConfigured}


def _complete_error(resp: httpx.Response, name: str) -> e.PromptOpsError:
    """The exception of a failed `/complete`: the gateway's own errors keep their type."""
    try:
        body = resp.json()["error"]
        code, message = str(body["code"]), str(body["message"])
    except (ValueError, KeyError, TypeError):
        return _error(resp, {"name": name})
    cls = _UPSTREAM.get(code)
    if cls is e.ProviderNotConfigured:
        return e.ProviderNotConfigured(message, provider=None)
    if cls is not None:
        return cls(message, provider="", model=None)  # type: ignore[call-arg]
    return _error(resp, {"name": name})


def _complete_body(variables: Mapping[str, Any] | None, unit_id: str | None,
                   messages: list[dict[str, Any]] | None, cache: str | None) -> dict[str, Any]:
    body: dict[str, Any] = {"variables": dict(variables or {})}
    if unit_id is not None:
        body["unit_id"] = unit_id
    if messages:
        body["messages"] = messages
    if cache is not None:
        body["cache"] = cache
    return body


def _unavailable(exc: httpx.TransportError, base_url: str) -> e.Unavailable:
    return e.Unavailable(f"promptops server at {base_url} unreachable: "
                         f"{type(exc).__name__}: {exc}".rstrip(": "))


def _retryable(exc: httpx.TransportError, *, idempotent: bool) -> bool:
    return idempotent or isinstance(exc, _NOT_SENT)


def _fallback(name: str, entry: _Production, variables: Mapping[str, Any],
              renderer: Renderer) -> dict[str, Any]:
    out = renderer.render(entry.content, variables, prompt=name, version=entry.number,
                          variant=entry.variant).payload()
    out.update(decision_id=None, experiment_id=None, fallback=True)
    return out


class _Base:
    """Settings and state shared by the sync and async clients."""

    def __init__(self, base_url: str, *, api_key: str | None, timeout: float, retries: int,
                 backoff: float, cache_ttl: float) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.cache = _Cache(cache_ttl)
        self.renderer = Renderer()

    def _delay(self, attempt: int) -> float:
        return float(self.backoff * 2**attempt)

    @staticmethod
    def _serve_body(variables: Mapping[str, Any] | None, unit_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"variables": dict(variables or {})}
        if unit_id is not None:
            body["unit_id"] = unit_id
        return body

    @staticmethod
    def _render_body(variables: Mapping[str, Any] | None, version: int | None,
                     label: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"variables": dict(variables or {})}
        if version is not None:
            body["version"] = version
        if label is not None:
            body["label"] = label
        return body

    @staticmethod
    def _feedback_body(decision_id: str, reward: float | bool,
                       metric: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"decision_id": decision_id, "reward": reward}
        if metric is not None:
            body["metric"] = metric
        return body


class Client(_Base):
    """A synchronous promptops client over httpx, with retries and a local production fallback."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 2.0,
                 retries: int = 3, backoff: float = 0.05, cache_ttl: float = 5.0,
                 transport: httpx.BaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retries=retries,
                         backoff=backoff, cache_ttl=cache_ttl)
        self._http = httpx.Client(base_url=self.base_url, headers=self.headers, timeout=timeout,
                                  transport=transport)

    def _request(self, method: str, path: str, *, json: Any = None, idempotent: bool = True,
                 retries: int | None = None, **context: Any) -> Any:
        tries = self.retries if retries is None else retries
        for attempt in range(tries + 1):
            last = attempt == tries
            try:
                resp = self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if last or not _retryable(exc, idempotent=idempotent):
                    raise _unavailable(exc, self.base_url) from exc
            else:
                if resp.status_code < 400:
                    return resp.json()
                if last or resp.status_code not in RETRY_STATUS:
                    raise _error(resp, context)
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _remember(self, name: str, number: int) -> None:
        if not self.cache.confirm(name, number):
            self.cache.store(name, self._request("GET", _path("prompts", name, "versions", number),
                                                 retries=0, name=name, version=number))

    def _refresh(self, name: str) -> None:
        info = self._request("GET", _path("prompts", name), retries=0, name=name)
        self._note_labels(name, info)

    def _note_labels(self, name: str, info: Mapping[str, Any]) -> None:
        number = (info.get("labels") or {}).get(PRODUCTION)
        if number is None:
            self.cache.drop(name)
        else:
            self._remember(name, int(number))

    def _best_effort(self, name: str, number: int | None) -> None:
        # Keeping the cache warm must never fail the call that triggered it.
        try:
            if number is not None:
                self._remember(name, number)
            elif self.cache.stale(name):
                self._refresh(name)
        except e.PromptOpsError:
            pass

    def serve(self, name: str, variables: Mapping[str, Any] | None = None,
              unit_id: str | None = None) -> dict[str, Any]:
        """Serve a prompt (recording a decision), or render the cached production locally when
        the server is unreachable."""
        try:
            out = self._request("POST", _path("prompts", name, "serve"), idempotent=False,
                                json=self._serve_body(variables, unit_id), name=name)
        except e.Unavailable:
            entry = self.cache.get(name)
            if entry is None:
                raise
            return _fallback(name, entry, variables or {}, self.renderer)
        out["fallback"] = False
        self._best_effort(name, out["version"] if out.get("experiment_id") is None else None)
        return out  # type: ignore[no-any-return]

    def feedback(self, decision_id: str, reward: float | bool,
                 metric: str | None = None) -> str:
        """Send a reward for a decision: "recorded", or "duplicate" for a repeat."""
        out = self._request("POST", "/v1/feedback",
                            json=self._feedback_body(decision_id, reward, metric),
                            decision_id=decision_id)
        return str(out["status"])

    def render(self, name: str, variables: Mapping[str, Any] | None = None,
               version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """Render a version (production by default) without recording a decision."""
        out = self._request("POST", _path("prompts", name, "render"),
                            json=self._render_body(variables, version, label), name=name,
                            version=version or 0, label=label or PRODUCTION)
        if version is None and label in (None, PRODUCTION):
            self._best_effort(name, out["version"])
        return out  # type: ignore[no-any-return]

    def get_prompt(self, name: str) -> dict[str, Any]:
        """A prompt with its versions and labels; refreshes the cached production version."""
        info = self._request("GET", _path("prompts", name), name=name)
        self._note_labels(name, info)
        return info  # type: ignore[no-any-return]

    def complete(self, name: str, variables: Mapping[str, Any] | None = None, *,
                 unit_id: str | None = None, messages: list[dict[str, Any]] | None = None,
                 cache: str | None = None, timeout: float = 120.0) -> CompleteResult:
        """Call the prompt's model through the gateway (never resent: a call costs money)."""
        path = _path("prompts", name, "complete")
        try:
            resp = self._http.post(path, json=_complete_body(variables, unit_id, messages, cache),
                                   timeout=timeout)
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.base_url) from exc
        if resp.status_code >= 400:
            raise _complete_error(resp, name)
        return CompleteResult.from_json(resp.json())

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio promptops client over httpx, with retries and a local production fallback."""

    def __init__(self, base_url: str, *, api_key: str | None = None, timeout: float = 2.0,
                 retries: int = 3, backoff: float = 0.05, cache_ttl: float = 5.0,
                 transport: httpx.AsyncBaseTransport | None = None) -> None:
        super().__init__(base_url, api_key=api_key, timeout=timeout, retries=retries,
                         backoff=backoff, cache_ttl=cache_ttl)
        self._http = httpx.AsyncClient(base_url=self.base_url, headers=self.headers,
                                       timeout=timeout, transport=transport)

    async def _request(self, method: str, path: str, *, json: Any = None,
                       idempotent: bool = True, retries: int | None = None,
                       **context: Any) -> Any:
        tries = self.retries if retries is None else retries
        for attempt in range(tries + 1):
            last = attempt == tries
            try:
                resp = await self._http.request(method, path, json=json)
            except httpx.TransportError as exc:
                if last or not _retryable(exc, idempotent=idempotent):
                    raise _unavailable(exc, self.base_url) from exc
            else:
                if resp.status_code < 400:
                    return resp.json()
                if last or resp.status_code not in RETRY_STATUS:
                    raise _error(resp, context)
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _remember(self, name: str, number: int) -> None:
        if not self.cache.confirm(name, number):
            self.cache.store(name, await self._request(
                "GET", _path("prompts", name, "versions", number), retries=0, name=name,
                version=number))

    async def _refresh(self, name: str) -> None:
        info = await self._request("GET", _path("prompts", name), retries=0, name=name)
        await self._note_labels(name, info)

    async def _note_labels(self, name: str, info: Mapping[str, Any]) -> None:
        number = (info.get("labels") or {}).get(PRODUCTION)
        if number is None:
            self.cache.drop(name)
        else:
            await self._remember(name, int(number))

    async def _best_effort(self, name: str, number: int | None) -> None:
        # Keeping the cache warm must never fail the call that triggered it.
        try:
            if number is not None:
                await self._remember(name, number)
            elif self.cache.stale(name):
                await self._refresh(name)
        except e.PromptOpsError:
            pass

    async def serve(self, name: str, variables: Mapping[str, Any] | None = None,
                    unit_id: str | None = None) -> dict[str, Any]:
        """Serve a prompt (recording a decision), or render the cached production locally when
        the server is unreachable."""
        try:
            out = await self._request("POST", _path("prompts", name, "serve"), idempotent=False,
                                      json=self._serve_body(variables, unit_id), name=name)
        except e.Unavailable:
            entry = self.cache.get(name)
            if entry is None:
                raise
            return _fallback(name, entry, variables or {}, self.renderer)
        out["fallback"] = False
        await self._best_effort(name,
                                out["version"] if out.get("experiment_id") is None else None)
        return out  # type: ignore[no-any-return]

    async def complete(self, name: str, variables: Mapping[str, Any] | None = None, *,
                       unit_id: str | None = None, messages: list[dict[str, Any]] | None = None,
                       cache: str | None = None, timeout: float = 120.0) -> CompleteResult:
        """Call the prompt's model through the gateway (never resent: a call costs money)."""
        path = _path("prompts", name, "complete")
        try:
            resp = await self._http.post(
                path, json=_complete_body(variables, unit_id, messages, cache), timeout=timeout)
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.base_url) from exc
        if resp.status_code >= 400:
            raise _complete_error(resp, name)
        return CompleteResult.from_json(resp.json())

    async def feedback(self, decision_id: str, reward: float | bool,
                       metric: str | None = None) -> str:
        """Send a reward for a decision: "recorded", or "duplicate" for a repeat."""
        out = await self._request("POST", "/v1/feedback",
                                  json=self._feedback_body(decision_id, reward, metric),
                                  decision_id=decision_id)
        return str(out["status"])

    async def render(self, name: str, variables: Mapping[str, Any] | None = None,
                     version: int | None = None, label: str | None = None) -> dict[str, Any]:
        """Render a version (production by default) without recording a decision."""
        out = await self._request("POST", _path("prompts", name, "render"),
                                  json=self._render_body(variables, version, label), name=name,
                                  version=version or 0, label=label or PRODUCTION)
        if version is None and label in (None, PRODUCTION):
            await self._best_effort(name, out["version"])
        return out  # type: ignore[no-any-return]

    async def get_prompt(self, name: str) -> dict[str, Any]:
        """A prompt with its versions and labels; refreshes the cached production version."""
        info = await self._request("GET", _path("prompts", name), name=name)
        await self._note_labels(name, info)
        return info  # type: ignore[no-any-return]

    async def close(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        await self.close()
