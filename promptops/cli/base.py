"""The `promptops` application: its command groups, global options, and the helpers every command
uses to print (literal text only: user data is never markup) and to reach the services."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.text import Text

from promptops.config import Settings

app = typer.Typer(
    help="Prompts as code, with A/B experiments on autopilot.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
experiment_app = typer.Typer(help="Experiment lifecycle.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
cache_app = typer.Typer(help="The response cache.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")
app.add_typer(cache_app, name="cache")

# Piped output is not cut to 80 columns: tables stay readable in logs and scripts.
# User data is never read as markup or emoji codes: everything is printed through say() and cell().
out = Console(highlight=False, soft_wrap=True, emoji=False, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True, emoji=False)

# C0 controls but tab and newline, DEL and C1 controls: an escape sequence in a git author or a
# prompt must not drive the terminal.
CONTROL_CHARS = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")
C1_CHARS = re.compile(r"[\x7f-\x9f]")


def clean(text: Any) -> str:
    """Text safe for a terminal: control characters (escape sequences included) removed."""
    return CONTROL_CHARS.sub("", str(text))


def cell(value: Any) -> Text:
    """A table cell that shows user data literally (no markup, no control characters)."""
    return Text(clean("" if value is None else value))


def say(line: Any, *, console: Console | None = None) -> None:
    """Print one literal line (no markup, no control characters)."""
    (console or out).print(clean(line), markup=False, emoji=False, highlight=False)


class State:
    """Global options shared by every command."""

    database_url: str | None = None
    prompts_dir: str | None = None


def settings(**overrides: Any) -> Settings:
    """Settings from the environment and the global flags."""
    return Settings.from_env(database_url=State.database_url, prompts_dir=State.prompts_dir, **overrides)


def ops(**overrides: Any):  # type: ignore[no-untyped-def]
    """The services over the configured database (migrated on first use)."""
    from promptops.services.facade import PromptOps

    return PromptOps(settings(**overrides))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit."""
    say(f"error: {message}", console=err)
    raise typer.Exit(code)


def _plain(value: Any) -> Any:
    # The services answer typed views; JSON shows them as the API does.
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    return str(value)


def print_json(data: Any) -> None:
    """Print JSON to stdout (C1 controls, which JSON leaves raw, escaped as \\u00XX)."""
    text = json.dumps(data, indent=2, ensure_ascii=False, default=_plain)
    sys.stdout.write(C1_CHARS.sub(lambda m: f"\\u{ord(m.group()):04x}", text) + "\n")


def _print_version(value: bool) -> None:
    if value:
        from promptops import __version__

        sys.stdout.write(f"promptops {__version__}\n")
        raise typer.Exit()


@app.callback()
def root(
    database_url: Annotated[
        str | None, typer.Option("--database-url", help="Overrides PROMPTOPS_DATABASE_URL.")
    ] = None,
    prompts_dir: Annotated[
        str | None, typer.Option("--prompts-dir", help="Overrides PROMPTOPS_PROMPTS_DIR.")
    ] = None,
    version: Annotated[
        bool,
        typer.Option("--version", help="Print the version and exit.", is_eager=True, callback=_print_version),
    ] = False,
) -> None:
    """promptops: prompts as code, with A/B experiments on autopilot."""
    State.database_url = database_url
    State.prompts_dir = prompts_dir


def actor() -> str:
    """Who runs the command, as the audit log records it."""
    return f"cli:{os.environ.get('USER') or os.environ.get('USERNAME') or 'unknown'}"
