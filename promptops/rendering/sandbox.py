"""The Jinja2 sandbox prompts render in: every call, filter, operator and loop on the budget.

`_ENV` is Jinja's immutable sandbox with `StrictUndefined`, the extra filters (`bullets`,
`numbered`, a plain `tojson`), every filter wrapped so that it counts against the budget and
refuses arguments that bomb, loops and `~` rewritten at parse time into budgeted filters, and the
nesting of a source checked before Jinja's recursive parser and compiler see it.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Callable, Iterable, Iterator, Mapping, Sized
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError
from jinja2.sandbox import MAX_RANGE, ImmutableSandboxedEnvironment
from jinja2.visitor import NodeTransformer

from promptops.rendering.budget import (
    _EAGER,
    MAX_OUTPUT_CHARS,
    _charge,
    _filter_size,
    _format_size,
    _lazy,
    _percent_size,
    _refuse_size,
    _rendered_size,
    _str_method_size,
    _tick,
    _too_big,
)

MAX_NESTING = 24
"""Deepest nesting of blocks, brackets and unary operators a template may have."""

MAX_LOOP_NESTING = 8
"""Deepest nesting of `{% for %}` loops a template may have."""

MAX_AST_DEPTH = 120
"""Deepest parsed template tree, which bounds chains like `a + a + ...` or `x.a.a...`."""

_BLOCK_TAGS = frozenset({"if", "for", "macro", "call", "filter", "with", "block", "autoescape"})

_MAX_POW_BITS = 100_000  # `10 ** 10**9` would take minutes and gigabytes; no prompt needs such ints


def _bullets(items: Iterable[Any], marker: str = "- ") -> str:
    return "\n".join(f"{marker}{item}" for item in items)


def _numbered(items: Iterable[Any], start: int = 1) -> str:
    return "\n".join(f"{i}. {item}" for i, item in enumerate(items, start))


def _tojson(value: Any, indent: int | None = None) -> str:
    return json.dumps(value, ensure_ascii=False, indent=indent, sort_keys=False)


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
        if itemwise and len(args) > skip and (type(args[skip]) in _EAGER or isinstance(args[skip], Sized)):
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


_ENV = _environment()
