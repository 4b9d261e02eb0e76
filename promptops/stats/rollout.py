"""Guarded rollout: after a challenger is promoted, the previous production keeps a holdout share.

At every epoch boundary of the holdout phase, on the most recent matured units (a window of
ROLLBACK_WINDOW x max_decisions decisions, both arms, summed per arm), the Gaussian probability that
the previous production is better than the new one is P(old > new) = Phi((m_old - m_new) / sd).
Roll back when it reaches ROLLBACK_P, once both arms have min_samples_per_arm outcomes in the
window (the first epochs of a holdout hold a few dozen old-version outcomes, and testing those at
every epoch rolled back about 3% of true winners); end the holdout when it has lasted holdout_decisions or
holdout_hours, whichever comes first; otherwise continue.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from promptops.domain import HoldoutAction, Policy
from promptops.stats.special import norm_cdf_scalar

ROLLBACK_P = 0.95
ROLLBACK_WINDOW = 0.20


@dataclass(frozen=True)
class HoldoutVerdict:
    """What the holdout phase does next, the evidence and why."""

    action: HoldoutAction
    p_old_better: float | None
    reason: str


def rollback_window(policy: Policy) -> int:
    """The number of most recent matured decisions the rollback test looks at."""
    return max(1, int(round(ROLLBACK_WINDOW * policy.max_decisions)))


def holdout_weights(k: int, *, new: int, old: int, policy: Policy) -> np.ndarray:
    """Serving weights of the holdout phase: the old production keeps holdout_share."""
    w = np.zeros(k)
    w[new] = 1.0 - policy.holdout_share
    w[old] += policy.holdout_share
    return w


def holdout_step(
    *,
    n: tuple[float, float],
    s: tuple[float, float],
    ss: tuple[float, float],
    decisions: int,
    hours: float,
    policy: Policy,
) -> HoldoutVerdict:
    """Decide the holdout at an epoch boundary from the recent window's (new, old) unit sums."""
    p_old: float | None = None
    if min(n) >= max(policy.min_samples_per_arm, 2):
        means = [s[i] / n[i] for i in range(2)]
        var = [max(ss[i] / n[i] - means[i] ** 2, 0.0) * n[i] / (n[i] - 1) for i in range(2)]
        se = math.sqrt(max(sum(var[i] / n[i] for i in range(2)), 1e-24))
        p_old = norm_cdf_scalar((means[1] - means[0]) / se)
        if p_old >= ROLLBACK_P:
            return HoldoutVerdict(HoldoutAction.ROLLBACK, p_old, (
                f"the previous production is better with {100 * p_old:.1f}% on the last "
                f"{int(sum(n)):,} matured units: rolled back"))
    if decisions >= policy.holdout_decisions_effective or hours >= policy.holdout_hours:
        return HoldoutVerdict(HoldoutAction.END_HOLDOUT, p_old, (
            f"holdout over after {decisions:,} decisions and {hours:.1f} hours"))
    return HoldoutVerdict(HoldoutAction.CONTINUE_HOLDOUT, p_old, "holdout running")
