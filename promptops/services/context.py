"""The shared context of the services: settings, database, clock and renderer."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from sqlalchemy import Connection, Engine
from sqlalchemy.orm import Session, sessionmaker

from promptops.config import Settings
from promptops.db import engine as db
from promptops.rendering import Renderer


@dataclass
class Context:
    """What every service needs: settings, an engine and sessions, a clock, the renderer, and a
    random generator (for arm draws without a unit id; tests seed it)."""

    settings: Settings
    engine: Engine
    sessions: sessionmaker[Session]
    clock: Callable[[], float] = time.time
    renderer: Renderer = field(default_factory=Renderer)
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def create(
        cls, settings: Settings, *, clock: Callable[[], float] | None = None, migrate: bool = True
    ) -> Context:
        """Build a context; migrate an empty or outdated database when asked."""
        engine = db.make_engine(settings.database_url)
        if migrate and db.needs_migration(engine):
            db.upgrade(engine)
        return cls(
            settings=settings, engine=engine, sessions=db.make_sessionmaker(engine), clock=clock or time.time
        )

    @contextmanager
    def tx(self) -> Iterator[Session]:
        """One transaction; committed on success."""
        with db.transaction(self.sessions) as session:
            yield session

    @contextmanager
    def conn(self) -> Iterator[Connection]:
        """One transaction on a bare connection, for core statements only (the batched writes)."""
        with db.connection_transaction(self.engine) as conn:
            yield conn

    def now(self) -> float:
        """The current time in seconds since the epoch."""
        return self.clock()
