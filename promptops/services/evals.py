"""Offline evaluation: which versions an eval runs on, its runs stored, read back, and the gate.

`Evals.run` runs an eval (see `evalrunner`) over the versions `targets` picks (by default the
production version, which is the baseline, and the arms of the prompt's running and draft
experiments), stores the run with every case's outputs and assertion results, and then starts
each draft experiment of the prompt that waits for this eval and now passes its gate (see
`evalgate`), through the experiments service's audited start.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from sqlalchemy import func, insert, select
from sqlalchemy.orm import Session

from promptops.assertions import AssertionResult, CallError
from promptops.db.models import (
    ArmRow,
    EvalCaseRow,
    EvalRunRow,
    EvalRunVersionRow,
    ExperimentGateRow,
    ExperimentRow,
    PromptRow,
    VersionRow,
)
from promptops.domain import PRODUCTION, ExperimentStatus, PromptVersion
from promptops.errors import (
    EvalRunNotFound,
    ExperimentStateError,
    FileProblem,
    InvalidEvalFile,
    NotFound,
)
from promptops.evalfiles import EvalDefinition, load_eval_files, variable_problems
from promptops.services.context import Context
from promptops.services.evalgate import EvalCatalog, gate_status
from promptops.services.evalrunner import EvalRun, VersionRun
from promptops.services.experiments import Experiments
from promptops.services.registry import Registry
from promptops.stats.evals import pass_rate

RUNS_PER_EVAL = 5
"""How many latest runs a listing shows per eval."""


@dataclass(frozen=True)
class VersionSummary:
    """A version's figures in a run: counts, pass rate with its 95% interval, cost, latency, verdict."""

    version: int
    variant: str
    passed: int
    failed: int
    errors: int
    pass_rate: float
    ci_low: float
    ci_high: float
    score_mean: float | None
    cost_usd: float | None
    latency_ms_mean: float | None
    gate_passed: bool
    gate_reasons: tuple[str, ...]


@dataclass(frozen=True)
class ComparisonSummary:
    """A version against the baseline on the same cases: paired difference, interval, McNemar p."""

    version: int
    baseline: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    improved: tuple[str, ...]
    regressed: tuple[str, ...]


@dataclass(frozen=True)
class RunSummary:
    """One stored eval run: what ran, each version's figures, the comparisons and the gate."""

    id: int
    eval: str
    prompt: str
    dataset_hash: str
    cases: int
    repeat: int
    baseline: int | None
    created_at: float
    actor: str
    versions: tuple[VersionSummary, ...]
    comparisons: tuple[ComparisonSummary, ...]
    gate_passed: bool
    gate_reasons: tuple[str, ...]
    started_experiments: tuple[int, ...] = ()


@dataclass(frozen=True)
class AssertionOutcome:
    """One assertion's result on one repetition of a case."""

    repetition: int
    type: str
    passed: bool
    score: float
    reason: str
    error: bool
    weight: float


@dataclass(frozen=True)
class CaseOutcome:
    """One case of one version in a stored run."""

    case_id: str
    position: int
    version: int
    status: str
    score: float
    reason: str
    outputs: tuple[str | None, ...]
    errors: tuple[str | None, ...]
    assertions: tuple[AssertionOutcome, ...]
    cost_usd: float | None
    latency_ms: float | None


@dataclass(frozen=True)
class RunDetail:
    """A stored run with all its cases."""

    run: RunSummary
    cases: tuple[CaseOutcome, ...]


@dataclass(frozen=True)
class EvalSummary:
    """An eval definition (from its file, or only known from its runs) with its latest runs."""

    name: str
    prompt: str
    path: str | None
    description: str | None
    cases: int | None
    dataset_hash: str | None
    threshold: float | None
    repeat: int | None
    min_pass_rate: float | None
    max_regression: float | None
    latest_runs: tuple[RunSummary, ...]


@dataclass(frozen=True)
class EvalListing:
    """Every eval with its latest runs, and the problems of the evals folder if it is invalid."""

    evals: tuple[EvalSummary, ...]
    problems: tuple[str, ...]


def _version_summary(row: EvalRunVersionRow) -> VersionSummary:
    rate = pass_rate(row.passed, row.failed, row.errors)
    return VersionSummary(
        version=row.number,
        variant=row.variant,
        passed=row.passed,
        failed=row.failed,
        errors=row.errors,
        pass_rate=rate.rate,
        ci_low=rate.ci_low,
        ci_high=rate.ci_high,
        score_mean=row.score_mean,
        cost_usd=row.cost_usd,
        latency_ms_mean=row.latency_ms_mean,
        gate_passed=row.gate_passed,
        gate_reasons=tuple(row.gate_reasons or ()),
    )


