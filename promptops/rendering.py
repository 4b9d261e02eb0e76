"""The sandboxed Jinja2 layer: variable checks, template compilation and rendering.

Templates are authored by prompt owners and rendered in Jinja2's immutable sandbox with
`StrictUndefined`: an undefined name, an unsafe attribute (`__class__`, `__globals__`, ...), a
format-string trick or any other failure ends as `errors.RenderError`, never another type.
Variable values are data: they are passed to the template as context and never compiled, so a value
containing `{{ 7*7 }}` is rendered literally.

Environment choices a prompt author should know:
- `trim_blocks` and `lstrip_blocks` are on, so `{% for %}` / `{% if %}` lines leave no blank lines;
- `None` renders as an empty string (an optional variable that was not given shows nothing);
- `tojson` emits plain JSON (Jinja's own escapes `<`, `>`, `&`, `'` for HTML: wrong in a prompt);
- extra filters `bullets` ("- a\\n- b") and `numbered` ("1. a\\n2. b") for lists;
- no `{% include %}`, `{% extends %}` or `{% import %}`: a prompt is one self-contained template.

Bounds, so that an authored template cannot take the server's CPU or memory (every breach is a
one-line `RenderError`, and nothing is kept after it):
- time and work: a render stops after `RENDER_TIME_BUDGET` (0.5 s) of wall-clock time or
  `RENDER_WORK_BUDGET` steps (loop iterations, calls, filters, operators), checked at every step.
  A prompt renders in about 0.1 ms, so 0.5 s leaves ample headroom while bounding the stall;
  a million steps take about 0.3 s, so on an idle machine a runaway loop usually meets the step
  budget first. Filters that walk their input (`sort`, `unique`, `select`, ...) pay a step per
  item before they start and take at most 100 000 items, so no single step runs long either.
  The server renders a template that `Renderer.may_loop` says can repeat work in a worker thread,
  so such a render (at worst about 0.5 s; 0.51 s for nested `range` loops, up to 0.8 s with the
  machine's cores fully loaded) does not stall its event loop; loop-free templates render inline;
- size: no string or value produced is longer than `MAX_OUTPUT_CHARS`, and sizes are computed
  before the string is built (padding widths, `%` and `format` specs, `replace`, `join`, `~`,
  `indent`, `wordwrap`, `tojson` ...); a render produces at most `MAX_PRODUCED_CHARS` in all;
- nesting: at most `MAX_NESTING` levels of blocks and brackets, `MAX_LOOP_NESTING` loops and
  a parse tree `MAX_AST_DEPTH` deep, checked before Jinja's recursive parser and compiler run; a
  variable value nests at most `MAX_VALUE_DEPTH` levels;
- `template_names` (so validation and sync) also refuses, at the template's line, what literals
  alone show to be too big: `range(10**9)`, `'%*s' % (10**9, 'a')`, nested loops over ranges
  whose product exceeds the step budget, ...; and a macro that calls itself, directly or through
  other macros, which would render until the budget stops it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import re
import string
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from contextvars import ContextVar
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from .domain import Message, PromptContent, Rendered, VariableSpec
from .errors import RenderError, VariableError

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

MAX_NESTING = 24
"""Deepest nesting of blocks, brackets and unary operators a template may have."""

MAX_LOOP_NESTING = 8
"""Deepest nesting of `{% for %}` loops a template may have."""

MAX_AST_DEPTH = 120
"""Deepest parsed template tree, which bounds chains like `a + a + ...` or `x.a.a...`."""

MAX_VALUE_DEPTH = 32
"""Deepest nesting of lists and objects in a variable value."""

_CACHED_SOURCE_CHARS = 65_536  # larger templates are compiled again rather than kept
_CACHE_CHARS = 16 * MAX_OUTPUT_CHARS  # total source size of the compiled templates a Renderer keeps

_BLOCK_TAGS = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape"})

_MAX_POW_BITS = 100_000  # `10 ** 10**9` would take minutes and gigabytes; no prompt needs such ints

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


class TemplateSyntaxProblem(RenderError):
    """A template does not compile; `lineno` is the 1-based line inside the template."""

    def __init__(self, detail: str, *, lineno: int) -> None:
        super().__init__(f"template syntax error at line {lineno}: {detail}")
        self.detail = detail
        self.lineno = lineno


def _bullets(items: Iterable[Any], marker: str = "- ") -> str:
    return "\n".join(f"{marker}{item}" for item in items)


def _numbered(items: Iterable[Any], start: int = 1) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, start))


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=False)


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
        if isinstance(item, str):
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
    return isinstance(value, Iterable) and not isinstance(value, str | list | tuple | Mapping)


_SIZED_FILTERS = frozenset(
    {
        "format",
        "indent",
        "wordwrap",
        "replace",
        "join",
        "tojson",
        "string",
        "pprint",
        "e",
        "escape",
        "forceescape",
        "safe",
        "urlencode",
    }
)


# Filters that run Python code for every item of their input, and what an item costs in steps.
_ITEM_STEPS = 4
_ITEMWISE_FILTERS = frozenset(
    {
        "batch",
        "dictsort",
        "groupby",
        "items",
        "join",
        "list",
        "map",
        "max",
        "min",
        "reject",
        "rejectattr",
        "reverse",
        "select",
        "selectattr",
        "slice",
        "sort",
        "sum",
        "unique",
    }
)


def _guard_filter(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """Wrap a filter so it counts against the budget and refuses arguments that bomb."""
    skip = 0 if getattr(func, "jinja_pass_arg", None) is None else 1
    sized = name in _SIZED_FILTERS
    listed = name in ("join", "tojson")
    itemwise = name in _ITEMWISE_FILTERS

    @functools.wraps(func)
    def guarded(*args: Any, **kwargs: Any) -> Any:
        if itemwise and len(args) > skip and isinstance(args[skip], Sized):
            # Paid before a long sort or scan starts, which the deadline cannot interrupt.
            items = len(args[skip])
            if items > MAX_RANGE:
                raise SecurityError(f"the {name!r} filter is given more than {MAX_RANGE} items")
            _tick(_ITEM_STEPS * items)
        if len(args) > skip + 1 or kwargs:
            for param in (*args[skip + 1 :], *kwargs.values()):
                if _too_big(param):
                    raise SecurityError(f"an argument of the {name!r} filter is too large")
        if sized and len(args) > skip:
            if listed and _lazy(args[skip]):
                args = (*args[:skip], list(args[skip]), *args[skip + 1 :])
            size = _filter_size(name, args[skip], args[skip + 1 :], kwargs)
            _refuse_size(size, f"the {name!r} filter")
        return _charge(func(*args, **kwargs))

    return guarded


def _loop(iterable: Iterable[Any], weight: int = 0) -> Iterator[Any]:
    """Count every loop iteration (and the literal text its body writes) against the budget."""
    for item in iterable:
        _tick(1, weight)
        yield item


def _concat(items: list[Any]) -> str:
    """`a ~ b ~ c`, with its length checked before the string is built."""
    _refuse_size(_rendered_size(items), "a '~' concatenation")
    return _charge("".join(map(str, items)))


def _finalize(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, str):
        _tick(0, len(value))
    elif not isinstance(value, int | float):
        _refuse_size(_rendered_size(value), "an output value")
    return value


def _literal_chars(node: nodes.Node) -> int:
    """How many literal characters a loop body writes per iteration (nested loops count their own)."""
    size = 0
    stack = list(node.iter_child_nodes())
    while stack:
        child = stack.pop()
        if isinstance(child, nodes.TemplateData):
            size += len(child.data)
        elif isinstance(child, nodes.Const) and isinstance(child.value, str):
            size += len(child.value)
        if not isinstance(child, nodes.For):
            stack.extend(child.iter_child_nodes())
    return size


class _Instrument(NodeTransformer):
    """Route loops and `~` through the budgeted `_loop` and `_concat` filters."""

    def visit_For(self, node: nodes.For) -> nodes.Node:
        self.generic_visit(node)
        weight = nodes.Const(_literal_chars(node), lineno=node.lineno)
        node.iter = nodes.Filter(node.iter, "_loop", [weight], [], None, None, lineno=node.lineno)
        return node

    def visit_Concat(self, node: nodes.Concat) -> nodes.Node:
        self.generic_visit(node)
        items = nodes.List(node.nodes, lineno=node.lineno)
        return nodes.Filter(items, "_concat", [], [], None, None, lineno=node.lineno)


# What can make one render repeat work: loops, macros (which may recurse), calls (`range`, string
# methods) and filters that walk their input.
_LOOPING_NODES = (nodes.For, nodes.Macro, nodes.CallBlock, nodes.Call, nodes.Filter)
_LOOPING_FILTERS = _ITEMWISE_FILTERS | {"bullets", "numbered", "tojson", "_loop"}


def _can_loop(ast: nodes.Template) -> bool:
    """Whether a parsed template can repeat work (see `Renderer.may_loop`)."""
    for node in ast.find_all(_LOOPING_NODES):
        if not isinstance(node, nodes.Filter) or node.name in _LOOPING_FILTERS:
            return True
    return False


def _nesting_problem(lexer: Any, source: str) -> TemplateSyntaxError | None:
    """Refuse nesting deeper than MAX_NESTING before Jinja's recursive parser sees it."""
    depth = loops = run = 0
    stack: list[str] = []
    tokens = lexer.tokenize(source)
    for token in tokens:
        if token.type in ("lparen", "lbracket", "lbrace"):
            depth += 1
        elif token.type in ("rparen", "rbracket", "rbrace"):
            depth = max(0, depth - 1)
        elif token.type == "block_begin":
            tag = next(tokens, None)
            name = tag.value if tag is not None and tag.type == "name" else ""
            if name in _BLOCK_TAGS or name == "set" and _is_block_set(tokens):
                stack.append(name)
                loops += name == "for"
            elif name.startswith("end") and stack:
                loops -= stack.pop() == "for"
        run = run + 1 if token.test_any("name:not", "sub", "add") else 0
        if depth + len(stack) + run > MAX_NESTING:
            return TemplateSyntaxError(f"nested deeper than {MAX_NESTING} levels", token.lineno)
        if loops > MAX_LOOP_NESTING:
            return TemplateSyntaxError(f"loops nested deeper than {MAX_LOOP_NESTING}", token.lineno)
    return None


