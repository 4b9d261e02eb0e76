"""The number, percent and time formats that the dashboard's pages and charts share."""

from __future__ import annotations

import math
from collections.abc import Callable
from datetime import UTC, datetime

from promptops.domain import ExperimentStatus, RewardKind
from promptops.services.views import ArmView


def fmt_time(ts: float | None) -> str:
    """A timestamp as UTC ISO 8601 to the second."""
    if ts is None:
        return "—"
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def fmt_duration(seconds: float | None) -> str:
    """A duration as days/hours/minutes."""
    if seconds is None or not math.isfinite(seconds):
        return "—"
    minutes = int(max(seconds, 0) // 60)
    days, hours, mins = minutes // 1440, minutes % 1440 // 60, minutes % 60
    if days:
        return f"{days}d {hours}h"
    return f"{hours}h {mins}m" if hours else f"{mins}m"


def fmt_pct(x: float | None) -> str:
    """A share as a percentage: one decimal, two near 0% and 100% (where thresholds live)."""
    if x is None or not math.isfinite(x):
        return "—"
    v = x * 100
    if 0 < v < 0.01:
        return "< 0.01%"
    if 99.99 < v < 100:
        return "> 99.99%"
    if 0 < v < 1 or 99 < v < 100:
        return f"{v:.2f}".rstrip("0").rstrip(".") + "%"
    return f"{v:.1f}%"


def fmt_share(x: float) -> str:
    """An axis tick of a share: 25%, 50%."""
    return f"{x * 100:g}%"


def fmt_num(x: float | None) -> str:
    """A count with thousands separators."""
    return "—" if x is None else f"{x:,.0f}"


def value_format(reward: str) -> Callable[[float | None], str]:
    """How a reward-scale value reads: a percentage for binary rewards, 3 decimals otherwise."""
    if reward == RewardKind.BINARY:
        return fmt_pct
    return lambda x: "—" if x is None or not math.isfinite(x) else f"{x:.3f}"


STATUS_TEXT: dict[str, str] = {
    ExperimentStatus.HOLDOUT: "holdout: guarded rollout",
    ExperimentStatus.ROLLED_BACK: "rolled back",
}
"""How a status reads where its stored value is not plain words."""


def status_text(status: str) -> str:
    """An experiment status in words: `rolled back`, `holdout: guarded rollout`, `running`."""
    return STATUS_TEXT.get(status, str(status))


def arm_label(arm: ArmView) -> str:
    """How the pages name an arm: its version and variant."""
    return f"v{arm.version} {arm.variant}"
