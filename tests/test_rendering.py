"""The sandboxed renderer, variable checks, template name discovery and CLI value coercion."""

from __future__ import annotations

import math
import tracemalloc
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from promptops import rendering
from promptops.domain import Message, PromptContent, VariableSpec
from promptops.errors import RenderError, VariableError
from promptops.rendering import (
    MAX_AST_DEPTH,
    MAX_NESTING,
    MAX_OUTPUT_CHARS,
    MAX_VALUE_DEPTH,
    RENDER_WORK_BUDGET,
    Renderer,
    TemplateSyntaxProblem,
    check_variables,
    coerce_cli_value,
    template_names,
    value_problem,
)


def text_content(template: str, *variables: VariableSpec) -> PromptContent:
    return PromptContent(template=template, variables=variables or (VariableSpec("x"),))


def render_text(template: str, values: dict[str, Any] | None = None, *specs: VariableSpec) -> str:
    rendered = Renderer().render(
        text_content(template, *specs), values or {}, prompt="p", version=1, variant="main"
    )
    assert rendered.text is not None
    return rendered.text


CHAT = PromptContent(
    messages=(
        Message("system", "You sort {{ kind }}."),
        Message("user", "{{ items | join(', ') }}"),
    ),
    model={"name": "gpt-4o-mini", "temperature": 0.1, "extra": {"stop": ["\n"]}},
    variables=(
        VariableSpec("kind", required=True),
        VariableSpec("items", type="list", default=["a", "b"], has_default=True),
    ),
)


class TestRender:
    def test_chat_messages_are_rendered_with_defaults(self) -> None:
        out = Renderer().render(CHAT, {"kind": "fruit"}, prompt="sorter", version=3, variant="v2")
        assert out.messages == (Message("system", "You sort fruit."), Message("user", "a, b"))
        assert (out.prompt, out.version, out.variant, out.text) == ("sorter", 3, "v2", None)
        assert out.payload()["messages"][1] == {"role": "user", "content": "a, b"}

    def test_model_is_a_copy(self) -> None:
        out = Renderer().render(CHAT, {"kind": "x"}, prompt="p", version=1, variant="main")
        out.model["extra"]["stop"].append("X")
        assert CHAT.model["extra"] == {"stop": ["\n"]}

    def test_text_template(self) -> None:
        assert render_text("Hello {{ x }}!", {"x": "Ada"}) == "Hello Ada!"

    def test_trailing_newline_is_kept(self) -> None:
        assert render_text("{{ x }}\n", {"x": "a"}) == "a\n"

    def test_block_tags_leave_no_blank_lines(self) -> None:
        spec = VariableSpec("x", type="list")
        template = "Items:\n{% for i in x %}\n- {{ i }}\n{% endfor %}\nEnd"
        assert render_text(template, {"x": [1, 2]}, spec) == "Items:\n- 1\n- 2\nEnd"

    def test_optional_variable_without_default_renders_empty(self) -> None:
        assert render_text("[{{ x }}]{% if x %}set{% endif %}", {}) == "[]"

    def test_value_is_data_not_template(self) -> None:
        assert render_text("{{ x }}", {"x": "{{ 7*7 }} {% if 1 %}y{% endif %}"}) == (
            "{{ 7*7 }} {% if 1 %}y{% endif %}"
        )

    def test_nested_value_is_data(self) -> None:
        spec = VariableSpec("x", type="object")
        assert render_text("{{ x.q }}", {"x": {"q": "{{ 7*7 }}"}}, spec) == "{{ 7*7 }}"

    def test_tojson_is_plain_json(self) -> None:
        assert render_text("{{ x | tojson }}", {"x": "<a & 'b'> é"}) == "\"<a & 'b'> é\""

    def test_list_filters(self) -> None:
        spec = VariableSpec("x", type="list")
        assert render_text("{{ x | bullets }}", {"x": ["a", "b"]}, spec) == "- a\n- b"
        assert render_text("{{ x | numbered }}", {"x": ["a", "b"]}, spec) == "1. a\n2. b"

    def test_arithmetic_still_works(self) -> None:
        assert render_text("{{ 7*7 }} {{ 2**10 }} {{ 'ab' * 2 }}") == "49 1024 abab"

    def test_many_templates_through_a_small_cache(self) -> None:
        renderer = Renderer(cache_size=2)
        for i in range(5):
            content = text_content(f"{i}:{{{{ x }}}}")
            assert renderer.render(content, {"x": "v"}, prompt="p", version=1, variant="m").text == (f"{i}:v")

    def test_concurrent_renders(self) -> None:
        renderer = Renderer(cache_size=4)

        def one(i: int) -> str | None:
            content = text_content(f"{i % 7}-{{{{ x }}}}")
            return renderer.render(content, {"x": str(i)}, prompt="p", version=1, variant="m").text

        with ThreadPoolExecutor(max_workers=8) as pool:
            results = list(pool.map(one, range(200)))
        assert results == [f"{i % 7}-{i}" for i in range(200)]


