"""The bandit and its stopping rule (STATS.md), in pure numpy: no I/O, a Generator passed in.

Model, for K arms (0..K-1, one of them the control) with rewards in [0, 1], binary or continuous:

- Data. Only matured outcomes count (the services apply the attribution window). Allocation weights
  are constant within an epoch; per arm and epoch we keep n, sum and sum of squares of rewards, the
  decisions served, and the weights in force.
- Estimator. Epoch-stratified: mean_a = sum_e w_e mean_{a,e}, w_e the epoch's share of all matured
  outcomes (renormalised over the epochs where arm a has data), and var_a = sum_e w_e^2 s2_{a,e} /
  n_{a,e}, s2 shrunk toward the arm's pooled variance so that small n never gives zero variance.
- Prior and posterior. theta_a ~ N(m0, m0 (1 - m0) / prior_strength) with m0 the pooled mean (one
  observation's worth by default); the posterior is Gaussian: prior x N(mean_a, var_a).
- Summaries. P(best) and expected loss E[max_j theta_j - theta_a] by Gauss-Legendre quadrature;
  P(theta_a > theta_control) in closed form. No Monte Carlo near a threshold.
- Allocation. Equal weights during burn-in (every arm min_samples_per_arm matured outcomes and
  min_hours elapsed). Then top-two Thompson sampling (beta = top_two_beta) from `draws` posterior
  draws (exact P(best) with two arms), or plain Thompson sampling, mixed with an even split so every
  arm gets at least floor / K: weights = floor / K + (1 - floor) * psi.
- Stopping rule. Checks are due every max_decisions / max_checks matured outcomes counted from the
  end of burn-in, at the first epoch boundary past each (one per interval, at most max_checks). With
  w the arm of smallest expected loss: promote a challenger w if P(theta_w > theta_control) >= 1 -
  alpha / (K - 1) and E[loss_w] <= loss_threshold * mean_w; keep the control if it is w with P(best)
  >= control_p_best and the same loss rule. At max_decisions served or max_days elapsed the boundary
  also checks (if a check is left) and otherwise ends `inconclusive`.
- Safety. Sample ratio mismatch: chi-squared of served counts per arm against the counts expected
  from each epoch's weights (K - 1 df); p < srm_p_value raises a sticky alarm that freezes
  promotion.
"""

from promptops.stats.allocation import apply_floor, thompson_weights
from promptops.stats.engine import (
    ACTIONS,
    PolicyState,
    StepResult,
    check_interval,
    decide,
    initial_weights,
    new_rng,
    promotion_threshold,
    should_start_epoch,
    step,
)
from promptops.stats.estimator import (
    EpochData,
    Summary,
    best_probabilities,
    p_beats,
    posterior,
    srm_p_value,
    summarize,
    value_remaining,
)
from promptops.stats.special import chi2_sf, norm_cdf

__all__ = [
    "ACTIONS",
    "EpochData",
    "PolicyState",
    "StepResult",
    "Summary",
    "apply_floor",
    "best_probabilities",
    "check_interval",
    "chi2_sf",
    "decide",
    "initial_weights",
    "new_rng",
    "norm_cdf",
    "p_beats",
    "posterior",
    "promotion_threshold",
    "should_start_epoch",
    "srm_p_value",
    "step",
    "summarize",
    "thompson_weights",
    "value_remaining",
]
