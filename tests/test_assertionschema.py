"""The assertion schema: every problem of an assertion mapping, at once, with its key."""

from __future__ import annotations

from typing import Any

import pytest

from promptops.assertions import Assertion
from promptops.assertionschema import parse_assertion, template_fields


def make(raw: dict[str, Any]) -> Assertion:
    assertion, problems = parse_assertion(raw)
    assert not problems, problems
    assert assertion is not None
    return assertion


def problems_of(raw: Any) -> list[str]:
    assertion, problems = parse_assertion(raw)
    assert assertion is None
    return [f"{p.key}: {p.message}" for p in problems]


# --- validation -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        pytest.param(
            {"type": "equal", "value": "x"},
            "type: unknown assertion type 'equal' (did you mean 'equals'?)",
            id="unknown-type",
        ),
        pytest.param({"value": "x"}, "None: an assertion needs a `type`", id="no-type"),
        pytest.param("equals", "None: an assertion must be a mapping", id="not-mapping"),
        pytest.param({"type": "equals"}, "None: equals needs `value`", id="no-value"),
        pytest.param(
            {"type": "equals", "value": "x", "valeu": 1}, "valeu: unknown key 'valeu'", id="unknown-key"
        ),
        pytest.param({"type": "equals", "value": ["x"]}, "value: value must be a string", id="list-value"),
        pytest.param({"type": "equals", "value": "{{ x }}"}, "value: value unknown name 'x'", id="bad-name"),
        pytest.param(
            {"type": "equals", "value": "{{ expected "}, "value: value template syntax error", id="syntax"
        ),
        pytest.param({"type": "regex", "value": "(unclosed"}, "value: value invalid regex", id="bad-regex"),
        pytest.param(
            {"type": "json_schema", "value": {"type": "nope"}},
            "value: value is not a valid JSON Schema",
            id="bad-schema",
        ),
        pytest.param(
            {"type": "json_schema", "value": "x"}, "value: value must be a JSON Schema", id="schema-str"
        ),
        pytest.param(
            {"type": "equals", "value": "x", "weight": -1},
            "weight: weight must be a number >= 0",
            id="weight",
        ),
        pytest.param(
            {"type": "equals", "value": "x", "weight": True}, "weight: weight must be", id="weight-bool"
        ),
        pytest.param(
            {"type": "equals", "value": "x", "not": "yes"}, "not: not must be true or false", id="not"
        ),
        pytest.param(
            {"type": "equals", "value": "x", "transform": "upper"},
            "transform: transform must be one of strip, lower, strip_lower",
            id="transform",
        ),
        pytest.param(
            {"type": "cost", "max_usd": 1, "transform": "strip"},
            "transform: transform does not apply to cost",
            id="transform-cost",
        ),
        pytest.param(
            {"type": "similar", "value": "x", "threshold": 1.5},
            "threshold: threshold must be a number from 0 to 1",
            id="threshold",
        ),
        pytest.param(
            {"type": "judge", "rubric": "r", "provider": "p"}, "None: judge needs `model`", id="judge"
        ),
        pytest.param(
            {"type": "judge", "rubric": " ", "provider": "p", "model": "m"},
            "rubric: rubric must be a non-empty string",
            id="judge-rubric",
        ),
        pytest.param({"type": "latency", "max_ms": 0}, "max_ms: max_ms must be a number > 0", id="latency"),
        pytest.param({"type": "cost", "max_usd": "1"}, "max_usd: max_usd must be a number >= 0", id="cost"),
        pytest.param(
            {"type": "is_json", "value": "x"}, "value: unknown key 'value' for is_json", id="json-value"
        ),
    ],
)
def test_invalid_assertions_are_problems(raw, expected):
    found = problems_of(raw)
    assert any(p.startswith(expected) for p in found), found


def test_all_problems_are_reported_at_once():
    found = problems_of({"type": "equals", "weight": -1, "not": 3, "extra": 1})
    assert len(found) == 4, found


def test_template_fields_lists_the_referenced_names():
    assert template_fields(make({"type": "equals", "value": "{{ expected }} {{ vars.a }}"})) == {
        "expected",
        "vars",
    }
    assert template_fields(make({"type": "json_schema", "value": {"type": "object"}})) == set()
