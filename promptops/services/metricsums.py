"""Secondary and guardrail metrics: their per-arm, per-epoch sums, folded at maturation.

Each tracked metric (the declared secondary metrics, the guardrail metrics and the built-ins) is
summed like the primary reward: a decision without a unit is one observation, in the cell of its arm
and epoch; a unit is one observation, its mean value, in the cell of its arm and first epoch
(`stats.fold_units` moves it as values arrive), however many decisions it makes. A value is the
metric's feedback within the attribution window, capped at a high quantile of the metric's values
(`stats.metric_cap` of the first `stats.CAP_MIN_VALUES` values by decision time), fixed in the
update where that many have matured; the values summed before are capped then, so the sums do not
depend on how often updates run (the simulator folds larger batches and gets the same sums).
The gateway's own calls add values of `cost_usd` (when the price is known), `latency_ms` and `error`
(1 for a failed call, else 0): a call recorded by the time its decision matures is one more value
of each, read from the call log of the matured batch and treated like feedback: it counts toward
the first values that fix the cap, it is capped, and a cap fixed later caps it too. So a
heavy-tailed latency cannot swing a guardrail, and the simulator's metric values (which it caps the
same way) stand for either source. A metric whose values are all 0 or 1 (`error`) is never capped
(`stats.metric_cap`).
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


def _call_values(names: list[str]) -> list[tuple[str, Any]]:
    """(metric, SQL value of a call) for the built-in metrics among `names`; a call without a
    known cost has no `cost_usd` value (NULL, which count and sum skip)."""
    c = CallRow
    exprs: dict[str, Any] = {
        "cost_usd": c.cost_usd,
        "latency_ms": c.latency_ms,
        "error": case((c.status.in_(sorted(ERROR_STATUSES)), 1.0), else_=0.0),
    }
    return [(m, exprs[m]) for m in BUILTIN_METRICS if m in names]


def _cap_expr(value: Any, cap: float | None) -> Any:
    """`value` capped at `cap` (SQL)."""
    return value if cap is None else case((value > cap, cap), else_=value)


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
    missing = [m for m in names if m not in caps]
    if not missing:
        return caps
    fb, d, c = FeedbackRow, DecisionRow, CallRow
    batch = dict(
        s.execute(
            select(fb.metric, func.count(fb.id))
            .where(*_in_batch(exp, seq, window), fb.metric.in_(missing))
            .group_by(fb.metric)
        ).all()
    )
    call_values = dict(_call_values(missing))
    if call_values:
        counts = s.execute(
            select(*(func.count(v) for v in call_values.values()))
            .select_from(d)
            .join(c, c.decision_id == d.id)
            .where(d.experiment_id == exp.id, d.counted_in == seq)
        ).one()
        for metric, n in zip(call_values, counts, strict=True):
            batch[metric] = int(batch.get(metric, 0)) + int(n or 0)
    for metric in missing:
        total = seen.get(metric, 0) + int(batch.get(metric, 0))
        if total < stats.CAP_MIN_VALUES:
            seen[metric] = total
            continue
        # every matured value, by decision time (a call's before a feedback's of the same decision)
        rows = [
            (r[0], r[1], 1, r[2], r[3], r[4], r[5], r[6])
            for r in s.execute(
                select(d.decided_at, d.id, d.arm, d.epoch, d.unit_id, d.counted_in, fb.reward).where(
                    fb.decision_id == d.id,
                    d.experiment_id == exp.id,
                    d.counted_in > 0,
                    fb.received_at <= d.decided_at + window,
                    fb.metric == metric,
                )
            ).all()
        ]
        value = call_values.get(metric)
        if value is not None:
            rows += [
                (r[0], r[1], 0, r[2], r[3], r[4], r[5], r[6])
                for r in s.execute(
                    select(d.decided_at, d.id, d.arm, d.epoch, d.unit_id, d.counted_in, value)
                    .join(c, c.decision_id == d.id)
                    .where(d.experiment_id == exp.id, d.counted_in > 0, value.is_not(None))
                ).all()
            ]
        rows.sort(key=lambda r: (r[0], r[1], r[2]))
        cap = stats.metric_cap([float(r[7]) for r in rows[: stats.CAP_MIN_VALUES]])
        caps[metric] = cap
        seen.pop(metric, None)
        if cap is None:
            continue
        for _, _, _, arm, epoch, unit_id, counted_in, raw in rows:
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
    calls = _call_values(names)
    if not calls:
        return
    d = DecisionRow
    for arm, epoch, *sums in s.execute(
        select(d.arm, d.epoch, *_call_sums(calls, caps, squares=True))
        .join(CallRow, CallRow.decision_id == d.id)
        .where(d.experiment_id == exp.id, d.counted_in == seq, d.unit_id.is_(None))
        .group_by(d.arm, d.epoch)
    ).all():
        for i, (metric, _) in enumerate(calls):
            n, total, squares = sums[3 * i : 3 * i + 3]
            if arm is not None and epoch is not None and n:
                _add(cells, (metric, arm, epoch), (n, total, squares))


def _call_sums(calls: list[tuple[str, Any]], caps: dict[str, float | None], *, squares: bool) -> list[Any]:
    """Per built-in metric: the count of its call values, their capped sum (and sum of squares)."""
    out: list[Any] = []
    for metric, raw in calls:
        v = _cap_expr(raw, caps.get(metric))
        out += [func.count(raw), func.coalesce(func.sum(v), 0.0)]
        if squares:
            out.append(func.coalesce(func.sum(v * v), 0.0))
    return out


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
    calls = _call_values(names)
    if calls:
        for unit_id, *sums in s.execute(
            select(DecisionRow.unit_id, *_call_sums(calls, caps, squares=False))
            .join(CallRow, CallRow.decision_id == DecisionRow.id)
            .where(
                DecisionRow.experiment_id == exp.id,
                DecisionRow.counted_in == seq,
                DecisionRow.unit_id.is_not(None),
            )
            .group_by(DecisionRow.unit_id)
        ).all():
            for i, (metric, _) in enumerate(calls):
                n, total = sums[2 * i : 2 * i + 2]
                if n:
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


def metric_data(
    s: Session, exp: ExperimentRow, policy: Policy, k: int, e: int
) -> dict[str, stats.MetricData]:
    """Per tracked metric with any value: its per-arm, per-epoch sums over `e` epochs."""
    caps = (exp.policy_state or {}).get("metric_caps") or {}
    rows: dict[str, list[tuple[Any, ...]]] = {}
    for r in s.scalars(select(ArmMetricRow).where(ArmMetricRow.experiment_id == exp.id)):
        rows.setdefault(r.metric, []).append((r.arm, r.epoch, r.n, r.s, r.ss))
    out: dict[str, stats.MetricData] = {}
    for metric in tracked_metrics(exp, policy):
        merged: dict[tuple[int, int], list[float]] = {}
        for arm, epoch, cn, cs, css in rows.get(metric, []):
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