SANDBOX_ESCAPES = [
    pytest.param("{{ ''.__class__.__mro__ }}", id="class-mro"),
    pytest.param("{{ ''.__class__.__mro__[1].__subclasses__() }}", id="subclasses"),
    pytest.param("{{ cycler.__init__.__globals__ }}", id="cycler-globals"),
    pytest.param("{{ joiner.__init__.__globals__.os }}", id="joiner-globals"),
    pytest.param("{{ namespace.__init__.__globals__ }}", id="namespace-globals"),
    pytest.param("{{ self._TemplateReference__context }}", id="template-reference"),
    pytest.param("{{ self.__dict__ }}", id="self-dict"),
    pytest.param("{{ '{0.__class__}'.format(x) }}", id="format-attribute"),
    pytest.param("{{ '{0.__class__.__base__}'.format_map({'0': x}) }}", id="format-map"),
    pytest.param("{{ x.__class__ }}", id="value-class"),
    pytest.param("{{ range.__self__ }}", id="builtin-self"),
    pytest.param("{{ dict.__base__.__subclasses__() }}", id="dict-base"),
    pytest.param("{% set l = [] %}{{ l.append(1) }}", id="mutate-list"),
    pytest.param("{% set d = {} %}{{ d.update(a=1) }}", id="mutate-dict"),
    pytest.param("{{ lipsum(1000) }}", id="lipsum-removed"),
    pytest.param("{{ missing_name }}", id="undefined-name"),
    pytest.param("{{ x.missing.deeper }}", id="undefined-attribute"),
    pytest.param("{{ 1 / 0 }}", id="zero-division"),
    pytest.param("{{ 10 ** 10000000 }}", id="power-bomb"),
    pytest.param("{{ 'a' * 100000000 }}", id="repeat-bomb"),
    pytest.param("{{ [1] * 100000000 }}", id="list-repeat-bomb"),
    pytest.param("{{ 'x'.ljust(1000000000) }}", id="ljust-bomb"),
    pytest.param("{{ range(1000000000) | list }}", id="range-bomb"),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100) %}xxxxxxxxxx{% endfor %}{% endfor %}",
        id="output-cap",
    ),
    pytest.param("{% include 'other.txt' %}", id="include"),
    pytest.param("{{ x }", id="syntax-error"),
]


class TestSandbox:
    @pytest.mark.parametrize("template", SANDBOX_ESCAPES)
    def test_refused_as_render_error(self, template: str) -> None:
        with pytest.raises(RenderError) as info:
            render_text(template, {"x": "value"})
        message = str(info.value)
        assert message.startswith("template: ")
        assert "\n" not in message
        assert "Traceback" not in message

    def test_message_names_the_failing_message(self) -> None:
        content = PromptContent(messages=(Message("system", "ok"), Message("user", "{{ nope }}")))
        with pytest.raises(RenderError, match=r"^messages\[1\]\.content: 'nope' is undefined$"):
            Renderer().render(content, {}, prompt="p", version=1, variant="main")

    def test_unsafe_attribute_is_named(self) -> None:
        with pytest.raises(RenderError, match="__class__"):
            render_text("{{ ''.__class__ }}")

    def test_output_cap_spans_all_messages(self) -> None:
        half = "{% for i in range(60000) %}xxxxxxxxxx{% endfor %}"  # 600k characters each
        content = PromptContent(messages=(Message("system", half), Message("user", half)))
        with pytest.raises(RenderError, match=f"exceeds {MAX_OUTPUT_CHARS}"):
            Renderer().render(content, {}, prompt="p", version=1, variant="main")


A10 = "{% set a = 'aaaaaaaaaa' %}"
S900K = "{% set s = 'a' * 900000 %}"
GROW = "{% set a = a.replace('a', a) %}"

