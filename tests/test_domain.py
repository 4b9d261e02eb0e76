"""Policy settings: the v2 settings' defaults, ranges, guardrails and the stats action names."""

import json

import pytest

from promptops.domain import Guardrail, Policy, StatsAction, parse_policy


def test_v2_defaults():
    p = Policy()
    assert (p.alpha, p.srm_p_value, p.feedback_p_value) == (0.05, 0.005, 0.005)
    assert (p.equivalence_margin, p.value_remaining_stop) == (0.05, 0.01)
    assert (p.holdout_share, p.holdout_hours, p.holdout_decisions) == (0.20, 72.0, None)
    assert p.holdout_decisions_effective == 40_000 and p.guardrails == ()


@pytest.mark.parametrize(
    ("values", "message"),
    [
        pytest.param({"holdout_share": 1}, "policy.holdout_share: must be at least 0 and below 1",
                     id="holdout-share"),
        pytest.param({"holdout_decisions": 0}, "policy.holdout_decisions: must be greater than 0",
                     id="holdout-decisions"),
        pytest.param({"equivalence_margin": -0.1}, "policy.equivalence_margin: must be at least 0",
                     id="margin"),
        pytest.param({"feedback_p_value": 1}, "policy.feedback_p_value: must be strictly between",
                     id="feedback-p"),
        pytest.param({"guardrails": {"metric": "x"}}, "policy.guardrails: must be a list",
                     id="guardrails-not-list"),
        pytest.param({"guardrails": [{"metric": "x"}]}, "policy.guardrails[0]: needs one of",
                     id="guardrail-no-margin"),
        pytest.param({"guardrails": [{"metric": "x", "max_increase": -1}]},
                     "policy.guardrails[0].max_increase: must be a finite number", id="negative"),
        pytest.param({"guardrails": [{"metric": "x", "max_increase": 0.1, "colour": 1}]},
                     "policy.guardrails[0].colour: is not a guardrail key", id="unknown-key"),
        pytest.param({"guardrails": [{"metric": "x", "max_increase": 0.1,
                                      "max_increase_abs": 1}]},
                     "policy.guardrails[0].max_increase_abs: cannot be combined", id="both"),
        pytest.param({"guardrails": [{"metric": "x", "max_increase": 0.1},
                                     {"metric": "x", "max_decrease": 0.1}]},
                     "policy.guardrails[1].metric: repeats", id="repeat"),
    ],
)
def test_bad_v2_settings_are_refused(values, message):
    with pytest.raises(ValueError) as info:
        parse_policy(values)
    assert str(info.value).startswith(message), str(info.value)


def test_guardrails_round_trip_through_json():
    p = parse_policy({"guardrails": [{"metric": "cost_usd", "max_increase": 0.1},
                                     {"metric": "error", "max_increase_abs": 0.01}],
                      "holdout_decisions": 5000})
    assert p.guardrails[0] == Guardrail("cost_usd", max_increase=0.1)
    assert parse_policy(json.loads(json.dumps(p.to_dict()))) == p
    assert parse_policy(json.loads(json.dumps(p.overrides()))) == p
    assert parse_policy({"holdout_decisions": None}).holdout_decisions is None


def test_actions_are_strings():
    assert StatsAction.PROMOTE == "promote" and str(StatsAction.KEEP_CONTROL) == "keep_control"
