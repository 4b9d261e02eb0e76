"""The epoch-stratified estimator, its Gaussian posterior, and accurate P(best) and expected loss.

Per arm a and epoch e we hold n, the sum and the sum of squares of matured rewards. The epoch weight
w_e is the epoch's share of all matured outcomes (over arms); for arm a it is renormalised over the
epochs where a has n > 0, so an arm missing from an epoch is estimated on the epochs it has (with a
floor every arm is in every epoch, so this only matters for fixed weights of 0). Then

    mean_a = sum_e w_e * mean_{a,e}          var_a = sum_e w_e^2 * s2_{a,e} / n_{a,e}

where s2_{a,e} is the epoch's sample variance shrunk toward the arm's pooled within-epoch variance
with 10 pseudo-observations, and that pooled variance is itself shrunk toward m0 (1 - m0) (the
largest variance a reward in [0, 1] with mean m0 can have) with 2 pseudo-observations; m0 is the
pooled mean of all arms with half a success in one pseudo-observation. So n = 1..5 never gives a
zero variance. The prior on each arm's mean is N(m0, m0 (1 - m0) / prior_strength): one
observation's worth by default, centred on the pooled mean, which shrinks arms slightly toward each
other. The posterior is the Gaussian combination of that prior with N(mean_a, var_a).

P(best) and E[max_j theta_j] are one-dimensional integrals over independent Gaussians, computed by
8-point Gauss-Legendre on every interval between the merged breakpoints of all arms (each arm's mean
+- 0, 0.5, ..., 9 sd), so a narrow posterior next to a wide one is still resolved (error about 1e-12
against adaptive quadrature in the tests). The expected loss of arm a is E[max_j theta_j] - mean_a.
P(theta_a > theta_control) is the closed form Phi((mu_a - mu_c) / sqrt(sd_a^2 + sd_c^2)).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from promptops.domain import Policy
from promptops.stats.special import chi2_sf, norm_cdf, norm_cdf_scalar, norm_pdf
from promptops.stats.units import FeedbackCounts, MetricData

EPOCH_PSEUDO_N = 10.0
ARM_PSEUDO_N = 2.0
CI_Z = 1.959963984540054
SRM_MIN_EXPECTED = 5.0
_HALF = [0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5, 4.5, 5.5, 7.0, 9.0]
_BREAKS_Z = np.array([-z for z in reversed(_HALF)] + [0.0] + _HALF)
_GL_T, _GL_W = np.polynomial.legendre.leggauss(8)


@dataclass(frozen=True)
class EpochData:
    """Per-arm, per-epoch sufficient statistics, shape (K arms, E epochs): n units with a counted
    outcome, the sum and sum of squares of their mean matured rewards (each unit in the epoch of its
    first exposure), `assigned` new units per epoch (the SRM counts) and the epoch's weights; plus the
    per-arm feedback counts and any secondary or guardrail metric's sums."""

    n: np.ndarray
    s: np.ndarray
    ss: np.ndarray
    assigned: np.ndarray
    weights: np.ndarray
    feedback: FeedbackCounts | None = None
    metrics: dict[str, MetricData] | None = None

    @classmethod
    def empty(cls, k: int) -> EpochData:
        """Data for k arms and no epoch yet."""
        z = np.zeros((k, 0))
        return cls(n=z, s=z, ss=z, assigned=z, weights=z)

    @classmethod
    def from_cells(
        cls,
        k: int,
        e: int,
        cells: Iterable[tuple[int, int, float, float, float, float]],
        weights: Iterable[tuple[int, Sequence[float]]],
    ) -> EpochData:
        """Data from stored rows: (arm, epoch, n, s, ss, assigned) cells and (epoch, weights)."""
        n, s, ss, assigned, w = (np.zeros((k, e)) for _ in range(5))
        for arm, epoch, cn, cs, css, ca in cells:
            if 0 <= arm < k and 0 <= epoch < e:
                n[arm, epoch], s[arm, epoch], ss[arm, epoch] = cn, cs, css
                assigned[arm, epoch] = ca
        for epoch, ws in weights:
            if 0 <= epoch < e and len(ws) == k:
                w[:, epoch] = ws
        return cls(n=n, s=s, ss=ss, assigned=assigned, weights=w)

    @property
    def arms(self) -> int:
        """The number of arms K."""
        return int(np.shape(self.n)[0])


