"""`PromptOps`: the one way in for the CLI, the server, the simulator's callers and tests."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from promptops.config import Settings
from promptops.domain import Rendered
from promptops.services.adoption import Adoption
from promptops.services.context import Context
from promptops.services.epochs import EpochUpdater
from promptops.services.evals import Evals
from promptops.services.experiments import Experiments
from promptops.services.keys import Keys
from promptops.services.recorder import Recorder
from promptops.services.registry import Registry
from promptops.services.retention import Retention
from promptops.services.serving import Serving
from promptops.services.sync import Sync, SyncReport
from promptops.services.views import ServeView
from promptops.services.writer import BatchWriter


class PromptOps:
    """The services of one promptops project over one database."""

    def __init__(
        self,
        settings: Settings,
        *,
        clock: Callable[[], float] | None = None,
        migrate: bool = True,
        batch_writes: bool = False,
        auto_refresh: bool = True,
    ) -> None:
        """`batch_writes`: decisions go through a `BatchWriter` (`self.writer`, which the caller
        starts and stops) instead of one transaction per serve; `auto_refresh=False`: serving
        reads its cache without checking the database's change counter on each request (the
        server refreshes it in the background)."""
        self.settings = settings
        self.ctx = Context.create(settings, clock=clock, migrate=migrate)
        self.registry = Registry(self.ctx)
        self.experiments = Experiments(self.ctx, self.registry)
        self.evals = Evals(self.ctx, self.registry, self.experiments)
        self.epochs = EpochUpdater(self.ctx, self.experiments)
        self.files = Sync(self.ctx, self.registry, self.experiments)
        recorder = Recorder(self.ctx)
        self.writer = (
            BatchWriter(recorder, flush_seconds=settings.writer_flush_seconds) if batch_writes else None
        )
        self.serving = Serving(self.ctx, recorder=recorder, writer=self.writer, auto_refresh=auto_refresh)
        self.keys = Keys(self.ctx)
        self.retention = Retention(self.ctx)
        self.adoption = Adoption(self.ctx, self.registry)

    def sync(
        self, paths: Sequence[str | Path] | None = None, *, dry_run: bool = False, actor: str = "sync"
    ) -> SyncReport:
        """Register prompt files (the prompts folder by default); all or nothing."""
        targets = list(paths) if paths else [self.settings.prompts_dir]
        report = self.files.sync(targets, dry_run=dry_run, actor=actor)
        if report.changes and not dry_run:
            self.serving.live.refresh()
        return report

    def render(
        self,
        name: str,
        variables: dict[str, Any] | None = None,
        *,
        version: int | None = None,
        label: str | None = None,
    ) -> Rendered:
        """Render a version (production by default); no decision is recorded."""
        return self.registry.render(name, variables or {}, version=version, label=label)

    def serve(
        self, name: str, variables: dict[str, Any] | None = None, *, unit_id: str | None = None
    ) -> ServeView:
        """Serve a prompt: an experiment arm if one runs, else production; records a decision."""
        return self.serving.serve(name, variables or {}, unit_id=unit_id)

    def feedback(self, decision_id: str, reward: Any, *, metric: str | None = None) -> str:
        """Record a reward for a decision: "recorded" or "duplicate"."""
        return self.serving.feedback(decision_id, reward, metric)

    def tick(self) -> list[int]:
        """Run due epoch updates of all running experiments."""
        changed = self.epochs.tick()
        if changed:
            self.serving.live.refresh()
        return changed

    def ping(self) -> str | None:
        """None if the database answers, else a one-line reason."""
        from sqlalchemy import text

        try:
            with self.ctx.engine.connect() as conn:
                conn.execute(text("SELECT 1"))
        except Exception as exc:  # any driver error means unreachable
            return str(exc).strip().splitlines()[0][:200] if str(exc) else type(exc).__name__
        return None

    def shared_secret(self, name: str) -> str:
        """A random secret stored once in the database, the same for every server."""
        import secrets

        from promptops.db.queries import set_meta_if_absent

        with self.ctx.tx() as s:
            return set_meta_if_absent(s, name, secrets.token_hex(32))

    def close(self) -> None:
        """Release database connections."""
        self.ctx.engine.dispose()
