"""The httpx SDK: `Client` and `AsyncClient` for serving prompts and sending feedback.

Both retry connection failures and 502/503/504 answers with exponential backoff (never a 4xx), and
map error answers to the exceptions of `promptops.errors` with the server's message. Results are
the frozen dataclasses of `promptops.results`.

Each keeps the content of the production version of every prompt it has served or rendered,
re-checking the `production` label once it is older than `cache_ttl`; when the server cannot be
reached, `serve` renders that version locally and answers with `fallback=True` and no decision id.
With `fallback_dir`, a prompt the client has never seen is rendered from its prompt file there
(its `main` content, what production is after `promptops adopt`). With `queue_feedback=True`,
feedback that cannot reach the server is queued (bounded) and sent by a background worker with
backoff; `close` flushes it, and whatever could not be sent is counted in `feedback_dropped` and
logged.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Literal, Self
from urllib.parse import quote

import httpx

from promptops import errors as e
from promptops import promptfiles
from promptops.domain import MAIN_VARIANT, PRODUCTION, PromptContent, PromptDefinition
from promptops.outbox import AsyncOutbox, Body, Outbox
from promptops.rendering import Renderer
from promptops.results import CompleteResult, Experiment, Prompt, RenderResult, ServeResult

log = logging.getLogger("promptops.client")
FeedbackStatus = Literal["recorded", "duplicate", "queued"]
"""What `feedback` answers: `queued` when it waits in the outbox for the server to come back."""

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
    build = _BY_CODE.get((status, code)) or _BY_STATUS.get(status) or (lambda m, f, c: e.PromptOpsError(m))
    exc = build(message, field, context)
    exc.message = message
    exc.args = (message,)
    return exc


_UPSTREAM: dict[str, type[e.PromptOpsError]] = {
    "upstream_error": e.UpstreamError,
    "upstream_timeout": e.UpstreamTimeout,
    "upstream_rate_limited": e.UpstreamRateLimited,
    "provider_not_configured": e.ProviderNotConfigured,
}


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


def _complete_body(
    variables: Mapping[str, Any] | None,
    unit_id: str | None,
    messages: list[dict[str, Any]] | None,
    cache: str | None,
) -> dict[str, Any]:
    body: dict[str, Any] = {"variables": dict(variables or {})}
    if unit_id is not None:
        body["unit_id"] = unit_id
    if messages:
        body["messages"] = messages
    if cache is not None:
        body["cache"] = cache
    return body


def _unavailable(exc: httpx.TransportError, base_url: str) -> e.Unavailable:
    return e.Unavailable(
        f"promptops server at {base_url} unreachable: {type(exc).__name__}: {exc}".rstrip(": ")
    )


def _retryable(exc: httpx.TransportError, *, idempotent: bool) -> bool:
    return idempotent or isinstance(exc, _NOT_SENT)


def _fallback(name: str, entry: _Production, variables: Mapping[str, Any], renderer: Renderer) -> ServeResult:
    out = renderer.render(
        entry.content, variables, prompt=name, version=entry.number, variant=entry.variant
    ).payload()
    return ServeResult.from_json({**out, "decision_id": None, "experiment_id": None}, fallback=True)


def _load_files(folder: Path) -> dict[str, PromptDefinition]:
    """The valid prompt files of a folder by prompt name; a broken file is logged and skipped."""
    found: dict[str, PromptDefinition] = {}
    try:
        paths = promptfiles.discover([folder])
    except e.InvalidPromptFile as exc:
        log.warning("promptops: fallback_dir %s: %s", folder, exc.message)
        return found
    for path in paths:
        try:
            definition = promptfiles.load_prompt_file(path)
        except e.InvalidPromptFile as exc:
            log.warning("promptops: fallback prompt file skipped: %s", exc.problems[0])
            continue
        found.setdefault(definition.name, definition)
    return found


class _Base:
    """Settings and state shared by the sync and async clients."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None,
        timeout: float,
        retries: int,
        backoff: float,
        cache_ttl: float,
        fallback_dir: str | Path | None,
        flush_timeout: float,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.retries = max(0, int(retries))
        self.backoff = backoff
        self.timeout = timeout
        self.headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
        self.cache = _Cache(cache_ttl)
        self.renderer = Renderer()
        self.fallback_dir = Path(fallback_dir) if fallback_dir is not None else None
        self.flush_timeout = flush_timeout
        self._files: dict[str, PromptDefinition] | None = None
        self._files_lock = threading.Lock()

    def _offline(self, name: str, variables: Mapping[str, Any]) -> ServeResult | None:
        """A local rendering when the server is unreachable: the cached production version, else
        the `main` content of the prompt's file in `fallback_dir`; None when neither exists."""
        entry = self.cache.get(name)
        if entry is not None:
            return _fallback(name, entry, variables, self.renderer)
        if self.fallback_dir is None:
            return None
        with self._files_lock:
            if self._files is None:  # read once: the files are the last resort, not live
                self._files = _load_files(self.fallback_dir)
        definition = self._files.get(name)
        if definition is None:
            return None
        out = self.renderer.render(
            definition.content, variables, prompt=name, version=0, variant=MAIN_VARIANT
        ).payload()
        return ServeResult.from_json(
            {**out, "version": None, "decision_id": None, "experiment_id": None}, fallback=True
        )

    def _delay(self, attempt: int) -> float:
        return float(self.backoff * 2**attempt)

    @staticmethod
    def _serve_body(variables: Mapping[str, Any] | None, unit_id: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"variables": dict(variables or {})}
        if unit_id is not None:
            body["unit_id"] = unit_id
        return body

    @staticmethod
    def _render_body(
        variables: Mapping[str, Any] | None, version: int | None, label: str | None
    ) -> dict[str, Any]:
        body: dict[str, Any] = {"variables": dict(variables or {})}
        if version is not None:
            body["version"] = version
        if label is not None:
            body["label"] = label
        return body

    @staticmethod
    def _feedback_body(decision_id: str, reward: float | bool, metric: str | None) -> dict[str, Any]:
        body: dict[str, Any] = {"decision_id": decision_id, "reward": reward}
        if metric is not None:
            body["metric"] = metric
        return body


