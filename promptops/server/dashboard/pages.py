"""The dashboard's pages as template contexts, built from service reads (no request, no HTML).

Pages read only aggregates (arm totals, per-epoch sums and snapshots) and bounded audit pages, never
the decision log, so they stay fast however many decisions an experiment has served.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from typing import Any

from promptops.domain import LIVE_STATUSES, MAIN_VARIANT, PRODUCTION, ExperimentStatus, Policy, VariableSpec
from promptops.errors import PromptOpsError
from promptops.rendering import coerce_cli_value
from promptops.server.dashboard import charts
from promptops.server.dashboard.formats import arm_label, fmt_pct, value_format
from promptops.server.schemas.common import canonical_int
from promptops.services.facade import PromptOps
from promptops.services.views import ArmView, ExperimentView, Snapshot
from promptops.stats import check_interval, promotion_threshold

AUDIT_PAGE = 100


def positive_id(value: Any) -> int | None:
    """A positive id from a form or query value, or None (ids past 2**62 are treated as absent).
    Only the canonical spelling counts (`canonical_int`), as for ids in API paths."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        return None
    if isinstance(value, str):
        if len(value) > 19 or (number := canonical_int(value)) is None:
            return None
        value = number
    return value if 0 < value < 2**62 else None


@dataclass(frozen=True, slots=True)
class ExperimentSummary(ExperimentView):
    """An experiment with what its overview row adds: leader, decisions, time running."""

    leader: str | None = None
    leader_p_best: float | None = None
    decisions: int = 0
    running_for: float | None = None


@dataclass(frozen=True, slots=True)
class ArmLine(ArmView):
    """An arm as the experiment page's table shows it."""

    label: str = ""
    mean_text: str = ""
    ci_text: str = ""
    loss_text: str = ""


def _fields(view: Any) -> dict[str, Any]:
    return {f.name: getattr(view, f.name) for f in fields(view)}


def summarize(exp: ExperimentView, now: float) -> ExperimentSummary:
    """An experiment's overview row: leader by P(best), decisions, time running."""
    scored = [a for a in exp.arms if a.p_best is not None]
    leader = max(scored, key=lambda a: a.p_best or 0.0) if scored else None
    started = exp.started_at
    running_for = None if started is None else (exp.ended_at or now) - started
    return ExperimentSummary(
        **_fields(exp),
        leader=arm_label(leader) if leader else None,
        leader_p_best=leader.p_best if leader else None,
        decisions=sum(a.decisions for a in exp.arms),
        running_for=running_for,
    )


def overview_context(ops: PromptOps) -> dict[str, Any]:
    """What the overview shows."""
    now = ops.ctx.now()
    running = [
        summarize(e, now)
        for status in (ExperimentStatus.RUNNING, ExperimentStatus.HOLDOUT)
        for e in ops.experiments.list_experiments(status=status)
    ]
    recent = [
        summarize(e, now) for e in ops.experiments.list_experiments(limit=30) if e.status not in LIVE_STATUSES
    ][:10]
    live = {e.prompt: e.id for e in running}
    prompts = [{**asdict(p), "experiment_id": live.get(p.name)} for p in ops.registry.list_prompts()]
    return {"prompts": prompts, "running": running, "recent": recent, "audit": ops.registry.audit(limit=8)}


def sample_value(spec: VariableSpec) -> Any:
    """A plausible example value of a declared variable for the preview."""
    if spec.has_default:
        return spec.default
    if spec.enum:
        return spec.enum[0]
    return {
        "integer": 1,
        "number": 0.5,
        "boolean": True,
        "object": {},
        "list": [f"sample {spec.name} 1", f"sample {spec.name} 2"],
    }.get(spec.type, f"sample {spec.name}"[: spec.max_length or None])


def _as_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else json.dumps(value)


