"""Simulation scenarios: load and validate a scenario file, run it through the real policy.

The file format is CONTRACT.md's "Simulation scenarios"; `run_scenario` spreads the seeded runs over
worker processes (results do not depend on the split) and returns the CONTRACT result dict.
"""

from __future__ import annotations

import functools
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

from promptops.domain import (
    MAX_ARMS,
    Policy,
    RewardKind,
    parse_guardrails,
    policy_setting,
    policy_setting_problem,
)
from promptops.errors import InvalidInput
from promptops.stats.simulator import RunResult, Scenario, SimArm, aggregate, simulate_runs
from promptops.yamlnodes import BAD, Check, Entries, NodeReader, present

__all__ = [
    "PlanResult",
    "Scenario",
    "load_scenario",
    "parse_scenario",
    "plan_scenarios",
    "run_plan",
    "run_scenario",
]

Progress = Callable[[int, int], None]

MAX_RUNS = 100_000
"""The most seeded runs a scenario or a plan may ask for."""

MAX_DECISIONS = 10_000_000
"""The most decisions one simulated run may serve (a run keeps about 100 bytes per decision)."""

MAX_DECISIONS_PER_HOUR = 1e9
"""The fastest traffic simulated: policy windows (up to a year) stay countable in decisions."""

_TOP_KEYS = (
    "name",
    "runs",
    "seed",
    "decisions",
    "decisions_per_hour",
    "reward",
    "concentration",
    "arms",
    "drift",
    "feedback_delay_hours",
    "feedback_rate",
    "policy",
    "tolerance",
    "units",
)
_ARM_KEYS = ("name", "mean", "feedback_delay_hours", "concentration", "feedback_rate", "schedule", "metrics")


def _integer(minimum: int | None = None, maximum: int | None = None) -> Check:
    def check(value: Any) -> str | None:
        if isinstance(value, bool) or not isinstance(value, int) or (minimum is not None and value < minimum):
            bound = "" if minimum is None else f" >= {minimum}"
            return f"must be an integer{bound} (got {value!r})"
        if maximum is not None and value > maximum:
            return f"must be an integer <= {maximum} (got {value!r})"
        return None

    return check


def _number(lo: float = -math.inf, hi: float = math.inf, *, open_lo: bool = False) -> Check:
    def check(value: Any) -> str | None:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        if not ok or not math.isfinite(value) or value > hi or value < lo or (open_lo and value == lo):
            low = f"> {lo:g}" if open_lo else f">= {lo:g}"
            bound = low if hi == math.inf else f"{low} and <= {hi:g}"
            return f"must be a number {bound} (got {value!r})"
        return None

    return check


def _text(value: Any) -> str | None:
    return None if isinstance(value, str) and value else "must be a non-empty string"


def _choice(*options: str) -> Check:
    def check(value: Any) -> str | None:
        return None if value in options else (f"must be {' or '.join(options)} (got {value!r})")

    return check


