"""Query helpers shared by the services: the change counter, meta values, dialect-neutral upserts."""

from __future__ import annotations

from typing import Any

from sqlalchemy import select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from promptops.db.models import MetaRow

CHANGE_SEQ = "change_seq"
RETENTION_CUTOFF = "retention_cutoff"  # decisions at or before this time may have been removed


def insert_ignore(session: Session, table: Any, rows: list[dict[str, Any]]) -> int:
    """Insert rows, skipping those that collide with a unique key; returns how many went in."""
    if not rows:
        return 0
    dialect = session.get_bind().dialect.name
    ins = postgresql.insert(table) if dialect == "postgresql" else sqlite.insert(table)
    # Counted from RETURNING: drivers do not report a rowcount for a many-row insert.
    stmt = ins.on_conflict_do_nothing().returning(*table.primary_key.columns)
    return len(session.execute(stmt, rows).all())


def rowcount(result: Any) -> int:
    """Rows matched by an UPDATE or DELETE result (0 when the driver cannot tell)."""
    return max(int(getattr(result, "rowcount", 0) or 0), 0)


def get_meta(session: Session, key: str) -> str | None:
    """A value of the meta table, or None."""
    return session.scalar(select(MetaRow.value).where(MetaRow.key == key))


def set_meta(session: Session, key: str, value: str) -> None:
    """Store a value, replacing any earlier one."""
    res = session.execute(update(MetaRow).where(MetaRow.key == key).values(value=value))
    if not rowcount(res):
        insert_ignore(session, MetaRow.__table__, [{"key": key, "value": value}])


def set_meta_if_absent(session: Session, key: str, value: str) -> str:
    """Store a value unless one exists; returns the stored value (first writer wins)."""
    insert_ignore(session, MetaRow.__table__, [{"key": key, "value": value}])
    stored = get_meta(session, key)
    assert stored is not None
    return stored


def bump_change_seq(session: Session) -> None:
    """Mark that versions, labels or experiments changed, so every server refreshes its cache."""
    res = session.execute(
        update(MetaRow).where(MetaRow.key == CHANGE_SEQ).values(value=_next_seq_expr(session))
    )
    if not rowcount(res):
        insert_ignore(session, MetaRow.__table__, [{"key": CHANGE_SEQ, "value": "1"}])


def _next_seq_expr(session: Session) -> Any:
    from sqlalchemy import Integer, cast

    return cast(cast(MetaRow.value, Integer) + 1, MetaRow.value.type)


def read_change_seq(session: Session) -> int:
    """The current value of the change counter (0 if never bumped)."""
    raw = get_meta(session, CHANGE_SEQ)
    return int(raw) if raw else 0
