"""Feedback validity and the early stops through the services: an arm whose feedback arrives after
the window freezes promotion with a flag naming it and the fix; tied arms end `equivalent`."""

from __future__ import annotations

import heapq
import random
from pathlib import Path

from tests.samples import triage
from tests.services.test_experiments import setup

POLICY = (
    "{min_hours: 0, min_samples_per_arm: 200, update_every: 200, min_update_minutes: 0, "
    "attribution_window_hours: 1, max_decisions: 20000, holdout_share: 0%s}"
)


def drive(ops, clock, n: int, rates: dict[int, float], delays: dict[int, float], *, seed: int = 11) -> None:
    """Serve n decisions at 1000/h; feedback comes delays[version] hours after its decision."""
    rng = random.Random(seed)
    ops.ctx.rng.seed(seed + 1)  # arm draws without a unit id: make the run reproducible
    due: list[tuple[float, int, str]] = []
    for i in range(n):
        d = ops.serve("triage", {"message": "x"})
        if d.experiment_id is None:
            return
        if rng.random() < rates[d.version]:
            heapq.heappush(due, (clock() + delays[d.version] * 3600, i, d.decision_id))
        clock.advance(3.6)
        while due and due[0][0] <= clock():
            ops.feedback(heapq.heappop(due)[2], 1)
        if i % 100 == 99:
            ops.tick()


def test_late_feedback_on_one_arm_freezes_promotion_and_says_why(ops, prompts_dir: Path, clock):
    setup(ops, prompts_dir, triage(POLICY % ""))
    drive(ops, clock, 8000, {1: 0.10, 2: 0.12}, {1: 0.0, 2: 2.0})
    exp = ops.experiments.get(1)
    assert exp.status == "running" and exp.winner is None, exp.reason
    assert exp.flags == ["feedback"]
    flag = exp.safety[0]
    assert flag["sentence"].startswith(
        "v2 (terse)'s feedback arrives later than the window (100% late): lengthen `attribution_window_hours`"
    ), flag
    assert flag["evidence"]["v2 (terse)"]["late"] > 100
    assert flag["evidence"]["v1 (main)"]["late"] == 0
    assert "promotion frozen by a safety flag" in exp.reason or "feedback mismatch" in exp.reason


def test_tied_arms_end_equivalent(ops, prompts_dir: Path, clock):
    setup(ops, prompts_dir, triage(POLICY % ", equivalence_margin: 0.1, value_remaining_stop: 0"))
    drive(ops, clock, 12000, {1: 0.5, 2: 0.5}, {1: 0.0, 2: 0.0})
    exp = ops.experiments.get(1)
    assert exp.status == "inconclusive", exp.reason
    assert exp.stop_reason == "equivalent" and exp.reason.startswith("equivalent:")
    assert exp.winner is None and ops.render("triage", {"message": "x"}).version == 1
