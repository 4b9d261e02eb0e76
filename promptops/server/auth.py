"""Authentication: Bearer API keys for the JSON API, a signed session cookie for the dashboard.

The cookie holds nothing about the key: a random session id and an HMAC of (session id, the key's
stored hash) under the shared secret, the whole signed with an expiry. The server finds the key by
recomputing the HMAC over the active keys, so revoking a key ends its sessions at once, and every
replica (same database, same secret) accepts the cookie without a session table.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request
from itsdangerous import BadSignature, URLSafeTimedSerializer

from promptops.domain import KeyRole
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
        return self.role == KeyRole.ADMIN

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
    return principal_of(_runtime(request), request.headers.get("authorization", ""))


AUTH_OFF = Principal(role=KeyRole.ADMIN, auth_off=True)
"""The caller of every request while auth is off (one frozen instance)."""


def principal_of(rt: Any, authorization: str) -> Principal:
    """The caller named by an Authorization header's value (empty when absent); AuthError for a
    missing or invalid key unless auth is off."""
    if rt.auth_off:
        return AUTH_OFF
    scheme, _, key = authorization.partition(" ")
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
        return AUTH_OFF
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
    sid = data.get("s") if isinstance(data, dict) else None
    mac = data.get("m") if isinstance(data, dict) else None
    if not isinstance(sid, str) or not isinstance(mac, str):
        return Principal(role=None)
    found = None
    for key_hash in rt.key_table:  # every active key is tried, in constant time each
        if hmac.compare_digest(_session_mac(rt.secret, sid, key_hash), mac):
            found = key_hash
    if found is None:
        return Principal(role=None)
    return Principal(role=rt.key_table[found], key_prefix=rt.key_prefixes.get(found))


def _session_mac(secret: str, sid: str, key_hash: str) -> str:
    return hmac.new(secret.encode(), f"session|{sid}|{key_hash}".encode(), hashlib.sha256).hexdigest()


def session_token(secret: str, key: str) -> str:
    """A signed cookie value for a key: an opaque session id bound to the key (see above)."""
    sid = secrets.token_urlsafe(16)
    return session_serializer(secret).dumps({"s": sid, "m": _session_mac(secret, sid, hash_key(key))})


def require_read(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    """Any valid key (serve or admin)."""
    return principal


def require_admin(principal: Annotated[Principal, Depends(bearer_principal)]) -> Principal:
    """An admin key."""
    if not principal.is_admin:
        raise Forbidden("this needs an admin key")
    return principal


ReadKey = Annotated[Principal, Depends(require_read)]
AdminKey = Annotated[Principal, Depends(require_admin)]
