"""The `promptops` command line: thin commands over the services."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from promptops.config import Settings
from promptops.errors import InvalidInput, InvalidPromptFile, PromptOpsError

app = typer.Typer(help="Prompts as code, with A/B experiments on autopilot.",
                  no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False)
experiment_app = typer.Typer(help="Experiment lifecycle.", no_args_is_help=True)
db_app = typer.Typer(help="Database migrations.", no_args_is_help=True)
keys_app = typer.Typer(help="API keys.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")
app.add_typer(db_app, name="db")
app.add_typer(keys_app, name="keys")

# Piped output is not cut to 80 columns: tables stay readable in logs and scripts.
out = Console(highlight=False, soft_wrap=True, width=None if sys.stdout.isatty() else 200)
err = Console(stderr=True, highlight=False, soft_wrap=True)


class State:
    """Global options shared by every command."""

    database_url: str | None = None
    prompts_dir: str | None = None


def settings(**overrides: Any) -> Settings:
    """Settings from the environment and the global flags."""
    return Settings.from_env(database_url=State.database_url, prompts_dir=State.prompts_dir,
                             **overrides)


def ops(**overrides: Any):  # type: ignore[no-untyped-def]
    """The services over the configured database (migrated on first use)."""
    from promptops.services.facade import PromptOps

    return PromptOps(settings(**overrides))


def fail(message: str, code: int = 1) -> NoReturn:
    """Print one line to stderr and exit."""
    err.print(f"error: {message}", markup=False)
    raise typer.Exit(code)


def print_json(data: Any) -> None:
    """Print JSON to stdout."""
    sys.stdout.write(json.dumps(data, indent=2, ensure_ascii=False, default=str) + "\n")


@app.callback()
def root(
    database_url: Annotated[str | None, typer.Option(
        "--database-url", help="Overrides PROMPTOPS_DATABASE_URL.")] = None,
    prompts_dir: Annotated[str | None, typer.Option(
        "--prompts-dir", help="Overrides PROMPTOPS_PROMPTS_DIR.")] = None,
) -> None:
    """promptops: prompts as code, with A/B experiments on autopilot."""
    State.database_url = database_url
    State.prompts_dir = prompts_dir


# -- files ---------------------------------------------------------------------------------------
@app.command()
def init(directory: Annotated[Path, typer.Argument(help="Folder to create.")] = Path(".")) -> None:
    """Create a project folder with an example prompt and settings."""
    from promptops import promptfiles

    prompts = directory / "prompts"
    example = prompts / "example.yaml"
    if example.exists():
        fail(f"{example} already exists; nothing changed")
    prompts.mkdir(parents=True, exist_ok=True)
    example.write_text(promptfiles.example_prompt_text(), encoding="utf-8")
    env = directory / ".env.example"
    if not env.exists():
        env.write_text("PROMPTOPS_DATABASE_URL=sqlite:///./promptops.db\n"
                       "PROMPTOPS_PROMPTS_DIR=./prompts\n", encoding="utf-8")
    out.print(f"created {example} and {env}")
    out.print(f"next: cd {directory} && promptops sync && promptops serve")


@app.command()
def validate(paths: Annotated[list[Path] | None, typer.Argument(
        help="Files or folders (default: the prompts folder).")] = None) -> None:
    """Check prompt files; prints PATH:LINE: message for each problem."""
    from promptops import promptfiles

    targets = paths or [settings().prompts_dir]
    definitions = promptfiles.load_prompt_files(targets)
    out.print(f"ok: {len(definitions)} prompt file(s) valid")


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
        out.print(prefix + line, markup=False)
    if not report.changes:
        out.print(f"up to date: {report.prompts} prompt(s)")


def _actor() -> str:
    return f"cli:{os.environ.get('USER') or os.environ.get('USERNAME') or 'unknown'}"


def _parse_vars(service: Any, name: str, version: int | None, label: str | None,
                pairs: list[str], vars_json: str | None) -> dict[str, Any]:
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
    out.print(f"# {result['prompt']} v{result['version']} ({result['variant']})", markup=False)
    if "messages" in result:
        for m in result["messages"]:
            out.print(f"[{m['role']}]", markup=False)
            out.print(m["content"], markup=False)
    else:
        out.print(result["text"], markup=False)


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
        table.add_row(str(v["number"]), v["variant"], ", ".join(v["labels"]),
                      datetime.fromtimestamp(v["created_at"], UTC).strftime("%Y-%m-%d %H:%M"),
                      (v["git_commit"] or "")[:12], v["git_author"] or "", v["source_path"] or "")
    out.print(table)


@app.command()
def diff(name: str, a: int, b: int) -> None:
    """A unified diff of two versions."""
    text = ops().registry.diff(name, a, b)
    sys.stdout.write(text if text else f"versions {a} and {b} have the same content\n")


@app.command()
def label(name: str, version: int, label_name: Annotated[str, typer.Argument(
        metavar="LABEL")]) -> None:
    """Move a label to a version (rollback: move production back)."""
    result = ops().registry.move_label(name, version, label_name, actor=_actor())
    prev = result["previous"]
    out.print(f"{name}: {label_name} -> version {version}"
              + (f" (was {prev})" if prev and prev != version else ""), markup=False)


# -- experiments ---------------------------------------------------------------------------------
def _parse_settings(pairs: list[str]) -> dict[str, Any]:
    policy: dict[str, Any] = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise InvalidInput(f"--set takes SETTING=VALUE, got {pair!r}")
        try:
            policy[key] = json.loads(raw)
        except json.JSONDecodeError:
            policy[key] = raw
    return policy


@experiment_app.command("start")
def experiment_start(
    name: Annotated[str | None, typer.Argument(help="Prompt name.")] = None,
    versions: Annotated[list[int] | None, typer.Argument(help="Two or more versions.")] = None,
    experiment_id: Annotated[int | None, typer.Option("--id", help="Start a draft by id.")] = None,
    metric: Annotated[str, typer.Option(help="Metric name.")] = "reward",
    reward: Annotated[str, typer.Option(help="binary or continuous.")] = "binary",
    strategy: Annotated[str, typer.Option(help="thompson or fixed.")] = "thompson",
    weights: Annotated[str | None, typer.Option(help="Fixed weights, e.g. 0.5,0.5.")] = None,
    set_: Annotated[list[str] | None, typer.Option(
        "--set", help="Policy SETTING=VALUE (repeatable).")] = None,
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
            name, versions, metric=metric, reward=reward, strategy=strategy, weights=w,
            policy=_parse_settings(set_ or []), start=not draft, actor=_actor())
    out.print(f"experiment {exp['id']} {exp['status']}: {exp['prompt']} versions "
              f"{', '.join(str(a['version']) for a in exp['arms'])}", markup=False)


@experiment_app.command("list")
def experiment_list(
    prompt: Annotated[str | None, typer.Option(help="Only this prompt.")] = None,
    status: Annotated[str | None, typer.Option(help="Only this status.")] = None,
    as_json: Annotated[bool, typer.Option("--json")] = False,
) -> None:
    """List experiments, newest first."""
    rows = ops().experiments.list(prompt=prompt, status=status)
    if as_json:
        print_json(rows)
        return
    table = Table("id", "prompt", "status", "versions", "decisions", "leader", "winner")
    for e in rows:
        leader = max(e["arms"], key=lambda a: a["p_best"] or 0.0)
        table.add_row(str(e["id"]), e["prompt"], e["status"],
                      ", ".join(str(a["version"]) for a in e["arms"]),
                      str(sum(a["decisions"] for a in e["arms"])),
                      f"v{leader['version']}" if leader["p_best"] is not None else "",
                      f"v{e['winner']}" if e["winner"] else "")
    out.print(table)


@experiment_app.command("status")
def experiment_status(experiment_id: int,
                      as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Per-arm figures of an experiment."""
    e = ops().experiments.get(experiment_id)
    if as_json:
        print_json(e)
        return
    out.print(f"experiment {e['id']} on {e['prompt']}: {e['status']}"
              + (f", winner v{e['winner']}" if e["winner"] else ""), markup=False)
    if e.get("reason"):
        out.print(f"  {e['reason']}", markup=False)
    if e.get("value_remaining") is not None:
        out.print(f"  value remaining (95%): {100 * e['value_remaining']:.2f}% of the leader's mean",
                  markup=False)
    if e.get("srm_alarm"):
        out.print("  SAMPLE RATIO MISMATCH: promotion frozen", markup=False)

    def pct(x: float | None) -> str:
        return "" if x is None else f"{100 * x:.2f}%"

    table = Table("version", "variant", "decisions", "feedback", "n", "mean", "95% CI",
                  "P(best)", "exp. loss", "weight")
    for a in e["arms"]:
        ci = "" if a["ci_low"] is None else f"{pct(a['ci_low'])} - {pct(a['ci_high'])}"
        table.add_row(f"{a['version']}{' (control)' if a['is_control'] else ''}", a["variant"],
                      str(a["decisions"]), str(a["feedback"]), str(a["n"]), pct(a["mean"]), ci,
                      pct(a["p_best"]), "" if a["expected_loss"] is None
                      else f"{a['expected_loss']:.5f}", pct(a["weight"]))
    out.print(table)


