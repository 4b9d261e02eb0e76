"""The bandit, its stopping rule and its safety checks (STATS.md), in pure numpy: no I/O, a
Generator passed in. The server and the simulator call the same functions.

Model, for K arms (0..K-1, one of them the control) with rewards in [0, 1], binary or continuous:

- Data (`units`). Only matured outcomes count: a decision matures when its attribution window
  closes; feedback within the window counts its reward, missing feedback counts 0
  (`missing_feedback: zero`) or nothing (`ignore`). A unit (a `unit_id`, else the decision itself)
  is one observation: the mean of its counted values, in the stratum of its first-exposure epoch.
  Allocation weights are constant within an epoch; an epoch closes after update_every matured
  outcomes and min_update_minutes. Per arm and epoch we keep units n, the sum and sum of squares
  of unit means, the new units (`assigned`) and the weights in force; per arm the feedback counts.
- Estimator (`estimator`). Epoch-stratified: mean_a = sum_e w_e mean_{a,e}, w_e the epoch's share
  of all units (renormalised over the epochs where arm a has data), and var_a = sum_e w_e^2
  s2_{a,e} / n_{a,e}, s2 shrunk toward the arm's pooled variance so that small n never gives zero
  variance.
- Prior and posterior. theta_a ~ N(m0, m0 (1 - m0) / prior_strength) with m0 the pooled mean (one
  observation's worth by default); the posterior is Gaussian: prior x N(mean_a, var_a).
- Summaries. P(best) and expected loss E[max_j theta_j - theta_a] by Gauss-Legendre quadrature;
  P(theta_a > theta_control) in closed form. No Monte Carlo near a threshold.
- Allocation (`allocation`). Equal weights during burn-in (every arm min_samples_per_arm units and
  min_hours elapsed). Then top-two Thompson sampling (beta = top_two_beta), or plain Thompson
  sampling, mixed with an even split so every arm gets at least floor / K; an arm blocked by a
  guardrail keeps the floor only.
- Checks. Due every max_decisions / max_checks matured decisions from the end of burn-in (at most
  max_checks), never before twice the attribution window has passed.
- Promotion (`spending`). Error over many looks: information fraction t = matured decisions /
  max_decisions, Lan-DeMets Pocock-type spending alpha(t) = alpha ln(1 + (e - 1) t) of
  alpha / (K - 1) per challenger, the one-sided boundary of each look computed exactly from the
  fractions of all looks so far. With w the non-blocked arm of smallest expected loss: promote a
  challenger w if P(theta_w > theta_control) >= Phi(boundary), E[loss_w] <= loss_threshold * mean_w
  and every guardrail allows it; keep the control if it is w with P(best) >= control_p_best and the
  same loss rule.
- Early stops without a winner (production stays): "equivalent" when every live challenger's 95%
  interval for its difference from the control lies within +-equivalence_margin x the control's
  mean; "no meaningful winner" when the 95th percentile of max(0, max_j theta_j - theta_control)
  is under value_remaining_stop x the control's mean (Scott's rule; at 10% it needs about a
  million units per arm, so at the default horizon it rarely fires), or when no live challenger
  can still be promoted by the limit: even with all the units left before max_decisions split
  between it and the control, the posterior predictive probability that its difference ends above
  Phi^-1(1 - alpha / (K - 1)) (a floor no look's boundary goes under) is at most 5%
  (`promotion_chance`; value_remaining_stop 0 turns both off). Top-two sampling starves the
  arms that look worse, so their intervals stay wide and the equivalence stop cannot end a
  many-arm A/A; their predictive chance is small because their means are low, which ends it
  (6-arm A/A, 100k: median 77,000 decisions over 1,000 runs, instead of the limit).
  "guardrails" when every challenger is blocked. These stops only lower the false-promotion rate;
  what they cost in detection is measured by the scenario rows.
- Limit. At max_decisions served or max_days elapsed the boundary checks once more (if a check is
  left) and otherwise ends `inconclusive`; thresholds are never relaxed.
- Guardrails (`guardrails`). Metrics are estimated like the reward (stratified Gaussian on unit
  means, values capped at a high quantile); allowed when P(change within the margin) >= 0.95,
  blocked when P(beyond it) >= 0.99, pending otherwise. Secondary metrics only get intervals.
- Safety (`validity`). Sample ratio mismatch (new units per arm against each epoch's weights) and
  feedback validity (late share per arm; feedback rate per arm under `ignore`), chi-squared on
  cumulative counts at every epoch, each at the level the budget (srm_p_value, feedback_p_value)
  accrued since the previous test allows under the same spending function (Bonferroni over the
  increments): a healthy run is frozen at most that often. A flag is sticky and freezes promotion.
- Guarded rollout (`rollout`). After a promotion the old production keeps holdout_share; rollback
  when P(old > new) >= 0.95 on the most recent matured window of 20% of max_decisions.
"""

from promptops.stats.allocation import apply_floor, thompson_weights
from promptops.stats.engine import (
    ACTIONS,
    PolicyState,
    StatsAction,
    StepResult,
    check_interval,
    decide,
    early_stop,
    initial_weights,
    new_rng,
    promotion_chance,
    promotion_threshold,
    step,
    value_remaining_vs_control,
)
from promptops.stats.estimator import (
    EpochData,
    Summary,
    best_probabilities,
    p_beats,
    posterior,
    srm_p_value,
    stratified,
    summarize,
    value_remaining,
)
from promptops.stats.guardrails import GuardrailVerdict, MetricEstimate, guardrail_verdicts, metric_estimates
from promptops.stats.rollout import (
    HoldoutVerdict,
    holdout_step,
    holdout_weights,
    rollback_scan,
    rollback_window,
)
from promptops.stats.special import chi2_sf, norm_cdf
from promptops.stats.spending import boundary, information_fraction, safety_level, spent
from promptops.stats.units import (
    CAP_MIN_VALUES,
    FeedbackCounts,
    MetricData,
    feedback_cohort_cutoff,
    fold_units,
    matured_values,
    maturity_cutoff,
    metric_cap,
    should_start_epoch,
)
from promptops.stats.validity import FeedbackFinding, contingency_p, feedback_finding

__all__ = [
    "ACTIONS",
    "CAP_MIN_VALUES",
    "EpochData",
    "FeedbackCounts",
    "FeedbackFinding",
    "GuardrailVerdict",
    "HoldoutVerdict",
    "MetricData",
    "MetricEstimate",
    "PolicyState",
    "StatsAction",
    "StepResult",
    "Summary",
    "apply_floor",
    "best_probabilities",
    "boundary",
    "check_interval",
    "chi2_sf",
    "contingency_p",
    "decide",
    "early_stop",
    "feedback_cohort_cutoff",
    "feedback_finding",
    "fold_units",
    "guardrail_verdicts",
    "holdout_step",
    "holdout_weights",
    "information_fraction",
    "initial_weights",
    "matured_values",
    "maturity_cutoff",
    "metric_cap",
    "metric_estimates",
    "new_rng",
    "norm_cdf",
    "p_beats",
    "posterior",
    "promotion_chance",
    "promotion_threshold",
    "rollback_scan",
    "rollback_window",
    "safety_level",
    "should_start_epoch",
    "spent",
    "srm_p_value",
    "step",
    "stratified",
    "summarize",
    "thompson_weights",
    "value_remaining",
    "value_remaining_vs_control",
]
