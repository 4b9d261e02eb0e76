"""YAML prompt files: discovery, parsing and validation with `PATH:LINE: message` problems.

A file is composed into YAML nodes first (so every problem can name the line of its node), checked by
hand against the format of CONTRACT.md, and only then turned into `domain.PromptDefinition`. Every
problem of a file is reported at once. Hostile input is refused early: files over `MAX_FILE_BYTES`
(checked before reading), invalid UTF-8, NUL bytes, YAML anchors and aliases (so no "billion laughs"),
nesting deeper than `MAX_DEPTH`, and any YAML tag beyond plain data.

Variants override `messages`/`template` and `model`. A variant's `model` is merged over the main
`model` key by key (a key set to null in the variant removes it); a variant's `description` is only
documentation. Every variant carries the main prompt's variables.
"""

from __future__ import annotations

import difflib
import keyword
import math
import os
import re
import stat
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import yaml

from .domain import (
    MAIN_VARIANT,
    VARIABLE_TYPES,
    ExperimentSpec,
    Message,
    Policy,
    PromptContent,
    PromptDefinition,
    VariableSpec,
)
from .errors import FileProblem, InvalidPromptFile, RenderError
from .rendering import TemplateSyntaxProblem, template_names, value_problem

MAX_FILE_BYTES = 1_000_000
"""Largest prompt file accepted, in bytes."""

MAX_DEPTH = 50
"""Deepest YAML nesting accepted."""

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""Names of prompts and variants: lowercase letters, digits, '.', '_', '-'; at most 64 characters."""

ROLES = ("system", "user", "assistant", "tool")
"""Chat message roles."""

_METRIC = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9._-]{0,63}$")
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Jinja literals and names with a meaning of their own inside templates cannot be variables.
_RESERVED_NAMES = frozenset({"true", "false", "none", "loop", "self", "caller", "varargs", "kwargs"})
_TOP_KEYS = ("name", "description", "tags", "model", "variables", "messages", "template",
             "variants", "experiment")
_VARIABLE_KEYS = ("type", "required", "default", "enum", "max_length", "description")
_VARIANT_KEYS = ("messages", "template", "model", "description")
_MESSAGE_KEYS = ("role", "content")
_EXPERIMENT_KEYS = ("metric", "reward", "arms", "strategy", "weights", "auto_promote", "status",
                    "policy")
_CHOICES = {
    "reward": ("binary", "continuous"),
    "strategy": ("thompson", "fixed"),
    "status": ("draft", "running"),
    "allocation": ("top_two", "thompson"),
    "missing_feedback": ("zero", "ignore"),
}
# Ranges of the policy settings: (low, low inclusive, high, high inclusive); None is unbounded.
_POLICY_RANGES: dict[str, tuple[float | None, bool, float | None, bool]] = {
    "attribution_window_hours": (0, True, None, False),
    "min_samples_per_arm": (1, True, None, False),
    "min_hours": (0, True, None, False),
    "top_two_beta": (0, False, 1, True),
    "floor": (0, True, 1, False),
    "draws": (1, True, None, False),
    "update_every": (1, True, None, False),
    "min_update_minutes": (0, True, None, False),
    "max_decisions": (1, True, None, False),
    "max_days": (0, False, None, False),
    "max_checks": (1, True, None, False),
    "alpha": (0, False, 1, False),
    "loss_threshold": (0, False, None, False),
    "control_p_best": (0, False, 1, False),
    "srm_p_value": (0, False, 1, False),
    "prior_strength": (0, False, None, False),
}
_YAML = "tag:yaml.org,2002:"
_DATA_TAGS = frozenset(_YAML + t for t in ("str", "int", "float", "bool", "null", "seq", "map",
                                          "timestamp"))
_KINDS = {"str": "a string", "int": "an integer", "float": "a number", "bool": "a boolean",
          "null": "null", "timestamp": "a date"}
_BAD = object()  # a value that could not be built; its problem is already recorded


class _Refused(Exception):
    """Composition stopped on purpose (anchor, alias, nesting)."""

    def __init__(self, line: int, message: str) -> None:
        super().__init__(message)
        self.line = line
        self.message = message


class _Loader(yaml.SafeLoader):
    """SafeLoader that refuses anchors and aliases and caps nesting while composing."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        line = event.start_mark.line + 1
        # Refusing anchors outright (not only expanding aliases lazily) makes alias bombs impossible.
        if isinstance(event, yaml.AliasEvent) or getattr(event, "anchor", None) is not None:
            raise _Refused(line, "YAML anchors and aliases are not allowed")
        if self._depth >= MAX_DEPTH:
            raise _Refused(line, f"nesting deeper than {MAX_DEPTH} levels")
        self._depth += 1
        try:
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1


