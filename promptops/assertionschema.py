"""The assertion schema: an assertion mapping of an eval file or a case, checked into an `Assertion`.

Every problem is reported at once, each with the key it is about (None for the mapping as a whole) so
the file reader can point at its line. An unknown type is a problem with a suggestion; the keys each
type takes come from the registry in `promptops.assertions`. A `value` template is compiled here and
may name only `expected`, `vars` and `metadata`; a regex that is not a template is compiled too.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import jsonschema
import regex

from .assertions import ASSERTION_TYPES, Assertion, AssertionType, Transform
from .errors import PromptOpsError
from .judging import MAX_MAX_TOKENS
from .rendering import template_names

_COMMON_KEYS = ("type", "weight", "not", "transform")
_SHOWN = 80


def _show(text: Any) -> str:
    shown = repr(text)
    return shown if len(shown) <= _SHOWN else shown[: _SHOWN - 3] + "..."


@dataclass(frozen=True)
class AssertionProblem:
    """Why an assertion mapping is invalid; `key` is the offending key (None: the whole mapping)."""

    key: str | None
    message: str


def schema_problem(schema: Any) -> str | None:
    """Why a `json_schema` value is not a valid JSON Schema, or None."""
    if not isinstance(schema, Mapping | bool):
        return "must be a JSON Schema (an object)"
    try:
        jsonschema.validators.validator_for(schema).check_schema(schema)
    except jsonschema.exceptions.SchemaError as exc:
        return f"is not a valid JSON Schema: {exc.message[:200]}"
    return None


def _number(raw: Any, *, low: float, high: float = math.inf, low_open: bool = False) -> float | None:
    if isinstance(raw, bool) or not isinstance(raw, int | float) or not math.isfinite(raw):
        return None
    if raw < low or raw > high or (low_open and raw == low):
        return None
    return float(raw)


def _template_problem(value: str) -> str | None:
    try:
        names = template_names(value)
    except PromptOpsError as exc:
        return exc.message
    unknown = sorted(names - {"expected", "vars", "metadata"})
    if unknown:
        return f"unknown name {unknown[0]!r} in the template (use expected, vars.NAME or metadata.NAME)"
    return None


def _is_template(value: str) -> bool:
    return any(marker in value for marker in ("{{", "{%", "{#"))


def _value_problem(type_: AssertionType, value: Any) -> str | None:
    if type_ is AssertionType.JSON_SCHEMA:
        return schema_problem(value)
    if isinstance(value, str):
        problem = _template_problem(value)
        if problem is None and type_ is AssertionType.REGEX and not _is_template(value):
            try:
                regex.compile(value)
            except regex.error as exc:
                problem = f"invalid regex: {exc}"
        return problem
    if value is None or isinstance(value, Mapping | list | tuple):
        return "must be a string (or a number)"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None if isinstance(value, str | int | float) else "must be a string (or a number)"


def _text_problem(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def parse_assertion(raw: Any) -> tuple[Assertion | None, tuple[AssertionProblem, ...]]:
    """Check an assertion mapping from an eval file or a case; all problems at once."""
    if not isinstance(raw, Mapping):
        return None, (AssertionProblem(None, "an assertion must be a mapping with a `type`"),)
    problems: list[AssertionProblem] = []
    raw_type = raw.get("type")
    if raw_type is None:
        return None, (AssertionProblem(None, "an assertion needs a `type`"),)
    try:
        type_ = AssertionType(raw_type) if isinstance(raw_type, str) else None
    except ValueError:
        type_ = None
    if type_ is None:
        known = [t.value for t in AssertionType]
        close = difflib.get_close_matches(str(raw_type), known, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        message = f"unknown assertion type {_show(raw_type)}{hint}; known: {', '.join(known)}"
        return None, (AssertionProblem("type", message),)
    kind = ASSERTION_TYPES[type_]
    allowed = _COMMON_KEYS + kind.keys
    for key in raw:
        if key not in allowed:
            message = f"unknown key {_show(key)} for {type_} (allowed: {', '.join(allowed)})"
            problems.append(AssertionProblem(str(key), message))
    for key in kind.required:
        if raw.get(key) is None:
            problems.append(AssertionProblem(None, f"{type_} needs `{key}`"))

    def check(key: str, problem: str | None) -> None:
        if problem is not None:
            problems.append(AssertionProblem(key, f"{key} {problem}"))

    weight = _number(raw.get("weight", 1), low=0.0)
    check("weight", None if weight is not None else "must be a number >= 0")
    negate = raw.get("not", False)
    check("not", None if isinstance(negate, bool) else "must be true or false")
    transform: Transform | None = None
    if raw.get("transform") is not None:
        choices = ", ".join(t.value for t in Transform)
        try:
            transform = Transform(raw["transform"])
        except ValueError:
            check("transform", f"must be one of {choices}")
        if not kind.text:
            check("transform", f"does not apply to {type_}")
    if raw.get("value") is not None and "value" in kind.keys:
        check("value", _value_problem(type_, raw["value"]))
    threshold = None
    if raw.get("threshold") is not None:
        threshold = _number(raw["threshold"], low=0.0, high=1.0)
        check("threshold", None if threshold is not None else "must be a number from 0 to 1")
    for key in ("rubric", "provider", "model"):
        if raw.get(key) is not None and key in kind.keys:
            check(key, _text_problem(raw[key]))
    max_tokens = raw.get("max_tokens")
    if max_tokens is not None and "max_tokens" in kind.keys:
        whole = isinstance(max_tokens, int) and not isinstance(max_tokens, bool)
        if not whole or not 1 <= max_tokens <= MAX_MAX_TOKENS:
            check("max_tokens", f"must be an integer from 1 to {MAX_MAX_TOKENS}")
    limits: dict[str, float | None] = {}
    for key, low_open in (("max_usd", False), ("max_ms", True)):
        if raw.get(key) is not None:
            limits[key] = _number(raw[key], low=0.0, low_open=low_open)
            rule = "a number > 0" if low_open else "a number >= 0"
            check(key, None if limits[key] is not None else f"must be {rule}")
    if problems:
        return None, tuple(problems)
    assertion = Assertion(
        type=type_,
        value=raw.get("value"),
        weight=weight if weight is not None else 1.0,
        negate=bool(negate),
        transform=transform,
        threshold=threshold,
        rubric=raw.get("rubric"),
        provider=raw.get("provider"),
        model=raw.get("model"),
        max_usd=limits.get("max_usd"),
        max_ms=limits.get("max_ms"),
        max_tokens=max_tokens if "max_tokens" in kind.keys else None,
    )
    return assertion, ()


def template_fields(assertion: Assertion) -> set[str]:
    """The names (`expected`, `vars`, `metadata`) the assertion's `value` template references."""
    if not isinstance(assertion.value, str) or assertion.type is AssertionType.JSON_SCHEMA:
        return set()
    return template_names(assertion.value)
