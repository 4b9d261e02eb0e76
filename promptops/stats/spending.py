"""Error spending over many looks: the Lan-DeMets Pocock-type boundary and the safety-check budget.

Information fraction. t = matured decisions / max_decisions (at most 1): the share of the horizon's
information a look has seen. The spending function is Pocock-type (Lan and DeMets 1983):

    alpha(t) = alpha * ln(1 + (e - 1) t)

Promotion boundary. Under H0 the z statistic of a contrast at looks t_1 < t_2 < ... behaves like
W(t_i) / sqrt(t_i) for a Brownian motion W (Cov(Z_i, Z_j) = sqrt(t_i / t_j)). The one-sided
boundary c_k of look k is the value for which P(Z_1 < c_1, ..., Z_{k-1} < c_{k-1}, Z_k >= c_k) =
alpha(t_k) - alpha(t_{k-1}), computed by the recursive integration of Armitage, McPherson and Rowe
on the score scale S = Z sqrt(t): a grid of cells over [-8 sqrt(t), c sqrt(t)] whose sub-density is
carried from look to look with the exact normal CDF over each cell (so close looks, whose kernel is
narrower than a cell, stay accurate). The boundary depends only on the looks' information fractions,
so it can be rebuilt from the fractions stored in the policy state; a cache keyed by the fractions
makes each new look cost one step. Early stops without a winner (equivalence, no meaningful winner)
only lower the error, so they need no boundary of their own.

Safety budget. The SRM and feedback tests are repeated at every epoch on cumulative counts; each
test between fractions t0 and t1 is run at level alpha_s(t1) - alpha_s(t0) (Bonferroni over the
increments of the same spending function), so the chance that a healthy run is ever frozen stays
under alpha_s whatever the number of epochs.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

from promptops.domain import Policy
from promptops.stats.special import norm_cdf, norm_cdf_scalar

_GRID = 240
_Z_LOW = -8.0
_E1 = math.e - 1.0


def spent(alpha: float, t: float) -> float:
    """The error a Pocock-type spending function allows up to information fraction t."""
    t = min(max(t, 0.0), 1.0)
    return alpha * math.log1p(_E1 * t)


def information_fraction(matured: float, policy: Policy) -> float:
    """Matured decisions over max_decisions, capped at 1."""
    return min(max(matured / max(policy.max_decisions, 1), 0.0), 1.0)


def safety_fraction(decisions: float, hours: float, policy: Policy) -> float:
    """The schedule the safety budget is spent over: served share or elapsed share, whichever is
    larger (it never depends on the outcomes, which keeps the Bonferroni bound valid)."""
    by_time = hours / max(policy.max_days * 24.0, 1e-9)
    return min(max(decisions / max(policy.max_decisions, 1), by_time, 0.0), 1.0)


def safety_level(budget: float, t_before: float, t_now: float) -> float:
    """The p-value level of one safety test run between fractions t_before and t_now."""
    return max(spent(budget, t_now) - spent(budget, t_before), 0.0)


def _cells(c: float, t: float) -> tuple[np.ndarray, np.ndarray]:
    """Cell edges and centres on the score scale for a look at fraction t with z boundary c."""
    top = c if math.isfinite(c) else 8.0
    edges = np.linspace(_Z_LOW, max(top, _Z_LOW + 1.0), _GRID + 1) * math.sqrt(t)
    return edges, 0.5 * (edges[1:] + edges[:-1])


@lru_cache(maxsize=2048)
def _state(looks: tuple[float, ...], alpha: float) -> tuple[np.ndarray, np.ndarray, float]:
    """(cell centres, probability mass per cell of not having crossed, boundary of the last look)."""
    t = looks[-1]
    if len(looks) == 1:
        c = _solve(lambda b: 1.0 - norm_cdf_scalar(b), spent(alpha, t))
        edges, mid = _cells(c, t)
        sd = math.sqrt(t)
        mass = np.diff(norm_cdf(edges / sd))
        return mid, mass, c
    prev_mid, prev_mass, _ = _state(looks[:-1], alpha)
    t0 = looks[-2]
    step = math.sqrt(max(t - t0, 1e-12))
    target = spent(alpha, t) - spent(alpha, t0)
    sqrt_t = math.sqrt(t)

    def crossing(b: float) -> float:
        return float(prev_mass @ (1.0 - norm_cdf((b * sqrt_t - prev_mid) / step)))

    c = _solve(crossing, target)
    edges, mid = _cells(c, t)
    cdf = norm_cdf((edges[None, :] - prev_mid[:, None]) / step)
    mass = prev_mass @ np.diff(cdf, axis=1)
    return mid, mass, c


def _solve(crossing: object, target: float) -> float:
    """The z boundary b with crossing(b) = target (crossing decreases in b); inf when nothing is
    left to spend."""
    f = crossing  # a callable; typed loosely to keep the cache key simple
    if target <= 1e-15:
        return math.inf
    lo, hi = -8.0, 12.0
    if f(lo) <= target:  # type: ignore[operator]
        return lo
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if f(mid) > target:  # type: ignore[operator]
            lo = mid
        else:
            hi = mid
    return hi


def boundary(looks: tuple[float, ...] | list[float], alpha: float) -> float:
    """The z boundary of the last of `looks` (increasing information fractions in (0, 1]) for a
    one-sided test spending `alpha` Pocock-style; inf when the budget is spent."""
    clean: list[float] = []
    for t in looks:
        t = min(float(t), 1.0)
        if t > (clean[-1] if clean else 0.0) + 1e-9:
            clean.append(t)
        elif not clean:
            return math.inf
        else:
            return math.inf  # a look with no new information spends nothing
    if not clean:
        return math.inf
    return _state(tuple(clean), float(alpha))[2]


def promotion_level(looks: tuple[float, ...] | list[float], *, alpha: float, arms: int) -> float:
    """P(challenger beats the control) a challenger needs at the last of `looks`: Phi of the
    boundary spending alpha / (arms - 1) (Bonferroni over the challengers)."""
    c = boundary(looks, alpha / max(arms - 1, 1))
    return 1.0 if not math.isfinite(c) else norm_cdf_scalar(c)
