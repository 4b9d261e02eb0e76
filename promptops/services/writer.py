"""The batched writer: decisions leave the request path, feedback is group-committed.

A serve appends its decision to an in-memory buffer and returns at once; a background thread stores
the buffer every few milliseconds in one transaction. A feedback waits for the commit of the batch
it joined (group commit), so an acknowledged feedback is always durable. If the database is down,
the feedback futures fail (the server answers 503) and buffered decisions are kept, up to a bound,
until it returns.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import deque
from concurrent.futures import Future
from typing import Any

from promptops.errors import PromptOpsError, Unavailable
from promptops.services.serving import FeedbackItem, Recorder

log = logging.getLogger("promptops.writer")

# A feedback waits on a concurrent Future (any thread) or on an asyncio future of a running loop.
Waiter = Future[str] | tuple[asyncio.AbstractEventLoop, "asyncio.Future[str]"]


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

    def __init__(self, recorder: Recorder, *, flush_seconds: float = 0.02, max_batch: int = 2000,
                 max_pending: int = 500_000) -> None:
        self.recorder = recorder
        self.flush_seconds = flush_seconds
        self.max_batch = max_batch
        self.max_pending = max_pending
        self._decisions: deque[dict[str, Any]] = deque()
        self._feedback: deque[tuple[FeedbackItem, Waiter]] = deque()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.dropped = 0
        self._in_flight = 0
        self.written = 0
        self.failures = 0
        self.healthy = True

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

    @property
    def pending(self) -> int:
        """Decisions not yet stored (buffered or in a batch being written)."""
        return len(self._decisions) + self._in_flight

    def add_decision(self, row: dict[str, Any]) -> None:
        """Queue a decision; never blocks."""
        self._decisions.append(row)
        if len(self._decisions) > self.max_pending:
            self._decisions.popleft()
            self.dropped += 1
        if len(self._decisions) >= self.max_batch:
            self._wake.set()

    def submit_feedback(self, item: FeedbackItem) -> Future[str]:
        """Queue a feedback; the future resolves after its batch commits."""
        fut: Future[str] = Future()
        self._feedback.append((item, fut))
        self._wake.set()
        return fut

    def submit_feedback_async(self, item: FeedbackItem) -> asyncio.Future[str]:
        """Queue a feedback from a running event loop; the asyncio future resolves after its batch
        commits, with one wake-up of the loop per batch rather than one per feedback."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[str] = loop.create_future()
        self._feedback.append((item, (loop, fut)))
        self._wake.set()
        return fut

    def _run(self) -> None:
        while not self._stop.is_set():
            self._wake.wait(self.flush_seconds)
            self._wake.clear()
            self.flush()
        self.flush()

    def flush(self) -> None:
        """Store everything buffered now (called by the thread, or by tests)."""
        self._flush_feedback()
        self._flush_decisions()

    def _flush_feedback(self) -> None:
        while self._feedback:
            batch: list[Any] = []
            while self._feedback and len(batch) < self.max_batch:
                batch.append(self._feedback.popleft())
            try:
                results = self.recorder.record_feedback([item for item, _ in batch])
            except PromptOpsError as exc:
                self._failed(exc)
                error = exc if isinstance(exc, Unavailable) else Unavailable(str(exc))
                self._resolve([(waiter, error) for _, waiter in batch])
                return
            except Exception as exc:  # never let one bad batch kill the writer thread
                self._failed(exc)
                error = Unavailable(f"could not store feedback: {exc}")
                self._resolve([(waiter, error) for _, waiter in batch])
                return
            self.healthy = True
            self._resolve([(waiter, status)
                           for (_, waiter), status in zip(batch, results, strict=True)])

    @staticmethod
    def _resolve(outcomes: list[tuple[Waiter, str | BaseException]]) -> None:
        by_loop: dict[asyncio.AbstractEventLoop, list[tuple[asyncio.Future[str],
                                                            str | BaseException]]] = {}
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

    def _flush_decisions(self) -> None:
        while self._decisions:
            batch: list[dict[str, Any]] = []
            while self._decisions and len(batch) < self.max_batch:
                batch.append(self._decisions.popleft())
            self._in_flight = len(batch)
            try:
                self.recorder.record_decisions(batch)
            except Exception as exc:
                self._failed(exc)
                # Put them back in order; they are retried when the database returns.
                self._decisions.extendleft(reversed(batch))
                return
            finally:
                self._in_flight = 0
            self.healthy = True
            self.written += len(batch)

    def _failed(self, exc: BaseException) -> None:
        self.failures += 1
        if self.healthy:
            log.warning("database write failed, will retry: %s", exc)
        self.healthy = False