def _comparison_summary(row: EvalRunVersionRow, baseline: int) -> ComparisonSummary | None:
    c = row.comparison
    if c is None:
        return None
    return ComparisonSummary(
        version=row.number,
        baseline=baseline,
        diff=float(c["diff"]),
        ci_low=float(c["ci_low"]),
        ci_high=float(c["ci_high"]),
        p_value=float(c["p_value"]),
        improved=tuple(c.get("improved") or ()),
        regressed=tuple(c.get("regressed") or ()),
    )


def _finite(x: float | None) -> float | None:
    return x if x is None or math.isfinite(x) else None


class Evals:
    """Run evals over versions, store their runs, read them back, and start gated experiments."""

    def __init__(self, ctx: Context, registry: Registry, experiments: Experiments) -> None:
        self.ctx = ctx
        self.registry = registry
        self.experiments = experiments
        self.catalog: EvalCatalog = experiments.catalog

    # -- definitions and targets ------------------------------------------------------------
    def definitions(self, paths: Sequence[str | Path] | None = None) -> list[EvalDefinition]:
        """The evals of the paths (the evals folder by default), checked against the registry."""
        definitions = load_eval_files(list(paths) if paths else [self.ctx.settings.evals_dir])
        problems = []
        for d in definitions:
            try:
                production = self.registry.resolve(d.prompt)
            except NotFound:
                problems.append(
                    _problem(d, f"prompt {d.prompt!r} is not in the registry (run promptops sync first)")
                )
                continue
            problems.extend(variable_problems(d, production.content.variables))
        if problems:
            raise InvalidEvalFile(problems)
        return definitions

    def targets(
        self,
        definition: EvalDefinition,
        *,
        versions: Sequence[int] = (),
        labels: Sequence[str] = (),
        baseline: str = PRODUCTION,
    ) -> tuple[PromptVersion, list[PromptVersion]]:
        """The baseline version and every version to run, the baseline first (see the module)."""
        base = self.registry.resolve(definition.prompt, label=baseline)
        chosen: list[PromptVersion] = [base]
        if versions or labels:
            chosen += [self.registry.resolve(definition.prompt, version=n) for n in versions]
            chosen += [self.registry.resolve(definition.prompt, label=label) for label in labels]
        else:
            with self.ctx.tx() as s:
                p = self.registry.prompt_row(s, definition.prompt)
                numbers = list(
                    s.scalars(
                        select(VersionRow.number)
                        .join(ArmRow, ArmRow.version_id == VersionRow.id)
                        .join(ExperimentRow, ExperimentRow.id == ArmRow.experiment_id)
                        .where(
                            ExperimentRow.prompt_id == p.id,
                            ExperimentRow.status.in_((ExperimentStatus.RUNNING, ExperimentStatus.DRAFT)),
                        )
                        .order_by(VersionRow.number)
                        .distinct()
                    )
                )
            chosen += [self.registry.resolve(definition.prompt, version=n) for n in numbers]
        unique: dict[int, PromptVersion] = {}
        for v in chosen:
            unique.setdefault(v.number, v)
        return base, list(unique.values())

    # -- storing ----------------------------------------------------------------------------
    def record(self, run: EvalRun, *, actor: str = "cli") -> RunSummary:
        """Store a finished run, then start the drafts that waited for it and now pass."""
        d = run.definition
        with self.ctx.tx() as s:
            p = self.registry.prompt_row(s, d.prompt)
            row = EvalRunRow(
                eval_name=d.name,
                prompt_id=p.id,
                dataset_hash=d.dataset_hash,
                cases=len(d.cases),
                repeat=run.repeat,
                threshold=d.threshold,
                gate={"min_pass_rate": d.gate.min_pass_rate, "max_regression": d.gate.max_regression},
                baseline_version=run.baseline.number,
                gate_passed=run.verdict.passed,
                gate_reasons=list(run.verdict.reasons),
                source_path=d.path,
                actor=actor[:128],
                created_at=self.ctx.now(),
            )
            s.add(row)
            s.flush()
            for position, vr in enumerate(run.versions):
                self._store_version(s, row.id, p, position, vr)
            run_id = row.id
        started = self.start_gated(d.prompt, d.name, actor=actor)
        with self.ctx.tx() as s:
            summary = self._summaries(s, [s.get(EvalRunRow, run_id)])[0]  # type: ignore[list-item]
        return replace(summary, started_experiments=started)

    def _store_version(self, s: Session, run_id: int, p: PromptRow, position: int, vr: VersionRun) -> None:
        version = self.registry.version_row(s, p, vr.version.number)
        comparison = (
            None
            if vr.comparison is None
            else {
                **asdict(vr.comparison),
                "improved": list(vr.comparison.improved),
                "regressed": list(vr.comparison.regressed),
            }
        )
        s.add(
            EvalRunVersionRow(
                run_id=run_id,
                version_id=version.id,
                position=position,
                number=version.number,
                variant=version.variant,
                passed=vr.rate.passed,
                failed=vr.rate.failed,
                errors=vr.rate.errors,
                score_mean=_finite(vr.score_mean),
                cost_usd=_finite(vr.cost_usd),
                latency_ms_mean=_finite(vr.latency_ms_mean),
                comparison=comparison,
                gate_passed=vr.verdict.passed,
                gate_reasons=list(vr.verdict.reasons),
            )
        )
        rows = []
        for i, case in enumerate(vr.cases):
            outputs = [
                {"error": o.message}
                if isinstance(o, CallError)
                else {"text": o.text, "cost_usd": o.cost_usd, "latency_ms": o.latency_ms}
                for o in case.outputs
            ]
            reps = [
                {"error": r.message} if isinstance(r, CallError) else [_result_json(a) for a in r]
                for r in case.grade.repetitions
            ]
            rows.append(
                dict(
                    run_id=run_id,
                    version_id=version.id,
                    position=i,
                    case_id=case.case.id,
                    status=case.grade.status.value,
                    score=case.grade.score,
                    reason=case.grade.reason,
                    outputs=outputs,
                    assertions=reps,
                    cost_usd=_finite(case.cost_usd),
                    latency_ms=_finite(case.latency_ms),
                )
            )
        if rows:
            s.execute(insert(EvalCaseRow), rows)

    def start_gated(self, prompt: str, eval_name: str, *, actor: str) -> tuple[int, ...]:
        """Start each draft of the prompt that waits for this eval and now passes its gate."""
        with self.ctx.tx() as s:
            p = self.registry.prompt_row(s, prompt)
            drafts = list(
                s.scalars(
                    select(ExperimentRow)
                    .join(ExperimentGateRow, ExperimentGateRow.experiment_id == ExperimentRow.id)
                    .where(
                        ExperimentRow.prompt_id == p.id,
                        ExperimentRow.status == ExperimentStatus.DRAFT,
                        ExperimentGateRow.eval_name == eval_name,
                        ExperimentGateRow.auto_start,
                    )
                    .order_by(ExperimentRow.id)
                )
            )
            ready = [e.id for e in drafts if gate_status(s, e, eval_name, self.catalog).passed]
        started = []
        for exp_id in ready:
            try:
                self.experiments.start(exp_id, actor=actor)
            except ExperimentStateError:
                continue  # another experiment of the prompt runs; the draft keeps waiting
            started.append(exp_id)
        return tuple(started)

    # -- reads ------------------------------------------------------------------------------
    def _summaries(self, s: Session, runs: Sequence[EvalRunRow]) -> list[RunSummary]:
        if not runs:
            return []
        prompts = dict(
            s.execute(
                select(PromptRow.id, PromptRow.name).where(PromptRow.id.in_({r.prompt_id for r in runs}))
            ).all()
        )
        by_run: dict[int, list[EvalRunVersionRow]] = {}
        for v in s.scalars(
            select(EvalRunVersionRow)
            .where(EvalRunVersionRow.run_id.in_([r.id for r in runs]))
            .order_by(EvalRunVersionRow.run_id, EvalRunVersionRow.position)
        ):
            by_run.setdefault(v.run_id, []).append(v)
        out = []
        for r in runs:
            rows = by_run.get(r.id, [])
            base = r.baseline_version if r.baseline_version is not None else 0
            comparisons = [c for c in (_comparison_summary(v, base) for v in rows) if c is not None]
            out.append(
                RunSummary(
                    id=r.id,
                    eval=r.eval_name,
                    prompt=prompts.get(r.prompt_id, ""),
                    dataset_hash=r.dataset_hash,
                    cases=r.cases,
                    repeat=r.repeat,
                    baseline=r.baseline_version,
                    created_at=r.created_at,
                    actor=r.actor,
                    versions=tuple(_version_summary(v) for v in rows),
                    comparisons=tuple(comparisons),
                    gate_passed=r.gate_passed,
                    gate_reasons=tuple(r.gate_reasons or ()),
                )
            )
        return out

    def get_run(self, run_id: int) -> RunDetail:
        """One run with every case of every version (cases in the eval's order)."""
        if not 0 < run_id < 2**31:
            raise EvalRunNotFound(run_id)
        with self.ctx.tx() as s:
            row = s.get(EvalRunRow, run_id)
            if row is None:
                raise EvalRunNotFound(run_id)
            summary = self._summaries(s, [row])[0]
            numbers = dict(
                s.execute(
                    select(EvalRunVersionRow.version_id, EvalRunVersionRow.number).where(
                        EvalRunVersionRow.run_id == run_id
                    )
                ).all()
            )
            cases = [
                _case_outcome(c, numbers.get(c.version_id, 0))
                for c in s.scalars(
                    select(EvalCaseRow)
                    .where(EvalCaseRow.run_id == run_id)
                    .order_by(EvalCaseRow.version_id, EvalCaseRow.position)
                )
            ]
        return RunDetail(summary, tuple(cases))

    def runs(
        self, *, eval_name: str | None = None, prompt: str | None = None, limit: int = 50
    ) -> list[RunSummary]:
        """Stored runs, newest first."""
        with self.ctx.tx() as s:
            q = select(EvalRunRow).order_by(EvalRunRow.id.desc()).limit(limit)
            if eval_name is not None:
                q = q.where(EvalRunRow.eval_name == eval_name)
            if prompt is not None:
                q = q.where(EvalRunRow.prompt_id == self.registry.prompt_row(s, prompt).id)
            return self._summaries(s, list(s.scalars(q)))

    def latest_by_eval(self, prompt: str) -> list[RunSummary]:
        """The latest run of each eval of a prompt."""
        with self.ctx.tx() as s:
            p = self.registry.prompt_row(s, prompt)
            latest = (
                select(func.max(EvalRunRow.id))
                .where(EvalRunRow.prompt_id == p.id)
                .group_by(EvalRunRow.eval_name)
            )
            rows = list(
                s.scalars(select(EvalRunRow).where(EvalRunRow.id.in_(latest)).order_by(EvalRunRow.eval_name))
            )
            return self._summaries(s, rows)

    def listing(self, *, runs_per_eval: int = RUNS_PER_EVAL) -> EvalListing:
        """The evals of the evals folder (and any known only from runs) with their latest runs."""
        definitions, problems = self.catalog.load()
        with self.ctx.tx() as s:
            names = set(definitions) | set(s.scalars(select(EvalRunRow.eval_name).distinct()))
            recent: dict[str, list[RunSummary]] = {}
            for name in names:
                rows = list(
                    s.scalars(
                        select(EvalRunRow)
                        .where(EvalRunRow.eval_name == name)
                        .order_by(EvalRunRow.id.desc())
                        .limit(runs_per_eval)
                    )
                )
                recent[name] = self._summaries(s, rows)
        out = []
        for name in sorted(names):
            d = definitions.get(name)
            runs = tuple(recent.get(name, ()))
            out.append(
                EvalSummary(
                    name=name,
                    prompt=d.prompt if d else (runs[0].prompt if runs else ""),
                    path=d.path if d else None,
                    description=d.description if d else None,
                    cases=len(d.cases) if d else None,
                    dataset_hash=d.dataset_hash if d else None,
                    threshold=d.threshold if d else None,
                    repeat=d.repeat if d else None,
                    min_pass_rate=d.gate.min_pass_rate if d else None,
                    max_regression=d.gate.max_regression if d else None,
                    latest_runs=runs,
                )
            )
        return EvalListing(tuple(out), problems)


