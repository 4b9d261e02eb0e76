"""Authentication: Bearer API keys for the JSON API, a signed session cookie for the dashboard."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from promptops.errors import AuthError, Forbidden
from promptops.services.keys import hash_key, role_for

SESSION_COOKIE = "promptops_session"
SESSION_MAX_AGE = 12 * 3600


@dataclass(frozen=True)
class Principal:
    """Who is calling: a role, or none; `auth_off` when the server runs without keys on loopback."""

    role: str | None
    auth_off: bool = False
    key_prefix: str | None = None

    @property
    def is_admin(self) -> bool:
        """Whether the caller may change experiments and labels."""
        return self.role == "admin"

    @property
    def actor(self) -> str:
        """How the audit log names this caller."""
        if self.auth_off:
            return "local (auth off)"
        return f"key:{self.key_prefix}" if self.key_prefix else "anonymous"


def session_serializer(secret: str) -> URLSafeTimedSerializer:
    """The signer of dashboard session cookies."""
    return URLSafeTimedSerializer(secret, salt="promptops-session")


def _runtime(request: Request):  # type: ignore[no-untyped-def]
    return request.app.state.runtime


def bearer_principal(request: Request) -> Principal:
    """The caller of a JSON route, from `Authorization: Bearer KEY`."""
    rt = _runtime(request)
    if rt.auth_off:
        return Principal(role="admin", auth_off=True)
    header = request.headers.get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("missing API key: send 'Authorization: Bearer KEY'")
    key = key.strip()
    role = role_for(key, rt.key_table)
    if role is None:
        raise AuthError("invalid API key")
    return Principal(role=role, key_prefix=key[:12])


def session_principal(request: Request) -> Principal:
    """The caller of a dashboard page, from the session cookie (or a Bearer key)."""
    rt = _runtime(request)
    if rt.auth_off:
        return Principal(role="admin", auth_off=True)
    if request.headers.get("authorization"):
        try:
            return bearer_principal(request)
        except AuthError:
            return Principal(role=None)
    cookie = request.cookies.get(SESSION_COOKIE)
    if not cookie:
        return Principal(role=None)
    try:
        data = session_serializer(rt.secret).loads(cookie, max_age=SESSION_MAX_AGE)
    except BadSignature:
        return Principal(role=None)
    key_hash = data.get("h") if isinstance(data, dict) else None
    role = rt.key_table.get(key_hash) if isinstance(key_hash, str) else None
    return Principal(role=role, key_prefix=data.get("p")) if role else Principal(role=None)


def session_token(secret: str, key: str) -> str:
    """A signed cookie value for a key (the key itself is not stored in the cookie)."""
    return session_serializer(secret).dumps({"h": hash_key(key), "p": key[:12]})


def require_read(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    """Any valid key (serve or admin)."""
    return principal


def require_admin(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    """An admin key."""
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
    return principal


ReadKey = Annotated[Principal, Depends(require_read)]
ServeKey = Annotated[Principal, Depends(require_read)]
AdminKey = Annotated[Principal, Depends(require_admin)]
ViewerDep = Annotated[Principal, Depends(session_principal)]
