"""Eval files and datasets: the schema, every problem at once as PATH:LINE, and the dataset hash."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from promptops.assertions import AssertionType, Transform
from promptops.domain import VariableSpec
from promptops.errors import InvalidEvalFile, InvalidPromptFile
from promptops.evalfiles import (
    load_eval_file,
    load_eval_files,
    parse_eval_text,
    validate_files,
    variable_problems,
)
from promptops.stats.evals import GateRule

EVAL = """\
name: support-triage-golden
prompt: support-triage
dataset: support-triage.jsonl
assert:
  - {type: equals, value: "{{ expected }}", transform: strip_lower}
  - {type: judge, rubric: "Names exactly one queue from the list.", provider: local, model: judge-model}
  - {type: latency, max_ms: 3000}
threshold: 1.0
repeat: 1
gate: {min_pass_rate: 0.9, max_regression: 0.0}
"""

CASES = [
    {"id": "refund", "vars": {"ticket": "I was charged twice"}, "expected": "billing"},
    {"vars": {"ticket": "The app crashes"}, "expected": "tech", "metadata": {"lang": "en"}},
    {
        "id": 7,
        "vars": {"ticket": "Hola"},
        "expected": "general",
        "assert": [{"type": "contains", "value": "general", "weight": 2}],
    },
]


def write(
    tmp_path: Path, eval_text: str = EVAL, lines: list[str] | None = None, name: str = "triage"
) -> Path:
    evals = tmp_path / "evals"
    evals.mkdir(exist_ok=True)
    if lines is None:
        lines = [json.dumps(c) for c in CASES]
    (evals / "support-triage.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")
    path = evals / f"{name}.yaml"
    path.write_text(eval_text, encoding="utf-8")
    return path


def problems(path: Path) -> list[str]:
    with pytest.raises(InvalidEvalFile) as info:
        load_eval_file(path)
    return [str(p) for p in info.value.problems]


def test_the_contract_example_loads(tmp_path):
    path = write(tmp_path)
    ev = load_eval_file(path)
    assert (ev.name, ev.prompt, ev.threshold, ev.repeat) == (
        "support-triage-golden",
        "support-triage",
        1.0,
        1,
    )
    assert ev.gate == GateRule(min_pass_rate=0.9, max_regression=0.0)
    assert [a.type for a in ev.assertions] == [
        AssertionType.EQUALS,
        AssertionType.JUDGE,
        AssertionType.LATENCY,
    ]
    assert ev.assertions[0].transform is Transform.STRIP_LOWER
    assert [c.id for c in ev.cases] == ["refund", "case-2", "7"]
    assert ev.cases[1].metadata == {"lang": "en"}
    assert ev.cases[2].assertions[0].weight == 2
    assert [a.type for a in ev.assertions_for(ev.cases[2])][-2:] == [
        AssertionType.LATENCY,
        AssertionType.CONTAINS,
    ]
    assert ev.assertions_for(ev.cases[0]) == ev.assertions
    assert [s.line for s in ev.sources] == [1, 2, 3]
    assert ev.dataset == str(path.parent / "support-triage.jsonl")
    assert len(ev.dataset_hash) == 64


def test_dataset_hash_follows_the_cases_not_the_formatting(tmp_path):
    first = load_eval_file(write(tmp_path)).dataset_hash
    spaced = [json.dumps(c, indent=None, separators=(" , ", " : ")) for c in CASES]
    assert load_eval_file(write(tmp_path, lines=["", *spaced, "   "])).dataset_hash == first
    changed = [*CASES[:2], {**CASES[2], "expected": "billing"}]
    assert load_eval_file(write(tmp_path, lines=[json.dumps(c) for c in changed])).dataset_hash != first
    # The same cases inline hash the same as the JSONL file.
    inline = EVAL.replace(
        "dataset: support-triage.jsonl\n", "cases:\n" + "".join(f"  - {json.dumps(c)}\n" for c in CASES)
    )
    assert load_eval_file(write(tmp_path, inline, name="inline")).dataset_hash == first


def test_inline_cases_get_ids_and_lines(tmp_path):
    text = EVAL.replace(
        "dataset: support-triage.jsonl\n",
        "cases:\n  - {vars: {ticket: a}, expected: x}\n"
        "  - id: second\n    vars: {ticket: b}\n    expected: y\n",
    )
    ev = load_eval_file(write(tmp_path, text))
    assert [c.id for c in ev.cases] == ["case-1", "second"]
    assert [s.line for s in ev.sources] == [4, 5]
    assert ev.dataset is None


def test_a_bad_jsonl_line_is_dataset_path_and_line(tmp_path):
    lines = [
        json.dumps(CASES[0]),
        '{"vars": {"ticket": "x"}, "expected": "y"',
        json.dumps(CASES[2]),
        "[1, 2]",
    ]
    path = write(tmp_path, lines=lines)
    dataset = path.parent / "support-triage.jsonl"
    found = problems(path)
    assert f"{dataset}:2: invalid JSON: Expecting ',' delimiter (column 42)" in found
    assert f'{dataset}:4: a case must be an object with "vars"' in found


@pytest.mark.parametrize(
    ("line", "message"),
    [
        pytest.param({"vars": {}, "expexted": 1}, "unknown key 'expexted' in a case", id="unknown-key"),
        pytest.param({"expected": "x"}, 'a case needs "vars" (an object)', id="no-vars"),
        pytest.param({"vars": [1]}, '"vars" must be an object', id="vars-list"),
        pytest.param({"id": True, "vars": {}}, "id must be a string or an integer", id="id-bool"),
        pytest.param({"id": " ", "vars": {}}, "id must be a non-empty string", id="id-blank"),
        pytest.param({"vars": {}, "metadata": 3}, '"metadata" must be an object', id="metadata"),
        pytest.param({"vars": {}, "assert": {"type": "equals"}}, '"assert" must be a list', id="assert-map"),
        pytest.param({"vars": {"ticket": "a\x00b"}}, "vars: must not contain NUL characters", id="vars-nul"),
        pytest.param({"vars": {"ticket": "\ud800"}}, "vars: must be valid Unicode", id="vars-surrogate"),
        pytest.param({"vars": {}, "expected": "\x00"}, "expected: must not contain NUL", id="expected-nul"),
        pytest.param(
            {"vars": {}, "metadata": {"\x00": 1}}, "metadata: a key must not contain NUL", id="key-nul"
        ),
        pytest.param({"id": "\udc00", "vars": {}}, "id must be valid Unicode", id="id-surrogate"),
        pytest.param(
            {"vars": {}, "assert": [{"type": "nope"}]},
            "assert[0]: unknown assertion type 'nope'",
            id="assert-type",
        ),
    ],
)
def test_bad_cases_are_problems_at_their_line(tmp_path, line, message):
    path = write(tmp_path, lines=[json.dumps(CASES[0]), json.dumps(line)])
    found = problems(path)
    assert any(p.startswith(f"{path.parent / 'support-triage.jsonl'}:2: {message}") for p in found), found


def test_non_json_numbers_and_bytes_in_a_dataset(tmp_path):
    path = write(tmp_path, lines=[json.dumps(CASES[0]), '{"vars": {"x": NaN}}'])
    assert any(":2: invalid JSON: NaN is not valid JSON" in p for p in problems(path))
    (path.parent / "support-triage.jsonl").write_bytes(b'{"vars": {}, "expected": "\xff"}\n')
    assert any(":1: not UTF-8 text" in p for p in problems(path))


def test_eval_file_problems_point_at_their_lines_all_at_once(tmp_path):
    text = """\
