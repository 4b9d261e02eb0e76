"""What the policy reads and what the experiment shows: the stored sums as `stats.EpochData`, and
the snapshot (per-arm figures, safety flags with their evidence, metric intervals, guardrail
verdicts) kept in the experiment row and in the audit log as the evidence of an end."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from promptops import stats
from promptops.db.models import ArmEpochRow, ArmRow, EpochRow, ExperimentRow, VersionRow
from promptops.domain import Policy
from promptops.services import metricsums, validity


def epoch_data(s: Session, exp: ExperimentRow, k: int, policy: Policy, now: float) -> stats.EpochData:
    """The sums of every epoch so far, with the feedback counts and the metrics' sums."""
    e = exp.epoch + 1
    cells = [
        (r.arm, r.epoch, r.n, r.s, r.ss, r.assigned)
        for r in s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id))
    ]
    weights = [
        (ep.idx, ep.weights) for ep in s.scalars(select(EpochRow).where(EpochRow.experiment_id == exp.id))
    ]
    base = stats.EpochData.from_cells(k, e, cells, weights)
    metrics = metricsums.metric_data(s, exp, policy, k, e)
    return stats.EpochData(
        n=base.n,
        s=base.s,
        ss=base.ss,
        assigned=base.assigned,
        weights=base.weights,
        feedback=validity.counts(s, exp, k),
        metrics=metrics or None,
    )


def arm_names(s: Session, arms: list[ArmRow]) -> list[str]:
    """How flags and verdicts name the arms: `v2 (terse)`."""
    rows = {
        v.id: v for v in s.scalars(select(VersionRow).where(VersionRow.id.in_([a.version_id for a in arms])))
    }
    return [f"v{rows[a.version_id].number} ({rows[a.version_id].variant})" for a in arms]


def snapshot(
    exp: ExperimentRow,
    summary: Any,
    data: stats.EpochData,
    names: Sequence[str],
    *,
    reason: str,
    result: Any,
    at: float,
) -> dict[str, Any]:
    """The experiment's figures after an update (`result` is the step's, None between epochs)."""
    units = data.n.sum(axis=1)
    new_units = data.assigned.sum(axis=1)
    arms = []
    for i in range(len(summary.mean)):
        arms.append(
            {
                "mean": _float(summary.mean[i]),
                "ci_low": _float(summary.ci_low[i]),
                "ci_high": _float(summary.ci_high[i]),
                "p_best": _float(summary.p_best[i]),
                "expected_loss": _float(summary.expected_loss[i]),
                "p_beats_control": _float(summary.p_beats_control[i]),
                "sd": _float(summary.sd[i]),
                "units": int(units[i]) if i < units.size else 0,
                "new_units": int(new_units[i]) if i < new_units.size else 0,
            }
        )
    state = result.state if result is not None else stats.PolicyState.from_dict(exp.policy_state or {})
    # A report figure, not a stopping input: a fixed seed keeps it stable between refreshes.
    remaining = stats.value_remaining(summary.mean, summary.sd, rng=stats.new_rng(exp.id))
    return {
        "arms": arms,
        "reason": reason,
        "srm_p": _float(summary.srm_p),
        "value_remaining": _float(remaining),
        "srm_alarm": bool(state.srm_alarm),
        "checks_done": int(state.checks_done),
        "flags": safety_flags(state, summary, data, names),
        "metrics": metric_report(data),
        "guardrails": (
            _guardrails(result.guardrails)
            if result is not None
            else (exp.snapshot or {}).get("guardrails", [])
        ),
        "stop_reason": None if result is None or result.stop_reason is None else str(result.stop_reason),
        "threshold": None if result is None else _float(result.threshold),
        "at": at,
    }


def safety_flags(
    state: stats.PolicyState, summary: Any, data: stats.EpochData, names: Sequence[str]
) -> list[dict[str, Any]]:
    """The raised safety flags, each with its sentence and the counts behind it."""
    out: list[dict[str, Any]] = []
    if state.srm_alarm:
        out.append(
            {
                "flag": "srm",
                "sentence": (
                    "sample ratio mismatch: new units per arm do not match the weights in force; "
                    "promotion is frozen (check that every arm's decisions are recorded)"
                ),
                "evidence": {
                    "p_value": _float(summary.srm_p),
                    "new_units": {
                        names[i] if i < len(names) else str(i): int(v)
                        for i, v in enumerate(data.assigned.sum(axis=1))
                    },
                },
            }
        )
    if state.feedback_alarm:
        fb = data.feedback
        evidence: dict[str, Any] = {}
        if fb is not None:
            for i in range(len(fb.eligible)):
                evidence[names[i] if i < len(names) else str(i)] = {
                    "decisions": int(fb.eligible[i]),
                    "on_time": int(fb.on_time[i]),
                    "late": int(fb.late[i]),
                }
        out.append({"flag": "feedback", "sentence": state.feedback_reason, "evidence": evidence})
    return out


def metric_report(data: stats.EpochData) -> dict[str, list[dict[str, Any]]]:
    """Per metric, per arm: {mean, ci_low, ci_high, n}."""
    out: dict[str, list[dict[str, Any]]] = {}
    for metric, md in sorted((data.metrics or {}).items()):
        out[metric] = [
            {"mean": _float(e.mean), "ci_low": _float(e.ci_low), "ci_high": _float(e.ci_high), "n": e.n}
            for e in stats.metric_estimates(md)
        ]
    return out


def _guardrails(verdicts: Sequence[Any]) -> list[dict[str, Any]]:
    return [
        {
            "arm": v.arm,
            "metric": v.metric,
            "state": str(v.state),
            "diff": _float(v.diff),
            "diff_low": _float(v.diff_low),
            "diff_high": _float(v.diff_high),
            "relative": v.relative,
            "sentence": v.sentence,
        }
        for v in verdicts
    ]


def _float(x: Any) -> float | None:
    if x is None:
        return None
    f = float(x)
    return f if math.isfinite(f) else None


def floats(xs: Any) -> list[float | None]:
    """Finite floats, None for NaN and infinities (JSON has neither)."""
    return [_float(x) for x in xs]
