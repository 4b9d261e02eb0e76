"""Every JSON endpoint and its errors, through a TestClient over create_app."""

from __future__ import annotations

import pytest

from promptops.rendering import PreparedContent, RenderTooSlow
from tests.samples import PLAIN, TRIAGE


@pytest.fixture
def synced(ops, prompts_dir, client):
    (prompts_dir / "triage.yaml").write_text(TRIAGE)
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    ops.sync()
    client.app.state.runtime.refresh()
    return client


def error_of(resp) -> dict:
    body = resp.json()
    assert set(body) == {"error"}, body
    assert {"code", "message"} <= set(body["error"]), body
    return body["error"]


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json()["database"] == "ok", r.text


def test_registry_reads(synced):
    r = synced.get("/v1/prompts")
    assert r.status_code == 200
    assert {p["name"]: p["production_version"] for p in r.json()["prompts"]} == {"plain": 1, "triage": 1}
    r = synced.get("/v1/prompts/triage")
    assert r.json()["labels"] == {"production": 1}
    assert [v["number"] for v in r.json()["versions"]] == [2, 1]
    r = synced.get("/v1/prompts/triage/versions/2")
    assert r.json()["variant"] == "terse" and "messages" in r.json()["content"]
    r = synced.get("/v1/prompts/triage/diff", params={"a": 1, "b": 2})
    assert "+[user]" in r.json()["diff"] or "Category of" in r.json()["diff"]


