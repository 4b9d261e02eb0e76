"""Assertions of offline evals: each type grades one output into a frozen (pass, score, reason).

Types (one table, `ASSERTION_TYPES`): `equals`, `contains`, `icontains`, `starts_with`, `regex`,
`is_json`, `json_schema` (`value` a JSON Schema), `similar` (embedding cosine >= `threshold`,
default 0.8), `judge` (an LLM grades the output against `rubric` with `provider` and `model`, in
at most `max_tokens`, default `judging.DEFAULT_MAX_TOKENS`),
`cost` (`max_usd`) and `latency` (`max_ms`). Common keys: `weight` (default 1), `not: true`, and
`transform: strip | lower | strip_lower`.

Rules a user should know:
- Scores are in [0, 1]: 1 or 0 for the yes/no types, the clipped cosine for `similar`, the judge's
  own score for `judge`. `not` flips pass and turns the score s into 1 - s; an error stays an error.
- An error (the judge's verdict is unreadable, its call failed, a template in `value` fails, a regex
  runs out of time, the embedder is missing) is never a pass, negated or not.
- `transform` normalises the output before it is compared; for the text comparisons (`equals`,
  `contains`, `icontains`, `starts_with`, `similar`) it normalises the expected value too, so
  `value: "{{ expected }}"` with `strip_lower` compares both sides alike. A regex pattern is never
  transformed (lowercasing `\\S` would change its meaning).
- `value` strings are templates in the prompt sandbox over `expected` (only when the case has one),
  `vars` and `metadata`.
- `regex` runs on the `regex` engine with a timeout of `REGEX_TIMEOUT_SECONDS`: a pattern that
  backtracks catastrophically on some output ends as an error instead of hanging the run.
- A case passes when, averaged over its repetitions, the weighted share of passing assertions is
  at least the eval's `threshold` (default 1: every assertion passes in every repetition). A case
  with a failed call or an assertion error in any repetition is an `error`. The case's `score`
  (reported, never deciding) is the weighted mean of the assertion scores, averaged likewise.
"""

from __future__ import annotations

import asyncio
import functools
import json
import math
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Protocol

import jsonschema
import regex

from .domain import PromptContent, VariableSpec
from .errors import PromptOpsError
from .judging import DEFAULT_MAX_TOKENS, VerdictError, judge_messages, parse_verdict
from .rendering import MAX_OUTPUT_CHARS, Renderer, value_problem, value_type

REGEX_TIMEOUT_SECONDS = 1.0
"""How long one regex match may run before the assertion ends as an error."""

DEFAULT_SIMILARITY = 0.8
"""The cosine a `similar` assertion needs when it sets no `threshold`."""


class Complete(Protocol):
    """The judge's call: (messages, provider, model, max_tokens=N) -> the completion's text."""

    def __call__(
        self, messages: list[dict[str, str]], provider: str, model: str, *, max_tokens: int
    ) -> Awaitable[str]: ...


Embed = Callable[[Sequence[str]], Awaitable[Sequence[Sequence[float]]]]
"""An async function that embeds texts into vectors; used by `similar`."""


class AssertionType(StrEnum):
    """The assertion types of the eval file format."""

    EQUALS = "equals"
    CONTAINS = "contains"
    ICONTAINS = "icontains"
    STARTS_WITH = "starts_with"
    REGEX = "regex"
    IS_JSON = "is_json"
    JSON_SCHEMA = "json_schema"
    SIMILAR = "similar"
    JUDGE = "judge"
    COST = "cost"
    LATENCY = "latency"


class Transform(StrEnum):
    """Normalisations applied to the output before it is compared."""

    STRIP = "strip"
    LOWER = "lower"
    STRIP_LOWER = "strip_lower"

    def apply(self, text: str) -> str:
        """The text normalised."""
        if self is Transform.STRIP:
            return text.strip()
        if self is Transform.LOWER:
            return text.lower()
        return text.strip().lower()


class CaseStatus(StrEnum):
    """How a case ended for one version."""

    PASSED = "passed"
    FAILED = "failed"
    ERROR = "error"


@dataclass(frozen=True)
class Assertion:
    """One checked assertion of an eval file or a case."""

    type: AssertionType
    value: Any = None
    weight: float = 1.0
    negate: bool = False
    transform: Transform | None = None
    threshold: float | None = None
    rubric: str | None = None
    provider: str | None = None
    model: str | None = None
    max_usd: float | None = None
    max_ms: float | None = None
    max_tokens: int | None = None  # judge: the most tokens of its answer (None: DEFAULT_MAX_TOKENS)


