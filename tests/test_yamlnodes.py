"""The YAML-node reader checkers are built on: loading, typed getters, every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from promptops.errors import FileProblem, InvalidPromptFile
from promptops.promptfiles import parse_prompt_text
from promptops.yamlnodes import BAD, MAX_DEPTH, NodeReader


def _positive(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= 1
    return None if ok else f"must be an integer >= 1, got {value!r}"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


class _Runs(NodeReader):
    """The checker of the module docstring's example."""

    def runs(self, root: yaml.Node) -> tuple[str, int] | None:
        self.scan(root)
        entries = self.mapping(root, "", ("name", "runs", "tags"), required=("name",))
        if entries is None:
            return None
        name = self.field(entries, "name", "", _text, BAD)
        runs = self.field(entries, "runs", "", _positive, 100)
        self.distinct(entries, "tags", "", _text)
        return None if self.problems else (name, runs)


def _check(text: str) -> tuple[tuple[str, int] | None, list[FileProblem]]:
    checker = _Runs("s.yaml")
    root = checker.load_text(text, empty="the file is empty")
    result = checker.runs(root) if root is not None else None
    return result, checker.sorted_problems()


def test_a_valid_file_reads_with_defaults() -> None:
    assert _check("name: a\n") == (("a", 100), [])


def test_every_problem_is_reported_with_its_line() -> None:
    result, problems = _check("runs: 0\nname: ''\ntags: [x, x]\nrnus: 3\n")
    assert result is None
    assert [str(p) for p in problems] == [
        "s.yaml:1: runs: must be an integer >= 1, got 0",
        "s.yaml:2: name: must be a non-empty string",
        "s.yaml:3: tags[1]: duplicate 'x'",
        "s.yaml:4: unknown key 'rnus' (did you mean 'runs'?)",
    ]


def test_hostile_and_empty_input_is_one_problem() -> None:
    assert _check("a: &x 1\nb: *x\n")[1] == [
        FileProblem("s.yaml", 1, "YAML anchors and aliases are not allowed")
    ]
    assert _check("")[1] == [FileProblem("s.yaml", 1, "the file is empty")]


def test_a_missing_file_is_a_problem_at_line_zero(tmp_path: Path) -> None:
    checker = _Runs(str(tmp_path / "nope.yaml"))
    assert checker.load_file(tmp_path / "nope.yaml", empty="empty") is None
    assert [(p.line, p.message) for p in checker.problems] == [(0, "no such file or directory")]


JSON_PROMPT = """\
{
  "name": "summarize",
  "variables": {"text": {"type": "string", "required": true}, "n": {"type": "integer", "default": 3}},
  "messages": [{"role": "user", "content": "Summarize in {{ n }}: {{ text }}"}],
  "variants": {"short": {"model": {"temperature": 2.5e-1}}},
  "experiment": {"arms": ["main", "short"], "policy": {"alpha": 1e-2}}
}
"""
YAML_PROMPT = """\
name: summarize
variables: {text: {type: string, required: true}, n: {type: integer, default: 3}}
messages: [{role: user, content: "Summarize in {{ n }}: {{ text }}"}]
variants: {short: {model: {temperature: 0.25}}}
experiment: {arms: [main, short], policy: {alpha: 0.01}}
"""


def test_a_json_prompt_reads_like_its_yaml_twin() -> None:
    from_json = parse_prompt_text(JSON_PROMPT, path="p.json")
    from_yaml = parse_prompt_text(YAML_PROMPT, path="p.yaml")
    assert from_json.content == from_yaml.content
    assert from_json.variants == from_yaml.variants
    assert from_json.experiment == from_yaml.experiment
    assert from_json.experiment is not None and from_json.experiment.policy.alpha == 0.01


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            '{\n  "name": "a",\n  "tmplate": "x",\n  "name": "b"\n}',
            [
                "p.json:1: one of messages or template is required",
                "p.json:3: unknown key 'tmplate' (did you mean 'template'?)",
                "p.json:4: duplicate key 'name' (first at line 2)",
            ],
            id="keys",
        ),
        pytest.param(
            '{"name": "a",\n "template": "x"\n "tags": []}',
            ["p.json:3: invalid JSON: expected ',' or '}'"],
            id="missing-comma",
        ),
        pytest.param(
            '{"name": "a", "template": "x"}\n[]',
            ["p.json:2: invalid JSON: extra data after the value"],
            id="extra-data",
        ),
        pytest.param(
            '{"name": "a",\n "template": "\\ud800"}',
            ["p.json:2: invalid JSON: a \\u escape is a lone surrogate"],
            id="surrogate",
        ),
        pytest.param(
            '{"name": "a",\n "template": "a\\u0000b"}',
            ["p.json:2: invalid JSON: a \\u0000 escape (a NUL character) is not allowed"],
            id="nul",
        ),
        pytest.param(
            '{"name": "a",\n "template": "line\nbreak"}',
            ["p.json:2: invalid JSON: unterminated string, bad escape or control character"],
            id="control-character",
        ),
        pytest.param('{"name": nope}', ["p.json:1: invalid JSON: expected a value"], id="bare-word"),
        pytest.param(
            "[" * (MAX_DEPTH + 1) + "]" * (MAX_DEPTH + 1),
            [f"p.json:1: nesting deeper than {MAX_DEPTH} levels"],
            id="deep",
        ),
        pytest.param(
            " \n",
            ["p.json:1: the file is empty; a prompt needs name: and messages: or template:"],
            id="empty",
        ),
    ],
)
def test_json_problems_name_their_line(text: str, expected: list[str]) -> None:
    with pytest.raises(InvalidPromptFile) as info:
        parse_prompt_text(text, path="p.json")
    assert [str(p) for p in info.value.problems] == expected