name: Bad Name
prompt: support-triage
dataset: missing.jsonl
assert:
  - {type: equals, value: "x"}
  - type: equal
    value: "x"
  - {type: contains, value: "x", weight: -1, frobnicate: 1}
threshold: 2
repeat: 0
gate: {min_pass_rate: 1.5, max_regresion: 0}
extra: 1
"""
    path = write(tmp_path, text)
    found = [p.removeprefix(f"{path}:") for p in problems(path)]
    assert found == [
        "1: name: 'Bad Name' is not a valid name (lowercase letters, digits, '.', '_', '-'; starting with a "
        "letter or digit; max 64)",
        f"3: dataset: 'missing.jsonl' not found (looked for {path.parent / 'missing.jsonl'})",
        "6: assert[1]: unknown assertion type 'equal' (did you mean 'equals'?); known: equals, contains, "
        "icontains, starts_with, regex, is_json, json_schema, similar, judge, cost, latency",
        "8: assert[2]: unknown key 'frobnicate' for contains (allowed: type, weight, not, transform, value)",
        "8: assert[2]: weight must be a number >= 0",
        "9: threshold: must be a number from 0 to 1, got 2",
        "10: repeat: must be an integer from 1 to 100, got 0",
        "11: gate: unknown key 'max_regresion' (did you mean 'max_regression'?)",
        "11: gate.min_pass_rate: must be a number from 0 to 1, got 1.5",
        "12: unknown key 'extra'",
    ]


def test_dataset_and_cases_are_exclusive_and_one_is_needed(tmp_path):
    both = write(tmp_path, EVAL + "cases: [{vars: {}}]\n")
    assert any(":11: give either dataset: or cases:, not both" in p for p in problems(both))
    neither = write(tmp_path, EVAL.replace("dataset: support-triage.jsonl\n", ""))
    assert any(":1: an eval needs dataset:" in p for p in problems(neither))
    empty = write(tmp_path, EVAL.replace("dataset: support-triage.jsonl\n", "cases: []\n"))
    assert any(":3: cases: must be a non-empty list of cases" in p for p in problems(empty))


def test_empty_dataset_and_a_directory_are_problems(tmp_path):
    path = write(tmp_path, lines=["", "  "])
    assert any(":3: dataset: 'support-triage.jsonl' has no cases" in p for p in problems(path))
    (path.parent / "folder").mkdir()
    folder = write(tmp_path, EVAL.replace("support-triage.jsonl", "folder"))
    assert any(":3: dataset: 'folder' is not a file" in p for p in problems(folder))


def dataset_outside(tmp_path: Path, dataset: str) -> list[str]:
    (tmp_path / "secret.jsonl").write_text(json.dumps(CASES[0]) + "\n", encoding="utf-8")
    return problems(write(tmp_path, EVAL.replace("support-triage.jsonl", dataset)))


@pytest.mark.parametrize("dataset", ["../secret.jsonl", "sub/../../secret.jsonl", "../../etc/passwd"])
def test_a_dataset_above_the_eval_folder_is_refused(tmp_path, dataset):
    found = dataset_outside(tmp_path, dataset)
    folder = tmp_path / "evals"
    assert found == [
        f"{folder / 'triage.yaml'}:3: dataset: {dataset!r} is outside the eval file's folder ({folder})"
    ]


@pytest.mark.parametrize("dataset", ["/etc/passwd", "SECRET"])
def test_an_absolute_dataset_path_is_refused(tmp_path, dataset):
    dataset = str(tmp_path / "secret.jsonl") if dataset == "SECRET" else dataset
    found = dataset_outside(tmp_path, dataset)
    folder = tmp_path / "evals"
    assert found == [
        f"{folder / 'triage.yaml'}:3: dataset: {dataset!r} must be relative to the eval file's folder "
        f"({folder}), not absolute"
    ]


def test_a_symlink_leaving_the_eval_folder_is_refused(tmp_path):
    folder = tmp_path / "evals"
    folder.mkdir()
    (folder / "link.jsonl").symlink_to(tmp_path / "secret.jsonl")
    (folder / "linked").symlink_to(tmp_path)
    for dataset in ("link.jsonl", "linked/secret.jsonl"):
        found = dataset_outside(tmp_path, dataset)
        assert found == [
            f"{folder / 'triage.yaml'}:3: dataset: {dataset!r} is outside the eval file's folder ({folder})"
        ]


def test_a_dataset_in_a_subfolder_or_linked_inside_is_read(tmp_path):
    path = write(tmp_path)
    (path.parent / "data").mkdir()
    (path.parent / "data" / "cases.jsonl").write_text(json.dumps(CASES[0]) + "\n", encoding="utf-8")
    (path.parent / "alias.jsonl").symlink_to(path.parent / "support-triage.jsonl")
    for dataset, count in (("data/cases.jsonl", 1), ("./data/../alias.jsonl", 3)):
        path.write_text(EVAL.replace("support-triage.jsonl", dataset), encoding="utf-8")
        assert len(load_eval_file(path).cases) == count


def test_cross_checks_duplicates_missing_assertions_and_expected(tmp_path):
    text = "".join(line + "\n" for line in EVAL.splitlines() if not line.startswith(("assert:", "  - ")))
    lines = [
        json.dumps({"id": "a", "vars": {}, "assert": [{"type": "equals", "value": "{{ expected }}"}]}),
        json.dumps({"id": "a", "vars": {}, "expected": "x", "assert": [{"type": "is_json"}]}),
        json.dumps({"id": "b", "vars": {}}),
    ]
    path = write(tmp_path, text, lines=lines)
    dataset = path.parent / "support-triage.jsonl"
    assert problems(path) == [
        f"{dataset}:1: case 'a' has no expected, but its equals assertion uses it",
        f"{dataset}:2: duplicate case id 'a' (first at line 1)",
        f"{dataset}:3: case 'b' has no assertion (add assert: to the eval or to the case)",
    ]


def test_hostile_yaml_is_refused_with_a_line(tmp_path):
    path = write(tmp_path, "name: &a x\nprompt: *a\n")
    assert problems(path)[0].startswith(f"{path}:1: YAML anchors and aliases are not allowed")
    with pytest.raises(InvalidEvalFile, match="e.yaml:1: the file is empty"):
        parse_eval_text("", path="e.yaml")


def test_load_eval_files_finds_a_folder_and_refuses_duplicate_names(tmp_path):
    write(tmp_path, name="a")
    evals = load_eval_files([tmp_path / "evals"])
    assert [e.name for e in evals] == ["support-triage-golden"]
    write(tmp_path, name="b")
    with pytest.raises(InvalidEvalFile) as info:
        load_eval_files([tmp_path / "evals"])
    assert "duplicate eval name 'support-triage-golden'" in str(info.value)
    assert isinstance(info.value, InvalidPromptFile)  # the CLI prints both kinds alike
    with pytest.raises(InvalidEvalFile, match="no such file or directory"):
        load_eval_files([tmp_path / "nowhere"])


def test_variable_problems_against_the_prompt(tmp_path):
    lines = [
        json.dumps({"id": "ok", "vars": {"ticket": "x"}, "expected": "a"}),
        json.dumps({"id": "typo", "vars": {"tiket": "x"}, "expected": "a"}),
        json.dumps({"id": "type", "vars": {"ticket": 3, "lang": "xx"}, "expected": "a"}),
    ]
    ev = load_eval_file(write(tmp_path, lines=lines))
    specs = [
        VariableSpec("ticket", type="string", required=True),
        VariableSpec("lang", type="string", enum=("en", "es")),
    ]
    dataset = tmp_path / "evals" / "support-triage.jsonl"
    assert [str(p) for p in variable_problems(ev, specs)] == [
        f"{dataset}:2: case 'typo': vars.tiket is not declared by prompt 'support-triage' "
        "(declared: ticket, lang)",
        f"{dataset}:2: case 'typo': vars.ticket is required by prompt 'support-triage'",
        f"{dataset}:3: case 'type': vars.ticket must be a string, got integer",
        f"{dataset}:3: case 'type': vars.lang must be one of 'en', 'es', got 'xx'",
    ]


def test_a_deeply_nested_json_file_is_a_prompt_file_problem_not_a_crash(tmp_path):
    path = tmp_path / "deep.json"
    path.write_text('{"name": "deep", "x": ' + "[" * 5000 + "]" * 5000 + "}")
    with pytest.raises(InvalidPromptFile) as info:
        validate_files([path], prompts_dir=tmp_path / "prompts", evals_dir=tmp_path / "evals")
    assert f"{path}:1: nesting deeper than" in str(info.value)


def test_value_templates_with_undeclared_vars_point_at_their_own_lines(tmp_path):
    prompts = tmp_path / "prompts"
    prompts.mkdir()
    (prompts / "triage.yaml").write_text(
        "name: support-triage\nmodel: {name: m}\n"
        "variables:\n  ticket: {type: string, required: true}\n"
        'messages:\n  - {role: user, content: "{{ ticket }}"}\n',
        encoding="utf-8",
    )
    inline = """\
