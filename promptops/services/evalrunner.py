"""Running an eval's cases over versions: calls, assertions and grades, with no database.

Every (version, case, repetition) is one call of `complete` with the repetition as its cache slot,
graded by the case's assertions; `concurrency` workers take them in turn, so at most that many are
in flight at once (each provider bounds its own connections besides). A call that fails ends its
repetition as a `CallError`, so the case is an `error`, counted apart from passes and failures; a
failing judge is an assertion error, likewise an `error`. Nothing a provider or a judge answers stops the run.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from promptops.assertions import (
    AssertionResult,
    CallError,
    Case,
    CaseGrade,
    CaseStatus,
    Embed,
    Output,
    grade_case,
    run_assertions,
)
from promptops.domain import PromptVersion
from promptops.errors import PromptOpsError
from promptops.evalfiles import EvalDefinition
from promptops.services.evalcalls import CompleteVersion, Judge
from promptops.stats.evals import (
    GateRule,
    GateVerdict,
    PairedComparison,
    PassRate,
    check_gate,
    combine_verdicts,
    compare_paired,
    pass_rate,
)

DEFAULT_CONCURRENCY = 16
"""How many calls of an eval run are in flight at once unless told otherwise."""

Progress = Callable[[int, int], None]
"""Called with (calls done, calls in all) as the run advances."""

_Repetition = tuple[Output | CallError, tuple[AssertionResult, ...] | CallError]


@dataclass(frozen=True)
class CaseRun:
    """One case of one version: its grade and what each repetition's call produced."""

    case: Case
    grade: CaseGrade
    outputs: tuple[Output | CallError, ...]

    @property
    def cost_usd(self) -> float | None:
        """The case's calls' cost over its repetitions (None when no call's cost is known)."""
        costs = [o.cost_usd for o in self.outputs if isinstance(o, Output) and o.cost_usd is not None]
        return math.fsum(costs) if costs else None

    @property
    def latency_ms(self) -> float | None:
        """The mean latency of the case's successful calls."""
        times = [o.latency_ms for o in self.outputs if isinstance(o, Output) and o.latency_ms is not None]
        return math.fsum(times) / len(times) if times else None


@dataclass(frozen=True)
class VersionRun:
    """A version's cases, in the eval's order, with its pass rate and its verdict."""

    version: PromptVersion
    cases: tuple[CaseRun, ...]
    rate: PassRate
    comparison: PairedComparison | None
    verdict: GateVerdict

    @property
    def score_mean(self) -> float | None:
        """The mean case score (None with no case)."""
        return math.fsum(c.grade.score for c in self.cases) / len(self.cases) if self.cases else None

    @property
    def cost_usd(self) -> float | None:
        """The version's total cost (None when no call's cost is known)."""
        costs = [c.cost_usd for c in self.cases if c.cost_usd is not None]
        return math.fsum(costs) if costs else None

    @property
    def latency_ms_mean(self) -> float | None:
        """The mean latency of the version's successful calls."""
        times = [c.latency_ms for c in self.cases if c.latency_ms is not None]
        return math.fsum(times) / len(times) if times else None


@dataclass(frozen=True)
class EvalRun:
    """An eval over versions: each version's cases and figures, the baseline, and the gate."""

    definition: EvalDefinition
    baseline: PromptVersion
    repeat: int
    versions: tuple[VersionRun, ...]
    verdict: GateVerdict


def _name(version: PromptVersion) -> str:
    return f"v{version.number} ({version.variant})"


def summarize(
    definition: EvalDefinition,
    baseline: PromptVersion,
    grades: dict[int, list[CaseRun]],
    versions: Sequence[PromptVersion],
    *,
    repeat: int,
    rule: GateRule | None = None,
) -> EvalRun:
    """Pass rates, paired comparisons with the baseline, and the gate, from graded cases."""
    rule = rule or definition.gate
    base = {c.case.id: c.grade.status is CaseStatus.PASSED for c in grades[baseline.number]}
    runs = []
    for version in versions:
        cases = grades[version.number]
        count = {status: sum(1 for c in cases if c.grade.status is status) for status in CaseStatus}
        rate = pass_rate(count[CaseStatus.PASSED], count[CaseStatus.FAILED], count[CaseStatus.ERROR])
        comparison = None
        if version.number != baseline.number:
            comparison = compare_paired({c.case.id: c.grade.status is CaseStatus.PASSED for c in cases}, base)
        verdict = check_gate(rule, name=_name(version), rate=rate, comparison=comparison)
        runs.append(VersionRun(version, tuple(cases), rate, comparison, verdict))
    return EvalRun(definition, baseline, repeat, tuple(runs), combine_verdicts(r.verdict for r in runs))


async def run_eval(
    definition: EvalDefinition,
    versions: Sequence[PromptVersion],
    *,
    baseline: PromptVersion,
    complete: CompleteVersion,
    judge: Judge | None = None,
    embed: Embed | None = None,
    repeat: int | None = None,
    concurrency: int = DEFAULT_CONCURRENCY,
    progress: Progress | None = None,
) -> EvalRun:
    """Run every case of the eval on every version (the baseline among them) and grade them."""
    if baseline.number not in {v.number for v in versions}:
        raise ValueError("the baseline must be one of the versions")
    repeats = repeat or definition.repeat
    # Versions interleaved: when they call different providers, each provider stays busy.
    jobs = [(v, i, slot) for i in range(len(definition.cases)) for slot in range(repeats) for v in versions]
    results: dict[tuple[int, int, int], _Repetition] = {}
    total = len(jobs)
    pending = iter(jobs)

    async def one(version: PromptVersion, case: Case, slot: int) -> _Repetition:
        try:
            output = await complete(version, case.vars, cache_slot=slot)
        except PromptOpsError as exc:
            failed = CallError(exc.message)
            return failed, failed
        graded = await run_assertions(
            definition.assertions_for(case), output, case, complete=judge, embed=embed
        )
        return output, graded

    async def worker() -> None:
        # A fixed pool of workers over one job list: no task (or semaphore waiter) per call,
        # which costs more CPU than the call's own work once there are thousands.
        for version, index, slot in pending:
            results[version.number, index, slot] = await one(version, definition.cases[index], slot)
            if progress is not None:
                progress(len(results), total)

    if progress is not None:
        progress(0, total)
    await asyncio.gather(*(worker() for _ in range(max(1, min(concurrency, total)))))
    grades: dict[int, list[CaseRun]] = {}
    for version in versions:
        runs = []
        for index, case in enumerate(definition.cases):
            reps = [results[version.number, index, slot] for slot in range(repeats)]
            grade = grade_case([r for _, r in reps], threshold=definition.threshold)
            runs.append(CaseRun(case, grade, tuple(o for o, _ in reps)))
        grades[version.number] = runs
    return summarize(definition, baseline, grades, versions, repeat=repeats)