class _ScenarioReader(NodeReader):
    """The scenario grammar (CONTRACT.md "Simulation scenarios") over YAML nodes with lines."""

    def scenario(self, root: yaml.Node, *, default_name: str) -> Scenario | None:
        self.scan(root)
        top = self.mapping(root, "", _TOP_KEYS, required=("arms",))
        if top is None:
            return None
        reward = self.field(top, "reward", "", _choice(*RewardKind), RewardKind.BINARY)
        concentration = self.field(top, "concentration", "", _number(0, open_lo=True), 20.0)
        delay = self.field(top, "feedback_delay_hours", "", _number(0), 0.0)
        drift = self.drift(top)
        peak = max([1.0] + [math.prod(m for _, m in drift[: j + 1]) for j in range(len(drift))])
        arms = self.arms(top, reward=reward, peak=peak, delay=delay, concentration=concentration)
        policy = self.policy(top)
        unit_mean, icc = self.units(top)
        if arms is not None and policy is not None:
            metric_sets = {tuple(m for m, _, _ in a.metrics) for a in arms}
            if len(metric_sets) > 1:
                self.err(top["arms"][1], "arms: every arm needs the same metrics")
            simulated = next(iter(metric_sets))
            rules = present(top, "policy")
            for j, rule in enumerate(policy.guardrails):
                if rule.metric not in simulated:
                    where = rules if rules is not None else root
                    self.err(
                        where,
                        f"policy.guardrails[{j}].metric: {rule.metric!r} is not "
                        f"simulated: give every arm metrics.{rule.metric}",
                    )
        values = {
            "name": self.field(top, "name", "", _text, default_name),
            "runs": self.field(top, "runs", "", _integer(1, MAX_RUNS), 100),
            "seed": self.field(top, "seed", "", _integer(0), 0),
            "decisions": self.field(top, "decisions", "", _integer(1, MAX_DECISIONS), 10_000),
            "decisions_per_hour": self.field(
                top, "decisions_per_hour", "", _number(0, MAX_DECISIONS_PER_HOUR, open_lo=True), 1000.0
            ),
            "feedback_rate": self.field(top, "feedback_rate", "", _number(0, 1), 1.0),
            "tolerance": self.field(top, "tolerance", "", _number(0), 0.0),
        }
        if (
            self.problems
            or arms is None
            or policy is None
            or any(v is BAD for v in (*values.values(), reward))
        ):
            return None
        return Scenario(
            name=values["name"],
            runs=values["runs"],
            seed=values["seed"],
            decisions=values["decisions"],
            decisions_per_hour=float(values["decisions_per_hour"]),
            feedback_rate=float(values["feedback_rate"]),
            tolerance=float(values["tolerance"]),
            arms=tuple(arms),
            reward=reward,
            drift=tuple(drift),
            policy=policy,
            unit_mean_decisions=unit_mean,
            unit_icc=icc,
        )

    def drift(self, top: Entries) -> list[tuple[float, float]]:
        out: list[tuple[float, float]] = []
        for i, node in enumerate(self.items(top, "drift", "") or []):
            where = f"drift[{i}]"
            entries = self.mapping(node, where, ("at", "multiply"), required=("at", "multiply"))
            if entries is None or "at" not in entries or "multiply" not in entries:
                continue
            at_ = self.field(entries, "at", where, _number(0, 1), BAD)
            times = self.field(entries, "multiply", where, _number(0, open_lo=True), BAD)
            if at_ is not BAD and times is not BAD:
                out.append((float(at_), float(times)))
        return sorted(out)

    def arms(
        self, top: Entries, *, reward: Any, peak: float, delay: Any, concentration: Any
    ) -> list[SimArm] | None:
        nodes = self.items(top, "arms", "")
        if nodes is None:
            return None
        if len(nodes) < 2:
            self.err(top["arms"][1], "arms: must be a list of at least two arms")
            return None
        continuous = reward == RewardKind.CONTINUOUS
        mean_check = _number(0, 1.0 / peak, open_lo=continuous)
        out: list[SimArm] = []
        names: list[str] = []
        for i, node in enumerate(nodes):
            where = f"arms[{i}]"
            entries = self.mapping(node, where, _ARM_KEYS, required=("name", "mean"))
            if entries is None:
                continue
            name = self.field(entries, "name", where, _text, BAD)
            if name is not BAD and name in names:
                self.err(entries["name"][1], f"{where}.name: repeats the arm name {name!r}")
            names.append(name)
            # the largest the mean gets under drift must stay a valid mean
            mean = self.field(entries, "mean", where, mean_check, BAD)
            if continuous and mean is not BAD and mean * peak >= 1.0:
                self.err(entries["mean"][1], f"{where}.mean: must stay below 1 for a continuous reward")
            schedule = []
            for j, step_node in enumerate(self.items(entries, "schedule", where) or []):
                sw = f"{where}.schedule[{j}]"
                step = self.mapping(step_node, sw, ("at", "mean"), required=("at", "mean"))
                if step is None or "at" not in step or "mean" not in step:
                    continue
                at_ = self.field(step, "at", sw, _number(0, 1), BAD)
                m = self.field(step, "mean", sw, mean_check, BAD)
                if at_ is not BAD and m is not BAD:
                    schedule.append((float(at_), float(m)))
            metrics = []
            metrics_node = present(entries, "metrics")
            if metrics_node is not None:
                spec = self.mapping(metrics_node, f"{where}.metrics", None)
                for metric, (_, value_node) in (spec or {}).items():
                    mw = f"{where}.metrics.{metric}"
                    params = self.mapping(value_node, mw, ("mean", "sd"), required=("mean",))
                    if params is None or "mean" not in params:
                        continue
                    m = self.field(params, "mean", mw, _number(), BAD)
                    sd = self.field(params, "sd", mw, _number(0), 0.0)
                    if m is not BAD and sd is not BAD:
                        metrics.append((str(metric), float(m), float(sd)))
            rate = self.field(entries, "feedback_rate", where, _number(0, 1), None)
            arm_delay = self.field(entries, "feedback_delay_hours", where, _number(0), delay)
            conc = self.field(entries, "concentration", where, _number(0, open_lo=True), concentration)
            if BAD in (name, mean, rate, arm_delay, conc) or "name" not in entries or ("mean" not in entries):
                continue
            out.append(
                SimArm(
                    name=name,
                    mean=float(mean),
                    feedback_delay_hours=float(arm_delay),
                    concentration=float(conc),
                    schedule=tuple(sorted(schedule)),
                    metrics=tuple(sorted(metrics)),
                    feedback_rate=None if rate is None else float(rate),
                )
            )
        return out if len(out) == len(nodes) else None

    def units(self, top: Entries) -> tuple[float | None, float]:
        node = present(top, "units")
        if node is None:
            return None, 0.0
        entries = self.mapping(node, "units", ("mean_decisions", "icc"))
        if entries is None:
            return None, 0.0
        mean = self.field(entries, "mean_decisions", "units", _number(1, 10_000), 1.0)
        icc = self.field(entries, "icc", "units", _number(0, 0.99), 0.0)
        return (None if mean is BAD else float(mean)), (0.0 if icc is BAD else float(icc))

    def policy(self, top: Entries) -> Policy | None:
        node = present(top, "policy")
        if node is None:
            return Policy()
        entries = self.mapping(node, "policy", Policy.field_names())
        if entries is None:
            return None
        default = Policy()
        out: dict[str, Any] = {}
        ok = True
        for name, (_, value_node) in entries.items():
            key = f"policy.{name}"
            if name == "guardrails":
                value = self.data(value_node)
                try:
                    out[name] = parse_guardrails(None if value is BAD else value)
                except ValueError as exc:
                    self.err(value_node, str(exc))
                    ok = False
                continue
            value = self.read(value_node, key, functools.partial(policy_setting_problem, name))
            if value is BAD:
                ok = False
                continue
            out[name] = policy_setting(name, value)[0]
        return default.with_overrides(out) if ok else None


