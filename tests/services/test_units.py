"""Units: a unit keeps the arm of its first exposure for the experiment's life, on every replica,
and counts as one observation (its mean matured reward) in its first-exposure epoch."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import select

from promptops.db.models import ArmEpochRow, EpochRow, ExperimentRow, UnitRow
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
