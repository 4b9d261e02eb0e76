"""STATS.md "What it must survive": every bench scenario against its pass level (slow)."""

from pathlib import Path

import pytest

from promptops.services.simulation import load_scenario, run_scenario

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scenarios"


def share(result, *arms):
    return sum(result["promoted"][a] for a in arms) / result["runs"]


def wrong(result):
    return result["wrong_promotions"] / result["runs"]


def final(result, arm):
    return result["final"][arm] / result["runs"]


def check_aa(r):
    assert share(r, "challenger") <= 0.06
    assert r["inconclusive"] / r["runs"] >= 0.5


def check_near_equal(r):
    assert share(r, "challenger") <= 0.03


def check_ab_10_12(r):
    assert share(r, "challenger") >= 0.92
    assert share(r, "control") <= 0.01
    # the guarded rollout keeps 20% of traffic on the old version for a while after promotion
    assert r["mean_regret"] <= 0.8 * r["uniform_regret"]


def check_ab_10_11(r):
    assert share(r, "challenger") >= 0.88
    assert share(r, "control") <= 0.02


def check_five_arms(r):
    assert share(r, "eleven-half", "twelve") >= 0.85
    assert wrong(r) <= 0.02  # control, nine or eleven: more than 0.5 points below the best


def check_drift(r):
    assert share(r, "challenger-a", "challenger-b") <= 0.06


def check_delayed(r):
    assert wrong(r) <= 0.01


def check_continuous(r):
    assert share(r, "challenger") >= 0.95
    assert wrong(r) <= 0.01


def check_shipped_defaults(r):
    assert share(r, "challenger") >= 0.90
    assert share(r, "control") <= 0.01


def check_sessions_aa(r):
    assert share(r, "challenger") <= 0.06
    assert r["frozen"]["srm"] / r["runs"] <= 0.02


def check_sessions_ab(r):
    assert share(r, "challenger") >= 0.90
    assert wrong(r) <= 0.01


def check_late(r):
    assert wrong(r) <= 0.02
    assert r["frozen"]["feedback"] / r["runs"] >= 0.9  # frozen and flagged instead


def check_novelty(r):
    # STATS.md: the control in production in >= 85% of runs (94% at 400 runs: the rollback test
    # compares the old version's own recent outcomes with the new version's shorter recent windows)
    assert final(r, "control") >= 0.85
    assert r["rolled_back"] / r["runs"] >= 0.75


def check_guardrail_holds(r):
    assert share(r, "challenger") >= 0.90


def check_guardrail_blocks(r):
    assert share(r, "challenger") <= 0.02
    assert r["guardrail_blocked"] / r["runs"] >= 0.9


def check_many_looks(r):
    assert share(r, "challenger") <= 0.06
    assert r["median_decisions_to_end"] <= 0.6 * 150_000


def check_six_arms_aa(r):
    # STATS.md 14: top-two sampling starves the arms that look worse; the "no meaningful winner"
    # horizon rule ends the run well before the cap (100k)
    challengers = [a for a in r["promoted"] if a != "control"]
    assert share(r, *challengers) <= 0.06
    assert r["median_decisions_to_end"] <= 0.8 * 100_000


# (scenario file, runs used here: fewer than the file for the slowest rates near 5%, check)
# The report's figures come from bench/run_scenarios.py at the files' full counts; the counts here
# keep the slow set near ten minutes on two cores.
CASES = [
    ("aa", 300, check_aa),
    ("near_equal", 300, check_near_equal),
    ("ab_10_12", 200, check_ab_10_12),
    ("ab_10_11", 200, check_ab_10_11),
    ("five_arms", 100, check_five_arms),
    ("six_arms_aa", 200, check_six_arms_aa),
    ("drift", 300, check_drift),
    ("delayed", 300, check_delayed),
    ("continuous", 200, check_continuous),
    ("shipped_defaults", 200, check_shipped_defaults),
    ("sessions_aa", 300, check_sessions_aa),
    ("sessions_ab", 200, check_sessions_ab),
    ("late_challenger", 200, check_late),
    ("late_control", 200, check_late),
    ("novelty", 200, check_novelty),
    ("guardrail_holds", 200, check_guardrail_holds),
    ("guardrail_blocks", 200, check_guardrail_blocks),
    ("many_looks", 200, check_many_looks),
]


@pytest.mark.slow
@pytest.mark.parametrize(("name", "runs", "check"), [pytest.param(*c, id=c[0]) for c in CASES])
def test_scenario_passes(name, runs, check):
    scenario = load_scenario(BENCH / f"{name}.yaml")
    result = run_scenario(scenario, runs=min(runs, scenario.runs))
    try:
        check(result)
    except AssertionError as exc:
        raise AssertionError(f"{name}: {result}") from exc
