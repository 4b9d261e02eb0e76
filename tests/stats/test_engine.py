"""The policy step: burn-in, checks, promotion, keep-control, limit, SRM and fixed weights."""

import json

import numpy as np
import pytest

from promptops.domain import Policy
from promptops.stats import (
    EpochData,
    PolicyState,
    decide,
    early_stop,
    promotion_chance,
    promotion_threshold,
    should_start_epoch,
    step,
    summarize,
)

POLICY = Policy(min_hours=0)


def epochs(rates, per_epoch, count, *, weights=None, served=None) -> EpochData:
    """`count` epochs of `per_epoch` matured outcomes split evenly, each arm at its exact rate."""
    k = len(rates)
    n = np.full((k, count), per_epoch / k)
    s = n * np.asarray(rates)[:, None]
    w = np.full((k, count), 1.0 / k) if weights is None else weights
    assigned = n.copy() if served is None else served
    return EpochData(n=n, s=s, ss=s.copy(), assigned=assigned, weights=w)


def run(data, state=None, policy=POLICY, *, hours=100.0, total=None, **kw):
    total = int(data.n.sum()) if total is None else total
    return step(
        data,
        control=0,
        state=state or PolicyState(),
        policy=policy,
        rng=np.random.default_rng(0),
        hours_elapsed=hours,
        decisions_total=total,
        **kw,
    )


def test_should_start_epoch():
    p = Policy()
    assert should_start_epoch(matured_in_epoch=500, minutes_in_epoch=15, policy=p)
    assert not should_start_epoch(matured_in_epoch=499, minutes_in_epoch=60, policy=p)
    assert not should_start_epoch(matured_in_epoch=5000, minutes_in_epoch=14.9, policy=p)


def test_burn_in_keeps_equal_weights_until_samples_and_hours():
    data = epochs([0.10, 0.30], 500, 1)  # 250 per arm, a huge difference
    r = run(data)
    assert r.action == "continue" and not r.checked and not r.state.burn_in_done
    np.testing.assert_allclose(r.weights, [0.5, 0.5])
    assert "burn-in" in r.reason and "250 of 500" in r.reason
    r = run(epochs([0.10, 0.30], 500, 4), policy=Policy(min_hours=24), hours=23.0)
    assert not r.state.burn_in_done and "23.0 of 24 hours" in r.reason
    r = run(epochs([0.10, 0.30], 500, 4), policy=Policy(min_hours=24), hours=24.0)
    assert r.state.burn_in_done and not r.checked  # the first check comes one interval later


def test_checks_are_spaced_one_interval_apart_after_burn_in():
    # one check per 2,500; no early stop without a winner (it would end this A/A before the limit)
    policy = Policy(min_hours=0, max_decisions=20_000, max_checks=8, value_remaining_stop=0)
    state = PolicyState()
    checked_at = []
    for e in range(1, 41):
        r = run(epochs([0.10, 0.10], 500, e), state, policy, total=500 * e + 1000)
        state = r.state
        if r.checked:
            checked_at.append(500 * e)
        if r.action != "continue":
            break
    # burn-in ends at 1,000 matured; checks at 3,500, 6,000, ... never two in a row
    assert checked_at[:3] == [3500, 6000, 8500]
    assert np.all(np.diff(checked_at[:-1]) == 2500)
    assert checked_at[-1] == 19_000  # the limit boundary (20k served) gets a final check
    assert state.checks_done <= policy.max_checks
    assert r.action == "inconclusive"


def test_never_more_than_max_checks():
    policy = Policy(min_hours=0, max_decisions=10**9, max_checks=3, update_every=500)
    state = PolicyState(burn_in_done=True, next_check_at=1)
    for e in range(1, 30):
        state = run(epochs([0.1, 0.1], 10**8, e), state, policy).state
    assert state.checks_done == 3


def test_promotes_a_clear_winner_at_a_check():
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(epochs([0.10, 0.13], 500, 10), state)
    assert r.checked and r.action == "promote" and r.winner == 1
    np.testing.assert_allclose(r.weights, [0.0, 1.0])
    # the first look, at 5,000 of 100,000 matured decisions, spends alpha(0.05) of 0.05
    assert r.threshold == pytest.approx(promotion_threshold(POLICY, arms=2, looks=[0.05]))
    assert "(needs 99.588%)" in r.reason and r.state.looks == (0.05,)


