"""The stratified estimator, its posterior, P(best), expected loss and the SRM p-value."""

import math

import numpy as np
import pytest
from scipy import integrate
from scipy import stats as sps

from promptops.domain import Policy
from promptops.stats import (
    EpochData,
    best_probabilities,
    p_beats,
    posterior,
    srm_p_value,
    summarize,
)
from promptops.stats.estimator import ARM_PSEUDO_N, EPOCH_PSEUDO_N

FLAT = Policy(prior_strength=1e-12)  # a prior so weak it does not move the posterior


def data_from(n, s, ss=None, assigned=None, weights=None) -> EpochData:
    n = np.asarray(n, dtype=float)
    s = np.asarray(s, dtype=float)
    ss = s.copy() if ss is None else np.asarray(ss, dtype=float)  # binary: sum of squares = sum
    assigned = n.copy() if assigned is None else np.asarray(assigned, dtype=float)
    weights = np.full(n.shape, 1.0 / n.shape[0]) if weights is None else np.asarray(weights)
    return EpochData(n=n, s=s, ss=ss, assigned=assigned, weights=weights)


def reference_posterior(n, s, ss, prior_strength):
    """The documented estimator written out loop by loop."""
    n, s, ss = (np.asarray(x, dtype=float) for x in (n, s, ss))
    k, e = n.shape
    m0 = (s.sum() + 0.5) / (n.sum() + 1)
    v0 = m0 * (1 - m0)
    means, sds = [], []
    for a in range(k):
        ssw = [ss[a, j] - s[a, j] ** 2 / n[a, j] for j in range(e) if n[a, j] > 0]
        dof = [n[a, j] - 1 for j in range(e) if n[a, j] > 0]
        arm_var = (sum(ssw) + ARM_PSEUDO_N * v0) / (sum(dof) + ARM_PSEUDO_N)
        epochs = [j for j in range(e) if n[a, j] > 0]
        total = sum(n[:, j].sum() for j in epochs)
        mean = var = 0.0
        for j in epochs:
            w = n[:, j].sum() / total
            s2 = (ss[a, j] - s[a, j] ** 2 / n[a, j] + EPOCH_PSEUDO_N * arm_var) / (
                n[a, j] - 1 + EPOCH_PSEUDO_N
            )
            mean += w * s[a, j] / n[a, j]
            var += w * w * s2 / n[a, j]
        prec = 1 / var + prior_strength / v0
        means.append((mean / var + m0 * prior_strength / v0) / prec)
        sds.append(math.sqrt(1 / prec))
    return np.array(means), np.array(sds)


def test_posterior_matches_the_documented_formula():
    n = [[100, 40, 0, 7], [50, 160, 30, 3]]
    s = [[12, 5, 0, 1], [4, 30, 6, 0]]
    d = data_from(n, s)
    mean, sd = posterior(d, policy=Policy())
    ref_mean, ref_sd = reference_posterior(n, s, s, 1.0)
    np.testing.assert_allclose(mean, ref_mean, rtol=1e-12)
    np.testing.assert_allclose(sd, ref_sd, rtol=1e-12)


def test_single_epoch_large_n_is_the_sample_mean_and_binomial_sd():
    d = data_from([[20_000], [20_000]], [[2_000], [2_400]])
    mean, sd = posterior(d, policy=FLAT)
    np.testing.assert_allclose(mean, [0.10, 0.12], rtol=1e-6)
    np.testing.assert_allclose(sd, np.sqrt([0.09 / 20_000, 0.1056 / 20_000]), rtol=0.01)


def test_continuous_rewards_use_their_own_variance():
    rng = np.random.default_rng(3)
    x = rng.beta(0.62 * 2, 0.38 * 2, size=5000)
    d = data_from([[5000]], [[x.sum()]], ss=[[np.sum(x * x)]])
    mean, sd = posterior(d, policy=FLAT)
    assert mean[0] == pytest.approx(x.mean(), rel=1e-6)
    assert sd[0] == pytest.approx(x.std(ddof=1) / math.sqrt(5000), rel=0.01)


