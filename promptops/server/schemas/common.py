"""What every request body shares: refused text, strict fields, metric names, examples."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, model_validator

from promptops.domain import metric_name_problem, text_problem

TEXT_PROBLEM = "contains a NUL character or a lone surrogate"


def bad_text(value: Any) -> str | None:
    """Where a string in JSON-like data (keys and values, nested) holds a NUL character or a lone
    surrogate, or None: such text cannot be stored (PostgreSQL refuses NUL) or encoded (UTF-8
    refuses surrogates), so the edge refuses it before anything is recorded."""
    if _all_clean(value):  # the common case, without building any path
        return None
    return _locate(value, "body")


def _all_clean(value: Any) -> bool:
    # A loop, not recursion: JSON may nest deeper than Python's recursion limit.
    stack = [value]
    while stack:
        item = stack.pop()
        kind = type(item)
        if kind is str:
            if text_problem(item) is not None:
                return False
        elif kind is dict:
            for key, inner in item.items():
                if type(key) is str and text_problem(key) is not None:
                    return False
                stack.append(inner)
        elif kind is list:
            stack.extend(item)
    return True


def _locate(value: Any, where: str) -> str:
    stack: list[tuple[str, Any]] = [(where, value)]
    while stack:
        where, item = stack.pop()
        if type(item) is str:
            if text_problem(item) is not None:
                return where
        elif type(item) is dict:
            for key, inner in item.items():
                if type(key) is str and text_problem(key) is not None:
                    return where
                stack.append((f"{where}.{key}", inner))
        elif type(item) is list:
            stack.extend((f"{where}[{i}]", inner) for i, inner in enumerate(item))
    return where


def _metric_name(name: str) -> str:
    problem = metric_name_problem(name)
    if problem:
        raise ValueError(problem)
    return name


MetricName = Annotated[str, AfterValidator(_metric_name)]
"""A metric name, by the rule of `domain.metric_name_problem`."""


_CANONICAL_INT = re.compile(r"0|-?[1-9][0-9]*", re.ASCII)
CANONICAL_INT_RULE = "must be an integer in plain ASCII digits (no '+', spaces, '_' or leading zeros)"


def canonical_int(text: str) -> int | None:
    """The integer `text` spells canonically, or None. Python's int() (and pydantic's lax mode)
    also reads " 1", "+1", "01", "1_0" and "１": each would name the same row under several URLs,
    so only the one canonical spelling is an id."""
    return int(text) if _CANONICAL_INT.fullmatch(text) else None


def _canonical_int(value: Any) -> Any:
    if isinstance(value, str):
        number = canonical_int(value)
        if number is None:
            raise ValueError(CANONICAL_INT_RULE)
        return number
    return value


PathInt = Annotated[int, BeforeValidator(_canonical_int)]
"""An integer path or query parameter (an experiment, eval run or version number, a limit): only
its canonical spelling is accepted; any other is a 422 `invalid_input`, like a non-number."""


class Strict(BaseModel):
    """A request body: unknown fields and strings with NUL or lone surrogates are refused."""

    model_config = ConfigDict(extra="forbid")

    @model_validator(mode="before")
    @classmethod
    def _clean_text(cls, data: Any) -> Any:
        where = bad_text(data)
        if where is not None:
            raise ValueError(f"{where} {TEXT_PROBLEM}")
        return data


def examples(*items: dict[str, Any]) -> ConfigDict:
    """A model configuration whose JSON schema shows these examples."""
    return ConfigDict(json_schema_extra={"examples": list(items)})