@dataclass(frozen=True)
class Case:
    """One eval case: the prompt's variables, the optional expected answer, and metadata."""

    id: str
    vars: Mapping[str, Any] = field(default_factory=dict)
    expected: Any = None
    has_expected: bool = False
    metadata: Mapping[str, Any] = field(default_factory=dict)
    assertions: tuple[Assertion, ...] = ()

    @functools.cached_property
    def _context_fits(self) -> bool:
        """Whether the sandbox accepts the case's values as the context of a `value` template
        (it checks every value, referenced or not); worked out once per case."""
        values = (
            (self.vars, self.metadata, self.expected) if self.has_expected else (self.vars, self.metadata)
        )
        for value in map(_context_value, values):
            if value is not None and value_problem(_SELF_TYPED[_type_of(value)], value) is not None:
                return False
        return True


@dataclass(frozen=True)
class Output:
    """What a successful call produced: the text, its cost and its latency (None when unknown)."""

    text: str
    cost_usd: float | None = None
    latency_ms: float | None = None


@dataclass(frozen=True)
class CallError:
    """A repetition whose call failed: it makes the case an error."""

    message: str


@dataclass(frozen=True)
class AssertionResult:
    """The grade of one assertion on one output; `error` results never pass."""

    type: str
    passed: bool
    score: float
    reason: str
    error: bool = False
    weight: float = 1.0


@dataclass(frozen=True)
class CaseGrade:
    """A case's outcome for one version over its repetitions (see the module for the rule)."""

    status: CaseStatus
    score: float
    pass_share: float
    reason: str
    repetitions: tuple[tuple[AssertionResult, ...] | CallError, ...]


class _Failed(Exception):
    """Raised by a check to end its assertion as an error with this reason."""


@dataclass(frozen=True)
class _Deps:
    complete: Complete | None
    embed: Embed | None


_Check = Callable[[Assertion, Output, str, Case, _Deps], Awaitable[tuple[bool, float, str]]]


@dataclass(frozen=True)
class _Kind:
    keys: tuple[str, ...]  # the type's own keys besides type, weight, not, transform
    required: tuple[str, ...]
    check: _Check
    text: bool = True  # whether the check reads the output's text (and so `transform` applies)


_RENDERER = Renderer()
_SHOWN = 80


def _show(text: Any) -> str:
    shown = repr(text)
    return shown if len(shown) <= _SHOWN else shown[: _SHOWN - 3] + "..."


def _type_of(value: Any) -> str:
    # What a case value is in a `value` template's context: anything not JSON-like is text.
    return value_type(value) or "string"


def _context_value(value: Any) -> Any:
    # A YAML date or another non-JSON scalar is shown as text; None stays None (renders empty).
    return value if value is None or _type_of(value) != "string" else str(value)


_SELF_TYPED = {
    t: VariableSpec("value", type=t)  # type: ignore[arg-type]
    for t in ("boolean", "integer", "number", "list", "object", "string")
}
# `{{ expected }}`, `{{ vars.NAME }}` or `{{ metadata.NAME }}` alone: the commonest `value`s.
_PLAIN_REFERENCE = re.compile(r"\{\{\s*(?:(expected)|(vars|metadata)\.([A-Za-z_][A-Za-z0-9_]*))\s*\}\}")


def _plain_value(template: str, case: Case) -> str | None:
    """What rendering the template gives, when that is known without Jinja: text with no markup,
    or a lone reference to a string (whose rendering is the string itself); else None."""
    found = _PLAIN_REFERENCE.fullmatch(template) if "{" in template else None
    if found is None and ("{" in template or "\r" in template or len(template) > MAX_OUTPUT_CHARS):
        return None
    if not case._context_fits:
        return None
    if found is None:
        return template
    if found.group(1):
        value = case.expected if case.has_expected else None
    else:
        name = found.group(3)
        # The sandbox looks a dict's attributes up before its keys (`vars.items` is the method).
        scope = case.vars if found.group(2) == "vars" else case.metadata
        value = None if hasattr(dict, name) else scope.get(name)
    return value if isinstance(value, str) and len(value) <= MAX_OUTPUT_CHARS else None


