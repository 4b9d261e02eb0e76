"""Frozen value objects shared by every layer: prompt content, versions, experiments, policy, stats.

Only the standard library is imported here, so every other layer may depend on this module.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields, replace
from enum import StrEnum
from typing import Any, Literal

VariableType = Literal["string", "integer", "number", "boolean", "list", "object"]


class ExperimentStatus(StrEnum):
    """Where an experiment is in its life (stored as its value)."""

    DRAFT = "draft"
    RUNNING = "running"
    COMPLETED = "completed"
    INCONCLUSIVE = "inconclusive"
    STOPPED = "stopped"
    HOLDOUT = "holdout"
    ROLLED_BACK = "rolled_back"


class RewardKind(StrEnum):
    """The kind of an experiment's primary metric."""

    BINARY = "binary"
    CONTINUOUS = "continuous"


class Strategy(StrEnum):
    """How an experiment allocates traffic: adaptively, or by fixed weights."""

    THOMPSON = "thompson"
    FIXED = "fixed"


class Allocation(StrEnum):
    """The adaptive allocation rule of the policy."""

    TOP_TWO = "top_two"
    THOMPSON = "thompson"


class MissingFeedback(StrEnum):
    """What a decision without feedback counts as once its window closes."""

    ZERO = "zero"
    IGNORE = "ignore"


class KeyRole(StrEnum):
    """What an API key may do: serve (serving routes and reads) or admin (everything)."""

    SERVE = "serve"
    ADMIN = "admin"


VARIABLE_TYPES: tuple[str, ...] = ("string", "integer", "number", "boolean", "list", "object")
EXPERIMENT_STATUSES: tuple[str, ...] = tuple(s.value for s in ExperimentStatus)
ENDED_STATUSES: frozenset[str] = frozenset(
    {
        ExperimentStatus.COMPLETED,
        ExperimentStatus.INCONCLUSIVE,
        ExperimentStatus.STOPPED,
        ExperimentStatus.ROLLED_BACK,
    }
)
LIVE_STATUSES: tuple[str, ...] = (ExperimentStatus.RUNNING, ExperimentStatus.HOLDOUT)
"""Statuses in which an experiment routes its prompt's traffic."""
MAIN_VARIANT = "main"
PRODUCTION = "production"
DEFAULT_METRIC = "reward"
MAX_ARMS = 20
"""The most versions an experiment may compare (the control included)."""
BUILTIN_METRICS: tuple[str, ...] = ("cost_usd", "latency_ms", "error")
"""Metrics every decision accepts besides its experiment's own (the gateway records them)."""
BINARY_METRICS: frozenset[str] = frozenset({"error"})
"""Built-in metrics whose values are 0 or 1."""
METRIC_NAME_RULE = "1-64 letters, digits, '.', '_' or '-', not starting with '.' or '-'"
_METRIC_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]{0,63}")


def metric_name_problem(name: object) -> str | None:
    """What is wrong with a metric name ("must be ..."), or None for a valid one."""
    if not isinstance(name, str) or not _METRIC_NAME.fullmatch(name):
        return f"must be {METRIC_NAME_RULE}"
    return None


def arm_count_problem(count: int) -> str | None:
    """What is wrong with an experiment of `count` arms (fewer than two, or more than MAX_ARMS),
    or None (every entry point, the API, the CLI and prompt files, refuses with this one message)."""
    if count < 2:
        return f"an experiment needs at least two arms, got {count}"
    if count > MAX_ARMS:
        return f"an experiment has at most {MAX_ARMS} arms, got {count}"
    return None


def text_problem(value: str) -> str | None:
    """What makes a string unstorable (a NUL character or a lone surrogate), or None."""
    if "\x00" in value:
        return "must not contain NUL characters"
    if value.isascii():  # the common case, without encoding
        return None
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return "must be valid Unicode (no lone surrogates)"
    return None