def parse_scenario(raw: Any, *, source: str = "scenario", default_name: str = "scenario") -> Scenario:
    """Validate a scenario given as plain data (read as the YAML it dumps to); errors are
    `SOURCE:LINE: key: message` lines, every problem at once."""
    text = yaml.safe_dump(raw, sort_keys=False, default_flow_style=False)
    return _read_scenario(source, text.encode("utf-8"), default_name=default_name)


def _read_scenario(
    source: str, data: bytes | None, *, default_name: str, path: Path | None = None
) -> Scenario:
    reader = _ScenarioReader(source)
    empty = "the scenario file is empty; it needs arms:"
    root = (
        reader.load_file(path, empty=empty)
        if path is not None
        else reader.load_text(data or b"", empty=empty)
    )
    scenario = reader.scenario(root, default_name=default_name) if root is not None else None
    if scenario is None or reader.problems:
        lines = [str(p) for p in reader.sorted_problems()] or [f"{source}:1: not a scenario"]
        raise InvalidInput("\n".join(lines))
    return scenario


def load_scenario(path: str | os.PathLike[str]) -> Scenario:
    """Read and validate a scenario YAML file; errors are `PATH:LINE: message` lines."""
    p = Path(path)
    return _read_scenario(str(p), None, default_name=p.stem, path=p)