def test_stratification_removes_simpsons_paradox():
    # Within each epoch both arms convert at the same rate, but arm 1 got most of its traffic in
    # the high-rate epoch; pooled counts would make arm 1 look far better.
    n = [[900, 100], [100, 900]]
    s = [[90, 20], [10, 180]]
    d = data_from(n, s)
    pooled = np.array(s).sum(1) / np.array(n).sum(1)
    assert pooled[1] - pooled[0] > 0.07
    mean, _ = posterior(d, policy=FLAT)
    assert mean[0] == pytest.approx(mean[1], abs=1e-9)
    assert mean[0] == pytest.approx(0.5 * 0.10 + 0.5 * 0.20, abs=1e-9)


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_small_n_never_gives_zero_variance(n):
    d = data_from([[n], [n]], [[0], [n]])
    _, sd = posterior(d, policy=FLAT)
    assert np.all(np.isfinite(sd)) and np.all(sd > 0.05)


def test_arm_without_data_gets_the_prior():
    d = data_from([[100, 100], [0, 0]], [[10, 10], [0, 0]])
    mean, sd = posterior(d, policy=Policy())
    m0 = 20.5 / 201
    assert mean[1] == pytest.approx(m0)
    assert sd[1] == pytest.approx(math.sqrt(m0 * (1 - m0)))


def test_arm_missing_an_epoch_is_estimated_on_the_epochs_it_has():
    d = data_from([[500, 500], [500, 0]], [[50, 100], [60, 0]])
    mean, _ = posterior(d, policy=FLAT)
    assert mean[1] == pytest.approx(0.12, abs=1e-9)
    assert mean[0] == pytest.approx(2 / 3 * 0.10 + 1 / 3 * 0.20, abs=1e-4)


def quad_reference(mean, sd):
    lo, hi = min(mean - 12 * sd), max(mean + 12 * sd)
    pts = sorted(set(np.concatenate([mean, mean - sd, mean + sd])))
    k = len(mean)

    def others(x, a):
        return np.prod([sps.norm.cdf(x, mean[j], sd[j]) for j in range(k) if j != a])

    p = [
        integrate.quad(
            lambda x, a=a: sps.norm.pdf(x, mean[a], sd[a]) * others(x, a),
            lo,
            hi,
            points=pts,
            limit=500,
            epsabs=1e-14,
            epsrel=1e-12,
        )[0]
        for a in range(k)
    ]
    tail = integrate.quad(
        lambda x: 1 - others(x, -1), lo, hi, points=pts, limit=500, epsabs=1e-14, epsrel=1e-12
    )[0]
    return np.array(p), lo + tail


@pytest.mark.parametrize("seed", range(8))
def test_best_probabilities_match_adaptive_quadrature(seed):
    rng = np.random.default_rng(seed)
    k = 2 + seed % 4
    mean = 0.1 + rng.normal(size=k) * 0.01
    sd = 0.003 * np.exp(rng.normal(size=k) * 1.5)  # spreads of very different sizes
    p, e_max = best_probabilities(mean, sd)
    p_ref, e_ref = quad_reference(mean, sd)
    np.testing.assert_allclose(p, p_ref, atol=1e-9)
    assert e_max == pytest.approx(e_ref, abs=1e-9 * sd.min() + 1e-13)


