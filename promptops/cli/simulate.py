"""`promptops simulate` and `promptops plan`: the policy against simulated traffic."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from promptops import simreport
from promptops.cli.base import app, cell, err, out, say
from promptops.errors import InvalidInput


@app.command(help=simreport.SIMULATE_HELP)
def simulate(
    scenario: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    table: Annotated[
        bool | None,
        typer.Option(
            "--table/--plain",
            help="A table, or plain `figure: value` lines (default: a table on a terminal).",
            show_default=False,
        ),
    ] = None,
    runs: Annotated[int | None, typer.Option(help="Override the scenario's runs.")] = None,
) -> None:
    from rich.progress import Progress

    from promptops.services import simulation

    try:
        sc = simulation.load_scenario(scenario)
    except InvalidInput as exc:
        # PATH:LINE: message lines, one problem each, as `validate` prints them
        for line in exc.message.splitlines():
            say(line, console=err)
        raise typer.Exit(1) from None
    if sys.stderr.isatty():
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("simulating", total=runs or sc.runs)
            result = simulation.run_scenario(
                sc, runs=runs, progress=lambda done, total: progress.update(task, completed=done, total=total)
            )
    else:
        result = simulation.run_scenario(sc, runs=runs)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    rows = simreport.simulation_rows(result)
    if table if table is not None else sys.stdout.isatty():
        grid = Table("figure", "value", title=cell(f"scenario {scenario}"))
        for label, value in rows:
            grid.add_row(cell(label), cell(value))
        out.print(grid)
    else:
        say(f"scenario: {scenario}")
        for label, value in rows:
            say(f"{label}: {value}")


@app.command(help=simreport.PLAN_HELP)
def plan(
    base_rate: Annotated[float, typer.Option("--base-rate", help="The control's rate, e.g. 0.10.")],
    lift: Annotated[float, typer.Option(help="The lift to find, in absolute terms (0.02 = 2 points).")],
    arms: Annotated[int, typer.Option(help="Arms, the control included.")] = 2,
    decisions_per_hour: Annotated[float, typer.Option("--decisions-per-hour")] = 1000.0,
    feedback_rate: Annotated[float, typer.Option("--feedback-rate")] = 1.0,
    units: Annotated[float | None, typer.Option(help="Decisions per unit on average.")] = None,
    runs: Annotated[int, typer.Option(help="Simulated runs of each of A/B and A/A.")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    table: Annotated[
        bool | None,
        typer.Option(
            "--table/--plain",
            help="A table, or plain `figure: value` lines (default: a table on a terminal).",
            show_default=False,
        ),
    ] = None,
) -> None:
    from dataclasses import asdict

    from rich.progress import Progress

    from promptops.services import simulation

    # refuse bad numbers (one line each) before the progress bar shows
    simulation.plan_scenarios(
        base_rate=base_rate,
        lift=lift,
        arms=arms,
        units=units,
        decisions_per_hour=decisions_per_hour,
        feedback_rate=feedback_rate,
        runs=runs,
    )
    with Progress(console=err, transient=True, disable=not sys.stderr.isatty()) as progress:
        task = progress.add_task("simulating", total=2 * runs)
        result = simulation.run_plan(
            base_rate=base_rate,
            lift=lift,
            arms=arms,
            decisions_per_hour=decisions_per_hour,
            feedback_rate=feedback_rate,
            units=units,
            runs=runs,
            progress=lambda done, total: progress.update(task, completed=done, total=total),
        )
    if as_json:
        sys.stdout.write(json.dumps(asdict(result)) + "\n")
        return
    say(result.sentence())
    rows = simreport.plan_rows(result)
    if table if table is not None else sys.stdout.isatty():
        grid = Table("figure", "value")
        for label_text, value in rows:
            grid.add_row(cell(label_text), cell(value))
        out.print(grid)
    else:
        for label_text, value in rows:
            say(f"{label_text}: {value}")
