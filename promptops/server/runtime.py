"""The server's runtime: services, the batched writer, cached keys, and the background loop."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from promptops.config import Settings
from promptops.domain import ExperimentStatus
from promptops.errors import PromptOpsError
from promptops.server.metrics import Metrics
from promptops.services.facade import PromptOps
from promptops.services.gateway import Gateway
from promptops.services.warming import warm_production
from promptops.services.writer import BatchWriter

log = logging.getLogger("promptops.server")


def server_ops(settings: Settings, *, clock: Callable[[], float] | None = None) -> PromptOps:
    """The services as a server runs them: decisions batched by a `BatchWriter`, the serving
    cache refreshed by the background loop rather than on each request."""
    return PromptOps(settings, clock=clock, batch_writes=True, auto_refresh=False)


class Runtime:
    """Everything a running server holds: services, writer, key table, metrics, health."""

    def __init__(
        self,
        settings: Settings,
        *,
        ops: PromptOps | None = None,
        clock: Callable[[], float] | None = None,
        background: bool = True,
    ) -> None:
        self.settings = settings
        self.ops = ops or server_ops(settings, clock=clock)
        if self.ops.writer is None or self.ops.serving.auto_refresh:
            raise ValueError(
                "a server's services batch their writes and refresh in the "
                "background: build them with server_ops()"
            )
        self.writer: BatchWriter = self.ops.writer
        self.metrics = Metrics()
        self.gateway = Gateway.create(self.ops.serving, settings, on_call=self._on_call)
        self.app: Any = None  # the app serving this runtime (set by create_app)
        self.loop: asyncio.AbstractEventLoop | None = None  # the server's (set at start-up)
        self.background = background
        self.key_table: dict[str, str] = {}
        self.key_prefixes: dict[str, str] = {}
        self.auth_required = False
        self.secret = settings.secret_key or self._stored_secret()
        self.db_ok = True
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._seq_seen = -1
        self._arm_names: dict[int, tuple[str, str]] = {}
        self.refresh(force=True)
        self.metrics.db_up.set(1)  # the refresh above just read the database

    def _stored_secret(self) -> str:
        return self.ops.shared_secret("session_secret")

    @property
    def auth_off(self) -> bool:
        """Auth is off on loopback until a key is created, and after `promptops keys auth-off`."""
        # Revoking the last key locks the server rather than opening it (see services/keys.py).
        return not self.key_table and not self.auth_required and self.settings.is_loopback

    def refresh(self, *, force: bool = False) -> None:
        """Reload the serving cache, keys and gauges if the database changed."""
        live = self.ops.serving.live
        before = live.prompts
        changed = live.refresh(force=force)
        if changed and before:
            self._warm_moved(before, live.prompts)
        if changed or force or self._seq_seen != live.seq:
            self._seq_seen = live.seq
            was_off = self.auth_off
            active = self.ops.keys.active()
            self.auth_required = self.ops.keys.auth_required()
            self.key_table = {key_hash: role for key_hash, role, _ in active}
            self.key_prefixes = {key_hash: prefix for key_hash, _, prefix in active}
            if was_off != self.auth_off and not force:
                log.warning(
                    "auth is now %s (%d active key(s))", "off" if self.auth_off else "on", len(active)
                )
            self.metrics.set_experiments(
                self.ops.experiments.list_experiments(status=ExperimentStatus.RUNNING)
            )

    def _on_call(self, row: dict[str, Any]) -> None:
        """Count a recorded gateway call, and its decision (a gateway decision is counted in
        `promptops_decisions` as a serve's is: each has exactly one call row)."""
        metrics = self.metrics
        metrics.observe_call(row)
        prompt, version = self.version_labels(row["version_id"])
        metrics.child(metrics.decisions, prompt, str(row["experiment_id"] or ""), version).inc()

    def version_labels(self, version_id: int) -> tuple[str, str]:
        """Prompt name and version number of a version id (a feedback token carries ids), for
        metric labels: from the serving cache, else looked up once (versions never change)."""
        found = self._arm_names.get(version_id)
        if found is None:
            found = self._cached_version(version_id)
            if found is None:
                named = self.ops.registry.version_name(version_id)
                found = (named[0], str(named[1])) if named else ("", str(version_id))
            self._arm_names[version_id] = found
        return found

    def _cached_version(self, version_id: int) -> tuple[str, str] | None:
        for p in self.ops.serving.live.prompts.values():
            versions = [p.production, *(p.experiment.arms if p.experiment else ())]
            for v in versions:
                if v is not None and v.id == version_id:
                    return p.name, str(v.number)
        return None

    def _warm_moved(self, before: dict[str, Any], after: dict[str, Any]) -> None:
        """Warm the cache of each prompt whose production moved (a promotion, a rollback), when
        `cache.warm_on_promote` asks for it; the calls run on the server's event loop."""
        if not self.gateway.warm_on_promote or self.loop is None:
            return
        for name, prompt in after.items():
            old = before.get(name)
            new = prompt.production
            if (
                old is not None
                and new is not None
                and (old.production is None or old.production.id != new.id)
            ):
                asyncio.run_coroutine_threadsafe(warm_production(self.gateway, name, new.number), self.loop)

    def check_db(self) -> bool:
        """Ping the database; remember the answer for /healthz and metrics."""
        problem = self.ops.ping()
        self.db_ok, self.last_error = problem is None, problem
        self.metrics.db_up.set(1 if self.db_ok else 0)
        return self.db_ok

    def start(self) -> None:
        """Start the writer and the background loop."""
        self.writer.start()
        if self.background and self._thread is None:
            self._thread = threading.Thread(target=self._loop, name="promptops-loop", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        """Stop the loop and flush the writer."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)
            self._thread = None
        self.writer.stop()

    def _loop(self) -> None:
        next_tick = 0.0
        while not self._stop.wait(self.settings.cache_refresh_seconds):
            due = time.monotonic() >= next_tick
            if due:
                next_tick = time.monotonic() + self.settings.update_interval_seconds
            self.step(tick=due)

    def step(self, *, tick: bool = True) -> None:
        """One round of the background loop: reload if changed, run due epochs, update gauges."""
        self.metrics.pending.set(self.writer.pending)
        try:
            self.refresh()
            self.gateway.cache.flush_touches()
            self.db_ok = True
            if tick and self.ops.epochs.tick():
                self.refresh()
        except PromptOpsError as exc:
            self._note_failure(exc)
        except Exception as exc:  # keep serving from the cache whatever happens
            self._note_failure(exc)
        self.metrics.db_up.set(1 if self.db_ok else 0)

    def _note_failure(self, exc: BaseException) -> None:
        if self.db_ok:
            log.warning("background update failed: %s", exc)
        self.db_ok = False
        self.last_error = str(exc).splitlines()[0][:200] if str(exc) else type(exc).__name__

    def problems(self) -> list[str]:
        """Why the server is not healthy, in plain words (empty when it is)."""
        found = []
        if not self.db_ok:
            found.append("database unreachable")
        if not self.writer.healthy:
            found.append("writes are failing")
        if self.writer.pending > self.settings.max_pending_decisions:
            found.append(f"over {self.settings.max_pending_decisions} decisions wait to be stored")
        return found

    def status(self) -> dict[str, Any]:
        """A small health summary (no driver messages: it is public)."""
        return {
            "database": "ok" if self.db_ok else "unreachable",
            "writes": "ok" if self.writer.healthy else "failing",
            "write_failures": self.writer.failures,
            "pending_decisions": self.writer.pending,
            "dropped_decisions": self.writer.dropped,
            "problems": self.problems(),
        }
