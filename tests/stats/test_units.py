"""The shared data rules: maturation, unit folding, epoch closing and metric caps."""

import numpy as np
import pytest

from promptops.domain import Policy
from promptops.stats import (
    feedback_cohort_cutoff,
    fold_units,
    matured_values,
    maturity_cutoff,
    metric_cap,
    should_start_epoch,
)


def test_maturity_and_cohort_cutoffs():
    p = Policy(attribution_window_hours=3)
    assert maturity_cutoff(10.0, p) == 7.0
    assert feedback_cohort_cutoff(10.0, p) == 4.0


def test_missing_feedback_rules():
    got = np.array([True, False, True])
    reward = np.array([1.0, 1.0, 0.0])
    counted, value = matured_values(got, reward, reward_kind="binary", policy=Policy())
    assert counted.tolist() == [True, True, True] and value.tolist() == [1.0, 0.0, 0.0]
    counted, value = matured_values(got, reward, reward_kind="continuous", policy=Policy())
    assert counted.tolist() == [True, False, True]


def test_epoch_closes_on_count_and_time():
    p = Policy()
    assert should_start_epoch(matured_in_epoch=500, minutes_in_epoch=15, policy=p)
    assert not should_start_epoch(matured_in_epoch=499, minutes_in_epoch=60, policy=p)


def test_folding_units_in_pieces_equals_the_unit_means():
    rng = np.random.default_rng(3)
    units, k, e = 300, 2, 4
    arm = rng.integers(0, k, units)
    first = rng.integers(0, e, units)
    count, total = np.zeros(units), np.zeros(units)
    cells = np.zeros((3, k, e))
    for _ in range(5):  # five batches of matured values, some units in several
        who = rng.integers(0, units, 400)
        vals = rng.random(400)
        uniq, inv = np.unique(who, return_inverse=True)
        add_c = np.bincount(inv, minlength=uniq.size).astype(float)
        add_s = np.bincount(inv, weights=vals, minlength=uniq.size)
        cells += np.stack(
            fold_units(
                arms=k,
                epochs=e,
                arm=arm[uniq],
                first_epoch=first[uniq],
                old_count=count[uniq],
                old_sum=total[uniq],
                add_count=add_c,
                add_sum=add_s,
            )
        )
        count[uniq] += add_c
        total[uniq] += add_s
    has = count > 0
    mean = total[has] / count[has]
    for a in range(k):
        for ep in range(e):
            sel = (arm[has] == a) & (first[has] == ep)
            assert cells[0, a, ep] == pytest.approx(sel.sum())
            assert cells[1, a, ep] == pytest.approx(mean[sel].sum())
            assert cells[2, a, ep] == pytest.approx((mean[sel] ** 2).sum())


def test_without_units_folding_is_the_per_decision_sums():
    vals = np.array([1.0, 0.0, 1.0, 1.0])
    dn, ds, dss = fold_units(
        arms=2,
        epochs=1,
        arm=np.array([0, 0, 1, 1]),
        first_epoch=np.zeros(4, dtype=int),
        old_count=np.zeros(4),
        old_sum=np.zeros(4),
        add_count=np.ones(4),
        add_sum=vals,
    )
    assert dn[:, 0].tolist() == [2, 2] and ds[:, 0].tolist() == [1, 2] and dss[:, 0].tolist() == [1, 2]


def test_metric_cap_needs_enough_values():
    assert metric_cap(np.ones(50)) is None
    x = np.arange(1000.0)
    assert metric_cap(x) == pytest.approx(np.quantile(x, 0.995))
