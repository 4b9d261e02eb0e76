"""Secondary and guardrail metrics: their per-arm, per-epoch sums, folded at maturation.

Each tracked metric (the declared secondary metrics, the guardrail metrics and the built-ins) is
summed per decision, capped at a quantile fixed from its first values (`stats.metric_cap`). The
gateway's own calls add the built-in metrics from their per-arm, per-epoch sums (`calls.py`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import case, func, select
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import ArmMetricRow, CallStatsRow, DecisionRow, ExperimentRow, FeedbackRow
from promptops.domain import BUILTIN_METRICS, Policy


def tracked_metrics(exp: ExperimentRow, policy: Policy) -> list[str]:
    """The metrics summed per arm and epoch besides the primary one: the declared secondary
    metrics, the guardrail metrics and the built-ins, each once."""
    names = [*(exp.metrics or []), *(g.metric for g in policy.guardrails), *BUILTIN_METRICS]
    return [m for m in dict.fromkeys(names) if m != exp.metric]


def fold(s: Session, exp: ExperimentRow, policy: Policy, seq: int, window: float) -> None:
    """Per-arm, per-epoch sums of every tracked metric over the batch's decisions, each value
    capped at the quantile fixed from the metric's first values (`stats.metric_cap`)."""
    names = tracked_metrics(exp, policy)
    if not names:
        return
    state = dict(exp.policy_state or {})
    caps: dict[str, float | None] = dict(state.get("metric_caps") or {})
    fb = FeedbackRow
    on = fb.decision_id == DecisionRow.id
    batch = (
        DecisionRow.experiment_id == exp.id,
        DecisionRow.counted_in == seq,
        fb.received_at <= DecisionRow.decided_at + window,
    )
    missing = [m for m in names if caps.get(m) is None]
    if missing:
        first: dict[str, list[float]] = {}
        for metric, raw in s.execute(
            select(fb.metric, fb.reward).join(DecisionRow, on).where(*batch, fb.metric.in_(missing))
        ).all():
            first.setdefault(metric, []).append(float(raw))
        for metric, values in first.items():
            caps[metric] = stats.metric_cap(values)
        state["metric_caps"] = caps
        exp.policy_state = state
    existing: dict[Any, ArmMetricRow] = {
        (r.metric, r.arm, r.epoch): r
        for r in s.scalars(select(ArmMetricRow).where(ArmMetricRow.experiment_id == exp.id))
    }
    for metric in names:
        cap = caps.get(metric)
        value: Any = fb.reward if cap is None else case((fb.reward > cap, cap), else_=fb.reward)
        q = (
            select(
                DecisionRow.arm,
                DecisionRow.epoch,
                func.count(fb.id),
                func.coalesce(func.sum(value), 0.0),
                func.coalesce(func.sum(value * value), 0.0),
            )
            .join(fb, on)
            .where(*batch, fb.metric == metric)
            .group_by(DecisionRow.arm, DecisionRow.epoch)
        )
        for arm, epoch, n, total, squares in s.execute(q).all():
            row = existing.get((metric, arm, epoch))
            if row is None:
                row = ArmMetricRow(
                    experiment_id=exp.id, metric=metric, arm=arm, epoch=epoch, n=0, s=0.0, ss=0.0
                )
                s.add(row)
                existing[(metric, arm, epoch)] = row
            row.n += int(n)
            row.s += float(total)
            row.ss += float(squares)


def call_sums(s: Session, exp: ExperimentRow) -> dict[str, list[tuple[Any, ...]]]:
    """The built-in metrics of the gateway's own calls, from its per-arm, per-epoch sums
    (`calls.py`): they join the sums of the same metrics sent as feedback."""
    out: dict[str, list[tuple[Any, ...]]] = {}
    for r in s.scalars(select(CallStatsRow).where(CallStatsRow.experiment_id == exp.id)):
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
