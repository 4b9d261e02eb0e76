"""The dashboard's routes: sign-in, the four pages and the admin form actions, thin over pages."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from promptops.domain import PRODUCTION
from promptops.errors import EvalRunNotFound, ExperimentNotFound, InvalidInput, PromptOpsError
from promptops.server.auth import Principal, session_principal
from promptops.server.dashboard import evalpages, pages
from promptops.server.dashboard.pages import positive_id
from promptops.server.dashboard.session import (
    csrf_ok,
    end_session,
    login_redirect,
    redirect,
    runtime_of,
    safe_next,
    start_session,
)
from promptops.server.dashboard.templating import error_page, render
from promptops.server.schemas import PathInt
from promptops.services.keys import role_for

router = APIRouter(include_in_schema=False)


async def _admin_form(request: Request) -> tuple[Any, Principal | Response]:
    """The posted form and its admin sender, or the error page if the token or role is wrong."""
    form = await request.form()
    if not csrf_ok(request, form):
        return form, error_page(
            request, 403, "This form has no valid CSRF token. Reload the page and try again."
        )
    viewer = session_principal(request)
    if viewer.role is None:
        return form, error_page(request, 403, "Sign in first.")
    if not viewer.is_admin:
        return form, error_page(request, 403, "This needs an admin key; serve keys are read-only.")
    return form, viewer


def _experiment_id(value: int) -> int:
    if positive_id(value) is None:
        raise ExperimentNotFound(value)
    return value


# -- sign in and out ----------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    """The sign-in form."""
    return render(
        request, "login.html", {"next": safe_next(next), "error": None}, viewer=session_principal(request)
    )


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in with an API key: a signed, HttpOnly, SameSite=Strict session cookie."""
    form = await request.form()
    rt = runtime_of(request)
    target = safe_next(str(form.get("next", "/")))
    if not csrf_ok(request, form):
        return error_page(
            request, 403, "The sign-in form has no valid CSRF token. Reload the page and try again."
        )
    key = str(form.get("key", "")).strip()
    if not key or role_for(key, rt.key_table) is None:
        return render(
            request,
            "login.html",
            {"next": target, "error": "That key is not valid."},
            viewer=Principal(role=None),
            status=401,
        )
    resp = redirect(request, target, "Signed in.")
    start_session(request, resp, key)
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Sign out."""
    form = await request.form()
    if not csrf_ok(request, form):
        return error_page(request, 403, "This form has no valid CSRF token.")
    resp = redirect(request, "/login", "Signed out.")
    end_session(resp)
    return resp


# -- pages ----------------------------------------------------------------------------------
def _page(request: Request, template: str, build: Callable[[], dict[str, Any]]) -> Response:
    viewer = session_principal(request)
    if viewer.role is None:
        return login_redirect(request)
    return render(request, template, build(), viewer=viewer)


@router.get("/")
def overview(request: Request) -> Response:
    """Prompts and experiments at a glance."""
    return _page(request, "overview.html", lambda: pages.overview_context(runtime_of(request).ops))


@router.get("/prompts/{name}")
def prompt_page(request: Request, name: str) -> Response:
    """One prompt: versions, labels, diff, preview, rollback."""
    ops = runtime_of(request).ops
    return _page(
        request,
        "prompt.html",
        lambda: {
            **pages.prompt_context(ops, name, request.query_params),
            "evals": evalpages.prompt_eval_results(ops, name),
        },
    )


@router.get("/experiments/{experiment_id}")
def experiment_page(request: Request, experiment_id: PathInt) -> Response:
    """One experiment: arms, charts, stopping rule, audit trail."""
    return _page(
        request,
        "experiment.html",
        lambda: pages.experiment_context(runtime_of(request).ops, _experiment_id(experiment_id)),
    )


@router.get("/evals/runs/{run_id}")
def eval_run_page(request: Request, run_id: PathInt) -> Response:
    """One eval run: each version's pass rate, and two versions side by side per case."""
    if positive_id(run_id) is None:
        raise EvalRunNotFound(run_id)
    return _page(
        request,
        "eval_run.html",
        lambda: evalpages.eval_run_context(runtime_of(request).ops, run_id, request.query_params),
    )


@router.get("/audit")
def audit_page(request: Request, prompt: str | None = None, offset: int = 0) -> Response:
    """The audit log across prompts."""
    return _page(
        request,
        "audit.html",
        lambda: pages.audit_context(runtime_of(request).ops, prompt or None, min(max(offset, 0), 2**31 - 1)),
    )


# -- actions --------------------------------------------------------------------------------
async def _act(request: Request, back: str, action: Callable[[Principal, Any], str]) -> Response:
    form, who = await _admin_form(request)
    if isinstance(who, Response):
        return who
    try:
        message = await run_in_threadpool(action, who, form)
    except PromptOpsError as exc:
        return redirect(request, back, exc.message, kind="error")
    runtime_of(request).refresh()
    return redirect(request, back, message)


@router.post("/prompts/{name}/production")
async def move_production(request: Request, name: str) -> Response:
    """Move the production label to a version (rollback); admin."""

    def act(who: Principal, form: Any) -> str:
        version = positive_id(form.get("version"))
        if version is None:
            raise InvalidInput("choose a version", field="version")
        out = runtime_of(request).ops.registry.move_label(name, version, PRODUCTION, actor=who.actor)
        return f"production: version {out.previous} → {version}."

    return await _act(request, f"/prompts/{quote(name)}", act)


@router.post("/experiments/{experiment_id}/promote")
async def promote(request: Request, experiment_id: PathInt) -> Response:
    """End the experiment and move production to a chosen arm (the leader by default); admin."""

    def act(who: Principal, form: Any) -> str:
        # Empty is "the leader"; anything else must be a version, never read as the leader.
        raw = str(form.get("version") or "")
        version = positive_id(raw)
        if raw and version is None:
            raise InvalidInput("choose a version", field="version")
        exp = runtime_of(request).ops.experiments.promote(
            _experiment_id(experiment_id), version=version, actor=who.actor
        )
        return f"Experiment {experiment_id} promoted version {exp.winner} to production."

    return await _act(request, f"/experiments/{experiment_id}", act)


@router.post("/experiments/{experiment_id}/stop")
async def stop(request: Request, experiment_id: PathInt) -> Response:
    """Stop the experiment; production stays; admin."""

    def act(who: Principal, form: Any) -> str:
        runtime_of(request).ops.experiments.stop(_experiment_id(experiment_id), actor=who.actor)
        return f"Experiment {experiment_id} stopped; production stays."

    return await _act(request, f"/experiments/{experiment_id}", act)
