"""Scenario files: validation with clear messages, the bench scenarios, and run_scenario."""

import re
from pathlib import Path

import pytest

from promptops.domain import Policy
from promptops.errors import InvalidInput
from promptops.services.simulation import load_scenario, parse_scenario, run_scenario

BENCH = Path(__file__).resolve().parents[2] / "bench" / "scenarios"
BASE = {
    "name": "t",
    "runs": 6,
    "seed": 3,
    "decisions": 6000,
    "arms": [{"name": "control", "mean": 0.1}, {"name": "challenger", "mean": 0.3}],
    "policy": {"min_hours": 0},
}


def with_(**changes):
    raw = {**BASE, **changes}
    return {k: v for k, v in raw.items() if v is not None}


def test_contract_example_parses(tmp_path):
    path = tmp_path / "ab-small-lift.yaml"
    path.write_text(
        """name: ab-small-lift
runs: 200
seed: 7
decisions: 40000
decisions_per_hour: 500
reward: binary
concentration: 20
arms:
  - {name: control, mean: 0.10}
  - {name: challenger, mean: 0.12, feedback_delay_hours: 6}
drift: [{at: 0.5, multiply: 2.0}]
feedback_delay_hours: 0
feedback_rate: 1.0
policy: {}
tolerance: 0.005
"""
    )
    sc = load_scenario(path)
    assert sc.name == "ab-small-lift" and sc.runs == 200 and sc.decisions_per_hour == 500
    assert sc.arms[1].feedback_delay_hours == 6 and sc.arms[0].feedback_delay_hours == 0
    assert sc.drift == ((0.5, 2.0),) and sc.policy == Policy() and sc.tolerance == 0.005


def test_defaults_and_overrides():
    sc = parse_scenario(
        with_(
            feedback_delay_hours=2,
            concentration=7,
            reward="continuous",
            arms=[
                {"name": "a", "mean": 0.5, "concentration": 3},
                {"name": "b", "mean": 0.4, "feedback_delay_hours": 0},
            ],
            policy={"min_hours": 0, "update_every": 250, "missing_feedback": "zero", "alpha": 0.01},
        )
    )
    assert [a.feedback_delay_hours for a in sc.arms] == [2, 0]
    assert [a.concentration for a in sc.arms] == [3, 7]
    assert sc.policy.update_every == 250 and sc.policy.missing_feedback == "zero"
    assert sc.policy.alpha == 0.01 and sc.policy.min_hours == 0


