"""The `promptops` command line: thin commands over the services."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from promptops import evalcli, simreport
from promptops.config import Settings
from promptops.domain import ExperimentStatus, KeyRole, RewardKind, Strategy
from promptops.errors import InvalidInput, InvalidPromptFile, PromptOpsError

if TYPE_CHECKING:
    from promptops.services.views import ExperimentView, VersionView

app = typer.Typer(
    help="Prompts as code, with A/B experiments on autopilot.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
experiment_app = typer.Typer(help="Experiment lifecycle.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

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


# -- files ---------------------------------------------------------------------------------------
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
    report = service.sync(paths, dry_run=dry_run, actor=_actor())
    prefix = "would: " if dry_run else ""
    for line in report.changes:
        say(prefix + line)
    if not report.changes:
        say(f"up to date: {report.prompts} prompt(s)")


def _actor() -> str:
    return f"cli:{os.environ.get('USER') or os.environ.get('USERNAME') or 'unknown'}"


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
        print_json(result)
        return
    say(f"# {result['prompt']} v{result['version']} ({result['variant']})")
    if "messages" in result:
        for m in result["messages"]:
            say(f"[{m['role']}]")
            say(m["content"])
    else:
        say(result["text"])


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
    result = ops().registry.move_label(name, version, label_name, actor=_actor())
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


# -- experiments ---------------------------------------------------------------------------------
def _parse_settings(pairs: list[str]) -> dict[str, Any]:
    from promptops.domain import Policy

    policy: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--set takes SETTING=VALUE, got {pair!r}")
        if key not in Policy.field_names():
            raise InvalidInput(
                f"unknown policy setting {key!r}; valid settings: " + ", ".join(sorted(Policy.field_names()))
            )
        try:
            policy[key] = json.loads(raw)
        except json.JSONDecodeError:
            policy[key] = raw
    return policy


@experiment_app.command("start")
def experiment_start(
    name: Annotated[str | None, typer.Argument(help="Prompt name.")] = None,
    versions: Annotated[
        list[int] | None, typer.Argument(help="Two or more versions; the first is the control.")
    ] = None,
    experiment_id: Annotated[int | None, typer.Option("--id", help="Start a draft by id.")] = None,
    metric: Annotated[str, typer.Option(help="Metric name.")] = "reward",
    reward: Annotated[RewardKind, typer.Option(help="Kind of reward.")] = RewardKind.BINARY,
    strategy: Annotated[Strategy, typer.Option(help="Allocation.")] = Strategy.THOMPSON,
    weights: Annotated[str | None, typer.Option(help="Fixed weights, e.g. 0.5,0.5.")] = None,
    set_: Annotated[
        list[str] | None, typer.Option("--set", help="Policy SETTING=VALUE (repeatable).")
    ] = None,
    draft: Annotated[bool, typer.Option("--draft", help="Create without starting.")] = False,
) -> None:
    """Start an experiment over versions of a prompt (or a draft by --id)."""
    service = ops()
    if experiment_id is not None:
        exp = service.experiments.start(experiment_id, actor=_actor())
    else:
        if not name or not versions:
            fail("give a prompt name and two or more versions, or --id of a draft")
        w = None
        if weights:
            try:
                w = [float(x) for x in weights.split(",")]
            except ValueError:
                fail(f"--weights must be numbers separated by commas, got {weights!r}")
        exp = service.experiments.create(
            name,
            versions,
            metric=metric,
            reward=reward.value,
            strategy=strategy.value,
            weights=w,
            policy=_parse_settings(set_ or []),
            start=not draft,
            actor=_actor(),
        )
    say(
        f"experiment {exp.id} {exp.status}: {exp.prompt} versions "
        f"{', '.join(str(a.version) for a in exp.arms)}"
    )
    _say_control(exp)


def _say_control(e: ExperimentView) -> None:
    if e.control_is_production is False:
        say(
            f"  control v{e.control_version} is not the version that held production "
            f"at the start (v{e.production_at_start})"
        )


@experiment_app.command("list")
def experiment_list(
    prompt: Annotated[str | None, typer.Option(help="Only this prompt.")] = None,
    status: Annotated[ExperimentStatus | None, typer.Option(help="Only this status.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List experiments, newest first."""
    rows = ops().experiments.list_experiments(prompt=prompt, status=status.value if status else None)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "prompt", "status", "versions", "decisions", "leader", "winner")
    for e in rows:
        leader = max(e.arms, key=lambda a: a.p_best or 0.0)
        table.add_row(
            cell(e.id),
            cell(e.prompt),
            cell(e.status),
            cell(", ".join(str(a.version) for a in e.arms)),
            cell(sum(a.decisions for a in e.arms)),
            cell(f"v{leader.version}" if leader.p_best is not None else ""),
            cell(f"v{e.winner}" if e.winner else ""),
        )
    out.print(table)


