"""The policy step run at every epoch boundary: safety checks, burn-in, allocation, decision checks,
guardrails, the early stops and the limit.

The server and the simulator both call `step`; nothing here reads a clock or a database.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields, replace
from statistics import NormalDist
from typing import Any

import numpy as np

from promptops.domain import GuardrailState, Policy, SafetyFlag, StatsAction, StopReason
from promptops.stats.allocation import equal_weights, normalize_fixed, thompson_weights
from promptops.stats.estimator import CI_Z, EpochData, Summary, summarize
from promptops.stats.guardrails import GuardrailVerdict, guardrail_verdicts
from promptops.stats.special import norm_cdf, norm_cdf_scalar
from promptops.stats.spending import (
    information_fraction,
    promotion_level,
    safety_fraction,
    safety_level,
)
from promptops.stats.validity import feedback_finding

CONTINUE = StatsAction.CONTINUE
PROMOTE = StatsAction.PROMOTE
KEEP_CONTROL = StatsAction.KEEP_CONTROL
INCONCLUSIVE = StatsAction.INCONCLUSIVE
ACTIONS: tuple[str, ...] = tuple(StatsAction)
_GH_X, _GH_W = np.polynomial.hermite_e.hermegauss(48)
# The "no meaningful winner" horizon rule stops once no challenger has more than this predictive
# probability of clearing the promotion boundary by the limit (see `promotion_chance`).
FUTILITY = 0.05
_STD_NORMAL = NormalDist()


@dataclass(frozen=True)
class PolicyState:
    """What the policy remembers between epochs (persisted by services as JSON)."""

    checks_done: int = 0
    burn_in_done: bool = False
    srm_alarm: bool = False
    next_check_at: float = 0.0  # matured outcomes when the next check is due (set at burn-in end)
    looks: tuple[float, ...] = ()  # information fractions of the checks done (the boundary's input)
    safety_t: float = 0.0  # the safety budget's fraction at the last safety test
    feedback_alarm: bool = False
    feedback_reason: str = ""
    blocked: tuple[int, ...] = ()  # challengers a guardrail blocked for good

    def to_dict(self) -> dict[str, Any]:
        """The state as a JSON-able dict."""
        out = asdict(self)
        out["looks"] = list(self.looks)
        out["blocked"] = list(self.blocked)
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any] | None) -> PolicyState:
        """Rebuild a state from `to_dict` output (unknown keys ignored, missing ones default)."""
        data = dict(data or {})
        for key in ("looks", "blocked"):
            if key in data:
                data[key] = tuple(data[key])
        return cls(**{f.name: data[f.name] for f in fields(cls) if f.name in data})

    @property
    def frozen(self) -> bool:
        """Whether a safety flag froze promotion."""
        return self.srm_alarm or self.feedback_alarm

    @property
    def flags(self) -> tuple[SafetyFlag, ...]:
        """The safety flags raised so far."""
        return tuple(
            f
            for f, on in ((SafetyFlag.SRM, self.srm_alarm), (SafetyFlag.FEEDBACK, self.feedback_alarm))
            if on
        )


@dataclass(frozen=True)
class StepResult:
    """What to do at an epoch boundary: the next weights, the action and why."""

    weights: np.ndarray
    action: StatsAction
    winner: int | None
    state: PolicyState
    summary: Summary
    checked: bool
    reason: str
    stop_reason: StopReason | None = None
    threshold: float | None = None  # P(beats control) a challenger needed at this check
    guardrails: tuple[GuardrailVerdict, ...] = ()


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


def check_interval(policy: Policy) -> float:
    """Matured outcomes between two decision checks: max_decisions / max_checks."""
    return policy.max_decisions / max(policy.max_checks, 1)


def _pct(p: float) -> str:
    text = f"{100.0 * p:.3f}".rstrip("0").rstrip(".")
    return f"{text}%"


def _name(names: Sequence[str] | None, i: int) -> str:
    return names[i] if names is not None and i < len(names) else f"arm {i}"


def promotion_threshold(policy: Policy, arms: int, looks: Sequence[float] | None = None) -> float:
    """P(theta_w > theta_control) a challenger needs at the last of `looks` (information
    fractions of the checks so far, this one included): the Pocock-type spending boundary of
    alpha / (K - 1). Without looks: the first of max_checks evenly spaced checks, the strictest."""
    if looks is None:
        looks = (1.0 / max(policy.max_checks, 1),)
    return promotion_level(tuple(looks), alpha=policy.alpha, arms=arms)


def value_remaining_vs_control(
    mean: np.ndarray, sd: np.ndarray, *, control: int, arms: Sequence[int], quantile: float = 0.95
) -> float:
    """The `quantile` of max(0, max_j theta_j - theta_control) over the challengers `arms`, by
    Gauss-Hermite quadrature over the control and bisection (no Monte Carlo)."""
    if not arms:
        return 0.0
    mc, sc = float(mean[control]), float(sd[control])
    u = mc + sc * _GH_X
    w = _GH_W / _GH_W.sum()
    mu = np.asarray([mean[a] for a in arms], dtype=float)
    sg = np.asarray([sd[a] for a in arms], dtype=float)

    def cdf(x: float) -> float:
        z = (u[None, :] + x - mu[:, None]) / sg[:, None]
        return float(np.prod(norm_cdf(z), axis=0) @ w)

    if cdf(0.0) >= quantile:
        return 0.0
    lo, hi = 0.0, float(np.max(mu - mc) + 10.0 * (np.max(sg) + sc))
    for _ in range(50):
        mid = 0.5 * (lo + hi)
        if cdf(mid) >= quantile:
            hi = mid
        else:
            lo = mid
    return hi


def promotion_chance(
    summary: Summary,
    *,
    control: int,
    arms: Sequence[int],
    per_arm: np.ndarray,
    units_left: float,
    alpha: float,
) -> float:
    """An upper bound on the chance that a challenger in `arms` can still be promoted by the limit:
    the largest posterior predictive probability that its difference from the control ends above
    the promotion boundary.

    Each challenger is given its best case: all the `units_left` go to it and the control, half
    each, and its variance shrinks as n / (n + units_left / 2). The boundary is taken at its
    floor, z = Phi^-1(1 - alpha / (K - 1)): no look of the spending boundary is lower (were one
    lower, that look alone would spend more than alpha(t) - alpha(t_prev)). With D the difference's
    posterior mean, s its sd now and s_end at the limit, the final estimate is predicted as
    N(D, s^2 - s_end^2), so the chance is 1 - Phi((z s_end - D) / sqrt(s^2 - s_end^2)).
    """
    if not arms or units_left <= 0:
        return 1.0
    k = summary.mean.size
    z = _STD_NORMAL.inv_cdf(1.0 - alpha / max(k - 1, 1))
    sd = np.asarray(summary.sd, dtype=float)
    n = np.maximum(np.asarray(per_arm, dtype=float), 1.0)
    add = 0.5 * units_left
    var_c_end = sd[control] ** 2 * n[control] / (n[control] + add)
    best = 0.0
    for a in arms:
        s2_now = sd[a] ** 2 + sd[control] ** 2
        s2_end = sd[a] ** 2 * n[a] / (n[a] + add) + var_c_end
        spread = math.sqrt(max(s2_now - s2_end, 1e-300))
        d = float(summary.mean[a] - summary.mean[control])
        best = max(best, 1.0 - norm_cdf_scalar((z * math.sqrt(s2_end) - d) / spread))
    return best


def decide(
    summary: Summary,
    *,
    control: int,
    policy: Policy,
    need: float | None = None,
    names: Sequence[str] | None = None,
    blocked: Sequence[int] = (),
    pending: Sequence[int] = (),
) -> tuple[StatsAction, int | None, str]:
    """The promotion rule at one check: promote, keep the control, or continue, and why.

    `need` is the P(beats control) a challenger needs (default: this check's spending boundary as
    if it were the only look); blocked challengers are never the winner; a challenger with a
    pending guardrail waits.
    """
    k = summary.mean.size
    if need is None:
        need = promotion_threshold(policy, arms=k, looks=(1.0,))
    loss_all = np.asarray(summary.expected_loss, dtype=float).copy()
    loss_all[list(blocked)] = np.inf
    w = int(np.argmin(loss_all))
    loss = float(summary.expected_loss[w])
    mean = float(summary.mean[w])
    loss_ok = loss <= policy.loss_threshold * mean
    loss_text = f"expected loss {_pct(loss / mean) if mean > 0 else 'inf'} of its mean"
    if w != control:
        p = float(summary.p_beats_control[w])
        if p >= need and loss_ok:
            if w in pending:
                return (
                    CONTINUE,
                    None,
                    (f"{_name(names, w)} beats the control with {_pct(p)} but a guardrail is still pending"),
                )
            return PROMOTE, w, f"{_name(names, w)} beats the control with {_pct(p)} (needs {_pct(need)})"
        if p < need:
            return CONTINUE, None, f"needs {_pct(need)} to promote; {_name(names, w)} is at {_pct(p)}"
        return (
            CONTINUE,
            None,
            (
                f"{_name(names, w)} clears {_pct(need)} but its {loss_text} is above "
                f"{_pct(policy.loss_threshold)}"
            ),
        )
    p = float(summary.p_best[control])
    if p >= policy.control_p_best and loss_ok:
        return KEEP_CONTROL, control, f"the control is best with P(best) {_pct(p)}"
    if p < policy.control_p_best:
        return (
            CONTINUE,
            None,
            (f"keeping the control needs P(best) {_pct(policy.control_p_best)}; it is at {_pct(p)}"),
        )
    return CONTINUE, None, (f"the control leads but its {loss_text} is above {_pct(policy.loss_threshold)}")


def early_stop(
    summary: Summary,
    *,
    control: int,
    policy: Policy,
    live: Sequence[int],
    per_arm: np.ndarray | None = None,
    units_left: float = 0.0,
) -> tuple[StopReason, str] | None:
    """The stops without a winner: every live challenger equivalent to the control, no challenger
    plausibly better by a meaningful amount (value remaining), none that could still be promoted
    by the limit (`promotion_chance` at most FUTILITY, given the units per arm `per_arm` and the
    `units_left` before the limit), or none left."""
    if not live:
        return StopReason.GUARDRAILS, "every challenger is blocked by a guardrail"
    mc = float(summary.mean[control])
    scale = abs(mc)
    sd = summary.sd
    if policy.equivalence_margin > 0 and scale > 0:
        margin = policy.equivalence_margin * scale
        ok = all(
            abs(float(summary.mean[a]) - mc) + CI_Z * math.hypot(float(sd[a]), float(sd[control])) <= margin
            for a in live
        )
        if ok:
            return StopReason.EQUIVALENT, (
                f"equivalent: every challenger's 95% interval for its difference from the control "
                f"lies within +-{_pct(policy.equivalence_margin)} of the control's mean"
            )
    if policy.value_remaining_stop > 0 and scale > 0:
        vr = value_remaining_vs_control(summary.mean, sd, control=control, arms=list(live))
        if vr <= policy.value_remaining_stop * scale:
            return StopReason.NO_MEANINGFUL_WINNER, (
                f"no meaningful winner: the 95th percentile of the value remaining over the "
                f"control is {_pct(vr / scale)}, under {_pct(policy.value_remaining_stop)}"
            )
        if per_arm is not None and units_left > 0:
            chance = promotion_chance(
                summary,
                control=control,
                arms=live,
                per_arm=per_arm,
                units_left=units_left,
                alpha=policy.alpha,
            )
            if chance <= FUTILITY:
                return StopReason.NO_MEANINGFUL_WINNER, (
                    f"no meaningful winner: even with all the traffic left before the limit, no "
                    f"challenger has more than {_pct(chance)} chance of clearing the promotion boundary"
                )
    return None


def _burn_in_reason(per_arm: np.ndarray, hours: float, policy: Policy, names: Sequence[str] | None) -> str:
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
    reward_kind: str = "binary",
    matured_decisions: float | None = None,
) -> StepResult:
    """Run the policy at an epoch boundary: safety checks, burn-in, decision check, guardrails,
    early stops, limit and next weights. `matured_decisions` is the information count (matured
    decisions; default: the units counted in `data`)."""
    k = data.arms
    if k < 2:
        raise ValueError("an experiment needs at least two arms")
    if not 0 <= control < k:
        raise ValueError(f"control {control} is not an arm index below {k}")
    if strategy not in ("thompson", "fixed"):
        raise ValueError(f"unknown strategy {strategy!r}")
    summary = summarize(data, control=control, policy=policy)
    per_arm = np.asarray(data.n, dtype=float).sum(axis=1)
    matured = float(per_arm.sum()) if matured_decisions is None else float(matured_decisions)

    # Safety: each epoch's tests spend the budget accrued since the last ones.
    t_safe = max(safety_fraction(decisions_total, hours_elapsed, policy), state.safety_t)
    srm_level = safety_level(policy.srm_p_value, state.safety_t, t_safe)
    new_srm = summary.srm_p is not None and srm_level > 0 and summary.srm_p < srm_level
    srm_alarm = state.srm_alarm or new_srm
    fb_alarm, fb_reason = state.feedback_alarm, state.feedback_reason
    if not fb_alarm and data.feedback is not None:
        finding = feedback_finding(
            data.feedback,
            level=safety_level(policy.feedback_p_value, state.safety_t, t_safe),
            ignore_missing=policy.missing_feedback_for(reward_kind) == "ignore",
            control=control,
            names=names,
        )
        if finding is not None:
            fb_alarm, fb_reason = True, f"{finding.sentence} (p = {finding.p_value:.2g})"
    frozen = srm_alarm or fb_alarm

    # Guardrails: a block is for good; a pending one holds promotion.
    verdicts: list[GuardrailVerdict] = []
    for rule in policy.guardrails:
        metric = (data.metrics or {}).get(rule.metric)
        if metric is not None:
            verdicts.extend(guardrail_verdicts(rule, metric, control=control, names=names))
    blocked = set(state.blocked) | {v.arm for v in verdicts if v.state == GuardrailState.BLOCKED}
    pending = {v.arm for v in verdicts if v.state == GuardrailState.PENDING}
    if policy.guardrails:
        seen = {(v.arm, v.metric) for v in verdicts}
        pending |= {
            a for a in range(k) if a != control for g in policy.guardrails if (a, g.metric) not in seen
        }
    live = [a for a in range(k) if a != control and a not in blocked]

    burn_in = state.burn_in_done or (
        per_arm.min() >= policy.min_samples_per_arm and hours_elapsed >= policy.min_hours
    )
    at_limit = decisions_total >= policy.max_decisions or hours_elapsed >= policy.max_days * 24.0
    interval = check_interval(policy)
    checks_done = state.checks_done
    looks = state.looks
    # the check grid starts when burn-in ends: one check per interval matured outcomes after it
    next_check_at = state.next_check_at if state.burn_in_done else matured + interval
    due_at = next_check_at
    # late feedback needs time to show before any check can act on the outcomes
    settled = hours_elapsed >= 2.0 * policy.attribution_window_hours
    t_now = information_fraction(matured, policy)

    action, winner, checked = CONTINUE, None, False
    stop: StopReason | None = None
    need: float | None = None
    if not burn_in:
        reason = _burn_in_reason(per_arm, hours_elapsed, policy, names)
    elif strategy == "fixed" and not auto_promote:
        reason = "fixed weights without automatic promotion"
    elif checks_done >= policy.max_checks:
        reason = f"all {policy.max_checks} decision checks spent; waiting for the limit"
    elif not settled and not at_limit:
        reason = (
            f"waiting until {2 * policy.attribution_window_hours:g} hours (twice the "
            "attribution window) have passed before any decision check"
        )
    elif matured >= due_at or at_limit:
        checked = True
        checks_done += 1
        next_check_at += (math.floor(max(matured - next_check_at, 0.0) / interval) + 1) * interval
        if not looks or t_now > looks[-1]:
            looks = (*looks, t_now)
            need = promotion_threshold(policy, arms=k, looks=looks)
        else:
            need = 1.0  # no new information since the last look: nothing to spend
        verdict, win, reason = decide(
            summary,
            control=control,
            policy=policy,
            need=need,
            names=names,
            blocked=sorted(blocked),
            pending=sorted(pending),
        )
        if verdict == CONTINUE:
            # units still to come before the limit, at the units per matured decision so far
            units_left = max(policy.max_decisions - matured, 0.0) * float(per_arm.sum()) / max(matured, 1.0)
            found = early_stop(
                summary,
                control=control,
                policy=policy,
                live=live,
                per_arm=per_arm,
                units_left=0.0 if at_limit else units_left,
            )
            if found is not None:
                verdict, win = INCONCLUSIVE, None
                stop, reason = found
        else:
            stop = StopReason.WINNER
        if verdict != CONTINUE and frozen:
            reason = f"promotion frozen by a safety flag ({reason})"
            stop = None
        else:
            action, winner = verdict, win
    else:
        lead = int(np.argmax(summary.p_best))
        reason = (
            f"next decision check at {due_at:,.0f} matured outcomes ({matured:,.0f} now); "
            f"{_name(names, lead)} leads with P(best) {_pct(float(summary.p_best[lead]))}"
        )
    if action == CONTINUE and at_limit:
        action, stop = INCONCLUSIVE, StopReason.LIMIT
        reason = f"limit reached without a decision: {reason}"
    if fb_alarm:
        reason = f"feedback mismatch: {fb_reason}; {reason}"
    if srm_alarm:
        srm = f"p = {summary.srm_p:.2g}" if new_srm else "raised earlier"
        reason = f"sample ratio mismatch ({srm}); {reason}"

    if action != CONTINUE:
        weights = np.zeros(k)
        weights[control if winner is None else winner] = 1.0
    elif strategy == "fixed":
        weights = normalize_fixed(k, fixed_weights)
    elif not burn_in:
        weights = equal_weights(k)
    else:
        weights = thompson_weights(summary.mean, summary.sd, policy=policy, rng=rng, blocked=sorted(blocked))

    new_state = replace(
        state,
        checks_done=checks_done,
        burn_in_done=bool(burn_in),
        srm_alarm=bool(srm_alarm),
        next_check_at=float(next_check_at),
        looks=tuple(float(x) for x in looks),
        safety_t=float(t_safe),
        feedback_alarm=bool(fb_alarm),
        feedback_reason=fb_reason,
        blocked=tuple(sorted(int(a) for a in blocked)),
    )
    return StepResult(
        weights=weights,
        action=action,
        winner=winner,
        state=new_state,
        summary=summary,
        checked=checked,
        reason=reason,
        stop_reason=stop,
        threshold=need,
        guardrails=tuple(verdicts),
    )