@dataclass(frozen=True)
class Summary:
    """Posterior figures per arm (arrays of length K) and the sample-ratio-mismatch p-value."""

    mean: np.ndarray
    sd: np.ndarray
    ci_low: np.ndarray
    ci_high: np.ndarray
    p_best: np.ndarray
    expected_loss: np.ndarray
    p_beats_control: np.ndarray  # NaN for the control itself
    srm_p: float | None


def _arrays(data: EpochData) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    n = np.asarray(data.n, dtype=float)
    s = np.asarray(data.s, dtype=float)
    ss = np.asarray(data.ss, dtype=float)
    if n.ndim != 2 or s.shape != n.shape or ss.shape != n.shape:
        raise ValueError("EpochData arrays must share one shape (K arms, E epochs)")
    return n, s, ss


def posterior(data: EpochData, *, policy: Policy) -> tuple[np.ndarray, np.ndarray]:
    """The posterior mean and standard deviation of each arm's mean reward."""
    n, s, ss = _arrays(data)
    total_n = n.sum()
    m0 = (s.sum() + 0.5) / (total_n + 1.0)
    v0 = max(m0 * (1.0 - m0), 1e-6)
    prior_var = v0 / max(policy.prior_strength, 1e-12)

    has = n > 0
    safe_n = np.where(has, n, 1.0)
    epoch_mean = np.where(has, s / safe_n, 0.0)
    ssw = np.where(has, np.maximum(ss - s * epoch_mean, 0.0), 0.0)  # within-epoch sum of squares
    dof = np.where(has, n - 1.0, 0.0)
    arm_var = (ssw.sum(axis=1) + ARM_PSEUDO_N * v0) / (dof.sum(axis=1) + ARM_PSEUDO_N)
    epoch_var = (ssw + EPOCH_PSEUDO_N * arm_var[:, None]) / (dof + EPOCH_PSEUDO_N)

    epoch_total = n.sum(axis=0)
    w = np.where(has, epoch_total[None, :], 0.0)
    wsum = w.sum(axis=1)
    data_arm = wsum > 0
    w = w / np.where(data_arm, wsum, 1.0)[:, None]
    est_mean = (w * epoch_mean).sum(axis=1)
    est_var = (w**2 * epoch_var / safe_n).sum(axis=1)

    data_prec = np.where(data_arm, 1.0 / np.where(data_arm, est_var, 1.0), 0.0)
    prec = data_prec + 1.0 / prior_var
    mean = (est_mean * data_prec + m0 / prior_var) / prec
    return mean, np.sqrt(1.0 / prec)


