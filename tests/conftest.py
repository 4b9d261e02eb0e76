"""Shared fixtures: a fresh database (SQLite, and PostgreSQL when configured), a fake clock,
the services over it, and a TestClient over `create_app`."""

from __future__ import annotations

import os
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


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh database: SQLite in a temporary folder, or a private PostgreSQL schema."""
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
    return Settings(database_url=database_url, prompts_dir=prompts_dir,
                    cache_refresh_seconds=0.05, update_interval_seconds=0.05,
                    writer_flush_seconds=0.005, allowed_hosts=("testserver",))


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
