"""The JSON API under /v1, plus /healthz and /metrics."""

from __future__ import annotations

from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from promptops.domain import ExperimentStatus
from promptops.rendering import RenderTooSlow
from promptops.server import handlers
from promptops.server.auth import AdminKey, Principal, ReadKey, bearer_principal
from promptops.server.runtime import Runtime
from promptops.server.schemas import (
    AuditPublic,
    ExperimentCreate,
    ExperimentListPublic,
    ExperimentPublic,
    FeedbackCreate,
    FeedbackPublic,
    HistoryPublic,
    LabelCreate,
    LabelMovePublic,
    PathInt,
    PromoteCreate,
    PromptListPublic,
    PromptPublic,
    RenderCreate,
    RenderPublic,
    ServeCreate,
    ServePublic,
    VersionDetailPublic,
    error_responses,
)


# `async def` on purpose: FastAPI runs a sync dependency in the threadpool, and a thread hop per
# dependency was the largest cost of a serve (bench/http.py).
async def get_runtime(request: Request) -> Runtime:
    """The server runtime."""
    return request.app.state.runtime  # type: ignore[no-any-return]


async def serve_principal(request: Request) -> Principal:
    """The caller of a serving route: any valid key (checked before the body is validated)."""
    return bearer_principal(request)


RuntimeDep = Annotated[Runtime, Depends(get_runtime)]
# The serving routes take one dependency and read the runtime from the request: each dependency
# FastAPI resolves costs about as much as the rest of its work on a serve (bench/http.py).
ServeKey = Annotated[Principal, Depends(serve_principal)]

# Every /v1 route checks the key (401, 403) and may find the database down (503); a path or
# query parameter may be malformed (422).
READ = (401, 403, 422, 503)
WRITE = (401, 403, 413, 422, 503)


