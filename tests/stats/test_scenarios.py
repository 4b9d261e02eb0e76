"""STATS.md "What it must survive": every bench scenario against its pass level (slow)."""

from pathlib import Path

import pytest

from promptops.services.simulation import load_scenario, run_scenario

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scenarios"


def share(result, *arms):
    return sum(result["promoted"][a] for a in arms) / result["runs"]


def wrong(result):
    return result["wrong_promotions"] / result["runs"]


def check_aa(r):
    assert share(r, "challenger") <= 0.06
    assert r["inconclusive"] / r["runs"] >= 0.5


def check_near_equal(r):
    assert share(r, "challenger") <= 0.03


def check_ab_10_12(r):
    assert share(r, "challenger") >= 0.95
    assert share(r, "control") <= 0.01
    assert r["mean_regret"] <= 0.75 * r["uniform_regret"]


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


# (scenario file, runs used here: fewer than the file for the slowest rates near 5%, check)
CASES = [
    ("aa", 600, check_aa),
    ("near_equal", 600, check_near_equal),
    ("ab_10_12", 400, check_ab_10_12),
    ("ab_10_11", 400, check_ab_10_11),
    ("five_arms", 400, check_five_arms),
    ("drift", 600, check_drift),
    ("delayed", 1000, check_delayed),
    ("continuous", 400, check_continuous),
    ("shipped_defaults", 400, check_shipped_defaults),
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
