"""API keys: created once and shown once; only a SHA-256 hash is stored.

Once a key has existed, auth stays on even when every key is revoked (the server then refuses
everyone until a key is created): only `promptops keys auth-off` turns it off again.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import func, select

from promptops.db.models import ApiKeyRow
from promptops.db.queries import bump_change_seq, get_meta, set_meta
from promptops.domain import KeyRole
from promptops.errors import Conflict, InvalidInput, KeyNotFound
from promptops.services.context import Context
from promptops.services.registry import write_audit
from promptops.services.views import KeyView

ROLES = tuple(r.value for r in KeyRole)
NAME_MAX = 128  # the column's width
_MAX_ID = 2**63 - 1  # larger ids overflow the INTEGER column instead of matching no key
AUTH_META = "auth_required"
ActiveKeys = list[tuple[str, str, str]]  # (hash, role, prefix); `Keys.list` shadows the builtin


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Keys:
    """Create, list, revoke and check API keys."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, role: str, *, name: str = "", actor: str = "cli") -> str:
        """A new key for the role; the caller must show it now, it cannot be read back."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
        if len(name) > NAME_MAX:
            raise InvalidInput(f"the key's name is longer than {NAME_MAX} characters", field="name")
        # Other control characters are stored and removed on display; these cannot be stored.
        if any(c == "\x00" or "\ud800" <= c <= "\udfff" for c in name):
            raise InvalidInput("the key's name may not contain NUL or lone surrogates", field="name")
        key = f"po_{role}_{secrets.token_urlsafe(32)}"
        with self.ctx.tx() as s:
            s.add(
                ApiKeyRow(
                    prefix=key[:12], key_hash=hash_key(key), role=role, name=name, created_at=self.ctx.now()
                )
            )
            if get_meta(s, AUTH_META) != "on":
                write_audit(
                    s,
                    at=self.ctx.now(),
                    actor=actor,
                    action="auth.on",
                    message=f"auth turned on: {role} key {key[:12]}... created",
                )
            set_meta(s, AUTH_META, "on")
            bump_change_seq(s)
        return key

    def list_keys(self) -> list[KeyView]:
        """Every key's prefix, role and dates (never the key)."""
        with self.ctx.tx() as s:
            return [
                KeyView(
                    id=k.id,
                    prefix=k.prefix,
                    role=KeyRole(k.role),
                    name=k.name,
                    created_at=k.created_at,
                    revoked_at=k.revoked_at,
                )
                for k in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))
            ]

    def revoke(self, key_id: int, *, actor: str = "cli") -> bool:
        """Revoke a key by id; revoking the last one leaves auth on (nobody gets in). False when
        it was already revoked: its revocation time and the audit log stay as they were."""
        if not 0 < key_id <= _MAX_ID:
            raise KeyNotFound(key_id)
        with self.ctx.tx() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise KeyNotFound(key_id)
            if row.revoked_at is not None:
                return False
            row.revoked_at = self.ctx.now()
            message = f"key {row.id} ({row.prefix}...) revoked"
            s.flush()
            if not self._active(s):
                message += (
                    "; no active key is left and auth stays on: create a key, or run "
                    "`promptops keys auth-off`"
                )
            write_audit(s, at=self.ctx.now(), actor=actor, action="key.revoke", message=message)
            bump_change_seq(s)
        return True

    def auth_required(self) -> bool:
        """Whether auth is on even without active keys: a key has existed and auth was not
        explicitly turned off since."""
        with self.ctx.tx() as s:
            flag = get_meta(s, AUTH_META)
            if flag is not None:
                return flag == "on"
            # A database from before the flag: any key ever created keeps auth on.
            return bool(s.scalar(select(func.count()).select_from(ApiKeyRow)))

    def auth_off(self, *, actor: str = "cli") -> None:
        """Turn auth off explicitly (a loopback server then answers everyone); Conflict while
        active keys exist, since they would turn it straight back on."""
        with self.ctx.tx() as s:
            active = self._active(s)
            if active:
                raise Conflict(
                    f"{active} active key(s) exist: revoke them first "
                    "(`promptops keys list`, `promptops keys revoke ID`)"
                )
            write_audit(
                s,
                at=self.ctx.now(),
                actor=actor,
                action="auth.off",
                message="auth turned off: a loopback server answers without a key",
            )
            set_meta(s, AUTH_META, "off")
            bump_change_seq(s)

    @staticmethod
    def _active(s: Any) -> int:
        return int(
            s.scalar(select(func.count()).select_from(ApiKeyRow).where(ApiKeyRow.revoked_at.is_(None))) or 0
        )

    def table(self) -> dict[str, str]:
        """Hash -> role of every active key (the server caches this)."""
        return {key_hash: role for key_hash, role, _ in self.active()}

    def active(self) -> ActiveKeys:
        """Hash, role and prefix of every active key."""
        with self.ctx.tx() as s:
            return [
                (h, r, p)
                for h, r, p in s.execute(
                    select(ApiKeyRow.key_hash, ApiKeyRow.role, ApiKeyRow.prefix)
                    .where(ApiKeyRow.revoked_at.is_(None))
                    .order_by(ApiKeyRow.id)
                ).all()
            ]

    def any(self) -> bool:
        """Whether any active key exists."""
        with self.ctx.tx() as s:
            return bool(self._active(s))


def role_for(key: str, table: dict[str, str]) -> str | None:
    """The role of a presented key, compared in constant time against the stored hash."""
    digest = hash_key(key)
    found = None
    for stored, role in table.items():  # every stored hash is compared, in constant time each
        if hmac.compare_digest(stored, digest):
            found = role
    return found
