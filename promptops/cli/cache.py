"""`promptops cache stats|clear|warm`: the response cache."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.table import Table

from promptops.cli.base import cache_app, cell, err, fail, ops, out, print_json, say
from promptops.domain import text_problem

WARM_FAILURES_SHOWN = 10
"""How many distinct failure reasons `cache warm` lists (the most frequent first)."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def gateway_of(service: Any) -> Any:
    from promptops.services.gateway import Gateway

    return Gateway.create(service.serving, service.settings)


def _text_problem(value: Any) -> str | None:
    """What makes a string of a JSON value (keys included) unusable in a request, or None."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            problem = text_problem(item)
            if problem is not None:
                return problem
        elif isinstance(item, dict):
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return None


@cache_app.command("stats")
def cache_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Entries in the shared cache, per prompt."""
    stats = gateway_of(ops()).cache.stats()
    if as_json:
        print_json({"entries": stats.entries, "by_prompt": dict(stats.by_prompt)})
        return
    table = Table("prompt", "entries", title=f"{stats.entries} cached answer(s)")
    for prompt, count in sorted(stats.by_prompt.items()):
        table.add_row(cell(prompt), str(count))
    out.print(table)


@cache_app.command("clear")
def cache_clear(
    name: Annotated[str | None, typer.Argument(help="Only this prompt.")] = None,
) -> None:
    """Remove cached answers (every prompt's, or one prompt's)."""
    removed = gateway_of(ops()).cache.clear(name)
    say(f"removed {removed} cached answer(s)" + (f" of {name}" if name else ""))


@cache_app.command("warm")
def cache_warm(
    name: str,
    dataset: Annotated[Path, typer.Option("--dataset", help='JSONL of {"vars": {...}} lines.')],
    label: Annotated[str | None, typer.Option("--label")] = None,
    version: Annotated[int | None, typer.Option("--version")] = None,
    concurrency: Annotated[int, typer.Option("--concurrency", min=1, max=256)] = 4,
) -> None:
    """Call the model for every line of a dataset so that its answers are cached."""
    import asyncio

    from rich.progress import Progress

    from promptops.services.warming import warm

    if label is not None and version is not None:
        fail("give --label or --version, not both", 2)
    cases = []
    try:
        lines = dataset.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        fail(f"{dataset}: {exc.strerror or exc}", 2)
    except UnicodeDecodeError:
        fail(f"{dataset}: not UTF-8 text", 2)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except (ValueError, RecursionError):
            fail(f"{dataset}:{n}: not valid JSON", 2)
        if not isinstance(case, dict) or not isinstance(case.get("vars", {}), dict):
            fail(f'{dataset}:{n}: each line must be an object {{"vars": {{...}}}}', 2)
        problem = _text_problem(case)
        if problem is not None:  # text no request may carry
            fail(f"{dataset}:{n}: a string {problem}", 2)
        cases.append(case.get("vars", {}))
    service = ops()
    gateway = gateway_of(service)

    async def go() -> Any:
        try:
            with Progress(console=err, transient=True, disable=not sys.stderr.isatty()) as bar:
                task = bar.add_task(f"warming {name}", total=len(cases))
                return await warm(
                    gateway,
                    name,
                    cases,
                    version=version,
                    label=label,
                    concurrency=concurrency,
                    progress=lambda k: bar.advance(task, k),
                )
        finally:
            await gateway.aclose()

    report = asyncio.run(go())
    say(f"warmed {name}: {report.misses} new, {report.hits} already cached, {report.errors} failed")
    for message, count in report.failures[:WARM_FAILURES_SHOWN]:
        say(f"  {count} failed: {_one_line(message)}", console=err)
    hidden = report.failures[WARM_FAILURES_SHOWN:]
    if hidden:
        say(f"  {sum(c for _, c in hidden)} failed for {len(hidden)} other reason(s)", console=err)
    if report.errors:
        raise typer.Exit(1)
