"""The eval routes: eval definitions with their latest runs, and one run with its cases."""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter
from pydantic import BaseModel
from starlette.responses import Response

from promptops.server.api import JSON, READ, RuntimeDep
from promptops.server.auth import ReadKey
from promptops.server.schemas.common import PathInt
from promptops.server.schemas.errors import error_responses


class EvalVersionPublic(BaseModel):
    """A version's figures in a run: counts, pass rate and its 95% Wilson interval, the verdict."""

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
    gate_reasons: list[str]


class EvalComparisonPublic(BaseModel):
    """A version against the baseline on the same cases: paired difference, interval, McNemar p."""

    version: int
    baseline: int
    diff: float
    ci_low: float
    ci_high: float
    p_value: float
    improved: list[str]
    regressed: list[str]


class EvalRunPublic(BaseModel):
    """One stored eval run."""

    id: int
    eval: str
    prompt: str
    dataset_hash: str
    cases: int
    repeat: int
    baseline: int | None
    created_at: float
    actor: str
    versions: list[EvalVersionPublic]
    comparisons: list[EvalComparisonPublic]
    gate_passed: bool
    gate_reasons: list[str]
    started_experiments: list[int]


class EvalAssertionPublic(BaseModel):
    """One assertion's result on one repetition of a case."""

    repetition: int
    type: str
    passed: bool
    score: float
    reason: str
    error: bool
    weight: float


class EvalCasePublic(BaseModel):
    """One case of one version in a run: outcome, outputs (or call errors), assertion results."""

    case_id: str
    position: int
    version: int
    status: str
    score: float
    reason: str
    outputs: list[str | None]
    errors: list[str | None]
    assertions: list[EvalAssertionPublic]
    cost_usd: float | None
    latency_ms: float | None


class EvalRunDetailPublic(EvalRunPublic):
    """A run with every case of every version."""

    case_results: list[EvalCasePublic]


class EvalPublic(BaseModel):
    """An eval definition (null fields: known only from its runs) with its latest runs."""

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
    latest_runs: list[EvalRunPublic]


class EvalListPublic(BaseModel):
    """Every eval; `problems` lists the evals folder's validation problems, if any."""

    evals: list[EvalPublic]
    problems: list[str]


router = APIRouter()


@router.get("/v1/evals", tags=["evals"], response_model=EvalListPublic, responses=error_responses(*READ))
def list_evals(rt: RuntimeDep, _: ReadKey) -> Response:
    """Eval definitions with their latest runs."""
    listing = rt.ops.evals.listing()
    return JSON(EvalListPublic.model_validate(asdict(listing)).model_dump())


@router.get(
    "/v1/evals/runs/{run_id}",
    tags=["evals"],
    response_model=EvalRunDetailPublic,
    responses=error_responses(404, *READ),
)
def get_eval_run(run_id: PathInt, rt: RuntimeDep, _: ReadKey) -> Response:
    """One eval run with its cases."""
    detail = rt.ops.evals.get_run(run_id)
    body = {**asdict(detail.run), "case_results": [asdict(c) for c in detail.cases]}
    return JSON(EvalRunDetailPublic.model_validate(body).model_dump())
