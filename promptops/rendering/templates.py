"""Checking a template before any render: syntax, forbidden tags, names, and literal bombs.

`template_names` (used by validation and sync) parses a source in the sandbox, refuses
`{% include %}`, `{% extends %}` and `{% import %}`, runs `check_limits` (what literals alone show to
be too big, refused at the template's line) and compiles it, then lists the names it references.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, meta, nodes
from jinja2.sandbox import MAX_RANGE

from promptops.errors import RenderError
from promptops.rendering.budget import (
    MAX_OUTPUT_CHARS,
    RENDER_WORK_BUDGET,
    _filter_size,
    _format_size,
    _percent_size,
    _str_method_size,
    _too_big,
)
from promptops.rendering.sandbox import _ENV, _MAX_POW_BITS

_CACHED_SOURCE_CHARS = 65_536  # larger sources are parsed again rather than their names kept


class TemplateSyntaxProblem(RenderError):
    """A template does not compile; `lineno` is the 1-based line inside the template."""

    def __init__(self, detail: str, *, lineno: int) -> None:
        super().__init__(f"template syntax error at line {lineno}: {detail}")
        self.detail = detail
        self.lineno = lineno


_UNKNOWN = object()


def _const(node: nodes.Node | None) -> Any:
    """The value of a literal (`3`, `'a'`, `(1, 'b')`, `-5`), or _UNKNOWN."""
    if isinstance(node, nodes.Const):
        return node.value
    if isinstance(node, nodes.Neg):
        inner = _const(node.node)
        return -inner if isinstance(inner, int | float) else _UNKNOWN
    if isinstance(node, nodes.Add | nodes.Sub | nodes.Mul | nodes.Pow):
        return _int_arithmetic(node)
    if isinstance(node, nodes.Tuple | nodes.List):
        items = [_const(item) for item in node.items]
        if any(item is _UNKNOWN for item in items):
            return _UNKNOWN
        return tuple(items) if isinstance(node, nodes.Tuple) else items
    return _UNKNOWN


def _int_arithmetic(node: nodes.BinExpr) -> Any:
    """`10**9`, `1000 * 1000`, `2**20 + 1` over integer literals, when small enough to work out."""
    left, right = _const(node.left), _const(node.right)
    if type(left) is not int or type(right) is not int:
        return _UNKNOWN
    if isinstance(node, nodes.Pow):
        if right < 0 or (abs(left) > 1 and left.bit_length() * right > _MAX_POW_BITS):
            return _UNKNOWN  # a fraction, or refused by the sandbox when it runs
        return left**right
    if isinstance(node, nodes.Mul):
        return left * right
    return left + right if isinstance(node, nodes.Add) else left - right


def _const_params(args: list[nodes.Expr], kwargs: list[Any]) -> Any:
    values = tuple(_const(a) for a in args)
    named = {k.key: _const(k.value) for k in kwargs}
    if _UNKNOWN in values or _UNKNOWN in named.values():
        return _UNKNOWN
    return values, named


def _literal_problem(node: nodes.Node) -> str | None:
    """What a literal-only expression would blow up, seen without running it."""
    if isinstance(node, nodes.Filter | nodes.Call):
        literals = [_const(a) for a in (*node.args, *(k.value for k in node.kwargs))]
        if any(_too_big(v) for v in literals):
            return f"an argument is larger than {MAX_OUTPUT_CHARS}"
        params = _const_params(node.args, node.kwargs)
        if params is _UNKNOWN:
            return None
        args, named = params
        if isinstance(node, nodes.Filter):
            value = _const(node.node)
            if value is not _UNKNOWN and _filter_size(node.name, value, args, named) > (MAX_OUTPUT_CHARS):
                return f"the {node.name!r} filter would produce more than {MAX_OUTPUT_CHARS} chars"
            return None
        is_range = isinstance(node.node, nodes.Name) and node.node.name == "range"
        if is_range and not named and (_range_len(args) or 0) > MAX_RANGE:
            return f"range() of more than {MAX_RANGE} items"
        if isinstance(node.node, nodes.Getattr) and isinstance(_const(node.node.node), str):
            text, method = _const(node.node.node), node.node.attr
            if method in ("format", "format_map"):
                mapping = args[0] if method == "format_map" and args else named
                size = _format_size(text, args if method == "format" else (), mapping)
            else:
                size = _str_method_size(text, method, args, named)
            if size > MAX_OUTPUT_CHARS:
                return f"str.{method}() would produce more than {MAX_OUTPUT_CHARS} characters"
        return None
    if isinstance(node, nodes.Mul | nodes.Mod):
        left, right = _const(node.left), _const(node.right)
        if left is _UNKNOWN or right is _UNKNOWN:
            return None
        if isinstance(node, nodes.Mod):
            too_big = isinstance(left, str) and _percent_size(left, right) > MAX_OUTPUT_CHARS
        else:
            seq, times = (left, right) if isinstance(right, int) else (right, left)
            too_big = (
                isinstance(seq, str | list | tuple)
                and isinstance(times, int)
                and (len(seq) * times > MAX_OUTPUT_CHARS)
            )
        if too_big:
            return f"the result would be longer than {MAX_OUTPUT_CHARS} characters"
    return None


def _range_len(args: tuple[Any, ...]) -> int | None:
    """How many items `range(*args)` has, or None if the call would fail anyway."""
    if not 0 < len(args) <= 3 or not all(type(a) is int for a in args) or args[2:] == (0,):
        return None
    numbers = range(*args)
    return max(0, -(-(numbers.stop - numbers.start) // numbers.step))


def _loop_bound(node: nodes.For) -> int | None:
    """How many times a `{% for %}` over a literal range or list runs, if a literal says so."""
    target = node.iter
    if isinstance(target, nodes.Filter) and target.name == "_loop" and target.node is not None:
        target = target.node
    if isinstance(target, nodes.Call) and isinstance(target.node, nodes.Name):
        params = _const_params(target.args, target.kwargs)
        if target.node.name == "range" and params is not _UNKNOWN and not params[1]:
            return _range_len(params[0])
        return None
    value = _const(target)
    return len(value) if isinstance(value, str | list | tuple) else None


def check_limits(ast: nodes.Template) -> None:
    """Refuse, before any render, what literals alone show is too big (ranges, widths, loops)."""
    stack: list[tuple[nodes.Node, int]] = [(ast, 1)]
    while stack:
        node, runs = stack.pop()
        problem = _literal_problem(node)
        if isinstance(node, nodes.For):
            bound = _loop_bound(node)
            runs *= bound if bound is not None else 1
            if runs > RENDER_WORK_BUDGET:
                problem = f"nested loops run more than {RENDER_WORK_BUDGET} times"
        if problem is not None:
            raise TemplateSyntaxProblem(problem, lineno=node.lineno or 1)
        stack.extend((child, runs) for child in node.iter_child_nodes())


def check_recursion(ast: nodes.Template) -> None:
    """Refuse a macro that calls itself, directly or through other macros of the template (a
    `{% call %}` block included): its render only ends when the budget stops it."""
    macros = {m.name: m for m in ast.find_all(nodes.Macro)}
    calls: dict[str, list[tuple[str, int]]] = {}
    for name, macro in macros.items():
        own = {arg.name for arg in macro.args}  # an argument of the same name hides the macro
        calls[name] = [
            (call.node.name, call.lineno or macro.lineno or 1)
            for call in macro.find_all(nodes.Call)
            if isinstance(call.node, nodes.Name) and call.node.name in macros and call.node.name not in own
        ]
    for name in macros:  # in source order: the first recursive macro is reported
        for callee, line in calls[name]:
            path = _call_path(calls, callee, name)
            if path is not None:
                through = "" if not path else " through " + ", ".join(repr(m) for m in path)
                raise TemplateSyntaxProblem(
                    f"macro {name!r} calls itself{through}: it would render until stopped", lineno=line
                )


def _call_path(calls: Mapping[str, list[tuple[str, int]]], start: str, target: str) -> list[str] | None:
    """The macros a call chain from `start` passes through before it reaches `target`, or None."""
    seen: set[str] = set()
    stack: list[tuple[str, list[str]]] = [(start, [])]
    while stack:
        name, path = stack.pop()
        if name == target:
            return path
        if name in seen:
            continue
        seen.add(name)
        stack.extend((callee, [*path, name]) for callee, _ in calls.get(name, ()))
    return None


_FORBIDDEN_NODES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def template_names(source: str) -> set[str]:
    """The undeclared names a template references; raises RenderError on a syntax error."""
    # Plain text (a few-shot example, say) cannot reference anything; skip Jinja's compiler.
    if not any(marker in source for marker in ("{{", "{%", "{#")):
        return set()
    # Only small sources are memoised, so a thousand large ones cannot pin their memory.
    if len(source) <= _CACHED_SOURCE_CHARS:
        return set(_cached_template_names(source))
    return set(_template_names(source))


def _syntax_problem(exc: TemplateSyntaxError) -> TemplateSyntaxProblem:
    return TemplateSyntaxProblem(_one_line(exc.message or str(exc)), lineno=exc.lineno or 1)


def _compile_problem(exc: BaseException) -> TemplateSyntaxProblem:
    # The nesting checks keep Jinja and Python within their limits; this is the last resort.
    detail = "too deeply nested" if isinstance(exc, RecursionError | SyntaxError) else "too large"
    return TemplateSyntaxProblem(f"the template is {detail} to compile", lineno=1)


def _template_names(source: str) -> frozenset[str]:
    try:
        ast = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise _syntax_problem(exc) from None
    except (RecursionError, MemoryError) as exc:
        raise _compile_problem(exc) from None
    for node in ast.find_all(_FORBIDDEN_NODES):
        tag = type(node).__name__.lower().replace("fromimport", "from ... import")
        raise TemplateSyntaxProblem(
            f"{{% {tag} %}} is not supported: a prompt is one self-contained template",
            lineno=node.lineno,
        )
    check_limits(ast)
    check_recursion(ast)
    try:  # compiling is when unknown filters and tests, and Python's own limits, show up
        _ENV.compile(ast)
        return frozenset(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        raise _syntax_problem(exc) from None
    except (RecursionError, MemoryError, SyntaxError) as exc:
        raise _compile_problem(exc) from None


_cached_template_names = functools.lru_cache(maxsize=1024)(_template_names)
