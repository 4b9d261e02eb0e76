"""Prometheus metrics: decisions and feedback per arm, latency, current weights and P(best)."""

from __future__ import annotations

import asyncio
import time
import types
from typing import Any

import orjson
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from promptops.server.errors import error_body, send_json
from promptops.services.views import ExperimentView


class Metrics:
    """The metrics of one app, in their own registry (so tests can build many apps)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.decisions = Counter(
            "promptops_decisions",
            "Decisions served.",
            ["prompt", "experiment", "version"],
            registry=self.registry,
        )
        self.feedback = Counter(
            "promptops_feedback",
            "Feedback received, by result.",
            ["prompt", "experiment", "version", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "promptops_request_seconds",
            "Request latency.",
            ["method", "route", "status"],
            buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5),
            registry=self.registry,
        )
        self.weight = Gauge(
            "promptops_arm_weight",
            "Current allocation weight.",
            ["prompt", "experiment", "version"],
            registry=self.registry,
        )
        self.p_best = Gauge(
            "promptops_arm_p_best",
            "Posterior probability of being best.",
            ["prompt", "experiment", "version"],
            registry=self.registry,
        )
        self.pending = Gauge(
            "promptops_decisions_pending", "Decisions buffered, not yet stored.", registry=self.registry
        )
        self.db_up = Gauge(
            "promptops_database_up", "1 if the database answered the last check.", registry=self.registry
        )
        self.calls = Counter(
            "promptops_gateway_calls",
            "Gateway calls, by outcome and cache result.",
            ["provider", "model", "status", "cache"],
            registry=self.registry,
        )
        self.tokens = Counter(
            "promptops_gateway_tokens",
            "Tokens of gateway calls.",
            ["provider", "model", "kind"],
            registry=self.registry,
        )
        self.cost = Counter(
            "promptops_gateway_cost_usd",
            "Cost of gateway calls in USD.",
            ["provider", "model"],
            registry=self.registry,
        )
        self.call_latency = Histogram(
            "promptops_gateway_call_seconds",
            "Gateway call latency, cache hits included.",
            ["provider", "model"],
            buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
            registry=self.registry,
        )
        self.upstream_errors = Counter(
            "promptops_gateway_upstream_errors",
            "Failed provider calls, by status.",
            ["provider", "model", "status"],
            registry=self.registry,
        )
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._call_children: dict[tuple[str, str, str, str], list[Any]] = {}

    def observe_call(self, row: dict[str, Any]) -> None:
        """Count a recorded gateway call (its row, as the call log stores it)."""
        provider, model, status = row["provider"], row["model"], row["status"]
        key = (provider, model, status, row["cache"])
        # The children of one kind of call, found once (a series appears in /metrics only once
        # its child exists, so the token and cost children are still made on first use).
        kids = self._call_children.get(key)
        if kids is None:
            kids = self._call_children[key] = [
                self.child(self.calls, *key),
                self.child(self.call_latency, provider, model),
                None,
            ]
        kids[0].inc()
        kids[1].observe(row["latency_ms"] / 1000.0)
        if row["prompt_tokens"] is not None:
            tokens = kids[2]
            if tokens is None:
                tokens = kids[2] = (
                    self.child(self.tokens, provider, model, "prompt"),
                    self.child(self.tokens, provider, model, "completion"),
                )
            tokens[0].inc(row["prompt_tokens"])
            tokens[1].inc(row["completion_tokens"] or 0)
        if row["cost_usd"]:
            self.child(self.cost, provider, model).inc(row["cost_usd"])
        if status in ("error", "timeout", "rate_limited"):
            self.child(self.upstream_errors, provider, model, status).inc()

    def child(self, metric: Any, *labels: str) -> Any:
        """The labelled child of a counter or histogram, cached: `labels()` takes a lock and
        validates the names on every call, a noticeable share of a serve (bench/http.py)."""
        key = (id(metric), labels)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*labels)
        return found

    def set_experiments(self, experiments: list[ExperimentView]) -> None:
        """Publish the weights and P(best) of running experiments."""
        self.weight.clear()
        self.p_best.clear()
        for e in experiments:
            for a in e.arms:
                labels = (e.prompt, str(e.id), str(a.version))
                self.weight.labels(*labels).set(a.weight)
                if a.p_best is not None:
                    self.p_best.labels(*labels).set(a.p_best)


# The longest a request body may take to arrive after its headers: a client trickling a body
# must not hold a connection (and a worker's memory) for ever. Headers are bounded by the
# protocol in run.py.
BODY_SECONDS = 30.0


class TimingMiddleware:
    """Pure ASGI middleware: request latency by route template, and the body limits (size and
    time) for every route FastAPI answers; the fast path applies the same ones with the same
    helpers."""

    def __init__(self, app: Any, *, metrics: Metrics, max_body: int) -> None:
        self.app = app
        self.metrics = metrics
        self.max_body = max_body

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        for name, value in scope.get("headers", ()):
            if name == b"content-length" and declared_too_large(value, self.max_body):
                await answer_too_large(send, self.max_body)
                return
        start = time.perf_counter()
        deadline = asyncio.get_running_loop().time() + BODY_SECONDS
        status = [500]
        started = answered = False

        async def send_wrapper(message: dict[str, Any]) -> None:
            nonlocal started
            if answered:  # the body limit answered; what the app says after is dropped
                return
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                started = True
            await send(message)

        seen = 0
        body_done = False

        async def receive_wrapper() -> dict[str, Any]:
            # Answering here, rather than raising into the app, keeps the status: FastAPI turns
            # any exception while it reads a body into a 400.
            nonlocal seen, answered, body_done
            if answered:
                return {"type": "http.disconnect"}
            if body_done:  # a stream waiting for the caller to leave: the body's limits are past
                return await receive()
            try:
                message = await receive_within(receive, deadline)
            except TimeoutError:
                refusal = 408
            else:
                if message["type"] != "http.request":
                    return message
                seen += len(message.get("body", b""))
                if seen <= self.max_body:
                    body_done = not message.get("more_body", False)
                    return message
                refusal = 413
            if not started:
                if refusal == 413:
                    await answer_too_large(send, self.max_body)
                else:
                    await answer_body_timeout(send)
                status[0] = refusal
            answered = True
            return {"type": "http.disconnect"}

        await self.app(scope, receive_wrapper, send_wrapper)
        route = scope.get("route")
        path = getattr(route, "path", "unmatched")
        self.metrics.child(self.metrics.latency, scope["method"], path, str(status[0])).observe(
            time.perf_counter() - start
        )


async def receive_within(receive: Any, deadline: float) -> dict[str, Any]:
    """The next ASGI message, or TimeoutError once the loop's clock passes `deadline`.

    A message that is already there (an ordinary body, read in full with its headers) is returned
    without arming a timer: the receive is run up to its first wait, and only if it waits does it
    go on under the deadline. (A timer per request was a measurable share of a serve.)"""
    steps = receive().__await__()
    try:
        waiting_on = steps.send(None)
    except StopIteration as done:
        return done.value  # type: ignore[no-any-return]
    async with asyncio.timeout_at(deadline):
        return await _resume(steps, waiting_on)  # type: ignore[no-any-return]


@types.coroutine
def _resume(steps: Any, waiting_on: Any) -> Any:
    """Go on with an awaitable stopped at its first wait, as `await` would have: what it waits on
    goes to the event loop, and what the loop sends or throws (a cancellation) goes back to it."""
    while True:
        try:
            sent = yield waiting_on
        except BaseException as exc:  # noqa: BLE001 - a cancellation too, passed on as it came
            try:
                waiting_on = steps.throw(exc)
            except StopIteration as done:
                return done.value
        else:
            try:
                waiting_on = steps.send(sent)
            except StopIteration as done:
                return done.value


async def answer_body_timeout(send: Any) -> None:
    """Answer 408 with the JSON error body."""
    body = orjson.dumps(error_body("request_timeout", f"the request body took over {int(BODY_SECONDS)} s"))
    await send_json(send, 408, body, (b"connection", b"close"))


def declared_too_large(content_length: bytes, limit: int) -> bool:
    """Whether a Content-Length header announces more than the limit (or is not a number)."""
    try:
        return int(content_length) > limit
    except ValueError:
        return True


async def answer_too_large(send: Any, limit: int) -> None:
    """Answer 413 with the JSON error body."""
    body = orjson.dumps(error_body("payload_too_large", f"request body over {limit} bytes"))
    await send_json(send, 413, body)
