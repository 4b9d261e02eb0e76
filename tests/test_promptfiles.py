"""Prompt files: the format, every validation problem with its line, hostile input, discovery."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from promptops import yamlnodes
from promptops.domain import Message, Policy, PromptDefinition
from promptops.errors import FileProblem, InvalidPromptFile
from promptops.promptfiles import (
    MAX_DEPTH,
    MAX_FILE_BYTES,
    discover,
    example_prompt_text,
    load_prompt_file,
    load_prompt_files,
    parse_prompt_text,
)
from promptops.rendering import Renderer

EXAMPLES = Path(__file__).resolve().parent.parent / "prompts"

MINIMAL = """\
name: greet
variables:
  who: {type: string, required: true}
messages:
  - {role: user, content: "Hello {{ who }}"}
"""


def case(id_: str, line: int, text: str | bytes, message: str) -> Any:
    return pytest.param(text, line, message, id=id_)


def parse(text: str) -> PromptDefinition:
    return parse_prompt_text(textwrap.dedent(text), path="p.yaml")


def problems(text: str | bytes) -> list[FileProblem]:
    source = textwrap.dedent(text) if isinstance(text, str) else text
    with pytest.raises(InvalidPromptFile) as info:
        parse_prompt_text(source, path="p.yaml")
    return info.value.problems


def only_problem(text: str | bytes) -> FileProblem:
    found = problems(text)
    assert len(found) == 1, "\n".join(map(str, found))
    return found[0]


class TestValid:
    def test_minimal(self) -> None:
        d = parse_prompt_text(MINIMAL, path="prompts/greet.yaml")
        assert d.name == "greet"
        assert d.path == "prompts/greet.yaml"
        assert d.line == 1
        assert d.content.messages == (Message("user", "Hello {{ who }}"),)
        assert d.content.template is None
        assert d.content.model == {}
        assert d.variants == {} and d.experiment is None
        assert d.description == "" and d.tags == ()

    def test_full(self) -> None:
        d = parse(
            """\
            # a comment first
            name: triage.v2_x
            description: Route things.
            tags: [support, classification]
            model: {name: gpt-4o-mini, temperature: 0.1, stop: ["\\n"], extra: {a: null}}
            variables:
              message: {type: string, required: true, max_length: 40, description: The text.}
              categories: {type: list, default: [a, b]}
              tone: {enum: [formal, casual], default: formal}
              n: integer
              note:
            template: "{{ message }} {{ categories | join(',') }} {{ tone }} {{ n }} {{ note }}"
            """
        )
        assert d.name == "triage.v2_x" and d.line == 2
        assert d.tags == ("support", "classification")
        assert d.content.model == {
            "name": "gpt-4o-mini",
            "temperature": 0.1,
            "stop": ["\n"],
            "extra": {"a": None},
        }
        names = [v.name for v in d.content.variables]
        assert names == ["message", "categories", "tone", "n", "note"]
        message, categories, tone, n, note = d.content.variables
        assert message.required and message.max_length == 40 and message.description == "The text."
        assert categories.type == "list" and categories.has_default and categories.default == ["a", "b"]
        assert tone.type == "string" and tone.enum == ("formal", "casual") and tone.default == "formal"
        assert n.type == "integer" and not n.has_default
        assert note.type == "string" and not note.required

    def test_variants_inherit_and_merge_model(self) -> None:
        d = parse(
            """\
            name: p
            model: {name: small, temperature: 0.1, seed: 7}
            variables: {x: string}
            messages: [{role: user, content: "{{ x }}"}]
            variants:
              big: {model: {name: large, seed: null}}
              worded:
                description: Other words.
                messages: [{role: system, content: "Be brief."}, {role: user, content: "{{ x }}"}]
            """
        )
        big, worded = d.variants["big"], d.variants["worded"]
        assert big.messages == d.content.messages
        assert big.model == {"name": "large", "temperature": 0.1}
        assert worded.model == d.content.model
        assert worded.messages is not None and worded.messages[0] == Message("system", "Be brief.")
        assert big.variables == worded.variables == d.content.variables
        assert d.variant_content("main") is d.content
        assert len({d.content.content_hash(), big.content_hash(), worded.content_hash()}) == 3

    def test_experiment_defaults(self) -> None:
        d = parse(MINIMAL + "variants: {b: {model: {t: 1}}}\nexperiment: {arms: [main, b]}\n")
        spec = d.experiment
        assert spec is not None
        assert spec.arms == ("main", "b")
        assert (spec.metric, spec.reward, spec.strategy, spec.status) == (
            "reward",
            "binary",
            "thompson",
            "running",
        )
        assert spec.weights is None and spec.auto_promote is None and spec.policy == Policy()

    def test_experiment_full(self) -> None:
        d = parse(
            MINIMAL
            + """\