def _at(where: str, message: str) -> str:
    return f"{where}: {message}" if where else message


def _line(node: yaml.Node) -> int:
    return node.start_mark.line + 1


def _kind(node: yaml.Node) -> str:
    if isinstance(node, yaml.MappingNode):
        return "a mapping"
    if isinstance(node, yaml.SequenceNode):
        return "a list"
    return _KINDS.get(node.tag.removeprefix(_YAML), node.tag)


def _is_null(node: yaml.Node | None) -> bool:
    return node is None or (isinstance(node, yaml.ScalarNode) and node.tag == _YAML + "null")


def _plain_problem(value: Any, depth: int = 0) -> str | None:
    """Why a value is not plain JSON-like data, or None."""
    if value is None or isinstance(value, str | bool | int):
        return None
    if isinstance(value, float):
        return None if math.isfinite(value) else "must not contain .nan or .inf"
    if isinstance(value, list):
        return next((p for v in value if (p := _plain_problem(v, depth + 1))), None)
    if isinstance(value, dict):
        if any(not isinstance(k, str) for k in value):
            return "mapping keys must be strings"
        return next((p for v in value.values() if (p := _plain_problem(v, depth + 1))), None)
    return f"must be plain data, got {type(value).__name__} {value!s}; quote it to make it a string"


def _template_line(node: yaml.Node, lineno: int) -> int:
    # In a block scalar (| or >) template line 1 is the line after the indicator.
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        return node.start_mark.line + 1 + lineno
    return _line(node)


