"""Migrations upgrade and downgrade cleanly on SQLite and PostgreSQL, and match the models."""

from __future__ import annotations

import json

import pytest
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


def test_0006_queues_the_late_feedback_of_live_experiments(empty_database_url):
    from sqlalchemy import text

    eng = db.make_engine(empty_database_url)
    try:
        db.upgrade(eng, "0005")
        with eng.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO prompts (id, name, description, tags, created_at, updated_at) "
                    "VALUES (1, 'p', '', '[]', 0, 0)"
                )
            )
            for exp_id, status in [(1, "running"), (2, "completed")]:
                conn.execute(
                    text(
                        "INSERT INTO experiments (id, prompt_id, status, metric, reward, strategy, "
                        "auto_promote, policy, control_arm, source, created_at, epoch, weights, "
                        "policy_state, snapshot, matured_total, update_seq) VALUES (:id, 1, :status, "
                        "'resolved', 'binary', 'thompson', true, :policy, 0, 'api', 0, 0, '[]', '{}', "
                        "'{}', 0, 0)"
                    ),
                    {"id": exp_id, "status": status, "policy": '{"attribution_window_hours": 0.5}'},
                )
            # (decision, experiment, arm, decided_at, metric, received_at): the window is 1,800 s
            rows = [
                ("a", 1, 0, 100.0, "resolved", 1000.0),  # on time
                ("b", 1, 1, 100.0, "resolved", 1900.5),  # late
                ("c", 1, 1, 200.0, "csat", 9000.0),  # late, but not the primary metric
                ("d", 2, 1, 100.0, "resolved", 9000.0),  # late, but the experiment has ended
            ]
            for decision, exp_id, arm, decided, metric, received in rows:
                conn.execute(
                    text(
                        "INSERT INTO decisions (id, prompt_id, version_id, experiment_id, arm, epoch, "
                        "decided_at, counted_in) VALUES (:id, 1, 1, :exp, :arm, 0, :at, 0)"
                    ),
                    {"id": decision, "exp": exp_id, "arm": arm, "at": decided},
                )
                conn.execute(
                    text(
                        "INSERT INTO feedback (decision_id, metric, reward, received_at) "
                        "VALUES (:id, :metric, 1, :at)"
                    ),
                    {"id": decision, "metric": metric, "at": received},
                )
        db.upgrade(eng)
        with eng.connect() as conn:
            late = conn.execute(text("SELECT experiment_id, arm, decided_at FROM late_feedback")).all()
            cutoffs = conn.execute(
                text("SELECT validity_cutoff, validity_seq, validity_low FROM experiments")
            ).all()
        assert [tuple(r) for r in late] == [(1, 1, 100.0)]
        assert [tuple(r) for r in cutoffs] == [(None, 0, 1), (None, 0, 1)]
        db.downgrade(eng, "0005")
        assert "late_feedback" not in inspect(eng).get_table_names()
    finally:
        eng.dispose()


def test_0007_downgrade_merges_the_call_sums_of_unit_calls(empty_database_url):
    from sqlalchemy import text

    eng = db.make_engine(empty_database_url)
    try:
        db.upgrade(eng)
        with eng.begin() as conn:
            conn.execute(
                text(
                    "INSERT INTO prompts (id, name, description, tags, created_at, updated_at) "
                    "VALUES (1, 'p', '', '[]', 0, 0)"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO experiments (id, prompt_id, status, metric, reward, strategy, "
                    "auto_promote, policy, control_arm, source, created_at, epoch, weights, "
                    "policy_state, snapshot, matured_total, update_seq, validity_seq, validity_low) "
                    "VALUES (1, 1, 'running', 'resolved', 'binary', 'thompson', true, '{}', 0, 'api', "
                    "0, 0, '[]', '{}', '{}', 0, 0, 0, 1)"
                )
            )
            # (arm, with_unit, calls, histogram): arm 0 has both kinds, arm 1 unit calls only
            for arm, with_unit, calls, hist in [
                (0, False, 3, "[1, 2]"),
                (0, True, 2, "[0, 1, 1]"),
                (1, True, 4, "[4]"),
            ]:
                conn.execute(
                    text(
                        "INSERT INTO call_stats (experiment_id, arm, epoch, with_unit, calls, errors, "
                        "cache_hits, cost_n, cost_sum, cost_ss, latency_sum, latency_ss, tokens_n, "
                        "prompt_tokens_sum, completion_tokens_sum, latency_hist) VALUES (1, :arm, 0, "
                        ":unit, :calls, 1, 0, :calls, :calls, 0, 0, 0, 0, 0, 0, :hist)"
                    ),
                    {"arm": arm, "unit": with_unit, "calls": calls, "hist": hist},
                )
        db.downgrade(eng, "0006")
        with eng.connect() as conn:
            rows = conn.execute(
                text("SELECT arm, calls, errors, cost_sum, latency_hist FROM call_stats ORDER BY arm")
            ).all()
        assert [(r[0], r[1], r[2], r[3]) for r in rows] == [(0, 5, 2, 5.0), (1, 4, 1, 4.0)]
        assert [json.loads(r[4]) if isinstance(r[4], str) else r[4] for r in rows] == [[1, 3, 1], [4]]
    finally:
        eng.dispose()


def test_downgrade_to_base_and_back_with_data(ops, settings, prompts_dir):
    """Experiments, arms and labels referencing versions do not block dropping the tables (SQLite
    checks foreign keys on DROP TABLE); the foreign keys are back on afterwards."""
    from sqlalchemy import text

    (prompts_dir / "p.yaml").write_text(
        "name: p\ntemplate: a\nvariants:\n  b: {template: b}\nexperiment: {metric: m, arms: [main, b]}\n",
        encoding="utf-8",
    )
    ops.sync()
    ops.close()
    eng = db.make_engine(settings.database_url)
    try:
        db.downgrade(eng, "0001")
        db.upgrade(eng)
        with eng.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM versions")).scalar() == 2
        db.downgrade(eng, "base")
        assert set(inspect(eng).get_table_names()) <= {"alembic_version"}
        db.upgrade(eng)
        assert not db.needs_migration(eng)
        if eng.dialect.name == "sqlite":
            with eng.connect() as conn:
                assert conn.execute(text("PRAGMA foreign_keys")).scalar() == 1
    finally:
        eng.dispose()


def test_unknown_revision_is_invalid_input(empty_database_url):
    from promptops.errors import InvalidInput

    eng = db.make_engine(empty_database_url)
    try:
        db.upgrade(eng)
        with pytest.raises(InvalidInput, match="cannot downgrade to 'nonsense'"):
            db.downgrade(eng, "nonsense")
        with pytest.raises(InvalidInput, match="cannot upgrade to 'zz'"):
            db.upgrade(eng, "zz")
        assert not db.needs_migration(eng)
    finally:
        eng.dispose()