@dataclass(frozen=True)
class VariableSpec:
    """A declared template variable: its type and constraints."""

    name: str
    type: VariableType = "string"
    required: bool = False
    default: Any = None
    has_default: bool = False
    enum: tuple[Any, ...] | None = None
    max_length: int | None = None
    description: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form used in content hashes and storage."""
        out: dict[str, Any] = {"type": self.type, "required": self.required}
        if self.has_default:
            out["default"] = self.default
        if self.enum is not None:
            out["enum"] = list(self.enum)
        if self.max_length is not None:
            out["max_length"] = self.max_length
        if self.description:
            out["description"] = self.description
        return out

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> VariableSpec:
        """Rebuild a spec from its canonical JSON form."""
        enum = data.get("enum")
        return cls(
            name=name,
            type=data.get("type", "string"),
            required=bool(data.get("required", False)),
            default=data.get("default"),
            has_default="default" in data,
            enum=tuple(enum) if enum is not None else None,
            max_length=data.get("max_length"),
            description=data.get("description"),
        )


@dataclass(frozen=True)
class Message:
    """One chat message template."""

    role: str
    content: str


@dataclass(frozen=True)
class PromptContent:
    """What a version snapshots: the template (chat messages or text), model settings, variables."""

    messages: tuple[Message, ...] | None = None
    template: str | None = None
    model: dict[str, Any] = field(default_factory=dict)
    variables: tuple[VariableSpec, ...] = ()
    cache: dict[str, Any] | None = None  # the response cache settings: mode, ttl_hours, stale_hours

    def to_dict(self) -> dict[str, Any]:
        """The canonical JSON form; its hash identifies the content."""
        out: dict[str, Any] = {}
        if self.messages is not None:
            out["messages"] = [{"role": m.role, "content": m.content} for m in self.messages]
        if self.template is not None:
            out["template"] = self.template
        out["model"] = self.model
        out["variables"] = {v.name: v.to_dict() for v in self.variables}
        if self.cache is not None:  # absent, the hash of content from before caching is unchanged
            out["cache"] = self.cache
        return out

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> PromptContent:
        """Rebuild content from its canonical JSON form."""
        messages = data.get("messages")
        return cls(
            messages=tuple(Message(m["role"], m["content"]) for m in messages)
            if messages is not None
            else None,
            template=data.get("template"),
            model=dict(data.get("model") or {}),
            variables=tuple(VariableSpec.from_dict(k, v) for k, v in (data.get("variables") or {}).items()),
            cache=dict(data["cache"]) if data.get("cache") is not None else None,
        )

    def content_hash(self) -> str:
        """SHA-256 of the canonical JSON form."""
        return content_hash(self.to_dict())

    def variable(self, name: str) -> VariableSpec | None:
        """The declared variable of that name, if any."""
        for v in self.variables:
            if v.name == name:
                return v
        return None


def content_hash(data: Any) -> str:
    """SHA-256 hex digest of a JSON-able value in canonical form."""
    blob = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()


class StatsAction(StrEnum):
    """What the policy decides at an epoch boundary."""

    CONTINUE = "continue"
    PROMOTE = "promote"
    KEEP_CONTROL = "keep_control"
    INCONCLUSIVE = "inconclusive"


class StopReason(StrEnum):
    """Why an experiment ended without a winner (or why it ended, for a winner)."""

    WINNER = "winner"
    LIMIT = "limit"
    EQUIVALENT = "equivalent"
    NO_MEANINGFUL_WINNER = "no_meaningful_winner"
    GUARDRAILS = "guardrails"


class HoldoutAction(StrEnum):
    """What the guarded rollout decides while the previous production keeps its holdout share."""

    CONTINUE_HOLDOUT = "continue_holdout"
    END_HOLDOUT = "end_holdout"
    ROLLBACK = "rollback"


class GuardrailState(StrEnum):
    """A challenger's standing on one guardrail."""

    ALLOWED = "allowed"
    PENDING = "pending"
    BLOCKED = "blocked"


class SafetyFlag(StrEnum):
    """A safety check that froze promotion."""

    SRM = "srm"
    FEEDBACK = "feedback"


@dataclass(frozen=True)
class Guardrail:
    """A metric a challenger must not worsen beyond a margin relative to the control's mean
    (max_increase / max_decrease) or absolute in the metric's units (*_abs)."""

    metric: str
    max_increase: float | None = None
    max_decrease: float | None = None
    max_increase_abs: float | None = None
    max_decrease_abs: float | None = None


GUARDRAIL_MARGINS: tuple[str, ...] = ("max_increase", "max_decrease", "max_increase_abs", "max_decrease_abs")


