"""Engine and session setup for SQLite and PostgreSQL, and Alembic migrations run from code."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import Connection, Engine, create_engine, event, inspect, text
from sqlalchemy.exc import DBAPIError, DisconnectionError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from promptops.errors import ConfigError, InvalidInput, Unavailable

_migrate_lock = threading.Lock()

# How long a statement may wait for a lock (a table locked by a migration, a long purge) and how
# long it may run at all, so a request answers 503 instead of hanging. Migrations lift both.
LOCK_WAIT_SECONDS = 10
STATEMENT_SECONDS = 30


def make_engine(url: str, *, pool_size: int = 10) -> Engine:
    """An engine with SQLite tuned for concurrent use (WAL, foreign keys, busy timeout)."""
    if url.startswith("postgresql://"):
        url = "postgresql+psycopg://" + url[len("postgresql://") :]
    try:
        if url.startswith("sqlite"):
            engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": LOCK_WAIT_SECONDS}
            )
            _tune_sqlite(engine)
        else:
            engine = create_engine(
                url, pool_size=pool_size, max_overflow=20, pool_pre_ping=True, pool_recycle=300
            )
            _bound_postgres(engine)
    except Exception as exc:  # a malformed URL surfaces from SQLAlchemy as several types
        # Not the URL itself: it may hold a password.
        raise ConfigError(f"bad {url.partition(':')[0]} database URL: {type(exc).__name__}") from None
    return engine


def _tune_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Let SQLAlchemy's BEGIN (below) control transactions instead of pysqlite's own.
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA foreign_keys=ON")
        cur.execute(f"PRAGMA busy_timeout={LOCK_WAIT_SECONDS * 1000}")
        if engine.url.database not in (None, "", ":memory:"):
            cur.execute("PRAGMA journal_mode=WAL")
            cur.execute("PRAGMA synchronous=NORMAL")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn):  # type: ignore[no-untyped-def]
        # IMMEDIATE takes the write lock up front, so two writers never deadlock on upgrade.
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def _bound_postgres(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn, _record):  # type: ignore[no-untyped-def]
        # Session settings rather than the `options` connect argument, which the URL may carry
        # already (a search_path) and which one argument would replace.
        with dbapi_conn.cursor() as cur:
            cur.execute(f"SET statement_timeout = {STATEMENT_SECONDS * 1000}")
            cur.execute(f"SET lock_timeout = {LOCK_WAIT_SECONDS * 1000}")
        dbapi_conn.commit()


def _unbounded(conn) -> None:  # type: ignore[no-untyped-def]
    """Lift the statement and lock limits for this transaction (migrations may take long)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SET LOCAL statement_timeout = 0"))
        conn.execute(text("SET LOCAL lock_timeout = 0"))


def make_sessionmaker(engine: Engine) -> sessionmaker[Session]:
    """A session factory that keeps objects usable after commit."""
    return sessionmaker(engine, expire_on_commit=False)


@contextmanager
def transaction(factory: sessionmaker[Session]) -> Iterator[Session]:
    """A session in one transaction: committed on success, rolled back on any error."""
    session = factory()
    try:
        with session.begin():
            yield session
    except OperationalError as exc:
        # The driver's first line helps a CLI user; the HTTP edge logs it and answers without it.
        raise Unavailable(f"database unavailable: {_short(exc)}") from exc
    finally:
        session.close()


@contextmanager
def connection_transaction(engine: Engine) -> Iterator[Connection]:
    """A bare connection in one transaction (no ORM session, which costs more than a batch of
    core statements): committed on success, rolled back on any error."""
    try:
        with engine.begin() as conn:
            yield conn
    except OperationalError as exc:
        raise Unavailable(f"database unavailable: {_short(exc)}") from exc


def unreachable(exc: BaseException) -> bool:
    """Whether a failed write says the database cannot be used right now (down, locked, pool
    exhausted, connection lost), so the same rows may succeed later, rather than that the rows
    themselves are refused (a constraint, a value the column cannot hold)."""
    if isinstance(exc, Unavailable | OperationalError | InterfaceError | DisconnectionError | PoolTimeout):
        return True
    return isinstance(exc, DBAPIError) and exc.connection_invalidated


def _short(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0][:200]


def migrations_dir() -> Path:
    """Where the Alembic scripts live: beside the package in a checkout, inside it in a wheel."""
    here = Path(__file__).resolve().parent.parent
    for candidate in (here / "_migrations", here.parent / "migrations"):
        if (candidate / "env.py").exists():
            return candidate
    raise ConfigError("migration scripts not found (broken installation)")


def alembic_config(url: str):  # type: ignore[no-untyped-def]
    """An Alembic Config pointing at the shipped scripts and the given database."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(migrations_dir()))
    cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    return cfg


def upgrade(engine: Engine, revision: str = "head") -> None:
    """Run Alembic migrations up to `revision` on this engine."""
    from alembic import command
    from alembic.util import CommandError

    with _migrate_lock, engine.begin() as conn:
        if engine.dialect.name == "postgresql":
            # Two servers starting at once must not both create tables.
            _unbounded(conn)
            conn.execute(text("SELECT pg_advisory_xact_lock(7201)"))
        cfg = alembic_config(engine.url.render_as_string(hide_password=False))
        cfg.attributes["connection"] = conn
        try:
            command.upgrade(cfg, revision)
        except CommandError as exc:  # an unknown or unreachable revision
            raise InvalidInput(f"cannot upgrade to {revision!r}: {exc}") from None


def downgrade(engine: Engine, revision: str) -> None:
    """Run Alembic migrations down to `revision` on this engine (all or nothing). On SQLite the
    foreign keys are off meanwhile: dropping a table that other rows reference would fail."""
    from alembic import command
    from alembic.util import CommandError

    with _migrate_lock, engine.connect() as conn:
        sqlite = engine.dialect.name == "sqlite"
        if sqlite:  # a no-op inside a transaction: set before BEGIN, on the driver's connection
            conn.connection.driver_connection.execute("PRAGMA foreign_keys=OFF")  # type: ignore[union-attr]
        try:
            with conn.begin():
                _unbounded(conn)
                cfg = alembic_config(engine.url.render_as_string(hide_password=False))
                cfg.attributes["connection"] = conn
                try:
                    command.downgrade(cfg, revision)
                except CommandError as exc:  # an unknown or unreachable revision
                    raise InvalidInput(f"cannot downgrade to {revision!r}: {exc}") from None
        finally:
            if sqlite:
                conn.connection.driver_connection.execute("PRAGMA foreign_keys=ON")  # type: ignore[union-attr]


def needs_migration(engine: Engine) -> bool:
    """Whether the database is empty or behind the newest migration."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    try:
        with engine.connect() as conn:
            if not inspect(conn).has_table("alembic_version"):
                return True
            current = MigrationContext.configure(conn).get_current_heads()
    except OperationalError as exc:
        raise Unavailable(f"database unavailable: {_short(exc)}") from exc
    script = ScriptDirectory.from_config(alembic_config(str(engine.url)))
    return set(current) != set(script.get_heads())