@pytest.mark.parametrize(
    ("raw", "key"),
    [
        pytest.param(with_(speed=3), "speed", id="unknown-top-key"),
        pytest.param(with_(runs=0), "runs", id="runs-zero"),
        pytest.param(with_(runs="many"), "runs", id="runs-text"),
        pytest.param(with_(decisions=2.5), "decisions", id="decisions-float"),
        pytest.param(with_(reward="ordinal"), "reward", id="reward"),
        pytest.param(with_(arms=[{"name": "a", "mean": 0.1}]), "arms", id="one-arm"),
        pytest.param(
            with_(arms=[{"name": "a", "mean": 0.1}, {"name": "a", "mean": 0.2}]),
            "arms[1].name",
            id="duplicate-arm",
        ),
        pytest.param(
            with_(arms=[{"name": "a", "mean": 1.2}, {"name": "b", "mean": 0.2}]),
            "arms[0].mean",
            id="mean-above-1",
        ),
        pytest.param(
            with_(arms=[{"name": "a"}, {"name": "b", "mean": 0.2}]), "arms[0].mean", id="mean-missing"
        ),
        pytest.param(
            with_(arms=[{"name": "a", "mean": 0.1, "colour": 1}, {"name": "b", "mean": 0.2}]),
            "arms[0].colour",
            id="arm-key",
        ),
        pytest.param(with_(drift=[{"at": 0.5, "multiply": 4.0}]), "arms[1].mean", id="drift-beyond-1"),
        pytest.param(with_(drift=[{"at": 1.5, "multiply": 2.0}]), "drift[0].at", id="drift-at"),
        pytest.param(with_(drift={"at": 0.5}), "drift", id="drift-not-list"),
        pytest.param(with_(feedback_rate=1.5), "feedback_rate", id="feedback-rate"),
        pytest.param(with_(policy={"min_hour": 0}), "policy.min_hour", id="policy-unknown"),
        pytest.param(with_(policy={"alpha": 0}), "policy.alpha", id="policy-alpha"),
        pytest.param(with_(policy={"update_every": 0.5}), "policy.update_every", id="policy-int"),
        pytest.param(with_(policy={"allocation": "greedy"}), "policy.allocation", id="policy-choice"),
        pytest.param(with_(policy={"max_checks": True}), "policy.max_checks", id="policy-bool"),
        pytest.param(with_(tolerance=-1), "tolerance", id="tolerance"),
        pytest.param(with_(units={"mean_decisions": 0.5}), "units.mean_decisions", id="units-mean"),
        pytest.param(with_(units={"mean_decisions": 3, "icc": 1.5}), "units.icc", id="units-icc"),
        pytest.param(with_(units={"size": 3}), "units.size", id="units-key"),
        pytest.param(
            with_(arms=[{"name": "a", "mean": 0.1, "feedback_rate": 2}, {"name": "b", "mean": 0.2}]),
            "arms[0].feedback_rate",
            id="arm-feedback-rate",
        ),
        pytest.param(
            with_(arms=[{"name": "a", "mean": 0.1, "schedule": [{"at": 0.2}]}, {"name": "b", "mean": 0.2}]),
            "arms[0].schedule[0]",
            id="schedule-incomplete",
        ),
        pytest.param(
            with_(
                arms=[
                    {"name": "a", "mean": 0.1, "metrics": {"cost": {"sd": 1}}},
                    {"name": "b", "mean": 0.2, "metrics": {"cost": {"mean": 1}}},
                ]
            ),
            "arms[0].metrics.cost.mean",
            id="metric-mean",
        ),
        pytest.param(
            with_(
                arms=[
                    {"name": "a", "mean": 0.1, "metrics": {"cost": {"mean": 1}}},
                    {"name": "b", "mean": 0.2},
                ]
            ),
            "arms",
            id="metrics-differ",
        ),
        pytest.param(
            with_(policy={"guardrails": [{"metric": "cost_usd", "max_increase": 0.1}]}),
            "policy.guardrails[0].metric",
            id="guardrail-not-simulated",
        ),
        pytest.param(
            with_(policy={"guardrails": [{"metric": "cost_usd"}]}),
            "policy.guardrails[0]",
            id="guardrail-no-margin",
        ),
        pytest.param(with_(policy={"holdout_share": 1.0}), "policy.holdout_share", id="holdout-share"),
        pytest.param([1, 2], "mapping", id="not-a-mapping"),
    ],
)
def test_invalid_scenarios_name_the_key(raw, key):
    with pytest.raises(InvalidInput) as info:
        parse_scenario(raw, source="s.yaml")
    message = str(info.value)
    assert re.match(r"s\.yaml:\d+: ", message), message
    assert all(part in message for part in key.split(".")), message


