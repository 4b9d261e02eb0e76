"""API keys: created once and shown once; only a SHA-256 hash is stored."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from typing import Any

from sqlalchemy import func, select

from promptops.db.models import ApiKeyRow
from promptops.db.queries import bump_change_seq
from promptops.errors import InvalidInput
from promptops.services.context import Context

ROLES = ("serve", "admin")


def hash_key(key: str) -> str:
    """The stored form of a key."""
    return hashlib.sha256(key.encode("utf-8", "surrogatepass")).hexdigest()


class Keys:
    """Create, list, revoke and check API keys."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def create(self, role: str, *, name: str = "") -> str:
        """A new key for the role; the caller must show it now, it cannot be read back."""
        if role not in ROLES:
            raise InvalidInput(f"role must be one of {', '.join(ROLES)}", field="role")
        key = f"po_{role}_{secrets.token_urlsafe(32)}"
        with self.ctx.tx() as s:
            s.add(ApiKeyRow(prefix=key[:12], key_hash=hash_key(key), role=role, name=name,
                            created_at=self.ctx.now()))
            bump_change_seq(s)
        return key

    def list(self) -> list[dict[str, Any]]:
        """Every key's prefix, role and dates (never the key)."""
        with self.ctx.tx() as s:
            return [{"id": k.id, "prefix": k.prefix, "role": k.role, "name": k.name,
                     "created_at": k.created_at, "revoked_at": k.revoked_at}
                    for k in s.scalars(select(ApiKeyRow).order_by(ApiKeyRow.id))]

    def revoke(self, key_id: int) -> None:
        """Revoke a key by id."""
        with self.ctx.tx() as s:
            row = s.get(ApiKeyRow, key_id)
            if row is None:
                raise InvalidInput(f"no key with id {key_id}")
            row.revoked_at = self.ctx.now()
            bump_change_seq(s)

    def table(self) -> dict[str, str]:
        """Hash -> role of every active key (the server caches this)."""
        with self.ctx.tx() as s:
            return dict(s.execute(select(ApiKeyRow.key_hash, ApiKeyRow.role)
                                  .where(ApiKeyRow.revoked_at.is_(None))).all())

    def any(self) -> bool:
        """Whether any active key exists."""
        with self.ctx.tx() as s:
            return bool(s.scalar(select(func.count()).select_from(ApiKeyRow)
                                 .where(ApiKeyRow.revoked_at.is_(None))))


def role_for(key: str, table: dict[str, str]) -> str | None:
    """The role of a presented key, compared in constant time against the stored hash."""
    digest = hash_key(key)
    found = None
    for stored, role in table.items():  # every stored hash is compared, in constant time each
        if hmac.compare_digest(stored, digest):
            found = role
    return found
