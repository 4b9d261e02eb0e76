"""The simulator: reproducibility, feedback semantics, drift, regret and the CONTRACT result."""

import dataclasses

import numpy as np
import pytest

import promptops.stats
from promptops.domain import Policy
from promptops.stats import matured_values, simulator
from promptops.stats.simulator import (
    Scenario,
    SimArm,
    aggregate,
    mean_schedule,
    simulate_run,
    simulate_runs,
)

CONTRACT_KEYS = {
    "runs",
    "promoted",
    "final",
    "inconclusive",
    "rolled_back",
    "wrong_promotions",
    "frozen",
    "guardrail_blocked",
    "median_decisions_to_end",
    "mean_regret",
    "uniform_regret",
}


def scenario(*means, decisions=6000, **kw) -> Scenario:
    arms = kw.pop("arms", None) or tuple(SimArm(f"arm{i}", m) for i, m in enumerate(means))
    policy = Policy(min_hours=0).with_overrides(kw.pop("policy", {}))
    return Scenario(name="t", arms=arms, runs=4, seed=5, decisions=decisions, policy=policy, **kw)


def test_the_simulator_runs_the_server_step():
    assert simulator.step is promptops.stats.step


def test_runs_are_reproducible_and_independent_of_batching():
    sc = scenario(0.10, 0.12)
    one_by_one = [simulate_run(sc, i) for i in range(4)]
    assert simulate_runs(sc, range(4)) == one_by_one
    assert simulate_runs(sc, range(2, 4)) == one_by_one[2:]
    assert len({r.regret for r in one_by_one}) > 1  # runs differ from each other


def test_aggregate_has_exactly_the_contract_keys():
    sc = scenario(0.10, 0.30, decisions=8000)
    result = aggregate(sc, simulate_runs(sc, range(4)))
    assert set(result) == CONTRACT_KEYS
    assert result["runs"] == 4
    assert set(result["promoted"]) == {"arm0", "arm1"}
    assert result["promoted"]["arm1"] + result["inconclusive"] + result["promoted"]["arm0"] == 4
    assert result["promoted"]["arm1"] == 4  # 10% vs 30% is decided within 8k decisions
    assert result["mean_regret"] < result["uniform_regret"]


def test_production_takes_the_rest_of_the_traffic():
    sc = scenario(0.10, 0.30, decisions=30_000, policy={"holdout_share": 0})
    r = simulate_run(sc, 0)
    assert r.winner == 1 and r.decisions_to_end < 10_000
    # after the end only the winner is served, so regret stops growing
    assert r.regret < 0.2 * r.decisions_to_end
    assert r.uniform_regret == pytest.approx(0.1 * 30_000)


def test_traffic_ending_first_counts_as_inconclusive():
    r = simulate_run(scenario(0.10, 0.10, decisions=3000), 0)
    assert r.winner is None and r.action == "running" and r.decisions_to_end == 3000


def test_limit_ends_the_run_inconclusive():
    sc = scenario(0.10, 0.10, decisions=8000, policy={"max_decisions": 5000, "max_checks": 2})
    r = simulate_run(sc, 1)
    assert r.action in ("inconclusive", "keep_control", "promote")
    if r.action == "inconclusive":
        assert r.decisions_to_end == 5000


def _assigned_run(sc, n=20_000):
    run = simulator._Run(dataclasses.replace(sc, decisions=n), 0)
    run.assign(0, n, np.full(len(sc.arms), 1.0 / len(sc.arms)))
    run.counted, run.val = matured_values(run.on_time, run.reward, reward_kind=sc.reward, policy=sc.policy)
    return run


def test_feedback_after_the_window_counts_as_zero():
    arms = (SimArm("late", 0.5, feedback_delay_hours=2.0), SimArm("now", 0.5))
    run = _assigned_run(scenario(arms=arms, policy={"attribution_window_hours": 1.0}))
    late, now = run.arm[:20_000] == 0, run.arm[:20_000] == 1
    assert run.counted[:20_000].all()
    assert run.val[:20_000][late].sum() == 0
    assert run.val[:20_000][now].mean() == pytest.approx(0.5, abs=0.02)


def test_feedback_exactly_at_the_window_counts():
    arms = (SimArm("edge", 0.5, feedback_delay_hours=1.0), SimArm("now", 0.5))
    run = _assigned_run(scenario(arms=arms, policy={"attribution_window_hours": 1.0}))
    assert run.val[:20_000][run.arm[:20_000] == 0].mean() == pytest.approx(0.5, abs=0.02)


