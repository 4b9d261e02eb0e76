"""`promptops keys create|list|revoke|auth-off`: API keys."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.table import Table

from promptops.cli.base import actor, cell, err, keys_app, ops, out, say
from promptops.domain import KeyRole


@keys_app.command("create")
def keys_create(
    role: Annotated[KeyRole, typer.Option("--role", help="What the key may do.")],
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    key = ops().keys.create(role.value, name=name, actor=actor())
    sys.stdout.write(key + "\n")
    say("store this key now: it cannot be shown again", console=err)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefixes only)."""
    table = Table("id", "prefix", "role", "name", "revoked")
    for k in ops().keys.list_keys():
        table.add_row(
            cell(k.id),
            cell(k.prefix + "..."),
            cell(k.role),
            cell(k.name),
            cell("yes" if k.revoked_at else ""),
        )
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke a key by id."""
    service = ops()
    if not service.keys.revoke(key_id, actor=actor()):
        say(f"key {key_id} was already revoked")
        return
    say(f"key {key_id} revoked")
    if not service.keys.any():
        say(
            "no active key is left: auth stays on and every request is refused; create a "
            "key, or run `promptops keys auth-off`",
            console=err,
        )


@keys_app.command("auth-off")
def keys_auth_off() -> None:
    """Turn auth off (no active key may exist): a loopback server then answers without a key."""
    ops().keys.auth_off(actor=actor())
    say("auth is off: a server bound to loopback answers without a key until one is created")