# CPU and memory bombs: each must end as a one-line RenderError, quickly and in little memory.
BOMBS = [
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
        id="nested-range",
    ),
    pytest.param(
        "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}", id="nested-range-variable"
    ),
    pytest.param("{{ '%*s' % (999999999, 'a') }}", id="percent-star-width"),
    pytest.param("{{ '%*s' % (n * 9999, 'a') }}", id="percent-star-width-variable"),
    pytest.param("{{ '%999999999s' | format('a') }}", id="format-filter-width"),
    pytest.param("{{ '%.999999999f' % 1.5 }}", id="percent-precision"),
    pytest.param("{{ '%0999999999d' % 1 }}", id="percent-zero-pad"),
    pytest.param("{{ 'x' | center(999999999) }}", id="center"),
    pytest.param("{{ 'x' | center(n * 10000) }}", id="center-variable"),
    pytest.param(A10 + GROW * 7 + "{{ a | length }}", id="replace-growth"),
    pytest.param(
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s ~ ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        id="namespace-doubling-tilde",
    ),
    pytest.param(
        "{% set ns = namespace(s='a') %}{% for i in range(60) %}{% set ns.s = ns.s + ns.s %}"
        "{% endfor %}{{ ns.s | length }}",
        id="namespace-doubling-plus",
    ),
    pytest.param(S900K + "{% set t = s~s~s~s~s~s~s~s~s~s %}{{ t | length }}", id="tilde-chain"),
    pytest.param(S900K + "{{ [s, s, s, s] | join }}", id="join-growth"),
    pytest.param("{{ range(100000) | join('x' * 100000) }}", id="join-separator"),
    pytest.param("{{ ('x' * 100000).join(range(100000) | map('string')) }}", id="str-join"),
    pytest.param("{{ 'a' * 1000 | join }}", id="join-of-int"),
    pytest.param("{{ ('a\\n' * 400000) | indent(100000) }}", id="indent-width"),
    pytest.param("{{ ('a\\n' * 400000) | indent('x' * 1000) }}", id="indent-string"),
    pytest.param("{{ ('a' * 900000) | wordwrap(1, wrapstring='x' * 1000) }}", id="wordwrap"),
    pytest.param("{{ range(100000) | list | tojson(indent=900000) }}", id="tojson-indent"),
    pytest.param("{{ 'abc' | truncate(1, end='x' * 999999999) }}", id="truncate-end"),
    pytest.param("{{ range(10) | batch(999999999, 'x') | list }}", id="batch"),
    pytest.param("{{ range(10) | slice(999999999) | list }}", id="slice"),
    pytest.param("{{ [1] * 999999999 }}", id="list-times-n"),
    pytest.param(S900K + "{{ [s] * 1000 }}", id="list-of-big-strings"),
    pytest.param(S900K + "{{ ([s] * 1000) | string }}", id="string-of-big-list"),
    pytest.param(
        S900K + "{% set b = [s, s] %}{% set b = [b, b] %}{% set b = [b, b] %}{{ b }}",
        id="nested-list-literals",
    ),
    pytest.param("{{ range(10**9) | list }}", id="range-list"),
    pytest.param("{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}", id="macro-recursion"),
    pytest.param(
        "{% macro f(n) %}{% if n %}{{ f(n-1) }}{{ f(n-1) }}{% else %}x{% endif %}{% endmacro %}{{ f(40) }}",
        id="macro-fan-out",
    ),
    pytest.param(
        "{% macro m() %}{% for i in range(100000) %}{{ caller() }}{% endfor %}{% endmacro %}"
        "{% call m() %}{% call m() %}x{% endcall %}{% endcall %}",
        id="nested-call-blocks",
    ),
    pytest.param(
        "{% for i in range(100000) %}{% for j in range(100000) %}{{ loop.cycle('', '') }}"
        "{% endfor %}{% endfor %}",
        id="loop-cycle",
    ),
    pytest.param("{{ '{:>999999999}'.format('a') }}", id="str-format-width"),
    pytest.param("{{ '{:>{w}}'.format('a', w=n * 9999) }}", id="str-format-nested-width"),
    pytest.param("{{ '{x:>999999999}'.format_map({'x': 'a'}) }}", id="format-map"),
    pytest.param("{{ 'a'.zfill(999999999) }}", id="zfill"),
    pytest.param("{{ ('\\t' * 900000).expandtabs(1000000) }}", id="expandtabs"),
    pytest.param("{{ 'a'.ljust(999999999) }}", id="ljust"),
    pytest.param("{{ 'a'.rjust(999999999) }}", id="rjust"),
    pytest.param("{{ ('a' * 900000).translate({97: 'b' * 1000}) }}", id="translate"),
    pytest.param(
        "{% set x %}{% for i in range(100000) %}" + "y" * 100000 + "{% endfor %}{% endset %}{{ x | length }}",
        id="set-block-of-loop-text",
    ),
    pytest.param(
        "{% filter upper %}{% for i in range(100000) %}{% for j in range(100000) %}x{% endfor %}"
        "{% endfor %}{% endfilter %}",
        id="filter-block",
    ),
    pytest.param(
        "{% for i in range(100000) %}{{ range(100000) | list | batch(2) | map('list') | list }}{% endfor %}",
        id="batch-map-list",
    ),
    pytest.param(
        "{% for i in range(100000) %}{{ range(100000) | sort | first }}{% endfor %}",
        id="sort-in-loop",
    ),
    pytest.param("{{ ('a' * 999999) | sort | first }}", id="sort-long-string"),
    pytest.param("{{ ('a' * 999999) | select | list | length }}", id="select-long-string"),
    pytest.param(
        "{% for i in range(100) %}{{ ('ab' * 400000) | unique | list | length }}{% endfor %}",
        id="unique-in-loop",
    ),
]


