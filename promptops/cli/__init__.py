"""The `promptops` command line: thin commands over the services.

`base` holds the application, its global options and the output helpers; each command group lives
in a module of its own (`files`, `experiments`, `simulate`, `cache`, `server`, `keys`, and
`promptops.evalcli` for `promptops eval`), imported here in the order `--help` lists them.
"""

from __future__ import annotations

import os
import sys

from promptops import evalcli

# isort: off
# Each module registers its commands; commands are listed by `--help` in this order.
from promptops.cli import files, experiments, simulate, cache, server, keys  # noqa: F401

# isort: on
from promptops.cli.base import (
    State,
    actor,
    app,
    cell,
    clean,
    err,
    fail,
    ops,
    out,
    print_json,
    say,
    settings,
)
from promptops.domain import ExperimentStatus
from promptops.errors import InvalidPromptFile, PromptOpsError

__all__ = [
    "ExperimentStatus",
    "State",
    "actor",
    "app",
    "cell",
    "clean",
    "err",
    "fail",
    "main",
    "ops",
    "out",
    "print_json",
    "say",
    "settings",
]

app.command("eval")(evalcli.eval_command)


def main() -> None:
    """Entry point: usage errors get typer's usage message and exit 2; user mistakes one stderr
    line and exit 1; anything else one line and exit 2 (a traceback with PROMPTOPS_DEBUG=1)."""
    try:
        # Standalone mode lets typer report usage errors, --help and exits with its own click,
        # which may be a private copy: catching click's classes here would miss them.
        app(standalone_mode=True, prog_name="promptops")
    except InvalidPromptFile as exc:
        for problem in exc.problems:
            say(problem, console=err)
        sys.exit(1)
    except PromptOpsError as exc:
        say(f"error: {exc.message}", console=err)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # an unexpected failure
        if os.environ.get("PROMPTOPS_DEBUG"):
            raise
        say(
            f"error: unexpected {type(exc).__name__}: {exc} (set PROMPTOPS_DEBUG=1 for a traceback)",
            console=err,
        )
        sys.exit(2)
