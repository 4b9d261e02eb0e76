"""Durable recording of decisions and feedback: the rows, and the statements that store them.

A serve's decision is written by `Recorder`, inline or batched through a `DecisionSink` (the
server's `BatchWriter`); feedback is always durable before it is acknowledged.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import Connection, bindparam, insert, update
from sqlalchemy.dialects import postgresql, sqlite

from promptops.db.models import ArmRow, DecisionRow, FeedbackRow, LateFeedbackRow, UnitRow
from promptops.services.context import Context
from promptops.services.decisions import DecisionToken


@dataclass
class FeedbackItem:
    """A validated feedback waiting to be stored."""

    decision_id: str
    token: DecisionToken
    metric: str
    reward: float
    received_at: float
    counts_for: int | None  # experiment whose arm counters it updates (its metric matches)
    late: bool = False  # a primary feedback after its decision's window (queued for the validity counts)


_ARMS: Any = ArmRow.__table__
# Statements are built once: building and compiling them per batch cost more than storing the
# rows (bench/http.py).
_BUMP_ARMS = (
    update(_ARMS)
    .where(_ARMS.c.experiment_id == bindparam("exp"), _ARMS.c.idx == bindparam("arm_idx"))
    .values(
        decisions=_ARMS.c.decisions + bindparam("n_decisions"),
        feedback=_ARMS.c.feedback + bindparam("n_feedback"),
        reward_sum=_ARMS.c.reward_sum + bindparam("n_reward"),
    )
)
_LATE_TABLE: Any = LateFeedbackRow.__table__
_LATE = insert(_LATE_TABLE)
_INSERTS: dict[tuple[str, str], Any] = {}
_DECISION_COLUMNS = tuple(c.name for c in DecisionRow.__table__.columns)
NEW_UNIT = "new_unit"
"""The key of a decision row that carries (arm, first epoch) of a unit seen for the first time."""


class Recorder:
    """Writes decisions and feedback; every method is one transaction, on a bare connection (an
    ORM session cost a sixth of the writer's time per batch of core statements)."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def _insert_returning(
        self, conn: Connection, table: Any, rows: list[dict[str, Any]], *keys: Any
    ) -> list[Any]:
        """Insert rows, skipping conflicts; the `keys` of the rows actually inserted."""
        if not rows:
            return []
        dialect = conn.dialect.name
        stmt = _INSERTS.get((dialect, table.name))
        if stmt is None:
            mod = postgresql if dialect == "postgresql" else sqlite
            stmt = _INSERTS[(dialect, table.name)] = (
                mod.insert(table).on_conflict_do_nothing().returning(*keys)
            )
        return list(conn.execute(stmt, rows).all())

    def record_decisions(self, rows: list[dict[str, Any]]) -> int:
        """Store decisions (skipping any already stored) and count them per arm."""
        if not rows:
            return 0
        with self.ctx.conn() as conn:
            return self.store_decisions(conn, rows)

    def store_decisions(self, conn: Connection, rows: list[dict[str, Any]]) -> int:
        """`record_decisions` inside the caller's transaction (the batched writer stores a batch's
        decisions and their gateway calls in one)."""
        counts: dict[tuple[int, int], list[float]] = {}
        stored = self._store_decisions(conn, rows, counts)
        self._bump_arms(conn, counts)
        return stored

    # Every transaction here takes its row locks in one order: decisions by id, then feedback by
    # decision id, then arm counters by experiment and arm. Replicas writing the same decisions
    # and arms at once therefore wait for each other but never deadlock.
    def _store_decisions(
        self, conn: Connection, rows: list[dict[str, Any]], counts: dict[tuple[int, int], list[float]]
    ) -> int:
        by_id = {r["id"]: r for r in rows}
        inserted = self._insert_returning(
            conn,
            DecisionRow.__table__,
            [{c: by_id[k][c] for c in _DECISION_COLUMNS} for k in sorted(by_id)],
            DecisionRow.__table__.c.id,
        )
        # A unit first seen under this serve: its first epoch is stored so that any replica
        # recomputes its arm; of two replicas racing on one unit the first row stays.
        units = {(r["experiment_id"], r["unit_id"]): r[NEW_UNIT] for r in rows if r.get(NEW_UNIT) is not None}
        if units:
            self._insert_returning(
                conn,
                UnitRow.__table__,
                [
                    {
                        "experiment_id": e,
                        "unit_id": u,
                        "arm": arm,
                        "first_epoch": epoch,
                        "decisions": 0,
                        "count": 0,
                        "total": 0.0,
                    }
                    for (e, u), (arm, epoch) in sorted(units.items())
                ],
                UnitRow.__table__.c.unit_id,
            )
        for (did,) in inserted:
            r = by_id[did]
            if r["experiment_id"] is not None:
                counts.setdefault((r["experiment_id"], r["arm"]), [0, 0, 0.0])[0] += 1
        return len(inserted)

    @staticmethod
    def _bump_arms(conn: Connection, counts: dict[tuple[int, int], list[float]]) -> None:
        if counts:
            conn.execute(
                _BUMP_ARMS,
                [
                    {
                        "exp": exp_id,
                        "arm_idx": arm,
                        "n_decisions": int(decisions),
                        "n_feedback": int(feedback),
                        "n_reward": reward,
                    }
                    for (exp_id, arm), (decisions, feedback, reward) in sorted(counts.items())
                ],
            )

    def record_feedback(self, items: list[FeedbackItem]) -> list[str]:
        """Store feedback durably; each result is "recorded" or "duplicate"."""
        if not items:
            return []
        out = ["duplicate"] * len(items)
        with self.ctx.conn() as conn:
            counts: dict[tuple[int, int], list[float]] = {}
            late: list[dict[str, Any]] = []
            self._store_decisions(conn, [decision_row(i.decision_id, i.token) for i in items], counts)
            order = sorted(range(len(items)), key=lambda k: (items[k].decision_id, items[k].metric, k))
            # One statement for the batch; a repeat within it loses to its first occurrence.
            fb = FeedbackRow.__table__
            inserted = set(
                self._insert_returning(
                    conn,
                    fb,
                    [
                        {
                            "decision_id": items[k].decision_id,
                            "metric": items[k].metric,
                            "reward": items[k].reward,
                            "received_at": items[k].received_at,
                        }
                        for k in order
                    ],
                    fb.c.decision_id,
                    fb.c.metric,
                )
            )
            for pos in order:
                item = items[pos]
                if (item.decision_id, item.metric) in inserted:
                    inserted.discard((item.decision_id, item.metric))
                    out[pos] = "recorded"
                    if item.counts_for is not None:
                        c = counts.setdefault(
                            (item.counts_for, item.token.arm),  # type: ignore[arg-type]
                            [0, 0, 0.0],
                        )
                        c[1] += 1
                        c[2] += item.reward
                        if item.late:
                            late.append(
                                {
                                    "experiment_id": item.counts_for,
                                    "arm": item.token.arm,
                                    "decided_at": item.token.decided_at,
                                }
                            )
            if late:
                # In the feedback's own transaction: an update counts it exactly once (`validity`).
                conn.execute(_LATE, late)
            self._bump_arms(conn, counts)
        return out


def decision_row(decision_id: str, t: DecisionToken, unit_id: str | None = None) -> dict[str, Any]:
    """The table row of a decision."""
    return {
        "id": decision_id,
        "prompt_id": t.prompt_id,
        "version_id": t.version_id,
        "experiment_id": t.experiment_id,
        "arm": t.arm,
        "epoch": t.epoch,
        "unit_id": unit_id,
        "decided_at": t.decided_at,
        "counted_in": 0,
    }


class DecisionSink(Protocol):
    """Where a serve puts its decision, and the gateway its call record, when they are not
    written inline (`BatchWriter`)."""

    def add_decision(self, row: dict[str, Any]) -> None:
        """Queue a decision row to be stored."""

    def add_call(self, row: dict[str, Any]) -> None:
        """Queue a gateway call row to be stored after its decision."""