name: inline-golden
prompt: support-triage
cases:
  - vars: {ticket: a}
    expected: x
  - id: own
    vars: {ticket: b}
    expected: y
    assert:
      - {type: equals, value: "{{ vars.ticket }}"}
      - type: contains
        value: "{{ vars['other'] }}"
assert:
  - {type: equals, value: "{{ expected }}"}
  - type: contains
    transform: strip
    value: "{{ vars.nope }}"
"""
    lines = [
        json.dumps({"id": "a", "vars": {"ticket": "x"}, "expected": "a"}),
        json.dumps(
            {
                "id": "b",
                "vars": {"ticket": "x"},
                "expected": "b",
                "assert": [{"type": "equals", "value": "{{ vars.x }}"}],
            }
        ),
    ]
    write(tmp_path, lines=lines)
    (tmp_path / "evals" / "inline.yaml").write_text(inline, encoding="utf-8")
    with pytest.raises(InvalidEvalFile) as info:
        validate_files([], prompts_dir=prompts, evals_dir=tmp_path / "evals")
    evals = tmp_path / "evals"
    assert [str(p) for p in info.value.problems] == [
        f"{evals / 'inline.yaml'}:12: case 'own': assert[1]: the value template uses vars.other, "
        "which prompt 'support-triage' does not declare",
        f"{evals / 'inline.yaml'}:17: assert[1]: the value template uses vars.nope, "
        "which prompt 'support-triage' does not declare",
        f"{evals / 'support-triage.jsonl'}:2: case 'b': assert[0]: the value template uses vars.x, "
        "which prompt 'support-triage' does not declare",
    ]


GATED = """\
name: support-triage
model: {name: m}
variables:
  ticket: {type: string, required: true}
