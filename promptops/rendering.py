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
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import math
import threading
from collections import OrderedDict
from collections.abc import Iterable, Mapping
from typing import Any

from jinja2 import StrictUndefined, TemplateSyntaxError, meta, nodes
from jinja2.exceptions import SecurityError, TemplateError
from jinja2.sandbox import ImmutableSandboxedEnvironment

from .domain import Message, PromptContent, Rendered, VariableSpec
from .errors import RenderError, VariableError

MAX_OUTPUT_CHARS = 1_000_000
"""Largest rendered prompt (all messages together), in characters."""

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


def _finalize(value: Any) -> Any:
    return "" if value is None else value


def _too_big(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_OUTPUT_CHARS


class _PromptSandbox(ImmutableSandboxedEnvironment):
    """Jinja's immutable sandbox, plus guards against one-expression memory and CPU bombs."""

    # Intercepting disables constant folding of these operators too, so the guard always runs.
    intercepted_binops = frozenset({"*", "**"})

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
            return left**right
        if operator == "*":
            for seq, times in ((left, right), (right, left)):
                if (
                    isinstance(seq, str | list | tuple)
                    and isinstance(times, int)
                    and len(seq) * times > MAX_OUTPUT_CHARS
                ):
                    raise SecurityError("the result of '*' is too large")
            return left * right
        return super().call_binop(context, operator, left, right)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # `'x'.ljust(10**9)`, `'x'.center(...)` and friends allocate before the output cap can act.
        if any(_too_big(a) for a in args) or any(_too_big(v) for v in kwargs.values()):
            raise SecurityError("a call argument is too large")
        return super().call(__context, __obj, *args, **kwargs)


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
    return env


_ENV = _environment()
_FORBIDDEN_NODES = (nodes.Extends, nodes.Include, nodes.Import, nodes.FromImport)


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


def template_names(source: str) -> set[str]:
    """The undeclared names a template references; raises RenderError on a syntax error."""
    # Plain text (a few-shot example, say) cannot reference anything; skip Jinja's compiler.
    if not any(marker in source for marker in ("{{", "{%", "{#")):
        return set()
    return set(_template_names(source))


@functools.lru_cache(maxsize=1024)
def _template_names(source: str) -> frozenset[str]:
    try:
        ast = _ENV.parse(source)
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(_one_line(exc.message or str(exc)), lineno=exc.lineno) from None
    for node in ast.find_all(_FORBIDDEN_NODES):
        tag = type(node).__name__.lower().replace("fromimport", "from ... import")
        raise TemplateSyntaxProblem(
            f"{{% {tag} %}} is not supported: a prompt is one self-contained template",
            lineno=node.lineno,
        )
    try:  # names are found by compiling, which is when unknown filters and tests show up
        return frozenset(meta.find_undeclared_variables(ast))
    except TemplateSyntaxError as exc:
        raise TemplateSyntaxProblem(_one_line(exc.message or str(exc)), lineno=exc.lineno) from None


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


def value_problem(spec: VariableSpec, value: Any) -> str | None:
    """What is wrong with a value for a variable (type, enum, max_length), or None if it fits."""
    if not _has_type(spec.type, value):
        return f"must be {_TYPE_NAMES.get(spec.type, spec.type)}, got {_type_name(value)}"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    if spec.enum is not None and not any(_same(value, e) for e in spec.enum):
        allowed = ", ".join(_show(e) for e in spec.enum)
        return f"must be one of {allowed}, got {_show(value)}"
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

    def __init__(self, *, cache_size: int = 512) -> None:
        self._cache: OrderedDict[str, Any] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._lock = threading.Lock()

    def _compile(self, source: str) -> Any:
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            template = self._cache.get(key)
            if template is not None:
                self._cache.move_to_end(key)
                return template
        try:
            template = _ENV.from_string(source)
        except TemplateSyntaxError as exc:
            raise TemplateSyntaxProblem(
                _one_line(exc.message or str(exc)), lineno=exc.lineno
            ) from None
        with self._lock:
            self._cache[key] = template
            while len(self._cache) > self._cache_size:
                self._cache.popitem(last=False)
        return template

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
    ) -> Rendered:
        """Check the variables and render every message (or the text template) of the content."""
        context = check_variables(content, variables)
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
