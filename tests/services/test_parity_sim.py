"""The simulator and the server share their data rules: the same seeded traffic, replayed through
the server's services on a virtual clock, closes the same epochs with the same statistics and
reaches the same decision as `simulate_run`."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import numpy as np

from promptops import stats
from promptops.domain import parse_policy
from promptops.services import maturation
from promptops.services.calls import CallRecorder
from promptops.services.live import LiveExperiment
from promptops.stats import simulator
from tests.samples import triage
from tests.services.test_units import call_row

POLICY = {
    "min_hours": 0,
    "min_samples_per_arm": 300,
    "update_every": 300,
    "min_update_minutes": 0,
    "attribution_window_hours": 0.2,
    "max_decisions": 20000,
    "max_checks": 20,
    "holdout_share": 0,
}
DECISIONS = 6000


def _flow(policy: dict[str, Any]) -> str:
    return "{" + ", ".join(f"{k}: {v}" for k, v in policy.items()) + "}"


def _record(
    data: stats.EpochData,
    kwargs: dict[str, Any],
    result: stats.StepResult,
) -> dict[str, Any]:
    fb = data.feedback
    return {
        "n": np.array(data.n, dtype=float),
        "s": np.array(data.s, dtype=float),
        "ss": np.array(data.ss, dtype=float),
        "assigned": np.array(data.assigned, dtype=float),
        "weights": np.array(data.weights, dtype=float),
        "feedback": None if fb is None else np.vstack([fb.eligible, fb.on_time, fb.late]),
        "hours": kwargs["hours_elapsed"],
        "decisions": kwargs["decisions_total"],
        "matured": kwargs["matured_decisions"],
        "action": str(result.action),
        "winner": result.winner,
        "checked": result.checked,
        "stop": result.stop_reason,
        "threshold": result.threshold,
        "checks": result.state.checks_done,
        "burn_in": result.state.burn_in_done,
        "metrics": {
            name: {"n": md.n.copy(), "s": md.s.copy(), "ss": md.ss.copy(), "cap": np.array([md.cap or 0.0])}
            for name, md in (data.metrics or {}).items()
        },
    }


def replay(
    ops,
    prompts_dir: Path,
    clock,
    monkeypatch,
    scenario: Any,
    policy_text: str,
    *,
    units: bool = False,
    calls: bool = False,
):
    """Run the scenario's first run through the simulator and its traffic through the server
    (one decision per virtual second, each arm the one the simulator served, feedback and metric
    values as they came, the allocation draws the simulator's); with `calls`, the values of
    `latency_ms` and `error` come as each decision's gateway call instead of feedback. Returns the
    simulator's run and outcome and both lists of recorded steps."""
    runs: list[Any] = []
    sim_steps: list[dict[str, Any]] = []
    init, sim_step = simulator._Run.__init__, simulator.step

    def capture_run(self: Any, *args: Any, **kwargs: Any) -> None:
        init(self, *args, **kwargs)
        runs.append(self)

    def capture_sim_step(data: Any, **kwargs: Any) -> Any:
        result = sim_step(data, **kwargs)
        sim_steps.append(_record(data, kwargs, result))
        sim_steps[-1]["next_weights"] = result.weights
        return result

    monkeypatch.setattr(simulator._Run, "__init__", capture_run)
    monkeypatch.setattr(simulator, "step", capture_sim_step)
    outcome = simulator.simulate_run(scenario, 0)
    run = runs[0]

    current = {"i": 0}
    server_steps: list[dict[str, Any]] = []
    real_step = stats.step

    def replay_step(data: Any, **kwargs: Any) -> Any:
        result = real_step(data, **kwargs)
        server_steps.append(_record(data, kwargs, result))
        k = len(server_steps) - 1
        if k < len(sim_steps):
            result = dataclasses.replace(result, weights=sim_steps[k]["next_weights"])
        return result

    monkeypatch.setattr(stats, "step", replay_step)
    monkeypatch.setattr(maturation, "MATURITY_GRACE_SECONDS", 0.0)
    monkeypatch.setattr(
        LiveExperiment, "pick", lambda self, unit_id, rng, first_epoch=None: int(run.arm[current["i"]])
    )
    recorder = CallRecorder(ops.ctx)
    start = clock.t
    (prompts_dir / "triage.yaml").write_text(policy_text, encoding="utf-8")
    ops.sync()
    for i in range(scenario.decisions):
        clock.t = start + i
        current["i"] = i
        unit_id = f"u{run.traffic.unit[i]}" if units else None
        d = ops.serve("triage", {"message": "x"}, unit_id=unit_id)
        if d.experiment_id is None:
            break
        assert d.version == int(run.arm[i]) + 1
        if run.got[i] and run.on_time[i]:
            ops.feedback(d.decision_id, float(run.reward[i]))
        values = {name: float(run.metric[j, i]) for j, name in enumerate(run.metric_names)}
        if calls:
            row = call_row(ops, d.decision_id, unit_id, cost=None, status="ok")
            if values.pop("error") >= 0.5:
                row["status"] = "error"
            recorder.record_calls([{**row, "latency_ms": values.pop("latency_ms")}])
        for name, value in values.items():
            ops.feedback(d.decision_id, value, metric=name)
        ops.tick()
    return run, outcome, sim_steps, server_steps


def compare(sim_steps: list[dict[str, Any]], server_steps: list[dict[str, Any]]) -> None:
    """The server's steps read the same data and decide the same as the simulator's."""
    assert len(server_steps) == len(sim_steps)
    for k, (mine, theirs) in enumerate(zip(server_steps, sim_steps, strict=True)):
        for key in ("n", "s", "ss", "assigned", "weights", "feedback"):
            assert np.allclose(mine[key], theirs[key]), (k, key, mine[key], theirs[key])
        assert mine["metrics"].keys() == theirs["metrics"].keys(), k
        for name, sums in mine["metrics"].items():
            for part, value in sums.items():
                assert np.allclose(value, theirs["metrics"][name][part], rtol=1e-9), (k, name, part)
        for key in (
            "hours",
            "decisions",
            "matured",
            "action",
            "winner",
            "checked",
            "stop",
            "threshold",
            "checks",
            "burn_in",
        ):
            assert mine[key] == theirs[key], (k, key, mine[key], theirs[key])


def test_the_server_replays_the_simulator(ops, prompts_dir: Path, clock, monkeypatch):
    policy = parse_policy(POLICY)
    scenario = simulator.Scenario(
        name="parity",
        arms=(simulator.SimArm("main", 0.10), simulator.SimArm("terse", 0.16)),
        runs=1,
        seed=7,
        decisions=DECISIONS,
        decisions_per_hour=3600,
        policy=policy,
    )
    run, outcome, sim_steps, server_steps = replay(
        ops, prompts_dir, clock, monkeypatch, scenario, triage(_flow(POLICY))
    )
    assert outcome.winner == 1 and len(sim_steps) > 5  # the run promotes after several epochs
    compare(sim_steps, server_steps)
    exp = ops.experiments.get(1)
    assert exp.status == "completed" and exp.winner == 2


def test_the_server_replays_units_and_a_guardrail_metric(ops, prompts_dir: Path, clock, monkeypatch):
    # returning units and a cost metric: per unit (its mean, in its first epoch) on both sides
    policy = {**POLICY, "max_decisions": 100000}
    guardrail = "  guardrails:\n    - {metric: cost_usd, max_increase: 0.10}\n"
    scenario = simulator.Scenario(
        name="parity-units",
        arms=(
            simulator.SimArm("main", 0.10, metrics=(("cost_usd", 1.0, 0.5),)),
            simulator.SimArm("terse", 0.16, metrics=(("cost_usd", 1.2, 0.5),)),
        ),
        runs=1,
        seed=11,
        decisions=3000,
        decisions_per_hour=3600,
        policy=parse_policy({**policy, "guardrails": [{"metric": "cost_usd", "max_increase": 0.1}]}),
        unit_mean_decisions=6.0,
        unit_icc=0.1,
    )
    run, _, sim_steps, server_steps = replay(
        ops, prompts_dir, clock, monkeypatch, scenario, triage(_flow(policy)) + guardrail, units=True
    )
    assert run.traffic.units < 1000 and len(sim_steps) > 4
    assert all(step["metrics"] for step in sim_steps)
    compare(sim_steps, server_steps)


def test_the_server_caps_gateway_call_values_like_the_simulator(ops, prompts_dir: Path, clock, monkeypatch):
    # latency from the gateway's own calls, heavy enough that values above its cap keep coming:
    # the server caps them as the simulator caps its metric values (the cap from the first 100)
    policy = {**POLICY, "max_decisions": 100000}
    guardrail = "  guardrails:\n    - {metric: latency_ms, max_increase: 0.10}\n"
    arms = (("main", 0.10, 800.0), ("terse", 0.16, 820.0))
    scenario = simulator.Scenario(
        name="parity-calls",
        arms=tuple(
            simulator.SimArm(name, p, metrics=(("latency_ms", ms, 900.0), ("error", 0.0, 0.0)))
            for name, p, ms in arms
        ),
        runs=1,
        seed=13,
        decisions=3000,
        decisions_per_hour=3600,
        policy=parse_policy({**policy, "guardrails": [{"metric": "latency_ms", "max_increase": 0.1}]}),
    )
    run, _, sim_steps, server_steps = replay(
        ops, prompts_dir, clock, monkeypatch, scenario, triage(_flow(policy)) + guardrail, calls=True
    )
    cap = server_steps[-1]["metrics"]["latency_ms"]["cap"][0]
    j = run.metric_names.index("latency_ms")
    assert cap > 0 and (run.metric[j, : len(server_steps) * 300] > cap).sum() > 5  # the cap bites
    compare(sim_steps, server_steps)
