"""The outermost ASGI layer: refuse forged browser requests and text the database cannot hold.

Which `Host` values are legitimate:

- Bound to loopback: the bound address and `localhost`, `127.0.0.1` and `[::1]`, each with the
  bound port (no port when it is 80), plus the names in `PROMPTOPS_ALLOWED_HOSTS`.
- Bound elsewhere (`0.0.0.0`, a public address): the names in `PROMPTOPS_ALLOWED_HOSTS` and the
  bound address when the list is set; without a list any Host (such a server runs with API keys,
  which a rebinding page does not have).

The Host is checked on every request while auth is off (a DNS-rebinding page could otherwise read
the data through the victim's browser) and on every state-changing request (POST, PUT, PATCH,
DELETE) always. A state-changing request that carries an `Origin` must come from the same origin
(its host:port equals the Host header) or from a name in `PROMPTOPS_ALLOWED_HOSTS` (a reverse proxy
that rewrites Host); clients that send no Origin (curl, SDKs) are not browsers and pass. Both
refusals answer 403 before any route runs, the fast path included.

NUL characters and lone surrogates in the path or the query string are refused here with 422
`invalid_input`; in JSON bodies by `schemas.common.bad_text`, the same check the fast path runs.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import unquote, urlsplit

import orjson

from promptops.config import Settings
from promptops.server.errors import error_body, send_json
from promptops.server.schemas.common import TEXT_PROBLEM, bad_text

STATE_CHANGING = frozenset(("POST", "PUT", "PATCH", "DELETE"))
LOOPBACK_NAMES = ("localhost", "127.0.0.1", "[::1]")


def legitimate_hosts(settings: Settings) -> frozenset[str] | None:
    """The Host header values this server answers (lowercase), or None for any."""
    port = settings.port
    bound = f"[{settings.host}]" if ":" in settings.host else settings.host
    names = {bound.lower()}
    if settings.is_loopback:
        names.update(LOOPBACK_NAMES)
    elif not settings.allowed_hosts:
        return None
    hosts = {f"{n}:{port}" for n in names}
    if port == 80:
        hosts.update(names)
    for entry in settings.allowed_hosts:
        entry = entry.lower()
        hosts.add(entry)
        if not entry.endswith("]") and ":" not in entry:  # a bare name: any port
            hosts.add(f"{entry}:*")
    return frozenset(hosts)


def host_allowed(host: str, hosts: frozenset[str] | None) -> bool:
    """Whether a Host header value is one of `hosts` (None allows any)."""
    if hosts is None:
        return True
    host = host.lower()
    if host in hosts:
        return True
    name, sep, port = host.rpartition(":")
    return bool(sep) and port.isdigit() and f"{name}:*" in hosts


def origin_allowed(origin: str, host: str, settings: Settings) -> bool:
    """Whether a browser's Origin is the request's own origin or an allowed host."""
    try:
        netloc = urlsplit(origin).netloc.lower()
    except ValueError:
        return False
    if not netloc:  # "null" (sandboxed frames, file: pages) and garbage
        return False
    if netloc == host.lower():
        return True
    allowed = {h.lower() for h in settings.allowed_hosts}
    return netloc in allowed or netloc.rpartition(":")[0] in allowed


def request_text_problem(scope: dict[str, Any]) -> str | None:
    """Which part of the request line holds a NUL or a lone surrogate, or None."""
    if bad_text(scope.get("path", "")) is not None:
        return "the path"
    query = scope.get("query_string", b"")
    if query:
        decoded = unquote(query.decode("latin-1").replace("+", " "), errors="surrogatepass")
        if bad_text(decoded) is not None:
            return "the query string"
    return None


class EdgeGuard:
    """Outermost ASGI layer: Host and Origin checks, and clean text in the request line."""

    def __init__(self, app: Any, *, runtime: Any, settings: Settings) -> None:
        self.app = app
        self.rt = runtime
        self.settings = settings
        self.hosts = legitimate_hosts(settings)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            refusal = self.refusal(scope)
            if refusal is not None:
                await _answer(send, *refusal)
                return
        await self.app(scope, receive, send)

    def refusal(self, scope: dict[str, Any]) -> tuple[int, str, str] | None:
        """The status, code and message refusing this request, or None to let it through."""
        problem = request_text_problem(scope)
        if problem is not None:
            return 422, "invalid_input", f"{problem} {TEXT_PROBLEM}"
        host = origin = None
        for name, value in scope["headers"]:
            if name == b"host" and host is None:
                host = value.decode("latin-1")
            elif name == b"origin" and origin is None:
                origin = value.decode("latin-1")
        changes_state = scope["method"] in STATE_CHANGING
        if (changes_state or self.rt.auth_off) and not host_allowed(host or "", self.hosts):
            return (
                403,
                "forbidden_host",
                f"host {host!r} is not served here; add it to PROMPTOPS_ALLOWED_HOSTS",
            )
        if changes_state and origin is not None and not origin_allowed(origin, host or "", self.settings):
            return 403, "forbidden_origin", "cross-origin requests may not change anything"
        return None


async def _answer(send: Any, status: int, code: str, message: str) -> None:
    await send_json(send, status, orjson.dumps(error_body(code, message)))
