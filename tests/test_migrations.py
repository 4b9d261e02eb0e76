"""Migrations upgrade and downgrade cleanly on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from promptops.db import engine as db
from promptops.db.models import Base


def test_upgrade_downgrade_upgrade(database_url):
    eng = db.make_engine(database_url)
    try:
        assert db.needs_migration(eng)
        db.upgrade(eng)
        assert not db.needs_migration(eng)
        tables = set(inspect(eng).get_table_names())
        assert {"prompts", "versions", "labels", "audit_log", "experiments", "decisions",
                "feedback", "api_keys"} <= tables
        db.downgrade(eng, "base")
        assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
        db.upgrade(eng)
        assert not db.needs_migration(eng)
    finally:
        eng.dispose()


def test_models_match_the_migrations(database_url):
    eng = db.make_engine(database_url)
    try:
        db.upgrade(eng)
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
    finally:
        eng.dispose()
