"""Experiments end to end through the services: declaration on sync, routing, feedback,
maturation, epochs, automatic promotion, exactly-once endings, and the mismatch alarm."""

from __future__ import annotations

import random
import threading
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select

from promptops.db.models import DecisionRow, ExperimentRow, FeedbackRow, PromptRow
from promptops.domain import MAX_ARMS, ExperimentSpec
from promptops.errors import DecisionNotFound, ExperimentStateError, InvalidInput
from tests.samples import triage

FAST = (
    "{min_hours: 0, min_samples_per_arm: 200, update_every: 200, min_update_minutes: 0, "
    "attribution_window_hours: 1, max_decisions: 20000}"
)


def setup(ops, prompts_dir: Path, text: str | None = None) -> dict:
    (prompts_dir / "triage.yaml").write_text(text or triage(FAST), encoding="utf-8")
    ops.sync()
    return ops.experiments.list_experiments(prompt="triage")[0]


def traffic(ops, clock, n: int, rates: dict[int, float], *, seed: int = 1, per_hour: int = 1000) -> list[str]:
    """Serve n decisions at per_hour, answer each with a reward drawn from its version's rate."""
    rng = random.Random(seed)
    ops.ctx.rng.seed(seed + 7919)  # arm draws without a unit id: make the run reproducible
    ids = []
    for _ in range(n):
        d = ops.serve("triage", {"message": "where is my parcel"})
        if d.experiment_id is None:
            break  # the experiment ended
        ids.append(d.decision_id)
        if rng.random() < rates[d.version]:
            ops.feedback(d.decision_id, 1)
        clock.advance(3600 / per_hour)
        if len(ids) % 100 == 0:
            ops.tick()
    return ids


def test_declared_experiment_starts_on_sync_and_is_not_restarted(ops, prompts_dir):
    exp = setup(ops, prompts_dir)
    assert exp.status == "running" and [a.version for a in exp.arms] == [1, 2]
    assert exp.control_version == 1
    assert ops.sync().changes == []
    assert len(ops.experiments.list_experiments()) == 1


def test_changing_the_declaration_stops_and_starts_a_new_one(ops, prompts_dir):
    first = setup(ops, prompts_dir)
    (prompts_dir / "triage.yaml").write_text(triage(FAST.replace("200,", "300,", 1)))
    changes = ops.sync().changes
    assert f"triage: experiment {first.id} stopped (declaration changed)" in changes, changes
    exps = {e.id: e.status for e in ops.experiments.list_experiments()}
    assert exps[first.id] == "stopped" and sorted(exps.values()) == ["running", "stopped"]


def test_an_ended_declaration_is_not_started_again(ops, prompts_dir):
    exp = setup(ops, prompts_dir)
    ops.experiments.stop(exp.id, actor="t")
    assert ops.sync().changes == []
    assert [e.status for e in ops.experiments.list_experiments()] == ["stopped"]


def test_draft_declaration_waits(ops, prompts_dir):
    exp = setup(ops, prompts_dir, triage(FAST, status="draft"))
    assert exp.status == "draft"
    assert ops.serve("triage", {"message": "x"}).experiment_id is None
    (prompts_dir / "triage.yaml").write_text(triage(FAST, status="running"))
    assert f"triage: experiment {exp.id} started" in ops.sync().changes


def test_serving_routes_through_the_experiment_and_is_sticky(ops, prompts_dir):
    exp = setup(ops, prompts_dir)
    seen = {ops.serve("triage", {"message": "x"}).version for _ in range(200)}
    assert seen == {1, 2}
    sticky = {ops.serve("triage", {"message": "x"}, unit_id="user-7").version for _ in range(50)}
    assert len(sticky) == 1
    d = ops.serve("triage", {"message": "x"})
    assert d.experiment_id == exp.id and d.decision_id.startswith("d_")


def test_feedback_is_idempotent_and_validated(ops, prompts_dir):
    setup(ops, prompts_dir)
    d = ops.serve("triage", {"message": "x"})
    assert ops.feedback(d.decision_id, 1) == "recorded"
    assert ops.feedback(d.decision_id, 1) == "duplicate"
    assert ops.feedback(d.decision_id, 0) == "duplicate"
    assert ops.feedback(d.decision_id, 1, metric="cost_usd") == "recorded"
    with pytest.raises(DecisionNotFound):
        ops.feedback("d_forged.token", 1)
    with pytest.raises(DecisionNotFound):
        ops.feedback(d.decision_id[:-2] + "AA", 1)
    for bad in (0.5, 2, -1, float("nan"), "1", None):
        with pytest.raises(InvalidInput):
            ops.feedback(d.decision_id, bad, metric="resolved")
    arm = next(a for a in ops.experiments.get(1).arms if a.version == d.version)
    assert (arm.feedback, arm.reward_sum) == (1, 1.0)