def _result_json(a: AssertionResult) -> dict[str, Any]:
    # What dataclasses.asdict gives, without its deep copies (most of storing a run's time).
    return {
        "type": a.type,
        "passed": a.passed,
        "score": a.score,
        "reason": a.reason,
        "error": a.error,
        "weight": a.weight,
    }


def _problem(d: EvalDefinition, message: str) -> FileProblem:
    return FileProblem(d.path, d.line, message)


def _case_outcome(row: EvalCaseRow, version: int) -> CaseOutcome:
    outputs: list[str | None] = []
    errors: list[str | None] = []
    for o in row.outputs or []:
        outputs.append(o.get("text") if isinstance(o, dict) else None)
        errors.append(o.get("error") if isinstance(o, dict) else None)
    assertions = []
    for i, rep in enumerate(row.assertions or [], 1):
        if isinstance(rep, list):
            assertions += [
                AssertionOutcome(
                    repetition=i,
                    type=str(a.get("type")),
                    passed=bool(a.get("passed")),
                    score=float(a.get("score") or 0.0),
                    reason=str(a.get("reason") or ""),
                    error=bool(a.get("error")),
                    weight=float(a.get("weight") or 0.0),
                )
                for a in rep
            ]
    return CaseOutcome(
        case_id=row.case_id,
        position=row.position,
        version=version,
        status=row.status,
        score=row.score,
        reason=row.reason,
        outputs=tuple(outputs),
        errors=tuple(errors),
        assertions=tuple(assertions),
        cost_usd=row.cost_usd,
        latency_ms=row.latency_ms,
    )