def run_scenario(
    scenario: Scenario,
    *,
    progress: Progress | None = None,
    runs: int | None = None,
    workers: int | None = None,
) -> dict[str, Any]:
    """Run a scenario's seeded runs (all, or the first `runs`) and return the CONTRACT result."""
    return aggregate(scenario, _results(scenario, progress=progress, runs=runs, workers=workers))


def _check_runs(runs: int) -> None:
    if runs < 1:
        raise InvalidInput("runs must be at least 1", field="runs")
    if runs > MAX_RUNS:
        raise InvalidInput(f"runs must be at most {MAX_RUNS}", field="runs")


def _results(
    scenario: Scenario,
    *,
    progress: Progress | None = None,
    runs: int | None = None,
    workers: int | None = None,
) -> list[RunResult]:
    """The seeded runs' results in run order, spread over worker processes."""
    total = scenario.runs if runs is None else runs
    _check_runs(total)
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
        found = (
            f"is found in {100 * self.detection_rate:.0f}% of runs, after about "
            f"{self.median_hours:,.0f} hours ({self.median_decisions:,.0f} decisions)"
            if self.detection_rate > 0
            # then the figures are the whole budget, not a time to find it
            else f"is not found in any run within {self.median_hours:,.0f} hours "
            f"({self.median_decisions:,.0f} decisions)"
        )
        return (
            f"with {per_hour(self.decisions_per_hour)} decisions an hour and a "
            f"{100 * self.base_rate:g}% base rate, a {100 * self.lift:g}-point lift {found}; "
            f"an A/A test would promote wrongly in {100 * self.aa_false_promotion:.0f}%"
        )


def per_hour(rate: float) -> str:
    """A traffic rate for people: whole numbers with thousands separators, a fraction as it is."""
    return f"{rate:,.0f}" if rate >= 1 else f"{rate:.3g}"


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
    if not lift > 0:  # NaN too
        raise InvalidInput(
            "lift must be above 0: the challenger's gain over the control, in absolute terms "
            "(0.02 = 2 points); a worse challenger is never meant to be found",
            field="lift",
        )
    if not 0 < base_rate < 1 or not 0 < base_rate + lift <= 1:
        raise InvalidInput("base rate and base rate + lift must lie in (0, 1]", field="lift")
    if arms < 2:
        raise InvalidInput("a plan needs at least two arms", field="arms")
    if arms > MAX_ARMS:
        raise InvalidInput(f"a plan has at most {MAX_ARMS} arms, as an experiment does", field="arms")
    if not 0 < decisions_per_hour <= MAX_DECISIONS_PER_HOUR:  # NaN too
        raise InvalidInput(
            f"decisions per hour must be a number > 0 and <= {MAX_DECISIONS_PER_HOUR:g}",
            field="decisions_per_hour",
        )
    if not 0 < feedback_rate <= 1:
        raise InvalidInput("the feedback rate must lie in (0, 1]", field="feedback_rate")
    if units is not None and not 1 <= units <= 10_000:  # the bound of a scenario file's units
        raise InvalidInput("units must make between 1 and 10000 decisions on average", field="units")
    _check_runs(runs)

    def build(name: str, top: float) -> Scenario:
        means = [base_rate] + [base_rate] * (arms - 2) + [top]
        return Scenario(
            name=name,
            runs=runs,
            seed=seed,
            decisions=policy.max_decisions,
            decisions_per_hour=decisions_per_hour,
            arms=tuple(
                SimArm(name="control" if i == 0 else f"challenger-{i}", mean=m) for i, m in enumerate(means)
            ),
            feedback_rate=feedback_rate,
            policy=policy,
            unit_mean_decisions=units,
            unit_icc=icc if units and units > 1 else 0.0,
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
    ab, aa = plan_scenarios(
        base_rate=base_rate,
        lift=lift,
        arms=arms,
        decisions_per_hour=decisions_per_hour,
        feedback_rate=feedback_rate,
        units=units,
        runs=runs,
    )

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
        runs=runs,
        detection_rate=len(found) / runs,
        median_hours=median / decisions_per_hour,
        median_decisions=median,
        aa_false_promotion=wrong / runs,
        base_rate=base_rate,
        lift=lift,
        decisions_per_hour=decisions_per_hour,
    )