@pytest.mark.parametrize(
    ("mean", "sd"),
    [
        pytest.param((0.10, 0.12), (0.003, 0.004), id="separated"),
        pytest.param((0.10, 0.10), (0.001, 0.01), id="equal-means"),
        pytest.param((0.10, 0.101), (0.0001, 0.01), id="narrow-vs-wide"),
    ],
)
def test_two_arms_closed_forms(mean, sd):
    mean, sd = np.array(mean), np.array(sd)
    d = mean[1] - mean[0]
    s = math.hypot(*sd)
    e_max = mean[0] * sps.norm.cdf(-d / s) + mean[1] * sps.norm.cdf(d / s) + s * sps.norm.pdf(d / s)
    p, e = best_probabilities(mean, sd)
    assert p[1] == pytest.approx(sps.norm.cdf(d / s), abs=1e-11)
    assert e == pytest.approx(e_max, abs=1e-12)
    assert p_beats(mean, sd, 0)[1] == pytest.approx(sps.norm.cdf(d / s), rel=1e-13)


def test_p_beats_control_is_nan_for_the_control():
    out = p_beats(np.array([0.1, 0.11, 0.09]), np.array([0.01, 0.01, 0.02]), 1)
    assert math.isnan(out[1])
    assert out[0] == pytest.approx(sps.norm.cdf(-0.01 / math.hypot(0.01, 0.01)), rel=1e-13)


def test_summarize_is_consistent():
    d = data_from([[3000, 3000], [3000, 3000], [3000, 3000]], [[300, 310], [330, 350], [320, 300]])
    sm = summarize(d, control=0, policy=Policy())
    assert sm.p_best.sum() == pytest.approx(1.0, abs=1e-12)
    assert np.all(sm.expected_loss >= 0)
    assert int(np.argmin(sm.expected_loss)) == int(np.argmax(sm.mean))
    np.testing.assert_allclose(sm.ci_high - sm.ci_low, 2 * 1.959963984540054 * sm.sd)
    assert math.isnan(sm.p_beats_control[0])
    assert sm.srm_p is not None and sm.srm_p > 0.5


def test_srm_matches_scipy_chisquare():
    assigned = np.array([[480.0, 260.0], [520.0, 240.0]])
    weights = np.array([[0.5, 0.5], [0.5, 0.5]])
    stat, p = sps.chisquare([740, 760], [750, 750])
    assert srm_p_value(assigned, weights) == pytest.approx(p, rel=1e-10)


def test_srm_uses_each_epochs_weights():
    weights = np.array([[0.5, 0.2], [0.5, 0.8]])
    assigned = np.array([[500.0, 200.0], [500.0, 800.0]])
    assert srm_p_value(assigned, weights) == pytest.approx(1.0)
    # pooled over epochs the split looks like 700 / 1300, which is only fine against these weights
    assert srm_p_value(assigned, np.full((2, 2), 0.5)) < 1e-10


def test_srm_flags_a_ten_percent_loss_of_one_arm():
    rng = np.random.default_rng(0)
    epochs = 20
    served = rng.multinomial(500, [0.5, 0.5], size=epochs).T.astype(float)
    served[1] = np.round(served[1] * 0.9)  # 10% of arm 1's decision log lost
    assert srm_p_value(served, np.full((2, epochs), 0.5)) < 0.001


def test_srm_needs_enough_data():
    assert srm_p_value(np.zeros((2, 0)), np.zeros((2, 0))) is None
    assert srm_p_value(np.array([[3.0], [4.0]]), np.full((2, 1), 0.5)) is None
    assert srm_p_value(np.array([[30.0], [4.0]]), np.array([[1.0], [0.0]])) == 0.0


def test_value_remaining_is_small_for_a_clear_leader_and_large_for_a_tie():
    import numpy as np

    from promptops.stats import value_remaining

    rng = np.random.default_rng(3)
    clear = value_remaining(np.array([0.10, 0.20]), np.array([0.001, 0.001]), rng=rng)
    tie = value_remaining(np.array([0.10, 0.10]), np.array([0.01, 0.01]), rng=rng)
    assert clear is not None and clear < 0.001
    # two equal arms: the 95th percentile of |Z| * sqrt(2) * sd relative to 0.10 is about 0.28
    assert tie is not None and 0.2 < tie < 0.35
    assert value_remaining(np.array([0.1]), np.array([0.01]), rng=rng) is None
