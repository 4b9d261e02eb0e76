"""Guardrail verdicts from stratified metric estimates, with their sentences."""

import numpy as np
import pytest

from promptops.domain import Guardrail, GuardrailState
from promptops.stats import MetricData, guardrail_verdicts, metric_estimates


def metric(means, sds, n):
    """One epoch per arm with exact sample means and variances."""
    means, sds = np.asarray(means, float), np.asarray(sds, float)
    nn = np.full((means.size, 1), float(n))
    s = means[:, None] * nn
    ss = sds[:, None] ** 2 * (nn - 1) + nn * means[:, None] ** 2
    return MetricData(n=nn, s=s, ss=ss)


def test_estimates_are_the_sample_mean_and_standard_error():
    est = metric_estimates(metric([2.0, 3.0], [1.0, 2.0], 400))
    assert est[0].mean == pytest.approx(2.0) and est[0].se == pytest.approx(1.0 / 20, rel=0.02)
    assert est[1].ci_low < 3.0 < est[1].ci_high and est[1].n == 400


@pytest.mark.parametrize(
    ("challenger", "state", "text"),
    [
        pytest.param(2.06, GuardrailState.ALLOWED, "allowed: b cost_usd +3%", id="allowed"),
        pytest.param(2.5, GuardrailState.BLOCKED, "blocked: b cost_usd +25% (", id="blocked"),
        pytest.param(2.2, GuardrailState.PENDING, "pending: b cost_usd +10%", id="pending"),
    ],
)
def test_relative_margin_verdicts(challenger, state, text):
    rule = Guardrail(metric="cost_usd", max_increase=0.10)
    (v,) = guardrail_verdicts(rule, metric([2.0, challenger], [0.6, 0.6], 2000), control=0, names=["a", "b"])
    assert v.state == state and v.sentence.startswith(text), v.sentence
    if state == GuardrailState.BLOCKED:
        assert v.sentence.endswith("> 10% allowed")


def test_absolute_and_decrease_margins():
    rule = Guardrail(metric="error", max_increase_abs=0.01)
    (v,) = guardrail_verdicts(rule, metric([0.02, 0.05], [0.14, 0.22], 5000), control=0)
    assert v.state == GuardrailState.BLOCKED and not v.relative
    rule = Guardrail(metric="csat", max_decrease=0.05)
    (v,) = guardrail_verdicts(rule, metric([0.8, 0.7], [0.2, 0.2], 5000), control=0)
    assert v.state == GuardrailState.BLOCKED and "< -5% allowed" in v.sentence


def test_no_data_is_pending():
    rule = Guardrail(metric="cost_usd", max_increase=0.1)
    data = MetricData(n=np.zeros((2, 1)), s=np.zeros((2, 1)), ss=np.zeros((2, 1)))
    (v,) = guardrail_verdicts(rule, data, control=0)
    assert v.state == GuardrailState.PENDING