def diff_lines(diff: str) -> list[tuple[str, str]]:
    """A unified diff as (css class, line) pairs."""
    out = []
    for line in diff.splitlines():
        if line.startswith(("+++", "---")):
            kind = "file"
        elif line.startswith("@@"):
            kind = "hunk"
        else:
            kind = {"+": "add", "-": "del"}.get(line[:1], "same")
        out.append((kind, line))
    return out


def prompt_context(ops: PromptOps, name: str, query: Mapping[str, str]) -> dict[str, Any]:
    """What the prompt page shows: versions, labels, a diff, a preview, experiments, audit."""
    reg = ops.registry
    prompt = reg.get_prompt(name)
    numbers = [v.number for v in prompt.versions]
    production = prompt.production_version
    latest = numbers[0] if numbers else None
    b = positive_id(query.get("b")) or latest
    a = positive_id(query.get("a")) or (production if production != b else None)
    if a is None and b is not None:
        a = b - 1 if b - 1 in numbers else b
    diff = reg.diff(name, a, b) if a and b and a != b else ""
    pv = positive_id(query.get("version")) or production or latest
    preview: dict[str, Any] = {"version": pv, "fields": [], "result": None, "error": None}
    if pv is not None:
        content = reg.get_version(name, pv).content
        values: dict[str, Any] = {}
        for var_name, data in (content.get("variables") or {}).items():
            spec = VariableSpec.from_dict(var_name, data)
            raw = query.get(f"var.{var_name}")
            text = _as_text(sample_value(spec)) if raw is None else str(raw)
            choices = ["true", "false"] if spec.type == "boolean" else [_as_text(c) for c in spec.enum or ()]
            preview["fields"].append(
                {
                    "name": var_name,
                    "type": spec.type,
                    "value": text,
                    "required": spec.required,
                    "choices": choices,
                    "description": spec.description,
                }
            )
            if text == "" and not spec.required:
                continue
            try:
                values[var_name] = coerce_cli_value(spec, text)
            except PromptOpsError as exc:
                preview["error"] = exc.message
        if preview["error"] is None:
            try:
                preview["result"] = reg.render(name, values, version=pv)
            except PromptOpsError as exc:
                preview["error"] = exc.message
    now = ops.ctx.now()
    return {
        "prompt": prompt,
        "numbers": numbers,
        "production": production,
        "diff": {"a": a, "b": b, "lines": diff_lines(diff)},
        "preview": preview,
        "experiments": [summarize(e, now) for e in ops.experiments.list_experiments(prompt=name, limit=20)],
        "audit": reg.audit(prompt=name, limit=20),
    }