def test_missing_feedback_ignore_leaves_outcomes_out():
    sc = scenario(0.4, 0.4, feedback_rate=0.5, policy={"missing_feedback": "ignore"})
    run = _assigned_run(sc)
    assert run.counted[:20_000].mean() == pytest.approx(0.5, abs=0.02)
    assert run.val[:20_000][run.counted[:20_000]].mean() == pytest.approx(0.4, abs=0.02)
    zero = _assigned_run(dataclasses.replace(sc, policy=Policy(missing_feedback="zero")))
    assert zero.counted[:20_000].all()
    assert zero.val[:20_000].mean() == pytest.approx(0.2, abs=0.02)


def test_continuous_rewards_follow_the_beta_model():
    arms = (SimArm("a", 0.58, concentration=100), SimArm("b", 0.62, concentration=2))
    run = _assigned_run(scenario(arms=arms, reward="continuous"), 40_000)
    for a, mean, c in ((0, 0.58, 100), (1, 0.62, 2)):
        x = run.val[:40_000][run.arm[:40_000] == a]
        assert x.mean() == pytest.approx(mean, abs=0.01)
        assert x.var() == pytest.approx(mean * (1 - mean) / (c + 1), rel=0.06)


def test_drift_multiplies_every_mean_from_its_point():
    sc = scenario(0.1, 0.2, decisions=1000, drift=((0.2, 2.0), (0.5, 0.5)))
    starts, mu = mean_schedule(sc)
    assert starts.tolist() == [0, 200, 500]
    np.testing.assert_allclose(mu, [[0.1, 0.2], [0.2, 0.4], [0.1, 0.2]])
    r = simulate_run(sc, 0)
    assert r.uniform_regret == pytest.approx(200 * 0.05 + 300 * 0.1 + 500 * 0.05)


def test_wrong_promotion_uses_the_tolerance_with_float_slack():
    means = np.array([0.10, 0.09, 0.11, 0.115, 0.12])
    assert not simulator.is_wrong(means, 3, 0.005)  # exactly 0.5 points below, up to rounding
    assert simulator.is_wrong(means, 2, 0.005)
    assert not simulator.is_wrong(means, 4, 0.0)
    assert simulator.is_wrong(np.array([0.103, 0.100]), 1, 0.0)


def test_units_keep_their_first_arm_and_srm_counts_new_units():
    sc = scenario(0.1, 0.1, unit_mean_decisions=4.0, unit_icc=0.2)
    run = _assigned_run(sc)
    unit, arm = run.traffic.unit, run.arm
    per_unit = np.zeros((run.traffic.units, 2))
    np.add.at(per_unit, (unit, arm), 1)
    assert ((per_unit > 0).sum(axis=1) == 1).all()  # every unit saw one arm only
    sizes = np.bincount(unit)
    assert sizes.mean() == pytest.approx(4.0, rel=0.1)
    assert run.traffic.first.sum() == run.traffic.units


def test_unit_propensity_correlates_rewards_within_units():
    run = _assigned_run(scenario(0.3, 0.3, unit_mean_decisions=6.0, unit_icc=0.3), 40_000)
    unit, reward = run.traffic.unit, run.reward
    counts = np.bincount(unit)
    means = np.bincount(unit, weights=reward) / counts
    big = counts >= 4
    # the variance of unit means exceeds the binomial variance by the icc's share
    p = reward.mean()
    expected = p * (1 - p) * (0.3 + 0.7 / counts[big])
    assert means[big].var() == pytest.approx(expected.mean(), rel=0.2)


def test_per_arm_feedback_rate_schedule_and_metrics():
    arms = (
        SimArm("a", 0.2, feedback_rate=0.5, metrics=(("cost_usd", 2.0, 0.5),)),
        SimArm("b", 0.2, schedule=((0.5, 0.4),), metrics=(("cost_usd", 3.0, 0.5),)),
    )
    sc = scenario(arms=arms, decisions=20_000)
    starts, mu = mean_schedule(sc)
    assert starts.tolist() == [0, 10_000]
    np.testing.assert_allclose(mu, [[0.2, 0.2], [0.2, 0.4]])
    run = _assigned_run(sc)
    a = run.arm == 0
    assert run.got[a].mean() == pytest.approx(0.5, abs=0.02) and run.got[~a].all()
    assert run.metric[0, a].mean() == pytest.approx(2.0, abs=0.03)
    assert run.metric[0, ~a].mean() == pytest.approx(3.0, abs=0.03) and run.metric.min() >= 0