def _truth(ops, exp_id: int, window: float) -> dict[tuple[int, int], tuple[int, float]]:
    """Per (arm, epoch): matured decisions and rewards, recomputed from the raw tables."""
    with ops.ctx.tx() as s:
        rows = s.execute(
            select(
                DecisionRow.arm,
                DecisionRow.epoch,
                func.count(DecisionRow.id),
                func.coalesce(func.sum(FeedbackRow.reward), 0.0),
            )
            .outerjoin(
                FeedbackRow,
                (FeedbackRow.decision_id == DecisionRow.id)
                & (FeedbackRow.metric == "resolved")
                & (FeedbackRow.received_at <= DecisionRow.decided_at + window),
            )
            .where(DecisionRow.experiment_id == exp_id, DecisionRow.counted_in > 0)
            .group_by(DecisionRow.arm, DecisionRow.epoch)
        ).all()
    return {(a, e): (int(n), float(r)) for a, e, n, r in rows}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_replayed_feedback_equals_the_deduplicated_truth(ops, prompts_dir, clock, seed):
    exp = setup(ops, prompts_dir, triage(FAST.replace("max_decisions: 20000", "max_decisions: 100000")))
    rng = random.Random(seed)
    decisions = []
    for _ in range(600):
        decisions.append(ops.serve("triage", {"message": "x"}))
        clock.advance(2)
    sends = []
    for d in decisions:
        if rng.random() < 0.4:
            reward = 1 if rng.random() < 0.5 else 0
            sends += [(d.decision_id, reward)] * rng.randint(1, 3)
    sends += [("d_unknown", 1)] * 20
    rng.shuffle(sends)
    statuses = {"recorded": 0, "duplicate": 0, "missing": 0}
    for i, (did, reward) in enumerate(sends):
        if i == len(sends) // 2:
            clock.advance(hours=2)  # the rest arrive after the attribution window: stored only
        try:
            statuses[ops.feedback(did, reward)] += 1
        except DecisionNotFound:
            statuses["missing"] += 1
    clock.advance(hours=2)
    ops.tick()
    distinct = {did for did, _ in sends if did != "d_unknown"}
    assert statuses["recorded"] == len(distinct) and statuses["missing"] == 20
    got = {}
    for (arm, epoch), (n, r) in _truth(ops, exp.id, 3600).items():
        got[(arm, epoch)] = (n, r)
    e = ops.experiments.get(exp.id)
    assert sum(a.n for a in e.arms) == 600 == sum(n for n, _ in got.values())
    assert sum(a.feedback for a in e.arms) == len(distinct)
    from promptops.db.models import ArmEpochRow

    with ops.ctx.tx() as s:
        stored = {(r.arm, r.epoch): (r.n, r.s) for r in s.scalars(select(ArmEpochRow))}
    assert stored == got


def test_outcomes_count_only_after_their_window(ops, prompts_dir, clock):
    exp = setup(ops, prompts_dir)
    d = ops.serve("triage", {"message": "x"})
    ops.feedback(d.decision_id, 1)
    ops.tick()
    assert sum(a.n for a in ops.experiments.get(exp.id).arms) == 0
    clock.advance(hours=1, seconds=5)
    ops.tick()
    arms = ops.experiments.get(exp.id).arms
    assert sum(a.n for a in arms) == 1 and sum(a.feedback for a in arms) == 1


def test_clear_winner_is_promoted_with_evidence(ops, prompts_dir, clock):
    exp = setup(ops, prompts_dir)
    traffic(ops, clock, 12000, {1: 0.10, 2: 0.30})
    clock.advance(hours=2)
    for _ in range(5):
        ops.tick()
    e = ops.experiments.get(exp.id)
    assert e.status == "completed" and e.winner == 2, e
    assert ops.registry.resolve("triage").number == 2
    entries = ops.registry.audit(experiment_id=exp.id)
    promo = [a for a in entries if a.action == "label.move"]
    assert len(promo) == 1 and promo[0].actor == "promptops", entries
    evidence = promo[0].details["evidence"]
    assert evidence["arms"][1]["p_best"] > 0.99
    assert ops.serve("triage", {"message": "x"}).experiment_id is None


def test_equal_arms_reach_the_limit_inconclusive(ops, prompts_dir, clock):
    policy = FAST.replace("max_decisions: 20000", "max_decisions: 3000")
    exp = setup(ops, prompts_dir, triage(policy))
    traffic(ops, clock, 3600, {1: 0.10, 2: 0.10})
    clock.advance(hours=2)
    ops.tick()
    e = ops.experiments.get(exp.id)
    assert e.status == "inconclusive" and e.winner is None, e
    assert ops.registry.resolve("triage").number == 1


