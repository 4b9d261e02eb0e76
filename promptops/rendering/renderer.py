"""Rendering prompt content: the compiled-template cache, prepared contents and the render loop.

`Renderer.prepare` turns a content into a `PreparedContent` once (templates compiled, whether they
can loop, the variable checks, the model settings); each render then only checks the variables and
runs the templates on a fresh budget. A template of text and `{{ name }}` only is rendered without
Jinja, as Jinja would render it.
"""

from __future__ import annotations

import copy
import hashlib
import threading
from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

from jinja2 import TemplateSyntaxError, nodes
from jinja2.exceptions import SecurityError, TemplateError

from promptops.domain import Message, PromptContent, Rendered
from promptops.errors import RenderError
from promptops.rendering.budget import (
    _BUDGET,
    INLINE_TIME_BUDGET,
    INLINE_WORK_BUDGET,
    MAX_OUTPUT_CHARS,
    RENDER_TIME_BUDGET,
    RenderTooSlow,
    _Budget,
)
from promptops.rendering.sandbox import _ENV, _can_loop, _finalize
from promptops.rendering.templates import _compile_problem, _one_line, _syntax_problem
from promptops.rendering.variables import _SCALARS, VariableCheck

_CACHE_CHARS = 16 * MAX_OUTPUT_CHARS  # total source size of the compiled templates a Renderer keeps


_SPECIAL = frozenset({"self"})  # a name Jinja resolves itself at the top level, not from the context


def _substitution(ast: nodes.Template, names: frozenset[str]) -> tuple[str, ...] | None:
    """A template that is only text and `{{ name }}` of declared variables, as alternating pieces
    (text, name, text, ..., text); None for anything else. Such a template cannot loop or grow its
    input, so it renders without Jinja: each name is output as Jinja outputs it,
    `str(_finalize(value))`, and every variable is defined (the check fills it in)."""
    pieces = [""]
    for output in ast.body:
        if not isinstance(output, nodes.Output):
            return None
        for node in output.nodes:
            if isinstance(node, nodes.TemplateData):
                pieces[-1] += node.data
            elif isinstance(node, nodes.Name) and node.ctx == "load" and node.name in names - _SPECIAL:
                pieces += [node.name, ""]
            else:
                return None
    return tuple(pieces)


_GLOBALS = dict(_ENV.globals)  # what every template sees besides the variables (no per-template globals)


class _Part:
    """One message (or the text template) of a prepared content: literal text, a substitution, a
    compiled template, or the problem that stops it from compiling (raised when it is reached)."""

    __slots__ = ("where", "text", "pieces", "template", "problem")

    def __init__(self, where: str) -> None:
        self.where = where
        self.text: str | None = None
        self.pieces: tuple[str, ...] | None = None
        self.template: Any = None
        self.problem: str | None = None


class PreparedContent:
    """A content ready to render: everything that does not depend on the variables (compiled
    templates, whether they can loop, the variable checks, the model settings) worked out once.
    The server keeps one per live version (`Renderer.prepare`)."""

    def __init__(self, renderer: Renderer, content: PromptContent) -> None:
        self._time_budget = renderer.time_budget
        self._check = VariableCheck(content.variables)
        names = frozenset(spec.name for spec in content.variables)
        self._model = copy.deepcopy(dict(content.model))
        self._copy_model = (
            dict.copy if all(isinstance(v, _SCALARS) for v in self._model.values()) else copy.deepcopy
        )
        self._chat = content.messages is not None
        self._roles = tuple(m.role for m in content.messages) if content.messages is not None else ()
        self.may_loop = False
        """Whether rendering can repeat work (a loop, a call, a macro, a filter that walks a list):
        such a render can run up to the time budget, so the server renders it off its event loop.
        Loop-free templates render in time linear in their text and variables."""
        if content.messages is not None:
            sources = [(f"messages[{i}].content", m.content) for i, m in enumerate(content.messages)]
        elif content.template is not None:
            sources = [("template", content.template)]
        else:
            sources = []
        self._parts = tuple(self._part(renderer, where, source, names) for where, source in sources)
        self.pure = all(p.template is None and p.problem is None for p in self._parts)
        """Whether every part is literal text or a substitution of variables: its rendering is
        then a function of the variables alone (a Jinja template could call `random`), so a
        caller may keep the rendering of variables it saw before instead of rendering again."""

    def _part(self, renderer: Renderer, where: str, source: str, names: frozenset[str]) -> _Part:
        part = _Part(where)
        if "{" not in source and "\r" not in source:
            # No tag, expression or comment, and no newline to normalise: Jinja would return the
            # text unchanged (for few-shot prompts most messages are such examples).
            part.text = source
            return part
        try:
            compiled = renderer._compiled(source)
        except RenderError as exc:
            part.problem = f"{where}: {exc.message}"
            return part
        part.pieces = _substitution(compiled.ast, names) if compiled.ast is not None else None
        if part.pieces is None:
            part.template = compiled.template
        self.may_loop = self.may_loop or compiled.loops
        return part

    def render(
        self,
        variables: Mapping[str, Any],
        *,
        prompt: str,
        version: int,
        variant: str,
        inline: bool = False,
    ) -> Rendered:
        """Check the variables and render every message (or the text template); see
        `Renderer.render`."""
        context = self._check(variables)
        budget = (
            _Budget(min(INLINE_TIME_BUDGET, self._time_budget), INLINE_WORK_BUDGET, inline=True)
            if inline
            else _Budget(self._time_budget)
        )
        token = _BUDGET.set(budget)
        try:
            texts = self._render_parts(context)
        finally:
            _BUDGET.reset(token)
        model = self._copy_model(self._model)
        if self._chat:
            messages = tuple(map(Message, self._roles, texts))
            return Rendered(prompt, version, variant, model, messages=messages)
        if not texts:
            raise RenderError("the prompt has neither messages nor a template")
        return Rendered(prompt, version, variant, model, text=texts[0])

    def _render_parts(self, context: dict[str, Any]) -> list[str]:
        texts: list[str] = []
        left = MAX_OUTPUT_CHARS
        parent: dict[str, Any] | None = None  # the Jinja context's variables, shared by the parts
        for part in self._parts:
            if part.text is not None:
                text = part.text
                if len(text) > left:
                    raise RenderError(f"{part.where}: {_exceeds().message}")
            elif part.problem is not None:
                raise RenderError(part.problem)
            else:
                try:
                    if part.pieces is not None:
                        text = _substitute(part.pieces, context, left)
                    else:
                        if parent is None:
                            parent = {**_GLOBALS, **context}
                        text = _generate(part.template, parent, left)
                except RenderTooSlow:
                    raise
                except RenderError as exc:
                    raise RenderError(f"{part.where}: {exc.message}") from None
                except SecurityError as exc:
                    detail = _one_line(str(exc))
                    raise RenderError(f"{part.where}: refused by the sandbox: {detail}") from None
                except TemplateError as exc:
                    raise RenderError(f"{part.where}: {_one_line(exc.message or str(exc))}") from None
                except Exception as exc:  # noqa: BLE001 - any failure of an authored template is a RenderError
                    detail = _one_line(str(exc)) or type(exc).__name__
                    raise RenderError(f"{part.where}: {type(exc).__name__}: {detail}") from None
            left -= len(text)
            texts.append(text)
        return texts


