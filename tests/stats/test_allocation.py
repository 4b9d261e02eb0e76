"""Allocation weights: floor, top-two and plain Thompson sampling against exact expectations."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from promptops.domain import Policy
from promptops.stats import apply_floor, best_probabilities, initial_weights, thompson_weights


def exact_top_two(mean, sd, beta):
    """psi_a = beta alpha_a + (1 - beta) sum_i alpha_i P(a best among arms other than i)."""
    k = len(mean)
    alpha, _ = best_probabilities(mean, sd)
    psi = beta * alpha
    for i in range(k):
        rest = [j for j in range(k) if j != i]
        others, _ = best_probabilities(mean[rest], sd[rest])
        psi[rest] += (1 - beta) * alpha[i] * others
    return psi


def test_floor_is_a_mixture_with_an_even_split():
    w = apply_floor(np.array([1.0, 0.0, 0.0, 0.0, 0.0]), 0.10)
    np.testing.assert_allclose(w, [0.92, 0.02, 0.02, 0.02, 0.02])
    assert apply_floor(np.array([0.3, 0.7]), 0.0) == pytest.approx([0.3, 0.7])


@pytest.mark.parametrize("seed", range(5))
def test_top_two_matches_its_exact_expectation(seed):
    rng = np.random.default_rng(seed)
    k = 3 + seed % 3
    mean = 0.1 + rng.normal(size=k) * 0.01
    sd = np.full(k, 0.006)
    policy = Policy(floor=0.0, draws=200_000)
    w = thompson_weights(mean, sd, policy=policy, rng=np.random.default_rng(seed + 100))
    np.testing.assert_allclose(w, exact_top_two(mean, sd, 0.5), atol=0.006)
    assert w.sum() == pytest.approx(1.0)


def test_plain_thompson_is_p_best_plus_floor():
    mean = np.array([0.10, 0.11, 0.105])
    sd = np.array([0.004, 0.004, 0.004])
    policy = Policy(allocation="thompson", floor=0.1, draws=200_000)
    w = thompson_weights(mean, sd, policy=policy, rng=np.random.default_rng(1))
    alpha, _ = best_probabilities(mean, sd)
    np.testing.assert_allclose(w, 0.1 / 3 + 0.9 * alpha, atol=0.004)


def test_two_arms_are_exact_without_draws():
    mean, sd = np.array([0.10, 0.11]), np.array([0.004, 0.003])
    even = thompson_weights(mean, sd, policy=Policy(), rng=np.random.default_rng(0))
    np.testing.assert_allclose(even, [0.5, 0.5], atol=1e-15)
    p = sps.norm.cdf(0.01 / math.hypot(0.004, 0.003))
    plain = thompson_weights(
        mean, sd, policy=Policy(allocation="thompson", floor=0.0), rng=np.random.default_rng(0)
    )
    np.testing.assert_allclose(plain, [1 - p, p], rtol=1e-12)


def test_top_two_keeps_the_runner_up_near_half():
    mean = np.array([0.10, 0.09, 0.11, 0.115, 0.12])
    sd = np.full(5, 0.0015)
    w = thompson_weights(mean, sd, policy=Policy(), rng=np.random.default_rng(2))
    assert w[4] + w[3] > 0.85
    assert 0.25 < w[3] < 0.5
    assert np.all(w >= 0.02 - 1e-12)


def test_weights_are_reproducible_with_the_same_seed():
    mean, sd = np.array([0.1, 0.11, 0.12]), np.full(3, 0.01)
    a = thompson_weights(mean, sd, policy=Policy(), rng=np.random.default_rng(9))
    b = thompson_weights(mean, sd, policy=Policy(), rng=np.random.default_rng(9))
    np.testing.assert_array_equal(a, b)


def test_initial_weights():
    np.testing.assert_allclose(initial_weights(4), [0.25] * 4)
    fixed = initial_weights(3, strategy="fixed", fixed_weights=np.array([2.0, 1.0, 1.0]))
    np.testing.assert_allclose(fixed, [0.5, 0.25, 0.25])
    with pytest.raises(ValueError):
        initial_weights(2, strategy="fixed", fixed_weights=np.array([1.0, -1.0]))
    with pytest.raises(ValueError):
        initial_weights(3, strategy="fixed", fixed_weights=np.array([1.0, 1.0]))
