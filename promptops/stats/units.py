"""The data rules the server and the simulator share: maturation, units, epoch closing, aggregation.

A decision matures when its attribution window closes (decided_at + window <= now). Its value is
the reward if feedback came within the window, else 0 (`missing_feedback: zero`) or nothing
(`ignore`). A unit (a `unit_id`, or the decision itself when none is given) is one observation:
the mean of its counted matured values, filed under (its arm, the epoch of its first exposure).

What the services store so that everything is rebuilt from sums:
- per unit: arm, first_epoch, count and sum of its counted matured values (per metric as well);
  a secondary or guardrail metric is one observation per unit too, its mean value, each value capped
  at the metric's cap (`metric_cap`), fixed in the update where at least `CAP_MIN_VALUES` of its
  values have matured, from all of them; the values summed before then are capped at that moment,
  so the sums are always those of capped values once a cap exists;
- per (arm, epoch): n units with at least one counted value, s = sum of their means, ss = sum of
  squared means (`fold_units` gives the increments), and `assigned` = new units first exposed in
  that epoch (what the SRM check counts);
- per epoch: the weights in force;
- per arm: decisions old enough for the feedback check (decided at least two windows ago), how many
  of them got feedback within the window, and how many got it after (`FeedbackCounts`).
Without unit_id every decision is its own unit, count <= 1, and the sums are the per-decision sums.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

from promptops.domain import Policy


def maturity_cutoff(now_hours: float, policy: Policy) -> float:
    """Decisions made at or before this time have matured (their attribution window closed)."""
    return now_hours - policy.attribution_window_hours


def feedback_cohort_cutoff(now_hours: float, policy: Policy) -> float:
    """Decisions made at or before this time enter the feedback-validity counts: two windows old,
    so feedback that is merely late has had a window's time to show up."""
    return now_hours - 2.0 * policy.attribution_window_hours


def matured_values(
    got_feedback: ArrayLike, reward: ArrayLike, *, reward_kind: str, policy: Policy
) -> tuple[np.ndarray, np.ndarray]:
    """(counted, value) of matured decisions: feedback within the window counts its reward;
    missing feedback counts 0 under `missing_feedback: zero` and not at all under `ignore`."""
    got = np.asarray(got_feedback, dtype=bool)
    reward = np.asarray(reward, dtype=float)
    if policy.missing_feedback_for(reward_kind) == "zero":
        return np.ones_like(got), np.where(got, reward, 0.0)
    return got, np.where(got, reward, 0.0)


def should_start_epoch(*, matured_in_epoch: int, minutes_in_epoch: float, policy: Policy) -> bool:
    """Whether enough outcomes matured and enough time passed to close the current epoch."""
    return matured_in_epoch >= policy.update_every and minutes_in_epoch >= policy.min_update_minutes


def fold_units(
    *,
    arms: int,
    epochs: int,
    arm: ArrayLike,
    first_epoch: ArrayLike,
    old_count: ArrayLike,
    old_sum: ArrayLike,
    add_count: ArrayLike,
    add_sum: ArrayLike,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Increments (dn, ds, dss), shape (arms, epochs), of the per-cell unit sums when the units
    listed (one entry each: arm, first epoch, their count and sum so far, what is added) get new
    counted values. A unit's old mean leaves its cell and its new mean enters it."""
    arm = np.asarray(arm, dtype=np.int64)
    cell = arm * epochs + np.asarray(first_epoch, dtype=np.int64)
    c0 = np.asarray(old_count, dtype=float)
    s0 = np.asarray(old_sum, dtype=float)
    c1 = c0 + np.asarray(add_count, dtype=float)
    s1 = s0 + np.asarray(add_sum, dtype=float)
    had = c0 > 0
    has = c1 > 0
    m0 = np.where(had, s0 / np.where(had, c0, 1.0), 0.0)
    m1 = np.where(has, s1 / np.where(has, c1, 1.0), 0.0)
    size = arms * epochs

    def cells(values: np.ndarray) -> np.ndarray:
        return np.bincount(cell, weights=values, minlength=size).reshape(arms, epochs)

    dn = cells(has.astype(float) - had.astype(float))
    ds = cells(m1 - m0)
    dss = cells(m1 * m1 - m0 * m0)
    return dn, ds, dss


@dataclass(frozen=True)
class FeedbackCounts:
    """Per arm (length K): decisions old enough for the feedback check, how many got their
    feedback within the attribution window, and how many got it only after the window."""

    eligible: np.ndarray
    on_time: np.ndarray
    late: np.ndarray

    @classmethod
    def empty(cls, k: int) -> FeedbackCounts:
        """No counts for k arms."""
        z = np.zeros(k)
        return cls(eligible=z, on_time=z.copy(), late=z.copy())


@dataclass(frozen=True)
class MetricData:
    """Per-arm, per-epoch unit sums of one secondary or guardrail metric, shape (K, E): n, sum
    and sum of squares of unit means, each value capped at `cap` before it is summed."""

    n: np.ndarray
    s: np.ndarray
    ss: np.ndarray
    cap: float | None = None


CAP_MIN_VALUES = 100
"""How many values of a metric must have matured before its cap is fixed."""


def metric_cap(values: ArrayLike, *, quantile: float = 0.995) -> float | None:
    """The cap for a heavy-tailed metric: a high quantile of the pooled first values (at least
    `CAP_MIN_VALUES` of them), fixed once and stored; values above it count as the cap. A metric
    whose first values are all 0 or 1 (a rate, such as the gateway's `error`) has no tail and is
    never capped: its quantile would be 0 whenever the first values hold no 1, and cap every 1."""
    v = np.asarray(values, dtype=float)
    v = v[np.isfinite(v)]
    if v.size < CAP_MIN_VALUES or np.all((v == 0.0) | (v == 1.0)):
        return None
    return float(np.quantile(v, quantile))