class _Checker:
    """Validates one composed file, collecting every problem."""

    def __init__(self, path: str, loader: _Loader) -> None:
        self.path = path
        self.loader = loader
        self.problems: list[FileProblem] = []
        self.templates: list[tuple[yaml.Node, str, str]] = []
        self.tag_lines: set[int] = set()
        self.variant_names: set[str] = set()
        self.declared: set[str] = set()

    def err(self, node: yaml.Node | int, message: str) -> None:
        line = node if isinstance(node, int) else _line(node)
        # A node with an unsupported tag is reported once; what follows from it would be noise.
        if line not in self.tag_lines:
            self.problems.append(FileProblem(self.path, line, message))

    def scan(self, root: yaml.Node) -> None:
        """Report tags beyond plain data and duplicate mapping keys anywhere in the document."""
        stack = [root]
        while stack:
            node = stack.pop()
            if node.tag == _YAML + "merge":
                self.err(node, "merge keys ('<<') are not supported")
                self.tag_lines.add(_line(node))
            elif node.tag not in _DATA_TAGS:
                self.err(node, f"unsupported YAML tag {node.tag.replace(_YAML, '!!')!r}")
                self.tag_lines.add(_line(node))
            if isinstance(node, yaml.MappingNode):
                seen: dict[tuple[str, str], int] = {}
                for key, value in node.value:
                    if isinstance(key, yaml.ScalarNode):
                        ident = (key.tag, key.value)
                        if ident in seen:
                            self.err(key, f"duplicate key {key.value!r} (first at line {seen[ident]})")
                        else:
                            seen[ident] = _line(key)
                    stack.extend((key, value))
            elif isinstance(node, yaml.SequenceNode):
                stack.extend(node.value)

    def data(self, node: yaml.Node) -> Any:
        """The plain Python value of a node, or _BAD after reporting."""
        try:
            return self.loader.construct_object(node, deep=True)
        except yaml.MarkedYAMLError as exc:
            mark = exc.problem_mark or node.start_mark
            self.err(mark.line + 1, f"invalid YAML: {exc.problem}")
        except (yaml.YAMLError, TypeError, ValueError) as exc:
            self.err(node, f"invalid value: {' '.join(str(exc).split())}")
        return _BAD

    def mapping(
        self, node: yaml.Node, where: str, allowed: Sequence[str] | None
    ) -> dict[str, tuple[yaml.Node, yaml.Node]] | None:
        """The string-keyed entries of a mapping node (first of duplicates), reporting unknown keys."""
        if not isinstance(node, yaml.MappingNode):
            self.err(node, _at(where, f"must be a mapping, got {_kind(node)}"))
            return None
        out: dict[str, tuple[yaml.Node, yaml.Node]] = {}
        for key, value in node.value:
            if not (isinstance(key, yaml.ScalarNode) and key.tag == _YAML + "str"):
                self.err(key, _at(where, f"keys must be strings, got {_kind(key)}"))
                continue
            if allowed is not None and key.value not in allowed:
                hint = difflib.get_close_matches(key.value, allowed, n=1)
                extra = f" (did you mean {hint[0]!r}?)" if hint else ""
                self.err(key, _at(where, f"unknown key {key.value!r}{extra}"))
                continue
            out.setdefault(key.value, (key, value))
        return out

    def scalar(self, node: yaml.Node, where: str, kind: str) -> Any:
        """A scalar of one type ('str', 'bool', 'int', 'number'), or _BAD after reporting."""
        value = self.data(node) if isinstance(node, yaml.ScalarNode) else None
        if value is _BAD:
            return _BAD
        ok = {
            "str": isinstance(value, str),
            "bool": isinstance(value, bool),
            "int": isinstance(value, int) and not isinstance(value, bool),
            "number": isinstance(value, int | float) and not isinstance(value, bool)
            and math.isfinite(value),
        }[kind]
        if not ok:
            wanted = {"str": "a string", "bool": "true or false", "int": "an integer",
                      "number": "a number"}[kind]
            self.err(node, _at(where, f"must be {wanted}, got {_kind(node)}"))
            return _BAD
        return value

    def choice(self, node: yaml.Node, where: str, choices: Sequence[str]) -> Any:
        """A string among fixed choices, or _BAD after reporting."""
        value = self.data(node) if isinstance(node, yaml.ScalarNode) else None
        if value is _BAD:
            return _BAD
        if not isinstance(value, str) or value not in choices:
            self.err(node, _at(where, f"must be one of {', '.join(choices)}"))
            return _BAD
        return value

    def string_list(self, node: yaml.Node, where: str) -> list[str] | None:
        """A list of strings, or None after reporting."""
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, _at(where, f"must be a list, got {_kind(node)}"))
            return None
        items = [self.scalar(item, f"{where}[{i}]", "str") for i, item in enumerate(node.value)]
        return None if _BAD in items else items

    def model(self, node: yaml.Node | None, where: str) -> dict[str, Any] | None:
        """A free-form model mapping of plain data ({} when absent), or None after reporting."""
        if _is_null(node):
            return {}
        assert node is not None
        if self.mapping(node, where, None) is None:
            return None
        value = self.data(node)
        if value is _BAD:
            return None
        problem = _plain_problem(value)
        if problem:
            self.err(node, _at(where, problem))
            return None
        return value

    def messages(self, node: yaml.Node, where: str) -> tuple[Message, ...] | None:
        """Chat messages; their contents are queued for template checks."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            got = "an empty list" if isinstance(node, yaml.SequenceNode) else _kind(node)
            self.err(node, _at(where, f"must be a non-empty list of {{role, content}}, got {got}"))
            return None
        out: list[Message] = []
        for i, item in enumerate(node.value):
            at = f"{where}[{i}]"
            entries = self.mapping(item, at, _MESSAGE_KEYS)
            if entries is None:
                continue
            for key in _MESSAGE_KEYS:
                if key not in entries:
                    self.err(item, _at(at, f"missing required key {key!r}"))
            role = self.choice(entries["role"][1], f"{at}.role", ROLES) if "role" in entries else _BAD
            content = _BAD
            if "content" in entries:
                content_node = entries["content"][1]
                content = self.scalar(content_node, f"{at}.content", "str")
                if content is not _BAD:
                    self.templates.append((content_node, f"{at}.content", content))
            if role is not _BAD and content is not _BAD:
                out.append(Message(role, content))
        return tuple(out) if len(out) == len(node.value) else None

    def template(self, node: yaml.Node, where: str) -> str | None:
        """A text template, queued for template checks."""
        value = self.scalar(node, where, "str")
        if value is _BAD:
            return None
        self.templates.append((node, where, value))
        return value

    def body(
        self, entries: dict[str, tuple[yaml.Node, yaml.Node]], prefix: str
    ) -> tuple[bool, tuple[Message, ...] | None, str | None]:
        """Messages XOR template of the main prompt or a variant: (given, messages, template)."""
        if "messages" in entries and "template" in entries:
            where = prefix.rstrip(".")
            self.err(entries["template"][0], _at(where, "use either messages or template, not both"))
            return True, None, None
        if "messages" in entries:
            return True, self.messages(entries["messages"][1], f"{prefix}messages"), None
        if "template" in entries:
            return True, None, self.template(entries["template"][1], f"{prefix}template")
        return False, None, None

    def variables(self, node: yaml.Node | None) -> list[VariableSpec] | None:
        """Declared variables in order, or None if any is invalid."""
        if _is_null(node):
            return []
        assert node is not None
        entries = self.mapping(node, "variables", None)
        if entries is None:
            return None
        self.declared.update(entries)
        specs: list[VariableSpec] = []
        ok = True
        for name, (key, value) in entries.items():
            if not _IDENTIFIER.match(name) or keyword.iskeyword(name) or name in _RESERVED_NAMES:
                self.err(key, f"variables: {name!r} is not a valid variable name (letters, digits "
                              "and '_', not starting with a digit, not a keyword)")
                ok = False
                continue
            spec = self.variable(name, value)
            ok = ok and spec is not None
            if spec is not None:
                specs.append(spec)
        return specs if ok else None

    def variable(self, name: str, node: yaml.Node) -> VariableSpec | None:
        """One variable spec: a mapping, a bare type name, or null (an optional string)."""
        where = f"variables.{name}"
        if _is_null(node):
            return VariableSpec(name)
        if isinstance(node, yaml.ScalarNode):
            kind = self.choice(node, where, VARIABLE_TYPES)
            return None if kind is _BAD else VariableSpec(name, type=kind)
        entries = self.mapping(node, where, _VARIABLE_KEYS)
        if entries is None:
            return None
        before = len(self.problems)
        get = {k: v for k, (_, v) in entries.items()}
        kind = self.choice(get["type"], f"{where}.type", VARIABLE_TYPES) if "type" in get else "string"
        required = self.scalar(get["required"], f"{where}.required", "bool") if "required" in get \
            else False
        description = None
        if "description" in get and not _is_null(get["description"]):
            description = self.scalar(get["description"], f"{where}.description", "str")
        max_length = None
        if "max_length" in get:
            max_length = self.scalar(get["max_length"], f"{where}.max_length", "int")
            if max_length is not _BAD and max_length < 1:
                self.err(get["max_length"], f"{where}.max_length: must be at least 1")
            elif max_length is not _BAD and kind not in ("string", "list", _BAD):
                self.err(get["max_length"],
                         f"{where}.max_length: applies only to string and list variables")
        if len(self.problems) > before:
            return None
        enum = None
        if "enum" in get:
            enum = self.enum(get["enum"], f"{where}.enum", VariableSpec(name, type=kind))
            if enum is None:
                return None
        spec = VariableSpec(name, type=kind, required=required, enum=enum, max_length=max_length,
                            description=description)
        if "default" in get and not _is_null(get["default"]):
            dnode = get["default"]
            default = self.data(dnode)
            if default is _BAD:
                return None
            problem = _plain_problem(default) or value_problem(spec, default)
            if required:
                problem = "a required variable cannot have a default"
            if problem:
                self.err(dnode, f"{where}.default: {problem}")
                return None
            spec = VariableSpec(name, type=kind, required=False, default=default, has_default=True,
                                enum=enum, max_length=max_length, description=description)
        return spec

    def enum(self, node: yaml.Node, where: str, spec: VariableSpec) -> tuple[Any, ...] | None:
        """Allowed values of a scalar variable, each of its type and unique."""
        if spec.type in ("list", "object"):
            self.err(node, f"{where}: applies only to string, integer, number and boolean variables")
            return None
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.err(node, f"{where}: must be a non-empty list, got {_kind(node)}")
            return None
        values: list[Any] = []
        for i, item in enumerate(node.value):
            value = self.data(item)
            if value is _BAD:
                return None
            problem = value_problem(spec, value)
            if problem is None and any(value == v and type(value) is type(v) for v in values):
                problem = f"duplicate value {value!r}"
            if problem:
                self.err(item, f"{where}[{i}]: {problem}")
                return None
            values.append(value)
        return tuple(values)

    def check_templates(self, declared: set[str]) -> None:
        """Every queued template compiles and uses only declared variables."""
        for node, where, source in self.templates:
            try:
                names = template_names(source)
            except TemplateSyntaxProblem as exc:
                self.err(_template_line(node, exc.lineno), f"{where}: template syntax error: "
                                                          f"{exc.detail}")
                continue
            except RenderError as exc:
                self.err(node, f"{where}: {exc.message}")
                continue
            for name in sorted(names - declared):
                self.err(node, f"{where} uses undeclared variable {name!r}")

    def experiment(self, node: yaml.Node, arms_allowed: set[str]) -> ExperimentSpec | None:
        """The declared experiment, or None after reporting."""
        entries = self.mapping(node, "experiment", _EXPERIMENT_KEYS)
        if entries is None:
            return None
        before = len(self.problems)
        get = {k: v for k, (_, v) in entries.items()}
        fields: dict[str, Any] = {}
        for key in ("reward", "strategy", "status"):
            if key in get:
                fields[key] = self.choice(get[key], f"experiment.{key}", _CHOICES[key])
        if "metric" in get:
            metric = fields["metric"] = self.scalar(get["metric"], "experiment.metric", "str")
            if metric is not _BAD and not _METRIC.match(metric):
                self.err(get["metric"], "experiment.metric: must be 1-64 letters, digits, '.', "
                                        "'_' or '-'")
        if "auto_promote" in get:
            fields["auto_promote"] = self.scalar(get["auto_promote"], "experiment.auto_promote",
                                                 "bool")
        arms = self.arms(get.get("arms"), node, arms_allowed)
        strategy = fields.get("strategy", "thompson")
        if "weights" in get:
            fields["weights"] = self.weights(get["weights"], arms)
            if strategy == "thompson":
                self.err(get["weights"], "experiment.weights: apply only to strategy: fixed")
        elif strategy == "fixed":
            self.err(get["strategy"], "experiment: strategy fixed needs weights")
        policy = self.policy(get["policy"]) if "policy" in get else Policy()
        if len(self.problems) > before or arms is None or policy is None:
            return None
        return ExperimentSpec(arms=tuple(arms), policy=policy, **fields)

    def arms(self, node: yaml.Node | None, parent: yaml.Node, allowed: set[str]) -> list[str] | None:
        """At least two unique arms, each `main` or a declared variant."""
        if node is None:
            self.err(parent, "experiment: missing required key 'arms'")
            return None
        arms = self.string_list(node, "experiment.arms")
        if arms is None:
            return None
        if len(arms) < 2:
            self.err(node, "experiment.arms: at least two arms are needed")
        known = ", ".join(sorted(allowed))
        for i, arm in enumerate(arms):
            if arm not in allowed:
                self.err(node.value[i], f"experiment.arms[{i}]: {arm!r} is not main or a declared "
                                        f"variant (known: {known})")
            elif arm in arms[:i]:
                self.err(node.value[i], f"experiment.arms[{i}]: duplicate arm {arm!r}")
        return arms

    def weights(self, node: yaml.Node, arms: list[str] | None) -> tuple[float, ...] | Any:
        """Fixed allocation weights: non-negative numbers, one per arm, summing to 1."""
        if not isinstance(node, yaml.SequenceNode):
            self.err(node, f"experiment.weights: must be a list, got {_kind(node)}")
            return _BAD
        values = [self.scalar(v, f"experiment.weights[{i}]", "number")
                  for i, v in enumerate(node.value)]
        if _BAD in values:
            return _BAD
        if any(v < 0 for v in values):
            self.err(node, "experiment.weights: must not be negative")
        elif abs(sum(values) - 1.0) > 1e-3:
            self.err(node, f"experiment.weights: must sum to 1, got {sum(values):g}")
        if arms is not None and len(values) != len(arms):
            self.err(node, f"experiment.weights: {len(values)} weights for {len(arms)} arms")
        return tuple(float(v) for v in values)

    def policy(self, node: yaml.Node) -> Policy | None:
        """Policy overrides: known settings with values of the right type and range."""
        entries = self.mapping(node, "experiment.policy", Policy.field_names())
        if entries is None:
            return None
        defaults = Policy()
        values: dict[str, Any] = {}
        for name, (_, vnode) in entries.items():
            where = f"experiment.policy.{name}"
            if name in _CHOICES:
                if name == "missing_feedback" and _is_null(vnode):
                    values[name] = None
                    continue
                value = self.choice(vnode, where, _CHOICES[name])
            elif isinstance(getattr(defaults, name), int):
                value = self.scalar(vnode, where, "int")
            else:
                value = self.scalar(vnode, where, "number")
                value = value if value is _BAD else float(value)
            if value is _BAD:
                continue
            if name in _POLICY_RANGES and not _in_range(value, *_POLICY_RANGES[name]):
                self.err(vnode, f"{where}: must be {_describe_range(*_POLICY_RANGES[name])}")
                continue
            values[name] = value
        if len(values) != len(entries):
            return None
        return defaults.with_overrides(values)


    def variants(
        self, node: yaml.Node | None, main_form: str | None, main_model: dict[str, Any]
    ) -> dict[str, tuple[tuple[Message, ...] | None, str | None, dict[str, Any]]] | None:
        """Valid variants as (messages, template, merged model); None for content inherited."""
        if _is_null(node):
            return {}
        assert node is not None
        entries = self.mapping(node, "variants", None)
        if entries is None:
            return None
        out: dict[str, tuple[tuple[Message, ...] | None, str | None, dict[str, Any]]] = {}
        for vname, (key, value) in entries.items():
            if vname == MAIN_VARIANT:
                self.err(key, "variants: 'main' is reserved for the top-level prompt")
                continue
            if not NAME_PATTERN.match(vname):
                self.err(key, f"variants: {vname!r} is not a valid variant name ({_NAME_RULE})")
                continue
            self.variant_names.add(vname)
            where = f"variants.{vname}"
            ventries = self.mapping(value, where, _VARIANT_KEYS)
            if ventries is None:
                continue
            before = len(self.problems)
            given, messages, template = self.body(ventries, f"{where}.")
            form = next((f for f in ("messages", "template") if f in ventries), None)
            if given and main_form and form != main_form and len(self.problems) == before:
                self.err(ventries[form or "messages"][0], f"{where}.{form}: the main prompt uses "
                                                          f"{main_form}; a variant keeps that form")
            if not given and "model" not in ventries:
                self.err(value, f"{where}: must override messages, template or model")
            override = self.model(ventries["model"][1], f"{where}.model") \
                if "model" in ventries else {}
            if "description" in ventries and not _is_null(ventries["description"][1]):
                self.scalar(ventries["description"][1], f"{where}.description", "str")
            if len(self.problems) > before or override is None:
                continue
            # Replace-by-key merge over the main model; a null in the variant removes the key.
            merged = {k: v for k, v in {**main_model, **override}.items()
                      if not (k in override and override[k] is None)}
            out[vname] = (messages, template, merged)
        return out

    def definition(self, root: yaml.Node) -> PromptDefinition | None:
        """The validated prompt of a whole file, or None if it has problems."""
        if not isinstance(root, yaml.MappingNode):
            self.err(root, f"a prompt file must be a mapping (name: ..., messages: ...), "
                           f"got {_kind(root)}")
            return None
        self.scan(root)
        entries = self.mapping(root, "", _TOP_KEYS) or {}
        get = {k: v for k, (_, v) in entries.items()}
        name: Any = _BAD
        name_line = _line(root)
        if "name" not in get:
            self.err(root, "missing required key 'name'")
        else:
            name_line = _line(entries["name"][0])
            name = self.scalar(get["name"], "name", "str")
            if name is not _BAD and not NAME_PATTERN.match(name):
                self.err(get["name"], f"name: {name!r} is not a valid name ({_NAME_RULE})")
        description = ""
        if "description" in get and not _is_null(get["description"]):
            description = self.scalar(get["description"], "description", "str")
        tags: list[str] | None = []
        if "tags" in get and not _is_null(get["tags"]):
            tags = self.string_list(get["tags"], "tags")
            for i, tag in enumerate(tags or ()):
                if tag in tags[:i]:  # type: ignore[index]
                    self.err(get["tags"].value[i], f"tags[{i}]: duplicate tag {tag!r}")
        model = self.model(get.get("model"), "model")
        variables = self.variables(get.get("variables"))
        given, messages, template = self.body(entries, "")
        if not given:
            self.err(root, "one of messages or template is required")
        main_form = next((f for f in ("messages", "template") if f in get), None)
        variants = self.variants(get.get("variants"), main_form, model or {})
        self.check_templates(self.declared)
        if (messages is not None or template is not None) and model is not None and variants:
            self.identical(get["variants"], messages, template, model or {}, variants)
        experiment = None
        if "experiment" in get:
            experiment = self.experiment(get["experiment"], {MAIN_VARIANT} | self.variant_names)
        if self.problems or variables is None or model is None or variants is None:
            return None
        content = PromptContent(messages=messages, template=template, model=model,
                                variables=tuple(variables))
        return PromptDefinition(
            name=name,
            content=content,
            description=description,
            tags=tuple(tags or ()),
            variants={
                vname: PromptContent(
                    messages=vm if vm is not None or vt is not None else messages,
                    template=vt if vm is not None or vt is not None else template,
                    model=vmodel,
                    variables=content.variables,
                )
                for vname, (vm, vt, vmodel) in variants.items()
            },
            experiment=experiment,
            path=self.path,
            line=name_line,
        )

    def identical(
        self,
        node: yaml.Node,
        messages: tuple[Message, ...] | None,
        template: str | None,
        model: dict[str, Any],
        variants: dict[str, tuple[tuple[Message, ...] | None, str | None, dict[str, Any]]],
    ) -> None:
        """A variant identical to main or to an earlier variant is a problem (it tests nothing)."""
        seen = {PromptContent(messages, template, model).content_hash(): "the main prompt"}
        keys = {k.value: k for k, _ in node.value if isinstance(k, yaml.ScalarNode)}
        for vname, (vm, vt, vmodel) in variants.items():
            inherit = vm is None and vt is None
            digest = PromptContent(messages if inherit else vm, template if inherit else vt,
                                   vmodel).content_hash()
            if digest in seen:
                self.err(keys[vname], f"variants.{vname}: identical to {seen[digest]}")
            else:
                seen[digest] = f"variant {vname!r}"


def _in_range(value: float, low: float | None, low_in: bool, high: float | None,
              high_in: bool) -> bool:
    if low is not None and (value < low or (value == low and not low_in)):
        return False
    return high is None or value < high or (value == high and high_in)


def _describe_range(low: float | None, low_in: bool, high: float | None, high_in: bool) -> str:
    parts = []
    if low is not None:
        parts.append(f"{'>=' if low_in else '>'} {low:g}")
    if high is not None:
        parts.append(f"{'<=' if high_in else '<'} {high:g}")
    return " and ".join(parts)


_NAME_RULE = "lowercase letters, digits, '.', '_' and '-', starting with a letter or digit, " \
             "at most 64 characters"


def _decode(data: str | bytes, path: str) -> str:
    """The text of a file, refusing oversized, non-UTF-8 and binary input."""
    size = len(data.encode("utf-8", "surrogatepass")) if isinstance(data, str) else len(data)
    if size > MAX_FILE_BYTES:
        raise InvalidPromptFile([FileProblem(path, 0, f"file is larger than {MAX_FILE_BYTES} bytes")])
    if isinstance(data, bytes):
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = data[: exc.start].count(b"\n") + 1
            raise InvalidPromptFile([FileProblem(
                path, line, f"not UTF-8 text (byte 0x{data[exc.start]:02x} cannot be decoded)"
            )]) from None
    else:
        text = data
    nul = text.find("\x00")
    if nul >= 0:
        line = text.count("\n", 0, nul) + 1
        raise InvalidPromptFile([FileProblem(path, line, "contains a NUL byte; is it a binary file?")])
    return text.removeprefix("\ufeff")


def _compose(loader: _Loader, text: str, path: str) -> yaml.Node | None:
    """The root node of the single YAML document, with syntax errors as problems."""
    try:
        return loader.get_single_node()
    except _Refused as exc:
        problem = FileProblem(path, exc.line, exc.message)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        detail = " ".join(str(exc.problem or exc.context or "syntax error").split())
        problem = FileProblem(path, mark.line + 1 if mark else 0, f"invalid YAML: {detail}")
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, max(exc.position, 0)) + 1
        problem = FileProblem(path, line, f"invalid character {chr(exc.character)!r}"
                              if isinstance(exc.character, int) else f"invalid input: {exc.reason}")
    except yaml.YAMLError as exc:
        problem = FileProblem(path, 0, f"invalid YAML: {' '.join(str(exc).split())}")
    raise InvalidPromptFile([problem])


def parse_prompt_text(text: str | bytes, *, path: str) -> PromptDefinition:
    """Parse and validate one prompt file's text; raises InvalidPromptFile listing every problem."""
    source = _decode(text, path)
    loader = _Loader(source)
    try:
        root = _compose(loader, source, path)
        if root is None:
            raise InvalidPromptFile([FileProblem(path, 1, "the file is empty; a prompt needs at "
                                                          "least name: and messages: or template:")])
        checker = _Checker(path, loader)
        definition = checker.definition(root)
    finally:
        loader.dispose()
    if definition is None:
        raise InvalidPromptFile(sorted(checker.problems, key=lambda p: p.line))
    return definition