@dataclass(frozen=True)
class Policy:
    """Settings of an experiment's statistical policy (defaults from STATS.md)."""

    attribution_window_hours: float = 1.0
    missing_feedback: MissingFeedback | None = None  # None: zero for binary, ignore for continuous
    min_samples_per_arm: int = 500
    min_hours: float = 24.0
    allocation: Allocation = Allocation.TOP_TWO
    top_two_beta: float = 0.5
    floor: float = 0.10
    draws: int = 10_000
    update_every: int = 500
    min_update_minutes: float = 15.0
    max_decisions: int = 100_000
    max_days: float = 30.0
    max_checks: int = 40
    alpha: float = 0.05  # false promotions over all checks, spent over the information fraction
    loss_threshold: float = 0.01
    control_p_best: float = 0.99
    srm_p_value: float = 0.005  # false SRM alarms over the experiment, spent like alpha
    feedback_p_value: float = 0.005  # false feedback alarms over the experiment, spent like alpha
    prior_strength: float = 1.0
    equivalence_margin: float = 0.05  # relative to the control's mean; 0 turns the stop off
    value_remaining_stop: float = 0.01  # relative to the control's mean; 0 turns the stop off
    holdout_share: float = 0.20  # 0 turns the guarded rollout off
    holdout_decisions: int | None = None  # None: 40% of max_decisions
    holdout_hours: float = 72.0
    guardrails: tuple[Guardrail, ...] = ()

    @property
    def holdout_decisions_effective(self) -> int:
        """Decisions the holdout phase lasts at most (40% of max_decisions unless set)."""
        if self.holdout_decisions is not None:
            return self.holdout_decisions
        return max(1, int(round(0.4 * self.max_decisions)))

    def missing_feedback_for(self, reward: str) -> MissingFeedback:
        """The effective missing-feedback rule for a reward kind."""
        if self.missing_feedback is not None:
            return self.missing_feedback
        return MissingFeedback.ZERO if reward == RewardKind.BINARY else MissingFeedback.IGNORE

    def to_dict(self) -> dict[str, Any]:
        """All settings as a plain dict."""
        return asdict(self)

    def overrides(self) -> dict[str, Any]:
        """Only the settings that differ from the defaults."""
        default = Policy()
        mine = self.to_dict()
        return {
            f.name: mine[f.name] for f in fields(self) if getattr(self, f.name) != getattr(default, f.name)
        }

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of all settings."""
        return tuple(f.name for f in fields(cls))

    def with_overrides(self, values: dict[str, Any]) -> Policy:
        """A copy with some settings replaced (names must exist; types are checked by callers)."""
        return replace(self, **values)


@dataclass(frozen=True)
class ExperimentSpec:
    """An experiment as declared in a prompt file or requested through the API."""

    arms: tuple[str, ...]  # variant names in a file
    metric: str = DEFAULT_METRIC
    reward: RewardKind = RewardKind.BINARY
    strategy: Strategy = Strategy.THOMPSON
    weights: tuple[float, ...] | None = None  # for strategy fixed
    auto_promote: bool | None = None  # None: True for thompson, False for fixed
    status: ExperimentStatus = ExperimentStatus.RUNNING  # draft or running
    policy: Policy = field(default_factory=Policy)
    requires_eval: str | None = None  # an eval every arm must pass before the experiment starts
    metrics: tuple[str, ...] = ()  # secondary metrics: reported per arm, never decide


@dataclass(frozen=True)
class PromptDefinition:
    """A validated prompt file: metadata, main content, variants and an optional experiment."""

    name: str
    content: PromptContent
    description: str = ""
    tags: tuple[str, ...] = ()
    variants: dict[str, PromptContent] = field(default_factory=dict)
    experiment: ExperimentSpec | None = None
    path: str = ""
    line: int = 1

    def variant_content(self, variant: str) -> PromptContent:
        """The content of `main` or of a named variant."""
        if variant == MAIN_VARIANT:
            return self.content
        return self.variants[variant]


@dataclass(frozen=True)
class PromptVersion:
    """An immutable snapshot of one prompt's content, numbered per prompt."""

    prompt: str
    number: int
    variant: str
    content: PromptContent
    content_hash: str
    source_path: str | None = None
    git_commit: str | None = None
    git_author: str | None = None
    labels: tuple[str, ...] = ()


