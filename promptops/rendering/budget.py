"""What one render may spend, and the sizes its steps would produce, worked out before they run.

A render carries a `_Budget` (a deadline, work steps and characters produced) in a context
variable; every guarded step of the sandbox calls `_tick` or `_charge`, so nothing outside a render
(compiling, finding names) is bounded or slowed. The size functions give upper bounds on what a
string operation would build (padding widths, `%` and `format` specs, `replace`, `join`, ...), so an
operation that would exceed `MAX_OUTPUT_CHARS` is refused before it allocates.
"""

from __future__ import annotations

import re
import string
import time
from collections.abc import Iterable, Mapping
from contextvars import ContextVar
from typing import Any

from promptops.errors import RenderError

MAX_OUTPUT_CHARS = 1_000_000
"""Largest rendered prompt (all messages together), in characters."""

MAX_PRODUCED_CHARS = 16 * MAX_OUTPUT_CHARS
"""Most characters one render may produce in all, counting intermediate strings and loop text."""

RENDER_TIME_BUDGET = 0.5
"""Seconds one render may run before it is stopped (checked at every step)."""

RENDER_WORK_BUDGET = 1_000_000
"""Steps (loop iterations, calls, filters, operators) one render may take."""

INLINE_TIME_BUDGET = 0.005
"""Wall-clock seconds a render may take on an event loop's thread before it is handed to a worker
thread: ordinary prompts render in about 0.1 ms, so only heavy templates (and bombs) move."""

INLINE_WORK_BUDGET = 20_000
"""Steps a render may take on an event loop's thread before it is handed to a worker thread."""


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT_CHARS


class RenderTooSlow(RenderError):
    """A render ran out of a short inline budget (`Renderer.render(..., inline=True)`): the
    caller may render it again, off its event loop, with the full budget."""


class _Budget:
    """What one render may still spend: a deadline, work units and characters produced."""

    __slots__ = ("seconds", "deadline", "work", "chars", "max_work", "inline")

    def __init__(self, seconds: float, max_work: int = RENDER_WORK_BUDGET, *, inline: bool = False) -> None:
        self.seconds = seconds
        self.deadline = time.monotonic() + seconds
        self.work = 0
        self.chars = 0
        self.max_work = max_work
        self.inline = inline


_BUDGET: ContextVar[_Budget | None] = ContextVar("promptops_render_budget", default=None)


def _tick(work: int = 1, chars: int = 0) -> None:
    budget = _BUDGET.get()
    if budget is None:  # compiling or finding names: nothing runs, nothing to bound
        return
    budget.work += work
    budget.chars += chars
    if budget.work > budget.max_work:
        if budget.inline:
            raise RenderTooSlow("the template needs more than the inline budget")
        raise RenderError(f"the template does more than {RENDER_WORK_BUDGET} steps")
    if budget.chars > MAX_PRODUCED_CHARS:
        raise RenderError(f"the template produces more than {MAX_PRODUCED_CHARS} characters")
    if time.monotonic() > budget.deadline:
        if budget.inline:
            raise RenderTooSlow("the template needs more than the inline budget")
        raise RenderError(f"the template takes longer than {budget.seconds:g} s to render")


def _refuse_size(size: int, what: str) -> None:
    if size > MAX_OUTPUT_CHARS:
        raise RenderError(f"{what} would be longer than {MAX_OUTPUT_CHARS} characters")


def _rendered_size(value: Any, indent: int = 0) -> int:
    """About how many characters `str(value)` (or JSON with `indent`) takes, stopping past the cap."""
    size = 0
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack and size <= MAX_OUTPUT_CHARS:
        item, depth = stack.pop()
        kind = type(item)
        if kind is str:  # the common case first, without the abstract-class checks below
            size += len(item) + 2
        elif kind is list and not indent:
            size += 2 + 2 * len(item)
            stack.extend((inner, 0) for inner in item)
        elif isinstance(item, str):
            size += len(item) + 2
        elif isinstance(item, int) and not isinstance(item, bool):
            size += item.bit_length() // 3 + 2
        elif isinstance(item, Mapping):
            size += 2
            for key, inner in item.items():
                stack.append((key, depth + 1))
                stack.append((inner, depth + 1))
                size += 2 + indent * (depth + 1)
        elif isinstance(item, list | tuple | set | frozenset):
            size += 2
            for inner in item:
                stack.append((inner, depth + 1))
                size += 2 + indent * (depth + 1)
        else:
            size += 8
    return size