class TestBombs:
    @pytest.mark.parametrize("template", BOMBS)
    def test_refused_in_bounded_memory(self, template: str) -> None:
        content = text_content(template, VariableSpec("n", type="integer"))
        tracemalloc.start()
        try:
            with pytest.raises(RenderError) as info:
                Renderer().render(content, {"n": 100000}, prompt="p", version=1, variant="m")
            peak = tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()
        message = str(info.value)
        assert message.startswith("template: ") and "\n" not in message, message
        assert peak < 200_000_000, f"{peak} bytes"

    @pytest.mark.parametrize(
        ("template", "message"),
        [
            pytest.param(
                "{% for i in range(100000) %}{% for j in range(100000) %}{% endfor %}{% endfor %}",
                "nested loops run more than",
                id="nested-range",
            ),
            pytest.param("{{ '%*s' % (999999999, 'a') }}", "longer than", id="percent-star"),
            pytest.param("{{ '%999999999s' | format('a') }}", "'format' filter", id="format"),
            pytest.param("{{ 'x' | center(999999999) }}", "argument is larger", id="center"),
            pytest.param("{{ 'a'.ljust(999999999) }}", "argument is larger", id="ljust"),
            pytest.param("{{ '{:>999999999}'.format('a') }}", "str.format()", id="str-format"),
            pytest.param("{{ 'ab' * 999999 }}", "longer than", id="repeat"),
            pytest.param("{{ range(1000000) | list }}", "of more than 100000 items", id="range"),
            pytest.param("{{ '\\t\\t'.expandtabs(999999) }}", "str.expandtabs()", id="tabs"),
            pytest.param(
                "{% for i in 'xxxxxxxxxx' %}{% for j in range(1000) %}{% for k in range(1000) %}"
                "{% endfor %}{% endfor %}{% endfor %}",
                "nested loops run more than",
                id="loop-product",
            ),
            pytest.param("{{ range(10**9) | list }}", "an argument is larger", id="range-power"),
            pytest.param("{{ 'ab' * (1000 * 1000) }}", "longer than", id="repeat-product"),
            pytest.param(
                "{% macro f(n) %}{{ f(n) }}{% endmacro %}{{ f(1) }}",
                "macro 'f' calls itself: it would render until stopped",
                id="macro-recursion",
            ),
            pytest.param(
                "{% macro f(n) %}{% if n %}{{ f(n - 1) }}{% endif %}{% endmacro %}{{ f(3) }}",
                "macro 'f' calls itself",
                id="macro-recursion-with-a-base-case",
            ),
            pytest.param(
                "{% macro a() %}{{ b() }}{% endmacro %}{% macro b() %}{{ c() }}{% endmacro %}"
                "{% macro c() %}{{ a() }}{% endmacro %}{{ a() }}",
                "macro 'a' calls itself through 'b', 'c'",
                id="macro-cycle",
            ),
            pytest.param(
                "{% macro m() %}{% call m() %}x{% endcall %}{% endmacro %}{{ m() }}",
                "macro 'm' calls itself",
                id="macro-call-block",
            ),
        ],
    )
    def test_literal_bombs_are_refused_before_rendering(self, template: str, message: str) -> None:
        with pytest.raises(TemplateSyntaxProblem, match=message) as info:
            template_names("ok\n" + template)
        assert info.value.lineno == 2

    def test_macros_that_do_not_call_themselves_pass(self) -> None:
        ok = (
            "{% macro item(x) %}- {{ x }}{% endmacro %}"
            "{% macro list(xs, item) %}{% for x in xs %}{{ item(x) }}{% endfor %}{% endmacro %}"
            "{% macro wrap() %}[{{ caller() }}]{% endmacro %}"
            "{% call wrap() %}{{ list(items, item) }}{% endcall %}"
        )
        assert template_names(ok) == {"items"}
        content = text_content(ok, VariableSpec("items", type="list"))
        out = Renderer().render(content, {"items": ["a", "b"]}, prompt="p", version=1, variant="m")
        assert out.text == "[- a- b]"

    def test_work_budget(self) -> None:
        template = "{% for i in range(n) %}{% for j in range(n) %}{% endfor %}{% endfor %}"
        content = text_content(template, VariableSpec("n", type="integer"))
        with pytest.raises(RenderError, match=f"more than {RENDER_WORK_BUDGET} steps"):
            Renderer(time_budget=3600).render(content, {"n": 2000}, prompt="p", version=1, variant="m")

    def test_time_budget(self) -> None:
        content = text_content("{% for i in range(3) %}{{ i }}{% endfor %}")
        with pytest.raises(RenderError, match="takes longer than 0 s to render"):
            Renderer(time_budget=0).render(content, {}, prompt="p", version=1, variant="m")

    def test_budget_is_per_render(self) -> None:
        renderer = Renderer(time_budget=3600)
        template = "{% for i in range(n) %}{% for j in range(n) %}.{% endfor %}{% endfor %}"
        content = text_content(template, VariableSpec("n", type="integer"))
        for _ in range(3):  # each render spends 360k of the budget: it must not accumulate
            out = renderer.render(content, {"n": 600}, prompt="p", version=1, variant="m")
            assert out.text == "." * 360_000

    @pytest.mark.parametrize(
        ("template", "expected"),
        [
            pytest.param("{{ '%5.2f|%-4s|%03d' % (3.14159, 'a', 7) }}", " 3.14|a   |007", id="pct"),
            pytest.param("{{ '%(a)s-%(b)s' % {'a': 1, 'b': 2} }}", "1-2", id="pct-named"),
            pytest.param("{{ '%s and %s' | format('a', 'b') }}", "a and b", id="format"),
            pytest.param("{{ '{:>4}|{:.2f}'.format('a', 2.5) }}", "   a|2.50", id="str-format"),
            pytest.param("{{ '{x}'.format_map({'x': 1}) }}", "1", id="format-map"),
            pytest.param("{{ 'a\\nb' | indent(2, first=True) }}", "  a\n  b", id="indent"),
            pytest.param("{{ 'ab cd' | wordwrap(2) }}", "ab\ncd", id="wordwrap"),
            pytest.param("{{ [1, 2] | join(', ') }}", "1, 2", id="join"),
            pytest.param("{{ ', '.join(['a', 'b']) }}", "a, b", id="str-join"),
            pytest.param("{{ 'a' ~ 1 ~ none }}", "a1None", id="tilde"),
            pytest.param("{{ [1] + [2] }}{{ 'a' + 'b' }}{{ 7 % 3 }}", "[1, 2]ab1", id="plus-mod"),
            pytest.param("{{ {'a': [1]} | tojson(indent=1) }}", '{\n "a": [\n  1\n ]\n}', id="json"),
            pytest.param("{{ 'x' | center(5) }}{{ 'a'.zfill(3) }}", "  x  00a", id="pad"),
            pytest.param("{{ 'a-b'.replace('-', '+') }}", "a+b", id="replace"),
            pytest.param(
                "{% for i in range(3) %}{{ loop.cycle('a', 'b') }}{% else %}none{% endfor %}",
                "aba",
                id="loop",
            ),
            pytest.param(
                "{% macro m(x) %}<{{ x }}{{ caller() }}>{% endmacro %}{% call m(1) %}c{% endcall %}",
                "<1c>",
                id="call-block",
            ),
            pytest.param("{% set x %}a{{ 1 }}{% endset %}{{ x }}", "a1", id="set-block"),
        ],
    )
    def test_ordinary_templates_still_render(self, template: str, expected: str) -> None:
        assert render_text(template) == expected

    def test_compiled_template_cache_is_bounded_by_size(self, monkeypatch: pytest.MonkeyPatch) -> None:
        monkeypatch.setattr(rendering.renderer, "_CACHE_CHARS", 2_000)
        renderer = Renderer()
        for i in range(10):
            content = text_content(f"{i}{{{{ x }}}}" + "." * 900)
            assert renderer.render(content, {"x": "v"}, prompt="p", version=1, variant="m").text
        assert len(renderer._cache) == 2
        assert renderer._cache_chars <= 2_000

    def test_large_sources_are_not_memoised(self) -> None:
        before = rendering.templates._cached_template_names.cache_info().currsize
        assert template_names("{{ big }}" + "." * 100_000) == {"big"}
        assert rendering.templates._cached_template_names.cache_info().currsize == before


