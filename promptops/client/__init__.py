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

The operations are written once in `core.py` and driven here by blocking or awaited requests;
`wire.py` holds the requests and error mapping, `fallback.py` the production cache and local
rendering.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from promptops import errors as e
from promptops.client.core import ClientCore, FeedbackStatus, Steps, T
from promptops.client.wire import RETRY, Call, answer, transport_failed
from promptops.outbox import AsyncOutbox, Body, Outbox
from promptops.results import CompleteResult, Experiment, Prompt, RenderResult, ServeResult

__all__ = ["AsyncClient", "Client", "CompleteResult", "FeedbackStatus"]


class Client(ClientCore):
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
        self._outbox: Outbox | None = (
            Outbox(
                self._send_queued,
                maxsize=feedback_queue_size,
                backoff=max(backoff, 0.05),
                exit_timeout=flush_timeout,
            )
            if queue_feedback
            else None
        )

    def _send(self, call: Call) -> Any:
        tries = call.tries(self.retries)
        for attempt in range(tries + 1):
            last = attempt == tries
            try:
                resp = self._http.request(call.method, call.path, **call.send_options())
            except httpx.TransportError as exc:
                transport_failed(call, exc, last=last, base_url=self.base_url)
            else:
                out = answer(call, resp, last=last)
                if out is not RETRY:
                    return out
            time.sleep(self._delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    def _run(self, steps: Steps[T]) -> T:
        reply: Any = None
        failed: e.PromptOpsError | None = None
        while True:
            try:
                call = steps.send(reply) if failed is None else steps.throw(failed)
            except StopIteration as done:
                return done.value
            try:
                reply, failed = self._send(call), None
            except e.PromptOpsError as exc:
                reply, failed = None, exc

    def _send_queued(self, body: Body) -> None:
        self._send(self._queued_call(body))

    def flush_feedback(self, timeout: float | None = None) -> bool:
        """Send queued feedback now; True once the queue is empty, False if it is not within
        `timeout` seconds (default `flush_timeout`)."""
        if self._outbox is None:
            return True
        return self._outbox.flush(self.flush_timeout if timeout is None else timeout)

    def serve(
        self, name: str, variables: Mapping[str, Any] | None = None, unit_id: str | None = None
    ) -> ServeResult:
        """Serve a prompt (recording a decision), or render production locally when the server
        is unreachable (`fallback=True`)."""
        return self._run(self._serve(name, variables, unit_id))

    def feedback(self, decision_id: str, reward: float | bool, metric: str | None = None) -> FeedbackStatus:
        """Send a reward for a decision: "recorded", "duplicate" for a repeat, or "queued" when
        `queue_feedback` holds it until the server is back."""
        return self._run(self._feedback(decision_id, reward, metric))

    def render(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> RenderResult:
        """Render a version (production by default) without recording a decision."""
        return self._run(self._render(name, variables, version, label))

    def get_prompt(self, name: str) -> Prompt:
        """A prompt with its versions and labels; refreshes the cached production version."""
        return self._run(self._get_prompt(name))

    def get_experiment(self, experiment_id: int) -> Experiment:
        """An experiment with its per-arm figures."""
        return self._run(self._get_experiment(experiment_id))

    def list_experiments(self, *, prompt: str | None = None, status: str | None = None) -> list[Experiment]:
        """Experiments, newest first, optionally of one prompt or in one status."""
        return self._run(self._list_experiments(prompt, status))

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
        return self._run(
            self._complete(name, variables, unit_id=unit_id, messages=messages, cache=cache, timeout=timeout)
        )

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


class AsyncClient(ClientCore):
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
        self._outbox: AsyncOutbox | None = (
            AsyncOutbox(self._send_queued, maxsize=feedback_queue_size, backoff=max(backoff, 0.05))
            if queue_feedback
            else None
        )

    async def _send(self, call: Call) -> Any:
        tries = call.tries(self.retries)
        for attempt in range(tries + 1):
            last = attempt == tries
            try:
                resp = await self._http.request(call.method, call.path, **call.send_options())
            except httpx.TransportError as exc:
                transport_failed(call, exc, last=last, base_url=self.base_url)
            else:
                out = answer(call, resp, last=last)
                if out is not RETRY:
                    return out
            await asyncio.sleep(self._delay(attempt))
        raise AssertionError("unreachable")  # pragma: no cover

    async def _run(self, steps: Steps[T]) -> T:
        reply: Any = None
        failed: e.PromptOpsError | None = None
        while True:
            try:
                call = steps.send(reply) if failed is None else steps.throw(failed)
            except StopIteration as done:
                return done.value
            try:
                reply, failed = await self._send(call), None
            except e.PromptOpsError as exc:
                reply, failed = None, exc

    async def _send_queued(self, body: Body) -> None:
        await self._send(self._queued_call(body))

    async def flush_feedback(self, timeout: float | None = None) -> bool:
        """Send queued feedback now; True once the queue is empty, False if it is not within
        `timeout` seconds (default `flush_timeout`)."""
        if self._outbox is None:
            return True
        return await self._outbox.flush(self.flush_timeout if timeout is None else timeout)

    async def serve(
        self, name: str, variables: Mapping[str, Any] | None = None, unit_id: str | None = None
    ) -> ServeResult:
        """Serve a prompt (recording a decision), or render production locally when the server
        is unreachable (`fallback=True`)."""
        return await self._run(self._serve(name, variables, unit_id))

    async def feedback(
        self, decision_id: str, reward: float | bool, metric: str | None = None
    ) -> FeedbackStatus:
        """Send a reward for a decision: "recorded", "duplicate" for a repeat, or "queued" when
        `queue_feedback` holds it until the server is back."""
        return await self._run(self._feedback(decision_id, reward, metric))

    async def render(
        self,
        name: str,
        variables: Mapping[str, Any] | None = None,
        version: int | None = None,
        label: str | None = None,
    ) -> RenderResult:
        """Render a version (production by default) without recording a decision."""
        return await self._run(self._render(name, variables, version, label))

    async def get_prompt(self, name: str) -> Prompt:
        """A prompt with its versions and labels; refreshes the cached production version."""
        return await self._run(self._get_prompt(name))

    async def get_experiment(self, experiment_id: int) -> Experiment:
        """An experiment with its per-arm figures."""
        return await self._run(self._get_experiment(experiment_id))

    async def list_experiments(
        self, *, prompt: str | None = None, status: str | None = None
    ) -> list[Experiment]:
        """Experiments, newest first, optionally of one prompt or in one status."""
        return await self._run(self._list_experiments(prompt, status))

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
        return await self._run(
            self._complete(name, variables, unit_id=unit_id, messages=messages, cache=cache, timeout=timeout)
        )

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
