"""Migrations upgrade and downgrade cleanly on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

from promptops.db import engine as db
from promptops.db.models import Base


def test_upgrade_downgrade_upgrade(empty_database_url):
    eng = db.make_engine(empty_database_url)
    try:
        assert db.needs_migration(eng)
        db.upgrade(eng)
        assert not db.needs_migration(eng)
        tables = set(inspect(eng).get_table_names())
        assert {
            "prompts",
            "versions",
            "labels",
            "audit_log",
            "experiments",
            "decisions",
            "feedback",
            "api_keys",
        } <= tables
        db.downgrade(eng, "base")
        assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
        db.upgrade(eng)
        assert not db.needs_migration(eng)
    finally:
        eng.dispose()


def test_models_match_the_migrations(empty_database_url):
    eng = db.make_engine(empty_database_url)
    try:
        db.upgrade(eng)
        with eng.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
        assert diff == [], diff
    finally:
        eng.dispose()


def test_0002_turns_the_dirty_suffix_into_a_state_and_back(empty_database_url):
    from sqlalchemy import text

    eng = db.make_engine(empty_database_url)
    try:
        db.upgrade(eng, "0001")
        with eng.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO prompts (id, name, description, tags, created_at, "
                    "updated_at) VALUES (1, 'p', '', '[]', 0, 0)"
                )
            )
            for number, commit in [(1, "a" * 40 + "+dirty"), (2, "b" * 40), (3, None)]:
                conn.execute(
                    text(
                        "INSERT INTO versions (prompt_id, number, variant, content, content_hash, "
                        "git_commit, created_at) VALUES (1, :n, 'main', '{}', :h, :c, 0)"
                    ),
                    {"n": number, "h": str(number), "c": commit},
                )
        db.upgrade(eng)
        with eng.connect() as conn:
            rows = conn.execute(text("SELECT git_commit, git_state FROM versions ORDER BY number")).all()
        assert [tuple(r) for r in rows] == [("a" * 40, "dirty"), ("b" * 40, "clean"), (None, None)]
        db.downgrade(eng, "0001")
        with eng.connect() as conn:
            commits = conn.execute(text("SELECT git_commit FROM versions ORDER BY number")).all()
        assert [r[0] for r in commits] == ["a" * 40 + "+dirty", "b" * 40, None]
    finally:
        eng.dispose()
