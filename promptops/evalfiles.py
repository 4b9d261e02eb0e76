"""Eval files (`evals/*.yaml`) and their datasets: schema, `PATH:LINE` validation, content hash.

An eval file names the eval and the prompt it tests, and takes its cases from a JSONL `dataset`
(a path relative to the file) or an inline `cases` list; `assert` applies to every case and a
case's own `assert` adds to it; `threshold` (default 1), `repeat` (default 1) and `gate`
(`min_pass_rate`, `max_regression`) are optional. A dataset line is one case,
`{"id"?, "vars": {...}, "expected"?: ..., "assert"?: [...], "metadata"?: {...}}`; blank lines are
skipped, and a case without an id is named after its position among the cases (`case-3`).

The file is read as YAML nodes (`yamlnodes`: size, encoding, anchors, depth and tags are refused
early) and every problem is reported at once: of the eval file as `EVAL:LINE: message`, of its
dataset as `DATASET:LINE: message`. Unknown assertion types, a missing dataset, duplicate case ids,
a case with no assertion at all, and a `value` template using `expected` in a case that has none
are problems. The cases' variables are checked against the prompt's declared variables by
`variable_problems`, which the caller runs once it has the prompt.

The dataset hash is the SHA-256 of the cases in canonical JSON (ids, vars, expected, metadata and
the cases' own assertions, in order), so it is the same for a JSONL file and the equal inline
list, changes with any case, and ignores formatting.
"""

from __future__ import annotations

import json
import math
import os
import re
import stat
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from .assertions import Assertion, Case
from .assertionschema import parse_assertion, template_fields
from .domain import PromptDefinition, VariableSpec, content_hash, text_problem
from .errors import FileProblem, InvalidEvalFile, InvalidPromptFile
from .promptfiles import NAME_PATTERN, discover, load_named, load_prompt_file, load_prompt_files
from .rendering import value_problem
from .stats.evals import GateRule
from .yamlnodes import BAD, Entries, NodeReader, line_of, plain_problem, present

MAX_DATASET_BYTES = 50_000_000
"""Largest dataset file accepted, in bytes."""

MAX_CASES = 100_000
"""Most cases an eval may have."""

MAX_REPEAT = 100
"""Most repetitions of each case."""

_TOP_KEYS = ("name", "description", "prompt", "dataset", "cases", "assert", "threshold", "repeat", "gate")
_CASE_KEYS = ("id", "vars", "expected", "assert", "metadata")
_GATE_KEYS = ("min_pass_rate", "max_regression")
_EMPTY = "the file is empty; an eval needs name:, prompt:, dataset: or cases:, and assert:"
_NAME_RULE = "lowercase letters, digits, '.', '_', '-'; starting with a letter or digit; max 64"
_MAX_ID_CHARS = 200


@dataclass(frozen=True)
class CaseSource:
    """Where a case is defined: the dataset's (or the eval file's) path and the case's line, and
    for a case written in the eval file, the line of each of its own assertions' `value`."""

    path: str
    line: int
    assertion_lines: tuple[int, ...] = ()

    def assertion_line(self, index: int) -> int:
        """The line of the case's assertion at that index (the case's own line in a dataset)."""
        return self.assertion_lines[index] if index < len(self.assertion_lines) else self.line


@dataclass(frozen=True)
class EvalDefinition:
    """A checked eval file: its cases (with where each comes from), assertions, threshold and gate."""

    name: str
    prompt: str
    path: str
    line: int
    assertions: tuple[Assertion, ...]
    cases: tuple[Case, ...]
    sources: tuple[CaseSource, ...]
    dataset: str | None
    dataset_hash: str
    threshold: float = 1.0
    repeat: int = 1
    gate: GateRule = GateRule()
    description: str | None = None
    assertion_lines: tuple[int, ...] = ()  # the line of each of `assertions`' `value` (or item)

    def assertions_for(self, case: Case) -> tuple[Assertion, ...]:
        """The assertions a case is graded by: the eval's, then the case's own."""
        return self.assertions + case.assertions

    def assertion_line(self, index: int) -> int:
        """The line of the eval's assertion at that index (the file's first line if unknown)."""
        return self.assertion_lines[index] if index < len(self.assertion_lines) else self.line


def _name(value: Any) -> str | None:
    if isinstance(value, str) and NAME_PATTERN.match(value):
        return None
    return f"{value!r} is not a valid name ({_NAME_RULE})"


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value.strip() else "must be a non-empty string"