def _is_block_set(tokens: Any) -> bool:
    """Whether the `{% set %}` being read is the block form (`{% set x %}...{% endset %}`)."""
    assign = False
    for token in tokens:
        if token.type == "block_end":
            break
        assign = assign or token.type == "assign"
    return not assign


def _ast_depth_problem(ast: nodes.Node) -> TemplateSyntaxError | None:
    """Refuse chains like `1+1+...` or `x.a.a...`: parsed in a loop, but compiled recursively."""
    stack = [(ast, 0)]
    while stack:
        node, depth = stack.pop()
        if depth > MAX_AST_DEPTH:
            lineno = getattr(node, "lineno", 1) or 1
            return TemplateSyntaxError(f"expression nested deeper than {MAX_AST_DEPTH}", lineno)
        stack.extend((child, depth + 1) for child in node.iter_child_nodes())
    return None


class _PromptSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, with every call, filter, operator and loop on a budget."""

    # Intercepting disables constant folding of these operators too, so the guard always runs.
    intercepted_binops = frozenset({"*", "**", "+", "%"})

    def _parse(self, source: str, name: str | None, filename: str | None) -> nodes.Template:
        problem = _nesting_problem(self.lexer, source)
        if problem is not None:
            raise problem
        try:
            ast = super()._parse(source, name, filename)
        except (RecursionError, MemoryError):
            raise TemplateSyntaxError("the template is too deeply nested", 1) from None
        problem = _ast_depth_problem(ast)
        if problem is not None:
            raise problem
        ast = _Instrument().visit(ast)
        ast.set_environment(self)
        return ast

    def call_binop(self, context: Any, operator: str, left: Any, right: Any) -> Any:
        if operator == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and abs(left) > 1
                and left.bit_length() * right > _MAX_POW_BITS
            ):
                raise SecurityError("the result of '**' is too large")
            return _charge(left**right)
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_OUTPUT_CHARS
                ):
                    raise SecurityError("the result of '*' is too large")
            return _charge(left * right)
        if operator == "%" and isinstance(left, str):
            _refuse_size(_percent_size(left, right), "a '%' format")
        return _charge(super().call_binop(context, operator, left, right))

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # `'x'.ljust(10**9)`, `'x'.center(...)` and friends allocate before the output cap can act.
        if any(_too_big(a) for a in args) or any(_too_big(v) for v in kwargs.values()):
            raise SecurityError("a call argument is too large")
        owner = getattr(__obj, "__self__", None)
        if isinstance(owner, str):
            name = getattr(__obj, "__name__", "")
            if name == "join" and args and _lazy(args[0]):
                args = (list(args[0]), *args[1:])
            _refuse_size(_str_method_size(owner, name, args, kwargs), f"str.{name}()")
        return _charge(super().call(__context, __obj, *args, **kwargs))

    def wrap_str_format(self, value: Any) -> Callable[..., str] | None:
        wrapped = super().wrap_str_format(value)
        if wrapped is None:
            return None
        fmt: str = value.__self__
        is_map = value.__name__ == "format_map"

        def guarded(*args: Any, **kwargs: Any) -> str:
            if is_map and len(args) == 1 and isinstance(args[0], Mapping):
                _refuse_size(_format_size(fmt, (), args[0]), "str.format_map()")
            else:
                _refuse_size(_format_size(fmt, args, kwargs), "str.format()")
            return str(_charge(wrapped(*args, **kwargs)))

        return guarded


def _environment() -> _PromptSandbox:
    env = _PromptSandbox(
        undefined=StrictUndefined,
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
        finalize=_finalize,
    )
    env.globals.pop("lipsum", None)  # generates filler text; a prompt never wants it
    env.filters["tojson"] = _tojson
    env.filters["bullets"] = _bullets
    env.filters["numbered"] = _numbered
    for name, func in list(env.filters.items()):
        env.filters[name] = _guard_filter(name, func)
    env.filters["_loop"] = _loop
    env.filters["_concat"] = _concat
    return env


_UNKNOWN = object()


def _const(node: nodes.Node | None) -> Any:
    """The value of a literal (`3`, `'a'`, `(1, 'b')`, `-5`, `10**9`), or _UNKNOWN."""
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


_ENV = _environment()
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


def _type_name(value: Any) -> str:
    if value is None:
        return "null"
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
    return type(value).__name__


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


def check_variables(content: PromptContent, values: Mapping[str, Any]) -> dict[str, Any]:
    """Validate values against the declared variables and return them with defaults filled in."""
    if not isinstance(values, Mapping):
        raise VariableError(f"variables must be an object, got {_type_name(values)}")
    declared = {spec.name for spec in content.variables}
    for name in sorted(values, key=str):
        if name not in declared:
            known = ", ".join(spec.name for spec in content.variables) or "none"
            raise VariableError(
                f"variable {_show(name)} is not declared by this prompt (declared: {known})",
                field=str(name),
            )
    out: dict[str, Any] = {}
    for spec in content.variables:
        # An explicit null means "not given": the default applies, a required variable is missing.
        value = values.get(spec.name)
        if value is None:
            if spec.required:
                raise VariableError(f"variable {spec.name!r} is required", field=spec.name)
            out[spec.name] = copy.deepcopy(spec.default) if spec.has_default else None
            continue
        problem = value_problem(spec, value)
        if problem is not None:
            raise VariableError(f"variable {spec.name!r} {problem}", field=spec.name)
        out[spec.name] = value
    return out


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


class Renderer:
    """Renders prompt content with checked variables; caches compiled templates (thread-safe)."""

    def __init__(self, *, cache_size: int = 512, time_budget: float = RENDER_TIME_BUDGET) -> None:
        self._cache: OrderedDict[str, tuple[Any, int, bool]] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._cache_chars = 0
        self._time_budget = time_budget
        self._lock = threading.Lock()

    def _compile(self, source: str) -> Any:
        return self._compiled(source)[0]

    def _compiled(self, source: str) -> tuple[Any, int, bool]:
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            ast = _ENV.parse(source)
            loops = _can_loop(ast)
            template = _ENV.from_string(ast)
        except TemplateSyntaxError as exc:
            raise _syntax_problem(exc) from None
        except (RecursionError, MemoryError, SyntaxError) as exc:
            raise _compile_problem(exc) from None
        with self._lock:
            # Bounded by count and by total source size: many large templates evict each other.
            if key not in self._cache:
                self._cache[key] = (template, len(source), loops)
                self._cache_chars += len(source)
            while len(self._cache) > self._cache_size or (
                self._cache_chars > _CACHE_CHARS and len(self._cache) > 1
            ):
                self._cache_chars -= self._cache.popitem(last=False)[1][1]
        return template, len(source), loops

    def may_loop(self, content: PromptContent) -> bool:
        """Whether rendering the content can repeat work (a loop, a call, a macro, a filter that
        walks a list): such a render can run up to the time budget, so the server renders it off
        its event loop. Loop-free templates render in time linear in their text and variables."""
        sources = (
            [m.content for m in content.messages]
            if content.messages is not None
            else [content.template or ""]
        )
        for source in sources:
            if "{" not in source:
                continue
            try:
                if self._compiled(source)[2]:
                    return True
            except RenderError:  # refused at once when rendered: nothing to run
                continue
        return False

    def _render_one(self, source: str, context: dict[str, Any], where: str, budget: int) -> str:
        if "{" not in source and "\r" not in source and len(source) <= budget:
            # No tag, expression or comment, and no newline to normalise: Jinja would return
            # the text unchanged, so skip it (a third of a serve's time for few-shot prompts).
            return source
        try:
            template = self._compile(source)
            parts: list[str] = []
            size = 0
            # Stream the output so a runaway loop is stopped at the cap, not after filling memory.
            for chunk in template.generate(context):
                size += len(chunk)
                if size > budget:
                    raise RenderError(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS} characters")
                parts.append(chunk)
            return "".join(parts)
        except RenderTooSlow:
            raise
        except RenderError as exc:
            raise RenderError(f"{where}: {exc.message}") from None
        except SecurityError as exc:
            raise RenderError(f"{where}: refused by the sandbox: {_one_line(str(exc))}") from None
        except TemplateError as exc:
            raise RenderError(f"{where}: {_one_line(exc.message or str(exc))}") from None
        except Exception as exc:  # noqa: BLE001 - any failure of an authored template is a RenderError
            detail = _one_line(str(exc)) or type(exc).__name__
            raise RenderError(f"{where}: {type(exc).__name__}: {detail}") from None

    def render(
        self,
        content: PromptContent,
        variables: Mapping[str, Any],
        *,
        prompt: str,
        version: int,
        variant: str,
        inline: bool = False,
    ) -> Rendered:
        """Check the variables and render every message (or the text template) of the content.
        `inline=True` (an event loop's thread) allows only INLINE_TIME_BUDGET and
        INLINE_WORK_BUDGET and raises RenderTooSlow past them, so the caller can render again in
        a worker thread with the full budget; a loop-free prompt renders inline in microseconds."""
        context = check_variables(content, variables)
        budget = (
            _Budget(min(INLINE_TIME_BUDGET, self._time_budget), INLINE_WORK_BUDGET, inline=True)
            if inline
            else _Budget(self._time_budget)
        )
        token = _BUDGET.set(budget)
        try:
            return self._render_all(content, context, prompt=prompt, version=version, variant=variant)
        finally:
            _BUDGET.reset(token)

    def _render_all(
        self, content: PromptContent, context: dict[str, Any], *, prompt: str, version: int, variant: str
    ) -> Rendered:
        model = copy.deepcopy(dict(content.model))
        budget = MAX_OUTPUT_CHARS
        if content.messages is not None:
            rendered: list[Message] = []
            for i, message in enumerate(content.messages):
                text = self._render_one(message.content, context, f"messages[{i}].content", budget)
                budget -= len(text)
                rendered.append(Message(message.role, text))
            return Rendered(prompt, version, variant, model, messages=tuple(rendered))
        if content.template is None:
            raise RenderError("the prompt has neither messages nor a template")
        text = self._render_one(content.template, context, "template", budget)
        return Rendered(prompt, version, variant, model, text=text)
