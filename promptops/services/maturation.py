"""Maturation: decisions whose attribution window closed enter the per-cell sums, once.

The data rules are the ones the simulator uses, from `promptops.stats`: `matured_values` decides
what a matured decision counts and `fold_units` moves a unit's mean between cells as its values
arrive. A unit (a `unit_id`, else the decision itself) is filed under the arm and epoch of its first
exposure; `count_assigned` counts new units per (arm, epoch) when an epoch closes, for the SRM check.
Each update marks the newly matured decisions with its sequence number (`counted_in`), so every
decision is folded exactly once, also when the batched writer stored it late.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import ArmEpochRow, DecisionRow, ExperimentRow, FeedbackRow, UnitRow
from promptops.db.queries import rowcount
from promptops.domain import MissingFeedback, Policy
from promptops.services import metricsums

Cells = dict[tuple[int, int], list[float]]
"""Increments of (n, sum, sum of squares) per (arm, epoch) cell."""
MATURITY_GRACE_SECONDS = 2.0
"""How long past the window a decision waits: a feedback stamped inside the window may still be in
a commit batch, or come from a replica whose clock runs slightly behind."""
CHUNK = 500
"""Units read per query when their stored rows are loaded."""


def mature(s: Session, exp: ExperimentRow, policy: Policy, now: float) -> int:
    """Mark decisions whose attribution window closed and fold them into the sums; returns how
    many matured."""
    window = policy.attribution_window_hours * 3600
    seq = exp.update_seq + 1
    res = s.execute(
        update(DecisionRow)
        .where(
            DecisionRow.experiment_id == exp.id,
            DecisionRow.counted_in == 0,
            DecisionRow.decided_at <= now - window - MATURITY_GRACE_SECONDS,
        )
        .values(counted_in=seq)
        .execution_options(synchronize_session=False)
    )
    if not rowcount(res):
        return 0
    exp.update_seq = seq
    cells: Cells = {}
    total = _fold_decisions(s, exp, policy, seq, window, cells)
    units: dict[str, UnitRow] = {}
    total += _fold_units(s, exp, policy, seq, window, cells, units)
    _add_cells(s, exp, cells)
    metricsums.fold(s, exp, policy, seq, window, units)
    exp.matured_total += total
    return total


def _batch(exp: ExperimentRow, seq: int, window: float, *, units: bool) -> Any:
    """Matured decisions of batch `seq` with their on-time primary feedback, grouped per
    (arm, epoch) for decisions without a unit, per unit otherwise."""
    fb = FeedbackRow
    joined = (
        (fb.decision_id == DecisionRow.id)
        & (fb.metric == exp.metric)
        & (fb.received_at <= DecisionRow.decided_at + window)
    )
    aggregates = (
        func.count(DecisionRow.id),
        func.count(fb.id),
        func.coalesce(func.sum(fb.reward), 0.0),
        func.coalesce(func.sum(fb.reward * fb.reward), 0.0),
    )
    where = (
        DecisionRow.experiment_id == exp.id,
        DecisionRow.counted_in == seq,
        DecisionRow.unit_id.is_not(None) if units else DecisionRow.unit_id.is_(None),
    )
    if units:
        return (
            select(DecisionRow.unit_id, func.min(DecisionRow.arm), func.min(DecisionRow.epoch), *aggregates)
            .outerjoin(fb, joined)
            .where(*where)
            .group_by(DecisionRow.unit_id)
        )
    return (
        select(DecisionRow.arm, DecisionRow.epoch, *aggregates)
        .outerjoin(fb, joined)
        .where(*where)
        .group_by(DecisionRow.arm, DecisionRow.epoch)
    )


def _fold_decisions(
    s: Session, exp: ExperimentRow, policy: Policy, seq: int, window: float, cells: Cells
) -> int:
    """Each decision without a unit is its own unit: its value enters its cell once."""
    zero = policy.missing_feedback_for(exp.reward) == MissingFeedback.ZERO
    total = 0
    for arm, epoch, count, with_fb, ssum, ssq in s.execute(_batch(exp, seq, window, units=False)).all():
        add(cells, (arm, epoch), (count if zero else with_fb, ssum, ssq))
        total += int(count)
    return total


def load_units(s: Session, exp: ExperimentRow, ids: list[str]) -> dict[str, UnitRow]:
    """The stored rows of these units, locked for the update."""
    stored: dict[str, UnitRow] = {}
    ids = sorted(ids)
    for i in range(0, len(ids), CHUNK):
        for u in s.scalars(
            select(UnitRow)
            .where(UnitRow.experiment_id == exp.id, UnitRow.unit_id.in_(ids[i : i + CHUNK]))
            .with_for_update()
        ):
            stored[u.unit_id] = u
    return stored


def _fold_units(
    s: Session,
    exp: ExperimentRow,
    policy: Policy,
    seq: int,
    window: float,
    cells: Cells,
    units: dict[str, UnitRow],
) -> int:
    """Units move their mean between values: `fold_units` gives the cell increments. `units`
    receives the row of every unit of the batch."""
    rows = s.execute(_batch(exp, seq, window, units=True)).all()
    if not rows:
        return 0
    zero = policy.missing_feedback_for(exp.reward) == MissingFeedback.ZERO
    k, epochs = len(exp.weights), exp.epoch + 1
    stored = load_units(s, exp, [r[0] for r in rows])
    total = 0
    arm, first, c0, s0, add_c, add_s = [], [], [], [], [], []
    for unit_id, min_arm, min_epoch, count, with_fb, ssum, _ in rows:
        found = stored.get(unit_id)
        if found is not None:
            u = found
        else:  # its serve-time row was lost: its matured decisions stand in for it
            u = UnitRow(
                experiment_id=exp.id,
                unit_id=unit_id,
                arm=int(min_arm),
                first_epoch=int(min_epoch),
                decisions=0,
                count=0,
                total=0.0,
            )
            s.add(u)
        units[unit_id] = u
        total += int(count)
        if not (0 <= u.arm < k and 0 <= u.first_epoch < epochs):
            continue
        arm.append(u.arm)
        first.append(u.first_epoch)
        c0.append(u.count)
        s0.append(u.total)
        added = int(count if zero else with_fb)
        add_c.append(added)
        add_s.append(float(ssum))
        u.decisions += int(count)
        u.count += added
        u.total += float(ssum)
    if arm:
        dn, ds, dss = stats.fold_units(
            arms=k,
            epochs=epochs,
            arm=arm,
            first_epoch=first,
            old_count=c0,
            old_sum=s0,
            add_count=add_c,
            add_sum=add_s,
        )
        for key in set(zip(arm, first, strict=True)):
            a, e = key
            add(cells, key, (float(dn[a, e]), float(ds[a, e]), float(dss[a, e])))
    return total


def _add_cells(s: Session, exp: ExperimentRow, cells: Cells) -> None:
    existing: dict[Any, ArmEpochRow] = {
        (r.arm, r.epoch): r for r in s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))
    }
    for (arm, epoch), (dn, ds, dss) in sorted(cells.items()):
        row = existing.get((arm, epoch))
        if row is None:
            row = ArmEpochRow(experiment_id=exp.id, arm=arm, epoch=epoch, assigned=0, n=0, s=0.0, ss=0.0)
            s.add(row)
        row.n += int(round(dn))
        row.s += float(ds)
        row.ss += float(dss)


def count_assigned(s: Session, exp: ExperimentRow) -> None:
    """New units per arm of the current and the previous epoch, counted at serve time as the
    SRM check needs (the previous one again for decisions the batched writer stored late):
    decisions without a unit, and units by their first epoch."""
    epochs = [e for e in (exp.epoch - 1, exp.epoch) if e >= 0]
    counts: dict[tuple[int, int], int] = {}
    for arm, epoch, n in s.execute(
        select(DecisionRow.arm, DecisionRow.epoch, func.count(DecisionRow.id))
        .where(
            DecisionRow.experiment_id == exp.id,
            DecisionRow.epoch.in_(epochs),
            DecisionRow.unit_id.is_(None),
        )
        .group_by(DecisionRow.arm, DecisionRow.epoch)
    ).all():
        if arm is not None and epoch is not None:
            counts[(arm, epoch)] = counts.get((arm, epoch), 0) + int(n)
    for arm, epoch, n in s.execute(
        select(UnitRow.arm, UnitRow.first_epoch, func.count())
        .where(UnitRow.experiment_id == exp.id, UnitRow.first_epoch.in_(epochs))
        .group_by(UnitRow.arm, UnitRow.first_epoch)
    ).all():
        counts[(arm, epoch)] = counts.get((arm, epoch), 0) + int(n)
    rows = {
        (r.arm, r.epoch): r
        for r in s.scalars(
            select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id, ArmEpochRow.epoch.in_(epochs))
        )
    }
    for key in set(counts) | set(rows):
        row = rows.get(key)
        if row is None:
            row = ArmEpochRow(experiment_id=exp.id, arm=key[0], epoch=key[1], assigned=0, n=0, s=0.0, ss=0.0)
            s.add(row)
        row.assigned = counts.get(key, 0)
    s.flush()


def add(cells: Cells, key: tuple[int, int], values: tuple[float, float, float]) -> None:
    """Add (n, sum, sum of squares) to a cell."""
    cell = cells.setdefault(key, [0.0, 0.0, 0.0])
    for i, v in enumerate(values):
        cell[i] += float(v)
