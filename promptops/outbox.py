"""Feedback waiting to be sent while the server is unreachable: the SDK's `queue_feedback` outbox.

A bounded queue of feedback bodies, sent in order by a background worker (a thread for `Client`,
an asyncio task for `AsyncClient`) that retries with exponential backoff while the server stays
unreachable. Nothing is dropped silently: feedback that finds the queue full, that the server
refuses (a 4xx: it can never be recorded), or that is still queued when the client closes after
its flush timeout is counted in `dropped` and logged on the `promptops.client` logger. A
synchronous client that is never closed is closed at interpreter exit.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import logging
import threading
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from .errors import PromptOpsError, Unavailable

log = logging.getLogger("promptops.client")

Body = dict[str, Any]
"""A feedback request body: decision_id, reward and an optional metric."""


class _Queue:
    """The queue and its counters, shared by the thread and asyncio outboxes."""

    def __init__(self, maxsize: int, *, backoff: float, max_backoff: float) -> None:
        self.maxsize = max(1, int(maxsize))
        self.backoff = max(backoff, 0.001)
        self.max_backoff = max_backoff
        self.items: deque[Body] = deque()
        self.dropped = 0
        self.sent = 0

    def _drop(self, body: Body, why: str) -> None:
        self.dropped += 1
        metric = body.get("metric") or "the primary metric"
        log.warning(
            "promptops: feedback for decision %s (%s) dropped: %s", body.get("decision_id"), metric, why
        )

    def _delay(self, failures: int) -> float:
        return float(min(self.max_backoff, self.backoff * 2 ** min(failures, 30)))


class Outbox(_Queue):
    """The outbox of the synchronous client: a daemon thread sends what is queued."""

    def __init__(
        self,
        send: Callable[[Body], None],
        *,
        maxsize: int,
        backoff: float,
        exit_timeout: float,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(maxsize, backoff=backoff, max_backoff=max_backoff)
        self._send = send
        self._exit_timeout = exit_timeout
        self._cond = threading.Condition()
        self._wake = threading.Event()
        self._closing = False
        self._thread: threading.Thread | None = None

    @property
    def pending(self) -> int:
        """Feedback queued and not yet sent."""
        with self._cond:
            return len(self.items)

    def put(self, body: Body) -> bool:
        """Queue feedback; False (counted and logged as dropped) when the queue is full."""
        with self._cond:
            if self._closing:
                self._drop(body, "the client is closed")
                return False
            if len(self.items) >= self.maxsize:
                self._drop(body, f"the feedback queue is full ({self.maxsize})")
                return False
            self.items.append(body)
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="promptops-feedback", daemon=True)
                self._thread.start()
                # A client never closed still flushes, and reports what it could not send, at exit.
                atexit.register(self.close, self._exit_timeout)
            self._cond.notify_all()
        return True

    def _run(self) -> None:
        failures = 0
        while True:
            with self._cond:
                while not self.items and not self._closing:
                    self._cond.wait()
                if not self.items:
                    return
                body = self.items[0]
            try:
                self._send(body)
            except Unavailable:
                if self._closing:
                    return
                self._wake.wait(self._delay(failures))
                self._wake.clear()
                failures += 1
                continue
            except PromptOpsError as exc:
                self._drop(body, f"refused by the server: {exc}")
            else:
                self.sent += 1
            failures = 0
            with self._cond:
                self.items.popleft()
                self._cond.notify_all()

    def flush(self, timeout: float) -> bool:
        """Retry now and wait until the queue is empty; False if it is not within `timeout`."""
        self._wake.set()
        with self._cond:
            return self._cond.wait_for(lambda: not self.items, timeout)

    def close(self, timeout: float) -> None:
        """Flush for at most `timeout` seconds, then stop; what is left is dropped and logged."""
        atexit.unregister(self.close)
        self.flush(timeout)
        with self._cond:
            self._closing = True
            self._cond.notify_all()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
        with self._cond:
            while self.items:
                self._drop(self.items.popleft(), "the server was unreachable until close")


class AsyncOutbox(_Queue):
    """The outbox of the asyncio client: a task on the client's event loop sends what is queued."""

    def __init__(
        self,
        send: Callable[[Body], Awaitable[None]],
        *,
        maxsize: int,
        backoff: float,
        max_backoff: float = 30.0,
    ) -> None:
        super().__init__(maxsize, backoff=backoff, max_backoff=max_backoff)
        self._send = send
        self._task: asyncio.Task[None] | None = None
        self._more = asyncio.Event()
        self._wake = asyncio.Event()
        self._empty = asyncio.Event()
        self._empty.set()
        self._closing = False

    @property
    def pending(self) -> int:
        """Feedback queued and not yet sent."""
        return len(self.items)

    def put(self, body: Body) -> bool:
        """Queue feedback; False (counted and logged as dropped) when the queue is full."""
        if self._closing:
            self._drop(body, "the client is closed")
            return False
        if len(self.items) >= self.maxsize:
            self._drop(body, f"the feedback queue is full ({self.maxsize})")
            return False
        self.items.append(body)
        self._empty.clear()
        self._more.set()
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run())
        return True

    async def _run(self) -> None:
        failures = 0
        while True:
            while not self.items:
                if self._closing:
                    return
                self._more.clear()
                await self._more.wait()
            body = self.items[0]
            try:
                await self._send(body)
            except Unavailable:
                if self._closing:
                    return
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self._delay(failures))
                self._wake.clear()
                failures += 1
                continue
            except PromptOpsError as exc:
                self._drop(body, f"refused by the server: {exc}")
            else:
                self.sent += 1
            failures = 0
            self.items.popleft()
            if not self.items:
                self._empty.set()

    async def flush(self, timeout: float) -> bool:
        """Retry now and wait until the queue is empty; False if it is not within `timeout`."""
        self._wake.set()
        try:
            await asyncio.wait_for(self._empty.wait(), timeout)
        except TimeoutError:
            return False
        return True

    async def close(self, timeout: float) -> None:
        """Flush for at most `timeout` seconds, then stop; what is left is dropped and logged."""
        await self.flush(timeout)
        self._closing = True
        self._more.set()
        self._wake.set()
        if self._task is not None:
            await self._task
        while self.items:
            self._drop(self.items.popleft(), "the server was unreachable until close")