DEEP = [
    pytest.param("{{ " + "(" * 5000 + "1" + ")" * 5000 + " }}", "nested deeper", id="parens"),
    pytest.param("{% if x %}" * 3000 + "{% endif %}" * 3000, "nested deeper", id="ifs"),
    pytest.param("{{ " + "[" * 3000 + "]" * 3000 + " }}", "nested deeper", id="brackets"),
    pytest.param("{{ " + "not " * 5000 + "x }}", "nested deeper", id="not-chain"),
    pytest.param("{{ " + "-" * 5000 + "1 }}", "nested deeper", id="minus-chain"),
    pytest.param("{{ " + " + ".join(["1"] * 5000) + " }}", "expression nested", id="plus-chain"),
    pytest.param("{{ x" + ".a" * 5000 + " }}", "expression nested", id="attribute-chain"),
    pytest.param("{{ x" + " | upper" * 5000 + " }}", "expression nested", id="filter-chain"),
    pytest.param("{{ x" + "[0]" * 5000 + " }}", "expression nested", id="index-chain"),
    pytest.param("{% for i in x %}" * 25 + "{% endfor %}" * 25, "loops nested deeper", id="loops"),
    pytest.param("{% set y %}" * 3000 + "{% endset %}" * 3000, "nested deeper", id="set-blocks"),
    pytest.param("{% macro m() %}" * 3000 + "{% endmacro %}" * 3000, "nested deeper", id="macros"),
]


