"""The guarded rollout's decision: continue the holdout, end it, or roll back."""

import numpy as np

from promptops.domain import HoldoutAction, Policy
from promptops.stats import holdout_step, holdout_weights, rollback_window

POLICY = Policy()


def sums(mean_new, mean_old, n_new, n_old):
    """(n, s, ss) of binary outcomes with these exact rates."""
    return dict(n=(n_new, n_old), s=(mean_new * n_new, mean_old * n_old),
                ss=(mean_new * n_new, mean_old * n_old))


def test_old_version_clearly_better_rolls_back():
    v = holdout_step(**sums(0.09, 0.11, 16_000, 4_000), decisions=5000, hours=5, policy=POLICY)
    assert v.action == HoldoutAction.ROLLBACK and v.p_old_better > 0.95
    assert "rolled back" in v.reason


def test_ties_continue_then_end_on_decisions_or_hours():
    tie = sums(0.10, 0.10, 8_000, 2_000)
    assert holdout_step(**tie, decisions=1000, hours=1, policy=POLICY).action == \
        HoldoutAction.CONTINUE_HOLDOUT
    assert holdout_step(**tie, decisions=40_000, hours=1, policy=POLICY).action == \
        HoldoutAction.END_HOLDOUT
    assert holdout_step(**tie, decisions=10, hours=72, policy=POLICY).action == \
        HoldoutAction.END_HOLDOUT


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