def _exceeds() -> RenderError:
    return RenderError(f"the rendered prompt exceeds {MAX_OUTPUT_CHARS} characters")


def _substitute(pieces: tuple[str, ...], context: dict[str, Any], left: int) -> str:
    """Render a substitution (see `_substitution`) as Jinja would, within `left` characters."""
    out: list[str] = []
    size = 0
    for i, piece in enumerate(pieces):
        if i % 2:
            piece = str(_finalize(context[piece]))
        size += len(piece)
        if size > left:
            raise _exceeds()
        out.append(piece)
    return "".join(out)


def _generate(template: Any, parent: dict[str, Any], left: int) -> str:
    """Run a compiled template over `parent` (globals and variables), as `Template.generate`
    does but without copying the variables for every message; the output is streamed so that
    a runaway loop is stopped at the cap, not after filling memory."""
    context = _ENV.context_class(_ENV, parent, template.name, template.blocks)
    parts: list[str] = []
    size = 0
    for chunk in template.root_render_func(context):
        size += len(chunk)
        if size > left:
            raise _exceeds()
        parts.append(chunk)
    return "".join(parts)


class _Compiled:
    """A compiled template with what is known about it before any render."""

    __slots__ = ("template", "size", "loops", "ast")

    def __init__(self, template: Any, size: int, loops: bool, ast: nodes.Template | None) -> None:
        self.template = template
        self.size = size
        self.loops = loops
        self.ast = ast  # kept only when it is small text-and-names (see `_substitution`)


def _plain_ast(ast: nodes.Template) -> nodes.Template | None:
    """The parse tree if it is only text and names (what `_substitution` may use), else None."""
    for output in ast.body:
        if not isinstance(output, nodes.Output):
            return None
        if not all(isinstance(n, nodes.TemplateData | nodes.Name) for n in output.nodes):
            return None
    return ast


class Renderer:
    """Renders prompt content with checked variables; caches compiled templates (thread-safe)."""

    def __init__(self, *, cache_size: int = 512, time_budget: float = RENDER_TIME_BUDGET) -> None:
        self._cache: OrderedDict[str, _Compiled] = OrderedDict()
        self._cache_size = max(1, cache_size)
        self._cache_chars = 0
        self.time_budget = time_budget
        self._lock = threading.Lock()

    def _compiled(self, source: str) -> _Compiled:
        key = hashlib.sha256(source.encode("utf-8", "surrogatepass")).hexdigest()
        with self._lock:
            hit = self._cache.get(key)
            if hit is not None:
                self._cache.move_to_end(key)
                return hit
        try:
            ast = _ENV.parse(source)
            compiled = _Compiled(_ENV.from_string(ast), len(source), _can_loop(ast), _plain_ast(ast))
        except TemplateSyntaxError as exc:
            raise _syntax_problem(exc) from None
        except (RecursionError, MemoryError, SyntaxError) as exc:
            raise _compile_problem(exc) from None
        with self._lock:
            # Bounded by count and by total source size: many large templates evict each other.
            if key not in self._cache:
                self._cache[key] = compiled
                self._cache_chars += compiled.size
            while len(self._cache) > self._cache_size or (
                self._cache_chars > _CACHE_CHARS and len(self._cache) > 1
            ):
                self._cache_chars -= self._cache.popitem(last=False)[1].size
        return compiled

    def prepare(self, content: PromptContent) -> PreparedContent:
        """The content compiled for rendering; keep it to render the same content many times."""
        return PreparedContent(self, content)

    def may_loop(self, content: PromptContent) -> bool:
        """Whether rendering the content can repeat work (see `PreparedContent.may_loop`)."""
        return self.prepare(content).may_loop

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
        return self.prepare(content).render(
            variables, prompt=prompt, version=version, variant=variant, inline=inline
        )