@dataclass(frozen=True)
class Rendered:
    """A rendered prompt: chat messages or text, with the model settings passed through."""

    prompt: str
    version: int
    variant: str
    model: dict[str, Any]
    messages: tuple[Message, ...] | None = None
    text: str | None = None

    def payload(self) -> dict[str, Any]:
        """The JSON body fields `messages` or `text`, and `model`."""
        return rendered_payload(self.prompt, self.version, self.variant, self.model, self.messages, self.text)


def rendered_payload(
    prompt: str,
    version: int,
    variant: str,
    model: dict[str, Any],
    messages: tuple[Message, ...] | None,
    text: str | None,
) -> dict[str, Any]:
    """The JSON of a rendered prompt: prompt, version, variant, model, then `messages` (chat
    prompts) or `text` (text prompts), never both."""
    out: dict[str, Any] = {"prompt": prompt, "version": version, "variant": variant, "model": model}
    if messages is not None:
        out["messages"] = [{"role": m.role, "content": m.content} for m in messages]
    else:
        out["text"] = text
    return out


POLICY_CHOICES: dict[str, tuple[str, ...]] = {
    "allocation": tuple(a.value for a in Allocation),
    "missing_feedback": tuple(m.value for m in MissingFeedback),
}

_Rule = tuple[Callable[[float], bool], str]
_AT_LEAST_0: _Rule = (lambda v: v >= 0, "at least 0")
_POSITIVE: _Rule = (lambda v: v > 0, "greater than 0")
_PROBABILITY: _Rule = (lambda v: 0 < v < 1, "strictly between 0 and 1")
# The one table of ranges for policy settings: the API, prompt files and scenarios all use it.
_POLICY_RULES: dict[str, _Rule] = {
    **dict.fromkeys(("min_hours", "min_update_minutes"), _AT_LEAST_0),
    # Feedback always arrives after its decision: a zero window would count none.
    "attribution_window_hours": _POSITIVE,
    **dict.fromkeys(("alpha", "control_p_best", "srm_p_value", "feedback_p_value"), _PROBABILITY),
    **dict.fromkeys(("equivalence_margin", "value_remaining_stop", "holdout_hours"), _AT_LEAST_0),
    "holdout_share": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "holdout_decisions": _POSITIVE,
    **dict.fromkeys(("min_samples_per_arm", "draws", "update_every", "max_checks"), _POSITIVE),
    **dict.fromkeys(("max_decisions", "max_days", "loss_threshold", "prior_strength"), _POSITIVE),
    "floor": (lambda v: 0 <= v < 1, "at least 0 and below 1"),
    "top_two_beta": (lambda v: 0 < v <= 1, "greater than 0 and at most 1"),
}
# Upper bounds keep every stored value within what the database and JSON encoders can hold.
_POLICY_MAX: dict[str, float] = {
    "draws": 1_000_000,
    "max_checks": 10_000,
    "max_days": 3650,
    "attribution_window_hours": 8760,
    "min_hours": 87_600,
    "min_update_minutes": 525_600,
    "equivalence_margin": 1.0,
    "value_remaining_stop": 1.0,
    "holdout_hours": 87_600,
}
# Settings that may be null (meaning: derived from others).
_POLICY_NULLABLE: frozenset[str] = frozenset({"missing_feedback", "holdout_decisions"})


def policy_value_problem(name: str, value: Any) -> str | None:
    """What is wrong with a policy setting's value ("must be ..."), or None; types are checked
    by the caller, which knows where the value came from."""
    if value is None and name in _POLICY_NULLABLE:
        return None
    if name in POLICY_CHOICES:
        if value in POLICY_CHOICES[name]:
            return None
        return f"must be one of {', '.join(repr(c) for c in POLICY_CHOICES[name])}"
    if not math.isfinite(value):
        return "must be finite"
    test, rule = _POLICY_RULES.get(name, (lambda v: True, ""))
    if not test(value):
        return f"must be {rule}"
    cap = _POLICY_MAX.get(name, 1e9)
    return f"must be at most {cap:g}" if value > cap else None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "integer" if isinstance(value, int) else "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list | tuple) else "mapping"