def test_late_arm_feedback_is_counted_late_once_it_arrives():
    arms = (SimArm("late", 0.5, feedback_delay_hours=4.0), SimArm("now", 0.5))
    sc = scenario(arms=arms, policy={"attribution_window_hours": 3.0})
    run = _assigned_run(sc)
    fb = simulator._feedback_counts(run, 8000.0)  # 8 h at 1,000 an hour: cohort is hours 0..2
    assert fb.eligible.sum() == 2001
    assert fb.on_time[0] == 0 and fb.late[0] == fb.eligible[0]
    assert fb.late[1] == 0 and fb.on_time[1] == fb.eligible[1]


def test_a_promotion_is_followed_by_a_holdout_and_counted_once():
    sc = scenario(0.10, 0.30, decisions=20_000)
    results = simulate_runs(sc, range(4))
    out = aggregate(sc, results)
    assert out["promoted"]["arm1"] == 4 and out["final"]["arm1"] == 4 and out["rolled_back"] == 0
    # the holdout keeps serving the old production after the promotion: regret keeps growing
    r = results[0]
    assert r.regret > 0.2 * 0.2 * (20_000 - r.decisions_to_end) * 0.9


def test_a_novelty_that_flips_is_rolled_back():
    arms = (SimArm("control", 0.10), SimArm("novel", 0.30, schedule=((0.1, 0.02),)))
    sc = scenario(arms=arms, decisions=60_000, policy={"max_decisions": 60_000})
    out = aggregate(sc, simulate_runs(sc, range(4)))
    assert out["promoted"]["novel"] == 4 and out["rolled_back"] == 4
    assert out["final"]["control"] == 4 and out["wrong_promotions"] == 0


def test_a_unit_counts_once_in_a_metric_however_many_decisions_it_makes():
    arms = (
        SimArm("a", 0.2, metrics=(("cost_usd", 2.0, 1.0),)),
        SimArm("b", 0.2, metrics=(("cost_usd", 3.0, 1.0),)),
    )
    sc = scenario(arms=arms, unit_mean_decisions=8.0, unit_icc=0.1)
    run = _assigned_run(sc, 6000)
    sums = simulator._Sums(run)
    # fold in two batches: a unit with decisions in both has its mean moved, not added twice
    for lo, hi in ((0, 2500), (2500, 6000)):
        sums.fold(lo, hi, reward_kind=sc.reward, policy=sc.policy)
    cap = sums.caps[0]
    assert cap is not None
    unit, value = run.traffic.unit, np.minimum(run.metric[0], cap)
    sizes = np.bincount(unit)
    means = np.bincount(unit, weights=value) / np.maximum(sizes, 1)
    arm_of = run.unit_arm
    assert sizes.max() >= 15  # some units make many decisions
    for a in (0, 1):
        mine = (arm_of == a) & (sizes > 0)
        n, s, ss = sums.mcells[0, :, a, 0]
        assert n == mine.sum()  # one observation per unit
        assert s == pytest.approx(means[mine].sum(), rel=1e-9)
        assert ss == pytest.approx((means[mine] ** 2).sum(), rel=1e-9)


def test_a_metric_cap_fixed_after_small_folds_caps_the_values_summed_before():
    arms = (
        SimArm("a", 0.2, metrics=(("cost_usd", 2.0, 3.0),)),
        SimArm("b", 0.2, metrics=(("cost_usd", 2.0, 3.0),)),
    )
    sc = scenario(arms=arms, unit_mean_decisions=3.0, unit_icc=0.1)
    run = _assigned_run(sc, 400)
    sums = simulator._Sums(run)
    for lo, hi in ((0, 50), (50, 60), (60, 400)):  # the cap waits for 100 values
        sums.fold(lo, hi, reward_kind=sc.reward, policy=sc.policy)
        assert (sums.caps[0] is None) == (hi < 100)
    cap = sums.caps[0]
    assert cap == promptops.stats.metric_cap(run.metric[0, :100]) and (run.metric[0, :60] > cap).any()
    unit, value = run.traffic.unit, np.minimum(run.metric[0], cap)
    sizes = np.bincount(unit)
    means = np.bincount(unit, weights=value)[sizes > 0] / sizes[sizes > 0]
    n, s, ss = sums.mcells[0, :, :, 0].sum(axis=1)
    assert n == (sizes > 0).sum()
    assert s == pytest.approx(means.sum(), rel=1e-9) and ss == pytest.approx((means**2).sum(), rel=1e-9)
