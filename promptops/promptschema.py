"""The prompt file schema: composed YAML nodes are checked and built into domain objects."""

from __future__ import annotations

import dataclasses
import functools
import keyword
import re
from collections.abc import Sequence
from typing import Any

import yaml

from .domain import (
    DEFAULT_METRIC,
    MAIN_VARIANT,
    POLICY_CHOICES,
    VARIABLE_TYPES,
    ExperimentSpec,
    ExperimentStatus,
    Guardrail,
    Message,
    Policy,
    PromptContent,
    PromptDefinition,
    RewardKind,
    Strategy,
    VariableSpec,
    arm_count_problem,
    guardrail_problem,
    metric_name_problem,
    parse_guardrails,
    policy_setting,
    policy_setting_problem,
)
from .errors import InvalidPromptFile, RenderError
from .rendering import TemplateSyntaxProblem, template_names, value_problem
from .yamlnodes import BAD as _BAD
from .yamlnodes import Check, NodeReader
from .yamlnodes import Entries as _Entries
from .yamlnodes import at as _at
from .yamlnodes import describe as _describe
from .yamlnodes import is_null as _is_null
from .yamlnodes import join as _join
from .yamlnodes import line_of as _line
from .yamlnodes import plain_problem as _plain_problem
from .yamlnodes import present as _value

NAME_PATTERN = re.compile(r"^[a-z0-9][a-z0-9._-]{0,63}$")
"""Names of prompts and variants."""

ROLES = ("system", "user", "assistant", "tool")
"""Chat message roles."""

_VARIABLE_RULE = "letters, digits, '_'; not starting with a digit; not a keyword"
_NAME_RULE = "lowercase letters, digits, '.', '_', '-'; starting with a letter or digit; max 64"
_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Jinja literals and names with a meaning of their own inside templates cannot be variables.
_RESERVED = frozenset({"true", "false", "none", "loop", "self", "caller", "varargs", "kwargs"})
_TOP_KEYS = (
    "name",
    "description",
    "tags",
    "model",
    "variables",
    "messages",
    "template",
    "variants",
    "experiment",
    "cache",
)
_VARIABLE_KEYS = ("type", "required", "default", "enum", "max_length", "description")
_VARIANT_KEYS = ("messages", "template", "model", "description", "cache")
_CACHE_KEYS = ("mode", "ttl_hours", "stale_hours")
CACHE_MODES = ("exact", "off")
"""Response cache modes of a prompt (YAML's bare `off` reads as false and means "off")."""
_MESSAGE_KEYS = ("role", "content")
_EXPERIMENT_KEYS = (
    "metric",
    "reward",
    "arms",
    "strategy",
    "weights",
    "auto_promote",
    "status",
    "policy",
    "requires_eval",
    "metrics",
    "guardrails",
)
_CHOICES = {
    "reward": tuple(r.value for r in RewardKind),
    "strategy": tuple(r.value for r in Strategy),
    "status": (ExperimentStatus.DRAFT.value, ExperimentStatus.RUNNING.value),
    **POLICY_CHOICES,
}
_Variant = tuple[tuple[Message, ...] | None, str | None, dict[str, Any], dict[str, Any] | None]


def _cache_mode(value: Any) -> str | None:
    ok = value is False or value in CACHE_MODES
    return None if ok else f"must be one of exact, off, got {value!r}"


def _hours(value: Any) -> str | None:
    ok = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value <= 1e6
    return None if ok else f"must be a number of hours between 0 and 1000000, got {value!r}"


@functools.cache
def _typed(kind: str, choices: tuple[Any, ...] = ()) -> Check:
    """The check of a value of a variable type (and among choices, if given)."""
    spec = VariableSpec("", type=kind, enum=choices or None)  # type: ignore[arg-type]
    return functools.partial(value_problem, spec)


def _template_line(node: yaml.Node, lineno: int) -> int:
    # In a block scalar (| or >) template line 1 is the line after the indicator.
    if isinstance(node, yaml.ScalarNode) and node.style in ("|", ">"):
        return node.start_mark.line + 1 + lineno
    return _line(node)