variants: {b: {model: {t: 1}}, c: {model: {t: 2}}}
experiment:
  metric: csat.score
  reward: continuous
  arms: [b, main, c]
  strategy: fixed
  weights: [0.5, 0.25, 0.25]
  auto_promote: false
  status: draft
  policy: {min_hours: 0, floor: 0.2, draws: 2000, allocation: thompson, missing_feedback: zero}
"""
        )
        spec = d.experiment
        assert spec is not None
        assert spec.arms == ("b", "main", "c") and spec.weights == (0.5, 0.25, 0.25)
        assert (spec.metric, spec.reward, spec.strategy, spec.status, spec.auto_promote) == (
            "csat.score",
            "continuous",
            "fixed",
            "draft",
            False,
        )
        assert spec.policy.overrides() == {
            "min_hours": 0.0,
            "floor": 0.2,
            "draws": 2000,
            "allocation": "thompson",
            "missing_feedback": "zero",
        }
        assert isinstance(spec.policy.min_hours, float)

    def test_bytes_with_bom(self) -> None:
        assert parse_prompt_text(b"\xef\xbb\xbf" + MINIMAL.encode(), path="p.yaml").name == "greet"

    def test_example_prompt_text(self) -> None:
        d = parse_prompt_text(example_prompt_text(), path="example.yaml")
        assert d.variants and d.experiment is not None
        assert set(d.experiment.arms) == {"main", *d.variants}

    def test_example_prompts(self) -> None:
        defs = {d.name: d for d in load_prompt_files([EXAMPLES])}
        assert {"support-triage", "sentiment", "grounded-answer"} <= set(defs)
        triage, sentiment, grounded = (
            defs["support-triage"],
            defs["sentiment"],
            defs["grounded-answer"],
        )
        assert triage.experiment is not None and triage.experiment.metric == "resolved"
        assert triage.experiment.reward == "binary" and triage.experiment.arms == (
            "main",
            "few-shot",
        )
        assert sentiment.experiment is not None and sentiment.experiment.reward == "continuous"
        assert grounded.experiment is None

    def test_example_prompts_render(self) -> None:
        defs = {d.name: d for d in load_prompt_files([EXAMPLES])}
        renderer = Renderer()
        grounded = defs["grounded-answer"]
        context = [{"title": "Warranty", "url": "https://x.test/w", "text": "Two years."}, "Plain."]
        out = renderer.render(
            grounded.content,
            {"question": "How long?", "context": context},
            prompt=grounded.name,
            version=1,
            variant="main",
        )
        assert out.text is not None
        assert "[1] Warranty <https://x.test/w>\nTwo years." in out.text and "[2] Plain." in out.text
        triage = defs["support-triage"]
        for variant in ("main", "few-shot"):
            out = renderer.render(
                triage.variant_content(variant),
                {"message": "{{ 7*7 }}"},
                prompt=triage.name,
                version=1,
                variant=variant,
            )
            assert out.messages is not None and "{{ 7*7 }}" in out.messages[-1].content


# fmt: off
T = 'name: p\ntemplate: x\n'  # the smallest valid body
V = T + 'variables:\n  m: '  # one variable, on line 4
E = T + 'variants: {b: {template: y}}\nexperiment:\n  arms: [main, b]\n'  # lines 3-6

INVALID = [
    # id, line, file text, message fragment
    case('unknown-key', 2, 'name: p\nmodle: {}\ntemplate: x\n',
         "unknown key 'modle' (did you mean 'model'?)"),
    case('missing-name', 1, 'description: d\ntemplate: x\n', "missing required key 'name'"),
    case('bad-name', 1, 'name: Big Name\ntemplate: x\n', "name: 'Big Name' is not a valid name"),
    case('name-too-long', 1, 'name: ' + 'a' * 65 + '\ntemplate: x\n', 'is not a valid name'),
    case('name-not-string', 1, 'name: 12\ntemplate: x\n', 'name: must be a string, got integer'),
    case('no-body', 1, 'name: p\n', 'one of messages or template is required'),
    case('both-bodies', 3, 'name: p\nmessages: [{role: user, content: a}]\ntemplate: x\n',
         'use either messages or template'),
    case('description-type', 3, T + 'description: [1]\n',
         'description: must be a string, got list'),
    case('tags-not-list', 3, T + 'tags: a\n', 'tags: must be a list'),
    case('tag-not-string', 3, T + 'tags: [a, 1]\n', 'tags[1]: must be a string'),
    case('tag-duplicate', 3, T + 'tags: [a, a]\n', "tags[1]: duplicate 'a'"),
    case('model-not-mapping', 3, T + 'model: gpt-4\n', "model: must be a mapping, got 'gpt-4'"),
    case('model-date', 3, T + 'model: {when: 2024-01-01}\n', 'model: must be plain data, got date'),
    case('model-nan', 3, T + 'model: {t: .nan}\n', 'model: must not contain .nan'),
    case('messages-empty', 2, 'name: p\nmessages: []\n', 'messages: must be a non-empty list'),
    case('messages-not-list', 2, 'name: p\nmessages: hello\n',
         'messages: must be a non-empty list'),
    case('message-not-mapping', 3, 'name: p\nmessages:\n  - hello\n',
         "messages[0]: must be a mapping, got 'hello'"),
    case('message-no-content', 3, 'name: p\nmessages:\n  - {role: user}\n',
         "messages[0]: missing required key 'content'"),
    case('message-role', 3, 'name: p\nmessages:\n  - {role: bot, content: a}\n',
         "messages[0].role: must be one of 'system', 'user', 'assistant', 'tool', got 'bot'"),
    case('message-content-type', 3, 'name: p\nmessages:\n  - {role: user, content: 5}\n',
         'messages[0].content: must be a string, got integer'),
    case('message-unknown-key', 3, 'name: p\nmessages:\n  - {role: user, content: a, name: x}\n',
         "messages[0]: unknown key 'name'"),
    case('undeclared-in-message', 4,
         'name: p\n' 'messages:\n' '  - {role: user, content: a}\n'
         "  - {role: user, content: '{{ foo }}'}\n",
         "messages[1].content uses undeclared variable 'foo'"),
    case('undeclared-in-template', 2,
         'name: p\n' "template: '{{ a }}{{ b }}'\n" 'variables: {a: string}\n',
         "template uses undeclared variable 'b'"),
    case('syntax-error-block-line', 4, 'name: p\ntemplate: |\n  one\n  two {{ x }\n',
         "template: template syntax error: unexpected '}'"),
    case('syntax-error-inline', 2, "name: p\ntemplate: '{% if %}'\n",
         'template: template syntax error'),
    case('include', 2, 'name: p\ntemplate: "{% include \'x\' %}"\n',
         '{% include %} is not supported'),
    case('variables-not-mapping', 3, T + 'variables: [a]\n',
         'variables: must be a mapping, got a list'),
    case('variable-name-digit', 4, T + 'variables:\n  2x: string\n',
         "'2x' is not a valid variable name"),
    case('variable-name-keyword', 4, T + 'variables:\n  for: string\n',
         "'for' is not a valid variable name"),
    case('variable-name-reserved', 4, T + 'variables:\n  loop: string\n',
         "'loop' is not a valid variable name"),
    case('variable-type', 4, V + '{type: strng}\n',
         "variables.m.type: must be one of 'string', 'integer', 'number', 'boolean', 'list'"),
    case('variable-shorthand-type', 4, V + 'texty\n', "variables.m: must be one of 'string'"),
    case('variable-unknown-key', 4, V + '{reqired: true}\n',
         "variables.m: unknown key 'reqired' (did you mean 'required'?)"),
    case('variable-required-type', 4, V + '{required: yes please}\n',
         'variables.m.required: must be a boolean, got string'),
    case('max-length-zero', 4, V + '{max_length: 0}\n',
         'variables.m.max_length: must be at least 1'),
    case('max-length-bool', 4, V + '{max_length: true}\n',
         'variables.m.max_length: must be an integer, got boolean'),
    case('max-length-wrong-type', 4, V + '{type: integer, max_length: 3}\n',
         'max_length: only for strings and lists'),
    case('default-bool-not-int', 4, V + '{type: integer, default: true}\n',
         'variables.m.default: must be an integer, got boolean'),
    case('default-wrong-type', 4, V + "{type: number, default: '1'}\n",
         'variables.m.default: must be a number, got string'),
    case('default-not-in-enum', 4, V + '{enum: [a, b], default: c}\n',
         "variables.m.default: must be one of 'a', 'b', got 'c'"),
    case('default-too-long', 4, V + '{max_length: 2, default: abc}\n',
         'variables.m.default: is longer than max_length 2'),
    case('default-on-required', 4, V + '{required: true, default: a}\n',
         'a required variable cannot have a default'),
    case('default-not-plain', 4, V + '{type: object, default: {when: 2024-01-01}}\n',
         'variables.m.default: must be plain data'),
    case('enum-item-type', 4, V + '{type: integer, enum: [1, x]}\n',
         'variables.m.enum[1]: must be an integer, got string'),
    case('enum-empty', 4, V + '{enum: []}\n', 'variables.m.enum: must be a non-empty list'),
    case('enum-duplicate', 4, V + '{enum: [a, a]}\n', "variables.m.enum[1]: duplicate value 'a'"),
    case('enum-on-list', 4, V + '{type: list, enum: [[1]]}\n',
         'variables.m.enum: only for string, integer, number and boolean'),
    case('variants-not-mapping', 3, T + 'variants: [a]\n',
         'variants: must be a mapping, got a list'),
    case('variant-main', 4, T + 'variants:\n  main: {template: y}\n',
         "variants: 'main' is reserved"),
    case('variant-name', 4, T + 'variants:\n  Big: {template: y}\n',
         "variants: 'Big' is not a valid variant name"),
    case('variant-unknown-key', 4, T + 'variants:\n  b: {template: y, modle: {}}\n',
         "variants.b: unknown key 'modle' (did you mean 'model'?)"),
    case('variant-empty', 4, T + 'variants:\n  b: {}\n',
         'variants.b: must override messages, template or model'),
    case('variant-identical-to-main', 4, T + 'variants:\n  b: {template: x}\n',
         'variants.b: identical to the main prompt'),
    case('variant-identical-to-variant', 5,
         T + 'variants:\n' '  b: {template: y}\n' '  c: {template: y}\n',
         "variants.c: identical to variant 'b'"),
    case('variant-changes-form', 5,
         T + 'variants:\n' '  b:\n' '    messages: [{role: user, content: y}]\n',
         'variants.b.messages: the main prompt uses template'),
    case('variant-undeclared', 5, T + "variants:\n  b:\n    template: '{{ nope }}'\n",
         "variants.b.template uses undeclared variable 'nope'"),
    case('variant-description', 4, T + 'variants:\n  b: {template: y, description: 3}\n',
         'variants.b.description: must be a string'),
    case('experiment-not-mapping', 3, T + 'experiment: yes\n', 'experiment: must be a mapping'),
    case('experiment-no-arms', 3, T + 'experiment: {metric: m}\n',
         "experiment: missing required key 'arms'"),
    case('one-arm', 5, T + 'variants: {b: {template: y}}\nexperiment:\n  arms: [main]\n',
         'experiment.arms: an experiment needs at least two arms, got 1'),
    case('unknown-arm', 5, T + 'variants: {b: {template: y}}\nexperiment:\n  arms: [main, c]\n',
         "experiment.arms[1]: 'c' is not main or a declared variant (known: b, main)"),
    case('too-many-arms', 25,
         T + 'variants:\n' + ''.join(f'  v{i}: {{template: y{i}}}\n' for i in range(1, 21))
         + 'experiment:\n  arms: [main' + ''.join(f', v{i}' for i in range(1, 21)) + ']\n',
         'experiment.arms: an experiment has at most 20 arms, got 21'),
    case('duplicate-arm', 5,
         T + 'variants: {b: {template: y}}\n' 'experiment:\n' '  arms: [main, b, b]\n',
         "experiment.arms[2]: duplicate 'b'"),
    case('reward', 6, E + '  reward: score\n',
         "experiment.reward: must be one of 'binary', 'continuous', got 'score'"),
    case('strategy', 6, E + '  strategy: greedy\n',
         "experiment.strategy: must be one of 'thompson', 'fixed'"),
    case('status', 6, E + '  status: running!\n',
         "experiment.status: must be one of 'draft', 'running'"),
    case('metric', 6, E + "  metric: 'a b'\n", 'experiment.metric: must be 1-64 letters'),
    case('auto-promote', 6, E + '  auto_promote: 1\n',
         'experiment.auto_promote: must be a boolean, got integer'),
    case('fixed-without-weights', 6, E + '  strategy: fixed\n',
         'experiment: strategy fixed needs weights'),
    case('weights-without-fixed', 6, E + '  weights: [0.5, 0.5]\n',
         'experiment.weights: only for strategy: fixed'),
    case('weights-sum', 7, E + '  strategy: fixed\n  weights: [0.5, 0.6]\n',
         'experiment.weights: must be non-negative and sum to 1 (sum 1.1)'),
    case('weights-negative', 7, E + '  strategy: fixed\n  weights: [1.5, -0.5]\n',
         'must be non-negative'),
    case('weights-count', 7, E + '  strategy: fixed\n  weights: [1.0]\n',
         'experiment.weights: 1 weights for 2 arms'),
    case('weights-type', 7, E + '  strategy: fixed\n  weights: [half, 0.5]\n',
         'experiment.weights[0]: must be a number, got string'),
    case('policy-unknown-key', 6, E + '  policy: {flor: 0.1}\n',
         "experiment.policy: unknown key 'flor' (did you mean 'floor'?)"),
    case('policy-int-field', 6, E + '  policy: {draws: 10.5}\n',
         'experiment.policy.draws: must be an integer, got number'),
    case('policy-bool-not-number', 6, E + '  policy: {min_hours: true}\n',
         'experiment.policy.min_hours: must be a number, got boolean'),
    case('policy-floor', 6, E + '  policy: {floor: 1}\n',
         'experiment.policy.floor: must be at least 0 and below 1'),
    case('policy-count', 6, E + '  policy: {max_checks: 0}\n',
         'experiment.policy.max_checks: must be greater than 0'),
    case('policy-alpha', 6, E + '  policy: {alpha: 1.5}\n',
         'experiment.policy.alpha: must be strictly between 0 and 1'),
    case('policy-negative-hours', 6, E + '  policy: {min_hours: -1}\n',
         'experiment.policy.min_hours: must be at least 0'),
    case('policy-allocation', 6, E + '  policy: {allocation: greedy}\n',
         "experiment.policy.allocation: must be one of 'top_two', 'thompson'"),
    case('policy-missing-feedback', 6, E + '  policy: {missing_feedback: skip}\n',
         "experiment.policy.missing_feedback: must be one of 'zero', 'ignore'"),
    case('policy-not-mapping', 6, E + '  policy: [1]\n', 'experiment.policy: must be a mapping'),
    case('duplicate-key', 3, T + 'name: q\n', "duplicate key 'name' (first at line 1)"),
    case('duplicate-nested-key', 5, T + 'variables:\n  a: string\n  a: integer\n',
         "duplicate key 'a' (first at line 4)"),
    case('non-string-key', 3, T + 'model: {1: a}\n', 'model: keys must be strings'),
]
# fmt: on


class TestInvalid:
    @pytest.mark.parametrize(("text", "line", "message"), INVALID)
    def test_problem(self, text: str, line: int, message: str) -> None:
        problem = only_problem(text)
        assert message in problem.message, str(problem)
        assert (problem.path, problem.line) == ("p.yaml", line), str(problem)
        assert "\n" not in problem.message

    def test_every_problem_at_once_sorted_by_line(self) -> None:
        found = problems(
            """\
            name: Bad
            modle: x
            variables:
              n: {type: integer, default: yes}
            messages:
              - {role: robot, content: "{{ foo }}"}
            experiment: {arms: [main]}
            """
        )
        lines = [p.line for p in found]
        assert lines == sorted(lines)
        text = "\n".join(map(str, found))
        for expected in (
            "p.yaml:1: name: 'Bad' is not a valid name",
            "p.yaml:2: unknown key 'modle'",
            "p.yaml:4: variables.n.default: must be an integer, got boolean",
            "p.yaml:6: messages[0].role: must be one of",
            "p.yaml:6: messages[0].content uses undeclared variable 'foo'",
            "p.yaml:7: experiment.arms: an experiment needs at least two arms, got 1",
        ):
            assert expected in text, text

    def test_error_message_lists_all_problems(self) -> None:
        with pytest.raises(InvalidPromptFile) as info:
            parse_prompt_text("name: P\nmodle: 1\ntemplate: x\n", path="a/b.yaml")
        assert str(info.value).splitlines() == [
            "a/b.yaml:1: name: 'P' is not a valid name (lowercase letters, digits, '.', '_', '-'; "
            "starting with a letter or digit; max 64)",
            "a/b.yaml:2: unknown key 'modle' (did you mean 'model'?)",
        ]
        assert (info.value.path, info.value.line) == ("a/b.yaml", 1)


def deep_nesting(levels: int) -> str:
    return "name: p\ntemplate: x\nmodel: {a: " + "[" * levels + "]" * levels + "}\n"


BILLION_LAUGHS = """\
name: p
template: x
model:
  a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
  b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
  c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
  d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
  e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
  f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
  g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
  h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
  i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