class Client(_Base):
    """A synchronous promptops client over httpx, with retries and a local production fallback."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 0.05,
        cache_ttl: float = 5.0,
        fallback_dir: str | Path | None = None,
        queue_feedback: bool = False,
        feedback_queue_size: int = 10_000,
        flush_timeout: float = 5.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            cache_ttl=cache_ttl,
            fallback_dir=fallback_dir,
            flush_timeout=flush_timeout,
        )
        self._http = httpx.Client(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._outbox = (
            Outbox(
                self._send_queued,
                maxsize=feedback_queue_size,
                backoff=max(backoff, 0.05),
                exit_timeout=flush_timeout,
            )
            if queue_feedback
            else None
        )

    @property
    def feedback_dropped(self) -> int:
        """Feedback given up on: the queue was full, the server refused it, or it was still
        queued at close (each is logged)."""
        return self._outbox.dropped if self._outbox is not None else 0

    @property
    def feedback_pending(self) -> int:
        """Feedback waiting in the queue for the server."""
        return self._outbox.pending if self._outbox is not None else 0

    def _send_queued(self, body: Body) -> None:
        self._request("POST", "/v1/feedback", json=body, retries=0, decision_id=body["decision_id"])

    def flush_feedback(self, timeout: float | None = None) -> bool:
        """Send queued feedback now; True once the queue is empty, False if it is not within
        `timeout` seconds (default `flush_timeout`)."""
        if self._outbox is None:
            return True
        return self._outbox.flush(self.flush_timeout if timeout is None else timeout)

    def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotent: bool = True,
        retries: int | None = None,
        **context: Any,
    ) -> Any:
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
            self.cache.store(
                name,
                self._request(
                    "GET", _path("prompts", name, "versions", number), retries=0, name=name, version=number
                ),
            )

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

    def serve(
        self, name: str, variables: Mapping[str, Any] | None = None, unit_id: str | None = None
    ) -> ServeResult:
        """Serve a prompt (recording a decision), or render production locally when the server
        is unreachable (`fallback=True`)."""
        try:
            out = self._request(
                "POST",
                _path("prompts", name, "serve"),
                idempotent=False,
                json=self._serve_body(variables, unit_id),
                name=name,
            )
        except e.Unavailable:
            local = self._offline(name, variables or {})
            if local is None:
                raise
            return local
        self._best_effort(name, out["version"] if out.get("experiment_id") is None else None)
        return ServeResult.from_json(out)

    def feedback(self, decision_id: str, reward: float | bool, metric: str | None = None) -> FeedbackStatus:
        """Send a reward for a decision: "recorded", "duplicate" for a repeat, or "queued" when
        `queue_feedback` holds it until the server is back."""
        body = self._feedback_body(decision_id, reward, metric)
        if self._outbox is not None and self._outbox.pending:
            self._outbox.put(body)  # keep the order, and do not wait on a server known down
            return "queued"
        try:
            out = self._request("POST", "/v1/feedback", json=body, decision_id=decision_id)
        except e.Unavailable:
            if self._outbox is None:
                raise
            self._outbox.put(body)
            return "queued"
        return "duplicate" if out["status"] == "duplicate" else "recorded"

    def render(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> RenderResult:
        """Render a version (production by default) without recording a decision."""
        out = self._request(
            "POST",
            _path("prompts", name, "render"),
            json=self._render_body(variables, version, label),
            name=name,
            version=version or 0,
            label=label or PRODUCTION,
        )
        if version is None and label in (None, PRODUCTION):
            self._best_effort(name, out["version"])
        return RenderResult.from_json(out)

    def get_prompt(self, name: str) -> Prompt:
        """A prompt with its versions and labels; refreshes the cached production version."""
        info = self._request("GET", _path("prompts", name), name=name)
        self._note_labels(name, info)
        return Prompt.from_json(info)

    def get_experiment(self, experiment_id: int) -> Experiment:
        """An experiment with its per-arm figures."""
        return Experiment.from_json(
            self._request("GET", _path("experiments", experiment_id), experiment_id=experiment_id)
        )

    def list_experiments(self, *, prompt: str | None = None, status: str | None = None) -> list[Experiment]:
        """Experiments, newest first, optionally of one prompt or in one status."""
        query = "&".join(
            f"{k}={quote(v, safe='')}" for k, v in (("prompt", prompt), ("status", status)) if v is not None
        )
        out = self._request("GET", "/v1/experiments" + (f"?{query}" if query else ""), name=prompt or "?")
        return [Experiment.from_json(x) for x in out["experiments"]]

    def complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit_id: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        cache: str | None = None,
        timeout: float = 120.0,
    ) -> CompleteResult:
        """Call the prompt's model through the gateway (never resent: a call costs money)."""
        path = _path("prompts", name, "complete")
        try:
            resp = self._http.post(
                path, json=_complete_body(variables, unit_id, messages, cache), timeout=timeout
            )
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.base_url) from exc
        if resp.status_code >= 400:
            raise _complete_error(resp, name)
        return CompleteResult.from_json(resp.json())

    def close(self) -> None:
        """Flush queued feedback (at most `flush_timeout` seconds), then close the connections."""
        if self._outbox is not None:
            self._outbox.close(self.flush_timeout)
        self._http.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()


