"""The policy step run at every epoch boundary: burn-in, allocation, decision checks, limit and SRM.

The server and the simulator both call `step`; nothing here reads a clock or a database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

import numpy as np

from promptops.domain import Policy
from promptops.stats.allocation import equal_weights, normalize_fixed, thompson_weights
from promptops.stats.estimator import EpochData, Summary, summarize

CONTINUE = "continue"
PROMOTE = "promote"
KEEP_CONTROL = "keep_control"
INCONCLUSIVE = "inconclusive"
ACTIONS: tuple[str, ...] = (CONTINUE, PROMOTE, KEEP_CONTROL, INCONCLUSIVE)


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between epochs (persisted by services as JSON)."""

    checks_done: int = 0
    burn_in_done: bool = False
    srm_alarm: bool = False
    next_check_at: float = 0.0  # matured outcomes when the next check is due (set at burn-in end)

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-able dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PolicyState:
        """Rebuild a state from `to_dict` output (unknown keys ignored, missing ones default)."""
        data = data or {}
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})


@dataclass(frozen=True)
class StepResult:
    """What to do at an epoch boundary: the next weights, the action and why."""

    weights: np.ndarray
    action: str
    winner: int | None
    state: PolicyState
    summary: Summary
    checked: bool
    reason: str


def initial_weights(
    k: int, *, strategy: str = "thompson", fixed_weights: np.ndarray | Sequence[float] | None = None
) -> np.ndarray:
    """The weights of the first epoch: an even split, or the fixed weights."""
    if strategy == "fixed":
        return normalize_fixed(k, fixed_weights)
    return equal_weights(k)


def new_rng(seed: int | None = None) -> np.random.Generator:
    """A random generator for the allocation draws (fresh entropy unless seeded)."""
    return np.random.default_rng(seed)


def should_start_epoch(*, matured_in_epoch: int, minutes_in_epoch: float, policy: Policy) -> bool:
    """Whether enough outcomes matured and enough time passed to close the current epoch."""
    return matured_in_epoch >= policy.update_every and minutes_in_epoch >= policy.min_update_minutes


def check_interval(policy: Policy) -> float:
    """Matured outcomes between two decision checks: max_decisions / max_checks."""
    return policy.max_decisions / max(policy.max_checks, 1)


def promotion_threshold(policy: Policy, arms: int) -> float:
    """The P(beats control) a challenger needs among `arms` arms: 1 - alpha / (arms - 1)."""
    return 1.0 - policy.alpha / max(arms - 1, 1)


def _pct(p: float) -> str:
    text = f"{100.0 * p:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None and i < len(names) else f"arm {i}"


def decide(summary: Summary, *, control: int, policy: Policy,
           names: Sequence[str] | None = None) -> tuple[str, int | None, str]:
    """The stopping rule at one check: promote, keep the control, or continue, and why."""
    k = summary.mean.size
    w = int(np.argmin(summary.expected_loss))
    loss = float(summary.expected_loss[w])
    mean = float(summary.mean[w])
    loss_ok = loss <= policy.loss_threshold * mean
    loss_text = f"expected loss {_pct(loss / mean) if mean > 0 else 'inf'} of its mean"
    if w != control:
        need = promotion_threshold(policy, k)
        p = float(summary.p_beats_control[w])
        if p >= need and loss_ok:
            return PROMOTE, w, f"{_name(names, w)} beats the control with {_pct(p)} (needs {_pct(need)})"
        if p < need:
            return CONTINUE, None, f"needs {_pct(need)} to promote; {_name(names, w)} is at {_pct(p)}"
        return CONTINUE, None, (
            f"{_name(names, w)} clears {_pct(need)} but its {loss_text} is above "
            f"{_pct(policy.loss_threshold)}"
        )
    p = float(summary.p_best[control])
    if p >= policy.control_p_best and loss_ok:
        return KEEP_CONTROL, control, f"the control is best with P(best) {_pct(p)}"
    if p < policy.control_p_best:
        return CONTINUE, None, (
            f"keeping the control needs P(best) {_pct(policy.control_p_best)}; it is at {_pct(p)}"
        )
    return CONTINUE, None, (
        f"the control leads but its {loss_text} is above {_pct(policy.loss_threshold)}"
    )