def stopping_rule(exp: ExperimentView, now: float) -> list[str]:
    """The state of the stopping rule in plain words."""
    arms, fmt = exp.arms, value_format(exp.reward)
    policy = Policy().with_overrides(exp.policy)
    remaining = exp.value_remaining
    remaining_line = (
        f"Value remaining: with 95% probability no arm beats the leader by more "
        f"than {fmt_pct(remaining)} of its mean."
        if remaining is not None
        else None
    )
    hold = exp.holdout
    if exp.status == ExperimentStatus.HOLDOUT and hold:
        test = (
            ""
            if hold.get("p_old_better") is None
            else f" P(version {hold['old_version']} is better) is {fmt_pct(hold['p_old_better'])}"
            " on the most recent matured decisions;"
        )
        return [
            f"Guarded rollout: version {hold['new_version']} was promoted and holds "
            f"production; version {hold['old_version']} keeps {fmt_pct(policy.holdout_share)}"
            f" of the traffic.{test} production moves back if that reaches 95%."
        ]
    if exp.status == ExperimentStatus.ROLLED_BACK and hold:
        return [
            f"Rolled back: version {hold['new_version']} was promoted, then version "
            f"{hold['old_version']} proved better on its holdout share; production moved back to "
            f"version {hold['old_version']}. {exp.end_reason or 'No reason recorded'}."
        ]
    if exp.status not in (ExperimentStatus.RUNNING, ExperimentStatus.DRAFT):
        winner = f"; the winner is version {exp.winner}" if exp.winner else ""
        if hold and exp.winner:
            winner += f", which held up against version {hold['old_version']} during the holdout"
        ended = [f"Ended {exp.status}: {exp.end_reason or 'no reason recorded'}{winner}."]
        return ended + ([remaining_line] if remaining_line and not exp.winner else [])
    k = len(arms)
    lines = []
    fewest = min((a.n for a in arms), default=0)
    hours = (now - exp.started_at) / 3600 if exp.started_at is not None else 0.0
    if fewest < policy.min_samples_per_arm or hours < policy.min_hours:
        lines.append(
            f"Burn-in: equal weights until every arm has {policy.min_samples_per_arm:,} "
            f"matured outcomes (fewest so far: {fewest:,}) and {policy.min_hours:g} h "
            f"have passed ({hours:.1f} h so far)."
        )
    # alpha is spent over the checks (Lan-DeMets, Pocock type): each check has its own boundary,
    # the strictest at the first check
    need = promotion_threshold(policy, k)
    formula = (
        f"the boundary spending α = {policy.alpha:g}" + (f"/{k - 1}" if k > 2 else "") + " over the checks"
    )
    challengers = [a for a in arms if not a.is_control and a.p_beats_control is not None]
    if challengers:
        best = min(
            challengers,
            key=lambda a: (a.expected_loss is None, a.expected_loss or 0.0, -(a.p_beats_control or 0.0)),
        )
        lines.append(
            f"To promote a challenger it needs P(beats control) ≥ {formula} "
            f"(first check {fmt_pct(need)}); {arm_label(best)} is at "
            f"{fmt_pct(best.p_beats_control)}."
        )
        if best.expected_loss is not None and best.mean is not None:
            lines.append(
                f"Its expected loss must also be at most {fmt_pct(policy.loss_threshold)}"
                f" of its mean: {fmt(best.expected_loss)} now, limit "
                f"{fmt(policy.loss_threshold * best.mean)}."
            )
    else:
        lines.append(
            f"To promote a challenger it needs P(beats control) ≥ {formula} "
            f"(first check {fmt_pct(need)}); no arm has matured outcomes yet."
        )
    control = next((a for a in arms if a.is_control), None)
    if control is not None and control.p_best is not None:
        lines.append(
            f"To keep the control early it needs P(best) ≥ "
            f"{fmt_pct(policy.control_p_best)}; {arm_label(control)} is at "
            f"{fmt_pct(control.p_best)}."
        )
    every = check_interval(policy)
    lines.append(
        f"{exp.checks_done} of at most {policy.max_checks} stopping checks done "
        f"(one per {every:,.0f} matured outcomes)."
    )
    total = sum(a.decisions for a in arms)
    lines.append(
        f"Without a decision it ends inconclusive at {policy.max_decisions:,} "
        f"decisions or {policy.max_days:g} days ({total:,} decisions, "
        f"{hours / 24:.1f} days so far)."
    )
    if remaining_line:
        lines.append(remaining_line)
    if exp.srm_alarm:
        lines.append("Promotion is frozen while the sample-ratio-mismatch alarm is raised.")
    if exp.reason:
        lines.append(f"Latest update: {exp.reason}.")
    return lines


