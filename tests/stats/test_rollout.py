"""The guarded rollout's decision: continue the holdout, end it, or roll back."""

import numpy as np

from promptops.domain import HoldoutAction, Policy
from promptops.stats import holdout_step, holdout_weights, rollback_window
from promptops.stats.rollout import rollback_scan

POLICY = Policy()


def sums(mean_new, mean_old, n_new, n_old):
    """(n, s, ss) of binary outcomes with these exact rates."""
    return dict(
        n=(n_new, n_old), s=(mean_new * n_new, mean_old * n_old), ss=(mean_new * n_new, mean_old * n_old)
    )


def test_old_version_clearly_better_rolls_back():
    v = holdout_step(**sums(0.09, 0.11, 16_000, 4_000), decisions=5000, hours=5, policy=POLICY)
    assert v.action == HoldoutAction.ROLLBACK and v.p_old_better > 0.95
    assert "rolled back" in v.reason


def test_ties_continue_then_end_on_decisions_or_hours():
    tie = sums(0.10, 0.10, 8_000, 2_000)
    assert (
        holdout_step(**tie, decisions=1000, hours=1, policy=POLICY).action == HoldoutAction.CONTINUE_HOLDOUT
    )
    assert holdout_step(**tie, decisions=40_000, hours=1, policy=POLICY).action == HoldoutAction.END_HOLDOUT
    assert holdout_step(**tie, decisions=10, hours=72, policy=POLICY).action == HoldoutAction.END_HOLDOUT


def test_defaults_and_weights():
    assert POLICY.holdout_decisions_effective == 40_000 and rollback_window(POLICY) == 20_000
    np.testing.assert_allclose(holdout_weights(3, new=2, old=0, policy=POLICY), [0.2, 0, 0.8])
    assert Policy(holdout_decisions=500).holdout_decisions_effective == 500


def test_too_little_data_never_rolls_back():
    v = holdout_step(n=(1, 0), s=(1, 0), ss=(1, 0), decisions=1, hours=0, policy=POLICY)
    assert v.action == HoldoutAction.CONTINUE_HOLDOUT and v.p_old_better is None


def test_no_rollback_on_a_few_early_outcomes():
    early = sums(0.05, 0.12, 400, 100)  # old looks far better, but on 100 outcomes
    v = holdout_step(**early, decisions=500, hours=0.5, policy=POLICY)
    assert v.action == HoldoutAction.CONTINUE_HOLDOUT and v.p_old_better is None
    v = holdout_step(**early, decisions=500, hours=0.5, policy=Policy(min_samples_per_arm=50))
    assert v.action == HoldoutAction.ROLLBACK


def test_scan_windows_halve_the_rollback_window():
    assert rollback_scan(POLICY) == (20_000, 10_000, 5_000, 2_500)


def test_a_recent_fade_rolls_back_though_the_long_window_hides_it():
    # the new version's 20,000-decision window still averages its novelty weeks (10.5% vs 10%),
    # its last 2,500 show the fade (8.5%); the old version has 8,000 outcomes
    long_window = sums(0.105, 0.10, 20_000, 8_000)
    v = holdout_step(**long_window, decisions=20_000, hours=20, policy=POLICY)
    assert v.action == HoldoutAction.CONTINUE_HOLDOUT and v.p_old_better < 0.5
    faded = (2_500, 0.085 * 2_500, 0.085 * 2_500)
    v = holdout_step(**long_window, decisions=20_000, hours=20, policy=POLICY, recent=(faded,))
    assert v.action == HoldoutAction.ROLLBACK and v.p_old_better > 0.95
    assert "2,500" not in v.reason and "10,500" in v.reason


def test_short_windows_below_min_samples_are_ignored():
    few = (400, 0.0, 0.0)  # a zero rate on 400 outcomes
    v = holdout_step(**sums(0.11, 0.10, 20_000, 8_000), decisions=1, hours=0, policy=POLICY, recent=(few,))
    assert v.action == HoldoutAction.CONTINUE_HOLDOUT


def test_the_new_version_needs_five_times_min_samples_before_a_rollback():
    bad_start = sums(0.07, 0.10, 2_000, 10_000)  # its first 2,000 outcomes look 3 points worse
    v = holdout_step(**bad_start, decisions=2_500, hours=2.5, policy=POLICY)
    assert v.action == HoldoutAction.CONTINUE_HOLDOUT and v.p_old_better is None
    v = holdout_step(**sums(0.07, 0.10, 2_500, 10_000), decisions=3_000, hours=3, policy=POLICY)
    assert v.action == HoldoutAction.ROLLBACK
