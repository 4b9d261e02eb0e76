"""What `Client` and `AsyncClient` share: their settings and every operation, written once.

An operation is a generator (`Steps`): it yields the `Call`s it needs, receives each one's JSON
answer (or has its exception thrown in at the `yield`), and returns its result. The synchronous
client drives it with blocking requests, the asyncio one with awaited requests; neither repeats the
logic of an operation: which requests, in which order, how an answer is read, when the local
fallback or the feedback queue takes over, and how the production cache is kept warm.
"""

from __future__ import annotations

from collections.abc import Generator, Mapping
from pathlib import Path
from typing import Any, Literal, Protocol, TypeAlias, TypeVar

from promptops import errors as e
from promptops.client.fallback import Fallback, ProductionCache
from promptops.client.wire import Call, body, complete_error_of, feedback_body, path, query
from promptops.domain import PRODUCTION
from promptops.outbox import Body
from promptops.results import CompleteResult, Experiment, Prompt, RenderResult, ServeResult

T = TypeVar("T")
Steps: TypeAlias = Generator[Call, Any, T]
"""An operation: yields calls, receives their JSON answers, returns its result."""
FeedbackStatus = Literal["recorded", "duplicate", "queued"]
"""What `feedback` answers: `queued` when it waits in the outbox for the server to come back."""


class FeedbackQueue(Protocol):
    """The outbox of a client (`promptops.outbox`), as the feedback operation uses it."""

    dropped: int

    @property
    def pending(self) -> int:
        """Feedback waiting to be sent."""

    def put(self, body: Body) -> bool:
        """Queue a feedback body; False when the queue is full (it is dropped and logged)."""


class ClientCore:
    """Settings, the production cache and the operations shared by the sync and async clients."""

    _outbox: FeedbackQueue | None

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
        self.cache = ProductionCache(cache_ttl)
        self.fallback = Fallback(self.cache, fallback_dir)
        self.flush_timeout = flush_timeout

    @property
    def feedback_dropped(self) -> int:
        """Feedback given up on: the queue was full, the server refused it, or it was still
        queued at close (each is logged)."""
        return self._outbox.dropped if self._outbox is not None else 0

    @property
    def feedback_pending(self) -> int:
        """Feedback waiting in the queue for the server."""
        return self._outbox.pending if self._outbox is not None else 0

    def _delay(self, attempt: int) -> float:
        return float(self.backoff * 2**attempt)

    @staticmethod
    def _queued_call(body: Body) -> Call:
        """The call that sends a queued feedback: once per try of the outbox, which backs off."""
        return Call(
            "POST", "/v1/feedback", json=body, retries=0, context={"decision_id": body["decision_id"]}
        )

    # --- the operations -------------------------------------------------------------------------

    def _serve(
        self, name: str, variables: Mapping[str, Any] | None, unit_id: str | None
    ) -> Steps[ServeResult]:
        try:
            out = yield Call(
                "POST",
                path("prompts", name, "serve"),
                json=body(variables, unit_id=unit_id),
                idempotent=False,
                context={"name": name},
            )
        except e.Unavailable:
            local = self.fallback.serve(name, variables or {})
            if local is None:
                raise
            return local
        yield from self._keep_warm(name, out["version"] if out.get("experiment_id") is None else None)
        return ServeResult.from_json(out)

    def _feedback(self, decision_id: str, reward: float | bool, metric: str | None) -> Steps[FeedbackStatus]:
        sent = feedback_body(decision_id, reward, metric)
        if self._outbox is not None and self._outbox.pending:
            self._outbox.put(sent)  # keep the order, and do not wait on a server known down
            return "queued"
        try:
            out = yield Call("POST", "/v1/feedback", json=sent, context={"decision_id": decision_id})
        except e.Unavailable:
            if self._outbox is None:
                raise
            self._outbox.put(sent)
            return "queued"
        return "duplicate" if out["status"] == "duplicate" else "recorded"

    def _render(
        self, name: str, variables: Mapping[str, Any] | None, version: int | None, label: str | None
    ) -> Steps[RenderResult]:
        out = yield Call(
            "POST",
            path("prompts", name, "render"),
            json=body(variables, version=version, label=label),
            context={"name": name, "version": version or 0, "label": label or PRODUCTION},
        )
        if version is None and label in (None, PRODUCTION):
            yield from self._keep_warm(name, out["version"])
        return RenderResult.from_json(out)

    def _get_prompt(self, name: str) -> Steps[Prompt]:
        info = yield Call("GET", path("prompts", name), context={"name": name})
        yield from self._note_labels(name, info)
        return Prompt.from_json(info)

    def _get_experiment(self, experiment_id: int) -> Steps[Experiment]:
        out = yield Call("GET", path("experiments", experiment_id), context={"experiment_id": experiment_id})
        return Experiment.from_json(out)

    def _list_experiments(self, prompt: str | None, status: str | None) -> Steps[list[Experiment]]:
        out = yield Call(
            "GET", "/v1/experiments" + query(prompt=prompt, status=status), context={"name": prompt or "?"}
        )
        return [Experiment.from_json(x) for x in out["experiments"]]

    def _complete(
        self,
        name: str,
        variables: Mapping[str, Any] | None,
        *,
        unit_id: str | None,
        messages: list[dict[str, Any]] | None,
        cache: str | None,
        timeout: float,
    ) -> Steps[CompleteResult]:
        # Never resent: a call costs money.
        out = yield Call(
            "POST",
            path("prompts", name, "complete"),
            json=body(variables, unit_id=unit_id, messages=messages or None, cache=cache),
            idempotent=False,
            retries=0,
            timeout=timeout,
            context={"name": name},
            errors=complete_error_of,
        )
        return CompleteResult.from_json(out)

    # --- keeping the production cache warm --------------------------------------------------------

    def _keep_warm(self, name: str, number: int | None) -> Steps[None]:
        # Keeping the cache warm must never fail the call that triggered it.
        try:
            if number is not None:
                yield from self._remember(name, number)
            elif self.cache.stale(name):
                info = yield Call("GET", path("prompts", name), retries=0, context={"name": name})
                yield from self._note_labels(name, info)
        except e.PromptOpsError:
            pass

    def _note_labels(self, name: str, info: Mapping[str, Any]) -> Steps[None]:
        number = (info.get("labels") or {}).get(PRODUCTION)
        if number is None:
            self.cache.drop(name)
        else:
            yield from self._remember(name, int(number))

    def _remember(self, name: str, number: int) -> Steps[None]:
        if not self.cache.confirm(name, number):
            version = yield Call(
                "GET",
                path("prompts", name, "versions", number),
                retries=0,
                context={"name": name, "version": number},
            )
            self.cache.store(name, version)