class JSON(Response):
    """A JSON response encoded with orjson."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        """Encode the content."""
        return orjson.dumps(content)


router = APIRouter()


# The serving routes come first: routes are matched in order, and these take the traffic.
@router.post(
    "/v1/prompts/{name}/render",
    tags=["serving"],
    responses=error_responses(404, *WRITE),
    response_model=RenderPublic,
)
async def render(name: str, body: RenderCreate, request: Request, _: ServeKey) -> Response:
    """Render a version (production by default); records no decision."""
    rt: Runtime = request.app.state.runtime
    serving = rt.ops.serving
    if body.version is None and body.label is None:
        # As a serve: a template that can loop renders off the event loop.
        if serving.may_loop(name):
            try:
                out = serving.render_production(name, body.variables, inline=True)
            except RenderTooSlow:
                out = await run_in_threadpool(serving.render_production, name, body.variables)
        else:
            out = serving.render_production(name, body.variables)
        if out is not None:
            return JSON(out.payload())
    rendered = await run_in_threadpool(
        rt.ops.render, name, body.variables, version=body.version, label=body.label
    )
    return JSON(rendered.payload())


@router.post(
    "/v1/prompts/{name}/serve",
    tags=["serving"],
    responses=error_responses(404, *WRITE),
    response_model=ServePublic,
)
async def serve(name: str, body: ServeCreate, request: Request, _: ServeKey) -> Response:
    """Serve a prompt: an experiment arm if one runs, else production; records a decision."""
    return Response(
        await handlers.serve(request.app.state.runtime, name, body), media_type="application/json"
    )


@router.post(
    "/v1/feedback", tags=["serving"], responses=error_responses(404, *WRITE), response_model=FeedbackPublic
)
async def feedback(body: FeedbackCreate, request: Request, _: ServeKey) -> Response:
    """Record a reward for a decision; a repeat is acknowledged as a duplicate."""
    return Response(await handlers.feedback(request.app.state.runtime, body), media_type="application/json")


@router.get("/healthz", tags=["health"], responses=error_responses(503))
def healthz(rt: RuntimeDep) -> Response:
    """Health: 503 with the reasons when the database is unreachable, writes fail, or the
    decision backlog is over its bound."""
    rt.check_db()
    status = rt.status()
    ok = not status["problems"]
    return JSON({"status": "ok" if ok else "degraded", **status}, status_code=200 if ok else 503)


@router.get("/metrics", tags=["health"], include_in_schema=False)
def metrics(rt: RuntimeDep, _: ReadKey) -> Response:
    """Prometheus metrics."""
    rt.metrics.pending.set(rt.writer.pending)
    return Response(generate_latest(rt.metrics.registry), media_type=CONTENT_TYPE_LATEST)


@router.get(
    "/v1/prompts", tags=["registry"], responses=error_responses(*READ), response_model=PromptListPublic
)
def list_prompts(rt: RuntimeDep, _: ReadKey) -> Response:
    """Every prompt with its production version."""
    return JSON({"prompts": rt.ops.registry.list_prompts()})


@router.get(
    "/v1/prompts/{name}",
    tags=["registry"],
    responses=error_responses(404, *READ),
    response_model=PromptPublic,
)
def get_prompt(name: str, rt: RuntimeDep, _: ReadKey) -> Response:
    """A prompt with its versions and labels."""
    return JSON(rt.ops.registry.get_prompt(name))


@router.get(
    "/v1/prompts/{name}/versions/{number}",
    tags=["registry"],
    responses=error_responses(404, *READ),
    response_model=VersionDetailPublic,
)
def get_version(name: str, number: PathInt, rt: RuntimeDep, _: ReadKey) -> Response:
    """One version with its content."""
    return JSON(rt.ops.registry.get_version(name, number))


@router.get("/v1/prompts/{name}/diff", tags=["registry"], responses=error_responses(404, *READ))
def diff_versions(
    name: str,
    rt: RuntimeDep,
    _: ReadKey,
    a: Annotated[PathInt, Query(ge=1)],
    b: Annotated[PathInt, Query(ge=1)],
) -> Response:
    """A unified diff between two versions."""
    return JSON({"prompt": name, "a": a, "b": b, "diff": rt.ops.registry.diff(name, a, b)})


@router.post(
    "/v1/prompts/{name}/labels/{label}",
    tags=["registry"],
    responses=error_responses(404, *WRITE),
    response_model=LabelMovePublic,
)
def move_label(name: str, label: str, body: LabelCreate, rt: RuntimeDep, who: AdminKey) -> Response:
    """Move a label to a version (rollback included); admin."""
    result = rt.ops.registry.move_label(name, body.version, label, actor=who.actor)
    rt.refresh()
    return JSON(result)


@router.get(
    "/v1/experiments",
    tags=["experiments"],
    responses=error_responses(404, *READ),
    response_model=ExperimentListPublic,
)
def list_experiments(
    rt: RuntimeDep, _: ReadKey, prompt: str | None = None, status: str | None = None
) -> Response:
    """Experiments, newest first."""
    return JSON({"experiments": rt.ops.experiments.list_experiments(prompt=prompt, status=status)})


@router.get(
    "/v1/experiments/{experiment_id}",
    tags=["experiments"],
    responses=error_responses(404, *READ),
    response_model=ExperimentPublic,
)
def get_experiment(experiment_id: PathInt, rt: RuntimeDep, _: ReadKey) -> Response:
    """An experiment with per-arm figures."""
    return JSON(rt.ops.experiments.get(experiment_id))


@router.get(
    "/v1/experiments/{experiment_id}/history",
    tags=["experiments"],
    responses=error_responses(404, *READ),
    response_model=HistoryPublic,
)
def experiment_history(experiment_id: PathInt, rt: RuntimeDep, _: ReadKey) -> Response:
    """Weights and P(best) per epoch."""
    return JSON({"epochs": rt.ops.experiments.history(experiment_id)})


@router.post(
    "/v1/experiments",
    tags=["experiments"],
    status_code=201,
    responses=error_responses(404, 409, *WRITE),
    response_model=ExperimentPublic,
)
def create_experiment(body: ExperimentCreate, rt: RuntimeDep, who: AdminKey) -> Response:
    """Start (or draft) an experiment over versions of a prompt; admin."""
    exp = rt.ops.experiments.create(
        body.prompt,
        body.versions,
        metric=body.metric,
        reward=body.reward,
        strategy=body.strategy,
        weights=body.weights,
        auto_promote=body.auto_promote,
        policy=body.policy,
        start=body.status == ExperimentStatus.RUNNING,
        requires_eval=body.requires_eval,
        metrics=body.metrics,
        guardrails=body.guardrails,
        actor=who.actor,
    )
    rt.refresh()
    return JSON(exp, status_code=201)


@router.post(
    "/v1/experiments/{experiment_id}/stop",
    tags=["experiments"],
    responses=error_responses(404, 409, *WRITE),
    response_model=ExperimentPublic,
)
def stop_experiment(experiment_id: PathInt, rt: RuntimeDep, who: AdminKey) -> Response:
    """Stop an experiment; production stays; admin."""
    exp = rt.ops.experiments.stop(experiment_id, actor=who.actor)
    rt.refresh()
    return JSON(exp)


@router.post(
    "/v1/experiments/{experiment_id}/promote",
    tags=["experiments"],
    responses=error_responses(404, 409, *WRITE),
    response_model=ExperimentPublic,
)
def promote_experiment(
    experiment_id: PathInt, rt: RuntimeDep, who: AdminKey, body: PromoteCreate | None = None
) -> Response:
    """End a running experiment and move production to the winner; 409 if not running; admin."""
    exp = rt.ops.experiments.promote(experiment_id, version=body.version if body else None, actor=who.actor)
    rt.refresh()
    return JSON(exp)


@router.get("/v1/audit", tags=["registry"], responses=error_responses(*READ), response_model=AuditPublic)
def audit(
    rt: RuntimeDep,
    _: ReadKey,
    prompt: str | None = None,
    experiment_id: Annotated[PathInt | None, Query(ge=-(2**31), le=2**31 - 1)] = None,
    limit: Annotated[PathInt, Query(ge=1, le=1000)] = 200,
    offset: Annotated[PathInt, Query(ge=0, le=2**31 - 1)] = 0,
) -> Response:
    """The audit log, newest first."""
    return JSON(
        {
            "entries": rt.ops.registry.audit(
                prompt=prompt, experiment_id=experiment_id, limit=limit, offset=offset
            )
        }
    )
