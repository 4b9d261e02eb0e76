"""Units: a unit keeps the arm of its first exposure for the experiment's life, on every replica,
and counts as one observation (its mean matured reward) in its first-exposure epoch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from sqlalchemy import select

from promptops.db.models import (
    ArmEpochRow,
    ArmMetricRow,
    DecisionRow,
    EpochRow,
    ExperimentRow,
    UnitMetricRow,
    UnitRow,
)
from promptops.db.queries import bump_change_seq
from tests.samples import triage
from tests.services.test_experiments import setup

WINDOW = (
    "{min_hours: 0, min_samples_per_arm: 5000, update_every: 100000, min_update_minutes: 0, "
    "attribution_window_hours: 1, max_decisions: 100000}"
)


def move_to_epoch(ops, exp_id: int, weights: list[float]) -> None:
    """Start a new epoch with the given weights, as the epoch update would."""
    with ops.ctx.tx() as s:
        exp = s.get(ExperimentRow, exp_id)
        exp.epoch += 1
        exp.weights = weights
        s.add(
            EpochRow(
                experiment_id=exp_id,
                idx=exp.epoch,
                started_at=ops.ctx.now(),
                weights=weights,
                matured_at_start=exp.matured_total,
                summary={},
            )
        )
        bump_change_seq(s)
    ops.serving.live.refresh()


def arm_of(ops, unit: str) -> int:
    return ops.serve("triage", {"message": "x"}, unit_id=unit).version


def test_a_unit_keeps_its_first_arm_across_epochs(ops, prompts_dir: Path):
    exp = setup(ops, prompts_dir, triage(WINDOW))
    units = [f"u{i}" for i in range(200)]
    first = {u: arm_of(ops, u) for u in units}
    assert set(first.values()) == {1, 2}
    move_to_epoch(ops, exp.id, [0.0, 1.0])
    assert {u: arm_of(ops, u) for u in units} == first
    # a unit first seen under the new weights gets them, and keeps its arm afterwards
    late = [f"late{i}" for i in range(50)]
    assert {arm_of(ops, u) for u in late} == {2}
    move_to_epoch(ops, exp.id, [1.0, 0.0])
    assert {arm_of(ops, u) for u in late} == {2}
    assert {u: arm_of(ops, u) for u in units} == first


def test_replicas_agree_on_a_unit_first_seen_in_a_later_epoch(ops, prompts_dir: Path, settings, clock):
    from promptops.services.facade import PromptOps

    exp = setup(ops, prompts_dir, triage(WINDOW))
    move_to_epoch(ops, exp.id, [0.0, 1.0])
    assert arm_of(ops, "returning") == 2
    replica = PromptOps(settings, clock=clock)
    try:
        move_to_epoch(ops, exp.id, [1.0, 0.0])
        replica.serving.live.refresh()
        assert replica.serve("triage", {"message": "x"}, unit_id="returning").version == 2
        assert replica.serve("triage", {"message": "x"}, unit_id="fresh").version == 1
    finally:
        replica.close()
    with ops.ctx.tx() as s:
        stored = {u.unit_id: (u.arm, u.first_epoch) for u in s.scalars(select(UnitRow))}
    assert stored == {"returning": (1, 1), "fresh": (0, 2)}


def test_a_unit_is_one_observation_in_its_first_epoch(ops, prompts_dir: Path, clock):
    exp = setup(ops, prompts_dir, triage(WINDOW.replace("update_every: 100000", "update_every: 1")))
    rewards = {"a": [1, 1, 0], "b": [0], "c": [1, 1], "d": [0, 0, 0, 1]}
    for unit, values in rewards.items():
        for r in values:
            d = ops.serve("triage", {"message": "x"}, unit_id=unit)
            ops.feedback(d.decision_id, r)
            clock.advance(60)
    clock.advance(hours=2)
    ops.tick()
    with ops.ctx.tx() as s:
        cells = s.scalars(select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id)).all()
        arm_of_unit = {u.unit_id: u.arm for u in s.scalars(select(UnitRow))}
    assert sum(c.n for c in cells) == 4  # four units, not ten decisions
    assert sum(c.assigned for c in cells) == 4  # the SRM check counts new units
    assert ops.experiments.get(exp.id).epoch == 1
    means = {u: sum(v) / len(v) for u, v in rewards.items()}
    for c in cells:
        mine = [means[u] for u, a in arm_of_unit.items() if a == c.arm]
        assert c.epoch == 0
        assert abs(c.s - sum(mine)) < 1e-9 and abs(c.ss - sum(m * m for m in mine)) < 1e-9


def test_values_arriving_later_move_the_unit_mean(ops, prompts_dir: Path, clock):
    exp = setup(ops, prompts_dir, triage(WINDOW))
    d = ops.serve("triage", {"message": "x"}, unit_id="u")
    ops.feedback(d.decision_id, 1)
    clock.advance(hours=2)
    ops.tick()
    d = ops.serve("triage", {"message": "x"}, unit_id="u")
    ops.feedback(d.decision_id, 0)
    clock.advance(hours=2)
    ops.tick()
    with ops.ctx.tx() as s:
        cells = s.scalars(
            select(ArmEpochRow).where(ArmEpochRow.experiment_id == exp.id, ArmEpochRow.n > 0)
        ).all()
    assert [(c.n, c.s, c.ss) for c in cells] == [(1, 0.5, 0.25)]


GUARDED = WINDOW.replace("update_every: 100000", "update_every: 1")
GUARDRAIL = "  guardrails:\n    - {metric: cost_usd, max_increase: 0.10}\n"


def test_a_unit_with_many_decisions_weighs_as_one_in_the_guardrail_metric(ops, prompts_dir: Path, clock):
    from promptops import stats

    exp = setup(ops, prompts_dir, triage(GUARDED) + GUARDRAIL)
    costs: dict[str, list[float]] = {"heavy": [9.0] * 40}
    costs.update({f"u{i}": [1.0 + 0.01 * i] for i in range(40)})
    versions: dict[str, int] = {}
    for unit, values in costs.items():
        for value in values:
            d = ops.serve("triage", {"message": "x"}, unit_id=unit)
            versions[unit] = d.version
            ops.feedback(d.decision_id, 1)
            ops.feedback(d.decision_id, value, metric="cost_usd")
            clock.advance(10)
    d = ops.serve("triage", {"message": "x"})  # a decision without a unit counts as its own unit
    ops.feedback(d.decision_id, 5.0, metric="cost_usd")
    versions["(none)"], costs["(none)"] = d.version, [5.0]
    clock.advance(hours=2)
    ops.tick()
    arms = ops.experiments.get(exp.id).arms
    for arm in arms:
        means = [sum(v) / len(v) for u, v in costs.items() if versions[u] == arm.version]
        cost = arm.metrics["cost_usd"]
        assert cost["n"] == len(means), (arm.version, cost)  # units, not decisions
        assert abs(cost["mean"] - sum(means) / len(means)) < 1e-9, (arm.version, cost)
        # the interval is the one of the unit means: the heavy unit is one observation among them
        n = len(means)
        expected = stats.metric_estimates(
            stats.MetricData(
                n=np.array([[n]] * 2, dtype=float),
                s=np.array([[sum(means)]] * 2),
                ss=np.array([[sum(m * m for m in means)]] * 2),
            )
        )[0]
        assert abs(cost["ci_low"] - expected.ci_low) < 1e-9 and abs(cost["ci_high"] - expected.ci_high) < 1e-9
    with ops.ctx.tx() as s:
        heavy = s.get(UnitMetricRow, (exp.id, "heavy", "cost_usd"))
    assert heavy is not None and (heavy.count, heavy.total) == (40, 360.0)


def test_a_unit_metric_mean_moves_as_its_values_mature(ops, prompts_dir: Path, clock):
    exp = setup(ops, prompts_dir, triage(GUARDED) + GUARDRAIL)
    for value in (2.0, 4.0):
        d = ops.serve("triage", {"message": "x"}, unit_id="u")
        ops.feedback(d.decision_id, value, metric="cost_usd")
        clock.advance(hours=2)
        ops.tick()
    with ops.ctx.tx() as s:
        cells = s.scalars(
            select(ArmMetricRow).where(ArmMetricRow.experiment_id == exp.id, ArmMetricRow.n > 0)
        ).all()
    assert [(c.metric, c.epoch, c.n, c.s, c.ss) for c in cells] == [("cost_usd", 0, 1, 3.0, 9.0)]


def test_gateway_calls_of_a_unit_count_as_its_mean(ops, prompts_dir: Path, clock):
    from promptops.services.calls import CallRecorder, arm_usage

    exp = setup(ops, prompts_dir, triage(GUARDED) + GUARDRAIL)
    recorder = CallRecorder(ops.ctx)
    plan = {
        "heavy": [(0.05, "ok")] * 30,
        **{f"u{i}": [(0.01, "error" if i % 4 == 0 else "ok")] for i in range(20)},
    }
    versions: dict[str, int] = {}
    calls = 0
    for unit, made in plan.items():
        for cost, status in made:
            d = ops.serve("triage", {"message": "x"}, unit_id=unit)
            versions[unit] = d.version
            recorder.record_calls([call_row(ops, d.decision_id, unit, cost=cost, status=status)])
            calls += 1
            clock.advance(10)
    clock.advance(hours=2)
    ops.tick()
    view = ops.experiments.get(exp.id)
    for arm in view.arms:
        mine = [u for u in plan if versions[u] == arm.version]
        cost_means = [sum(c for c, _ in plan[u]) / len(plan[u]) for u in mine]
        errors = [sum(st == "error" for _, st in plan[u]) / len(plan[u]) for u in mine]
        assert arm.metrics["cost_usd"]["n"] == len(mine), arm.metrics
        assert abs(arm.metrics["cost_usd"]["mean"] - sum(cost_means) / len(mine)) < 1e-12
        assert abs(arm.metrics["error"]["mean"] - sum(errors) / len(mine)) < 1e-12
        assert arm.metrics["latency_ms"]["mean"] == 800.0
    with ops.ctx.tx() as s:
        usage = arm_usage(s, exp.id, 2)
    assert sum(u.calls for u in usage) == calls  # usage still counts every call


def call_row(ops, decision_id: str, unit: str | None, *, cost: float | None, status: str) -> dict:
    with ops.ctx.tx() as s:
        d = s.get(DecisionRow, decision_id)
        assert d is not None
        row = {
            "decision_id": d.id,
            "prompt_id": d.prompt_id,
            "version_id": d.version_id,
            "experiment_id": d.experiment_id,
            "arm": d.arm,
            "epoch": d.epoch,
            "unit_id": unit,
            "created_at": d.decided_at,
        }
    return {
        **row,
        "status": status,
        "http_status": 200,
        "provider": "fake",
        "model": "m",
        "cache": "miss",
        "prompt_tokens": 10,
        "completion_tokens": 5,
        "tokens_estimated": False,
        "cost_usd": cost,
        "input_per_mtok": None,
        "output_per_mtok": None,
        "latency_ms": 800.0,
        "ttft_ms": None,
        "stream": False,
        "error": None,
        "request_key": None,
        "variables": None,
        "output": None,
    }


def test_a_metric_cap_fixed_late_caps_the_values_summed_before(ops, prompts_dir: Path, clock):
    # one decision matures per update: the cap waits for 100 values, then caps all of them
    from promptops import stats

    exp = setup(ops, prompts_dir, triage(GUARDED) + GUARDRAIL)
    values: dict[str, list[float]] = {}
    ordered: list[float] = []
    for i in range(130):
        unit = None if i % 3 == 0 else f"u{i % 7}"
        d = ops.serve("triage", {"message": "x"}, unit_id=unit)
        value = 1000.0 if i in (5, 120) else 1.0 + (i % 10) / 10  # outliers before and after the cap
        ops.feedback(d.decision_id, value, metric="cost_usd")
        values.setdefault(unit or d.decision_id, []).append(value)
        ordered.append(value)
        clock.advance(hours=1, seconds=10)
        ops.tick()
    clock.advance(hours=2)
    ops.tick()
    with ops.ctx.tx() as s:
        row = s.get(ExperimentRow, exp.id)
        assert row is not None
        cap = row.policy_state["metric_caps"]["cost_usd"]
        cells = s.scalars(select(ArmMetricRow).where(ArmMetricRow.metric == "cost_usd")).all()
    assert cap == stats.metric_cap(ordered[:100]) and 2.0 < cap < 1000.0
    means = [sum(min(v, cap) for v in vs) / len(vs) for vs in values.values()]
    assert sum(c.n for c in cells) == len(values)
    assert abs(sum(c.s for c in cells) - sum(means)) < 1e-6
    assert abs(sum(c.ss for c in cells) - sum(m * m for m in means)) < 1e-6