def test_scenario_errors_give_the_line_and_every_problem(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text(
        "name: bad\n"
        "runs: 0\n"
        "arms:\n"
        "  - {name: control, mean: 0.1}\n"
        "  - {name: challenger, mean: 1.5}\n"
        "policy:\n"
        "  min_hour: 0\n"
    )
    with pytest.raises(InvalidInput) as info:
        load_scenario(path)
    assert str(info.value).splitlines() == [
        f"{path}:2: runs: must be an integer >= 1 (got 0)",
        f"{path}:5: arms[1].mean: must be a number >= 0 and <= 1 (got 1.5)",
        f"{path}:7: policy: unknown key 'min_hour' (did you mean 'min_hours'?)",
    ]


def test_v2_keys_parse():
    sc = parse_scenario(
        with_(
            units={"mean_decisions": 4, "icc": 0.2},
            arms=[
                {"name": "a", "mean": 0.1, "metrics": {"cost_usd": {"mean": 0.002, "sd": 0.001}}},
                {
                    "name": "b",
                    "mean": 0.12,
                    "feedback_rate": 0.5,
                    "schedule": [{"at": 0.2, "mean": 0.09}],
                    "metrics": {"cost_usd": {"mean": 0.003, "sd": 0.001}},
                },
            ],
            policy={
                "min_hours": 0,
                "holdout_share": 0.1,
                "holdout_decisions": None,
                "guardrails": [{"metric": "cost_usd", "max_increase": 0.1}],
            },
        )
    )
    assert sc.unit_mean_decisions == 4 and sc.unit_icc == 0.2
    assert sc.arms[1].feedback_rate == 0.5 and sc.arms[0].feedback_rate is None
    assert sc.arms[1].schedule == ((0.2, 0.09),)
    assert sc.arms[1].metrics == (("cost_usd", 0.003, 0.001),)
    assert sc.policy.guardrails[0].metric == "cost_usd" and sc.policy.holdout_share == 0.1
    assert sc.policy.guardrails[0].max_increase == 0.1


def test_unreadable_and_malformed_files(tmp_path):
    with pytest.raises(InvalidInput, match="no such file"):
        load_scenario(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("arms: [\n")
    with pytest.raises(InvalidInput, match=r"bad\.yaml:\d+: "):
        load_scenario(bad)


@pytest.mark.parametrize("path", sorted(BENCH.glob("*.yaml")), ids=lambda p: p.stem)
def test_bench_scenarios_load(path):
    sc = load_scenario(path)
    assert sc.decisions_per_hour == 1000
    assert sc.runs in (400, 1000)
    assert sc.policy.min_hours == (24 if path.stem == "shipped_defaults" else 0)


def test_plan_reports_detection_time_and_aa_rate():
    from promptops.services.simulation import plan_scenarios, run_plan

    ab, aa = plan_scenarios(base_rate=0.1, lift=0.02, arms=3, decisions_per_hour=500, units=3.0, runs=5)
    assert [a.mean for a in ab.arms] == [0.1, 0.1, pytest.approx(0.12)]
    assert [a.mean for a in aa.arms] == [0.1, 0.1, 0.1] and ab.unit_mean_decisions == 3.0
    seen = []
    result = run_plan(
        base_rate=0.1,
        lift=0.1,
        decisions_per_hour=2000,
        runs=4,
        workers=1,
        progress=lambda done, total: seen.append((done, total)),
    )
    assert seen[-1] == (8, 8)
    assert result.detection_rate == 1.0 and 0 < result.median_decisions < 100_000
    assert result.median_hours == pytest.approx(result.median_decisions / 2000)
    assert result.sentence().startswith(
        "with 2,000 decisions an hour and a 10% base rate, a 10-point lift is found in 100% of runs"
    )
    with pytest.raises(InvalidInput):
        plan_scenarios(base_rate=0.95, lift=0.1)


def test_run_scenario_reports_progress_and_matches_across_workers():
    sc = parse_scenario(BASE)
    seen = []
    inline = run_scenario(sc, workers=1, progress=lambda done, total: seen.append((done, total)))
    assert seen[0] == (0, 6) and seen[-1] == (6, 6)
    assert inline["runs"] == 6 and inline["promoted"]["challenger"] == 6
    pooled = run_scenario(sc, workers=2)
    assert pooled == inline
    assert run_scenario(sc, runs=2, workers=1)["runs"] == 2


def test_a_plan_that_never_finds_the_lift_says_so():
    """With no run finding the lift the figures are the whole budget, not a time to find it; a
    rate below one decision an hour is not printed as 0."""
    from promptops.services.simulation import PlanResult
    from promptops.simreport import plan_rows

    result = PlanResult(
        runs=2,
        detection_rate=0.0,
        median_hours=1e11,
        median_decisions=100_000,
        aa_false_promotion=0.0,
        base_rate=0.1,
        lift=0.02,
        decisions_per_hour=1e-6,
    )
    assert result.sentence() == (
        "with 1e-06 decisions an hour and a 10% base rate, a 2-point lift is not found in any run "
        "within 100,000,000,000 hours (100,000 decisions); an A/A test would promote wrongly in 0%"
    )
    rows = dict(plan_rows(result))
    assert rows["median time to find it"] == "not found within 100,000,000,000 hours"
    assert rows["median decisions to find it"] == "not found within 100,000"
    assert rows["decisions per hour"] == "1e-06"
