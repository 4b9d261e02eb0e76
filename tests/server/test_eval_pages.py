"""The dashboard's eval pages: the prompt page's eval results, and a run's cases side by side."""

from __future__ import annotations

from dataclasses import replace

import pytest

from promptops.server.dashboard import evalpages
from tests.fakeupstream import fake_upstream  # noqa: F401  (a fixture)
from tests.services.evalproject import write_project
from tests.services.test_evals import run

HTML = {"accept": "text/html"}


@pytest.fixture
def settings(settings, tmp_path, fake_upstream):  # noqa: F811
    paths = write_project(tmp_path, fake_upstream)
    return replace(
        settings, prompts_dir=paths["prompts"], evals_dir=paths["evals"], config_path=paths["config"]
    )


@pytest.fixture
def runs(ops, client):
    ops.sync()
    client.app.state.runtime.refresh()
    first, _ = run(ops, versions=[2])
    second, _ = run(ops, versions=[4])
    return first, second


def test_run_context_puts_the_flips_first(ops, runs):
    first, _ = runs
    ctx = evalpages.eval_run_context(ops, first.id, {})
    assert (ctx["a"], ctx["b"], ctx["numbers"]) == (1, 2, [1, 2])
    flips = [r for r in ctx["rows"] if r["flip"]]
    assert ctx["flips"] == len(flips) == 8
    assert ctx["rows"][:8] == flips and all(r["flip"] == "regressed" for r in flips)
    assert [r["case_id"] for r in ctx["rows"][8:]] == ["c4", "c7"]  # both pass: digits only
    row = ctx["rows"][0]
    assert row["left"]["status"] == "passed" and row["right"]["status"] == "failed"
    assert row["right"]["output"] == "echo: HELLO THERE"
    assert ctx["comparison"]["diff"] == pytest.approx(-0.8)
    swapped = evalpages.eval_run_context(ops, first.id, {"a": "2", "b": "1"})
    assert (swapped["a"], swapped["b"]) == (2, 1) and swapped["comparison"] is None
    assert all(r["flip"] == "improved" for r in swapped["rows"][:8])


def test_prompt_results_show_each_versions_latest_run(ops, runs):
    first, second = runs
    rows = evalpages.prompt_eval_results(ops, "echo")
    assert [(r["version"], r["run_id"]) for r in rows] == [(1, second.id), (4, second.id), (2, first.id)]
    assert rows[2]["pass_rate"] == "20.0%" and not rows[2]["gate_passed"]


def test_pages_render(client, runs):
    first, _ = runs
    r = client.get(f"/evals/runs/{first.id}", headers=HTML)
    assert r.status_code == 200, r.text
    assert r.template.name == "eval_run.html" and "HELLO THERE" in r.text
    assert r.text.index("c1") < r.text.index("c4")
    r = client.get("/prompts/echo", headers=HTML)
    assert r.status_code == 200 and f"/evals/runs/{first.id}" in r.text
    assert len(r.context["evals"]) == 3
    for bad in ("999", "0"):
        r = client.get(f"/evals/runs/{bad}", headers=HTML)
        assert r.status_code == 404 and r.template.name == "error.html"


def test_experiment_page_says_what_the_gate_waits_for(client, ops, runs):
    exp = ops.experiments.create("echo", [1, 2], requires_eval="echo-golden")
    r = client.get(f"/experiments/{exp.id}", headers=HTML)
    assert r.status_code == 200, r.text
    assert "Eval gate: echo-golden" in r.text and "worse than the baseline" in r.text


def test_a_run_of_one_version_shows_one_side(client, ops, runs):
    summary, _ = run(ops)
    ctx = evalpages.eval_run_context(ops, summary.id, {})
    assert (ctx["a"], ctx["b"], ctx["flips"]) == (1, None, 0)
    r = client.get(f"/evals/runs/{summary.id}", headers=HTML)
    assert r.status_code == 200 and "echo: hello there" in r.text, r.text