def render_value(template: str, case: Case) -> str:
    """Render a `value` template over the case's `expected`, `vars` and `metadata` in the sandbox."""
    plain = _plain_value(template, case)
    if plain is not None:
        return plain
    context: dict[str, Any] = {"vars": dict(case.vars), "metadata": dict(case.metadata)}
    if case.has_expected:
        context["expected"] = _context_value(case.expected)
    specs = tuple(
        VariableSpec(name, type=_type_of(value))  # type: ignore[arg-type]
        for name, value in context.items()
    )
    content = PromptContent(template=template, variables=specs)
    return _RENDERER.render(content, context, prompt="assert", version=0, variant="value").text or ""


def _expected_text(assertion: Assertion, case: Case) -> str:
    value = assertion.value
    if isinstance(value, str):
        return render_value(value, case)
    return json.dumps(value, ensure_ascii=False)  # a number or boolean compares as its JSON text


def _compare(test: Callable[[str, str], bool], verb: str, negated: str) -> _Check:
    async def check(
        assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
    ) -> tuple[bool, float, str]:
        expected = _expected_text(assertion, case)
        if assertion.transform is not None:
            expected = assertion.transform.apply(expected)
        ok = test(text, expected)
        return ok, float(ok), f"output {_show(text)} {verb if ok else negated} {_show(expected)}"

    return check


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> Any:
    # An eval's pattern is usually the same for every case: compile it once.
    return regex.compile(pattern)


