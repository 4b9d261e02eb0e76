"""Honest health, metrics labels, and no driver detail in any answer."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text
from sqlalchemy.exc import OperationalError

from promptops.errors import Unavailable
from promptops.server.app import create_app
from tests.samples import PLAIN, TRIAGE

DRIVER = 'connection to server at "127.0.0.1", port 15432 failed'


@pytest.fixture
def synced(ops, prompts_dir, client):
    (prompts_dir / "triage.yaml").write_text(TRIAGE)
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    ops.sync()
    client.app.state.runtime.refresh()
    return client


def test_failing_writes_make_health_503_without_driver_detail(synced, monkeypatch):
    rt = synced.app.state.runtime
    decision = synced.post("/v1/prompts/plain/serve", json={"variables": {"topic": "x"}}).json()

    def broken(items):  # type: ignore[no-untyped-def]
        # What a full disk or a dead server looks like to the writer: the driver's OperationalError.
        raise OperationalError("INSERT INTO feedback VALUES ('other-client-id')", {}, Exception(DRIVER))

    monkeypatch.setattr(rt.writer.recorder, "record_feedback", broken)
    for content_type in ("application/json", "application/json; charset=utf-8"):  # both paths
        r = synced.post(
            "/v1/feedback",
            headers={"Content-Type": content_type},
            content=b'{"decision_id": "%s", "reward": 1}' % decision["decision_id"].encode(),
        )
        assert r.status_code == 503, r.text
        assert r.json()["error"]["code"] == "unavailable"
        assert "15432" not in r.text and "INSERT" not in r.text
    r = synced.get("/healthz")
    assert r.status_code == 503 and r.json()["writes"] == "failing", r.text
    assert "writes are failing" in r.json()["problems"] and "15432" not in r.text


def test_a_503_from_any_route_carries_no_driver_message(synced, ops, monkeypatch):
    def down(**_):  # type: ignore[no-untyped-def]
        raise Unavailable(f"database unavailable: {DRIVER}")

    monkeypatch.setattr(ops.registry, "list_prompts", down)
    r = synced.get("/v1/prompts")
    assert r.status_code == 503 and "15432" not in r.text, r.text
    r = synced.get("/", headers={"Accept": "text/html"})
    assert "15432" not in r.text


def test_a_503_is_logged_with_its_detail(synced, ops, monkeypatch, caplog):
    def down(**_):  # type: ignore[no-untyped-def]
        raise Unavailable(f"database unavailable: {DRIVER}")

    monkeypatch.setattr(ops.registry, "list_prompts", down)
    with caplog.at_level("WARNING", logger="promptops.server"):
        assert synced.get("/v1/prompts").status_code == 503
    assert "15432" in caplog.text


def test_a_growing_backlog_makes_health_503(settings, ops, app, prompts_dir):  # app: server ops
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    ops.sync()
    app = create_app(replace(settings, max_pending_decisions=2), ops=ops, background=False)
    client = TestClient(app)  # no lifespan: the writer does not run, so decisions wait
    for _ in range(3):
        assert client.post("/v1/prompts/plain/serve", json={"variables": {"topic": "x"}}).status_code == 200
    r = client.get("/healthz")
    assert r.status_code == 503 and r.json()["pending_decisions"] == 3, r.text
    assert r.json()["problems"] == ["over 2 decisions wait to be stored"]


def test_the_database_gauge_is_kept_by_the_server_itself(synced, monkeypatch):
    rt = synced.app.state.runtime
    assert "promptops_database_up 1.0" in synced.get("/metrics").text

    def down(**_):  # type: ignore[no-untyped-def]
        raise Unavailable("database unavailable")

    monkeypatch.setattr(rt.ops.serving.live, "refresh", down)
    rt.step(tick=False)  # one round of the background loop
    assert "promptops_database_up 0.0" in synced.get("/metrics").text
    monkeypatch.undo()
    rt.step(tick=False)
    assert "promptops_database_up 1.0" in synced.get("/metrics").text


def test_feedback_metrics_are_labelled_by_names(synced):
    for content_type in ("application/json", "application/json; charset=utf-8"):  # both paths
        out = synced.post("/v1/prompts/plain/serve", json={"variables": {"topic": "x"}}).json()
        r = synced.post(
            "/v1/feedback",
            headers={"Content-Type": content_type},
            content=b'{"decision_id": "%s", "reward": 1}' % out["decision_id"].encode(),
        )
        assert r.status_code == 200, r.text
    text_ = synced.get("/metrics").text
    assert (
        'promptops_feedback_total{experiment="",prompt="plain",status="recorded",version="1"} 2.0'
    ) in text_, text_


def test_statements_and_lock_waits_are_bounded(ops):
    with ops.ctx.engine.connect() as conn:
        if conn.dialect.name == "postgresql":
            assert conn.execute(text("SHOW statement_timeout")).scalar() == "30s"
            assert conn.execute(text("SHOW lock_timeout")).scalar() == "10s"
        else:
            assert conn.execute(text("PRAGMA busy_timeout")).scalar() == 10_000