def _share(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
    return None if ok and 0 <= value <= 1 else f"must be a number from 0 to 1, got {value!r}"


def _repeat(value: Any) -> str | None:
    ok = isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_REPEAT
    return None if ok else f"must be an integer from 1 to {MAX_REPEAT}, got {value!r}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _assertion_lines(node: yaml.Node | None) -> tuple[int, ...]:
    """The line of each item's `value` (else of the item) in a list node of assertions."""
    if not isinstance(node, yaml.SequenceNode):
        return ()
    lines = []
    for item in node.value:
        keys = {k.value: v for k, v in item.value} if isinstance(item, yaml.MappingNode) else {}
        lines.append(line_of(keys.get("value", item)))
    return tuple(lines)


class EvalChecker(NodeReader):
    """Reads one eval file (and its dataset) into an `EvalDefinition`, collecting every problem."""

    def assertions(self, node: yaml.Node, where: str) -> list[Assertion] | None:
        """The assertions of a list node; None after reporting (every item is checked)."""
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"{where}: must be a list of assertions")
            return None
        out: list[Assertion] | None = []
        for i, item in enumerate(node.value):
            data = self.data(item)
            if data is BAD:
                out = None
                continue
            keys = {k.value: v for k, v in item.value} if isinstance(item, yaml.MappingNode) else {}
            assertion, problems = parse_assertion(data)
            for problem in problems:
                at_key = keys.get(problem.key, item) if problem.key is not None else item
                self.err(at_key, f"{where}[{i}]: {problem.message}")
            if assertion is None or out is None:
                out = None
            else:
                out.append(assertion)
        return out

    def case(self, data: Any, *, default_id: str, err: Callable[[str], None]) -> Case | None:
        """One case from plain data (a JSONL line or an inline item); problems go to `err`."""
        if not isinstance(data, Mapping):
            err('a case must be an object with "vars"')
            return None
        ok = True
        for key in data:
            if key not in _CASE_KEYS:
                err(f"unknown key {key!r} in a case (allowed: {', '.join(_CASE_KEYS)})")
                ok = False
        raw_id = data.get("id", default_id)
        if isinstance(raw_id, bool) or not isinstance(raw_id, str | int):
            err(f"id must be a string or an integer, got {raw_id!r}")
            ok = False
        elif not str(raw_id).strip() or len(str(raw_id)) > _MAX_ID_CHARS:
            err(f"id must be a non-empty string of at most {_MAX_ID_CHARS} characters")
            ok = False
        elif (id_problem := plain_problem(raw_id)) is not None:
            err(f"id {id_problem}")
            ok = False
        case_id = str(raw_id)
        variables = data.get("vars")
        if not isinstance(variables, Mapping):
            err('"vars" must be an object' if "vars" in data else 'a case needs "vars" (an object)')
            ok = False
        for key in ("vars", "expected", "metadata"):
            not_plain = plain_problem(data.get(key))
            if not_plain is not None:
                err(f"{key}: {not_plain}")
                ok = False
        metadata = data.get("metadata") or {}
        if not isinstance(metadata, Mapping):
            err('"metadata" must be an object')
            ok = False
        own: list[Assertion] = []
        raw_asserts = data.get("assert") or []
        if not isinstance(raw_asserts, list):
            err('"assert" must be a list of assertions')
            ok = False
            raw_asserts = []
        for i, raw in enumerate(raw_asserts):
            assertion, problems = parse_assertion(raw)
            for problem in problems:
                err(f"assert[{i}]: {problem.message}")
            if assertion is None:
                ok = False
            else:
                own.append(assertion)
        if not ok:
            return None
        return Case(
            id=case_id,
            vars=dict(variables or {}),
            expected=data.get("expected"),
            has_expected="expected" in data,
            metadata=dict(metadata),
            assertions=tuple(own),
        )

    def dataset(
        self, node: yaml.Node, relative: str
    ) -> tuple[list[Case], list[CaseSource], list[Any]] | None:
        """The cases of a JSONL dataset; None after reporting where it cannot be read."""
        path = Path(self.path).parent / relative
        shown = str(path)
        outside = self.outside_folder(relative)
        if outside:
            self.err(node, f"dataset: {relative!r} {outside}")
            return None
        try:
            info = os.stat(path)
            if not stat.S_ISREG(info.st_mode):
                self.err(node, f"dataset: {relative!r} is not a file")
                return None
            if info.st_size > MAX_DATASET_BYTES:
                self.err(node, f"dataset: {relative!r} is larger than {MAX_DATASET_BYTES} bytes")
                return None
            with open(path, "rb") as handle:
                data = handle.read(MAX_DATASET_BYTES + 1)
        except FileNotFoundError:
            self.err(node, f"dataset: {relative!r} not found (looked for {shown})")
            return None
        except OSError as exc:
            self.err(node, f"dataset: cannot read {relative!r}: {(exc.strerror or str(exc)).lower()}")
            return None
        cases: list[Case] = []
        sources: list[CaseSource] = []
        raws: list[Any] = []
        position = 0
        for number, raw_line in enumerate(data.split(b"\n"), 1):
            if not raw_line.strip():
                continue
            position += 1

            def err(message: str, number: int = number) -> None:
                self.problems.append(FileProblem(shown, number, message))

            try:
                text = raw_line.decode("utf-8")
                value = json.loads(text.removeprefix("\ufeff"), parse_constant=_reject_constant)
            except UnicodeDecodeError:
                err("not UTF-8 text")
                continue
            except json.JSONDecodeError as exc:
                err(f"invalid JSON: {exc.msg} (column {exc.colno})")
                continue
            except (ValueError, RecursionError) as exc:
                err(
                    f"invalid JSON: {exc}"
                    if isinstance(exc, ValueError)
                    else "invalid JSON: nested too deeply"
                )
                continue
            case = self.case(value, default_id=f"case-{position}", err=err)
            if case is not None:
                cases.append(case)
                sources.append(CaseSource(shown, number))
                raws.append(value)
            if len(cases) > MAX_CASES:
                err(f"more than {MAX_CASES} cases")
                return None
        if not cases and not any(p.path == shown for p in self.problems):
            self.err(node, f"dataset: {relative!r} has no cases")
        return cases, sources, raws

    def outside_folder(self, relative: str) -> str | None:
        """Why the dataset path leaves the eval file's folder (absolute, `..`, or a symlink that
        resolves outside it), or None: an eval reads its cases from beside it, never from
        elsewhere on the machine, so `../../etc/passwd` is refused before anything is read."""
        folder = Path(self.path).parent
        if text_problem(relative) is not None:
            return "is not a valid path"
        if Path(relative).is_absolute() or Path(relative).drive:
            return f"must be relative to the eval file's folder ({folder}), not absolute"
        try:
            base = folder.resolve()
            target = (folder / relative).resolve()
        except (OSError, RuntimeError, ValueError):  # a symlink loop, an unreadable folder
            return "cannot be resolved"
        if not target.is_relative_to(base):
            return f"is outside the eval file's folder ({folder})"
        return None

    def inline(self, node: yaml.Node) -> tuple[list[Case], list[CaseSource], list[Any]] | None:
        """The cases of an inline `cases` list; None after reporting."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.err(node, "cases: must be a non-empty list of cases")
            return None
        cases: list[Case] = []
        sources: list[CaseSource] = []
        raws: list[Any] = []
        for i, item in enumerate(node.value, 1):
            value = self.data(item)
            if value is BAD:
                continue

            def err(message: str, item: yaml.Node = item, i: int = i) -> None:
                self.err(item, f"cases[{i - 1}]: {message}")

            case = self.case(value, default_id=f"case-{i}", err=err)
            if case is not None:
                cases.append(case)
                keys = {k.value: v for k, v in item.value} if isinstance(item, yaml.MappingNode) else {}
                sources.append(CaseSource(self.path, line_of(item), _assertion_lines(keys.get("assert"))))
                raws.append(value)
        return cases, sources, raws

    def gate(self, entries: Entries) -> GateRule | None:
        """The `gate` mapping, or None after reporting."""
        node = present(entries, "gate")
        if node is None:
            return GateRule()
        gate = self.mapping(node, "gate", _GATE_KEYS)
        if gate is None:
            return None
        low = self.field(gate, "min_pass_rate", "gate", _share)
        margin = self.field(gate, "max_regression", "gate", _share)
        if low is BAD or margin is BAD:
            return None
        return GateRule(
            min_pass_rate=None if low is None else float(low),
            max_regression=None if margin is None else float(margin),
        )

    def cross_checks(
        self, cases: Sequence[Case], sources: Sequence[CaseSource], common: Sequence[Assertion]
    ) -> None:
        """Ids are unique, every case has an assertion, and `expected` exists where a template uses it."""
        first: dict[str, CaseSource] = {}
        common_expected = [a for a in common if "expected" in template_fields(a)]
        for case, source in zip(cases, sources, strict=True):

            def err(message: str, source: CaseSource = source) -> None:
                self.problems.append(FileProblem(source.path, source.line, message))

            if case.id in first:
                err(f"duplicate case id {case.id!r} (first at line {first[case.id].line})")
            else:
                first[case.id] = source
            if not common and not case.assertions:
                err(f"case {case.id!r} has no assertion (add assert: to the eval or to the case)")
            if not case.has_expected:
                users = common_expected + [a for a in case.assertions if "expected" in template_fields(a)]
                if users:
                    err(f"case {case.id!r} has no expected, but its {users[0].type} assertion uses it")

    def definition(self, root: yaml.Node) -> EvalDefinition | None:
        """The eval of a file's root node, or None after reporting every problem."""
        self.scan(root)
        entries = self.mapping(root, "", _TOP_KEYS, required=("name", "prompt"))
        if entries is None:
            return None
        name = self.field(entries, "name", "", _name, BAD)
        prompt = self.field(entries, "prompt", "", _name, BAD)
        description = self.field(entries, "description", "", _text)
        threshold = self.field(entries, "threshold", "", _share, 1.0)
        repeat = self.field(entries, "repeat", "", _repeat, 1)
        gate = self.gate(entries)
        common_node = present(entries, "assert")
        common = [] if common_node is None else self.assertions(common_node, "assert")
        dataset_node, cases_node = present(entries, "dataset"), present(entries, "cases")
        loaded = None
        relative = None
        if dataset_node is not None and cases_node is not None:
            self.err(entries["cases"][0], "give either dataset: or cases:, not both")
        elif dataset_node is not None:
            relative = self.read(dataset_node, "dataset", _text)
            if relative is not BAD:
                loaded = self.dataset(dataset_node, relative)
        elif cases_node is not None:
            loaded = self.inline(cases_node)
        else:
            self.err(root, "an eval needs dataset: (a JSONL file beside it) or cases:")
        if loaded is not None and common is not None:
            self.cross_checks(loaded[0], loaded[1], common)
        if self.problems or loaded is None or common is None or gate is None:
            return None
        cases, sources, raws = loaded
        return EvalDefinition(
            name=name,
            prompt=prompt,
            path=self.path,
            line=line_of(root),
            assertions=tuple(common),
            cases=tuple(cases),
            sources=tuple(sources),
            dataset=None if relative is None else str(Path(self.path).parent / relative),
            dataset_hash=content_hash(_canonical(cases, raws)),
            threshold=float(threshold),
            repeat=int(repeat),
            gate=gate,
            description=description,
            assertion_lines=_assertion_lines(common_node),
        )


