"""The experiment as the API, the CLI and the dashboard read it: per-arm figures from the stored
snapshot and sums, the eval gate, the guarded rollout, and the per-epoch history for charts."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from promptops.db.models import ArmEpochRow, ArmRow, EpochRow, ExperimentRow, PromptRow, VersionRow
from promptops.domain import LIVE_STATUSES, ExperimentStatus, Policy, RewardKind, Strategy, parse_policy
from promptops.services.calls import arm_usage
from promptops.services.evalgate import EvalCatalog, gate_of, gate_status
from promptops.services.views import ArmView, EpochView, EvalGateView, ExperimentView, Snapshot


def arm_rows(s: Session, experiment_id: int) -> list[ArmRow]:
    """An experiment's arm rows in arm order."""
    return list(s.scalars(select(ArmRow).where(ArmRow.experiment_id == experiment_id).order_by(ArmRow.idx)))


def experiment_view(s: Session, exp: ExperimentRow, catalog: EvalCatalog) -> ExperimentView:
    """An experiment with its per-arm figures (the API's shape)."""
    name = s.scalar(select(PromptRow.name).where(PromptRow.id == exp.prompt_id))
    arms = arm_rows(s, exp.id)
    versions = {
        v.id: v for v in s.scalars(select(VersionRow).where(VersionRow.id.in_([a.version_id for a in arms])))
    }
    n_by_arm: dict[int, int] = {}
    for arm, total in s.execute(
        select(ArmEpochRow.arm, func.sum(ArmEpochRow.n))
        .where(ArmEpochRow.experiment_id == exp.id)
        .group_by(ArmEpochRow.arm)
    ):
        n_by_arm[arm] = int(total or 0)
    snapshot = Snapshot.from_dict(exp.snapshot)
    raw = exp.snapshot or {}
    snap_arms = raw.get("arms") or []
    snap_metrics: dict[str, list[dict[str, Any]]] = raw.get("metrics") or {}
    verdicts: list[dict[str, Any]] = raw.get("guardrails") or []
    usage = arm_usage(s, exp.id, len(arms))
    out_arms = []
    for a in arms:
        v = versions[a.version_id]
        snap = snapshot.arm(a.idx)
        out_arms.append(
            ArmView(
                version=v.number,
                variant=v.variant,
                decisions=a.decisions,
                feedback=a.feedback,
                reward_sum=a.reward_sum,
                n=n_by_arm.get(a.idx, 0),
                mean=snap.mean,
                sd=snap.sd,
                ci_low=snap.ci_low,
                ci_high=snap.ci_high,
                p_best=snap.p_best,
                expected_loss=snap.expected_loss,
                p_beats_control=snap.p_beats_control,
                weight=(
                    exp.weights[a.idx] if exp.status in LIVE_STATUSES and a.idx < len(exp.weights) else 0.0
                ),
                is_control=a.idx == exp.control_arm,
                **usage[a.idx].as_dict(),
                units=int((snap_arms[a.idx] if a.idx < len(snap_arms) else {}).get("units", 0)),
                new_units=int((snap_arms[a.idx] if a.idx < len(snap_arms) else {}).get("new_units", 0)),
                metrics={m: per_arm[a.idx] for m, per_arm in snap_metrics.items() if a.idx < len(per_arm)},
                guardrails=[
                    {
                        k: g[k]
                        for k in (
                            "metric",
                            "state",
                            "diff",
                            "diff_low",
                            "diff_high",
                            "relative",
                            "sentence",
                        )
                    }
                    for g in verdicts
                    if g.get("arm") == a.idx
                ],
            )
        )
    winner = None
    if exp.winner_arm is not None and exp.winner_arm < len(arms):
        winner = versions[arms[exp.winner_arm].version_id].number
    policy = parse_policy(exp.policy)
    control_version = out_arms[exp.control_arm].version if out_arms else None
    gate_row = gate_of(s, exp.id)
    gate = None
    if gate_row is not None:
        status = gate_status(s, exp, gate_row.eval_name, catalog)
        gate = EvalGateView(
            eval=status.eval,
            passed=status.passed,
            waiting=status.waiting,
            reasons=status.reasons,
            message=status.message,
        )
    waiting = (
        gate.message
        if gate is not None and not gate.passed and exp.status == ExperimentStatus.DRAFT
        else None
    )
    return ExperimentView(
        id=exp.id,
        prompt=name or "",
        status=ExperimentStatus(exp.status),
        winner=winner,
        metric=exp.metric,
        reward=RewardKind(exp.reward),
        strategy=Strategy(exp.strategy),
        auto_promote=exp.auto_promote,
        source=exp.source,
        control_version=control_version,
        production_at_start=exp.production_version_at_start,
        control_is_production=(
            None
            if exp.production_version_at_start is None
            else control_version == exp.production_version_at_start
        ),
        created_at=exp.created_at,
        started_at=exp.started_at,
        ended_at=exp.ended_at,
        end_reason=exp.end_reason,
        epoch=exp.epoch,
        matured=exp.matured_total,
        last_update_at=exp.last_update_at,
        policy=policy.to_dict(),
        missing_feedback=policy.missing_feedback_for(exp.reward),
        reason=waiting or snapshot.reason or _waiting(exp, policy),
        srm_alarm=snapshot.srm_alarm,
        srm_p=snapshot.srm_p,
        value_remaining=snapshot.value_remaining,
        checks_done=snapshot.checks_done,
        requires_eval=gate_row.eval_name if gate_row is not None else None,
        gate=gate,
        metrics=list(exp.metrics or []),
        flags=[f["flag"] for f in raw.get("flags") or []],
        safety=list(raw.get("flags") or []),
        stop_reason=raw.get("stop_reason"),
        holdout=_holdout_public(exp, versions, arms),
        arms=tuple(out_arms),
    )


