"""`promptops serve`: migrate, sync the prompts folder, refuse unsafe binds, run uvicorn."""

from __future__ import annotations

import sys

from promptops.config import Settings
from promptops.errors import ConfigError, InvalidPromptFile
from promptops.services.facade import PromptOps


def prepare(settings: Settings) -> PromptOps:
    """Migrate and sync; raise ConfigError for a public bind without any API key."""
    ops = PromptOps(settings)
    if settings.sync_on_start:
        if settings.prompts_dir.is_dir():
            try:
                report = ops.sync([settings.prompts_dir], actor="serve")
            except InvalidPromptFile as exc:
                # A bad file must not take serving down: nothing from it is written, and the
                # registry keeps serving what it had; `promptops validate` shows the same lines.
                for problem in exc.problems:
                    print(str(problem), file=sys.stderr)
                print("sync skipped: fix the files above and run `promptops sync`; serving the "
                      "registry as it is", file=sys.stderr)
            else:
                for line in report.changes:
                    print(f"sync: {line}", file=sys.stderr)
        else:
            print(f"note: prompts folder {settings.prompts_dir} not found; nothing synced",
                  file=sys.stderr)
    if not settings.is_loopback and not ops.keys.any():
        raise ConfigError(
            f"refusing to serve on {settings.host} without an API key; create one with "
            "`promptops keys create --role admin` or bind to 127.0.0.1")
    return ops


def run_server(settings: Settings) -> None:
    """Serve until interrupted."""
    import uvicorn

    from promptops.server.app import create_app

    ops = prepare(settings)
    app = create_app(settings, ops=ops)
    auth = "off (no API key; loopback only)" if app.state.runtime.auth_off else "on"
    print(f"promptops on http://{settings.host}:{settings.port}  (dashboard /, API docs /docs;"
          f" auth {auth}; database {settings.database_url})", file=sys.stderr)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning",
                access_log=False)
