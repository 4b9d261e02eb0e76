"""Allocation weights: equal, fixed, Thompson and top-two Thompson sampling from posterior draws.

Top-two Thompson sampling (Russo 2016) serves the leader I of a posterior draw with probability beta
and otherwise a challenger J, the best arm other than I in an independent draw. Its serving
probabilities are psi_a = beta * alpha_a + (1 - beta) * sum_{i != a} alpha_i * c_{a|i}, with alpha_a
= P(a is best) and c_{a|i} = P(a is best among the arms other than i), which is alpha_a + P(i first,
a second), all estimated from the same `draws` posterior draws. (Russo's variant resamples until the
leader changes, which uses alpha_a / (1 - alpha_i) and is undefined once one arm takes every draw;
the independent-draw challenger is always defined.) With two arms alpha is exact, Phi(d / s), so no
draws are made; with beta = 0.5 that is an even split whatever the data.

The floor is a mixture: weights = floor / K + (1 - floor) * psi. Every arm gets at least floor / K,
and an arm with some chance of being the leader or challenger keeps a share above the floor. That
matters for the control: the stopping rule compares the leader with the control, and clipping the
control to exactly floor / K starved that comparison (5-arm scenario: 85% decided against 92%).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from promptops.domain import Policy
from promptops.stats.special import norm_cdf_scalar


def equal_weights(k: int) -> np.ndarray:
    """An even split over k arms."""
    return np.full(k, 1.0 / k)


def normalize_fixed(k: int, fixed_weights: np.ndarray | Sequence[float] | None) -> np.ndarray:
    """Fixed weights checked and scaled to sum to 1 (an even split when none are given)."""
    if fixed_weights is None:
        return equal_weights(k)
    w = np.asarray(fixed_weights, dtype=float)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"fixed weights must be {k} non-negative numbers with a positive sum")
    return w / w.sum()


def apply_floor(weights: np.ndarray, floor: float) -> np.ndarray:
    """The mixture floor / K + (1 - floor) * weights, so every arm gets at least floor / K."""
    w = np.asarray(weights, dtype=float)
    w = w / w.sum()
    share = min(max(floor, 0.0), 1.0)
    return share / w.size + (1.0 - share) * w


def thompson_weights(
    mean: np.ndarray,
    sd: np.ndarray,
    *,
    policy: Policy,
    rng: np.random.Generator,
    blocked: Sequence[int] = (),
) -> np.ndarray:
    """Serving weights from posterior draws: top-two or plain Thompson, then the floor; blocked
    arms (a guardrail stopped them) keep the floor only."""
    if blocked:
        psi = _sampling(mean, sd, policy=policy, rng=rng)
        psi[list(blocked)] = 0.0
        if psi.sum() <= 0:
            psi = np.ones_like(psi)
            psi[list(blocked)] = 0.0
        return apply_floor(psi, policy.floor)
    return apply_floor(_sampling(mean, sd, policy=policy, rng=rng), policy.floor)


def _sampling(mean: np.ndarray, sd: np.ndarray, *, policy: Policy, rng: np.random.Generator) -> np.ndarray:
    """The serving probabilities psi of top-two or plain Thompson sampling, before the floor."""
    mean = np.asarray(mean, dtype=float)
    sd = np.asarray(sd, dtype=float)
    k = mean.size
    if k == 2:
        p1 = norm_cdf_scalar(float(mean[1] - mean[0]) / math.hypot(float(sd[0]), float(sd[1])))
        alpha2 = np.array([1.0 - p1, p1])
        beta = 1.0 if policy.allocation == "thompson" else policy.top_two_beta
        return beta * alpha2 + (1.0 - beta) * alpha2[::-1]
    draws = max(int(policy.draws), 1)
    x = rng.standard_normal((draws, k))
    x *= sd
    x += mean
    top = x.argmax(axis=1)
    alpha = np.bincount(top, minlength=k) / draws
    if policy.allocation == "thompson" or k == 1:
        psi = alpha
    else:
        rows = np.arange(draws)
        x[rows, top] = -np.inf
        second = x.argmax(axis=1)
        pair = np.bincount(top * k + second, minlength=k * k).reshape(k, k) / draws
        challenger = alpha[None, :] + pair  # c[i, a] = P(a best among arms other than i)
        np.fill_diagonal(challenger, 0.0)
        beta = policy.top_two_beta
        psi = beta * alpha + (1.0 - beta) * (alpha @ challenger)
    return np.asarray(psi, dtype=float)