class PromptChecker(NodeReader):
    """Reads and validates one prompt file, collecting every problem."""

    def __init__(self, path: str) -> None:
        super().__init__(path)
        self.templates: list[tuple[yaml.Node, str, str]] = []
        self.declared: set[str] = set()
        self.variant_names: set[str] = set()

    def check(self, node: yaml.Node, where: str, kind: str, choices: Sequence[Any] = ()) -> Any:
        """A value of a variable type (and among choices, if given), or _BAD after reporting."""
        return self.read(node, where, _typed(kind, tuple(choices)))

    def get(
        self,
        entries: _Entries,
        key: str,
        where: str,
        kind: str,
        default: Any = None,
        choices: Sequence[Any] = (),
    ) -> Any:
        """The checked value at a key; `default` when absent (or null, unless default is _BAD)."""
        return self.field(entries, key, where, _typed(kind, tuple(choices)), default)

    def strings(self, entries: _Entries, key: str, where: str) -> list[str] | None:
        """A list of strings at a key (duplicates are reported), or None after reporting."""
        return self.distinct(entries, key, where, _typed("string"))

    def model(self, entries: _Entries, where: str) -> dict[str, Any] | None:
        """A free-form model mapping of plain data ({} when absent), or None after reporting."""
        node = _value(entries, "model")
        if node is None:
            return {}
        before = len(self.problems)
        if self.mapping(node, _join(where, "model"), None) is None or len(self.problems) > before:
            return None
        value = self.data(node)
        problem = None if value is _BAD else _plain_problem(value)
        if problem:
            self.err(node, f"{_join(where, 'model')}: {problem}")
        return None if problem or value is _BAD else value

    def cache(self, entries: _Entries, where: str) -> dict[str, Any] | None:
        """The response cache settings at `cache` (None when absent), normalised: mode is a string."""
        node = _value(entries, "cache")
        if node is None or _is_null(node):
            return None
        at = _join(where, "cache")
        if isinstance(node, yaml.ScalarNode):  # `cache: off` or `cache: exact`
            mode = self.read(node, at, _cache_mode)
            return None if mode is _BAD else {"mode": mode or "off"}
        cache_entries = self.mapping(node, at, _CACHE_KEYS)
        if cache_entries is None:
            return None
        out: dict[str, Any] = {}
        mode = self.field(cache_entries, "mode", at, _cache_mode)
        if mode is not None and mode is not _BAD:
            out["mode"] = mode or "off"
        for key in ("ttl_hours", "stale_hours"):
            hours = self.field(cache_entries, key, at, _hours)
            if hours is not None and hours is not _BAD:
                out[key] = float(hours)
        return out

    def text(self, entries: _Entries, key: str, where: str) -> str | None:
        """A template string at a key, queued for the template checks."""
        value = self.get(entries, key, where, "string", _BAD)
        if value is _BAD:
            return None
        self.templates.append((entries[key][1], _join(where, key), value))
        return value

    def messages(self, node: yaml.Node, where: str) -> tuple[Message, ...] | None:
        """Chat messages ({role, content}); their contents are queued for the template checks."""
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.err(node, f"{where}: must be a non-empty list of {{role, content}} messages")
            return None
        out: list[Message] = []
        for i, item in enumerate(node.value):
            at = f"{where}[{i}]"
            entries = self.mapping(item, at, _MESSAGE_KEYS, required=_MESSAGE_KEYS)
            if entries is not None:
                role = self.get(entries, "role", at, "string", _BAD, choices=ROLES)
                content = self.text(entries, "content", at)
                if role is not _BAD and content is not None:
                    out.append(Message(role, content))
        return tuple(out) if len(out) == len(node.value) else None

    def body(self, entries: _Entries, where: str) -> tuple[str | None, Any, str | None]:
        """Messages XOR template of the main prompt or a variant: (form, messages, template)."""
        if "messages" in entries and "template" in entries:
            self.err(entries["template"][0], _at(where, "use either messages or template, not both"))
            return "both", None, None
        if "messages" in entries:
            return "messages", self.messages(entries["messages"][1], _join(where, "messages")), None
        if "template" in entries:
            return "template", None, self.text(entries, "template", where)
        return None, None, None

    def variables(self, entries: _Entries) -> list[VariableSpec] | None:
        """Declared variables in order, or None if any is invalid."""
        node = _value(entries, "variables")
        if node is None:
            return []
        variables = self.mapping(node, "variables", None)
        if variables is None:
            return None
        self.declared.update(variables)
        specs: list[VariableSpec | None] = []
        for name, (key, value) in variables.items():
            if not _IDENTIFIER.match(name) or keyword.iskeyword(name) or name in _RESERVED:
                self.err(key, f"variables: {name!r} is not a valid variable name ({_VARIABLE_RULE})")
                specs.append(None)
            else:
                specs.append(self.variable(name, value))
        valid = [spec for spec in specs if spec is not None]
        return valid if len(valid) == len(specs) else None

    def variable(self, name: str, node: yaml.Node) -> VariableSpec | None:
        """One variable: a mapping of settings, a bare type name, or null (an optional string)."""
        where = f"variables.{name}"
        if _is_null(node):
            return VariableSpec(name)
        if isinstance(node, yaml.ScalarNode):
            kind = self.check(node, where, "string", VARIABLE_TYPES)
            return None if kind is _BAD else VariableSpec(name, type=kind)
        entries = self.mapping(node, where, _VARIABLE_KEYS)
        if entries is None:
            return None
        before = len(self.problems)
        kind = self.get(entries, "type", where, "string", "string", choices=VARIABLE_TYPES)
        required = self.get(entries, "required", where, "boolean", False)
        max_length = self.get(entries, "max_length", where, "integer")
        description = self.get(entries, "description", where, "string")
        if isinstance(max_length, int) and max_length < 1:
            self.err(entries["max_length"][1], f"{where}.max_length: must be at least 1")
        elif max_length is not None and kind not in ("string", "list", _BAD):
            self.err(entries["max_length"][1], f"{where}.max_length: only for strings and lists")
        if len(self.problems) > before:
            return None
        spec = VariableSpec(name, kind, required, max_length=max_length, description=description)
        if "enum" in entries:
            enum = self.enum(entries["enum"][1], f"{where}.enum", spec)
            if enum is None:
                return None
            spec = dataclasses.replace(spec, enum=enum)
        default_node = _value(entries, "default")
        if default_node is None:
            return spec
        default = self.data(default_node)
        if default is _BAD:
            return None
        problem = _plain_problem(default) or value_problem(spec, default)
        if problem or required:
            problem = "a required variable cannot have a default" if required else problem
            self.err(default_node, f"{where}.default: {problem}")
            return None
        return dataclasses.replace(spec, default=default, has_default=True)

    def enum(self, node: yaml.Node, where: str, spec: VariableSpec) -> tuple[Any, ...] | None:
        """The allowed values of a scalar variable, each of its type and unique."""
        if spec.type in ("list", "object"):
            self.err(node, f"{where}: only for string, integer, number and boolean variables")
            return None
        if not isinstance(node, yaml.SequenceNode) or not node.value:
            self.err(node, f"{where}: must be a non-empty list")
            return None
        values = [self.check(item, f"{where}[{i}]", spec.type) for i, item in enumerate(node.value)]
        if any(v is _BAD for v in values):
            return None
        for i, value in enumerate(values):
            if any(value == v and type(value) is type(v) for v in values[:i]):
                self.err(node.value[i], f"{where}[{i}]: duplicate value {value!r}")
                return None
        return tuple(values)

    def check_templates(self) -> None:
        """Every queued template compiles and uses only declared variables."""
        for node, where, source in self.templates:
            try:
                names = template_names(source)
            except TemplateSyntaxProblem as exc:
                line = _template_line(node, exc.lineno)
                self.err(line, f"{where}: template syntax error: {exc.detail}")
                continue
            except RenderError as exc:
                self.err(node, f"{where}: {exc.message}")
                continue
            for name in sorted(names - self.declared):
                self.err(node, f"{where} uses undeclared variable {name!r}")

    def variants(
        self, entries: _Entries, main_form: str | None, main_model: dict[str, Any]
    ) -> dict[str, _Variant] | None:
        """Valid variants as (messages, template, merged model); None content is inherited."""
        node = _value(entries, "variants")
        if node is None:
            return {}
        variants = self.mapping(node, "variants", None)
        if variants is None:
            return None
        out: dict[str, _Variant] = {}
        for vname, (key, value) in variants.items():
            where = f"variants.{vname}"
            if vname == MAIN_VARIANT or not NAME_PATTERN.match(vname):
                reserved = "is reserved for the top-level prompt"
                invalid = f"is not a valid variant name ({_NAME_RULE})"
                self.err(key, f"variants: {vname!r} {reserved if vname == MAIN_VARIANT else invalid}")
                continue
            self.variant_names.add(vname)
            ventries = self.mapping(value, where, _VARIANT_KEYS)
            if ventries is None:
                continue
            before = len(self.problems)
            form, messages, template = self.body(ventries, where)
            if (
                form in ("messages", "template")
                and main_form in ("messages", "template")
                and (form != main_form)
            ):
                why = f"the main prompt uses {main_form}; a variant keeps that form"
                self.err(ventries[form][0], f"{where}.{form}: {why}")
            if form is None and "model" not in ventries:
                self.err(value, f"{where}: must override messages, template or model")
            override = self.model(ventries, where)
            self.get(ventries, "description", where, "string")
            cache = self.cache(ventries, where)
            if len(self.problems) == before and override is not None:
                # Replace-by-key merge over the main model; a null in the variant removes the key.
                merged = {**main_model, **override}
                model = {k: v for k, v in merged.items() if not (k in override and v is None)}
                out[vname] = (messages, template, model, cache)
        return out

    def identical(self, entries: _Entries, main: PromptContent, variants: dict[str, _Variant]) -> None:
        """A variant identical to main or to an earlier variant is a problem: it tests nothing."""
        seen = {main.content_hash(): "the main prompt"}
        keys = {k.value: k for k, _ in entries["variants"][1].value}
        for vname, (messages, template, model, _) in variants.items():
            inherit = messages is None and template is None
            content = PromptContent(
                main.messages if inherit else messages,
                main.template if inherit else template,
                model,
            )
            digest = content.content_hash()
            if digest in seen:
                self.err(keys[vname], f"variants.{vname}: identical to {seen[digest]}")
            seen.setdefault(digest, f"variant {vname!r}")

    def experiment(self, node: yaml.Node) -> ExperimentSpec | None:
        """The declared experiment, or None after reporting."""
        entries = self.mapping(node, "experiment", _EXPERIMENT_KEYS, required=("arms",))
        if entries is None:
            return None
        at = "experiment"
        before = len(self.problems)
        fields = {
            key: self.get(entries, key, at, "string", getattr(ExperimentSpec, key), _CHOICES[key])
            for key in ("reward", "strategy", "status")
        }
        fields["auto_promote"] = self.get(entries, "auto_promote", at, "boolean")
        metric = fields["metric"] = self.get(entries, "metric", at, "string", DEFAULT_METRIC)
        problem = metric_name_problem(metric) if isinstance(metric, str) else None
        if problem:
            self.err(entries["metric"][1], f"experiment.metric: {problem}")
        arms = self.strings(entries, "arms", at) if "arms" in entries else None
        allowed = sorted({MAIN_VARIANT} | self.variant_names)
        for i, arm in enumerate(arms or ()):
            if arm not in allowed:
                why = f"is not main or a declared variant (known: {', '.join(allowed)})"
                self.err(entries["arms"][1].value[i], f"experiment.arms[{i}]: {arm!r} {why}")
        bad_count = arm_count_problem(len(arms)) if arms is not None else None
        if bad_count:
            self.err(entries["arms"][1], f"experiment.arms: {bad_count}")
        if "weights" in entries:
            fields["weights"] = self.weights(entries, arms)
            if fields["strategy"] == Strategy.THOMPSON:
                self.err(entries["weights"][0], "experiment.weights: only for strategy: fixed")
        elif fields["strategy"] == Strategy.FIXED:
            self.err(entries["strategy"][1], "experiment: strategy fixed needs weights")
        requires = self.get(entries, "requires_eval", at, "string")
        if isinstance(requires, str) and not NAME_PATTERN.match(requires):
            self.err(
                entries["requires_eval"][1],
                f"experiment.requires_eval: {requires!r} is not a valid eval name",
            )
        fields["requires_eval"] = requires
        policy = self.policy(entries["policy"][1]) if "policy" in entries else Policy()
        metrics = self.metrics(entries, metric)
        guardrails = self.guardrails(entries)
        if policy is not None and guardrails:
            policy = policy.with_overrides({"guardrails": guardrails})
        if len(self.problems) > before or arms is None or policy is None:
            return None
        return ExperimentSpec(arms=tuple(arms), policy=policy, metrics=tuple(metrics or ()), **fields)

    def metrics(self, entries: _Entries, primary: Any) -> list[str] | None:
        """Secondary metric names: valid names, distinct, not the primary metric."""
        names = self.strings(entries, "metrics", "experiment") if "metrics" in entries else []
        for i, name in enumerate(names or ()):
            problem = metric_name_problem(name)
            if problem is None and name == primary:
                problem = "is the primary metric"
            if problem:
                self.err(entries["metrics"][1].value[i], f"experiment.metrics[{i}]: {problem}")
        return names

    def guardrails(self, entries: _Entries) -> tuple[Guardrail, ...]:
        """Guardrails: {metric, one margin per direction}, each reported at its own line."""
        nodes = self.items(entries, "guardrails", "experiment") or []
        out: list[Guardrail] = []
        for i, node in enumerate(nodes):
            where = f"experiment.guardrails[{i}]"
            raw = self.data(node)
            if raw is _BAD:
                continue
            found = guardrail_problem(raw)
            name = raw.get("metric") if isinstance(raw, dict) else None
            if found is None and isinstance(name, str):
                problem = metric_name_problem(name)
                if problem:
                    found = ("metric", problem)
                elif any(g.metric == name for g in out):
                    found = ("metric", f"repeats {name!r}")
            if found is not None:
                key, message = found
                self.err(node, f"{where}" + (f".{key}" if key else "") + f": {message}")
                continue
            out.extend(parse_guardrails([raw]))
        return tuple(out)

    def weights(self, entries: _Entries, arms: list[str] | None) -> tuple[float, ...] | None:
        """Fixed allocation weights: non-negative numbers, one per arm, summing to 1."""
        nodes = self.items(entries, "weights", "experiment")
        if nodes is None:
            return None
        values = [self.check(n, f"experiment.weights[{i}]", "number") for i, n in enumerate(nodes)]
        if any(v is _BAD for v in values):
            return None
        node = entries["weights"][1]
        if any(v < 0 for v in values) or abs(sum(values) - 1.0) > 1e-3:
            self.err(node, f"experiment.weights: must be non-negative and sum to 1 (sum {sum(values):g})")
        if arms is not None and len(values) != len(arms):
            self.err(node, f"experiment.weights: {len(values)} weights for {len(arms)} arms")
        return tuple(float(v) for v in values)

    def policy(self, node: yaml.Node) -> Policy | None:
        """Policy overrides: known settings with values of the right type and range."""
        entries = self.mapping(node, "experiment.policy", Policy.field_names())
        if entries is None:
            return None
        at = "experiment.policy"
        values: dict[str, Any] = {}
        for name, (_, value_node) in entries.items():
            value = self.read(value_node, f"{at}.{name}", functools.partial(policy_setting_problem, name))
            if value is not _BAD:
                values[name] = policy_setting(name, value)[0]
        return Policy().with_overrides(values) if len(values) == len(entries) else None

    def definition(self, root: yaml.Node) -> PromptDefinition | None:
        """The validated prompt of a whole file, or None if it has problems."""
        if not isinstance(root, yaml.MappingNode):
            expected = "a prompt file must be a mapping (name:, messages:, ...)"
            self.err(root, f"{expected}, got {_describe(root)}")
            return None
        self.scan(root)
        entries = self.mapping(root, "", _TOP_KEYS, required=("name",)) or {}
        name = self.get(entries, "name", "", "string", _BAD)
        if isinstance(name, str) and not NAME_PATTERN.match(name):
            self.err(entries["name"][1], f"name: {name!r} is not a valid name ({_NAME_RULE})")
        description = self.get(entries, "description", "", "string", "")
        tags = self.strings(entries, "tags", "")
        model = self.model(entries, "")
        variables = self.variables(entries)
        form, messages, template = self.body(entries, "")
        if form is None:
            self.err(root, "one of messages or template is required")
        variants = self.variants(entries, form, model or {})
        cache = self.cache(entries, "")
        self.check_templates()
        experiment = self.experiment(entries["experiment"][1]) if "experiment" in entries else None
        if (messages or template) is not None and model is not None and variants:
            self.identical(entries, PromptContent(messages, template, model), variants)
        if self.problems or variables is None or model is None or variants is None:
            return None
        content = PromptContent(messages, template, model, tuple(variables), cache)
        return PromptDefinition(
            name=name,
            content=content,
            description=description,
            tags=tuple(tags or ()),
            variants={
                vname: PromptContent(
                    messages if vm is None and vt is None else vm,
                    template if vm is None and vt is None else vt,
                    vmodel,
                    content.variables,
                    # A variant's cache settings override the top-level ones key by key.
                    {**(cache or {}), **vcache} if vcache is not None else cache,
                )
                for vname, (vm, vt, vmodel, vcache) in variants.items()
            },
            experiment=experiment,
            path=self.path,
            line=_line(entries["name"][0]),
        )


def check_prompt(checker: PromptChecker, root: yaml.Node | None) -> PromptDefinition:
    """The validated prompt of a loaded file; raises InvalidPromptFile listing every problem."""
    definition = None if root is None else checker.definition(root)
    if definition is None:
        raise InvalidPromptFile(checker.sorted_problems())
    return definition