def test_promotion_happens_exactly_once_under_concurrency(ops, prompts_dir):
    exp = setup(ops, prompts_dir)
    results: list[str] = []
    barrier = threading.Barrier(6)

    def promote(version: int) -> None:
        barrier.wait()
        try:
            ops.experiments.promote(exp.id, version=version, actor="t")
            results.append("ok")
        except ExperimentStateError:
            results.append("409")

    threads = [threading.Thread(target=promote, args=(1 + i % 2,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(results) == ["409"] * 5 + ["ok"], results
    assert len([a for a in ops.registry.audit() if a.action == "experiment.completed"]) == 1


def test_many_threads_of_feedback_lose_nothing_and_count_nothing_twice(ops, prompts_dir):
    exp = setup(ops, prompts_dir)
    decisions = [ops.serve("triage", {"message": "x"}) for _ in range(300)]
    statuses: list[str] = []
    lock = threading.Lock()

    def send(chunk: list[dict]) -> None:
        for d in chunk:
            s = ops.feedback(d.decision_id, 1)
            with lock:
                statuses.append(s)

    # every decision is sent by three threads
    chunks = [decisions[i::4] for i in range(4)] * 3
    threads = [threading.Thread(target=send, args=(c,)) for c in chunks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert statuses.count("recorded") == 300 and statuses.count("duplicate") == 600
    arms = ops.experiments.get(exp.id).arms
    assert sum(a.feedback for a in arms) == 300
    assert sum(a.reward_sum for a in arms) == 300.0
    assert sum(a.decisions for a in arms) == 300


def test_a_lost_decision_log_raises_the_mismatch_alarm_and_freezes_promotion(ops, prompts_dir, clock):
    policy = FAST.replace("max_decisions: 20000", "max_decisions: 100000")
    exp = setup(ops, prompts_dir, triage(policy))
    rng = random.Random(5)
    ops.ctx.rng.seed(5 + 7919)
    for i in range(5000):
        d = ops.serve("triage", {"message": "x"})
        # the better arm would win, but 10% of arm 2's decision log is lost
        if rng.random() < (0.30 if d.version == 2 else 0.10):
            ops.feedback(d.decision_id, 1)
        clock.advance(3.6)
        if i % 500 == 499:
            with ops.ctx.tx() as s:
                ids = list(
                    s.scalars(select(DecisionRow.id).where(DecisionRow.arm == 1, DecisionRow.counted_in == 0))
                )
                lost = ids[: len(ids) // 10]
                s.execute(delete(FeedbackRow).where(FeedbackRow.decision_id.in_(lost)))
                s.execute(delete(DecisionRow).where(DecisionRow.id.in_(lost)))
            ops.tick()
    clock.advance(hours=2)
    ops.tick()
    e = ops.experiments.get(exp.id)
    assert e.srm_alarm is True, e
    assert e.status == "running" and e.winner is None, e


def test_going_back_to_an_ended_declaration_stops_the_newer_one(ops, prompts_dir):
    first = setup(ops, prompts_dir)
    (prompts_dir / "triage.yaml").write_text(triage(FAST.replace("200,", "300,", 1)))
    ops.sync()
    second = next(e for e in ops.experiments.list_experiments() if e.status == "running")
    (prompts_dir / "triage.yaml").write_text(triage(FAST))  # the first declaration again
    changes = ops.sync().changes
    assert f"triage: experiment {second.id} stopped (declaration changed)" in changes, changes
    statuses = {e.id: e.status for e in ops.experiments.list_experiments()}
    assert statuses == {first.id: "stopped", second.id: "stopped"}, statuses


def test_removing_the_declaration_stops_its_experiment(ops, prompts_dir):
    exp = setup(ops, prompts_dir)
    text = triage(FAST)
    (prompts_dir / "triage.yaml").write_text(text[: text.index("experiment:")])
    changes = ops.sync().changes
    assert f"triage: experiment {exp.id} stopped (removed from the file)" in changes, changes


def test_policy_values_are_bounded(ops, prompts_dir):
    setup(ops, prompts_dir)
    with pytest.raises(InvalidInput):
        ops.experiments.create("triage", [1, 2], policy={"min_samples_per_arm": 10**30})
    with pytest.raises(InvalidInput):
        ops.experiments.create("triage", [1, 2], policy={"attribution_window_hours": 0})


def test_no_way_of_creating_an_experiment_takes_more_than_max_arms(ops, prompts_dir):
    setup(ops, prompts_dir)
    message = f"an experiment has at most {MAX_ARMS} arms, got {MAX_ARMS + 1}"
    with pytest.raises(InvalidInput, match=message) as info:
        ops.experiments.create("triage", list(range(1, MAX_ARMS + 2)), start=False)
    assert info.value.field == "versions"
    # A prompt file's declaration reaches the insert without create's checks: it refuses too.
    spec = ExperimentSpec(arms=tuple(f"v{i}" for i in range(MAX_ARMS + 1)))
    with ops.ctx.tx() as s:
        p = s.scalar(select(PromptRow).where(PromptRow.name == "triage"))
        with pytest.raises(InvalidInput, match=message):
            ops.experiments.insert(
                s, p, spec, list(range(1, MAX_ARMS + 2)), source="file", declared_hash=None, actor="t"
            )
        assert s.scalar(select(func.count()).select_from(ExperimentRow)) == 1


def test_the_snapshot_reports_value_remaining(ops, prompts_dir, clock):
    exp = setup(ops, prompts_dir)
    traffic(ops, clock, 600, {1: 0.10, 2: 0.10})
    clock.advance(hours=2)
    ops.tick()
    e = ops.experiments.get(exp.id)
    # zero when the leader is best in over 95% of draws, which equal arms reach by chance too
    assert e.value_remaining is not None and e.value_remaining >= 0, e


def _edit_main(text: str) -> str:
    return text.replace("Answer with one category.", "Reply with one category.")


def test_after_editing_main_the_first_arm_is_the_control_and_the_read_says_so(ops, prompts_dir):
    first = setup(ops, prompts_dir)
    assert first.production_at_start == 1 and first.control_is_production is True
    (prompts_dir / "triage.yaml").write_text(_edit_main(triage(FAST)))
    changes = ops.sync().changes
    new = next(e for e in ops.experiments.list_experiments() if e.status == "running")
    line = f"triage: experiment {new.id} started over versions 3, 2"
    assert f"{line} (control v3 is not production v1)" in changes, changes
    assert new.control_version == 3 and new.arms[0].is_control is True, new
    assert new.production_at_start == 1 and new.control_is_production is False, new


@pytest.mark.parametrize(
    "rates, winner",
    [
        pytest.param({3: 0.30, 2: 0.10}, 3, id="control-wins"),
        pytest.param({3: 0.10, 2: 0.30}, 2, id="challenger-wins"),
    ],
)
def test_production_moves_to_the_winner_even_when_it_is_the_control(ops, prompts_dir, clock, rates, winner):
    setup(ops, prompts_dir)
    (prompts_dir / "triage.yaml").write_text(_edit_main(triage(FAST)))
    ops.sync()
    exp = next(e for e in ops.experiments.list_experiments() if e.status == "running")
    assert ops.registry.resolve("triage").number == 1
    traffic(ops, clock, 12000, rates)
    clock.advance(hours=2)
    for _ in range(5):
        ops.tick()
    e = ops.experiments.get(exp.id)
    assert e.status == "completed" and e.winner == winner, e
    assert ops.registry.resolve("triage").number == winner
    moves = [a for a in ops.registry.audit(experiment_id=exp.id) if a.action == "label.move"]
    assert [(m.details["from"], m.details["to"]) for m in moves] == [(1, winner)], moves


def test_a_winning_control_replaces_a_hand_move_made_during_the_experiment(ops, prompts_dir, clock):
    exp = setup(ops, prompts_dir)
    ops.registry.move_label("triage", 2, "production", actor="tester")
    traffic(ops, clock, 12000, {1: 0.30, 2: 0.10})
    clock.advance(hours=2)
    for _ in range(5):
        ops.tick()
    e = ops.experiments.get(exp.id)
    assert e.status == "completed" and e.winner == 1, e
    assert ops.registry.resolve("triage").number == 1
    move = next(a for a in ops.registry.audit(experiment_id=exp.id) if a.action == "label.move")
    assert (move.details["from"], move.details["to"]) == (2, 1), move
    assert "replaces v2, set while the experiment ran" in move.message, move


def test_an_inconclusive_end_leaves_production_where_it_was(ops, prompts_dir, clock):
    policy = FAST.replace("max_decisions: 20000", "max_decisions: 3000")
    setup(ops, prompts_dir, triage(policy))
    (prompts_dir / "triage.yaml").write_text(_edit_main(triage(policy)))
    ops.sync()
    exp = next(e for e in ops.experiments.list_experiments() if e.status == "running")
    traffic(ops, clock, 3600, {3: 0.10, 2: 0.10})
    clock.advance(hours=2)
    ops.tick()
    e = ops.experiments.get(exp.id)
    assert e.status == "inconclusive" and e.winner is None, e
    assert ops.registry.resolve("triage").number == 1
