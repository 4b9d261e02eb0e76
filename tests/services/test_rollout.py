"""Guarded rollout: a promoted challenger shares traffic with the previous production during the
holdout; production moves back (audited, once) if the old version proves better, else the
experiment completes when the holdout ends."""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable
from pathlib import Path

from tests.samples import triage
from tests.services.test_experiments import setup

POLICY = (
    "{min_hours: 0, min_samples_per_arm: 200, update_every: 200, min_update_minutes: 0, "
    "attribution_window_hours: 1, max_decisions: 20000, holdout_share: 0.4, "
    "equivalence_margin: 0, value_remaining_stop: 0%s}"
)


def run(
    ops, clock, n: int, rate: Callable[[int, str], float], *, seed: int = 3, replicas: tuple = ()
) -> list[tuple[str, int]]:
    """Serve n decisions at 1000/h with rewards from rate(version, status); tick every 100."""
    rng = random.Random(seed)
    ops.ctx.rng.seed(seed + 1)  # arm draws without a unit id: make the run reproducible
    for replica in replicas:
        replica.ctx.rng.seed(seed + 2)
    served = []
    status = ops.experiments.get(1).status
    for i in range(n):
        d = ops.serve("triage", {"message": "x"})
        served.append((status, d.version))
        if d.experiment_id is not None and rng.random() < rate(d.version, status):
            ops.feedback(d.decision_id, 1)
        clock.advance(3.6)
        if i % 100 == 99:
            for r in (ops, *replicas):
                r.tick()
                r.serving.live.refresh()
            status = ops.experiments.get(1).status
    return served


def production(ops) -> int:
    return ops.render("triage", {"message": "x"}).version


def test_promotion_enters_the_holdout_and_a_better_old_version_rolls_back(
    ops, prompts_dir: Path, clock, settings
):
    from promptops.services.facade import PromptOps

    setup(ops, prompts_dir, triage(POLICY % ""))
    replica = PromptOps(settings, clock=clock)
    try:
        # the challenger wins at first, then turns worse once it is promoted
        served = run(
            ops,
            clock,
            12000,
            lambda v, st: (0.10 if v == 1 else 0.30) if st == "running" else (0.30 if v == 1 else 0.05),
            replicas=(replica,),
        )
    finally:
        replica.close()
    exp = ops.experiments.get(1)
    assert exp.status == "rolled_back", exp.reason
    assert exp.winner == 2 and production(ops) == 1
    during = Counter(v for st, v in served if st == "holdout")
    assert during[1] and during[2], during
    share = during[1] / (during[1] + during[2])
    assert 0.3 < share < 0.5, during
    actions = [a.action for a in ops.registry.audit(experiment_id=1)]
    assert actions.count("experiment.holdout") == 1 and actions.count("experiment.rolled_back") == 1
    moves = [a.message for a in ops.registry.audit(experiment_id=1) if a.action == "label.move"]
    assert len(moves) == 2 and "v2 -> v1" in moves[0] and "v1 -> v2" in moves[1], moves
    assert exp.holdout["old_version"] == 1 and exp.holdout["new_version"] == 2
    assert exp.holdout["p_old_better"] >= 0.95


def test_the_holdout_ends_completed_when_the_winner_holds(ops, prompts_dir: Path, clock):
    setup(ops, prompts_dir, triage(POLICY % ", holdout_decisions: 1500"))
    served = run(ops, clock, 9000, lambda v, st: 0.10 if v == 1 else 0.30)
    exp = ops.experiments.get(1)
    assert exp.status == "completed" and exp.winner == 2, exp.reason
    assert production(ops) == 2
    assert any(st == "holdout" for st, _ in served)
    assert served[-1] == ("completed", 2)
    actions = [a.action for a in ops.registry.audit(experiment_id=1)]
    assert actions.count("experiment.holdout") == 1 and actions.count("experiment.completed") == 1


def test_no_holdout_when_turned_off(ops, prompts_dir: Path, clock):
    setup(ops, prompts_dir, triage(POLICY.replace("holdout_share: 0.4", "holdout_share: 0") % ""))
    served = run(ops, clock, 6000, lambda v, st: 0.10 if v == 1 else 0.30)
    assert ops.experiments.get(1).status == "completed"
    assert not any(st == "holdout" for st, _ in served)