def _canonical(cases: Sequence[Case], raws: Sequence[Any]) -> list[dict[str, Any]]:
    out = []
    for case, raw in zip(cases, raws, strict=True):
        item: dict[str, Any] = {"id": case.id, "vars": raw.get("vars") or {}}
        for key in ("expected", "metadata", "assert"):
            if key in raw:
                item[key] = raw[key]
        out.append(item)
    return out


def _check(checker: EvalChecker, root: yaml.Node | None) -> EvalDefinition:
    definition = checker.definition(root) if root is not None else None
    if definition is None or checker.problems:
        raise InvalidEvalFile(checker.sorted_problems() or [FileProblem(checker.path, 1, "invalid eval")])
    return definition


def parse_eval_text(text: str | bytes, *, path: str) -> EvalDefinition:
    """Parse and validate one eval file's text (its dataset is read relative to `path`)."""
    checker = EvalChecker(path)
    return _check(checker, checker.load_text(text, empty=_EMPTY))


def load_eval_file(path: str | Path) -> EvalDefinition:
    """Read, parse and validate one eval file and its dataset; raises InvalidEvalFile."""
    checker = EvalChecker(str(path))
    return _check(checker, checker.load_file(path, empty=_EMPTY))


def load_eval_files(paths: Sequence[str | Path]) -> list[EvalDefinition]:
    """Every eval under the paths (directories: their *.yaml), by name; one error lists all problems."""
    problems: list[FileProblem] = []
    try:
        files = discover(paths, suffixes=(".yaml", ".yml"))
    except InvalidPromptFile as exc:
        raise InvalidEvalFile(exc.problems) from None
    found = load_named(files, load_eval_file, kind="eval", problems=problems)
    if problems:
        raise InvalidEvalFile(problems)
    return found