class AsyncClient(_Base):
    """An asyncio promptops client over httpx, with retries and a local production fallback."""

    def __init__(
        self,
        base_url: str,
        *,
        api_key: str | None = None,
        timeout: float = 2.0,
        retries: int = 3,
        backoff: float = 0.05,
        cache_ttl: float = 5.0,
        fallback_dir: str | Path | None = None,
        queue_feedback: bool = False,
        feedback_queue_size: int = 10_000,
        flush_timeout: float = 5.0,
        transport: httpx.AsyncBaseTransport | None = None,
    ) -> None:
        super().__init__(
            base_url,
            api_key=api_key,
            timeout=timeout,
            retries=retries,
            backoff=backoff,
            cache_ttl=cache_ttl,
            fallback_dir=fallback_dir,
            flush_timeout=flush_timeout,
        )
        self._http = httpx.AsyncClient(
            base_url=self.base_url, headers=self.headers, timeout=timeout, transport=transport
        )
        self._outbox = (
            AsyncOutbox(self._send_queued, maxsize=feedback_queue_size, backoff=max(backoff, 0.05))
            if queue_feedback
            else None
        )

    @property
    def feedback_dropped(self) -> int:
        """Feedback given up on: the queue was full, the server refused it, or it was still
        queued at close (each is logged)."""
        return self._outbox.dropped if self._outbox is not None else 0

    @property
    def feedback_pending(self) -> int:
        """Feedback waiting in the queue for the server."""
        return self._outbox.pending if self._outbox is not None else 0

    async def _send_queued(self, body: Body) -> None:
        await self._request("POST", "/v1/feedback", json=body, retries=0, decision_id=body["decision_id"])

    async def flush_feedback(self, timeout: float | None = None) -> bool:
        """Send queued feedback now; True once the queue is empty, False if it is not within
        `timeout` seconds (default `flush_timeout`)."""
        if self._outbox is None:
            return True
        return await self._outbox.flush(self.flush_timeout if timeout is None else timeout)

    async def _request(
        self,
        method: str,
        path: str,
        *,
        json: Any = None,
        idempotent: bool = True,
        retries: int | None = None,
        **context: Any,
    ) -> Any:
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
            self.cache.store(
                name,
                await self._request(
                    "GET", _path("prompts", name, "versions", number), retries=0, name=name, version=number
                ),
            )

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

    async def serve(
        self, name: str, variables: Mapping[str, Any] | None = None, unit_id: str | None = None
    ) -> ServeResult:
        """Serve a prompt (recording a decision), or render production locally when the server
        is unreachable (`fallback=True`)."""
        try:
            out = await self._request(
                "POST",
                _path("prompts", name, "serve"),
                idempotent=False,
                json=self._serve_body(variables, unit_id),
                name=name,
            )
        except e.Unavailable:
            local = self._offline(name, variables or {})
            if local is None:
                raise
            return local
        await self._best_effort(name, out["version"] if out.get("experiment_id") is None else None)
        return ServeResult.from_json(out)

    async def complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        *,
        unit_id: str | None = None,
        messages: list[dict[str, Any]] | None = None,
        cache: str | None = None,
        timeout: float = 120.0,
    ) -> CompleteResult:
        """Call the prompt's model through the gateway (never resent: a call costs money)."""
        path = _path("prompts", name, "complete")
        try:
            resp = await self._http.post(
                path, json=_complete_body(variables, unit_id, messages, cache), timeout=timeout
            )
        except httpx.TransportError as exc:
            raise _unavailable(exc, self.base_url) from exc
        if resp.status_code >= 400:
            raise _complete_error(resp, name)
        return CompleteResult.from_json(resp.json())

    async def feedback(
        self, decision_id: str, reward: float | bool, metric: str | None = None
    ) -> FeedbackStatus:
        """Send a reward for a decision: "recorded", "duplicate" for a repeat, or "queued" when
        `queue_feedback` holds it until the server is back."""
        body = self._feedback_body(decision_id, reward, metric)
        if self._outbox is not None and self._outbox.pending:
            self._outbox.put(body)  # keep the order, and do not wait on a server known down
            return "queued"
        try:
            out = await self._request("POST", "/v1/feedback", json=body, decision_id=decision_id)
        except e.Unavailable:
            if self._outbox is None:
                raise
            self._outbox.put(body)
            return "queued"
        return "duplicate" if out["status"] == "duplicate" else "recorded"

    async def render(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> RenderResult:
        """Render a version (production by default) without recording a decision."""
        out = await self._request(
            "POST",
            _path("prompts", name, "render"),
            json=self._render_body(variables, version, label),
            name=name,
            version=version or 0,
            label=label or PRODUCTION,
        )
        if version is None and label in (None, PRODUCTION):
            await self._best_effort(name, out["version"])
        return RenderResult.from_json(out)

    async def get_prompt(self, name: str) -> Prompt:
        """A prompt with its versions and labels; refreshes the cached production version."""
        info = await self._request("GET", _path("prompts", name), name=name)
        await self._note_labels(name, info)
        return Prompt.from_json(info)

    async def get_experiment(self, experiment_id: int) -> Experiment:
        """An experiment with its per-arm figures."""
        return Experiment.from_json(
            await self._request("GET", _path("experiments", experiment_id), experiment_id=experiment_id)
        )

    async def list_experiments(
        self, *, prompt: str | None = None, status: str | None = None
    ) -> list[Experiment]:
        """Experiments, newest first, optionally of one prompt or in one status."""
        query = "&".join(
            f"{k}={quote(v, safe='')}" for k, v in (("prompt", prompt), ("status", status)) if v is not None
        )
        out = await self._request(
            "GET", "/v1/experiments" + (f"?{query}" if query else ""), name=prompt or "?"
        )
        return [Experiment.from_json(x) for x in out["experiments"]]

    async def close(self) -> None:
        """Flush queued feedback (at most `flush_timeout` seconds), then close the connections."""
        if self._outbox is not None:
            await self._outbox.close(self.flush_timeout)
        await self._http.aclose()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()
