"""Safety checks that freeze promotion: sample ratio mismatch and feedback validity.

Both are chi-squared tests on cumulative counts, repeated at every epoch boundary, each run at the
level its share of the safety budget allows (`spending.safety_level`), so a healthy run is frozen
by chance at most srm_p_value (resp. feedback_p_value) of the time, however many epochs it has.

- SRM: new units per arm per epoch against the epoch's weights (`estimator.srm_p_value`).
- Late feedback: per arm, feedback that came within the window against feedback that came after it
  (2 x K table). An arm whose feedback comes late is counted as missing: a mismatch would bias the
  comparison, so the arm with the largest late share is named with the fix.
- Feedback rate (only with `missing_feedback: ignore`, where missing outcomes are left out): per
  arm, decisions with feedback within the window against those without.
Every cell's expected count must be at least 5, else the test waits.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from promptops.stats.special import chi2_sf
from promptops.stats.units import FeedbackCounts

MIN_EXPECTED = 5.0


@dataclass(frozen=True)
class FeedbackFinding:
    """A feedback mismatch: its p-value, the arm it names and what to do."""

    p_value: float
    arm: int
    sentence: str


def contingency_p(table: np.ndarray) -> float | None:
    """Chi-squared p-value of independence for a 2 x K table of counts (None if too few)."""
    t = np.asarray(table, dtype=float)
    cols = t.sum(axis=0)
    t = t[:, cols > 0]
    if t.shape[1] < 2:
        return None
    rows = t.sum(axis=1)
    total = t.sum()
    if total <= 0 or np.any(rows <= 0):
        return None
    expected = rows[:, None] * t.sum(axis=0)[None, :] / total
    if expected.min() < MIN_EXPECTED:
        return None
    stat = float(((t - expected) ** 2 / expected).sum())
    return chi2_sf(stat, t.shape[1] - 1)


def _name(names: Sequence[str] | None, arm: int, control: int) -> str:
    base = names[arm] if names is not None and arm < len(names) else f"arm {arm}"
    return f"the control ({base})" if arm == control else base


def feedback_finding(
    counts: FeedbackCounts,
    *,
    level: float,
    ignore_missing: bool,
    control: int,
    names: Sequence[str] | None = None,
) -> FeedbackFinding | None:
    """The first feedback mismatch significant at `level` (split over the tests run), or None."""
    if level <= 0:
        return None
    on_time = np.asarray(counts.on_time, dtype=float)
    late = np.asarray(counts.late, dtype=float)
    eligible = np.asarray(counts.eligible, dtype=float)
    each = level / (2.0 if ignore_missing else 1.0)
    p = contingency_p(np.vstack([on_time, late])) if late.sum() > 0 else None
    if p is not None and p < each:
        share = late / np.maximum(on_time + late, 1.0)
        arm = int(np.argmax(share))
        who = _name(names, arm, control)
        return FeedbackFinding(
            p,
            arm,
            (
                f"{who}'s feedback arrives later than the window ({100 * share[arm]:.0f}% late): "
                "lengthen `attribution_window_hours`"
            ),
        )
    if ignore_missing:
        p = contingency_p(np.vstack([on_time, np.maximum(eligible - on_time, 0.0)]))
        if p is not None and p < each:
            rate = on_time / np.maximum(eligible, 1.0)
            arm = int(np.argmin(rate))
            who = _name(names, arm, control)
            others = float(np.delete(on_time, arm).sum() / max(np.delete(eligible, arm).sum(), 1))
            return FeedbackFinding(
                p,
                arm,
                (
                    f"{who} gets feedback on {100 * rate[arm]:.0f}% of its decisions against "
                    f"{100 * others:.0f}% for the others: missing feedback is left out "
                    "(`missing_feedback: ignore`), so every arm must send it alike"
                ),
            )
    return None
