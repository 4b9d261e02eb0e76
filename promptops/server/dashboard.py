"""The dashboard: server-rendered pages over the services, with sign-in, CSRF and admin actions.

Pages read only aggregates (arm totals, per-epoch sums and snapshots) and bounded audit pages, never
the decision log, so they stay fast however many decisions an experiment has served.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from fastapi import APIRouter, FastAPI, Request
from fastapi.staticfiles import StaticFiles
from fastapi.templating import Jinja2Templates
from itsdangerous import BadSignature, URLSafeTimedSerializer
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.concurrency import run_in_threadpool
from starlette.responses import RedirectResponse, Response

from promptops.domain import PRODUCTION, VariableSpec
from promptops.errors import ExperimentNotFound, PromptOpsError
from promptops.rendering import coerce_cli_value
from promptops.server import charts
from promptops.server.auth import SESSION_COOKIE, SESSION_MAX_AGE, Principal, session_principal
from promptops.server.auth import session_token as make_session_token
from promptops.server.charts import (
    arm_label,
    fmt_duration,
    fmt_num,
    fmt_pct,
    fmt_time,
    value_format,
)
from promptops.server.runtime import Runtime
from promptops.services.keys import role_for

CSRF_COOKIE = "promptops_csrf"
FLASH_COOKIE = "promptops_flash"
AUDIT_PAGE = 100
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
                               "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY", "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin", "Cache-Control": "no-store",
}


def web_dir() -> Path:
    """The folder of templates and static files: in the wheel (`promptops/_web`) or a checkout."""
    package = Path(__file__).resolve().parent.parent
    for candidate in (package / "_web", package.parent / "web"):
        if (candidate / "templates").is_dir():
            return candidate
    raise RuntimeError(f"dashboard templates not found under {package}")


def _environment() -> Environment:
    env = Environment(loader=FileSystemLoader(web_dir() / "templates"),
                      autoescape=select_autoescape(["html"]), undefined=StrictUndefined,
                      trim_blocks=True, lstrip_blocks=True)
    env.filters.update(ts=fmt_time, duration=fmt_duration, pct=fmt_pct, num=fmt_num,
                       tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True,
                                                          default=str))
    env.globals["legend"] = charts.legend
    return env


templates = Jinja2Templates(env=_environment())
router = APIRouter(include_in_schema=False)


# -- sessions, CSRF and flash messages --------------------------------------------------------
def _rt(request: Request) -> Runtime:
    return request.app.state.runtime  # type: ignore[no-any-return]


def csrf_token(request: Request, csrf_cookie: str | None = None) -> str:
    """The form token of this browser: an HMAC of its CSRF cookie and its session cookie."""
    basis = f"{csrf_cookie or request.cookies.get(CSRF_COOKIE, '')}|" \
            f"{request.cookies.get(SESSION_COOKIE, '')}"
    return hmac.new(_rt(request).secret.encode(), basis.encode(), hashlib.sha256).hexdigest()


def _csrf_ok(request: Request, form: Any) -> bool:
    sent = str(form.get("csrf", ""))
    return bool(request.cookies.get(CSRF_COOKIE)) and hmac.compare_digest(sent, csrf_token(request))


def _flash_signer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(_rt(request).secret, salt="promptops-flash")


def _secure(request: Request) -> bool:
    return request.url.scheme == "https"


def _redirect(request: Request, url: str, message: str | None = None,
              kind: str = "ok") -> RedirectResponse:
    resp = RedirectResponse(url, status_code=303)
    if message:
        resp.set_cookie(FLASH_COOKIE, _flash_signer(request).dumps([kind, message]), max_age=60,
                        httponly=True, samesite="strict", secure=_secure(request))
    return resp


def _flash(request: Request) -> dict[str, str] | None:
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        kind, message = _flash_signer(request).loads(raw, max_age=60)
    except (BadSignature, ValueError, TypeError):
        return None
    return {"kind": str(kind), "message": str(message)}


def render(request: Request, name: str, context: dict[str, Any], *, viewer: Principal,
           status: int = 200) -> Response:
    """A page: the template with the viewer, banner, flash message and a fresh CSRF token."""
    cookie = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    flash = _flash(request)
    base = {"viewer": viewer, "auth_off": _rt(request).auth_off, "flash": flash,
            "csrf": csrf_token(request, cookie), "path": request.url.path}
    resp = templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
    if CSRF_COOKIE not in request.cookies:
        resp.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict",
                        secure=_secure(request))
    if flash or FLASH_COOKIE in request.cookies:
        resp.delete_cookie(FLASH_COOKIE)
    resp.headers.update(SECURITY_HEADERS)
    return resp


def error_page(request: Request, status: int, message: str) -> Response:
    """The HTML error page (the app's error handlers call this for dashboard requests)."""
    return render(request, "error.html", {"status": status, "message": message},
                  viewer=session_principal(request), status=status)


def _login_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def _safe_next(target: str | None) -> str:
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target


async def _admin_form(request: Request) -> tuple[Any, Principal | Response]:
    """The posted form and its admin sender, or the error page if the token or role is wrong."""
    form = await request.form()
    if not _csrf_ok(request, form):
        return form, error_page(request, 403, "This form has no valid CSRF token. Reload the "
                                              "page and try again.")
    viewer = session_principal(request)
    if viewer.role is None:
        return form, error_page(request, 403, "Sign in first.")
    if not viewer.is_admin:
        return form, error_page(request, 403, "This needs an admin key; serve keys are read-only.")
    return form, viewer


def _int(value: Any) -> int | None:
    """A positive id from a form or query value, or None (ids past 2**62 are treated as absent)."""
    try:
        number = int(str(value))
    except (TypeError, ValueError):
        return None
    return number if 0 < number < 2**62 else None


def _experiment_id(value: int) -> int:
    if _int(value) is None:
        raise ExperimentNotFound(value)
    return value


# -- sign in and out ----------------------------------------------------------------------
@router.get("/login")
def login_page(request: Request, next: str = "/") -> Response:
    """The sign-in form."""
    return render(request, "login.html", {"next": _safe_next(next), "error": None},
                  viewer=session_principal(request))


@router.post("/login")
async def login(request: Request) -> Response:
    """Sign in with an API key: a signed, HttpOnly, SameSite=Strict session cookie."""
    form = await request.form()
    rt = _rt(request)
    target = _safe_next(str(form.get("next", "/")))
    if not _csrf_ok(request, form):
        return error_page(request, 403, "The sign-in form has no valid CSRF token. Reload the "
                                        "page and try again.")
    key = str(form.get("key", "")).strip()
    if not key or role_for(key, rt.key_table) is None:
        return render(request, "login.html", {"next": target, "error": "That key is not valid."},
                      viewer=Principal(role=None), status=401)
    resp = _redirect(request, target, "Signed in.")
    resp.set_cookie(SESSION_COOKIE, make_session_token(rt.secret, key), max_age=SESSION_MAX_AGE,
                    httponly=True, samesite="strict", secure=_secure(request))
    return resp


@router.post("/logout")
async def logout(request: Request) -> Response:
    """Sign out."""
    form = await request.form()
    if not _csrf_ok(request, form):
        return error_page(request, 403, "This form has no valid CSRF token.")
    resp = _redirect(request, "/login", "Signed out.")
    resp.delete_cookie(SESSION_COOKIE)
    return resp


# -- pages ----------------------------------------------------------------------------------
def summarize(exp: dict[str, Any], now: float) -> dict[str, Any]:
    """An experiment's overview row: leader by P(best), decisions, time running."""
    scored = [a for a in exp["arms"] if a.get("p_best") is not None]
    leader = max(scored, key=lambda a: a["p_best"]) if scored else None
    started = exp.get("started_at")
    running_for = None if started is None else (exp.get("ended_at") or now) - started
    return {**exp, "leader": arm_label(leader) if leader else None,
            "leader_p_best": leader["p_best"] if leader else None,
            "decisions": sum(a["decisions"] for a in exp["arms"]),
            "running_for": running_for}


def overview_context(rt: Runtime) -> dict[str, Any]:
    """What the overview shows."""
    now = rt.ops.ctx.now()
    running = [summarize(e, now) for e in rt.ops.experiments.list(status="running")]
    recent = [summarize(e, now) for e in rt.ops.experiments.list(limit=30)
              if e["status"] != "running"][:10]
    live = {e["prompt"]: e["id"] for e in running}
    prompts = [{**p, "experiment_id": live.get(p["name"])} for p in rt.ops.registry.list_prompts()]
    return {"prompts": prompts, "running": running, "recent": recent,
            "audit": rt.ops.registry.audit(limit=8)}


def sample_value(spec: VariableSpec) -> Any:
    """A plausible example value of a declared variable for the preview."""
    if spec.has_default:
        return spec.default
    if spec.enum:
        return spec.enum[0]
    return {"integer": 1, "number": 0.5, "boolean": True, "object": {},
            "list": [f"sample {spec.name} 1", f"sample {spec.name} 2"]}.get(
        spec.type, f"sample {spec.name}"[: spec.max_length or None])


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = {"+": "add", "-": "del"}.get(line[:1], "same")
        out.append((kind, line))
    return out


def prompt_context(rt: Runtime, name: str, query: Any) -> dict[str, Any]:
    """What the prompt page shows: versions, labels, a diff, a preview, experiments, audit."""
    reg = rt.ops.registry
    prompt = reg.get_prompt(name)
    numbers = [v["number"] for v in prompt["versions"]]
    production = prompt["labels"].get(PRODUCTION)
    latest = numbers[0] if numbers else None
    b = _int(query.get("b")) or latest
    a = _int(query.get("a")) or (production if production != b else None)
    if a is None and b is not None:
        a = b - 1 if b - 1 in numbers else b
    diff = reg.diff(name, a, b) if a and b and a != b else ""
    pv = _int(query.get("version")) or production or latest
    preview: dict[str, Any] = {"version": pv, "fields": [], "result": None, "error": None}
    if pv is not None:
        content = reg.get_version(name, pv)["content"]
        values: dict[str, Any] = {}
        for var_name, data in (content.get("variables") or {}).items():
            spec = VariableSpec.from_dict(var_name, data)
            raw = query.get(f"var.{var_name}")
            text = _as_text(sample_value(spec)) if raw is None else str(raw)
            choices = (["true", "false"] if spec.type == "boolean"
                       else [_as_text(c) for c in spec.enum or ()])
            preview["fields"].append({"name": var_name, "type": spec.type, "value": text,
                                      "required": spec.required, "choices": choices,
                                      "description": spec.description})
            if text == "" and not spec.required:
                continue
            try:
                values[var_name] = coerce_cli_value(spec, text)
            except PromptOpsError as exc:
                preview["error"] = exc.message
        if preview["error"] is None:
            try:
                preview["result"] = reg.render(name, values, version=pv).payload()
            except PromptOpsError as exc:
                preview["error"] = exc.message
    now = rt.ops.ctx.now()
    return {"prompt": prompt, "numbers": numbers, "production": production,
            "diff": {"a": a, "b": b, "lines": diff_lines(diff)}, "preview": preview,
            "experiments": [summarize(e, now) for e in rt.ops.experiments.list(prompt=name,
                                                                                limit=20)],
            "audit": reg.audit(prompt=name, limit=20)}


def stopping_rule(exp: dict[str, Any], now: float) -> list[str]:
    """The state of the stopping rule in plain words."""
    pol, arms, fmt = exp["policy"], exp["arms"], value_format(exp["reward"])
    remaining = exp.get("value_remaining")
    remaining_line = (f"Value remaining: with 95% probability no arm beats the leader by more "
                      f"than {fmt_pct(remaining)} of its mean." if remaining is not None else None)
    if exp["status"] not in ("running", "draft"):
        winner = f"; the winner is version {exp['winner']}" if exp["winner"] else ""
        ended = [f"Ended {exp['status']}: {exp['end_reason'] or 'no reason recorded'}{winner}."]
        return ended + ([remaining_line] if remaining_line and not exp["winner"] else [])
    k = len(arms)
    lines = []
    fewest = min((a["n"] for a in arms), default=0)
    hours = (now - exp["started_at"]) / 3600 if exp["started_at"] is not None else 0.0
    if fewest < pol["min_samples_per_arm"] or hours < pol["min_hours"]:
        lines.append(f"Burn-in: equal weights until every arm has {pol['min_samples_per_arm']:,} "
                     f"matured outcomes (fewest so far: {fewest:,}) and {pol['min_hours']:g} h "
                     f"have passed ({hours:.1f} h so far).")
    need = 1 - pol["alpha"] / max(k - 1, 1)
    formula = f"1 − {pol['alpha']:g}" + (f"/{k - 1}" if k > 2 else "")
    challengers = [a for a in arms if not a["is_control"] and a["p_beats_control"] is not None]
    if challengers:
        best = min(challengers, key=lambda a: (a["expected_loss"] is None,
                                               a["expected_loss"] or 0.0, -a["p_beats_control"]))
        lines.append(f"To promote a challenger it needs P(beats control) ≥ {formula} = "
                     f"{fmt_pct(need)}; {arm_label(best)} is at "
                     f"{fmt_pct(best['p_beats_control'])}.")
        if best["expected_loss"] is not None and best["mean"] is not None:
            lines.append(f"Its expected loss must also be at most {fmt_pct(pol['loss_threshold'])}"
                         f" of its mean: {fmt(best['expected_loss'])} now, limit "
                         f"{fmt(pol['loss_threshold'] * best['mean'])}.")
    else:
        lines.append(f"To promote a challenger it needs P(beats control) ≥ {formula} = "
                     f"{fmt_pct(need)}; no arm has matured outcomes yet.")
    control = next((a for a in arms if a["is_control"]), None)
    if control is not None and control["p_best"] is not None:
        lines.append(f"To keep the control early it needs P(best) ≥ "
                     f"{fmt_pct(pol['control_p_best'])}; {arm_label(control)} is at "
                     f"{fmt_pct(control['p_best'])}.")
    every = pol["max_decisions"] / max(pol["max_checks"], 1)
    lines.append(f"{exp['checks_done']} of at most {pol['max_checks']} stopping checks done "
                 f"(one per {every:,.0f} matured outcomes).")
    total = sum(a["decisions"] for a in arms)
    lines.append(f"Without a decision it ends inconclusive at {pol['max_decisions']:,} "
                 f"decisions or {pol['max_days']:g} days ({total:,} decisions, "
                 f"{hours / 24:.1f} days so far).")
    if remaining_line:
        lines.append(remaining_line)
    if exp["srm_alarm"]:
        lines.append("Promotion is frozen while the sample-ratio-mismatch alarm is raised.")
    if exp["reason"]:
        lines.append(f"Latest update: {exp['reason']}.")
    return lines


def experiment_context(rt: Runtime, experiment_id: int) -> dict[str, Any]:
    """What the experiment page shows: arms, charts, the stopping rule, alarm and audit trail."""
    now = rt.ops.ctx.now()
    exp = summarize(rt.ops.experiments.get(experiment_id), now)
    history = rt.ops.experiments.history(experiment_id)
    fmt = value_format(exp["reward"])
    arms = [{**a, "label": arm_label(a), "mean_text": fmt(a["mean"]),
             "ci_text": (f"{fmt(a['ci_low'])} – {fmt(a['ci_high'])}"
                         if a["ci_low"] is not None and a["ci_high"] is not None else "—"),
             "loss_text": fmt(a["expected_loss"])} for a in exp["arms"]]
    audit = rt.ops.registry.audit(experiment_id=experiment_id, limit=100)
    evidence_rows = []
    for entry in audit:
        ev = (entry["details"] or {}).get("evidence") or {}
        rows = [{"label": arms[i]["label"] if i < len(arms) else f"arm {i}",
                 "mean": fmt(a.get("mean")), "p_best": fmt_pct(a.get("p_best")),
                 "p_beats_control": fmt_pct(a.get("p_beats_control")),
                 "loss": fmt(a.get("expected_loss"))} for i, a in enumerate(ev.get("arms") or [])]
        evidence_rows.append({"rows": rows, "reason": ev.get("reason"), "at": ev.get("at")})
    return {"exp": exp, "arms": arms, "history": history, "rule": stopping_rule(exp, now),
            "charts": charts.experiment_charts(exp, history, now),
            "audit": list(zip(audit, evidence_rows, strict=True))}


def audit_context(rt: Runtime, prompt: str | None, offset: int) -> dict[str, Any]:
    """One page of the audit log, optionally for one prompt."""
    entries = rt.ops.registry.audit(prompt=prompt, limit=AUDIT_PAGE + 1, offset=offset)
    return {"entries": entries[:AUDIT_PAGE], "more": len(entries) > AUDIT_PAGE,
            "offset": offset, "page": AUDIT_PAGE, "prompt": prompt,
            "prompts": [p["name"] for p in rt.ops.registry.list_prompts()]}


def _page(request: Request, template: str, build: Callable[[], dict[str, Any]]) -> Response:
    viewer = session_principal(request)
    if viewer.role is None:
        return _login_redirect(request)
    return render(request, template, build(), viewer=viewer)


@router.get("/")
def overview(request: Request) -> Response:
    """Prompts and experiments at a glance."""
    return _page(request, "overview.html", lambda: overview_context(_rt(request)))


@router.get("/prompts/{name}")
def prompt_page(request: Request, name: str) -> Response:
    """One prompt: versions, labels, diff, preview, rollback."""
    return _page(request, "prompt.html",
                 lambda: prompt_context(_rt(request), name, request.query_params))


@router.get("/experiments/{experiment_id}")
def experiment_page(request: Request, experiment_id: int) -> Response:
    """One experiment: arms, charts, stopping rule, audit trail."""
    return _page(request, "experiment.html",
                 lambda: experiment_context(_rt(request), _experiment_id(experiment_id)))


@router.get("/audit")
def audit_page(request: Request, prompt: str | None = None, offset: int = 0) -> Response:
    """The audit log across prompts."""
    return _page(request, "audit.html",
                 lambda: audit_context(_rt(request), prompt or None,
                                      min(max(offset, 0), 2**31 - 1)))


# -- actions --------------------------------------------------------------------------------
async def _act(request: Request, back: str, action: Callable[[Principal, Any], str]) -> Response:
    form, who = await _admin_form(request)
    if isinstance(who, Response):
        return who
    try:
        message = await run_in_threadpool(action, who, form)
    except PromptOpsError as exc:
        return _redirect(request, back, exc.message, kind="error")
    _rt(request).refresh()
    return _redirect(request, back, message)


@router.post("/prompts/{name}/production")
async def move_production(request: Request, name: str) -> Response:
    """Move the production label to a version (rollback); admin."""
    def act(who: Principal, form: Any) -> str:
        version = _int(form.get("version"))
        if version is None:
            raise PromptOpsError("choose a version")
        out = _rt(request).ops.registry.move_label(name, version, PRODUCTION, actor=who.actor)
        return f"production: version {out['previous']} → {version}."
    return await _act(request, f"/prompts/{quote(name)}", act)


@router.post("/experiments/{experiment_id}/promote")
async def promote(request: Request, experiment_id: int) -> Response:
    """End the experiment and move production to a chosen arm (the leader by default); admin."""
    def act(who: Principal, form: Any) -> str:
        exp = _rt(request).ops.experiments.promote(
            _experiment_id(experiment_id), version=_int(form.get("version")), actor=who.actor)
        return f"Experiment {experiment_id} promoted version {exp['winner']} to production."
    return await _act(request, f"/experiments/{experiment_id}", act)


@router.post("/experiments/{experiment_id}/stop")
async def stop(request: Request, experiment_id: int) -> Response:
    """Stop the experiment; production stays; admin."""
    def act(who: Principal, form: Any) -> str:
        _rt(request).ops.experiments.stop(_experiment_id(experiment_id), actor=who.actor)
        return f"Experiment {experiment_id} stopped; production stays."
    return await _act(request, f"/experiments/{experiment_id}", act)


def install(app: FastAPI) -> None:
    """Add the dashboard pages, static files and the HTML error page to the app."""
    app.include_router(router)
    app.mount("/static", StaticFiles(directory=web_dir() / "static"), name="static")
    app.state.error_page = error_page
