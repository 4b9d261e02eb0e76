"""The YAML-node reader checkers are built on: loading, typed getters, every problem at once."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from promptops.errors import FileProblem
from promptops.yamlnodes import BAD, NodeReader


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