@experiment_app.command("stop")
def experiment_stop(experiment_id: int) -> None:
    """Stop an experiment; production stays."""
    e = ops().experiments.stop(experiment_id, actor=_actor())
    out.print(f"experiment {e['id']} stopped", markup=False)


@experiment_app.command("promote")
def experiment_promote(
    experiment_id: int,
    version: Annotated[int | None, typer.Option(help="Winner (default: the leader).")] = None,
) -> None:
    """End a running experiment and move production to the winner."""
    e = ops().experiments.promote(experiment_id, version=version, actor=_actor())
    out.print(f"experiment {e['id']} completed: production -> version {e['winner']}",
              markup=False)


# -- simulation ----------------------------------------------------------------------------------
@app.command()
def simulate(
    scenario: Path,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    runs: Annotated[int | None, typer.Option(help="Override the scenario's runs.")] = None,
) -> None:
    """Run the real policy against simulated traffic."""
    from rich.progress import Progress

    from promptops.services import simulation

    sc = simulation.load_scenario(scenario)
    if sys.stderr.isatty():
        with Progress(console=err, transient=True) as progress:
            task = progress.add_task("simulating", total=runs or sc.runs)
            result = simulation.run_scenario(
                sc, runs=runs, progress=lambda done, total: progress.update(
                    task, completed=done, total=total))
    else:
        result = simulation.run_scenario(sc, runs=runs)
    if as_json:
        sys.stdout.write(json.dumps(result) + "\n")
        return
    table = Table("figure", "value", title=f"scenario {scenario}")
    for key, value in result.items():
        table.add_row(key, json.dumps(value))
    out.print(table)