def _burn_in_reason(per_arm: np.ndarray, hours: float, policy: Policy,
                    names: Sequence[str] | None) -> str:
    a = int(np.argmin(per_arm))
    if per_arm[a] < policy.min_samples_per_arm:
        return (
            f"burn-in: {_name(names, a)} has {int(per_arm[a]):,} of {policy.min_samples_per_arm:,} "
            "matured outcomes"
        )
    return f"burn-in: {hours:.1f} of {policy.min_hours:g} hours"


def step(
    data: EpochData,
    *,
    control: int,
    state: PolicyState,
    policy: Policy,
    rng: np.random.Generator,
    hours_elapsed: float,
    decisions_total: int,
    strategy: str = "thompson",
    fixed_weights: np.ndarray | Sequence[float] | None = None,
    auto_promote: bool = True,
    names: Sequence[str] | None = None,
) -> StepResult:
    """Run the policy at an epoch boundary: SRM, burn-in, decision check, limit and next weights."""
    k = data.arms
    if k < 2:
        raise ValueError("an experiment needs at least two arms")
    if not 0 <= control < k:
        raise ValueError(f"control {control} is not an arm index below {k}")
    if strategy not in ("thompson", "fixed"):
        raise ValueError(f"unknown strategy {strategy!r}")
    summary = summarize(data, control=control, policy=policy)
    per_arm = np.asarray(data.n, dtype=float).sum(axis=1)
    matured = float(per_arm.sum())

    new_alarm = summary.srm_p is not None and summary.srm_p < policy.srm_p_value
    alarm = state.srm_alarm or new_alarm
    burn_in = state.burn_in_done or (
        per_arm.min() >= policy.min_samples_per_arm and hours_elapsed >= policy.min_hours
    )
    at_limit = decisions_total >= policy.max_decisions or hours_elapsed >= policy.max_days * 24.0
    interval = check_interval(policy)
    checks_done = state.checks_done
    # the check grid starts when burn-in ends: one check per interval matured outcomes after it
    next_check_at = state.next_check_at if state.burn_in_done else matured + interval
    due_at = next_check_at

    action, winner, checked = CONTINUE, None, False
    if not burn_in:
        reason = _burn_in_reason(per_arm, hours_elapsed, policy, names)
    elif strategy == "fixed" and not auto_promote:
        reason = "fixed weights without automatic promotion"
    elif checks_done >= policy.max_checks:
        reason = f"all {policy.max_checks} decision checks spent; waiting for the limit"
    elif matured >= due_at or at_limit:
        checked = True
        checks_done += 1
        next_check_at += (math.floor(max(matured - next_check_at, 0.0) / interval) + 1) * interval
        verdict, win, reason = decide(summary, control=control, policy=policy, names=names)
        if verdict != CONTINUE and alarm:
            reason = f"promotion frozen by the sample ratio mismatch ({reason})"
        else:
            action, winner = verdict, win
    else:
        lead = int(np.argmax(summary.p_best))
        reason = (
            f"next decision check at {due_at:,.0f} matured outcomes ({matured:,.0f} now); "
            f"{_name(names, lead)} leads with P(best) {_pct(float(summary.p_best[lead]))}"
        )
    if action == CONTINUE and at_limit:
        action = INCONCLUSIVE
        reason = f"limit reached without a decision: {reason}"
    if alarm:
        srm = f"p = {summary.srm_p:.2g}" if new_alarm else "raised earlier"
        reason = f"sample ratio mismatch ({srm}); {reason}"

    if action != CONTINUE:
        weights = np.zeros(k)
        weights[control if winner is None else winner] = 1.0
    elif strategy == "fixed":
        weights = normalize_fixed(k, fixed_weights)
    elif not burn_in:
        weights = equal_weights(k)
    else:
        weights = thompson_weights(summary.mean, summary.sd, policy=policy, rng=rng)

    new_state = replace(
        state,
        checks_done=checks_done,
        burn_in_done=bool(burn_in),
        srm_alarm=bool(alarm),
        next_check_at=float(next_check_at),
    )
    return StepResult(
        weights=weights,
        action=action,
        winner=winner,
        state=new_state,
        summary=summary,
        checked=checked,
        reason=reason,
    )