def _holdout_public(
    exp: ExperimentRow, versions: dict[int, VersionRow], arms: Sequence[ArmRow]
) -> dict[str, Any] | None:
    """The guarded rollout: new and old versions, its start and the latest rollback test."""
    hold = exp.holdout
    if not hold:
        return None
    latest = (exp.snapshot or {}).get("holdout") or {}
    return {
        "new_version": versions[arms[int(hold["new"])].version_id].number,
        "old_version": versions[arms[int(hold["old"])].version_id].number,
        "started_at": hold.get("started_at"),
        "p_old_better": latest.get("p_old_better"),
        "reason": latest.get("reason"),
    }


def _waiting(exp: ExperimentRow, policy: Policy) -> str | None:
    if exp.status != ExperimentStatus.RUNNING:
        return None
    return (
        f"collecting outcomes: each counts {policy.attribution_window_hours:g} h after "
        f"its decision; burn-in needs {policy.min_samples_per_arm:,} per arm and "
        f"{policy.min_hours:g} h"
    )


def epoch_history(s: Session, experiment_id: int) -> list[EpochView]:
    """Per-epoch weights, P(best) and means, oldest first (for charts)."""
    eps = s.scalars(
        select(EpochRow).where(EpochRow.experiment_id == experiment_id).order_by(EpochRow.idx)
    ).all()
    assigned: dict[int, list[int]] = {}
    for r in s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == experiment_id)):
        row = assigned.setdefault(r.epoch, [])
        while len(row) <= r.arm:
            row.append(0)
        row[r.arm] = r.assigned
    return [
        EpochView(
            epoch=e.idx,
            started_at=e.started_at,
            weights=e.weights,
            matured_at_start=e.matured_at_start,
            p_best=(e.summary or {}).get("p_best"),
            mean=(e.summary or {}).get("mean"),
            checked=(e.summary or {}).get("checked", False),
            holdout=bool((e.summary or {}).get("holdout", False)),
            assigned=assigned.get(e.idx, []),
        )
        for e in eps
    ]
