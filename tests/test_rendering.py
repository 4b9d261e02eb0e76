"""The sandboxed renderer, variable checks, template name discovery and CLI value coercion."""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from promptops.domain import Message, PromptContent, VariableSpec
from promptops.errors import RenderError, VariableError
from promptops.rendering import (
    MAX_OUTPUT_CHARS,
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
            assert renderer.render(
                content, {"x": "v"}, prompt="p", version=1, variant="m"
            ).text == (f"{i}:v")

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


def spec(**kwargs: Any) -> VariableSpec:
    return VariableSpec(**{"name": "v", **kwargs})


class TestCheckVariables:
    def test_defaults_are_filled_and_copied(self) -> None:
        content = PromptContent(
            template="", variables=(spec(type="list", default=[1], has_default=True),)
        )
        values = check_variables(content, {})
        values["v"].append(2)
        assert check_variables(content, {}) == {"v": [1]}

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
        with pytest.raises(
            VariableError, match=r"'extra' is not declared.*\(declared: v\)"
        ) as info:
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