messages:
  - {role: user, content: "{{ ticket }}"}
variants:
  terse: {messages: [{role: user, content: "Short: {{ ticket }}"}]}
experiment:
  arms: [main, terse]
  requires_eval: REQUIRED
"""


def gated_project(tmp_path: Path, required: str) -> tuple[Path, Path]:
    prompts = tmp_path / "prompts"
    prompts.mkdir(exist_ok=True)
    prompt = prompts / "triage.yaml"
    prompt.write_text(GATED.replace("REQUIRED", required), encoding="utf-8")
    write(tmp_path, EVAL.replace("  - {type: judge", "  # - {type: judge"))
    return prompts, prompt


def test_requires_eval_must_name_an_eval_of_the_evals_folder(tmp_path):
    prompts, prompt = gated_project(tmp_path, "support-triage-goldne")
    evals = tmp_path / "evals"
    for paths in ([], [prompt]):  # the whole project, or only the prompt file
        with pytest.raises(InvalidPromptFile) as info:
            validate_files(paths, prompts_dir=prompts, evals_dir=evals)
        assert [str(p) for p in info.value.problems] == [
            f"{prompt}:11: experiment.requires_eval: eval 'support-triage-goldne' is not defined in "
            f"{evals} (known: support-triage-golden)"
        ]
    prompt.write_text(GATED.replace("REQUIRED", "support-triage-golden"), encoding="utf-8")
    assert validate_files([], prompts_dir=prompts, evals_dir=evals).evals == 1


def test_requires_eval_is_not_checked_without_evals_or_with_invalid_ones(tmp_path):
    prompts, prompt = gated_project(tmp_path, "nope")
    evals = tmp_path / "evals"
    (evals / "bad.yaml").write_text("name: bad\n", encoding="utf-8")
    with pytest.raises(InvalidEvalFile) as info:
        validate_files([], prompts_dir=prompts, evals_dir=evals)
    assert all("bad.yaml" in str(p) for p in info.value.problems), info.value.problems
    validate_files([prompt], prompts_dir=prompts, evals_dir=tmp_path / "no-evals")
