"""`promptops serve`, `promptops gc` and `promptops db upgrade|downgrade`."""

from __future__ import annotations

from typing import Annotated

import typer

from promptops.cli.base import app, db_app, ops, say, settings
from promptops.cli.cache import gateway_of


@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="Do not sync prompts.")] = False,
    workers: Annotated[
        int,
        typer.Option(
            "--workers", min=1, max=64, help="Processes sharing the port (on SQLite they share one writer)."
        ),
    ] = 1,
) -> None:
    """Migrate, sync the prompts folder, and serve the API and dashboard."""
    from promptops.server.run import run_server

    run_server(settings(host=host, port=port, sync_on_start=not no_sync), workers=workers)


@app.command()
def gc(
    older_than: Annotated[float, typer.Option("--older-than", help="Days since the end.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete raw decisions and feedback of experiments ended over DAYS ago (stats are kept)."""
    service = ops()
    r = service.retention.gc(older_than_days=older_than, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    say(
        f"{verb} {r.decisions} decisions and {r.feedback} feedback "
        f"from {r.experiments} ended experiment(s) and old production serves"
    )
    if not dry_run:
        cache = gateway_of(service).cache
        say(
            f"evicted {cache.evict()} least recently used cache entries "
            f"(cache.max_entries {cache.max_entries})"
        )


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Run migrations up to head (or a revision)."""
    from promptops.db import engine as db

    eng = db.make_engine(settings().database_url)
    db.upgrade(eng, revision)
    say(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Run migrations down to a revision (`base` drops everything)."""
    from promptops.db import engine as db

    eng = db.make_engine(settings().database_url)
    db.downgrade(eng, revision)
    say(f"database at {revision}")