async def _regex(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    pattern = _expected_text(assertion, case)
    try:
        found = _compiled(pattern).search(text, timeout=REGEX_TIMEOUT_SECONDS)
    except regex.error as exc:
        raise _Failed(f"invalid regex {_show(pattern)}: {exc}") from None
    except TimeoutError:
        raise _Failed(
            f"regex {_show(pattern)} ran longer than {REGEX_TIMEOUT_SECONDS:g}s on the output "
            "(catastrophic backtracking?)"
        ) from None
    if found is not None:
        return True, 1.0, f"regex {_show(pattern)} matches {_show(found.group(0))}"
    return False, 0.0, f"regex {_show(pattern)} does not match output {_show(text)}"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _parse_json(text: str) -> tuple[Any, str | None]:
    try:
        return json.loads(text, parse_constant=_reject_constant), None
    except ValueError as exc:
        return None, str(exc)
    except RecursionError:
        return None, "nested too deeply"


async def _is_json(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    _, problem = _parse_json(text)
    if problem is not None:
        return False, 0.0, f"output is not JSON: {problem}"
    return True, 1.0, "output is JSON"


def _guarded_pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Any:
    # jsonschema's own `pattern` runs `re` without a time limit on the model's output.
    if isinstance(instance, str) and regex.search(pattern, instance, timeout=REGEX_TIMEOUT_SECONDS) is None:
        yield jsonschema.ValidationError(f"{_show(instance)} does not match {_show(pattern)}")


def _schema_validator(schema: Any) -> Any:
    cls = jsonschema.validators.validator_for(schema)
    return jsonschema.validators.extend(cls, {"pattern": _guarded_pattern})(schema)


async def _json_schema(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    data, problem = _parse_json(text)
    if problem is not None:
        return False, 0.0, f"output is not JSON: {problem}"
    try:
        error = jsonschema.exceptions.best_match(_schema_validator(assertion.value).iter_errors(data))
    except RecursionError:
        raise _Failed("the output is nested too deeply to check against the schema") from None
    except TimeoutError:
        raise _Failed(f"a schema pattern ran longer than {REGEX_TIMEOUT_SECONDS:g}s on the output") from None
    except Exception as exc:  # noqa: BLE001 - an unresolvable $ref and the like are the schema's fault
        raise _Failed(f"the schema cannot be applied: {_show(str(exc))}") from None
    if error is None:
        return True, 1.0, "output matches the schema"
    where = "/".join(str(p) for p in error.absolute_path) or "(root)"
    return False, 0.0, f"output does not match the schema at {where}: {error.message[:200]}"


def _cosine(a: Sequence[float], b: Sequence[float]) -> float:
    if len(a) != len(b) or not a:
        raise _Failed(f"the embedder returned vectors of sizes {len(a)} and {len(b)}")
    dot = math.fsum(x * y for x, y in zip(a, b, strict=True))
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    if not norm or not math.isfinite(dot / norm):
        raise _Failed("the embedder returned a zero or non-finite vector")
    return max(-1.0, min(1.0, dot / norm))


async def _similar(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    expected = _expected_text(assertion, case)
    if assertion.transform is not None:
        expected = assertion.transform.apply(expected)
    embed = deps.embed
    if embed is None:
        from .embeddings import local_embed  # the optional extra loads torch: only when needed

        embed = local_embed
    try:
        vectors = await embed([text, expected])
    except PromptOpsError as exc:
        raise _Failed(exc.message) from None
    except Exception as exc:  # noqa: BLE001 - any failure of the embedder is this assertion's error
        raise _Failed(f"embedding failed: {type(exc).__name__}: {exc}") from None
    if len(vectors) != 2:
        raise _Failed(f"the embedder returned {len(vectors)} vectors for 2 texts")
    cos = _cosine(list(vectors[0]), list(vectors[1]))
    threshold = DEFAULT_SIMILARITY if assertion.threshold is None else assertion.threshold
    ok = cos >= threshold
    relation = ">=" if ok else "<"
    return ok, max(0.0, cos), f"cosine similarity {cos:.3f} {relation} {threshold:g} to {_show(expected)}"


async def _judge(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    if deps.complete is None:
        raise _Failed("judge needs a completion function (no provider layer was given)")
    messages = judge_messages(
        rubric=assertion.rubric or "",
        output=text,
        variables=case.vars,
        expected=case.expected,
        has_expected=case.has_expected,
    )
    try:
        answer = await deps.complete(
            messages,
            assertion.provider or "",
            assertion.model or "",
            max_tokens=assertion.max_tokens or DEFAULT_MAX_TOKENS,
        )
    except PromptOpsError as exc:
        raise _Failed(f"judge call failed: {exc.message}") from None
    except Exception as exc:  # noqa: BLE001 - any failure of the judge's call is this assertion's error
        raise _Failed(f"judge call failed: {type(exc).__name__}: {exc}") from None
    try:
        verdict = parse_verdict(answer)
    except VerdictError as exc:
        raise _Failed(f"unreadable judge verdict: {exc}") from None
    return verdict.passed, verdict.score, f"judge: {verdict.reasoning}"


async def _cost(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    if output.cost_usd is None:
        raise _Failed("the call's cost is unknown (no price for this model?)")
    limit = assertion.max_usd or 0.0
    ok = output.cost_usd <= limit
    return ok, float(ok), f"cost ${output.cost_usd:.6f} {'<=' if ok else '>'} max_usd ${limit:g}"


async def _latency(
    assertion: Assertion, output: Output, text: str, case: Case, deps: _Deps
) -> tuple[bool, float, str]:
    if output.latency_ms is None:
        raise _Failed("the call's latency is unknown")
    limit = assertion.max_ms or 0.0
    ok = output.latency_ms <= limit
    return ok, float(ok), f"latency {output.latency_ms:.0f} ms {'<=' if ok else '>'} max_ms {limit:g}"


ASSERTION_TYPES: dict[AssertionType, _Kind] = {
    AssertionType.EQUALS: _Kind(
        ("value",), ("value",), _compare(lambda o, e: o == e, "equals", "does not equal")
    ),
    AssertionType.CONTAINS: _Kind(
        ("value",), ("value",), _compare(lambda o, e: e in o, "contains", "does not contain")
    ),
    AssertionType.ICONTAINS: _Kind(
        ("value",),
        ("value",),
        _compare(
            lambda o, e: e.casefold() in o.casefold(), "contains (any case)", "does not contain (any case)"
        ),
    ),
    AssertionType.STARTS_WITH: _Kind(
        ("value",), ("value",), _compare(str.startswith, "starts with", "does not start with")
    ),
    AssertionType.REGEX: _Kind(("value",), ("value",), _regex),
    AssertionType.IS_JSON: _Kind((), (), _is_json),
    AssertionType.JSON_SCHEMA: _Kind(("value",), ("value",), _json_schema),
    AssertionType.SIMILAR: _Kind(("value", "threshold"), ("value",), _similar),
    AssertionType.JUDGE: _Kind(
        ("rubric", "provider", "model", "max_tokens"), ("rubric", "provider", "model"), _judge
    ),
    AssertionType.COST: _Kind(("max_usd",), ("max_usd",), _cost, text=False),
    AssertionType.LATENCY: _Kind(("max_ms",), ("max_ms",), _latency, text=False),
}
"""The registry of assertion types: each type's own keys, the required ones, and its check."""

_CALLING = frozenset({AssertionType.JUDGE, AssertionType.SIMILAR})  # checks that wait on a call


async def run_assertion(
    assertion: Assertion,
    output: Output,
    case: Case,
    *,
    complete: Complete | None = None,
    embed: Embed | None = None,
) -> AssertionResult:
    """Grade one output with one assertion; never raises for a bad output, template or verdict."""
    kind = ASSERTION_TYPES[assertion.type]
    text = output.text
    if kind.text and assertion.transform is not None:
        text = assertion.transform.apply(text)
    try:
        passed, score, reason = await kind.check(assertion, output, text, case, _Deps(complete, embed))
    except _Failed as exc:
        return AssertionResult(assertion.type.value, False, 0.0, str(exc), True, assertion.weight)
    except PromptOpsError as exc:  # a `value` template that fails to render for this case
        reason = f"value: {exc.message}"
        return AssertionResult(assertion.type.value, False, 0.0, reason, True, assertion.weight)
    score = min(1.0, max(0.0, score))
    if assertion.negate:
        passed, score, reason = not passed, 1.0 - score, f"not: {reason}"
    return AssertionResult(assertion.type.value, passed, score, reason, False, assertion.weight)


async def run_assertions(
    assertions: Sequence[Assertion],
    output: Output,
    case: Case,
    *,
    complete: Complete | None = None,
    embed: Embed | None = None,
) -> tuple[AssertionResult, ...]:
    """Grade one output with every assertion; those that wait on a call (judges, embeddings) run
    concurrently, the others in turn (a task each would cost more than their check)."""
    results: list[AssertionResult | None] = [None] * len(assertions)
    waiting = []
    for i, a in enumerate(assertions):
        if a.type in _CALLING:
            waiting.append(i)
        else:
            results[i] = await run_assertion(a, output, case, complete=complete, embed=embed)
    if waiting:
        graded = await asyncio.gather(
            *(run_assertion(assertions[i], output, case, complete=complete, embed=embed) for i in waiting)
        )
        for i, result in zip(waiting, graded, strict=True):
            results[i] = result
    return tuple(r for r in results if r is not None)


def _weighted(results: Sequence[AssertionResult]) -> tuple[float, float]:
    total = math.fsum(r.weight for r in results)
    if total <= 0:  # only weight-0 (informational) assertions: nothing can fail the case
        return 1.0, 1.0
    share = math.fsum(r.weight for r in results if r.passed) / total
    score = math.fsum(r.weight * r.score for r in results) / total
    return share, score


def grade_case(
    repetitions: Sequence[Sequence[AssertionResult] | CallError], *, threshold: float = 1.0
) -> CaseGrade:
    """Fold a case's repetitions into passed, failed or error (see the module for the rule)."""
    frozen = tuple(r if isinstance(r, CallError) else tuple(r) for r in repetitions)
    if not frozen:
        raise ValueError("a case needs at least one repetition")
    for i, rep in enumerate(frozen, 1):
        where = f"repetition {i}: " if len(frozen) > 1 else ""
        if isinstance(rep, CallError):
            return CaseGrade(CaseStatus.ERROR, 0.0, 0.0, f"{where}call failed: {rep.message}", frozen)
        failed = next((r for r in rep if r.error), None)
        if failed is not None:
            return CaseGrade(CaseStatus.ERROR, 0.0, 0.0, f"{where}{failed.type}: {failed.reason}", frozen)
    weighted = [_weighted(rep) for rep in frozen if not isinstance(rep, CallError)]
    share = math.fsum(s for s, _ in weighted) / len(weighted)
    score = math.fsum(s for _, s in weighted) / len(weighted)
    passed = share >= threshold - 1e-12
    if passed:
        reason = f"weighted pass share {share:.3f} >= threshold {threshold:g}"
    else:
        first = next(
            (r for rep in frozen if not isinstance(rep, CallError) for r in rep if not r.passed), None
        )
        detail = f"; {first.type}: {first.reason}" if first is not None else ""
        reason = f"weighted pass share {share:.3f} < threshold {threshold:g}{detail}"
    status = CaseStatus.PASSED if passed else CaseStatus.FAILED
    return CaseGrade(status, score, share, reason, frozen)
