"""Serving and feedback validation: unstorable text, metric names and the metrics a decision
accepts, on SQLite and PostgreSQL."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import func, select

from promptops.db.models import DecisionRow, FeedbackRow
from promptops.domain import metric_name_problem
from promptops.errors import InvalidInput, UnknownMetric
from promptops.services.experiments import Experiments

EXPERIMENT = """\
name: triage
variables:
  message: {type: string, required: true}
  tags: {type: list}
messages:
  - {role: user, content: "Text: {{ message }}"}
variants:
  terse:
    messages:
      - {role: user, content: "Category of: {{ message }}"}
experiment:
  metric: csat
  reward: continuous
  arms: [main, terse]
"""

PLAIN = """\
name: plain
messages:
  - {role: user, content: "Hello"}
"""


@pytest.fixture
def synced(ops, prompts_dir: Path):
    (prompts_dir / "triage.yaml").write_text(EXPERIMENT, encoding="utf-8")
    (prompts_dir / "plain.yaml").write_text(PLAIN, encoding="utf-8")
    ops.sync()
    return ops


def _counts(ops) -> tuple[int, int]:
    with ops.ctx.tx() as s:
        return (
            s.scalar(select(func.count()).select_from(DecisionRow)) or 0,
            s.scalar(select(func.count()).select_from(FeedbackRow)) or 0,
        )


BAD_TEXT = ["a\x00b", "\x00", "a\ud800b", "\udfff"]


@pytest.mark.parametrize("text", BAD_TEXT, ids=repr)
def test_serve_refuses_unstorable_unit_ids_and_variables(synced, text):
    ops = synced
    with pytest.raises(InvalidInput) as err:
        ops.serve("triage", {"message": "x"}, unit_id=text)
    assert err.value.field == "unit_id"
    for variables in (
        {"message": text},
        {"message": "x", "tags": ["a", {"k": [text]}]},
        {"message": "x", text: "y"},
    ):
        with pytest.raises(InvalidInput) as err:
            ops.serve("triage", variables)
        assert err.value.field == "variables"
    assert _counts(ops) == (0, 0)
    assert ops.serve("triage", {"message": "x"}, unit_id="a b").decision_id


@pytest.mark.parametrize("text", BAD_TEXT, ids=repr)
def test_feedback_refuses_unstorable_metric_and_decision_id(synced, text):
    ops = synced
    did = ops.serve("triage", {"message": "x"}).decision_id
    with pytest.raises(InvalidInput) as err:
        ops.feedback(did, 0.5, metric="cs" + text)
    assert err.value.field == "metric"
    for bad_id in (did + text, text + did, did[:10] + text + did[10:]):
        with pytest.raises(InvalidInput) as err:
            ops.serving.prepare_feedback(bad_id, 0.5)
        assert err.value.field == "decision_id"
    assert _counts(ops) == (1, 0)


def test_a_mistyped_metric_is_refused_naming_the_accepted_ones(synced):
    ops = synced
    d = ops.serve("triage", {"message": "x"})
    with pytest.raises(UnknownMetric) as err:
        ops.feedback(d.decision_id, 0.5, metric="CSAT")
    assert err.value.code == "unknown_metric" and err.value.field == "metric"
    assert isinstance(err.value, InvalidInput)
    assert err.value.accepted == ("csat", "cost_usd", "latency_ms", "error")
    assert all(m in err.value.message for m in err.value.accepted)
    assert _counts(ops) == (1, 0)
    assert ops.feedback(d.decision_id, 0.5, metric="csat") == "recorded"
    arm = next(a for a in ops.experiments.get(d.experiment_id).arms if a.version == d.version)
    assert (arm.feedback, arm.reward_sum) == (1, 0.5)


def test_built_in_metrics_take_any_finite_number_and_error_takes_zero_or_one(synced):
    ops = synced
    did = ops.serve("triage", {"message": "x"}).decision_id
    assert ops.feedback(did, 0.0042, metric="cost_usd") == "recorded"
    assert ops.feedback(did, 1834.5, metric="latency_ms") == "recorded"
    for bad in (0.5, 2, -1):
        with pytest.raises(InvalidInput) as err:
            ops.feedback(did, bad, metric="error")
        assert err.value.field == "reward"
    assert ops.feedback(did, 1, metric="error") == "recorded"
    with pytest.raises(InvalidInput):
        ops.feedback(did, float("inf"), metric="latency_ms")
    with pytest.raises(InvalidInput):  # the primary metric stays within [0, 1]
        ops.feedback(did, 1.5, metric="csat")
    arms = ops.experiments.get(1).arms
    assert sum(a.feedback for a in arms) == 0  # only the primary metric counts


def test_production_decisions_accept_reward_and_the_built_ins(synced):
    ops = synced
    did = ops.serve("plain", {}).decision_id
    with pytest.raises(UnknownMetric) as err:
        ops.feedback(did, 1, metric="csat")
    assert err.value.accepted == ("reward", "cost_usd", "latency_ms", "error")
    assert ops.feedback(did, 1) == "recorded"
    assert ops.feedback(did, 0.5, metric="reward") == "duplicate"
    assert ops.feedback(did, 120, metric="latency_ms") == "recorded"
    with pytest.raises(InvalidInput):
        ops.feedback(did, 3, metric="reward")


@pytest.mark.parametrize("name", ["csat", "thumbs_up", "a", "A.b-c_d", "_x", "9", "x" * 64])
def test_metric_names_that_are_valid(name):
    assert metric_name_problem(name) is None


@pytest.mark.parametrize("name", ["", "a b", "x" * 65, "csat\n", ".x", "-x", "a\x00", "é", None, 3])
def test_metric_names_that_are_not(name):
    assert metric_name_problem(name)
    if isinstance(name, str):
        with pytest.raises(InvalidInput) as err:
            Experiments.make_spec(
                arms=["1", "2"],
                metric=name,
                reward="binary",
                strategy="thompson",
                weights=None,
                auto_promote=None,
                policy=None,
                status="running",
            )
        assert err.value.field == "metric"


def test_http_answers_an_unknown_metric_with_422_unknown_metric(synced, client):
    did = client.post("/v1/prompts/triage/serve", json={"variables": {"message": "x"}}).json()["decision_id"]
    r = client.post("/v1/feedback", json={"decision_id": did, "reward": 0.5, "metric": "CSAT"})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "unknown_metric" and "csat" in error["message"]