def test_threshold_is_bonferroni_over_challengers():
    # one look at the whole horizon spends all of alpha: 95% with two arms, 97.5% with three;
    # z = 0.02 / 0.0111 = 1.80 clears the first but not the second, z = 2.0 clears both
    assert promotion_threshold(POLICY, arms=2, looks=[1.0]) == pytest.approx(0.95, abs=1e-6)
    assert promotion_threshold(POLICY, arms=3, looks=[1.0]) == pytest.approx(0.975, abs=1e-6)
    for mean, sd3, expected in [
        ([0.10, 0.12], 0.0111, "promote"),
        ([0.10, 0.10, 0.12], 0.0111, "continue"),
        ([0.10, 0.10, 0.12], 0.0100, "promote"),
    ]:
        mean = np.array(mean)
        sd = np.full(mean.size, 0.0001)
        sd[-1] = sd3
        need = promotion_threshold(POLICY, arms=mean.size, looks=[1.0])
        action, _, reason = decide(summarize_from(mean, sd), control=0, policy=POLICY, need=need)
        assert action == expected, reason


def summarize_from(mean, sd):
    from promptops.stats.estimator import Summary, best_probabilities, p_beats

    p_best, e_max = best_probabilities(mean, sd)
    return Summary(
        mean=mean,
        sd=sd,
        ci_low=mean,
        ci_high=mean,
        p_best=p_best,
        expected_loss=e_max - mean,
        p_beats_control=p_beats(mean, sd, 0),
        srm_p=None,
    )


def test_loss_rule_blocks_promotion_with_a_wide_competitor():
    # arm 1 clearly beats the control, but arm 2 is so uncertain that arm 1's expected loss is high
    mean = np.array([0.10, 0.12, 0.115])
    sd = np.array([0.001, 0.001, 0.05])
    action, _, reason = decide(summarize_from(mean, sd), control=0, policy=POLICY)
    assert action == "continue" and "expected loss" in reason


def test_keeps_the_control_when_it_is_clearly_best():
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(epochs([0.14, 0.10], 500, 10), state)
    assert r.action == "keep_control" and r.winner == 0


def test_undecided_check_says_how_far_it_is():
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(epochs([0.10, 0.104], 500, 10), state)
    assert r.checked and r.action == "continue"
    assert r.reason.startswith("needs 99.588% to promote; arm 1 is at ")


def test_limit_ends_inconclusive_without_relaxing():
    state = PolicyState(burn_in_done=True, next_check_at=10**6, checks_done=5)
    r = run(epochs([0.10, 0.104], 500, 10), state, total=100_000)
    assert r.checked and r.action == "inconclusive" and r.winner is None
    np.testing.assert_allclose(r.weights, [1.0, 0.0])
    r = run(epochs([0.10, 0.104], 500, 10), state, hours=30 * 24, total=5000)
    assert r.action == "inconclusive"


def test_limit_boundary_still_decides_a_clear_winner():
    state = PolicyState(burn_in_done=True, next_check_at=10**6, checks_done=5)
    r = run(epochs([0.10, 0.13], 500, 10), state, total=100_000)
    assert r.action == "promote" and r.winner == 1


def test_lost_decision_log_raises_sticky_alarm_and_freezes_promotion():
    rng = np.random.default_rng(4)
    count = 20  # 10k decisions in epochs of 500
    served = rng.multinomial(500, [0.5, 0.5], size=count).T.astype(float)
    served[1] = np.round(served[1] * 0.9)  # 10% of arm 1's decision log lost
    data = epochs([0.10, 0.14], 500, count, served=served)
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(data, state)
    assert r.state.srm_alarm and r.checked
    assert r.action == "continue" and r.winner is None
    assert "sample ratio mismatch" in r.reason and "frozen" in r.reason
    # the alarm stays after the data look fine again, and even the limit cannot promote
    clean = epochs([0.10, 0.14], 500, count + 5)
    r2 = run(clean, r.state, total=100_000)
    assert r2.state.srm_alarm and r2.action == "inconclusive"


