"""Secondary metrics and guardrails: declared in files (PATH:LINE errors) and the API, feedback for
undeclared metrics refused, per-arm intervals, and a guardrail that blocks a costlier challenger."""

from __future__ import annotations

import random
import re
from pathlib import Path

import pytest

from promptops.domain import Guardrail
from promptops.errors import InvalidInput, InvalidPromptFile, UnknownMetric
from promptops.promptfiles import parse_prompt_text
from tests.samples import triage
from tests.services.test_experiments import setup

POLICY = (
    "{min_hours: 0, min_samples_per_arm: 200, update_every: 200, min_update_minutes: 0, "
    "attribution_window_hours: 1, max_decisions: 20000, holdout_share: 0}"
)
DECLARED = """\
  metrics: [csat]
  guardrails:
    - {metric: cost_usd, max_increase: 0.10}
    - {metric: csat, max_decrease_abs: 0.5}
"""


def with_block(block: str, policy: str = POLICY) -> str:
    return triage(policy) + block


def test_the_file_declares_metrics_and_guardrails():
    d = parse_prompt_text(with_block(DECLARED), path="p.yaml")
    assert d.experiment is not None
    assert d.experiment.metrics == ("csat",)
    assert d.experiment.policy.guardrails == (
        Guardrail("cost_usd", max_increase=0.10),
        Guardrail("csat", max_decrease_abs=0.5),
    )


@pytest.mark.parametrize(
    ("block", "line", "needle"),
    [
        pytest.param(
            "  guardrails:\n    - {metric: cost_usd, max_more: 0.1}\n",
            18,
            "experiment.guardrails[0].max_more: is not a guardrail key",
            id="key",
        ),
        pytest.param(
            "  guardrails:\n    - {metric: cost_usd}\n",
            18,
            "experiment.guardrails[0]: needs one of",
            id="no-margin",
        ),
        pytest.param(
            "  guardrails:\n    - {metric: cost_usd, max_increase: 0.1}\n"
            "    - {metric: cost_usd, max_decrease: 0.1}\n",
            19,
            "experiment.guardrails[1].metric: repeats 'cost_usd'",
            id="repeat",
        ),
        pytest.param(
            "  guardrails:\n    - {metric: 'a b', max_increase: 0.1}\n",
            18,
            "experiment.guardrails[0].metric:",
            id="name",
        ),
        pytest.param(
            "  metrics: [resolved]\n", 17, "experiment.metrics[0]: is the primary metric", id="primary"
        ),
        pytest.param("  metrics: [csat, csat]\n", 18, "experiments.metrics", id="duplicate"),
    ],
)
def test_bad_declarations_name_path_and_line(block, line, needle):
    with pytest.raises(InvalidPromptFile) as info:
        parse_prompt_text(with_block(block), path="p.yaml")
    text = "\n".join(str(p) for p in info.value.problems)
    if needle == "experiments.metrics":
        assert "p.yaml:17:" in text and "csat" in text, text
        return
    assert f"p.yaml:{line}: {needle}" in text, text


def test_feedback_for_undeclared_metrics_is_refused(ops, prompts_dir: Path):
    setup(ops, prompts_dir, with_block(DECLARED))
    d = ops.serve("triage", {"message": "x"})
    assert ops.feedback(d.decision_id, 4.5, metric="csat") == "recorded"
    assert ops.feedback(d.decision_id, 0.002, metric="cost_usd") == "recorded"
    with pytest.raises(UnknownMetric) as info:
        ops.feedback(d.decision_id, 1, metric="nps")
    assert "csat" in str(info.value)


def test_the_api_declares_metrics_and_guardrails(ops, prompts_dir: Path):
    setup(ops, prompts_dir, triage(POLICY, status="draft"))
    exp = ops.experiments.create(
        "triage",
        [1, 2],
        metric="resolved",
        metrics=["csat"],
        guardrails=[{"metric": "latency_ms", "max_increase": 0.2}],
        start=False,
    )
    assert exp.metrics == ["csat"]
    assert list(exp.policy["guardrails"]) == [
        {
            "metric": "latency_ms",
            "max_increase": 0.2,
            "max_decrease": None,
            "max_increase_abs": None,
            "max_decrease_abs": None,
        }
    ]
    with pytest.raises(InvalidInput):
        ops.experiments.create("triage", [1, 2], guardrails=[{"metric": "x"}], start=False)
    with pytest.raises(InvalidInput):
        ops.experiments.create("triage", [1, 2], metric="m", metrics=["m"], start=False)


