"""The dashboard's cookies: the session, CSRF tokens for forms, and one-shot flash messages."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any
from urllib.parse import quote

from fastapi import Request
from itsdangerous import BadSignature, URLSafeTimedSerializer
from starlette.responses import RedirectResponse, Response

from promptops.server.auth import SESSION_COOKIE, SESSION_MAX_AGE
from promptops.server.auth import session_token as make_session_token
from promptops.server.runtime import Runtime

CSRF_COOKIE = "promptops_csrf"
FLASH_COOKIE = "promptops_flash"


def runtime_of(request: Request) -> Runtime:
    """The app's runtime: services, settings, secret and key table."""
    return request.app.state.runtime  # type: ignore[no-any-return]


def secure(request: Request) -> bool:
    """Whether cookies must be Secure: the request came over HTTPS."""
    return request.url.scheme == "https"


def start_session(request: Request, resp: Response, key: str) -> None:
    """Sign the browser in with a valid key: a signed, HttpOnly, SameSite=Strict cookie."""
    rt = runtime_of(request)
    resp.set_cookie(
        SESSION_COOKIE,
        make_session_token(rt.secret, key),
        max_age=SESSION_MAX_AGE,
        httponly=True,
        samesite="strict",
        secure=secure(request),
    )


def end_session(resp: Response) -> None:
    """Sign the browser out."""
    resp.delete_cookie(SESSION_COOKIE)


def csrf_token(request: Request, csrf_cookie: str | None = None) -> str:
    """The form token of this browser: an HMAC of its CSRF cookie and its session cookie."""
    basis = f"{csrf_cookie or request.cookies.get(CSRF_COOKIE, '')}|{request.cookies.get(SESSION_COOKIE, '')}"
    return hmac.new(runtime_of(request).secret.encode(), basis.encode(), hashlib.sha256).hexdigest()


def csrf_ok(request: Request, form: Any) -> bool:
    """Whether a posted form carries this browser's CSRF token."""
    sent = str(form.get("csrf", ""))
    # As bytes: compare_digest raises on a str with non-ASCII characters, which anyone can post.
    return bool(request.cookies.get(CSRF_COOKIE)) and hmac.compare_digest(
        sent.encode("utf-8", "surrogatepass"), csrf_token(request).encode()
    )


def _flash_signer(request: Request) -> URLSafeTimedSerializer:
    return URLSafeTimedSerializer(runtime_of(request).secret, salt="promptops-flash")


def redirect(request: Request, url: str, message: str | None = None, kind: str = "ok") -> RedirectResponse:
    """A 303 redirect, with a message for the next page if given."""
    resp = RedirectResponse(url, status_code=303)
    if message:
        resp.set_cookie(
            FLASH_COOKIE,
            _flash_signer(request).dumps([kind, message]),
            max_age=60,
            httponly=True,
            samesite="strict",
            secure=secure(request),
        )
    return resp


def flash(request: Request) -> dict[str, str] | None:
    """The message the previous action left for this page, if any and genuine."""
    raw = request.cookies.get(FLASH_COOKIE)
    if not raw:
        return None
    try:
        kind, message = _flash_signer(request).loads(raw, max_age=60)
    except (BadSignature, ValueError, TypeError):
        return None
    return {"kind": str(kind), "message": str(message)}


def login_redirect(request: Request) -> RedirectResponse:
    """To the sign-in form, coming back to this page afterwards."""
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/login?next={quote(target, safe='')}", status_code=303)


def safe_next(target: str | None) -> str:
    """Where to go after signing in: a local path only, never another site."""
    if not target or not target.startswith("/") or target.startswith("//") or "\\" in target:
        return "/"
    return target
