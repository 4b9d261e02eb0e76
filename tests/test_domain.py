"""Policy settings: the v2 settings' defaults, ranges, guardrails and the stats action names."""

import json
import re

import pytest

from promptops.domain import Guardrail, Policy, StatsAction, parse_policy, policy_setting
from promptops.errors import InvalidInput, InvalidPromptFile
from promptops.promptfiles import parse_prompt_text
from promptops.services.simulation import load_scenario


def test_v2_defaults():
    p = Policy()
    assert (p.alpha, p.srm_p_value, p.feedback_p_value) == (0.05, 0.005, 0.005)
    assert (p.equivalence_margin, p.value_remaining_stop) == (0.05, 0.01)
    assert (p.holdout_share, p.holdout_hours, p.holdout_decisions) == (0.20, 72.0, None)
    assert p.holdout_decisions_effective == 40_000 and p.guardrails == ()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param(
            {"holdout_share": 1}, "policy.holdout_share: must be at least 0 and below 1", id="holdout-share"
        ),
        pytest.param(
            {"holdout_decisions": 0},
            "policy.holdout_decisions: must be greater than 0",
            id="holdout-decisions",
        ),
        pytest.param(
            {"equivalence_margin": -0.1}, "policy.equivalence_margin: must be at least 0", id="margin"
        ),
        pytest.param(
            {"feedback_p_value": 1}, "policy.feedback_p_value: must be strictly between", id="feedback-p"
        ),
        pytest.param(
            {"guardrails": {"metric": "x"}}, "policy.guardrails: must be a list", id="guardrails-not-list"
        ),
        pytest.param(
            {"guardrails": [{"metric": "x"}]}, "policy.guardrails[0]: needs one of", id="guardrail-no-margin"
        ),
        pytest.param(
            {"guardrails": [{"metric": "x", "max_increase": -1}]},
            "policy.guardrails[0].max_increase: must be a finite number",
            id="negative",
        ),
        pytest.param(
            {"guardrails": [{"metric": "x", "max_increase": 0.1, "colour": 1}]},
            "policy.guardrails[0].colour: is not a guardrail key",
            id="unknown-key",
        ),
        pytest.param(
            {"guardrails": [{"metric": "x", "max_increase": 0.1, "max_increase_abs": 1}]},
            "policy.guardrails[0].max_increase_abs: cannot be combined",
            id="both",
        ),
        pytest.param(
            {"guardrails": [{"metric": "x", "max_increase": 0.1}, {"metric": "x", "max_decrease": 0.1}]},
            "policy.guardrails[1].metric: repeats",
            id="repeat",
        ),
    ],
)
def test_bad_v2_settings_are_refused(values, message):
    with pytest.raises(ValueError) as info:
        parse_policy(values)
    assert str(info.value).startswith(message), str(info.value)


def test_guardrails_round_trip_through_json():
    p = parse_policy(
        {
            "guardrails": [
                {"metric": "cost_usd", "max_increase": 0.1},
                {"metric": "error", "max_increase_abs": 0.01},
            ],
            "holdout_decisions": 5000,
        }
    )
    assert p.guardrails[0] == Guardrail("cost_usd", max_increase=0.1)
    assert parse_policy(json.loads(json.dumps(p.to_dict()))) == p
    assert parse_policy(json.loads(json.dumps(p.overrides()))) == p
    assert parse_policy({"holdout_decisions": None}).holdout_decisions is None


def test_actions_are_strings():
    assert StatsAction.PROMOTE == "promote" and str(StatsAction.KEEP_CONTROL) == "keep_control"


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        pytest.param("draws", 2000, (2000, None), id="int"),
        pytest.param("draws", 2000.0, (2000, None), id="whole-float-to-int"),
        pytest.param("min_hours", 2, (2.0, None), id="int-to-float"),
        pytest.param("holdout_decisions", None, (None, None), id="nullable"),
        pytest.param("allocation", "thompson", ("thompson", None), id="choice"),
        pytest.param("draws", 10.5, (10.5, "must be an integer, got number"), id="fraction"),
        pytest.param("min_hours", True, (True, "must be a number, got boolean"), id="bool"),
        pytest.param("alpha", "0.1", ("0.1", "must be a number, got string"), id="string"),
        pytest.param("alpha", None, (None, "must be a number, got null"), id="not-nullable"),
        pytest.param("alpha", 1.5, (1.5, "must be strictly between 0 and 1"), id="range"),
        pytest.param("max_days", 4000, (4000.0, "must be at most 3650"), id="cap"),
        pytest.param("alpha", float("nan"), (None, "must be finite"), id="nan"),
        pytest.param(
            "allocation", "greedy", ("greedy", "must be one of 'top_two', 'thompson'"), id="bad-choice"
        ),
    ],
)
def test_policy_setting_types_and_ranges(name, value, expected):
    got, problem = policy_setting(name, value)
    assert problem == expected[1]
    if expected[0] is not None:
        assert got == expected[0] and type(got) is type(expected[0])


BAD_SETTINGS = [
    pytest.param("draws", "10.5", "must be an integer, got number", id="fraction"),
    pytest.param("min_hours", "true", "must be a number, got boolean", id="bool"),
    pytest.param("alpha", "'x'", "must be a number, got string", id="string"),
    pytest.param("alpha", "1.5", "must be strictly between 0 and 1", id="range"),
    pytest.param("max_checks", "0", "must be greater than 0", id="count"),
    pytest.param("allocation", "greedy", "must be one of 'top_two', 'thompson'", id="choice"),
]


@pytest.mark.parametrize(("name", "text", "message"), BAD_SETTINGS)
def test_api_prompt_files_and_scenarios_give_one_message(name, text, message, tmp_path):
    value = json.loads(text.replace("'", '"')) if text != "greedy" else text
    with pytest.raises(ValueError) as api:
        parse_policy({name: value})
    assert str(api.value) == f"policy.{name}: {message}"

    prompt = (
        "name: p\ntemplate: x\nvariants: {b: {template: y}}\nexperiment:\n"
        f"  arms: [main, b]\n  policy: {{{name}: {text}}}\n"
    )
    with pytest.raises(InvalidPromptFile) as info:
        parse_prompt_text(prompt, path="p.yaml")
    assert [str(p) for p in info.value.problems] == [f"p.yaml:6: experiment.policy.{name}: {message}"]

    scenario = f"arms:\n  - {{name: a, mean: 0.1}}\n  - {{name: b, mean: 0.2}}\npolicy:\n  {name}: {text}\n"
    path = tmp_path / "s.yaml"
    path.write_text(scenario)
    with pytest.raises(InvalidInput) as sc:
        load_scenario(path)
    assert re.fullmatch(rf"{re.escape(str(path))}:5: policy\.{name}: {re.escape(message)}", str(sc.value))