def policy_setting(name: str, value: Any) -> tuple[Any, str | None]:
    """A policy setting's value in its type (whole numbers as int, others as float) and what is
    wrong with it ("must be ..."), or None: the one check the API, prompt files and scenarios share."""
    if value is None and name in _POLICY_NULLABLE:
        return None, None
    if name in POLICY_CHOICES:
        return value, policy_value_problem(name, value)
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value, f"must be a number, got {_kind(value)}"
    # holdout_decisions defaults to None (derived) but counts decisions.
    whole = name == "holdout_decisions" or isinstance(getattr(Policy, name), int)
    if whole and not isinstance(value, int):
        if not (math.isfinite(value) and value.is_integer()):
            return value, "must be an integer, got number"
        value = int(value)
    elif not whole:
        value = float(value)
    return value, policy_value_problem(name, value)


def policy_setting_problem(name: str, value: Any) -> str | None:
    """What is wrong with a policy setting's value (its type and range), or None."""
    return policy_setting(name, value)[1]


def parse_policy(values: Any, *, base: Policy | None = None) -> Policy:
    """A Policy from a mapping of overrides; raises ValueError naming the first bad setting."""
    base = base or Policy()
    if values is None:
        return base
    if not isinstance(values, dict):
        raise ValueError("policy must be a mapping of settings")
    clean: dict[str, Any] = {}
    for key, value in values.items():
        if key not in Policy.field_names():
            raise ValueError(f"unknown policy setting {key!r}")
        if key == "guardrails":
            clean[key] = parse_guardrails(value)
            continue
        clean[key], problem = policy_setting(key, value)
        if problem:
            raise ValueError(f"policy.{key}: {problem}")
    return replace(base, **clean)


def guardrail_problem(raw: Any) -> tuple[str, str] | None:
    """What is wrong with one guardrail mapping, as (key, "must ...") or None."""
    if isinstance(raw, Guardrail):
        raw = asdict(raw)
    if not isinstance(raw, dict):
        return "", "must be a mapping like {metric: cost_usd, max_increase: 0.1}"
    for key in raw:
        if key != "metric" and key not in GUARDRAIL_MARGINS:
            return str(key), f"is not a guardrail key (expected metric, {', '.join(GUARDRAIL_MARGINS)})"
    metric = raw.get("metric")
    if not isinstance(metric, str) or not metric:
        return "metric", "must be a metric name"
    margins = [k for k in GUARDRAIL_MARGINS if raw.get(k) is not None]
    if not margins:
        return "", f"needs one of {', '.join(GUARDRAIL_MARGINS)}"
    if raw.get("max_increase") is not None and raw.get("max_increase_abs") is not None:
        return "max_increase_abs", "cannot be combined with max_increase"
    if raw.get("max_decrease") is not None and raw.get("max_decrease_abs") is not None:
        return "max_decrease_abs", "cannot be combined with max_decrease"
    for key in margins:
        value = raw[key]
        if isinstance(value, bool) or not isinstance(value, int | float):
            return key, "must be a number"
        if not math.isfinite(value) or value < 0 or value > 1e12:
            return key, "must be a finite number of at least 0"
    return None


def parse_guardrails(values: Any) -> tuple[Guardrail, ...]:
    """Guardrails from a list of mappings; raises ValueError naming the first bad entry."""
    if values is None:
        return ()
    if not isinstance(values, list | tuple):
        raise ValueError("policy.guardrails: must be a list of {metric, max_increase, ...}")
    out: list[Guardrail] = []
    for i, raw in enumerate(values):
        problem = guardrail_problem(raw)
        if problem:
            key, message = problem
            where = f"policy.guardrails[{i}]" + (f".{key}" if key else "")
            raise ValueError(f"{where}: {message}")
        item = (
            raw
            if isinstance(raw, Guardrail)
            else Guardrail(
                metric=raw["metric"],
                **{k: None if raw.get(k) is None else float(raw[k]) for k in GUARDRAIL_MARGINS},
            )
        )
        if any(g.metric == item.metric for g in out):
            raise ValueError(f"policy.guardrails[{i}].metric: repeats {item.metric!r}")
        out.append(item)
    return tuple(out)
