"""Commands over prompt files and the registry: init, validate, sync, render, versions, diff,
label and adopt."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from promptops.cli.base import actor, app, cell, clean, ops, out, print_json, say, settings
from promptops.errors import InvalidInput

if TYPE_CHECKING:
    from promptops.services.views import VersionView


@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder to create.")] = Path(".")) -> None:
    """Create a project: an example prompt, an eval with its dataset, promptops.yaml, README."""
    from promptops.services.scaffold import init_project

    report = init_project(directory)
    for name in report.created:
        say(f"created {directory / name}")
    for name in report.updated:
        say(f"updated {directory / name}")
    say(f"next: see {directory / 'README.md'}; cd {directory} && promptops validate && promptops serve")


@app.command()
def validate(
    paths: Annotated[
        list[Path] | None, typer.Argument(help="Files or folders (default: the prompts and evals folders).")
    ] = None,
) -> None:
    """Check prompt and eval files; prints PATH:LINE: message for each problem."""
    from promptops.evalfiles import validate_files

    config = settings()
    report = validate_files(paths or [], prompts_dir=config.prompts_dir, evals_dir=config.evals_dir)
    say(f"ok: {report.prompts} prompt file(s) valid, {report.evals} eval file(s) valid")


@app.command()
def sync(
    paths: Annotated[list[Path] | None, typer.Argument(help="Files or folders.")] = None,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Show what would change.")] = False,
) -> None:
    """Register new versions and declared experiments; idempotent and all-or-nothing."""
    service = ops()
    report = service.sync(paths, dry_run=dry_run, actor=actor())
    prefix = "would: " if dry_run else ""
    for line in report.changes:
        say(prefix + line)
    if not report.changes:
        say(f"up to date: {report.prompts} prompt(s)")


def _parse_vars(
    service: Any, name: str, version: int | None, label: str | None, pairs: list[str], vars_json: str | None
) -> dict[str, Any]:
    from promptops.rendering import coerce_cli_value

    values: dict[str, Any] = {}
    if vars_json:
        try:
            loaded = json.loads(vars_json)
        except json.JSONDecodeError as exc:
            raise InvalidInput(f"--vars-json is not valid JSON: {exc.msg}") from None
        except RecursionError:
            raise InvalidInput("--vars-json is nested too deeply") from None
        if not isinstance(loaded, dict):
            raise InvalidInput("--vars-json must be a JSON object")
        values.update(loaded)
    if pairs:
        v = service.registry.resolve(name, version=version, label=label)
        for pair in pairs:
            key, sep, raw = pair.partition("=")
            if not sep or not key:
                raise InvalidInput(f"--var takes NAME=VALUE, got {pair!r}")
            values[key] = coerce_cli_value(v.content.variable(key), raw)
    return values


@app.command()
def render(
    name: str,
    version: Annotated[int | None, typer.Option("--version", "-v", help="Version number.")] = None,
    label: Annotated[str | None, typer.Option("--label", "-l", help="Label.")] = None,
    var: Annotated[list[str] | None, typer.Option("--var", help="NAME=VALUE (repeatable).")] = None,
    vars_json: Annotated[str | None, typer.Option("--vars-json", help="Variables as JSON.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Print a rendered prompt (production unless --version or --label)."""
    service = ops()
    values = _parse_vars(service, name, version, label, var or [], vars_json)
    result = service.render(name, values, version=version, label=label)
    if as_json:
        print_json(result.payload())
        return
    say(f"# {result.prompt} v{result.version} ({result.variant})")
    if result.messages is not None:
        for m in result.messages:
            say(f"[{m.role}]")
            say(m.content)
    else:
        say(result.text)


@app.command()
def versions(name: str, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the versions of a prompt with their labels and provenance."""
    from datetime import UTC, datetime

    rows = ops().registry.versions(name)
    if as_json:
        print_json(rows)
        return
    table = Table("version", "variant", "labels", "created", "git commit", "author", "source")
    for v in rows:
        table.add_row(
            cell(v.number),
            cell(v.variant),
            cell(", ".join(v.labels)),
            cell(datetime.fromtimestamp(v.created_at, UTC).strftime("%Y-%m-%d %H:%M")),
            cell(_git_cell(v)),
            cell(v.git_author),
            cell(v.source_path),
        )
    out.print(table)


def _git_cell(v: VersionView) -> str:
    from promptops.services.provenance import STATE_NOTES

    commit = (v.git_commit or "")[:12]
    note = STATE_NOTES.get(v.git_state or "")
    return f"{commit} ({note})" if commit and note else commit or (f"({note})" if note else "")


@app.command()
def diff(name: str, a: int, b: int) -> None:
    """A unified diff of two versions."""
    text = ops().registry.diff(name, a, b)
    sys.stdout.write(clean(text) if text else f"versions {a} and {b} have the same content\n")


@app.command()
def label(name: str, version: int, label_name: Annotated[str, typer.Argument(metavar="LABEL")]) -> None:
    """Move a label to a version (rollback: move production back)."""
    result = ops().registry.move_label(name, version, label_name, actor=actor())
    prev = result.previous
    say(f"{name}: {label_name} -> version {version}" + (f" (was {prev})" if prev and prev != version else ""))


@app.command()
def adopt(
    name: str,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Print the diff; change nothing.")] = False,
) -> None:
    """After a promotion, rewrite the prompt file so that main holds production (comments kept)."""
    service = ops()
    report = service.adoption.adopt(name, folder=service.settings.prompts_dir, dry_run=dry_run)
    if dry_run:
        sys.stdout.write(clean(report.diff))
        return
    removed = [f"variant {report.removed_variant!r}"] if report.removed_variant else []
    removed += ["the experiment block"] if report.removed_experiment else []
    say(
        f"{report.path}: main is now version {report.version} (production)"
        + (f"; removed {' and '.join(removed)}" if removed else "")
    )
    say("next: review the change, commit it, and run `promptops sync` (it makes no new version)")