def variable_problems(definition: EvalDefinition, variables: Sequence[VariableSpec]) -> list[FileProblem]:
    """Each case's vars checked against the prompt's declared variables, as `PATH:LINE` problems."""
    declared = {spec.name: spec for spec in variables}
    known = ", ".join(declared) or "none"
    problems: list[FileProblem] = []
    for case, source in zip(definition.cases, definition.sources, strict=True):

        def err(message: str, source: CaseSource = source, case: Case = case) -> None:
            problems.append(FileProblem(source.path, source.line, f"case {case.id!r}: {message}"))

        for name in case.vars:
            if name not in declared:
                err(f"vars.{name} is not declared by prompt {definition.prompt!r} (declared: {known})")
        for spec in variables:
            value = case.vars.get(spec.name)
            if value is None:
                if spec.required:
                    err(f"vars.{spec.name} is required by prompt {definition.prompt!r}")
                continue
            problem = value_problem(spec, value)
            if problem is not None:
                err(f"vars.{spec.name} {problem}")
    return problems


_VARS_REF = re.compile(r"""\bvars\s*(?:\.\s*([A-Za-z_]\w*)|\[\s*['"]([^'"]+)['"]\s*\])""")
_EVAL_KEY = re.compile(r"^prompt\s*:", re.MULTILINE)
_PROMPT_KEY = re.compile(r"^(messages|template)\s*:", re.MULTILINE)