def _nodes(mean: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Legendre nodes and weights on the merged breakpoints of every arm's mean +- 9 sd."""
    breaks = np.unique((mean[:, None] + sd[:, None] * _BREAKS_Z[None, :]).ravel())
    lo, hi = breaks[:-1], breaks[1:]
    half = 0.5 * (hi - lo)
    x = (0.5 * (hi + lo))[:, None] + half[:, None] * _GL_T[None, :]
    w = half[:, None] * _GL_W[None, :]
    return x.ravel(), w.ravel()


def best_probabilities(mean: np.ndarray, sd: np.ndarray) -> tuple[np.ndarray, float]:
    """P(arm a is the largest) for each arm, and E[max_j theta_j], for independent Gaussians."""
    mean = np.asarray(mean, dtype=float)
    sd = np.asarray(sd, dtype=float)
    k = mean.size
    if k == 1:
        return np.ones(1), float(mean[0])
    x, w = _nodes(mean, sd)
    z = (x[None, :] - mean[:, None]) / sd[:, None]
    cdf = norm_cdf(z)
    pdf = norm_pdf(z) / sd[:, None]
    ones = np.ones((1, x.size))
    prefix = np.cumprod(np.vstack([ones, cdf[:-1]]), axis=0)
    suffix = np.cumprod(np.vstack([ones, cdf[:0:-1]]), axis=0)[::-1]
    density = pdf * prefix * suffix  # density of theta_a at x times P(all others below x)
    mass = density @ w
    total = mass.sum()
    p_best = mass / total
    e_max = float((density.sum(axis=0) * x) @ w / total)
    return p_best, max(e_max, float(mean.max()))


def p_beats(mean: np.ndarray, sd: np.ndarray, reference: int) -> np.ndarray:
    """P(theta_a > theta_reference) for each arm a in closed form (NaN for the reference)."""
    out = np.full(len(mean), math.nan)
    for a in range(len(mean)):
        if a != reference:
            scale = math.sqrt(float(sd[a]) ** 2 + float(sd[reference]) ** 2)
            out[a] = norm_cdf_scalar((float(mean[a]) - float(mean[reference])) / scale)
    return out


def stratified(n: np.ndarray, s: np.ndarray, ss: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Epoch-stratified mean and standard error per arm of any metric (no prior: NaN without
    data), with the same epoch weights as the primary estimator and a pooled within-arm variance
    where an epoch has fewer than two units."""
    n = np.asarray(n, dtype=float)
    s = np.asarray(s, dtype=float)
    ss = np.asarray(ss, dtype=float)
    has = n > 0
    safe_n = np.where(has, n, 1.0)
    epoch_mean = np.where(has, s / safe_n, 0.0)
    ssw = np.where(has, np.maximum(ss - s * epoch_mean, 0.0), 0.0)
    dof = np.where(has, n - 1.0, 0.0)
    pooled = ssw.sum(axis=1) / np.maximum(dof.sum(axis=1), 1.0)
    epoch_var = (ssw + EPOCH_PSEUDO_N * pooled[:, None]) / (dof + EPOCH_PSEUDO_N)
    w = np.where(has, n.sum(axis=0)[None, :], 0.0)
    wsum = w.sum(axis=1)
    live = wsum > 0
    w = w / np.where(live, wsum, 1.0)[:, None]
    mean = np.where(live, (w * epoch_mean).sum(axis=1), np.nan)
    var = np.where(live, (w**2 * epoch_var / safe_n).sum(axis=1), np.nan)
    return mean, np.sqrt(var)


def srm_p_value(assigned: np.ndarray, weights: np.ndarray) -> float | None:
    """Chi-squared p-value of the served counts against each epoch's weights (None if too few).

    Expected counts are built epoch by epoch (epoch total times its weights) and summed per arm;
    the statistic compares per-arm totals with K - 1 degrees of freedom, which keeps a steady loss
    of one arm's log visible instead of diluting it over many epochs' degrees of freedom.
    """
    assigned = np.asarray(assigned, dtype=float)
    weights = np.asarray(weights, dtype=float)
    if assigned.size == 0:
        return None
    col = weights.sum(axis=0)
    share = weights / np.where(col > 0, col, 1.0)[None, :]
    expected = (share * assigned.sum(axis=0)[None, :]).sum(axis=1)
    observed = assigned.sum(axis=1)
    live = expected > 0
    if np.any(observed[~live] > 0):
        return 0.0  # traffic reached an arm whose weight was zero throughout
    if live.sum() < 2 or expected[live].min() < SRM_MIN_EXPECTED:
        return None
    stat = float((((observed - expected) ** 2)[live] / expected[live]).sum())
    return chi2_sf(stat, int(live.sum()) - 1)


def summarize(data: EpochData, *, control: int, policy: Policy) -> Summary:
    """Posterior means, 95% intervals, P(best), expected loss, P(beats control) and SRM p."""
    mean, sd = posterior(data, policy=policy)
    p_best, e_max = best_probabilities(mean, sd)
    loss = np.maximum(e_max - mean, 0.0)
    return Summary(
        mean=mean,
        sd=sd,
        ci_low=mean - CI_Z * sd,
        ci_high=mean + CI_Z * sd,
        p_best=p_best,
        expected_loss=loss,
        p_beats_control=p_beats(mean, sd, control),
        srm_p=srm_p_value(data.assigned, data.weights),
    )


def value_remaining(
    mean: np.ndarray, sd: np.ndarray, *, rng: np.random.Generator, draws: int = 10_000, quantile: float = 0.95
) -> float | None:
    """Scott's "potential value remaining": the `quantile` of (max_j theta_j - theta_w) / theta_w
    over the posterior, w being the arm with the smallest expected loss; how much better than the
    current leader another arm could still plausibly be (a report figure, not a stopping input)."""
    mean, sd = np.asarray(mean, dtype=float), np.asarray(sd, dtype=float)
    if mean.size < 2 or not (np.all(np.isfinite(mean)) and np.all(np.isfinite(sd))):
        return None
    theta = rng.normal(mean, sd, size=(draws, mean.size))
    best = theta.max(axis=1)
    leader = int(np.argmin((best[:, None] - theta).mean(axis=0)))
    gap = best - theta[:, leader]
    scale = abs(float(mean[leader]))
    value = float(np.quantile(gap, quantile))
    return value / scale if scale > 0 else value
