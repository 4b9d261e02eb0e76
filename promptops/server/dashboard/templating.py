"""The dashboard's Jinja environment and page responses (security headers, CSRF cookie, flash)."""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from jinja2 import Environment, FileSystemLoader, StrictUndefined, select_autoescape
from starlette.responses import Response

from promptops.server.auth import Principal, session_principal
from promptops.server.dashboard import charts
from promptops.server.dashboard.formats import fmt_duration, fmt_num, fmt_pct, fmt_time, status_text
from promptops.server.dashboard.session import (
    CSRF_COOKIE,
    FLASH_COOKIE,
    csrf_token,
    flash,
    runtime_of,
    secure,
)

SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'self'; img-src 'self' data:; "
    "frame-ancestors 'none'; form-action 'self'; base-uri 'none'",
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}


def web_dir() -> Path:
    """The folder of templates and static files: in the wheel (`promptops/_web`) or a checkout."""
    package = Path(__file__).resolve().parents[2]
    for candidate in (package / "_web", package.parent / "web"):
        if (candidate / "templates").is_dir():
            return candidate
    raise RuntimeError(f"dashboard templates not found under {package}")


def _environment() -> Environment:
    env = Environment(
        loader=FileSystemLoader(web_dir() / "templates"),
        autoescape=select_autoescape(["html"]),
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters.update(
        ts=fmt_time,
        duration=fmt_duration,
        pct=fmt_pct,
        num=fmt_num,
        status_text=status_text,
        tojson_pretty=lambda v: json.dumps(v, indent=2, sort_keys=True, default=str),
    )
    env.globals["legend"] = charts.legend
    return env


templates = Jinja2Templates(env=_environment())


def render(
    request: Request, name: str, context: dict[str, Any], *, viewer: Principal, status: int = 200
) -> Response:
    """A page: the template with the viewer, banner, flash message and a fresh CSRF token."""
    cookie = request.cookies.get(CSRF_COOKIE) or secrets.token_urlsafe(32)
    message = flash(request)
    base = {
        "viewer": viewer,
        "auth_off": runtime_of(request).auth_off,
        "flash": message,
        "csrf": csrf_token(request, cookie),
        "path": request.url.path,
    }
    resp = templates.TemplateResponse(request, name, {**base, **context}, status_code=status)
    if CSRF_COOKIE not in request.cookies:
        resp.set_cookie(CSRF_COOKIE, cookie, httponly=True, samesite="strict", secure=secure(request))
    if message or FLASH_COOKIE in request.cookies:
        resp.delete_cookie(FLASH_COOKIE)
    resp.headers.update(SECURITY_HEADERS)
    return resp


def error_page(request: Request, status: int, message: str) -> Response:
    """The HTML error page (the app's error handlers call this for dashboard requests)."""
    return render(
        request,
        "error.html",
        {"status": status, "message": message},
        viewer=session_principal(request),
        status=status,
    )