def experiment_context(ops: PromptOps, experiment_id: int) -> dict[str, Any]:
    """What the experiment page shows: arms, charts, the stopping rule, alarm and audit trail."""
    now = ops.ctx.now()
    exp = summarize(ops.experiments.get(experiment_id), now)
    history = ops.experiments.history(experiment_id)
    fmt = value_format(exp.reward)
    arms = [
        ArmLine(
            **_fields(a),
            label=arm_label(a),
            mean_text=fmt(a.mean),
            ci_text=(
                f"{fmt(a.ci_low)} – {fmt(a.ci_high)}"
                if a.ci_low is not None and a.ci_high is not None
                else "—"
            ),
            loss_text=fmt(a.expected_loss),
        )
        for a in exp.arms
    ]
    audit = ops.registry.audit(experiment_id=experiment_id, limit=100)
    evidence_rows = []
    for entry in audit:
        ev = Snapshot.from_dict((entry.details or {}).get("evidence"))
        rows = [
            {
                "label": arms[i].label if i < len(arms) else f"arm {i}",
                "mean": fmt(a.mean),
                "p_best": fmt_pct(a.p_best),
                "p_beats_control": fmt_pct(a.p_beats_control),
                "loss": fmt(a.expected_loss),
            }
            for i, a in enumerate(ev.arms)
        ]
        evidence_rows.append({"rows": rows, "reason": ev.reason, "at": ev.at})
    return {
        "exp": exp,
        "arms": arms,
        "history": history,
        "rule": stopping_rule(exp, now),
        "usage": usage_rows(arms),
        "metrics": metric_rows(arms),
        "guardrails": [g for a in arms for g in a.guardrails],
        "charts": charts.experiment_charts(exp, history, now),
        "audit": list(zip(audit, evidence_rows, strict=True)),
        "adopt": adopt_command(ops, exp.prompt, exp.winner),
    }


def adopt_command(ops: PromptOps, prompt: str, winner: int | None) -> str | None:
    """`promptops adopt NAME` when a variant won and holds production, so the file's main can
    take it; None otherwise."""
    if winner is None or ops.registry.resolve(prompt, version=winner).variant == MAIN_VARIANT:
        return None
    try:
        production = ops.registry.resolve(prompt, label=PRODUCTION).number
    except PromptOpsError:
        return None
    return f"promptops adopt {prompt}" if production == winner else None


def metric_rows(arms: list[ArmLine]) -> dict[str, Any]:
    """Secondary and guardrail metrics per arm: mean with its 95% interval and n."""
    names = sorted({m for a in arms for m in a.metrics})

    def text(est: dict[str, Any] | None) -> str:
        if not est or est.get("mean") is None:
            return "—"
        if est.get("ci_low") is None:
            return f"{est['mean']:.4g} (n {est['n']:,})"
        return f"{est['mean']:.4g} ({est['ci_low']:.4g} – {est['ci_high']:.4g}), n {est['n']:,}"

    return {
        "names": names,
        "rows": [{"label": a.label, "cells": [text(a.metrics.get(m)) for m in names]} for a in arms],
    }


def usage_rows(arms: list[ArmLine]) -> list[dict[str, Any]]:
    """Per-arm gateway figures (none when no arm made a call): cost per 1,000 calls, latency."""
    if not any(a.calls for a in arms):
        return []

    def ms(x: float | None) -> str:
        return "—" if x is None else f"{x:,.0f} ms"

    return [
        {
            "label": a.label,
            "calls": a.calls,
            "cost_per_1k": "—" if a.cost_usd_mean is None else f"${1000 * a.cost_usd_mean:,.4f}",
            "p50": ms(a.latency_ms_p50),
            "p95": ms(a.latency_ms_p95),
            "error_rate": a.error_rate,
            "cache_hit_rate": a.cache_hit_rate,
        }
        for a in arms
    ]


def audit_context(ops: PromptOps, prompt: str | None, offset: int) -> dict[str, Any]:
    """One page of the audit log, optionally for one prompt."""
    entries = ops.registry.audit(prompt=prompt, limit=AUDIT_PAGE + 1, offset=offset)
    return {
        "entries": entries[:AUDIT_PAGE],
        "more": len(entries) > AUDIT_PAGE,
        "offset": offset,
        "page": AUDIT_PAGE,
        "prompt": prompt,
        "prompts": [p.name for p in ops.registry.list_prompts()],
    }
