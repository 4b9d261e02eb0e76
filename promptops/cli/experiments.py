"""`promptops experiment start|list|status|stop|promote`: the experiment lifecycle."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.table import Table

from promptops.cli.base import actor, cell, experiment_app, fail, ops, out, print_json, say
from promptops.domain import ExperimentStatus, RewardKind, Strategy
from promptops.errors import InvalidInput

if TYPE_CHECKING:
    from promptops.services.views import ExperimentView


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
        exp = service.experiments.start(experiment_id, actor=actor())
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
            actor=actor(),
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
    e = ops().experiments.stop(experiment_id, actor=actor())
    say(f"experiment {e.id} stopped")


@experiment_app.command("promote")
def experiment_promote(
    experiment_id: int,
    version: Annotated[int | None, typer.Option(help="Winner (default: the leader).")] = None,
) -> None:
    """End a running experiment and move production to the winner."""
    e = ops().experiments.promote(experiment_id, version=version, actor=actor())
    say(f"experiment {e.id} completed: production -> version {e.winner}")
