"""Allocation weights: equal, fixed, Thompson and top-two Thompson sampling from posterior draws.

Top-two Thompson sampling (Russo 2016) serves the leader I of a posterior draw with probability beta
and otherwise a challenger J, the best arm other than I in an independent draw. Its serving
probabilities are psi_a = beta * alpha_a + (1 - beta) * sum_{i != a} alpha_i * c_{a|i}, with alpha_a =
P(a is best) and c_{a|i} = P(a is best among the arms other than i) = alpha_a + P(i first, a second),
all estimated from the same `draws` posterior draws. (Russo's variant resamples until the leader
changes, which uses alpha_a / (1 - alpha_i) and is undefined once one arm takes every draw; the
independent-draw challenger is always defined.) With two arms and beta = 0.5 it is an even split.
Finally every arm gets at least floor / K, by water-filling: arms below the floor are raised to it
and the others scaled down proportionally.
"""

from __future__ import annotations

import numpy as np

from promptops.domain import Policy


def equal_weights(k: int) -> np.ndarray:
    """An even split over k arms."""
    return np.full(k, 1.0 / k)


def normalize_fixed(k: int, fixed_weights: np.ndarray | None) -> np.ndarray:
    """Fixed weights checked and scaled to sum to 1 (an even split when none are given)."""
    if fixed_weights is None:
        return equal_weights(k)
    w = np.asarray(fixed_weights, dtype=float)
    if w.shape != (k,) or not np.all(np.isfinite(w)) or np.any(w < 0) or w.sum() <= 0:
        raise ValueError(f"fixed weights must be {k} non-negative numbers with a positive sum")
    return w / w.sum()


def apply_floor(weights: np.ndarray, floor: float) -> np.ndarray:
    """Weights raised to at least floor / K each, the rest scaled so they still sum to 1."""
    w = np.asarray(weights, dtype=float) / np.sum(weights)
    k = w.size
    minimum = min(max(floor, 0.0), 1.0) / k
    if minimum <= 0:
        return w
    pinned = np.zeros(k, dtype=bool)
    for _ in range(k):
        free = ~pinned
        budget = 1.0 - minimum * pinned.sum()
        free_sum = w[free].sum()
        scaled = np.where(free, w * budget / free_sum if free_sum > 0 else budget / free.sum(), minimum)
        low = free & (scaled < minimum)
        if not low.any():
            return scaled
        pinned |= low
    return np.full(k, 1.0 / k)


def thompson_weights(
    mean: np.ndarray, sd: np.ndarray, *, policy: Policy, rng: np.random.Generator
) -> np.ndarray:
    """Serving weights from `policy.draws` posterior draws: top-two or plain Thompson, then the floor."""
    mean = np.asarray(mean, dtype=float)
    sd = np.asarray(sd, dtype=float)
    k = mean.size
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
    return apply_floor(psi, policy.floor)
