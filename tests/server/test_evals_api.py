"""GET /v1/evals and /v1/evals/runs/{id}, and an experiment created with requires_eval."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.fakeupstream import fake_upstream  # noqa: F401  (a fixture)
from tests.services.evalproject import write_project
from tests.services.test_evals import run


@pytest.fixture
def settings(settings, tmp_path, fake_upstream):  # noqa: F811
    paths = write_project(tmp_path, fake_upstream)
    return replace(
        settings, prompts_dir=paths["prompts"], evals_dir=paths["evals"], config_path=paths["config"]
    )


@pytest.fixture
def synced(ops, client):
    ops.sync()
    client.app.state.runtime.refresh()
    return client


def test_list_evals_with_their_latest_runs(synced, ops):
    r = synced.get("/v1/evals")
    assert r.status_code == 200, r.text
    (item,) = r.json()["evals"]
    assert (item["name"], item["prompt"], item["cases"], item["latest_runs"]) == (
        "echo-golden",
        "echo",
        10,
        [],
    )
    summary, _ = run(ops, versions=[2])
    body = synced.get("/v1/evals").json()
    assert body["problems"] == []
    (latest,) = body["evals"][0]["latest_runs"]
    assert latest["id"] == summary.id and not latest["gate_passed"]
    assert [(v["version"], v["passed"]) for v in latest["versions"]] == [(1, 10), (2, 2)]
    assert latest["comparisons"][0]["baseline"] == 1 and len(latest["comparisons"][0]["regressed"]) == 8


def test_one_run_with_its_cases(synced, ops):
    summary, _ = run(ops, versions=[3])
    r = synced.get(f"/v1/evals/runs/{summary.id}")
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["eval"] == "echo-golden" and body["cases"] == 10
    cases = body["case_results"]
    assert len(cases) == 20
    broken = [c for c in cases if c["version"] == 3]
    assert all(c["status"] == "error" and c["outputs"] == [None] and c["errors"][0] for c in broken)
    ok = next(c for c in cases if c["version"] == 1 and c["case_id"] == "c2")
    assert ok["outputs"] == ["echo: where is my parcel"] and ok["assertions"][0]["passed"]


@pytest.mark.parametrize("run_id", ["999", "0", "99999999999", "abc"])
def test_unknown_run_is_a_json_error(synced, run_id):
    r = synced.get(f"/v1/evals/runs/{run_id}")
    assert r.status_code in (404, 422), r.text
    body = r.json()
    assert set(body) == {"error"} and body["error"]["code"], body


def test_invalid_eval_folder_is_listed_as_problems(synced, settings):
    (settings.evals_dir / "bad.yaml").write_text("name: bad\n", encoding="utf-8")
    body = synced.get("/v1/evals").json()
    assert body["evals"] == [] and any("bad.yaml:1" in p for p in body["problems"]), body


def test_experiment_created_with_requires_eval_waits_as_a_draft(synced, ops):
    r = synced.post(
        "/v1/experiments", json={"prompt": "echo", "versions": [1, 4], "requires_eval": "echo-golden"}
    )
    assert r.status_code == 201, r.text
    exp = r.json()
    assert exp["status"] == "draft" and exp["requires_eval"] == "echo-golden"
    assert exp["gate"]["waiting"] == [1, 4] and "waiting for a passing run" in exp["gate"]["message"]
    r = synced.post(f"/v1/experiments/{exp['id']}/stop")
    assert r.status_code == 200
    r = synced.post(
        "/v1/experiments", json={"prompt": "echo", "versions": [1, 4], "requires_eval": "Not A Name"}
    )
    assert r.status_code == 422


def test_experiment_requiring_an_unknown_eval_is_a_422(synced, settings):
    r = synced.post(
        "/v1/experiments", json={"prompt": "echo", "versions": [1, 4], "requires_eval": "echo-goldne"}
    )
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error == {
        "code": "invalid_input",
        "message": f"requires_eval: eval 'echo-goldne' is not defined in {settings.evals_dir} "
        "(known: echo-golden)",
        "field": "requires_eval",
    }
    assert synced.get("/v1/experiments", params={"prompt": "echo"}).json()["experiments"] == []


def test_openapi_documents_the_eval_routes(synced):
    paths = synced.get("/openapi.json").json()["paths"]
    assert "/v1/evals" in paths and "/v1/evals/runs/{run_id}" in paths
