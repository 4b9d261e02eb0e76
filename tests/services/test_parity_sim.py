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
from promptops.services.live import LiveExperiment
from promptops.stats import simulator
from tests.samples import triage

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
    }


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

    # the simulator's run: its traffic and every policy step
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
    assert outcome.winner == 1 and len(sim_steps) > 5  # the run promotes after several epochs

    # the same traffic through the server: one decision per virtual second, each arm the one
    # the simulator served, feedback as it came; the allocation draws are the simulator's
    served = iter(range(DECISIONS))
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
    start = clock.t
    (prompts_dir / "triage.yaml").write_text(triage(_flow(POLICY)), encoding="utf-8")
    ops.sync()
    for i in served:
        clock.t = start + i
        current["i"] = i
        d = ops.serve("triage", {"message": "x"})
        if d.experiment_id is None:
            break
        assert d.version == int(run.arm[i]) + 1
        if run.got[i] and run.on_time[i]:
            ops.feedback(d.decision_id, float(run.reward[i]))
        ops.tick()

    assert len(server_steps) == len(sim_steps)
    for k, (mine, theirs) in enumerate(zip(server_steps, sim_steps, strict=True)):
        for key in ("n", "s", "ss", "assigned", "weights", "feedback"):
            assert np.allclose(mine[key], theirs[key]), (k, key, mine[key], theirs[key])
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
    exp = ops.experiments.get(1)
    assert exp.status == "completed" and exp.winner == 2
