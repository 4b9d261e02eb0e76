"""The batched writer: decisions leave the request path, feedback is group-committed.

A serve appends its decision to an in-memory buffer and returns at once; a background thread stores
the buffer every few milliseconds in one transaction, with the gateway calls of those decisions (a
call is never stored before its decision). A feedback waits for the commit of the batch it joined
(group commit), so an acknowledged feedback is always durable. If the database is down,
the feedback futures fail (the server answers 503) and buffered decisions are kept, up to a bound,
until it returns. If the database is up but refuses a batch, the batch is split in halves until the
refused rows stand alone: the others are stored, a refused feedback fails its own request
(InvalidInput) and a refused decision is logged, counted in `rejected` and dropped, so one bad row
never blocks the rows behind it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from typing import Any, TypeVar

from promptops.db.engine import unreachable
from promptops.errors import InvalidInput, Unavailable
from promptops.services.calls import CallRecorder
from promptops.services.recorder import FeedbackItem, Recorder

log = logging.getLogger("promptops.writer")

# A feedback waits on a concurrent Future (any thread) or on an asyncio future of a running loop.
Waiter = Future[str] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[str]"]
T = TypeVar("T")


class _Refused:
    """The outcome of a row the database refused on its own."""

    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def _short(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _settle(outcomes: list[tuple[asyncio.Future[str], str | BaseException]]) -> None:
    """Resolve the asyncio futures of one batch, inside their event loop."""
    for fut, outcome in outcomes:
        if fut.cancelled():
            continue
        if isinstance(outcome, BaseException):
            fut.set_exception(outcome)
        else:
            fut.set_result(outcome)


class BatchWriter:
    """A background thread that stores decisions and feedback in batches."""

    def __init__(
        self,
        recorder: Recorder,
        *,
        flush_seconds: float = 0.02,
        max_batch: int = 2000,
        max_pending: int = 500_000,
        calls: CallRecorder | None = None,
    ) -> None:
        self.recorder = recorder
        self.call_recorder = calls or CallRecorder(recorder.ctx)
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._decisions: deque[dict[str, Any]] = deque()
        self._calls: deque[dict[str, Any]] = deque()
        self._feedback: deque[tuple[FeedbackItem, Waiter]] = deque()
        self._wake = threading.Event()
        self._flushing = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0  # decisions pushed out of a full buffer
        self.rejected = 0  # rows the database refused on their own (decisions and feedback)
        self._in_flight = 0
        self.written = 0
        self.failures = 0  # write attempts that failed because the database was unreachable
        self.healthy = True  # whether the last write attempt reached the database
        self.last_failure_at: float | None = None
        self.last_error: str | None = None

    def start(self) -> None:
        """Start the background thread."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="promptops-writer", daemon=True)
            self._thread.start()

    def stop(self, *, timeout: float = 10.0) -> None:
        """Flush what is buffered and stop."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._decisions:
            log.error(
                "stopping with %d decisions not stored: %s",
                len(self._decisions),
                self.last_error or "the database did not answer in time",
            )

    @property
    def pending(self) -> int:
        """Decisions not yet stored (buffered, waiting for the database, or being written)."""
        return len(self._decisions) + self._in_flight

    @property
    def oldest_pending_at(self) -> float | None:
        """When the oldest decision still waiting to be stored was made (None if none waits):
        a backlog that keeps ageing means writes are not getting through."""
        try:
            return float(self._decisions[0]["decided_at"])
        except IndexError:
            return None

    @property
    def pending_calls(self) -> int:
        """Gateway calls not yet stored."""
        return len(self._calls)

    def add_call(self, row: dict[str, Any]) -> None:
        """Queue a gateway call record (stored after its decision); never blocks."""
        self._calls.append(row)
        if len(self._calls) > self.max_pending:
            self._calls.popleft()
            self.dropped += 1

    def add_decision(self, row: dict[str, Any]) -> None:
        """Queue a decision; never blocks."""
        self._decisions.append(row)
        if len(self._decisions) > self.max_pending:
            self._decisions.popleft()
            self.dropped += 1
        if len(self._decisions) >= self.max_batch:
            self._wake_writer()

    def _wake_writer(self) -> None:
        # Event.set takes a lock and notifies even when the event is set already. Skipping it
        # then is safe: the row was queued before the check, and the thread clears the event
        # before it reads the queues, so a set seen here means a flush that will include it.
        if not self._wake.is_set():
            self._wake.set()

    def submit_feedback(self, item: FeedbackItem) -> Future[str]:
        """Queue a feedback; the future resolves after its batch commits."""
        fut: Future[str] = Future()
        self._feedback.append((item, fut))
        self._wake_writer()
        return fut

    def submit_feedback_async(self, item: FeedbackItem) -> asyncio.Future[str]:
        """Queue a feedback from a running event loop; the asyncio future resolves after its batch
        commits, with one wake-up of the loop per batch rather than one per feedback."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._feedback.append((item, (loop, fut)))
        self._wake_writer()
        return fut

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Store everything buffered now (called by the thread, or by tests and `stop` while the
        thread may be flushing too: one flush at a time, or both would pop the same queues)."""
        with self._flushing:
            self._flush_once()

    def _flush_once(self) -> None:
        self._flush_feedback()
        # A gateway call is queued after its decision, so every call queued now has its decision
        # queued or stored already: a call is stored only once its decision is.
        ready = len(self._calls)
        left = self._flush_decisions(ready)
        if left is not None:
            self._flush_calls(left)

    def _flush_feedback(self) -> None:
        while self._feedback:
            batch: list[Any] = []
            while self._feedback and len(batch) < self.max_batch:
                batch.append(self._feedback.popleft())
            results, stop, exc = self._write([item for item, _ in batch], self.recorder.record_feedback)
            outcomes: list[tuple[Waiter, str | BaseException]] = []
            for (item, waiter), result in zip(batch[:stop], results, strict=True):
                if isinstance(result, _Refused):
                    log.error(
                        "feedback for %s refused by the database: %s", item.decision_id, _short(result.exc)
                    )
                    result = InvalidInput("the database refused this feedback")
                outcomes.append((waiter, result))
            if exc is not None:
                error = (
                    exc
                    if isinstance(exc, Unavailable)
                    else Unavailable(f"could not store feedback: {_short(exc)}")
                )
                outcomes += [(waiter, error) for _, waiter in batch[stop:]]
            self._resolve(outcomes)
            if exc is not None:
                return

    @staticmethod
    def _resolve(outcomes: list[tuple[Waiter, str | BaseException]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[str], str | BaseException]]] = {}
        for waiter, outcome in outcomes:
            if isinstance(waiter, Future):
                if isinstance(outcome, BaseException):
                    waiter.set_exception(outcome)
                else:
                    waiter.set_result(outcome)
            else:
                by_loop.setdefault(waiter[0], []).append((waiter[1], outcome))
        for loop, pending in by_loop.items():
            with contextlib.suppress(RuntimeError):  # a closed loop: nobody waits any more
                loop.call_soon_threadsafe(_settle, pending)

    def _flush_decisions(self, ready: int) -> int | None:
        """Store the queued decisions; the last batch takes along (up to a batch of) the `ready`
        calls, whose decisions are all in it or stored before, in the same transaction. Returns
        how many ready calls are left to store, or None when the database stopped the flush."""
        # The decisions of the ready calls were queued before this count was taken.
        behind = len(self._decisions)
        while self._decisions:
            batch: list[dict[str, Any]] = []
            while self._decisions and len(batch) < self.max_batch:
                batch.append(self._decisions.popleft())
            behind -= len(batch)
            calls: list[dict[str, Any]] = []
            if behind <= 0:
                while ready and self._calls and len(calls) < self.max_batch:
                    calls.append(self._calls.popleft())
                    ready -= 1
            self._in_flight = len(batch)
            try:
                if calls:
                    if self._record_together(batch, calls):
                        continue
                    ready += len(calls)
                results, stop, exc = self._write(batch, self._record_decisions)
            finally:
                self._in_flight = 0
            for row, result in zip(batch[:stop], results, strict=True):
                if isinstance(result, _Refused):
                    log.error(
                        "decision %s refused by the database, dropped: %s", row["id"], _short(result.exc)
                    )
            if exc is not None:
                # Put the rest back in order; they are retried when the database returns, within
                # the bound on what is buffered.
                self._decisions.extendleft(reversed(batch[stop:]))
                while len(self._decisions) > self.max_pending:
                    self._decisions.popleft()
                    self.dropped += 1
                return None
        return ready

    def _record_decisions(self, rows: list[dict[str, Any]]) -> list[None]:
        self.recorder.record_decisions(rows)
        self.written += len(rows)
        return [None] * len(rows)

    def _record_together(self, rows: list[dict[str, Any]], calls: list[dict[str, Any]]) -> bool:
        """Store decisions and their calls in one transaction (one commit instead of two). When
        that fails the calls go back to the front of their queue, to follow their decisions
        through the usual path that isolates refused rows or waits for the database."""
        try:
            with self.recorder.ctx.tx() as s:
                self.recorder.store_decisions(s.connection(), rows)
                self.call_recorder.store_calls(s, calls)
        except Exception:  # retried row by row below, where each failure is handled
            self._calls.extendleft(reversed(calls))
            return False
        self.written += len(rows)
        self.healthy = True
        return True

    def _write(
        self,
        rows: Sequence[T],
        write: Callable[[list[T]], Sequence[Any]],
    ) -> tuple[list[Any], int, BaseException | None]:
        """Write rows, isolating any the database refuses; returns the outcome of each row
        attempted (`write`'s result, or _Refused), how many were attempted, and the error that
        stopped the rest when the database became unreachable (else None)."""
        results: list[Any] = [None] * len(rows)
        spans = [(0, len(rows))]  # a stack of contiguous spans covering what is left, in order
        while spans:
            lo, hi = spans.pop()
            try:
                results[lo:hi] = write(list(rows[lo:hi]))
            except Exception as exc:  # never let one bad batch kill the writer thread
                if unreachable(exc):
                    self._failed(exc)
                    return results[:lo], lo, exc
                if hi - lo == 1:
                    results[lo] = _Refused(exc)
                    self.rejected += 1
                else:
                    mid = (lo + hi) // 2
                    spans += [(mid, hi), (lo, mid)]
                continue
            self.healthy = True
        return results, len(rows), None

    def _flush_calls(self, ready: int) -> None:
        """Store the first `ready` queued calls (their decisions are stored)."""
        while ready and self._calls:
            batch: list[dict[str, Any]] = []
            while ready and self._calls and len(batch) < self.max_batch:
                batch.append(self._calls.popleft())
                ready -= 1
            results, stop, exc = self._write(batch, self._record_calls)
            for row, result in zip(batch[:stop], results, strict=True):
                if isinstance(result, _Refused):
                    log.error(
                        "call of decision %s refused by the database, dropped: %s",
                        row["decision_id"],
                        _short(result.exc),
                    )
            if exc is not None:  # kept, in order, for when the database returns
                self._calls.extendleft(reversed(batch[stop:]))
                return

    def _record_calls(self, rows: list[dict[str, Any]]) -> list[None]:
        self.call_recorder.record_calls(rows)
        return [None] * len(rows)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        self.last_failure_at = self.recorder.ctx.now()
        self.last_error = _short(exc)
        if self.healthy:
            log.warning("database write failed, will retry: %s", exc)
        self.healthy = False