def test_a_costlier_challenger_is_blocked_and_shown(ops, prompts_dir: Path, clock):
    setup(ops, prompts_dir, with_block(DECLARED))
    rng = random.Random(5)
    ops.ctx.rng.seed(6)  # arm draws without a unit id: make the run reproducible
    status = "running"
    for i in range(12000):
        d = ops.serve("triage", {"message": "x"})
        if d.experiment_id is None:
            break
        better = d.version == 2
        if rng.random() < (0.30 if better else 0.10):
            ops.feedback(d.decision_id, 1)
        cost = rng.gauss(0.0015 if better else 0.001, 0.0002)
        ops.feedback(d.decision_id, max(cost, 0.0), metric="cost_usd")
        ops.feedback(d.decision_id, rng.gauss(4.0, 0.5), metric="csat")
        clock.advance(3.6)
        if i % 100 == 99:
            ops.tick()
            status = ops.experiments.get(1).status
            if status != "running":
                break
    exp = ops.experiments.get(1)
    assert exp.winner != 2, exp.reason
    challenger = exp.arms[1]
    verdict = {g["metric"]: g for g in challenger.guardrails}
    assert verdict["cost_usd"]["state"] == "blocked", verdict
    assert re.fullmatch(
        r"blocked: v2 \(terse\) cost_usd \+(4[5-9]|5[0-5])% "
        r"\(\+\d+% \.\. \+\d+%\) > 10% allowed",
        verdict["cost_usd"]["sentence"],
    ), verdict
    for arm in exp.arms:
        for metric in ("cost_usd", "csat"):
            m = arm.metrics[metric]
            assert m["ci_low"] < m["mean"] < m["ci_high"] and m["n"] > 100, (metric, m)
    assert exp.arms[0].guardrails == []


def test_gateway_calls_feed_the_built_in_metrics_capped_like_feedback(ops, prompts_dir: Path, clock):
    # calls are values of cost_usd, latency_ms and error once their decision matures; latency's
    # cap is fixed from its first 100 values by decision time, so a heavy tail cannot swing it
    import numpy as np
    from sqlalchemy import select

    from promptops.db.models import ArmMetricRow, ExperimentRow
    from promptops.services.calls import CallRecorder
    from promptops.stats import CAP_MIN_VALUES
    from tests.services.test_units import call_row

    setup(ops, prompts_dir, with_block(DECLARED, POLICY.replace("update_every: 200", "update_every: 1")))
    recorder = CallRecorder(ops.ctx)
    made: list[tuple[int, float, float, str]] = []  # (version, cost, latency, status)
    for count in (60, 80):
        for _ in range(count):
            d = ops.serve("triage", {"message": "x"})
            j = len(made)
            latency = 800.0 + j if j < 120 else 1e6  # the last 20: a heavy tail, and failures
            status = "error" if j >= 120 else "ok"
            row = call_row(ops, d.decision_id, None, cost=0.001 * (1 + d.version), status=status)
            recorder.record_calls([{**row, "latency_ms": latency}])
            made.append((d.version, 0.001 * (1 + d.version), latency, status))
            clock.advance(1)
        clock.advance(hours=2)
        ops.tick()  # phase 0 matures 60 values (no cap yet), phase 1 the rest (cap fixed)
    cap = float(np.quantile([m[2] for m in made[:CAP_MIN_VALUES]], 0.995))
    with ops.ctx.tx() as s:
        state = s.get(ExperimentRow, 1).policy_state
        cells = s.scalars(select(ArmMetricRow).where(ArmMetricRow.experiment_id == 1)).all()
    assert state["metric_caps"]["latency_ms"] == cap and state["metric_caps"]["error"] is None
    for arm in (0, 1):
        mine = [m for m in made if m[0] == arm + 1]
        # (metric, the arm's values as they must be summed): latency capped, the 1e6 ms calls at
        # the cap; error 0/1, never capped though its first 100 values hold no failure
        for metric, values in (
            ("latency_ms", [min(m[2], cap) for m in mine]),
            ("error", [float(m[3] == "error") for m in mine]),
            ("cost_usd", [m[1] for m in mine]),
        ):
            got = [c for c in cells if c.metric == metric and c.arm == arm]
            assert sum(c.n for c in got) == len(values), metric
            assert abs(sum(c.s for c in got) - sum(values)) < 1e-6, (metric, arm)
            assert abs(sum(c.ss for c in got) - sum(v * v for v in values)) < 1e-3 * max(1.0, cap**2), metric
    arms = ops.experiments.get(1).arms
    assert all(a.metrics["latency_ms"]["ci_high"] < 1000 for a in arms)  # the tail does not swing it