@experiment_app.command("status")
def experiment_status(experiment_id: int, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per-arm figures of an experiment."""
    e = ops().experiments.get(experiment_id)
    if as_json:
        print_json(e)
        return
    say(f"experiment {e.id} on {e.prompt}: {e.status}" + (f", winner v{e.winner}" if e.winner else ""))
    _say_control(e)
    if e.reason:
        say(f"  {e.reason}")
    if e.value_remaining is not None:
        say(f"  value remaining (95%): {100 * e.value_remaining:.2f}% of the leader's mean")
    for flag in e.safety:
        say(f"  FROZEN ({flag['flag']}): {flag['sentence']}")
    if e.srm_alarm and "srm" not in e.flags:
        say("  SAMPLE RATIO MISMATCH: promotion frozen")
    hold = e.holdout
    if hold:
        phase = "holdout" if e.status == ExperimentStatus.HOLDOUT else "holdout ended"
        test = (
            ""
            if hold.get("p_old_better") is None
            else f"; P(v{hold['old_version']} better) {100 * hold['p_old_better']:.1f}%"
        )
        say(
            f"  {phase}: v{hold['new_version']} promoted, v{hold['old_version']} keeps its "
            f"holdout share{test}"
        )
    for a in e.arms:
        for g in a.guardrails:
            say(f"  guardrail {g['sentence']}")

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.2f}%"

    table = Table(
        "version",
        "variant",
        "decisions",
        "units",
        "feedback",
        "n",
        "mean",
        "95% CI",
        "P(best)",
        "exp. loss",
        "weight",
    )
    for a in e.arms:
        ci = "" if a.ci_low is None else f"{pct(a.ci_low)} - {pct(a.ci_high)}"
        table.add_row(
            cell(f"{a.version}{' (control)' if a.is_control else ''}"),
            cell(a.variant),
            cell(a.decisions),
            cell(a.new_units),
            cell(a.feedback),
            cell(a.n),
            cell(pct(a.mean)),
            cell(ci),
            cell(pct(a.p_best)),
            cell("" if a.expected_loss is None else f"{a.expected_loss:.5f}"),
            cell(pct(a.weight)),
        )
    out.print(table)
    names = sorted({m for a in e.arms for m in a.metrics})
    if names:
        metrics = Table("version", *names, title="metrics (mean, 95% CI, n)")
        for a in e.arms:
            row = []
            for m in names:
                est = a.metrics.get(m)
                row.append(
                    ""
                    if not est or est["mean"] is None or est["ci_low"] is None
                    else f"{est['mean']:.4g} ({est['ci_low']:.4g} .. {est['ci_high']:.4g}), n {est['n']}"
                )
            metrics.add_row(cell(a.version), *(cell(x) for x in row))
        out.print(metrics)
    if any(a.calls for a in e.arms):

        def num(x: float | None, fmt: str) -> str:
            return "" if x is None else format(x, fmt)

        usage = Table(
            "version",
            "calls",
            "errors",
            "cache hits",
            "cost / 1k calls",
            "p50 ms",
            "p95 ms",
            title="calls through the gateway",
        )
        for a in e.arms:
            per_k = None if a.cost_usd_mean is None else 1000 * a.cost_usd_mean
            usage.add_row(
                str(a.version),
                str(a.calls),
                pct(a.error_rate),
                pct(a.cache_hit_rate),
                num(per_k, ".4f"),
                num(a.latency_ms_p50, ".0f"),
                num(a.latency_ms_p95, ".0f"),
            )
        out.print(usage)


@experiment_app.command("stop")
def experiment_stop(experiment_id: int) -> None:
    """Stop an experiment; production stays."""
    e = ops().experiments.stop(experiment_id, actor=_actor())
    say(f"experiment {e.id} stopped")


@experiment_app.command("promote")
def experiment_promote(
    experiment_id: int,
    version: Annotated[int | None, typer.Option(help="Winner (default: the leader).")] = None,
) -> None:
    """End a running experiment and move production to the winner."""
    e = ops().experiments.promote(experiment_id, version=version, actor=_actor())
    say(f"experiment {e.id} completed: production -> version {e.winner}")


# -- simulation ----------------------------------------------------------------------------------
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


# -- the response cache --------------------------------------------------------------------------
cache_app = typer.Typer(help="The response cache.", no_args_is_help=True)
app.add_typer(cache_app, name="cache")

WARM_FAILURES_SHOWN = 10
"""How many distinct failure reasons `cache warm` lists (the most frequent first)."""


def _one_line(text: str, limit: int = 300) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _gateway(service: Any) -> Any:
    from promptops.services.gateway import Gateway

    return Gateway.create(service.serving, service.settings)


@cache_app.command("stats")
def cache_stats(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Entries in the shared cache, per prompt."""
    stats = _gateway(ops()).cache.stats()
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
    removed = _gateway(ops()).cache.clear(name)
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

    from promptops.services.gateway import warm

    if label is not None and version is not None:
        fail("give --label or --version, not both", 2)
    cases = []
    try:
        lines = dataset.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        fail(f"{dataset}: {exc.strerror or exc}", 2)
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            case = json.loads(line)
        except ValueError:
            fail(f"{dataset}:{n}: not valid JSON", 2)
        if not isinstance(case, dict) or not isinstance(case.get("vars", {}), dict):
            fail(f'{dataset}:{n}: each line must be an object {{"vars": {{...}}}}', 2)
        cases.append(case.get("vars", {}))
    service = ops()
    gateway = _gateway(service)

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


# -- server, database, keys ----------------------------------------------------------------------
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
        f"{verb} {r['decisions']} decisions and {r['feedback']} feedback "
        f"from {r['experiments']} ended experiment(s) and old production serves"
    )
    if not dry_run:
        cache = _gateway(service).cache
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


@keys_app.command("create")
def keys_create(
    role: Annotated[KeyRole, typer.Option("--role", help="What the key may do.")],
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    key = ops().keys.create(role.value, name=name, actor=_actor())
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
    service.keys.revoke(key_id, actor=_actor())
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
    ops().keys.auth_off(actor=_actor())
    say("auth is off: a server bound to loopback answers without a key until one is created")


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


if __name__ == "__main__":
    main()