def test_fixed_strategy_keeps_its_weights():
    fixed = np.array([0.8, 0.2])
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    data = epochs([0.10, 0.104], 500, 10, weights=np.tile(fixed[:, None], 10))
    data = EpochData(n=data.n, s=data.s, ss=data.ss, assigned=data.weights * 500, weights=data.weights)
    r = run(data, state, strategy="fixed", fixed_weights=fixed)
    np.testing.assert_allclose(r.weights, fixed)
    r = run(epochs([0.10, 0.13], 500, 10), state, strategy="fixed", auto_promote=False)
    assert r.action == "continue" and not r.checked and "without automatic promotion" in r.reason
    r = run(epochs([0.10, 0.13], 500, 10), state, strategy="fixed", auto_promote=True)
    assert r.action == "promote"


def test_state_round_trips_through_json():
    state = PolicyState(checks_done=3, burn_in_done=True, srm_alarm=True, next_check_at=8500.0)
    again = PolicyState.from_dict(json.loads(json.dumps(state.to_dict())))
    assert again == state
    assert PolicyState.from_dict(None) == PolicyState()
    assert PolicyState.from_dict({"checks_done": 2, "unknown": 1}).checks_done == 2


def test_bad_arguments():
    data = epochs([0.1, 0.1], 500, 2)
    with pytest.raises(ValueError):
        step(
            data,
            control=2,
            state=PolicyState(),
            policy=POLICY,
            rng=np.random.default_rng(),
            hours_elapsed=1,
            decisions_total=10,
        )
    with pytest.raises(ValueError):
        run(data, strategy="greedy")
    with pytest.raises(ValueError):
        run(epochs([0.1], 500, 2))


def test_summary_arrays_have_one_entry_per_arm():
    s = summarize(epochs([0.1, 0.11, 0.12], 600, 3), control=0, policy=POLICY)
    for name in ("mean", "sd", "ci_low", "ci_high", "p_best", "expected_loss", "p_beats_control"):
        assert getattr(s, name).shape == (3,)


def test_no_check_before_twice_the_attribution_window():
    policy = Policy(min_hours=0, attribution_window_hours=3)
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(epochs([0.10, 0.13], 500, 10), state, policy, hours=5.9)
    assert not r.checked and r.action == "continue" and "twice the attribution window" in r.reason
    r = run(epochs([0.10, 0.13], 500, 10), state, policy, hours=6.0)
    assert r.checked and r.action == "promote"


def test_equivalent_arms_end_inconclusive_early():
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(epochs([0.10, 0.1001], 200_000, 1), state, Policy(min_hours=0, max_decisions=10**6))
    assert r.action == "inconclusive" and r.stop_reason == "equivalent"
    assert r.reason.startswith("equivalent: every challenger's 95% interval")
    np.testing.assert_allclose(r.weights, [1.0, 0.0])
    off = Policy(min_hours=0, max_decisions=10**6, equivalence_margin=0, value_remaining_stop=0)
    assert run(epochs([0.10, 0.1001], 200_000, 1), state, off).action == "continue"


def test_no_meaningful_winner_stops_when_no_challenger_can_be_much_better():
    from promptops.stats import value_remaining_vs_control

    mean, sd = np.array([0.10, 0.09, 0.095]), np.array([0.0005, 0.002, 0.002])
    vr = value_remaining_vs_control(mean, sd, control=0, arms=[1, 2])
    draws = np.random.default_rng(1).normal(mean, sd, size=(400_000, 3))
    mc = np.quantile(np.maximum(draws[:, 1:].max(axis=1) - draws[:, 0], 0), 0.95)
    assert vr == pytest.approx(mc, abs=1e-4)


def test_promotion_chance_is_the_predictive_probability_at_the_lowest_boundary():
    mean, sd = np.array([0.10, 0.102, 0.097]), np.array([0.003, 0.002, 0.004])
    n = np.array([10_000.0, 22_500.0, 5_600.0])
    got = promotion_chance(
        summarize_from(mean, sd), control=0, arms=[1, 2], per_arm=n, units_left=20_000, alpha=0.05
    )
    # by simulation, for arm 1 (arm 2 is far behind): it and the control get 10,000 more units
    # each; a true mean is drawn from the posterior, the new units' mean around it, and the final
    # estimate pools old and new; it must clear the fixed-sample z of alpha / 2
    rng = np.random.default_rng(3)
    arms = [0, 1]
    finals, end_var = [], 0.0
    for a in arms:
        theta = rng.normal(mean[a], sd[a], 400_000)
        sigma = sd[a] * np.sqrt(n[a])
        new = rng.normal(theta, sigma / np.sqrt(10_000))
        finals.append((n[a] * mean[a] + 10_000 * new) / (n[a] + 10_000))
        end_var += sigma**2 / (n[a] + 10_000)
    z = 1.959963984540054  # Phi^-1(1 - 0.05 / 2)
    expected = np.mean(finals[1] - finals[0] >= z * np.sqrt(end_var))
    assert got == pytest.approx(expected, abs=0.005)
    assert (
        promotion_chance(summarize_from(mean, sd), control=0, arms=[1], per_arm=n, units_left=0, alpha=0.05)
        == 1
    )


