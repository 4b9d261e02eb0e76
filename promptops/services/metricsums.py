"""Secondary and guardrail metrics: their per-arm, per-epoch sums, folded at maturation.

Each tracked metric (the declared secondary metrics, the guardrail metrics and the built-ins) is
summed like the primary reward: a decision without a unit is one observation, in the cell of its arm
and epoch; a unit is one observation, its mean value, in the cell of its arm and first epoch
(`stats.fold_units` moves it as values arrive), however many decisions it makes. A value is the
metric's feedback within the attribution window, capped at a high quantile of the metric's values
(`stats.metric_cap` of the first `stats.CAP_MIN_VALUES` values by decision time), fixed in the
update where that many have matured; the values summed before are capped then, so the sums do not
depend on how often updates run (the simulator folds larger batches and gets the same sums).
The gateway's own calls add `cost_usd`, `latency_ms` and `error`, uncapped: for decisions without
a unit from their per-arm, per-epoch sums as the calls are recorded (`calls.py`), for units from
the call log of the matured batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import (
    ArmMetricRow,
    CallRow,
    CallStatsRow,
    DecisionRow,
    ExperimentRow,
    FeedbackRow,
    UnitMetricRow,
    UnitRow,
)
from promptops.domain import BUILTIN_METRICS, Policy
from promptops.services.calls import ERROR_STATUSES

CHUNK = 500
"""Units read per query when their stored rows are loaded."""
Cells = dict[tuple[str, int, int], list[float]]
"""Increments of (n, sum, sum of squares) per (metric, arm, epoch) cell."""


def tracked_metrics(exp: ExperimentRow, policy: Policy) -> list[str]:
    """The metrics summed per arm and epoch besides the primary one: the declared secondary
    metrics, the guardrail metrics and the built-ins, each once."""
    names = [*(exp.metrics or []), *(g.metric for g in policy.guardrails), *BUILTIN_METRICS]
    return [m for m in dict.fromkeys(names) if m != exp.metric]


def fold(
    s: Session, exp: ExperimentRow, policy: Policy, seq: int, window: float, units: Mapping[str, UnitRow]
) -> None:
    """Add the matured batch `seq` to every tracked metric's per-arm, per-epoch sums: decisions
    without a unit one value each, units their mean (`units`: the batch's units, as the primary
    sums filed them)."""
    names = tracked_metrics(exp, policy)
    if not names:
        return
    cells: Cells = {}
    moved: dict[tuple[str, str], list[float]] = {}  # (unit, metric) -> [count, sum] to add
    caps = _fix_caps(s, exp, names, seq, window, cells, moved)
    _fold_decisions(s, exp, names, caps, seq, window, cells)
    _fold_units(s, exp, names, caps, seq, window, units, cells, moved)
    existing: dict[Any, ArmMetricRow] = {
        (r.metric, r.arm, r.epoch): r
        for r in s.scalars(select(ArmMetricRow).where(ArmMetricRow.experiment_id == exp.id))
    }
    for (metric, arm, epoch), (dn, ds, dss) in sorted(cells.items()):
        row = existing.get((metric, arm, epoch))
        if row is None:
            row = ArmMetricRow(experiment_id=exp.id, metric=metric, arm=arm, epoch=epoch, n=0, s=0.0, ss=0.0)
            s.add(row)
        row.n += int(round(dn))
        row.s += float(ds)
        row.ss += float(dss)


def _in_batch(exp: ExperimentRow, seq: int, window: float) -> tuple[Any, ...]:
    fb = FeedbackRow
    return (
        fb.decision_id == DecisionRow.id,
        DecisionRow.experiment_id == exp.id,
        DecisionRow.counted_in == seq,
        fb.received_at <= DecisionRow.decided_at + window,
    )


def _fix_caps(
    s: Session,
    exp: ExperimentRow,
    names: list[str],
    seq: int,
    window: float,
    cells: Cells,
    moved: dict[tuple[str, str], list[float]],
) -> dict[str, float | None]:
    """Each metric's cap: fixed in the update where `stats.CAP_MIN_VALUES` of its values have
    matured, from the first that many by decision time, whatever the updates' sizes; the values
    summed before are capped then (their cells in `cells`, units' sums in `moved`)."""
    state = dict(exp.policy_state or {})
    caps: dict[str, float | None] = dict(state.get("metric_caps") or {})
    seen: dict[str, int] = dict(state.get("metric_values") or {})
    missing = [m for m in names if caps.get(m) is None]
    if not missing:
        return caps
    fb, d = FeedbackRow, DecisionRow
    batch = dict(
        s.execute(
            select(fb.metric, func.count(fb.id))
            .where(*_in_batch(exp, seq, window), fb.metric.in_(missing))
            .group_by(fb.metric)
        ).all()
    )
    for metric in missing:
        total = seen.get(metric, 0) + int(batch.get(metric, 0))
        if total < stats.CAP_MIN_VALUES:
            seen[metric] = total
            continue
        rows = s.execute(
            select(d.arm, d.epoch, d.unit_id, d.counted_in, fb.reward)
            .where(
                fb.decision_id == d.id,
                d.experiment_id == exp.id,
                d.counted_in > 0,
                fb.received_at <= d.decided_at + window,
                fb.metric == metric,
            )
            .order_by(d.decided_at, d.id)
        ).all()
        cap = stats.metric_cap([float(r[4]) for r in rows[: stats.CAP_MIN_VALUES]])
        caps[metric] = cap
        seen.pop(metric, None)
        if cap is None:
            continue
        for arm, epoch, unit_id, counted_in, raw in rows:
            v = float(raw)
            if counted_in == seq or v <= cap:
                continue  # this batch is folded capped; a value under the cap stays
            if unit_id is None:
                if arm is not None and epoch is not None:
                    _add(cells, (metric, arm, epoch), (0.0, cap - v, cap * cap - v * v))
            else:
                _count(moved, (unit_id, metric), 0.0, cap - v)
    state["metric_caps"], state["metric_values"] = caps, seen
    exp.policy_state = state
    return caps


def _capped(caps: dict[str, float | None], names: list[str]) -> Any:
    """A feedback's value, capped at its metric's cap (one expression for every metric)."""
    fb = FeedbackRow
    whens = [((fb.metric == m) & (fb.reward > cap), cap) for m in names if (cap := caps.get(m)) is not None]
    return case(*whens, else_=fb.reward) if whens else fb.reward


def _fold_decisions(
    s: Session,
    exp: ExperimentRow,
    names: list[str],
    caps: dict[str, float | None],
    seq: int,
    window: float,
    cells: Cells,
) -> None:
    """Decisions without a unit: each value enters the cell of the decision's arm and epoch."""
    fb = FeedbackRow
    value = _capped(caps, names)
    for metric, arm, epoch, n, total, squares in s.execute(
        select(
            fb.metric,
            DecisionRow.arm,
            DecisionRow.epoch,
            func.count(fb.id),
            func.coalesce(func.sum(value), 0.0),
            func.coalesce(func.sum(value * value), 0.0),
        )
        .where(*_in_batch(exp, seq, window), DecisionRow.unit_id.is_(None), fb.metric.in_(names))
        .group_by(fb.metric, DecisionRow.arm, DecisionRow.epoch)
    ).all():
        if arm is not None and epoch is not None:
            _add(cells, (metric, arm, epoch), (n, total, squares))


def _fold_units(
    s: Session,
    exp: ExperimentRow,
    names: list[str],
    caps: dict[str, float | None],
    seq: int,
    window: float,
    units: Mapping[str, UnitRow],
    cells: Cells,
    added: dict[tuple[str, str], list[float]],
) -> None:
    """Units: their values (feedback within the window, and the built-ins of their gateway calls)
    move each unit's mean in the cell of its arm and first epoch, as `stats.fold_units` says;
    `added` holds what a newly fixed cap took off their earlier values."""
    fb = FeedbackRow
    if not units and not added:
        return
    value = _capped(caps, names)
    for unit_id, metric, n, total in s.execute(
        select(DecisionRow.unit_id, fb.metric, func.count(fb.id), func.coalesce(func.sum(value), 0.0))
        .where(*_in_batch(exp, seq, window), DecisionRow.unit_id.is_not(None), fb.metric.in_(names))
        .group_by(DecisionRow.unit_id, fb.metric)
    ).all():
        _count(added, (unit_id, metric), n, total)
    builtins = [m for m in BUILTIN_METRICS if m in names]
    if builtins:
        c = CallRow
        for unit_id, calls, latency, cost_n, cost, errors in s.execute(
            select(
                DecisionRow.unit_id,
                func.count(c.decision_id),
                func.coalesce(func.sum(c.latency_ms), 0.0),
                func.count(c.cost_usd),
                func.coalesce(func.sum(c.cost_usd), 0.0),
                func.coalesce(func.sum(case((c.status.in_(sorted(ERROR_STATUSES)), 1), else_=0)), 0),
            )
            .join(c, c.decision_id == DecisionRow.id)
            .where(
                DecisionRow.experiment_id == exp.id,
                DecisionRow.counted_in == seq,
                DecisionRow.unit_id.is_not(None),
            )
            .group_by(DecisionRow.unit_id)
        ).all():
            for metric, n, total in (
                ("cost_usd", cost_n, cost),
                ("latency_ms", calls, latency),
                ("error", calls, errors),
            ):
                if metric in builtins and n:
                    _count(added, (unit_id, metric), n, total)
    if not added:
        return
    stored: dict[tuple[str, str], UnitMetricRow] = {}
    ids = sorted({u for u, _ in added})
    owners: dict[str, UnitRow] = dict(units)
    for i in range(0, len(ids), CHUNK):
        chunk = ids[i : i + CHUNK]
        for r in s.scalars(
            select(UnitMetricRow)
            .where(UnitMetricRow.experiment_id == exp.id, UnitMetricRow.unit_id.in_(chunk))
            .with_for_update()
        ):
            stored[(r.unit_id, r.metric)] = r
        earlier = [u for u in chunk if u not in owners]  # units whose earlier values a cap moved
        if earlier:
            for u in s.scalars(
                select(UnitRow).where(UnitRow.experiment_id == exp.id, UnitRow.unit_id.in_(earlier))
            ):
                owners[u.unit_id] = u
    k, epochs = len(exp.weights), exp.epoch + 1
    for metric in names:
        arm, first, c0, s0, add_c, add_s = [], [], [], [], [], []
        for unit_id in ids:
            more = added.get((unit_id, metric))
            owner = owners.get(unit_id)
            if more is None or owner is None or not (0 <= owner.arm < k and 0 <= owner.first_epoch < epochs):
                continue
            row = stored.get((unit_id, metric))
            if row is None:
                row = UnitMetricRow(experiment_id=exp.id, unit_id=unit_id, metric=metric, count=0, total=0.0)
                s.add(row)
            arm.append(owner.arm)
            first.append(owner.first_epoch)
            c0.append(row.count)
            s0.append(row.total)
            add_c.append(more[0])
            add_s.append(more[1])
            row.count += int(more[0])
            row.total += float(more[1])
        if not arm:
            continue
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
        for a, e in set(zip(arm, first, strict=True)):
            _add(cells, (metric, a, e), (dn[a, e], ds[a, e], dss[a, e]))


def _count(added: dict[tuple[str, str], list[float]], key: tuple[str, str], n: Any, total: Any) -> None:
    cell = added.setdefault(key, [0.0, 0.0])
    cell[0] += float(n)
    cell[1] += float(total)


def _add(cells: Cells, key: tuple[str, int, int], values: Any) -> None:
    cell = cells.setdefault(key, [0.0, 0.0, 0.0])
    for i, v in enumerate(values):
        cell[i] += float(v)


def call_sums(s: Session, exp: ExperimentRow) -> dict[str, list[tuple[Any, ...]]]:
    """The built-in metrics of the gateway's own calls of decisions without a unit, from its
    per-arm, per-epoch sums (`calls.py`): they join the sums of the same metrics sent as feedback
    (calls of decisions with a unit count per unit, at maturation)."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for r in s.scalars(
        select(CallStatsRow).where(CallStatsRow.experiment_id == exp.id, CallStatsRow.with_unit.is_(False))
    ):
        out.setdefault("cost_usd", []).append((r.arm, r.epoch, r.cost_n, r.cost_sum, r.cost_ss))
        out.setdefault("latency_ms", []).append((r.arm, r.epoch, r.calls, r.latency_sum, r.latency_ss))
        out.setdefault("error", []).append((r.arm, r.epoch, r.calls, r.errors, r.errors))
    return out


def metric_data(
    s: Session, exp: ExperimentRow, policy: Policy, k: int, e: int
) -> dict[str, stats.MetricData]:
    """Per tracked metric with any value: its per-arm, per-epoch sums over `e` epochs."""
    caps = (exp.policy_state or {}).get("metric_caps") or {}
    calls = call_sums(s, exp)
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for r in s.scalars(select(ArmMetricRow).where(ArmMetricRow.experiment_id == exp.id)):
        rows.setdefault(r.metric, []).append((r.arm, r.epoch, r.n, r.s, r.ss))
    out: dict[str, stats.MetricData] = {}
    for metric in tracked_metrics(exp, policy):
        merged: dict[tuple[int, int], list[float]] = {}
        for arm, epoch, cn, cs, css in [*rows.get(metric, []), *calls.get(metric, [])]:
            cell = merged.setdefault((arm, epoch), [0.0, 0.0, 0.0])
            cell[0] += float(cn)
            cell[1] += float(cs)
            cell[2] += float(css)
        sums = stats.EpochData.from_cells(
            k, e, [(a, ep, v[0], v[1], v[2], 0.0) for (a, ep), v in merged.items()], []
        )
        if sums.n.sum() > 0:
            out[metric] = stats.MetricData(n=sums.n, s=sums.s, ss=sums.ss, cap=caps.get(metric))
    return out