# -- server, database, keys ----------------------------------------------------------------------
@app.command()
def serve(
    host: Annotated[str | None, typer.Option(help="Bind address (default 127.0.0.1).")] = None,
    port: Annotated[int | None, typer.Option(help="Port (default 8000).")] = None,
    no_sync: Annotated[bool, typer.Option("--no-sync", help="Do not sync prompts.")] = False,
) -> None:
    """Migrate, sync the prompts folder, and serve the API and dashboard."""
    from promptops.server.run import run_server

    run_server(settings(host=host, port=port, sync_on_start=not no_sync))


@app.command()
def gc(
    older_than: Annotated[float, typer.Option("--older-than", help="Days since the end.")],
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Count, delete nothing.")] = False,
) -> None:
    """Delete raw decisions and feedback of experiments ended over DAYS ago (stats are kept)."""
    r = ops().retention.gc(older_than_days=older_than, dry_run=dry_run)
    verb = "would delete" if dry_run else "deleted"
    out.print(f"{verb} {r['decisions']} decisions and {r['feedback']} feedback "
              f"from {r['experiments']} ended experiment(s) and old production serves")


@db_app.command("upgrade")
def db_upgrade(revision: str = "head") -> None:
    """Run migrations up to head (or a revision)."""
    from promptops.db import engine as db

    eng = db.make_engine(settings().database_url)
    db.upgrade(eng, revision)
    out.print(f"database at {revision}")


@db_app.command("downgrade")
def db_downgrade(revision: str) -> None:
    """Run migrations down to a revision (`base` drops everything)."""
    from promptops.db import engine as db

    eng = db.make_engine(settings().database_url)
    db.downgrade(eng, revision)
    out.print(f"database at {revision}")


@keys_app.command("create")
def keys_create(
    role: Annotated[str, typer.Option("--role", help="serve or admin.")],
    name: Annotated[str, typer.Option(help="A note to recognise the key by.")] = "",
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    key = ops().keys.create(role, name=name, actor=_actor())
    sys.stdout.write(key + "\n")
    err.print("store this key now: it cannot be shown again", markup=False)


@keys_app.command("list")
def keys_list() -> None:
    """List keys (prefixes only)."""
    table = Table("id", "prefix", "role", "name", "revoked")
    for k in ops().keys.list():
        table.add_row(str(k["id"]), k["prefix"] + "...", k["role"], k["name"],
                      "yes" if k["revoked_at"] else "")
    out.print(table)


@keys_app.command("revoke")
def keys_revoke(key_id: int) -> None:
    """Revoke a key by id."""
    service = ops()
    service.keys.revoke(key_id, actor=_actor())
    out.print(f"key {key_id} revoked")
    if not service.keys.any():
        err.print("no active key is left: auth stays on and every request is refused; create a "
                  "key, or run `promptops keys auth-off`", markup=False)


@keys_app.command("auth-off")
def keys_auth_off() -> None:
    """Turn auth off (no active key may exist): a loopback server then answers without a key."""
    ops().keys.auth_off(actor=_actor())
    out.print("auth is off: a server bound to loopback answers without a key until one is created")


def main() -> None:
    """Entry point: run the app, turning user mistakes into one stderr line and exit code 1."""
    try:
        code = app(standalone_mode=False)
        if isinstance(code, int) and code:
            sys.exit(code)
    except InvalidPromptFile as exc:
        for problem in exc.problems:
            err.print(str(problem), markup=False)
        sys.exit(1)
    except PromptOpsError as exc:
        err.print(f"error: {exc.message}", markup=False)
        sys.exit(1)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.Abort:
        err.print("aborted", markup=False)
        sys.exit(130)
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click usage errors and unexpected failures
        import click

        if isinstance(exc, click.exceptions.ClickException):
            exc.show()
            sys.exit(exc.exit_code)
        if os.environ.get("PROMPTOPS_DEBUG"):
            raise
        err.print(f"error: unexpected {type(exc).__name__}: {exc} "
                  "(set PROMPTOPS_DEBUG=1 for a traceback)", markup=False)
        sys.exit(2)


if __name__ == "__main__":
    main()
