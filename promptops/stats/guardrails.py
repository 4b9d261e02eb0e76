"""Guardrail verdicts and secondary-metric intervals, from per-arm stratified Gaussian estimates.

Each metric is estimated like the primary reward (unit means, epoch-stratified, Gaussian), on values
capped at a high quantile of the pooled first values (`units.metric_cap`), so one huge value cannot
swing a mean: a cap keeps the mean in the metric's own units, which the margins are written in (a
log model would judge the geometric mean instead). The difference D = g_w - g_control is Gaussian
with the two standard errors combined. With the allowed band [-down, +up] (relative margins times
the control's mean, or absolute margins):

- allowed when P(D within the band) >= 0.95;
- blocked when P(D beyond one side of it) >= 0.99: the challenger is kept at the floor and never
  promoted;
- pending otherwise (promotion waits).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from promptops.domain import Guardrail, GuardrailState
from promptops.stats.estimator import CI_Z, stratified
from promptops.stats.special import norm_cdf_scalar
from promptops.stats.units import MetricData

ALLOW_P = 0.95
BLOCK_P = 0.99


@dataclass(frozen=True)
class MetricEstimate:
    """One arm's estimate of a metric: mean, standard error, 95% interval and units counted."""

    mean: float
    se: float
    ci_low: float
    ci_high: float
    n: int


@dataclass(frozen=True)
class GuardrailVerdict:
    """A challenger's standing on one guardrail, with the estimated change and a sentence."""

    arm: int
    metric: str
    state: GuardrailState
    diff: float
    diff_low: float
    diff_high: float
    relative: bool
    sentence: str


def metric_estimates(data: MetricData) -> list[MetricEstimate]:
    """Per-arm estimates of a metric with 95% intervals (NaN where an arm has no value yet)."""
    mean, se = stratified(data.n, data.s, data.ss)
    n = np.asarray(data.n, dtype=float).sum(axis=1)
    return [
        MetricEstimate(
            mean=float(m), se=float(e), ci_low=float(m - CI_Z * e), ci_high=float(m + CI_Z * e), n=int(c)
        )
        for m, e, c in zip(mean, se, n, strict=True)
    ]


def _band(rule: Guardrail, control_mean: float) -> tuple[float, float, bool]:
    """(allowed decrease, allowed increase, relative?) in the metric's units."""
    scale = abs(control_mean)
    up = down = math.inf
    relative = rule.max_increase is not None or rule.max_decrease is not None
    if rule.max_increase is not None:
        up = rule.max_increase * scale
    if rule.max_increase_abs is not None:
        up = rule.max_increase_abs
    if rule.max_decrease is not None:
        down = rule.max_decrease * scale
    if rule.max_decrease_abs is not None:
        down = rule.max_decrease_abs
    return down, up, relative


def _fmt(value: float, relative: bool, scale: float) -> str:
    if relative and scale > 0:
        return f"{100.0 * value / scale:+.0f}%"
    return f"{value:+.4g}"


def guardrail_verdicts(
    rule: Guardrail, data: MetricData, *, control: int, names: Sequence[str] | None = None
) -> list[GuardrailVerdict]:
    """The verdict of every challenger on one guardrail (pending while either arm lacks data)."""
    est = metric_estimates(data)
    c = est[control]
    out: list[GuardrailVerdict] = []
    for a, e in enumerate(est):
        if a == control:
            continue
        name = names[a] if names is not None and a < len(names) else f"arm {a}"
        if not (e.n >= 2 and c.n >= 2 and math.isfinite(e.mean) and math.isfinite(c.mean)):
            out.append(
                GuardrailVerdict(
                    a,
                    rule.metric,
                    GuardrailState.PENDING,
                    math.nan,
                    math.nan,
                    math.nan,
                    True,
                    f"pending: no {rule.metric} values yet",
                )
            )
            continue
        d = e.mean - c.mean
        sd = max(math.hypot(e.se, c.se), 1e-300)
        down, up, relative = _band(rule, c.mean)
        p_above = 1.0 - norm_cdf_scalar((up - d) / sd) if math.isfinite(up) else 0.0
        p_below = norm_cdf_scalar((-down - d) / sd) if math.isfinite(down) else 0.0
        scale = abs(c.mean)
        lo, hi = d - CI_Z * sd, d + CI_Z * sd
        change = (
            f"{rule.metric} {_fmt(d, relative, scale)} "
            f"({_fmt(lo, relative, scale)} .. {_fmt(hi, relative, scale)})"
        )
        if p_above >= BLOCK_P:
            state = GuardrailState.BLOCKED
            limit = _fmt(up, relative, scale).lstrip("+")
            text = f"blocked: {name} {change} > {limit} allowed"
        elif p_below >= BLOCK_P:
            state = GuardrailState.BLOCKED
            limit = _fmt(-down, relative, scale)
            text = f"blocked: {name} {change} < {limit} allowed"
        elif 1.0 - p_above - p_below >= ALLOW_P:
            state = GuardrailState.ALLOWED
            text = f"allowed: {name} {change}"
        else:
            state = GuardrailState.PENDING
            text = f"pending: {name} {change}"
        out.append(GuardrailVerdict(a, rule.metric, state, d, lo, hi, relative, text))
    return out