class TestNesting:
    @pytest.mark.parametrize(("template", "message"), DEEP)
    def test_deep_nesting_is_a_syntax_problem_with_a_line(self, template: str, message: str) -> None:
        with pytest.raises(TemplateSyntaxProblem, match=message) as info:
            template_names("line 1\nline 2\n" + template)
        assert info.value.lineno == 3
        with pytest.raises(RenderError, match=f"^template: .*{message}"):
            render_text("line 1\nline 2\n" + template)

    def test_nesting_at_the_limit_renders(self) -> None:
        depth = MAX_NESTING // 2
        template = "{% if x %}" * depth + "{{ " + "(" * depth + "1" + ")" * depth + " }}"
        template += "{% endif %}" * depth
        assert template_names(template) == {"x"}
        assert render_text(template, {"x": "y"}) == "1"

    def test_long_flat_expression_renders(self) -> None:
        chain = " + ".join(["1"] * (MAX_AST_DEPTH // 2))
        assert render_text("{{ " + chain + " }}") == str(MAX_AST_DEPTH // 2)

    def test_deeply_nested_value_is_a_variable_error(self) -> None:
        deep: Any = []
        for _ in range(100_000):
            deep = [deep]
        content = PromptContent(template="{{ v }}", variables=(spec(type="list"),))
        with pytest.raises(VariableError, match=f"nested deeper than {MAX_VALUE_DEPTH}"):
            Renderer().render(content, {"v": deep}, prompt="p", version=1, variant="m")

    def test_value_at_the_depth_limit_renders(self) -> None:
        value: Any = []
        for _ in range(MAX_VALUE_DEPTH - 1):
            value = [value]
        content = PromptContent(template="{{ v | length }}", variables=(spec(type="list"),))
        out = Renderer().render(content, {"v": value}, prompt="p", version=1, variant="m")
        assert out.text == "1"


def spec(**kwargs: Any) -> VariableSpec:
    return VariableSpec(**{"name": "v", **kwargs})


class TestCheckVariables:
    def test_defaults_are_filled_and_copied(self) -> None:
        content = PromptContent(template="", variables=(spec(type="list", default=[1], has_default=True),))
        values = check_variables(content, {})
        values["v"].append(2)
        assert check_variables(content, {}) == {"v": [1]}

    @pytest.mark.parametrize(
        "default",
        [
            pytest.param([[1]], id="nested-list"),
            pytest.param({"a": {"b": 1}}, id="nested-object"),
            pytest.param([{"a": 1}], id="list-of-objects"),
            pytest.param({"a": 1}, id="flat-object"),
        ],
    )
    def test_nested_defaults_are_copied_deeply(self, default: Any) -> None:
        kind = "list" if isinstance(default, list) else "object"
        content = PromptContent(template="", variables=(spec(type=kind, default=default, has_default=True),))
        check = rendering.VariableCheck(content.variables)
        first = check({})["v"]
        inner = first[0] if isinstance(first, list) else first["a"]
        if isinstance(inner, list | dict):
            inner.clear()
        else:
            first.clear()
        assert check({}) == {"v": default} == check_variables(content, {})

    def test_optional_without_default_is_none(self) -> None:
        assert check_variables(PromptContent(template="", variables=(spec(),)), {}) == {"v": None}

    def test_missing_required(self) -> None:
        content = PromptContent(template="", variables=(spec(required=True),))
        with pytest.raises(VariableError, match="variable 'v' is required") as info:
            check_variables(content, {})
        assert info.value.field == "v"

    def test_explicit_null_for_required_is_missing(self) -> None:
        content = PromptContent(template="", variables=(spec(required=True),))
        with pytest.raises(VariableError, match="required"):
            check_variables(content, {"v": None})

    def test_undeclared(self) -> None:
        content = PromptContent(template="", variables=(spec(),))
        with pytest.raises(VariableError, match=r"'extra' is not declared.*\(declared: v\)") as info:
            check_variables(content, {"v": "a", "extra": 1})
        assert info.value.field == "extra"

    def test_not_a_mapping(self) -> None:
        with pytest.raises(VariableError, match="must be an object"):
            check_variables(PromptContent(template=""), ["a"])  # type: ignore[arg-type]

    @pytest.mark.parametrize(
        ("kind", "value", "expected"),
        [
            pytest.param("integer", True, "must be an integer, got boolean", id="bool-not-int"),
            pytest.param("integer", 1.5, "must be an integer, got number", id="float-not-int"),
            pytest.param("integer", "3", "must be an integer, got string", id="str-not-int"),
            pytest.param("number", False, "must be a number, got boolean", id="bool-not-number"),
            pytest.param("number", math.nan, "must be a finite number", id="nan"),
            pytest.param("number", math.inf, "must be a finite number", id="inf"),
            pytest.param("string", 3, "must be a string, got integer", id="int-not-str"),
            pytest.param("boolean", 1, "must be a boolean, got integer", id="int-not-bool"),
            pytest.param("list", "a,b", "must be a list, got string", id="str-not-list"),
            pytest.param("object", [1], "must be an object, got list", id="list-not-object"),
        ],
    )
    def test_wrong_type(self, kind: str, value: Any, expected: str) -> None:
        content = PromptContent(template="", variables=(spec(type=kind),))
        with pytest.raises(VariableError, match=f"^variable 'v' {expected}"):
            check_variables(content, {"v": value})

    @pytest.mark.parametrize(
        ("kind", "value"),
        [
            pytest.param("integer", 3, id="int"),
            pytest.param("number", 3, id="int-as-number"),
            pytest.param("number", 2.5, id="float"),
            pytest.param("boolean", False, id="bool"),
            pytest.param("list", ["a", 1], id="list"),
            pytest.param("object", {"a": [1]}, id="object"),
            pytest.param("string", "", id="empty-string"),
        ],
    )
    def test_right_type(self, kind: str, value: Any) -> None:
        content = PromptContent(template="", variables=(spec(type=kind),))
        assert check_variables(content, {"v": value}) == {"v": value}

    def test_enum(self) -> None:
        content = PromptContent(template="", variables=(spec(enum=("formal", "casual")),))
        assert check_variables(content, {"v": "casual"}) == {"v": "casual"}
        with pytest.raises(VariableError, match="must be one of 'formal', 'casual', got 'rude'"):
            check_variables(content, {"v": "rude"})

    def test_enum_does_not_confuse_bool_and_int(self) -> None:
        assert value_problem(spec(type="number", enum=(1, 2)), True) is not None
        assert value_problem(spec(type="number", enum=(1, 2)), 1.0) is None
        assert value_problem(spec(type="boolean", enum=(True,)), True) is None

    @pytest.mark.parametrize(
        ("kind", "ok", "too_long", "unit"),
        [
            pytest.param("string", "abc", "abcd", "characters", id="string"),
            pytest.param("list", [1, 2, 3], [1, 2, 3, 4], "items", id="list"),
        ],
    )
    def test_max_length(self, kind: str, ok: Any, too_long: Any, unit: str) -> None:
        content = PromptContent(template="", variables=(spec(type=kind, max_length=3),))
        assert check_variables(content, {"v": ok}) == {"v": ok}
        with pytest.raises(VariableError, match=f"longer than max_length 3 \\(4 {unit}\\)"):
            check_variables(content, {"v": too_long})

    def test_render_checks_variables(self) -> None:
        with pytest.raises(VariableError, match="'kind' is required"):
            Renderer().render(CHAT, {}, prompt="p", version=1, variant="main")


class TestTemplateNames:
    def test_names(self) -> None:
        source = (
            "{% set greeting = 'hi' %}{{ greeting }} {{ user.name }}"
            "{% for item in items %}{{ loop.index }}{{ item }}{% endfor %}"
            "{{ range(3) | list }}{{ tone | default('x') }}{% if extra is defined %}{% endif %}"
        )
        assert template_names(source) == {"user", "items", "tone", "extra"}

    @pytest.mark.parametrize(
        ("source", "message"),
        [
            pytest.param("{{ x | nosuchfilter }}", "No filter named 'nosuchfilter'", id="filter"),
            pytest.param("{{ x is nosuchtest }}", "No test named", id="test"),
        ],
    )
    def test_unknown_filter_or_test(self, source: str, message: str) -> None:
        with pytest.raises(TemplateSyntaxProblem, match=message):
            template_names(source)
        with pytest.raises(RenderError, match=message):
            render_text(source, {"x": "a"})

    def test_syntax_error_has_line(self) -> None:
        with pytest.raises(TemplateSyntaxProblem) as info:
            template_names("line one\n{% if x %}\nno end")
        assert isinstance(info.value, RenderError)
        assert info.value.lineno == 3
        assert "line 3" in str(info.value)

    @pytest.mark.parametrize(
        "source",
        [
            pytest.param("{% include 'a' %}", id="include"),
            pytest.param("{% extends 'a' %}", id="extends"),
            pytest.param("{% import 'a' as m %}", id="import"),
            pytest.param("{% from 'a' import m %}", id="from-import"),
        ],
    )
    def test_other_templates_are_refused(self, source: str) -> None:
        with pytest.raises(RenderError, match="not supported"):
            template_names(source)


class TestCoerceCliValue:
    @pytest.mark.parametrize(
        ("spec_", "raw", "expected"),
        [
            pytest.param(None, "42", "42", id="undeclared-stays-string"),
            pytest.param(spec(), " 42 ", " 42 ", id="string-verbatim"),
            pytest.param(spec(type="integer"), "42", 42, id="integer"),
            pytest.param(spec(type="integer"), "-7", -7, id="negative-integer"),
            pytest.param(spec(type="number"), "3", 3, id="number-int"),
            pytest.param(spec(type="number"), "2.5", 2.5, id="number-float"),
            pytest.param(spec(type="number"), "1e3", 1000.0, id="number-exponent"),
            pytest.param(spec(type="boolean"), "true", True, id="bool-true"),
            pytest.param(spec(type="boolean"), "No", False, id="bool-no"),
            pytest.param(spec(type="boolean"), "1", True, id="bool-one"),
            pytest.param(spec(type="list"), '["a", 1]', ["a", 1], id="list-json"),
            pytest.param(spec(type="list"), "a, b,c", ["a", "b", "c"], id="list-commas"),
            pytest.param(spec(type="list"), "", [], id="list-empty"),
            pytest.param(spec(type="object"), '{"a": [1]}', {"a": [1]}, id="object-json"),
        ],
    )
    def test_parsed(self, spec_: VariableSpec | None, raw: str, expected: Any) -> None:
        value = coerce_cli_value(spec_, raw)
        assert value == expected
        assert type(value) is type(expected)

    @pytest.mark.parametrize(
        ("spec_", "raw", "message"),
        [
            pytest.param(spec(type="integer"), "4.5", "is not an integer", id="integer-float"),
            pytest.param(spec(type="integer"), "x", "is not an integer", id="integer-word"),
            pytest.param(spec(type="number"), "nan", "is not a number", id="number-nan"),
            pytest.param(spec(type="number"), "inf", "is not a number", id="number-inf"),
            pytest.param(spec(type="boolean"), "maybe", "is not a boolean", id="bool-word"),
            pytest.param(spec(type="list"), "[1,", "invalid JSON", id="list-bad-json"),
            pytest.param(spec(type="object"), "[1]", "expected a JSON object", id="object-list"),
            pytest.param(spec(type="object"), "a=1", "invalid JSON", id="object-not-json"),
            pytest.param(spec(type="list"), "[" * 100_000, "JSON", id="list-too-deep"),
        ],
    )
    def test_refused(self, spec_: VariableSpec, raw: str, message: str) -> None:
        with pytest.raises(VariableError, match=message) as info:
            coerce_cli_value(spec_, raw)
        assert info.value.field == "v"


@pytest.mark.parametrize(
    "template, loops",
    [
        ("plain text", False),
        ("Hello {{ name }}", False),
        ("{{ name|upper }} {% if name %}x{% endif %}", False),
        ("{% for x in xs %}{{ x }}{% endfor %}", True),
        ("{{ xs|join(', ') }}", True),
        ("{{ xs|sort|first }}", True),
        ("{{ range(3)|list }}", True),
        ("{{ name.upper() }}", True),
        ("{% macro m() %}x{% endmacro %}{{ m() }}", True),
    ],
)
def test_the_renderer_says_which_templates_can_loop(template, loops):
    content = PromptContent.from_dict({"template": template})
    assert Renderer().may_loop(content) is loops
    messages = PromptContent.from_dict(
        {"messages": [{"role": "system", "content": "plain"}, {"role": "user", "content": template}]}
    )
    assert Renderer().may_loop(messages) is loops


# Templates of text and `{{ name }}` only render without Jinja (`rendering.renderer._substitute`); each must
# give what the compiled template gives, output or error.
SUBSTITUTIONS = [
    pytest.param("{{ x }}", id="name"),
    pytest.param("a {{ x }} b {{ x }}\n", id="text-and-names"),
    pytest.param("  {{- x -}}  \n{{ x }}", id="whitespace-control"),
    pytest.param("{# note #}{{ x }}{% raw %}{{ y }}{% endraw %}", id="comment-and-raw"),
    pytest.param("line\r\n{{ x }}\r", id="carriage-returns"),
]
SUBSTITUTED_VALUES = [
    pytest.param("Ada", id="string"),
    pytest.param(None, id="none"),
    pytest.param(3, id="int"),
    pytest.param(2.5, id="float"),
    pytest.param(True, id="bool"),
    pytest.param([1, "a", None], id="list"),
    pytest.param({"k": [1], "é": "{{ 7*7 }}"}, id="object"),
    pytest.param("x" * (MAX_OUTPUT_CHARS // 2 + 1), id="over-the-cap-twice"),
    pytest.param("x" * (MAX_OUTPUT_CHARS + 1), id="over-the-cap"),
    pytest.param(["x" * 1000] * 1001, id="container-over-the-cap"),
]


def outcome(render: Any) -> Any:
    try:
        return render()
    except RenderError as exc:
        return type(exc), exc.message


@pytest.mark.parametrize("template", SUBSTITUTIONS)
@pytest.mark.parametrize("value", SUBSTITUTED_VALUES)
def test_substitutions_render_as_jinja_does(template: str, value: Any) -> None:
    renderer = Renderer()
    content = text_content(template, VariableSpec("x", type="string"))
    (part,) = renderer.prepare(content)._parts
    assert part.pieces is not None  # the substitution is what is compared
    compiled = renderer._compiled(template)
    context = {"x": value}
    budget = rendering.budget._BUDGET.set(rendering.budget._Budget(60))
    try:
        jinja = outcome(
            lambda: rendering.renderer._generate(
                compiled.template, {**rendering.renderer._GLOBALS, **context}, MAX_OUTPUT_CHARS
            )
        )
        substituted = outcome(lambda: rendering.renderer._substitute(part.pieces, context, MAX_OUTPUT_CHARS))
    finally:
        rendering.budget._BUDGET.reset(budget)
    assert substituted == jinja


@pytest.mark.parametrize(
    "template",
    [
        pytest.param("{{ y }}", id="undeclared-name"),
        pytest.param("{{ range }}", id="global"),
        pytest.param("{{ x.y }}", id="attribute"),
        pytest.param("{{ x | upper }}", id="filter"),
        pytest.param("{{ 'x' }}", id="constant"),
        pytest.param("{% if x %}{{ x }}{% endif %}", id="block"),
    ],
)
def test_only_text_and_declared_names_are_substituted(template: str) -> None:
    (part,) = Renderer().prepare(text_content(template))._parts
    assert part.pieces is None and part.template is not None


def test_a_variable_named_like_a_jinja_special_name_renders_as_jinja_renders_it():
    # `self` at the top level is Jinja's template reference, whatever the context holds.
    content = text_content("{{ self }}", VariableSpec("self"))
    (part,) = Renderer().prepare(content)._parts
    assert part.pieces is None
    out = Renderer().render(content, {"self": "x"}, prompt="p", version=1, variant="m")
    assert out.text == "<TemplateReference None>"


class TestPreparedContent:
    def test_renders_like_the_renderer_every_time(self) -> None:
        renderer = Renderer()
        prepared = renderer.prepare(CHAT)
        for kind in ("fruit", "cars", "{{ 7*7 }}"):
            out = prepared.render({"kind": kind}, prompt="p", version=1, variant="main")
            assert out == renderer.render(CHAT, {"kind": kind}, prompt="p", version=1, variant="main")
            assert out.messages is not None and out.messages[0].content == f"You sort {kind}."

    def test_each_render_has_its_own_model_and_defaults(self) -> None:
        prepared = Renderer().prepare(CHAT)
        out = prepared.render({"kind": "x"}, prompt="p", version=1, variant="main")
        out.model["extra"]["stop"].append("X")
        out.model["name"] = "other"
        again = prepared.render({"kind": "x"}, prompt="p", version=1, variant="main")
        assert (
            again.model
            == CHAT.model
            == {"name": "gpt-4o-mini", "temperature": 0.1, "extra": {"stop": ["\n"]}}
        )

    def test_variables_are_checked_before_a_broken_message_is_reached(self) -> None:
        content = PromptContent(
            messages=(Message("system", "ok {{ x }}"), Message("user", "{{ x }")),
            variables=(VariableSpec("x", required=True),),
        )
        prepared = Renderer().prepare(content)
        with pytest.raises(VariableError, match="'x' is required"):
            prepared.render({}, prompt="p", version=1, variant="main")
        for _ in range(2):  # the compile error is kept and reported at every render
            with pytest.raises(
                RenderError, match=r"^messages\[1\]\.content: template syntax error at line 1"
            ):
                prepared.render({"x": "a"}, prompt="p", version=1, variant="main")

    def test_literal_message_over_the_cap(self) -> None:
        big = "x" * (MAX_OUTPUT_CHARS // 2 + 1)
        content = PromptContent(messages=(Message("system", big), Message("user", big)))
        with pytest.raises(RenderError, match=rf"^messages\[1\]\.content: .*exceeds {MAX_OUTPUT_CHARS}"):
            Renderer().prepare(content).render({}, prompt="p", version=1, variant="main")