def looks_like_eval(path: str | Path) -> bool:
    """Whether a file found among prompt files is an eval file (it names a `prompt:`, no content)."""
    try:
        text = Path(path).read_text(encoding="utf-8", errors="replace")[:MAX_DATASET_BYTES]
    except OSError:
        return False
    if str(path).endswith(".json"):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # the prompt file loader reports what is wrong
            return False
        return (
            isinstance(data, Mapping) and "prompt" in data and not ("messages" in data or "template" in data)
        )
    return bool(_EVAL_KEY.search(text)) and not _PROMPT_KEY.search(text)


def prompt_problems(definition: EvalDefinition, variables: Sequence[VariableSpec]) -> list[FileProblem]:
    """The eval checked against its prompt: each case's vars, and `vars.NAME` in value templates."""
    problems = variable_problems(definition, variables)
    declared = {spec.name for spec in variables}
    reported: set[tuple[str, str]] = set()

    def check(assertion: Assertion, path: str, line: int, where: str) -> None:
        # Reported at the template's own line, once per place and name.
        if "vars" not in template_fields(assertion):
            return
        for match in _VARS_REF.finditer(str(assertion.value)):
            name = match.group(1) or match.group(2)
            if name not in declared and (where, name) not in reported:
                reported.add((where, name))
                problems.append(
                    FileProblem(
                        path,
                        line,
                        f"{where}: the value template uses vars.{name}, "
                        f"which prompt {definition.prompt!r} does not declare",
                    )
                )

    for i, assertion in enumerate(definition.assertions):
        check(assertion, definition.path, definition.assertion_line(i), f"assert[{i}]")
    for case, source in zip(definition.cases, definition.sources, strict=True):
        for i, assertion in enumerate(case.assertions):
            check(assertion, source.path, source.assertion_line(i), f"case {case.id!r}: assert[{i}]")
    return problems


@dataclass(frozen=True)
class ValidationReport:
    """How many prompt and eval files `validate_files` found valid."""

    prompts: int
    evals: int


def _prompt_definitions(folder: Path) -> dict[str, PromptDefinition]:
    # The prompts folder only lends eval files their prompts here: its own problems are not ours.
    found: dict[str, PromptDefinition] = {}
    try:
        files = discover([folder]) if folder.is_dir() else []
    except InvalidPromptFile:
        return found
    for file in files:
        if looks_like_eval(file):
            continue
        try:
            definition = load_prompt_file(file)
        except InvalidPromptFile:
            continue
        found.setdefault(definition.name, definition)
    return found


def unknown_eval_problem(name: str, known: Collection[str], folder: str | Path) -> str | None:
    """Why `requires_eval: name` names no eval of a valid evals folder (its eval names are
    `known`), or None when it is one of them."""
    if name in known:
        return None
    listed = ", ".join(sorted(known)) if known else "none"
    return f"eval {name!r} is not defined in {folder} (known: {listed})"


