"""Simulation and plan results for people: labelled, rounded figures and what they mean.

The command line prints these rows as a table or as plain `figure: value` lines; `--json` keeps
the exact numbers.
"""

from __future__ import annotations

import json
from typing import Any

SIMULATE_HELP = """Run the real policy against simulated traffic and summarise the runs.

A wrong promotion is a run that ends with an arm whose true mean (at the end of the run) is more
than the scenario's tolerance below the best arm's. Regret is the sum, over a run's decisions, of
the best arm's mean minus the served arm's mean: the rewards lost to exploring and to wrong
choices; mean regret averages it over runs, and uniform regret is the same for an even split of
the traffic (what a plain A/B test without a bandit would lose).

Output: a table on a terminal, plain `figure: value` lines otherwise (--table or --plain choose),
or one JSON object with --json (exact numbers)."""
"""The help of `promptops simulate`, which defines its figures."""


def _count(n: Any, runs: int) -> str:
    """`12 (6%)`: a count of runs with its share."""
    return f"{int(n):,} ({100 * int(n) / runs:.0f}%)" if runs else f"{int(n):,}"


def _by_arm(counts: dict[str, Any], runs: int) -> str:
    items = sorted(counts.items(), key=lambda kv: (-int(kv[1]), kv[0]))
    return ", ".join(f"{arm} {_count(n, runs)}" for arm, n in items) or "none"


def _rounded(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:,.4g}" if abs(value) < 1 else f"{value:,.1f}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_rounded(v)}" for k, v in value.items()) or "none"
    return str(value)


def simulation_rows(result: dict[str, Any]) -> list[tuple[str, str]]:
    """The figures of a simulation result for people: labelled, rounded, shares of the runs."""
    runs = int(result.get("runs") or 0)
    rows: list[tuple[str, str]] = [("runs", f"{runs:,}")]
    shown = {"runs"}

    def add(key: str, label: str, text: str) -> None:
        if key in result:
            rows.append((label, text))
            shown.add(key)

    add("promoted", "promoted (runs)", _by_arm(result.get("promoted") or {}, runs))
    add("final", "production at the end (runs)", _by_arm(result.get("final") or {}, runs))
    add("wrong_promotions", "wrong promotions", _count(result.get("wrong_promotions", 0), runs))
    add("inconclusive", "inconclusive", _count(result.get("inconclusive", 0), runs))
    add("rolled_back", "rolled back", _count(result.get("rolled_back", 0), runs))
    frozen = result.get("frozen") or {}
    add(
        "frozen",
        "frozen by safety flags",
        ", ".join(f"{k} {_count(v, runs)}" for k, v in frozen.items()) or "none",
    )
    add("guardrail_blocked", "blocked by a guardrail", _count(result.get("guardrail_blocked", 0), runs))
    median = result.get("median_decisions_to_end")
    add(
        "median_decisions_to_end",
        "median decisions to the end",
        "never ended" if median is None else f"{float(median):,.0f}",
    )
    regret, uniform = result.get("mean_regret"), result.get("uniform_regret")
    if regret is not None:
        share = f" ({100 * float(regret) / float(uniform):.0f}% of an even split)" if uniform else ""
        add("mean_regret", "mean regret (rewards lost)", f"{float(regret):,.1f}{share}")
    if uniform is not None:
        add("uniform_regret", "regret of an even split", f"{float(uniform):,.1f}")
    rows += [(key.replace("_", " "), _rounded(v)) for key, v in result.items() if key not in shown]
    return rows


PLAN_HELP = """Simulate the policy for your traffic: the chance to find a lift, the time it takes,
and how often an A/A test would promote wrongly.

The lift is found in a run when the experiment promotes the better arm. A wrong promotion, in the
A/A runs (every arm equal to the control), is a run that promotes a challenger: with equal arms
nothing should move. The time to find the lift is the median over the runs that found it.

Output: one sentence, then the figures as a table on a terminal or as plain `figure: value` lines
otherwise (--table or --plain choose); --json prints the exact numbers."""
"""The help of `promptops plan`, which defines its figures."""


def plan_rows(result: Any) -> list[tuple[str, str]]:
    """The figures of a plan for people: rounded, with the runs they come from."""
    hours = (
        f"{result.median_hours:,.1f} hours"
        if result.median_hours < 10
        else f"{result.median_hours:,.0f} hours"
    )
    decisions = f"{result.median_decisions:,.0f}"
    if result.detection_rate == 0:  # the figures are then the whole budget
        hours, decisions = f"not found within {hours}", f"not found within {decisions}"
    rate = result.decisions_per_hour
    return [
        ("chance to find the lift", f"{100 * result.detection_rate:.0f}% of {result.runs:,} runs"),
        ("median time to find it", hours),
        ("median decisions to find it", decisions),
        ("A/A wrong promotions", f"{100 * result.aa_false_promotion:.0f}% of {result.runs:,} runs"),
        ("base rate", f"{100 * result.base_rate:g}%"),
        ("lift", f"{100 * result.lift:g} points"),
        ("decisions per hour", f"{rate:,.0f}" if rate >= 1 else f"{rate:.3g}"),
    ]
