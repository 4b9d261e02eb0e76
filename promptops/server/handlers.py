"""Serve and feedback over HTTP, once: the FastAPI routes in `api.py` and the pure-ASGI fast path
in `fast.py` both validate with the request models of `schemas/serving.py` and answer through these
functions, so they give the same answers and count the same metrics."""

from __future__ import annotations

from typing import TYPE_CHECKING

import orjson
from starlette.concurrency import run_in_threadpool

from promptops.server.schemas.serving import FeedbackCreate, ServeCreate
from promptops.services.serving import RenderDeferred

if TYPE_CHECKING:
    from promptops.server.runtime import Runtime

RECORDED = b'{"status":"recorded"}'


async def serve(rt: Runtime, name: str, body: ServeCreate) -> bytes:
    """Serve a prompt and count the decision; the JSON answer. A template that can loop renders
    inline within a short budget (milliseconds); one that needs more is finished in a worker
    thread, so a slow render never stalls the event loop and ordinary ones pay no thread hop."""
    serving = rt.ops.serving
    if serving.may_loop(name):
        try:
            out = serving.serve(name, body.variables, unit_id=body.unit_id, inline=True)
        except RenderDeferred as slow:
            out = await run_in_threadpool(serving.serve_deferred, slow)
    else:
        out = serving.serve(name, body.variables, unit_id=body.unit_id)
    metrics = rt.metrics
    metrics.child(metrics.decisions, name, str(out.experiment_id or ""), str(out.version)).inc()
    return orjson.dumps(out.payload())


async def feedback(rt: Runtime, body: FeedbackCreate) -> bytes:
    """Record a feedback durably and count it; the JSON answer ("recorded" or "duplicate")."""
    item = rt.ops.serving.prepare_feedback(body.decision_id, body.reward, body.metric)
    status = await rt.writer.submit_feedback_async(item)
    token = item.token
    metrics = rt.metrics
    prompt, version = rt.version_labels(token.version_id)
    metrics.child(metrics.feedback, prompt, str(token.experiment_id or ""), version, status).inc()
    return RECORDED if status == "recorded" else orjson.dumps({"status": status})