"""

# fmt: off
HOSTILE = [
    # id, line, file text, message fragment
    case("billion-laughs", 4, BILLION_LAUGHS, "anchors and aliases are not allowed"),
    case("anchor", 1, "name: &n p\ntemplate: x\n", "anchors and aliases"),
    case("merge-key", 4, T + "model:\n  <<: {a: 1}\n", "merge keys"),
    case("python-tag", 1, "name: !!python/object/apply:os.system ['true']\ntemplate: x\n",
         "unsupported YAML tag '!!python/object/apply:os.system'"),
    case("binary-tag", 2, "name: p\ntemplate: !!binary aGk=\n", "unsupported YAML tag '!!binary'"),
    case("custom-tag", 2, "name: p\ntemplate: !custom x\n", "unsupported YAML tag '!custom'"),
    case("deep-nesting", 3, deep_nesting(MAX_DEPTH + 10), f"nesting deeper than {MAX_DEPTH}"),
    case("top-level-list", 1, "- name: p\n- template: x\n",
         "must be a mapping (name:, messages:, ...), got a list"),
    case("top-level-scalar", 1, "just a string\n", "must be a mapping"),
    case("empty", 1, "", "the file is empty"),
    case("only-comments", 1, "# only a comment\n", "the file is empty"),
    case("two-docs", 2, "name: p\n---\nname: q\n",
         "invalid YAML: expected a single document in the stream, but found another"),
    case("tab-indent", 3, T + "\tmodel: {}\n", "invalid YAML"),
    case("unclosed-flow", 3, "name: p\ntemplate: [x\n", "invalid YAML"),
    case("bad-indent", 2, "name: p\n  bad: indent\n",
         "invalid YAML: mapping values are not allowed"),
    case("control-char", 3, T + "description: a\x07b\n", "invalid character '\\x07'"),
    case("invalid-utf8", 2, b"name: p\ntemplate: \xff\xfe\n", "not UTF-8 text (byte 0xff)"),
    case("nul-byte", 3, b"name: p\ntemplate: x\n\x00\x01\x02", "NUL byte"),
    case("nul-escape", 3, T + 'description: "a\\0b"\n', "a string must not contain NUL characters"),
    case("nul-escape-in-key", 3, T + 'model: {"a\\x00": 1}\n', "a string must not contain NUL characters"),
    case("surrogate-escape", 3, T + 'description: "\\U0000D800"\n', "Unicode"),
    case("binary-junk", 2, bytes(range(256)) * 8, "not UTF-8 text (byte 0x80)"),
    case("ascii-junk", 1, bytes(range(1, 127)), "invalid character '\\x01'"),
    case("too-large-str", 0, "x" * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES} bytes"),
    case("too-large-bytes", 0, b"#" * (MAX_FILE_BYTES + 1), f"larger than {MAX_FILE_BYTES}"),
]
# fmt: on


class TestHostile:
    @pytest.mark.parametrize(("text", "line", "message"), HOSTILE)
    def test_refused(self, text: str | bytes, line: int, message: str) -> None:
        problem = only_problem(text)
        assert message in problem.message, str(problem)
        assert problem.line == line, str(problem)

    @pytest.mark.parametrize(("text", "line", "message"), HOSTILE)
    def test_refused_by_the_pure_python_parser(
        self, text: str | bytes, line: int, message: str, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Without libyaml the pure-Python parser is used; it must refuse the same input alike.
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.SafeLoader)
        problem = only_problem(text)
        assert message in problem.message, str(problem)
        assert problem.line == line, str(problem)

    def test_pure_python_parser_reads_the_examples(self, monkeypatch: pytest.MonkeyPatch) -> None:
        expected = load_prompt_files([EXAMPLES])
        monkeypatch.setattr(yamlnodes, "_Loader", yaml.SafeLoader)
        assert load_prompt_files([EXAMPLES]) == expected

    def test_nesting_at_the_limit_is_fine(self) -> None:
        d = parse_prompt_text(deep_nesting(MAX_DEPTH - 3), path="p.yaml")
        assert "a" in d.content.model

    @settings(max_examples=150, deadline=None)
    @given(st.text(max_size=300))
    def test_any_text_is_a_definition_or_a_clean_problem(self, text: str) -> None:
        try:
            parse_prompt_text(text, path="fuzz.yaml")
        except InvalidPromptFile as exc:
            assert exc.problems and all(p.path == "fuzz.yaml" for p in exc.problems)

    @settings(max_examples=150, deadline=None)
    @given(st.binary(max_size=300))
    def test_any_bytes_are_a_definition_or_a_clean_problem(self, data: bytes) -> None:
        try:
            parse_prompt_text(data, path="fuzz.yaml")
        except InvalidPromptFile as exc:
            assert exc.problems

    def test_huge_file_is_refused_without_reading_it(self, tmp_path: Path) -> None:
        path = tmp_path / "huge.yaml"
        with open(path, "wb") as handle:
            handle.truncate(50 * MAX_FILE_BYTES)  # sparse: costs no disk, reading it would
        with pytest.raises(InvalidPromptFile, match="larger than"):
            load_prompt_file(path)


def write(folder: Path, name: str, text: str) -> Path:
    path = folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


class TestFiles:
    def test_load_prompt_file(self, tmp_path: Path) -> None:
        path = write(tmp_path, "greet.yaml", MINIMAL)
        d = load_prompt_file(path)
        assert (d.name, d.path) == ("greet", str(path))

    def test_missing_file(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidPromptFile) as info:
            load_prompt_file(tmp_path / "nope.yaml")
        assert info.value.problems == [
            FileProblem(str(tmp_path / "nope.yaml"), 0, "no such file or directory")
        ]

    def test_directory_is_not_a_file(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidPromptFile, match="is a directory"):
            load_prompt_file(tmp_path)

    def test_discover(self, tmp_path: Path) -> None:
        write(tmp_path, "b.yaml", MINIMAL)
        write(tmp_path, "a.yml", MINIMAL)
        write(tmp_path, "sub/c.yaml", MINIMAL)
        write(tmp_path, "notes.txt", "x")
        write(tmp_path, ".hidden.yaml", "x")
        write(tmp_path, ".git/d.yaml", "x")
        explicit = write(tmp_path / "elsewhere", "z.txt", MINIMAL)
        found = discover([tmp_path, explicit, tmp_path / "a.yml"])
        rel = [p.relative_to(tmp_path).as_posix() for p in found]
        assert rel == ["a.yml", "b.yaml", "sub/c.yaml", "elsewhere/z.txt"]

    def test_discover_missing_path(self, tmp_path: Path) -> None:
        with pytest.raises(InvalidPromptFile) as info:
            discover([tmp_path, tmp_path / "gone"])
        assert info.value.problems == [FileProblem(str(tmp_path / "gone"), 0, "no such file or directory")]

    def test_load_prompt_files_sorted_by_name(self, tmp_path: Path) -> None:
        write(tmp_path, "1.yaml", MINIMAL.replace("greet", "zeta"))
        write(tmp_path, "2.yaml", MINIMAL.replace("greet", "alpha"))
        assert [d.name for d in load_prompt_files([tmp_path])] == ["alpha", "zeta"]

    def test_duplicate_names_across_files(self, tmp_path: Path) -> None:
        first = write(tmp_path, "a.yaml", MINIMAL)
        second = write(tmp_path, "b.yaml", "# the same prompt again\n" + MINIMAL)
        with pytest.raises(InvalidPromptFile) as info:
            load_prompt_files([tmp_path])
        assert info.value.problems == [
            FileProblem(str(second), 2, f"duplicate prompt name 'greet': already defined in {first}:1")
        ]

    def test_problems_collected_across_files(self, tmp_path: Path) -> None:
        write(tmp_path, "good.yaml", MINIMAL)
        bad1 = write(tmp_path, "bad1.yaml", "name: p\n")
        bad2 = write(tmp_path, "bad2.yaml", "name: q\ntemplate: '{{ x }}'\n")
        with pytest.raises(InvalidPromptFile) as info:
            load_prompt_files([tmp_path, tmp_path / "missing.yaml"])
        assert [(p.path, p.line) for p in info.value.problems] == [
            (str(tmp_path / "missing.yaml"), 0),
            (str(bad1), 1),
            (str(bad2), 2),
        ]

    def test_empty_directory(self, tmp_path: Path) -> None:
        assert load_prompt_files([tmp_path]) == []


@pytest.mark.parametrize(
    "text, line, needle",
    [
        pytest.param('name: "t\u202eest"\ntemplate: hi\n', 1, "not a valid name", id="bidi-override-name"),
        pytest.param(
            'name: ok\ntemplate: "hi {{ x\u200b }}"\nvariables: {x: {type: string}}\n',
            2,
            "unexpected char",
            id="zero-width-in-template",
        ),
        pytest.param(
            'name: ok\ntemplate: hi\nvariables:\n  "\u0445": {type: string}\n',
            4,
            "not a valid variable name",
            id="homoglyph-variable",
        ),
        pytest.param("name: ok\ntemplate: hi\n\x00\n", 0, "", id="nul-byte"),
    ],
)
def test_unicode_tricks_are_refused(text, line, needle):
    with pytest.raises(InvalidPromptFile) as info:
        parse_prompt_text(text.encode("utf-8"), path="u.yaml")
    first = info.value.problems[0]
    assert needle in first.message, info.value.problems
    if line:
        assert first.line == line, info.value.problems


def test_a_byte_order_mark_is_accepted():
    d = parse_prompt_text("\ufeffname: bom\ntemplate: hi\n".encode(), path="bom.yaml")
    assert d.name == "bom"


def test_the_prompt_files_doc_examples_validate_alike():
    import re

    from promptops.promptfiles import parse_prompt_text

    doc = (Path(__file__).parent.parent / "docs" / "prompt-files.md").read_text(encoding="utf-8")
    yaml_example = re.findall(r"```yaml\n(.*?)```", doc, flags=re.S)[0]
    json_example = re.findall(r"```json\n(.*?)```", doc, flags=re.S)[0]
    full = parse_prompt_text(yaml_example, path="support-triage.yaml")
    assert list(full.variants) == ["few-shot", "warmer"] and full.experiment is not None
    assert full.variants["warmer"].model["temperature"] == 0.3
    greet = parse_prompt_text(json_example, path="greet.json")
    as_yaml = parse_prompt_text(yaml.safe_dump(json.loads(json_example)), path="greet.yaml")
    assert greet.content.content_hash() == as_yaml.content.content_hash()
    assert greet.variants["formal"].content_hash() == as_yaml.variants["formal"].content_hash()