def _charge(result: Any) -> Any:
    """Count one step that produced `result`; a string or container over the cap is refused."""
    if isinstance(result, str):
        _refuse_size(len(result), "a string")
        _tick(1, len(result))
        return result
    if isinstance(result, list | tuple | dict | set | frozenset):
        _refuse_size(_rendered_size(result), "a value")
    _tick()
    return result


_PERCENT_SPEC = re.compile(r"%(\([^)]*\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d+))?[hlL]?(.?)", re.S)


def _percent_size(fmt: str, args: Any) -> int:
    """An upper bound on the length of `fmt % args` (widths, precisions and arguments)."""
    items = list(args) if isinstance(args, tuple) else [args]
    size, used = len(fmt), 0
    for match in _PERCENT_SPEC.finditer(fmt):
        if match.group(4) == "%":
            continue
        for part in (match.group(2), match.group(3)):
            if part == "*":
                star = items[used] if used < len(items) else 0
                used += 1
                size += abs(star) if isinstance(star, int) else 0
            elif part:
                size += int(part)
        if match.group(1) is None:
            used += 1
    return size + _rendered_size(args)


def _format_size(fmt: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the length of `fmt.format(*args, **kwargs)`."""
    ints = [abs(v) for v in (*args, *kwargs.values()) if isinstance(v, int)]
    size = len(fmt) + _rendered_size(args) + _rendered_size(dict(kwargs))
    pending = [fmt]
    while pending and size <= MAX_OUTPUT_CHARS:
        try:
            parsed = list(string.Formatter().parse(pending.pop()))
        except ValueError:
            continue  # str.format itself reports the malformed string
        for _, field, spec, _ in parsed:
            if field is None or not spec:
                continue
            size += sum(int(digits) for digits in re.findall(r"\d+", spec))
            if "{" in spec:  # a width given as an argument: assume the largest one
                size += max(ints, default=0)
                pending.append(spec)
    return size


def _str_method_size(text: str, name: str, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the result of the str methods that can multiply their input."""
    params = [*args, *kwargs.values()]
    if name == "replace" and len(params) >= 2 and all(isinstance(p, str) for p in params[:2]):
        old, new = params[0], params[1]
        count = text.count(old) if old else len(text) + 1
        return len(text) + count * max(0, len(new) - len(old))
    if name == "join" and params:
        items = params[0]
        if isinstance(items, list | tuple):
            return _rendered_size(items) + len(text) * len(items)
    if name == "expandtabs":
        width = params[0] if params and isinstance(params[0], int) else 8
        return len(text) + text.count("\t") * max(0, width)
    if name == "translate" and params and isinstance(params[0], Mapping):
        longest = max((len(v) for v in params[0].values() if isinstance(v, str)), default=1)
        return len(text) * max(1, longest)
    return 0


def _filter_size(name: str, value: Any, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> int:
    """An upper bound on the result of the builtin filters that can multiply their input."""
    params = [*args, *kwargs.values()]
    text = value if isinstance(value, str) else ""
    if name == "format" and isinstance(value, str):
        return _percent_size(value, dict(kwargs) if kwargs else tuple(args))
    if name == "indent":
        width = params[0] if params else 4
        unit = len(width) if isinstance(width, str) else width if isinstance(width, int) else 0
        return len(text) + (text.count("\n") + 1) * unit
    if name == "wordwrap":
        width = params[0] if params and isinstance(params[0], int) else 79
        wrap = kwargs.get("wrapstring") or (args[2] if len(args) > 2 else None) or "\n"
        return len(text) + (len(text) // max(1, width) + 1) * _rendered_size(wrap)
    if name == "replace":
        return _str_method_size(text, "replace", args, kwargs)
    if name == "join":
        sep = params[0] if params and isinstance(params[0], str) else ""
        items = value if isinstance(value, list | tuple) else ()
        return _rendered_size(items) + len(sep) * len(items)
    if name == "tojson":
        indent = params[0] if params and isinstance(params[0], int) else 0
        return _rendered_size(value, indent)
    if name in ("string", "pprint", "e", "escape", "forceescape", "safe", "urlencode"):
        return 5 * _rendered_size(value)  # HTML escaping grows a character to at most 5
    return 0


def _lazy(value: Any) -> bool:
    """An iterable (a range, a generator) whose items must be listed before they can be sized."""
    if type(value) in _EAGER:
        return False
    return isinstance(value, Iterable) and not isinstance(value, str | list | tuple | Mapping)


_EAGER = frozenset({str, list, tuple, dict})