def _requires_eval_line(d: PromptDefinition) -> int:
    # The definition keeps the line of its name only; the file is read again for the key's line
    # (only when there is a problem to report).
    reader = NodeReader(d.path)
    root = reader.load_file(d.path, empty="") if d.path and os.path.isfile(d.path) else None
    for key, value in root.value if isinstance(root, yaml.MappingNode) else ():
        if key.value == "experiment" and isinstance(value, yaml.MappingNode):
            for inner, node in value.value:
                if inner.value == "requires_eval":
                    return line_of(node)
    return d.line


def requires_eval_problems(
    prompts: Sequence[PromptDefinition], known: Collection[str] | None, folder: str | Path
) -> list[FileProblem]:
    """A `PATH:LINE` problem for each prompt whose experiment requires an eval that the evals
    folder does not define. `known` is None when that cannot be told (no evals folder, or one
    with invalid files, whose problems are reported on their own): nothing is reported then."""
    problems = []
    for d in prompts:
        name = d.experiment.requires_eval if d.experiment is not None else None
        problem = None if name is None or known is None else unknown_eval_problem(name, known, folder)
        if problem:
            problems.append(
                FileProblem(d.path, _requires_eval_line(d), f"experiment.requires_eval: {problem}")
            )
    return problems


def _known_evals(
    eval_files: Sequence[str | Path], evals: Sequence[EvalDefinition] | None, evals_dir: Path
) -> set[str] | None:
    # The evals a prompt may require: those validated here and those of the evals folder. None
    # (nothing to check against) when they cannot be read, their problems being reported on
    # their own, or when there are neither eval files nor an evals folder.
    if evals is None:
        return None
    names = {d.name for d in evals}
    if any(Path(f) == Path(evals_dir) for f in eval_files):
        return names
    if not Path(evals_dir).is_dir():
        return names if eval_files else None
    try:
        return names | {d.name for d in load_eval_files([evals_dir])}
    except InvalidEvalFile:
        return None


def validate_files(paths: Sequence[str | Path], *, prompts_dir: Path, evals_dir: Path) -> ValidationReport:
    """Check prompt and eval files together, every problem at once (InvalidPromptFile lists them).

    With no paths: the prompts folder and the evals folder (when it exists). Given paths, each
    file is a prompt file or an eval file by its keys. Eval files are also checked against their
    prompt (from the given files, else from the prompts folder): the prompt exists, the cases'
    variables are declared and of the declared types, and value templates use declared `vars`.
    A prompt's `requires_eval` must name an eval of the given files or of the evals folder.
    """
    problems: list[FileProblem] = []
    if paths:
        try:
            files = discover(paths)
        except InvalidPromptFile as exc:
            raise InvalidPromptFile(exc.problems) from None
        eval_files = [f for f in files if looks_like_eval(f)]
        prompt_files = [f for f in files if f not in eval_files]
    else:
        prompt_files = [prompts_dir]
        eval_files = [evals_dir] if evals_dir.is_dir() else []
    prompts: list[PromptDefinition] = []
    if prompt_files:
        try:
            prompts = load_prompt_files(prompt_files)
        except InvalidPromptFile as exc:
            problems.extend(exc.problems)
    evals: list[EvalDefinition] = []
    loaded: list[EvalDefinition] | None = evals
    if eval_files:
        try:
            evals = loaded = load_eval_files(eval_files)
        except InvalidEvalFile as exc:
            problems.extend(exc.problems)
            loaded = None
    problems.extend(requires_eval_problems(prompts, _known_evals(eval_files, loaded, evals_dir), evals_dir))
    known = {p.name: p for p in prompts}
    if any(d.prompt not in known for d in evals):
        known = {**_prompt_definitions(prompts_dir), **known}
    for d in evals:
        prompt = known.get(d.prompt)
        if prompt is None:
            problems.append(
                FileProblem(
                    d.path, d.line, f"prompt {d.prompt!r} is not defined in the prompt files ({prompts_dir})"
                )
            )
        else:
            problems.extend(prompt_problems(d, prompt.content.variables))
    if problems:
        raise InvalidEvalFile(sorted(problems, key=lambda p: (p.path, p.line)))
    return ValidationReport(len(prompts), len(evals))