def load_prompt_file(path: str | Path) -> PromptDefinition:
    """Read, parse and validate one prompt file (its size is checked before reading)."""
    shown = str(path)
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            kind = "a directory" if stat.S_ISDIR(info.st_mode) else "not a regular file"
            raise InvalidPromptFile([FileProblem(shown, 0, f"is {kind}")])
        if info.st_size > MAX_FILE_BYTES:
            raise InvalidPromptFile([FileProblem(
                shown, 0, f"file is larger than {MAX_FILE_BYTES} bytes ({info.st_size} bytes)"
            )])
        with open(path, "rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)  # bounded even if the file grew since stat()
    except FileNotFoundError:
        raise InvalidPromptFile([FileProblem(shown, 0, "no such file or directory")]) from None
    except OSError as exc:
        reason = (exc.strerror or str(exc)).lower()
        raise InvalidPromptFile([FileProblem(shown, 0, f"cannot read: {reason}")]) from None
    return parse_prompt_text(data, path=shown)


def _walk(root: Path) -> Iterator[Path]:
    # os.walk does not follow directory symlinks, so a link loop cannot recurse forever.
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(files):
            if not name.startswith(".") and name.endswith((".yaml", ".yml")):
                yield Path(folder) / name


def _discover(paths: Sequence[str | Path]) -> tuple[list[Path], list[FileProblem]]:
    found: list[Path] = []
    problems: list[FileProblem] = []
    seen: set[Path] = set()
    for raw in paths:
        path = Path(raw)
        if path.is_dir():
            candidates = sorted(_walk(path), key=lambda p: p.relative_to(path).parts)
        elif path.exists():
            candidates = [path]
        else:
            problems.append(FileProblem(str(raw), 0, "no such file or directory"))
            continue
        for candidate in candidates:
            key = candidate.resolve()
            if key not in seen:
                seen.add(key)
                found.append(candidate)
    return found, problems


def discover(paths: Sequence[str | Path]) -> list[Path]:
    """The prompt files under the given paths: directories expand to their *.yaml/*.yml (recursively)."""
    found, problems = _discover(paths)
    if problems:
        raise InvalidPromptFile(problems)
    return found


def load_prompt_files(paths: Sequence[str | Path]) -> list[PromptDefinition]:
    """Load every prompt file under the paths, sorted by name; raises one InvalidPromptFile for all."""
    files, problems = _discover(paths)
    by_name: dict[str, PromptDefinition] = {}
    for file in files:
        try:
            definition = load_prompt_file(file)
        except InvalidPromptFile as exc:
            problems.extend(exc.problems)
            continue
        first = by_name.get(definition.name)
        if first is not None:
            problems.append(FileProblem(
                definition.path, definition.line,
                f"duplicate prompt name {definition.name!r}: already defined in "
                f"{first.path}:{first.line}",
            ))
            continue
        by_name[definition.name] = definition
    if problems:
        raise InvalidPromptFile(problems)
    return sorted(by_name.values(), key=lambda d: d.name)


_EXAMPLE = """\
# A prompt file: one prompt, its variables, optional variants and an experiment among them.
# Check it with `promptops validate`, register it with `promptops sync`.
name: summarize                   # unique; lowercase letters, digits, '-', '_', '.'
description: Summarize a document for a busy reader.
tags: [example, summarization]
model: {name: gpt-4o-mini, temperature: 0.2, max_tokens: 300}   # passed through to callers

variables:                        # every name a template uses must be declared here
  document: {type: string, required: true, max_length: 20000}
  audience: {type: string, enum: [executive, engineer, customer], default: executive}
  max_points: {type: integer, default: 3}

messages:                         # chat form; or `template: "..."` for a single text prompt
  - role: system
    content: |-
      You write short, faithful summaries. Use only facts stated in the document;
      if something is unclear, say so instead of guessing.
  - role: user
    content: |-
      Summarize the document below for a reader who is {{ audience }} in at most
      {{ max_points }} bullet points.

      <document>
      {{ document }}
      </document>

variants:                         # named alternatives; each overrides messages/template/model
  paragraph:
    description: One short paragraph instead of bullet points.
    messages:
      - role: system
        content: |-
          You write short, faithful summaries. Use only facts stated in the document;
          if something is unclear, say so instead of guessing.
      - role: user
        content: |-
          Summarize the document below for a reader who is {{ audience }}, in one paragraph
          of at most {{ max_points * 2 }} sentences.

          <document>
          {{ document }}
          </document>

experiment:                       # starts running when synced (unless `status: draft`)
  metric: helpful                 # the name feedback is sent under
  reward: binary                  # binary (0/1) or continuous (a float in [0, 1])
  arms: [main, paragraph]         # `main` is the top-level content
"""


def example_prompt_text() -> str:
    """The example prompt file `promptops init` writes: valid, with a variant and an experiment."""
    return _EXAMPLE
