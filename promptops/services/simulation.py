"""Simulation scenarios: load and validate a scenario file, run it through the real policy.

The file format is CONTRACT.md's "Simulation scenarios"; `run_scenario` spreads the seeded runs over
worker processes (results do not depend on the split) and returns the CONTRACT result dict.
"""

from __future__ import annotations

import math
import multiprocessing
import os
import statistics
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from promptops.domain import POLICY_CHOICES, Policy, parse_guardrails, policy_value_problem
from promptops.errors import InvalidInput
from promptops.stats.simulator import RunResult, Scenario, SimArm, aggregate, simulate_runs

__all__ = [
    "PlanResult", "Scenario", "load_scenario", "parse_scenario", "plan_scenarios", "run_plan",
    "run_scenario",
]

Progress = Callable[[int, int], None]

_TOP_KEYS = (
    "name", "runs", "seed", "decisions", "decisions_per_hour", "reward", "concentration", "arms",
    "drift", "feedback_delay_hours", "feedback_rate", "policy", "tolerance", "units",
)
_ARM_KEYS = ("name", "mean", "feedback_delay_hours", "concentration", "feedback_rate", "schedule",
             "metrics")


class _Checker:
    """Validation helpers that name the file and the key in every message."""

    def __init__(self, source: str) -> None:
        self.source = source

    def fail(self, key: str, message: str) -> InvalidInput:
        return InvalidInput(f"{self.source}: '{key}' {message}", field=key)

    def mapping(self, value: Any, key: str, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, dict):
            raise self.fail(key, "must be a mapping")
        for k in value:
            if k not in allowed:
                where = f"{key}.{k}" if key != "scenario" else str(k)
                known = ", ".join(allowed)
                raise self.fail(where, f"is not a known key (expected one of: {known})")
        return value

    def integer(self, value: Any, key: str, *, minimum: int | None = None) -> int:
        if isinstance(value, bool) or not isinstance(value, int) or (
                minimum is not None and value < minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            raise self.fail(key, f"must be an integer{bound} (got {value!r})")
        return value

    def number(self, value: Any, key: str, *, lo: float = -math.inf, hi: float = math.inf,
               open_lo: bool = False) -> float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value > hi or value < lo or (
            open_lo and value == lo
        ):
            low = f"> {lo:g}" if open_lo else f">= {lo:g}"
            bound = low if hi == math.inf else f"{low} and <= {hi:g}"
            raise self.fail(key, f"must be a number {bound} (got {value!r})")
        return float(value)


def _policy(check: _Checker, raw: Any) -> Policy:
    values = check.mapping({} if raw is None else raw, "policy", Policy.field_names())
    default = Policy()
    out: dict[str, Any] = {}
    for name, value in values.items():
        key = f"policy.{name}"
        if name == "guardrails":
            try:
                out[name] = parse_guardrails(value)
            except ValueError as exc:
                where, _, message = str(exc).partition(": ")
                raise check.fail(where, message) from None
            continue
        if value is None and name in ("holdout_decisions", "missing_feedback"):
            out[name] = None
            continue
        if name == "holdout_decisions":
            value = check.integer(value, key)
        elif name not in POLICY_CHOICES:
            if isinstance(getattr(default, name), int):
                value = check.integer(value, key)
            else:
                value = check.number(value, key)
        problem = policy_value_problem(name, value)  # the ranges every policy follows
        if problem:
            raise check.fail(key, f"{problem} (got {value!r})")
        out[name] = value
    return default.with_overrides(out)


def parse_scenario(
    raw: Any, *, source: str = "scenario", default_name: str = "scenario"
) -> Scenario:
    """Validate a scenario already parsed from YAML; errors name the offending key."""
    check = _Checker(source)
    data = check.mapping(raw, "scenario", _TOP_KEYS)
    reward = data.get("reward", "binary")
    if reward not in ("binary", "continuous"):
        raise check.fail("reward", f"must be binary or continuous (got {reward!r})")
    concentration = check.number(data.get("concentration", 20.0), "concentration", lo=0,
                                 open_lo=True)
    delay = check.number(data.get("feedback_delay_hours", 0.0), "feedback_delay_hours", lo=0)

    drift: list[tuple[float, float]] = []
    raw_drift = data.get("drift") or []
    if not isinstance(raw_drift, list):
        raise check.fail("drift", "must be a list of {at, multiply}")
    for i, item in enumerate(raw_drift):
        entry = check.mapping(item, f"drift[{i}]", ("at", "multiply"))
        if "at" not in entry or "multiply" not in entry:
            raise check.fail(f"drift[{i}]", "needs both 'at' and 'multiply'")
        drift.append((
            check.number(entry["at"], f"drift[{i}].at", lo=0, hi=1),
            check.number(entry["multiply"], f"drift[{i}].multiply", lo=0, open_lo=True),
        ))
    drift.sort()
    peak = max([1.0] + [math.prod(m for _, m in drift[: j + 1]) for j in range(len(drift))])

    raw_arms = data.get("arms")
    if not isinstance(raw_arms, list) or len(raw_arms) < 2:
        raise check.fail("arms", "must be a list of at least two arms")
    arms: list[SimArm] = []
    for i, item in enumerate(raw_arms):
        entry = check.mapping(item, f"arms[{i}]", _ARM_KEYS)
        name = entry.get("name")
        if not isinstance(name, str) or not name:
            raise check.fail(f"arms[{i}].name", "must be a non-empty string")
        if any(a.name == name for a in arms):
            raise check.fail(f"arms[{i}].name", f"repeats the arm name {name!r}")
        if "mean" not in entry:
            raise check.fail(f"arms[{i}].mean", "is required")
        # the largest the mean gets under drift must stay a valid mean
        if reward == "binary":
            mean = check.number(entry["mean"], f"arms[{i}].mean", lo=0, hi=1.0 / peak)
        else:
            mean = check.number(entry["mean"], f"arms[{i}].mean", lo=0, open_lo=True, hi=1.0 / peak)
            if mean * peak >= 1.0:
                raise check.fail(f"arms[{i}].mean", "must stay below 1 for a continuous reward")
        schedule: list[tuple[float, float]] = []
        raw_schedule = entry.get("schedule") or []
        if not isinstance(raw_schedule, list):
            raise check.fail(f"arms[{i}].schedule", "must be a list of {at, mean}")
        for j, item in enumerate(raw_schedule):
            where = f"arms[{i}].schedule[{j}]"
            step = check.mapping(item, where, ("at", "mean"))
            if "at" not in step or "mean" not in step:
                raise check.fail(where, "needs both 'at' and 'mean'")
            schedule.append((check.number(step["at"], f"{where}.at", lo=0, hi=1),
                             check.number(step["mean"], f"{where}.mean", lo=0, hi=1.0 / peak,
                                          open_lo=reward == "continuous")))
        metrics: list[tuple[str, float, float]] = []
        raw_metrics = entry.get("metrics") or {}
        if not isinstance(raw_metrics, dict):
            raise check.fail(f"arms[{i}].metrics", "must be a mapping like {cost_usd: {mean, sd}}")
        for metric, spec in raw_metrics.items():
            where = f"arms[{i}].metrics.{metric}"
            params = check.mapping(spec, where, ("mean", "sd"))
            if "mean" not in params:
                raise check.fail(f"{where}.mean", "is required")
            metrics.append((str(metric), check.number(params["mean"], f"{where}.mean"),
                            check.number(params.get("sd", 0.0), f"{where}.sd", lo=0)))
        arms.append(SimArm(
            name=name,
            mean=mean,
            schedule=tuple(sorted(schedule)),
            metrics=tuple(sorted(metrics)),
            feedback_rate=None if "feedback_rate" not in entry else check.number(
                entry["feedback_rate"], f"arms[{i}].feedback_rate", lo=0, hi=1),
            feedback_delay_hours=check.number(
                entry.get("feedback_delay_hours", delay), f"arms[{i}].feedback_delay_hours", lo=0),
            concentration=check.number(
                entry.get("concentration", concentration), f"arms[{i}].concentration", lo=0,
                open_lo=True),
        ))

    metric_sets = {tuple(m for m, _, _ in a.metrics) for a in arms}
    if len(metric_sets) > 1:
        raise check.fail("arms", "every arm needs the same metrics")
    policy = _policy(check, data.get("policy"))
    for j, rule in enumerate(policy.guardrails):
        if rule.metric not in next(iter(metric_sets)):
            raise check.fail(f"policy.guardrails[{j}].metric",
                             f"{rule.metric!r} is not simulated: give every arm metrics.{rule.metric}")
    unit_mean: float | None = None
    icc = 0.0
    if data.get("units") is not None:
        units = check.mapping(data["units"], "units", ("mean_decisions", "icc"))
        unit_mean = check.number(units.get("mean_decisions", 1.0), "units.mean_decisions", lo=1,
                                 hi=10_000)
        icc = check.number(units.get("icc", 0.0), "units.icc", lo=0, hi=0.99)

    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        raise check.fail("name", "must be a non-empty string")
    return Scenario(
        name=name,
        arms=tuple(arms),
        runs=check.integer(data.get("runs", 100), "runs", minimum=1),
        seed=check.integer(data.get("seed", 0), "seed", minimum=0),
        decisions=check.integer(data.get("decisions", 10_000), "decisions", minimum=1),
        decisions_per_hour=check.number(data.get("decisions_per_hour", 1000.0),
                                        "decisions_per_hour", lo=0, open_lo=True),
        reward=reward,
        drift=tuple(drift),
        feedback_rate=check.number(data.get("feedback_rate", 1.0), "feedback_rate", lo=0, hi=1),
        policy=policy,
        tolerance=check.number(data.get("tolerance", 0.0), "tolerance", lo=0),
        unit_mean_decisions=unit_mean,
        unit_icc=icc,
    )


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario YAML file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise InvalidInput(f"{p}: cannot read the scenario file ({exc.strerror or exc})") from exc
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{p}:{mark.line + 1}" if mark is not None else str(p)
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise InvalidInput(f"{where}: not valid YAML ({problem})") from None
    return parse_scenario(raw, source=str(p), default_name=p.stem)


def run_scenario(
    scenario: Scenario,
    *,
    progress: Progress | None = None,
    runs: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run a scenario's seeded runs (all, or the first `runs`) and return the CONTRACT result."""
    return aggregate(scenario, _results(scenario, progress=progress, runs=runs, workers=workers))


def _results(
    scenario: Scenario,
    *,
    progress: Progress | None = None,
    runs: int | None = None,
    workers: int | None = None,
) -> list[RunResult]:
    """The seeded runs' results in run order, spread over worker processes."""
    total = scenario.runs if runs is None else runs
    if total < 1:
        raise InvalidInput("runs must be at least 1", field="runs")
    size = max(1, min(20, total // 16 or 1))
    chunks = [range(i, min(i + size, total)) for i in range(0, total, size)]
    workers = min(workers or os.cpu_count() or 1, len(chunks))
    results: dict[int, list[RunResult]] = {}
    done = 0
    if progress is not None:
        progress(0, total)
    if workers <= 1:
        for chunk in chunks:
            results[chunk.start] = simulate_runs(scenario, chunk)
            done += len(chunk)
            if progress is not None:
                progress(done, total)
    else:
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=context) as pool:
            futures = {pool.submit(simulate_runs, scenario, c): c for c in chunks}
            for future in as_completed(futures):
                chunk = futures[future]
                results[chunk.start] = future.result()
                done += len(chunk)
                if progress is not None:
                    progress(done, total)
    return [r for start in sorted(results) for r in results[start]]


@dataclass(frozen=True)
class PlanResult:
    """What `promptops plan` reports: the chance to find the lift, the time and traffic it takes,
    and how often an A/A test with the same traffic would promote wrongly."""

    runs: int
    detection_rate: float
    median_hours: float
    median_decisions: float
    aa_false_promotion: float
    base_rate: float
    lift: float
    decisions_per_hour: float

    def sentence(self) -> str:
        """The answer in one sentence."""
        return (
            f"with {self.decisions_per_hour:,.0f} decisions an hour and a "
            f"{100 * self.base_rate:g}% base rate, a {100 * self.lift:g}-point lift is found in "
            f"{100 * self.detection_rate:.0f}% of runs, after about {self.median_hours:,.0f} hours "
            f"({self.median_decisions:,.0f} decisions); an A/A test would promote wrongly in "
            f"{100 * self.aa_false_promotion:.0f}%"
        )


def plan_scenarios(
    *,
    base_rate: float,
    lift: float,
    arms: int = 2,
    decisions_per_hour: float = 1000.0,
    feedback_rate: float = 1.0,
    units: float | None = None,
    icc: float = 0.1,
    runs: int = 100,
    policy: Policy | None = None,
    seed: int = 17,
) -> tuple[Scenario, Scenario]:
    """The A/B scenario (one challenger `lift` points above `base_rate`, the others equal to the
    control) and its A/A twin, over the policy's max_decisions with the shipped defaults."""
    policy = policy or Policy()
    if not 0 < base_rate < 1 or not 0 < base_rate + lift <= 1:
        raise InvalidInput("base rate and base rate + lift must lie in (0, 1]", field="lift")
    if arms < 2:
        raise InvalidInput("a plan needs at least two arms", field="arms")
    if decisions_per_hour <= 0 or not 0 < feedback_rate <= 1:
        raise InvalidInput("decisions per hour must be positive and the feedback rate in (0, 1]",
                           field="feedback_rate")
    if units is not None and units < 1:
        raise InvalidInput("units must make at least one decision on average", field="units")

    def build(name: str, top: float) -> Scenario:
        means = [base_rate] + [base_rate] * (arms - 2) + [top]
        return Scenario(
            name=name, runs=runs, seed=seed, decisions=policy.max_decisions,
            decisions_per_hour=decisions_per_hour,
            arms=tuple(SimArm(name="control" if i == 0 else f"challenger-{i}", mean=m)
                       for i, m in enumerate(means)),
            feedback_rate=feedback_rate, policy=policy,
            unit_mean_decisions=units, unit_icc=icc if units and units > 1 else 0.0,
        )

    return build("plan-ab", base_rate + lift), build("plan-aa", base_rate)


def run_plan(
    *,
    base_rate: float,
    lift: float,
    arms: int = 2,
    decisions_per_hour: float = 1000.0,
    feedback_rate: float = 1.0,
    units: float | None = None,
    runs: int = 100,
    progress: Progress | None = None,
    workers: int | None = None,
) -> PlanResult:
    """Simulate the plan's A/B and A/A scenarios and summarise them (STATS.md item 17)."""
    ab, aa = plan_scenarios(base_rate=base_rate, lift=lift, arms=arms,
                            decisions_per_hour=decisions_per_hour, feedback_rate=feedback_rate,
                            units=units, runs=runs)

    def part(offset: int) -> Progress | None:
        if progress is None:
            return None
        return lambda done, _total: progress(offset + done, 2 * runs)

    ab_runs = _results(ab, runs=runs, progress=part(0), workers=workers)
    aa_runs = _results(aa, runs=runs, progress=part(runs), workers=workers)
    best = len(ab.arms) - 1
    found = [r for r in ab_runs if r.winner == best]
    ends = [r.decisions_to_end for r in found] or [ab.decisions]
    median = float(statistics.median(ends))
    wrong = sum(1 for r in aa_runs if r.winner not in (None, 0))
    return PlanResult(
        runs=runs, detection_rate=len(found) / runs, median_hours=median / decisions_per_hour,
        median_decisions=median, aa_false_promotion=wrong / runs, base_rate=base_rate, lift=lift,
        decisions_per_hour=decisions_per_hour,
    )