def test_render_records_no_decision(synced):
    r = synced.post("/v1/prompts/plain/render", json={"variables": {"topic": "{{ 7*7 }}"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["text"] == "Write about {{ 7*7 }}." and body["version"] == 1
    r = synced.post("/v1/prompts/triage/render", json={"variables": {"message": "hi"}, "version": 2})
    assert r.json()["variant"] == "terse"
    exp = synced.get("/v1/experiments").json()["experiments"][0]
    assert sum(a["decisions"] for a in exp["arms"]) == 0


def test_serve_and_feedback_move_the_figures(synced, ops, clock):
    rt = synced.app.state.runtime
    ids = []
    for _ in range(40):
        r = synced.post("/v1/prompts/triage/serve", json={"variables": {"message": "hi"}})
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["experiment_id"] == 1 and body["variant"] in ("main", "terse")
        ids.append(body["decision_id"])
    for i, did in enumerate(ids):
        r = synced.post("/v1/feedback", json={"decision_id": did, "reward": i % 2})
        assert r.json() == {"status": "recorded"}, r.text
    r = synced.post("/v1/feedback", json={"decision_id": ids[0], "reward": 0})
    assert r.json() == {"status": "duplicate"}
    rt.writer.flush()
    clock.advance(10)
    ops.tick()
    exp = synced.get("/v1/experiments/1").json()
    assert sum(a["decisions"] for a in exp["arms"]) == 40
    assert sum(a["feedback"] for a in exp["arms"]) == 40
    assert sum(a["reward_sum"] for a in exp["arms"]) == 20
    assert sum(a["n"] for a in exp["arms"]) == 40
    assert all(a["mean"] is not None for a in exp["arms"]), exp


@pytest.mark.parametrize(
    "method, path, body, status, code",
    [
        pytest.param(
            "post",
            "/v1/prompts/nope/serve",
            {"variables": {}},
            404,
            "prompt_not_found",
            id="serve-unknown-prompt",
        ),
        pytest.param(
            "post",
            "/v1/prompts/triage/serve",
            {"variables": {}},
            422,
            "invalid_variables",
            id="serve-missing-variable",
        ),
        pytest.param(
            "post",
            "/v1/prompts/triage/serve",
            {"variables": {"message": "x" * 101}},
            422,
            "invalid_variables",
            id="serve-too-long",
        ),
        pytest.param(
            "post",
            "/v1/prompts/triage/serve",
            {"variables": {"message": "x", "other": 1}},
            422,
            "invalid_variables",
            id="serve-undeclared",
        ),
        pytest.param(
            "post",
            "/v1/prompts/triage/serve",
            {"variables": {"message": 3}},
            422,
            "invalid_variables",
            id="serve-wrong-type",
        ),
        pytest.param(
            "post",
            "/v1/prompts/triage/serve",
            {"variables": [1]},
            422,
            "invalid_input",
            id="serve-variables-not-object",
        ),
        pytest.param(
            "post",
            "/v1/prompts/triage/serve",
            {"variables": {}, "junk": 1},
            422,
            "invalid_input",
            id="serve-unknown-field",
        ),
        pytest.param(
            "post",
            "/v1/feedback",
            {"decision_id": "nope", "reward": 1},
            404,
            "decision_not_found",
            id="feedback-unknown",
        ),
        pytest.param(
            "post", "/v1/feedback", {"decision_id": "x"}, 422, "invalid_input", id="feedback-no-reward"
        ),
        pytest.param(
            "post",
            "/v1/feedback",
            {"decision_id": "x", "reward": "high"},
            422,
            "invalid_input",
            id="feedback-reward-text",
        ),
        pytest.param("get", "/v1/prompts/nope", None, 404, "prompt_not_found", id="prompt-unknown"),
        pytest.param(
            "get", "/v1/prompts/triage/versions/9", None, 404, "version_not_found", id="version-unknown"
        ),
        pytest.param(
            "get", "/v1/prompts/triage/versions/abc", None, 422, "invalid_input", id="version-not-int"
        ),
        pytest.param("get", "/v1/experiments/99", None, 404, "experiment_not_found", id="experiment-unknown"),
        pytest.param("post", "/v1/experiments/99/stop", None, 404, "experiment_not_found", id="stop-unknown"),
        pytest.param(
            "post",
            "/v1/experiments",
            {"prompt": "triage", "versions": [1]},
            422,
            "invalid_input",
            id="create-one-arm",
        ),
        pytest.param(
            "post",
            "/v1/experiments",
            {"prompt": "triage", "versions": [1, 2]},
            409,
            "experiment_state",
            id="create-while-running",
        ),
        pytest.param(
            "post",
            "/v1/experiments",
            {"prompt": "plain", "versions": [1, 2]},
            404,
            "version_not_found",
            id="create-unknown-version",
        ),
        pytest.param(
            "post",
            "/v1/experiments",
            {"prompt": "triage", "versions": [1, 2], "policy": {"bogus": 1}},
            422,
            "invalid_input",
            id="create-bad-policy",
        ),
        pytest.param("get", "/v1/nothing", None, 404, "not_found", id="no-route"),
    ],
)
def test_errors_are_json_with_the_right_status(synced, method, path, body, status, code):
    r = getattr(synced, method)(path, json=body) if body is not None else getattr(synced, method)(path)
    assert r.status_code == status, r.text
    assert error_of(r)["code"] == code, r.text


def test_more_than_max_arms_is_refused_over_http_as_before(synced):
    before = synced.get("/v1/experiments").json()
    r = synced.post("/v1/experiments", json={"prompt": "triage", "versions": list(range(1, 22))})
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == "invalid_input" and error["message"].startswith("versions: "), r.text
    assert "at most 20" in error["message"], r.text
    assert synced.get("/v1/experiments").json() == before


def test_one_arm_is_refused_with_the_shared_message(synced):
    r = synced.post("/v1/experiments", json={"prompt": "triage", "versions": [1]})
    assert r.status_code == 422, r.text
    assert error_of(r)["message"] == "versions: an experiment needs at least two arms, got 1", r.text


NON_CANONICAL_IDS = ["%201", "1%20", "+1", "01", "1_0", "%EF%BC%91", "-0", "1.0", "%091"]


@pytest.mark.parametrize("spelling", NON_CANONICAL_IDS)
@pytest.mark.parametrize(
    "method, template",
    [
        ("get", "/v1/experiments/{}"),
        ("get", "/v1/experiments/{}/history"),
        ("post", "/v1/experiments/{}/stop"),
        ("post", "/v1/experiments/{}/promote"),
        ("get", "/v1/evals/runs/{}"),
        ("get", "/v1/prompts/triage/versions/{}"),
    ],
)
def test_only_the_canonical_spelling_of_an_id_is_found(synced, method, template, spelling):
    r = getattr(synced, method)(template.format(spelling))
    assert r.status_code == 422, r.text
    error = error_of(r)
    assert error["code"] == "invalid_input" and "plain ASCII digits" in error["message"], r.text
    assert synced.get("/v1/experiments/1").json()["status"] == "running"


@pytest.mark.parametrize("spelling", NON_CANONICAL_IDS)
@pytest.mark.parametrize(
    "template",
    [
        "/v1/prompts/triage/diff?a={}&b=2",
        "/v1/audit?experiment_id={}",
        "/v1/audit?limit={}",
        "/v1/audit?offset={}",
    ],
)
def test_integer_query_parameters_take_only_their_canonical_spelling(synced, template, spelling):
    r = synced.get(template.format(spelling))
    assert r.status_code == 422, r.text
    assert "plain ASCII digits" in error_of(r)["message"], r.text


def test_canonical_query_parameters_still_answer(synced):
    assert synced.get("/v1/prompts/triage/diff?a=1&b=2").status_code == 200
    assert synced.get("/v1/audit?experiment_id=1&limit=5&offset=0").status_code == 200


def test_canonical_ids_still_answer(synced):
    assert synced.get("/v1/experiments/1").status_code == 200
    assert synced.get("/v1/prompts/triage/versions/1").status_code == 200
    for path in ("/v1/experiments/0", "/v1/experiments/-1", "/v1/experiments/99999999999999999999999"):
        assert error_of(synced.get(path))["code"] == "experiment_not_found", path


def test_malformed_json_is_422(synced):
    r = synced.post("/v1/feedback", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 422 and error_of(r)["code"] == "invalid_input"


def test_oversized_body_is_413(synced):
    r = synced.post(
        "/v1/prompts/triage/serve", content=b"x" * 2_000_000, headers={"content-type": "application/json"}
    )
    assert r.status_code == 413 and error_of(r)["code"] == "payload_too_large"


def test_binary_reward_must_be_zero_or_one(synced):
    did = synced.post("/v1/prompts/triage/serve", json={"variables": {"message": "x"}}).json()["decision_id"]
    r = synced.post("/v1/feedback", json={"decision_id": did, "reward": 0.5})
    assert r.status_code == 422 and error_of(r)["field"] == "reward"
    r = synced.post("/v1/feedback", json={"decision_id": did, "reward": 1.5, "metric": "x"})
    assert r.status_code == 422


def test_experiment_lifecycle_over_http(synced):
    r = synced.post("/v1/experiments/1/promote", json={"version": 2})
    assert r.status_code == 200 and r.json()["winner"] == 2, r.text
    assert synced.get("/v1/prompts/triage").json()["labels"]["production"] == 2
    r = synced.post("/v1/experiments/1/promote", json={})
    assert r.status_code == 409 and error_of(r)["code"] == "experiment_state"
    served = synced.post("/v1/prompts/triage/serve", json={"variables": {"message": "x"}})
    assert served.json()["version"] == 2 and served.json()["experiment_id"] is None
    r = synced.post(
        "/v1/experiments",
        json={"prompt": "triage", "versions": [2, 1], "strategy": "fixed", "weights": [0.5, 0.5]},
    )
    assert r.status_code == 201, r.text
    new = r.json()
    assert new["status"] == "running" and new["arms"][0]["is_control"] is True
    r = synced.post(f"/v1/experiments/{new['id']}/stop")
    assert r.status_code == 200 and r.json()["status"] == "stopped"
    r = synced.post("/v1/prompts/triage/labels/production", json={"version": 1})
    assert r.status_code == 200 and r.json()["previous"] == 2
    audit = synced.get("/v1/audit").json()["entries"]
    assert audit[0]["action"] == "label.move"


def test_metrics_endpoint(synced):
    synced.post("/v1/prompts/triage/serve", json={"variables": {"message": "x"}})
    r = synced.get("/metrics")
    assert r.status_code == 200
    assert "promptops_decisions_total" in r.text and "promptops_request_seconds" in r.text
    assert "promptops_arm_weight" in r.text


def test_openapi_and_docs_are_public(synced):
    assert synced.get("/openapi.json").status_code == 200
    assert synced.get("/docs").status_code == 200


def test_experiments_declare_metrics_and_guardrails_over_http(synced):
    synced.post("/v1/experiments/1/stop")
    r = synced.post(
        "/v1/experiments",
        json={
            "prompt": "triage",
            "versions": [1, 2],
            "metrics": ["csat"],
            "guardrails": [{"metric": "cost_usd", "max_increase": 0.1}],
        },
    )
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["metrics"] == ["csat"] and body["flags"] == [] and body["safety"] == []
    assert body["holdout"] is None and body["stop_reason"] is None
    assert body["policy"]["guardrails"][0]["metric"] == "cost_usd"
    assert {"units", "new_units", "metrics", "guardrails"} <= set(body["arms"][0])
    served = synced.post("/v1/prompts/triage/serve", json={"variables": {"message": "x"}})
    decision = served.json()["decision_id"]
    r = synced.post("/v1/feedback", json={"decision_id": decision, "reward": 4, "metric": "csat"})
    assert r.status_code == 200 and r.json()["status"] == "recorded", r.text
    r = synced.post("/v1/feedback", json={"decision_id": decision, "reward": 1, "metric": "nps"})
    assert r.status_code == 422 and error_of(r)["code"] == "unknown_metric", r.text
    assert "csat" in error_of(r)["message"]
    r = synced.post(
        "/v1/experiments",
        json={"prompt": "triage", "versions": [1, 2], "guardrails": [{"metric": "cost_usd"}]},
    )
    assert r.status_code == 422, r.text


LOOPING = """\
name: looping
variables:
  items: {type: list, required: true}
template: "{% for i in items %}{{ i }} {% endfor %}"
"""


def test_a_slow_template_renders_off_the_event_loop(ops, prompts_dir, app, monkeypatch):
    import asyncio
    import threading

    import httpx

    (prompts_dir / "looping.yaml").write_text(LOOPING)
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    ops.sync()
    app.state.runtime.refresh()
    started, released = threading.Event(), threading.Event()
    seen: dict[str, bool] = {}
    render = PreparedContent.render

    def held_render(prepared, variables, *, prompt, inline=False, **kw):  # type: ignore[no-untyped-def]
        if prompt == "looping":
            if inline:  # a slow render runs out of the inline budget on the event loop ...
                raise RenderTooSlow("the template needs more than the inline budget")
            started.set()  # ... and is finished in a worker thread, held until the other serve
            seen["released"] = released.wait(60)  # has been answered
        return render(prepared, variables, prompt=prompt, inline=inline, **kw)

    monkeypatch.setattr(PreparedContent, "render", held_render)

    async def both() -> tuple[httpx.Response, httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
            slow = asyncio.create_task(
                c.post("/v1/prompts/looping/serve", json={"variables": {"items": [1, 2]}})
            )
            # Inline, the held render would block the loop here until its wait ran out.
            assert await asyncio.to_thread(started.wait, 10)
            other = await c.post("/v1/prompts/plain/serve", json={"variables": {"topic": "x"}})
            released.set()
            return other, await slow

    other, slow = asyncio.run(both())
    assert other.status_code == 200 and slow.status_code == 200, (other.text, slow.text)
    assert slow.json()["text"] == "1 2 "
    assert seen["released"]  # the other serve was answered while the looping one rendered


def test_a_quick_looping_template_renders_inline_and_the_same_arm_finishes_a_slow_one(ops, prompts_dir):
    from promptops.rendering import INLINE_WORK_BUDGET
    from promptops.services.serving import RenderDeferred

    (prompts_dir / "looping.yaml").write_text(LOOPING)
    ops.sync()
    out = ops.serving.serve("looping", {"items": [1, 2]}, inline=True)
    assert out.text == "1 2 "
    with pytest.raises(RenderDeferred) as slow:
        ops.serving.serve("looping", {"items": list(range(INLINE_WORK_BUDGET))}, inline=True)
    finished = ops.serving.serve_deferred(slow.value)
    assert finished.version == slow.value.choice.version.number
    assert finished.text.startswith("0 1 2 ")
