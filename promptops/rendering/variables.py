"""Variable values: checks against the declared variables, defaults, and CLI value parsing."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Callable, Mapping
from typing import Any

from promptops.domain import PromptContent, VariableSpec
from promptops.errors import VariableError

MAX_VALUE_DEPTH = 32
"""Deepest nesting of lists and objects in a variable value."""

_TYPE_NAMES = {
    "string": "a string",
    "integer": "an integer",
    "number": "a number",
    "boolean": "a boolean",
    "list": "a list",
    "object": "an object",
}

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def value_type(value: Any) -> str | None:
    """The variable type (one of `domain.VARIABLE_TYPES`) a value has, or None: null, or not
    JSON-like data (a date, bytes, ...)."""
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return None


def _type_name(value: Any) -> str:
    # A value's type in a message: its variable type, null, or its Python type.
    return "null" if value is None else value_type(value) or type(value).__name__


def _has_type(type_: str, value: Any) -> bool:
    if type_ == "string":
        return isinstance(value, str)
    if type_ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if type_ == "number":
        return isinstance(value, int | float) and not isinstance(value, bool)
    if type_ == "boolean":
        return isinstance(value, bool)
    if type_ == "list":
        return isinstance(value, list | tuple)
    if type_ == "object":
        return isinstance(value, Mapping)
    return False


def _same(a: Any, b: Any) -> bool:
    # `True == 1` in Python; an enum of integers must not accept a boolean, nor the reverse.
    return isinstance(a, bool) == isinstance(b, bool) and a == b


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _value_depth(value: Any) -> int:
    """How deeply lists and objects nest in a value (counted without recursion)."""
    if not isinstance(value, list | tuple | Mapping):
        return 0
    deepest = 0
    stack = [(value, 0)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, str | int | float) or item is None:
            continue
        if isinstance(item, list | tuple | Mapping):
            deepest = max(deepest, depth + 1)
            if deepest > MAX_VALUE_DEPTH:
                break
            stack.extend(
                (inner, depth + 1) for inner in (item.values() if isinstance(item, Mapping) else item)
            )
    return deepest


def value_problem(spec: VariableSpec, value: Any) -> str | None:
    """What is wrong with a value for a variable (type, enum, max_length), or None if it fits."""
    if not _has_type(spec.type, value):
        return f"must be {_TYPE_NAMES.get(spec.type, spec.type)}, got {_type_name(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if spec.enum is not None and not any(_same(value, e) for e in spec.enum):
        allowed = ", ".join(_show(e) for e in spec.enum)
        return f"must be one of {allowed}, got {_show(value)}"
    if _value_depth(value) > MAX_VALUE_DEPTH:
        return f"is nested deeper than {MAX_VALUE_DEPTH} levels"
    sized = isinstance(value, str | list | tuple)
    if spec.max_length is not None and sized and len(value) > spec.max_length:
        unit = "characters" if isinstance(value, str) else "items"
        return f"is longer than max_length {spec.max_length} ({len(value)} {unit})"
    return None


_SCALARS = (str, int, float, type(None))  # bool is an int


def _copier(value: Any) -> Callable[[Any], Any] | None:
    """How a default is copied for each render: not at all when it is immutable, a shallow copy
    when it is a flat list or object of scalars (as good as a deep one), else a deep copy."""
    if isinstance(value, _SCALARS):
        return None
    if type(value) is list and all(isinstance(v, _SCALARS) for v in value):
        return list.copy
    if type(value) is dict and all(isinstance(v, _SCALARS) for v in value.values()):
        return dict.copy
    return copy.deepcopy


class VariableCheck:
    """The declared variables of one content, prepared once: checks values and fills defaults."""

    __slots__ = ("_declared", "_known", "_specs")

    def __init__(self, specs: tuple[VariableSpec, ...]) -> None:
        self._declared = frozenset(spec.name for spec in specs)
        self._known = ", ".join(spec.name for spec in specs) or "none"
        self._specs = tuple(
            (spec, spec.default, _copier(spec.default)) if spec.has_default else (spec, None, None)
            for spec in specs
        )

    def __call__(self, values: Mapping[str, Any]) -> dict[str, Any]:
        """Validate values and return them with defaults filled in (each default a fresh copy)."""
        if not isinstance(values, Mapping):
            raise VariableError(f"variables must be an object, got {_type_name(values)}")
        if not self._declared.issuperset(values):
            for name in sorted(values, key=str):
                if name not in self._declared:
                    raise VariableError(
                        f"variable {_show(name)} is not declared by this prompt (declared: {self._known})",
                        field=str(name),
                    )
        out: dict[str, Any] = {}
        for spec, default, copier in self._specs:
            # An explicit null means "not given": the default applies, a required variable is missing.
            value = values.get(spec.name)
            if value is None:
                if spec.required:
                    raise VariableError(f"variable {spec.name!r} is required", field=spec.name)
                out[spec.name] = default if copier is None else copier(default)
                continue
            problem = value_problem(spec, value)
            if problem is not None:
                raise VariableError(f"variable {spec.name!r} {problem}", field=spec.name)
            out[spec.name] = value
        return out


def check_variables(content: PromptContent, values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate values against the declared variables and return them with defaults filled in."""
    return VariableCheck(content.variables)(values)


def coerce_cli_value(spec: VariableSpec | None, raw: str) -> Any:
    """Parse a `--var k=v` value by the variable's declared type (undeclared names stay strings)."""
    if spec is None or spec.type == "string":
        return raw
    name = spec.name
    text = raw.strip()
    if spec.type == "boolean":
        if text.lower() in _TRUE:
            return True
        if text.lower() in _FALSE:
            return False
        raise VariableError(f"variable {name!r}: {raw!r} is not a boolean (true/false)", field=name)
    if spec.type in ("integer", "number"):
        try:
            return int(text)
        except ValueError:
            pass
        if spec.type == "number":
            try:
                number = float(text)
            except ValueError:
                number = math.nan
            if math.isfinite(number):
                return number
        kind = _TYPE_NAMES[spec.type]
        raise VariableError(f"variable {name!r}: {raw!r} is not {kind}", field=name)
    if spec.type == "list" and not text.startswith("["):
        return [item.strip() for item in text.split(",")] if text else []
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise VariableError(f"variable {name!r}: invalid JSON ({exc.msg})", field=name) from None
    except (ValueError, RecursionError):  # e.g. nested thousands deep
        raise VariableError(f"variable {name!r}: JSON not accepted", field=name) from None
    if not _has_type(spec.type, value):
        raise VariableError(
            f"variable {name!r}: expected a JSON {spec.type}, got {_type_name(value)}", field=name
        )
    return value
