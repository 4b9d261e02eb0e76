"""Error spending: the Pocock-type boundary holds its level over many looks; the safety budget."""

import math

import numpy as np
import pytest

from promptops.domain import Policy
from promptops.stats import boundary, information_fraction, promotion_threshold, safety_level, spent


def crossing_rate(looks, alpha, *, runs=200_000, seed=0):
    """Monte Carlo: how often Brownian z statistics cross the boundaries at those looks."""
    cs = np.array([boundary(looks[: i + 1], alpha) for i in range(len(looks))])
    rng = np.random.default_rng(seed)
    inc = rng.standard_normal((runs, len(looks))) * np.sqrt(np.diff([0.0, *looks]))
    z = np.cumsum(inc, axis=1) / np.sqrt(looks)
    return float((z >= cs).any(axis=1).mean())


@pytest.mark.parametrize("k", [pytest.param(k, id=f"{k}-looks") for k in (1, 5, 40, 120)])
def test_equally_spaced_looks_spend_exactly_alpha(k):
    looks = [(i + 1) / k for i in range(k)]
    rate = crossing_rate(looks, 0.05)
    assert rate == pytest.approx(0.05, abs=0.003)  # Monte Carlo se 0.0005


def test_a_partial_horizon_spends_only_its_share():
    looks = [0.01 + 0.025 * i for i in range(8)]
    assert crossing_rate(looks, 0.05) == pytest.approx(spent(0.05, looks[-1]), abs=0.0015)


def test_single_look_is_the_normal_quantile():
    assert boundary([1.0], 0.05) == pytest.approx(1.6448536, abs=1e-6)
    assert boundary([0.3], 0.05) == pytest.approx(-_norm_ppf(spent(0.05, 0.3)), abs=1e-6)


def _norm_ppf(p):
    lo, hi = -10.0, 10.0
    for _ in range(80):
        mid = (lo + hi) / 2
        if 0.5 * math.erfc(-mid / math.sqrt(2)) < p:
            lo = mid
        else:
            hi = mid
    return lo


def test_no_new_information_spends_nothing():
    assert boundary([0.2, 0.2], 0.05) == math.inf
    assert boundary([0.5, 1.0, 1.0], 0.05) == math.inf
    assert promotion_threshold(Policy(), arms=2, looks=[0.4, 0.3]) == 1.0


@pytest.mark.parametrize("seed", range(5))
def test_no_look_is_below_the_fixed_sample_quantile(seed):
    # the floor `promotion_chance` relies on: every look's boundary is at least Phi^-1(1 - alpha)
    rng = np.random.default_rng(seed)
    looks = np.sort(rng.uniform(0.01, 1.0, rng.integers(2, 60)))
    looks = [*np.unique(looks), 1.0]
    floor = -_norm_ppf(0.01)
    assert all(boundary(looks[: i + 1], 0.01) >= floor - 1e-9 for i in range(len(looks)))


def test_threshold_divides_alpha_over_challengers():
    assert promotion_threshold(Policy(), arms=5, looks=[1.0]) == pytest.approx(1 - 0.05 / 4)


def test_safety_budget_adds_up_to_its_total():
    ts = np.linspace(0, 1, 301)
    levels = [safety_level(0.005, a, b) for a, b in zip(ts[:-1], ts[1:], strict=True)]
    assert sum(levels) == pytest.approx(0.005)
    assert safety_level(0.005, 0.5, 0.5) == 0.0
    assert information_fraction(250_000, Policy()) == 1.0
