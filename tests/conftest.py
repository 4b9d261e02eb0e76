"""Shared fixtures: a fresh database (SQLite, and PostgreSQL when configured), a fake clock,
the services over it, and a TestClient over `create_app`."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote

import pytest
from hypothesis import settings as hypothesis_settings
from sqlalchemy import create_engine, text

from promptops.config import Settings

PG_URL = os.environ.get("PROMPTOPS_TEST_DATABASE_URL")

# In CI, property and fuzz tests draw the same examples every run: a landing must not depend on luck.
# Locally they explore new examples each time.
hypothesis_settings.register_profile("ci", derandomize=True, database=None)
if os.environ.get("CI"):
    hypothesis_settings.load_profile("ci")
EXAMPLES = Path(__file__).resolve().parent.parent / "prompts"


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, start: float = 1_800_000_000.0) -> None:
        self.t = start

    def __call__(self) -> float:
        return self.t

    def advance(self, seconds: float = 0.0, *, hours: float = 0.0, minutes: float = 0.0) -> None:
        self.t += seconds + minutes * 60 + hours * 3600


def _pg_schema_url(base: str, schema: str) -> str:
    sep = "&" if "?" in base else "?"
    return f"{base}{sep}options={quote(f'-csearch_path={schema}')}"


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A PostgreSQL URL on a fresh, private schema (skipped without PROMPTOPS_TEST_DATABASE_URL)."""
    if not PG_URL:
        pytest.skip("PROMPTOPS_TEST_DATABASE_URL is not set")
    schema = f"t_{uuid.uuid4().hex[:12]}"
    admin = create_engine(PG_URL)
    with admin.begin() as conn:
        conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    try:
        yield _pg_schema_url(PG_URL, schema)
    finally:
        with admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


class _MigratedSchemas:
    """PostgreSQL schemas migrated once and emptied between tests: creating the tables costs
    about half a second per test on PostgreSQL, emptying them a few milliseconds."""

    def __init__(self, base: str) -> None:
        self.base = base
        self.admin = create_engine(base)
        self.free: list[str] = []
        self.made: list[str] = []
        self.head: list[tuple[str, ...]] | None = None

    def acquire(self) -> str:
        if self.free:
            return self.free.pop()
        from promptops.db import engine as db

        schema = f"t_{uuid.uuid4().hex[:12]}"
        with self.admin.begin() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
        self.made.append(schema)
        eng = db.make_engine(_pg_schema_url(self.base, schema))
        try:
            db.upgrade(eng)
        finally:
            eng.dispose()
        if self.head is None:
            self.head = self._versions(schema)
        return schema

    def _versions(self, schema: str) -> list[tuple[str, ...]]:
        with self.admin.connect() as conn:
            return [
                tuple(r)
                for r in conn.execute(text(f'SELECT version_num FROM "{schema}".alembic_version ORDER BY 1'))
            ]

    def release(self, schema: str) -> None:
        """Empty the schema for the next test; drop it if it cannot be emptied or a test
        changed its migrations."""
        try:
            with self.admin.begin() as conn:
                conn.execute(text("SET LOCAL lock_timeout = '5s'"))
                tables = [
                    r[0]
                    for r in conn.execute(
                        text(
                            "SELECT tablename FROM pg_tables WHERE schemaname = :s "
                            "AND tablename <> 'alembic_version'"
                        ),
                        {"s": schema},
                    )
                ]
                if tables:
                    names = ", ".join(f'"{schema}"."{t}"' for t in tables)
                    conn.execute(text(f"TRUNCATE {names} RESTART IDENTITY CASCADE"))
            if self._versions(schema) == self.head:
                self.free.append(schema)
                return
        except Exception:  # noqa: BLE001 - a schema that cannot be emptied is dropped below
            pass
        self.drop(schema)

    def drop(self, schema: str) -> None:
        with self.admin.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        self.made.remove(schema)

    def close(self) -> None:
        for schema in list(self.made):
            self.drop(schema)
        self.admin.dispose()


@pytest.fixture(scope="session")
def _migrated_schemas() -> Iterator[_MigratedSchemas]:
    if not PG_URL:
        pytest.skip("PROMPTOPS_TEST_DATABASE_URL is not set")
    pool = _MigratedSchemas(PG_URL)
    yield pool
    pool.close()


@pytest.fixture(scope="session")
def _sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A migrated SQLite file, made once per session and copied for each test."""
    from promptops.db import engine as db

    path = tmp_path_factory.mktemp("template") / "promptops.db"
    eng = db.make_engine(f"sqlite:///{path}")
    try:
        db.upgrade(eng)
    finally:
        eng.dispose()  # the last connection checkpoints the WAL into the file
    return path


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A fresh, migrated database: SQLite in a temporary folder, or a private PostgreSQL schema
    (see `empty_database_url` for one without tables)."""
    if request.param == "sqlite":
        path = tmp_path / "promptops.db"
        shutil.copyfile(request.getfixturevalue("_sqlite_template"), path)
        yield f"sqlite:///{path}"
        return
    pool: _MigratedSchemas = request.getfixturevalue("_migrated_schemas")
    schema = pool.acquire()
    try:
        yield _pg_schema_url(PG_URL or "", schema)
    finally:
        pool.release(schema)


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database without any table: SQLite in a temporary folder, or a private
    PostgreSQL schema."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'promptops.db'}"
    return request.getfixturevalue("pg_url")  # type: ignore[no-any-return]


@pytest.fixture
def clock() -> FakeClock:
    """A fake clock starting at a fixed time."""
    return FakeClock()


@pytest.fixture
def prompts_dir(tmp_path: Path) -> Path:
    """An empty prompts folder."""
    d = tmp_path / "prompts"
    d.mkdir()
    return d


@pytest.fixture
def settings(database_url: str, prompts_dir: Path) -> Settings:
    """Settings over the fresh database and prompts folder."""
    return Settings(
        database_url=database_url,
        prompts_dir=prompts_dir,
        cache_refresh_seconds=0.05,
        update_interval_seconds=0.05,
        writer_flush_seconds=0.005,
        allowed_hosts=("testserver",),
    )


@pytest.fixture
def ops(settings: Settings, clock: FakeClock, request: pytest.FixtureRequest):  # type: ignore[no-untyped-def]
    """The services over a fresh database, on the fake clock; built as a server builds them
    (batched decisions, refreshed by the server) when the test uses the `app` fixture."""
    from promptops.server.runtime import server_ops
    from promptops.services.facade import PromptOps

    if "app" in request.fixturenames:
        service = server_ops(settings, clock=clock)
    else:
        service = PromptOps(settings, clock=clock)
    yield service
    service.close()


@pytest.fixture
def app(settings: Settings, clock: FakeClock, ops):  # type: ignore[no-untyped-def]
    """The app without its background loop (tests drive `tick` themselves)."""
    from promptops.server.app import create_app

    return create_app(settings, ops=ops, clock=clock, background=False)


@pytest.fixture
def client(app):  # type: ignore[no-untyped-def]
    """A TestClient over the app (lifespan started, so the writer runs)."""
    from fastapi.testclient import TestClient

    with TestClient(app) as c:
        yield c