def test_no_challenger_that_can_still_win_ends_with_no_meaningful_winner():
    # six equal arms, 80,000 units in, 20,000 left: no challenger can still clear the boundary
    mean = np.array([0.100, 0.1015, 0.099, 0.1008, 0.098, 0.1002])
    n = np.array([12_000.0, 18_000, 7_000, 16_000, 6_000, 21_000])
    summary = summarize_from(mean, np.sqrt(0.09 / n))
    found = early_stop(summary, control=0, policy=POLICY, live=[1, 2, 3, 4, 5], per_arm=n, units_left=20_000)
    assert found is not None and found[0] == "no_meaningful_winner"
    assert "no challenger has more than" in found[1]
    # a challenger 15% ahead keeps the experiment going
    ahead = summarize_from(np.where(np.arange(6) == 1, 0.115, mean), np.sqrt(0.09 / n))
    assert (
        early_stop(ahead, control=0, policy=POLICY, live=[1, 2, 3, 4, 5], per_arm=n, units_left=20_000)
        is None
    )
    # early on, with most of the horizon left, nothing is futile yet
    assert (
        early_stop(summary, control=0, policy=POLICY, live=[1, 2, 3, 4, 5], per_arm=n / 10, units_left=94_000)
        is None
    )
    # the rule belongs to the no-meaningful-winner stop: value_remaining_stop 0 turns it off
    off = Policy(min_hours=0, value_remaining_stop=0)
    assert (
        early_stop(summary, control=0, policy=off, live=[1, 2, 3, 4, 5], per_arm=n, units_left=20_000) is None
    )


def test_the_limit_keeps_its_own_reason():
    state = PolicyState(burn_in_done=True, next_check_at=10**6, checks_done=5)
    r = run(epochs([0.10, 0.1], 500, 10), state, total=100_000)
    assert r.action == "inconclusive" and r.stop_reason == "limit"


def test_late_feedback_freezes_promotion_with_the_arm_named():
    from promptops.stats import FeedbackCounts

    data = epochs([0.10, 0.13], 500, 10)
    fb = FeedbackCounts(
        eligible=np.array([2000.0, 2000.0]), on_time=np.array([200.0, 0.0]), late=np.array([0.0, 260.0])
    )
    data = EpochData(
        n=data.n, s=data.s, ss=data.ss, assigned=data.assigned, weights=data.weights, feedback=fb
    )
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(data, state, names=["v1", "v2"])
    assert r.state.feedback_alarm and r.action == "continue" and r.checked
    assert "v2's feedback arrives later than the window" in r.reason and "frozen" in r.reason
    r2 = run(epochs([0.10, 0.13], 500, 12), r.state, total=100_000)
    assert r2.state.feedback_alarm and r2.action == "inconclusive"  # sticky, even at the limit


def test_guardrail_blocks_and_keeps_the_challenger_at_the_floor():
    from promptops.domain import Guardrail
    from promptops.stats import MetricData

    data = epochs([0.10, 0.10, 0.13], 600, 10)
    n = data.n
    cost = MetricData(
        n=n, s=n * np.array([[2.0], [2.0], [2.6]]), ss=n * (np.array([[2.0], [2.0], [2.6]]) ** 2 + 0.36)
    )
    data = EpochData(
        n=n, s=data.s, ss=data.ss, assigned=data.assigned, weights=data.weights, metrics={"cost_usd": cost}
    )
    policy = Policy(min_hours=0, guardrails=(Guardrail("cost_usd", max_increase=0.1),))
    state = PolicyState(burn_in_done=True, next_check_at=2500)
    r = run(data, state, policy, names=["a", "b", "c"])
    assert r.state.blocked == (2,) and r.action != "promote"
    assert any(v.sentence.startswith("blocked: c cost_usd +30%") for v in r.guardrails)
    assert r.weights[2] == pytest.approx(0.1 / 3)
