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
  The server renders a template that `Renderer.may_loop` says can repeat work inline only within
  `INLINE_TIME_BUDGET` (the thread's own time) and `INLINE_WORK_BUDGET` steps, then in a worker
  thread, so such a render (at worst about 0.5 s; 0.51 s for nested `range` loops, up to 0.8 s
  with the machine's cores fully loaded) does not stall its event loop;
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

The package's modules, one concept each: `budget` (what a render may spend, sizes before they are
built), `sandbox` (the Jinja environment), `templates` (checks before any render, names),
`variables` (variable values) and `renderer` (compiling, preparing and rendering content).
"""

from promptops.rendering.budget import (
    INLINE_TIME_BUDGET,
    INLINE_WORK_BUDGET,
    MAX_OUTPUT_CHARS,
    MAX_PRODUCED_CHARS,
    RENDER_TIME_BUDGET,
    RENDER_WORK_BUDGET,
    RenderTooSlow,
)
from promptops.rendering.renderer import PreparedContent, Renderer
from promptops.rendering.sandbox import MAX_AST_DEPTH, MAX_LOOP_NESTING, MAX_NESTING
from promptops.rendering.templates import TemplateSyntaxProblem, check_limits, template_names
from promptops.rendering.variables import (
    MAX_VALUE_DEPTH,
    VariableCheck,
    check_variables,
    coerce_cli_value,
    value_problem,
    value_type,
)

__all__ = [
    "INLINE_TIME_BUDGET",
    "INLINE_WORK_BUDGET",
    "MAX_AST_DEPTH",
    "MAX_LOOP_NESTING",
    "MAX_NESTING",
    "MAX_OUTPUT_CHARS",
    "MAX_PRODUCED_CHARS",
    "MAX_VALUE_DEPTH",
    "RENDER_TIME_BUDGET",
    "RENDER_WORK_BUDGET",
    "PreparedContent",
    "RenderTooSlow",
    "Renderer",
    "TemplateSyntaxProblem",
    "VariableCheck",
    "check_limits",
    "check_variables",
    "coerce_cli_value",
    "template_names",
    "value_problem",
    "value_type",
]
