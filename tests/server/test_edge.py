"""The edge: forged browser requests, DNS rebinding, and text the database cannot hold."""

from __future__ import annotations

from dataclasses import replace

import pytest
from fastapi.testclient import TestClient

from promptops.config import Settings
from promptops.server.app import create_app
from promptops.server.guard import host_allowed, legitimate_hosts
from tests.samples import PLAIN, TRIAGE


@pytest.fixture
def synced(ops, prompts_dir, client):
    (prompts_dir / "triage.yaml").write_text(TRIAGE)
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    ops.sync()
    client.app.state.runtime.refresh()
    return client


def code_of(resp) -> str:
    return resp.json()["error"]["code"]


EVIL = {"Origin": "http://evil.example"}


@pytest.mark.parametrize(
    "path",
    [
        "/v1/experiments/1/stop",
        "/v1/prompts/plain/serve",
        "/v1/feedback",
        "/v1/prompts/plain/labels/production",
        "/prompts/plain/production",
    ],
)
def test_a_foreign_origin_cannot_change_anything(synced, path):
    # A "simple" cross-origin request (no JSON content type) needs no preflight in a browser.
    r = synced.post(
        path, content=b'{"decision_id": "x", "reward": 1}', headers={**EVIL, "Content-Type": "text/plain"}
    )
    assert r.status_code == 403 and code_of(r) == "forbidden_origin", r.text
    # The fast path too: a JSON body it would otherwise answer itself.
    r = synced.post(path, json={"variables": {"topic": "x"}}, headers=EVIL)
    assert r.status_code == 403 and code_of(r) == "forbidden_origin", r.text
    r = synced.post(path, json={}, headers={"Origin": "null"})
    assert r.status_code == 403, r.text


def test_same_origin_and_clients_without_origin_still_work(synced):
    r = synced.post(
        "/v1/prompts/plain/serve", json={"variables": {"topic": "x"}}, headers={"Origin": "http://testserver"}
    )
    assert r.status_code == 200, r.text
    r = synced.post("/v1/prompts/plain/serve", json={"variables": {"topic": "x"}})
    assert r.status_code == 200, r.text
    # Reads stay open to any origin.
    assert synced.get("/v1/prompts", headers=EVIL).status_code == 200


def test_a_rebound_host_is_refused_while_auth_is_off(synced):
    bad = {"Host": "attacker.example:8000"}
    r = synced.get("/v1/prompts", headers=bad)
    assert r.status_code == 403 and code_of(r) == "forbidden_host", r.text
    r = synced.post("/v1/prompts/plain/serve", json={"variables": {"topic": "x"}}, headers=bad)
    assert r.status_code == 403 and code_of(r) == "forbidden_host", r.text
    r = synced.get("/", headers={**bad, "Accept": "text/html"})
    assert r.status_code == 403


def test_with_auth_on_a_foreign_host_may_read_but_not_write(synced, ops):
    key = ops.keys.create("admin")
    synced.app.state.runtime.refresh()
    headers = {"Host": "attacker.example", "Authorization": f"Bearer {key}"}
    assert synced.get("/v1/prompts", headers=headers).status_code == 200
    r = synced.post("/v1/experiments/1/stop", headers=headers)
    assert r.status_code == 403 and code_of(r) == "forbidden_host", r.text


def test_legitimate_hosts_per_bind():
    loop = legitimate_hosts(Settings(host="127.0.0.1", port=8123))
    for host in ("127.0.0.1:8123", "localhost:8123", "[::1]:8123", "LOCALHOST:8123"):
        assert host_allowed(host, loop), host
    for host in ("localhost", "localhost:8124", "attacker.example:8123", ""):
        assert not host_allowed(host, loop), host
    assert host_allowed("localhost", legitimate_hosts(Settings(port=80)))
    # A public bind answers any Host unless a list is given (it runs with keys).
    assert legitimate_hosts(Settings(host="0.0.0.0")) is None
    listed = legitimate_hosts(Settings(host="0.0.0.0", allowed_hosts=("po.example.com",)))
    assert host_allowed("po.example.com", listed) and host_allowed("po.example.com:443", listed)
    assert not host_allowed("evil.example", listed)
    env = Settings.from_env({"PROMPTOPS_ALLOWED_HOSTS": "A.example, b.example:8443"})
    assert env.allowed_hosts == ("a.example", "b.example:8443")


def test_the_fixture_host_is_not_served_without_being_listed(settings, ops, app):  # server ops
    app = create_app(replace(settings, allowed_hosts=()), ops=ops, background=False)
    with TestClient(app) as c:
        assert c.get("/v1/prompts").status_code == 403
        assert c.get("/v1/prompts", headers={"Host": "127.0.0.1:8000"}).status_code == 200


BAD_TEXT = ["\x00", "\ud800"]


@pytest.mark.parametrize("bad", BAD_TEXT, ids=["nul", "surrogate"])
@pytest.mark.parametrize(
    "body",
    [
        lambda b: {"variables": {"topic": b}},
        lambda b: {"variables": {"topic": "x", b: "y"}},
        lambda b: {"variables": {"topic": ["ok", {"deep": b}]}},
        lambda b: {"variables": {"topic": "x"}, "unit_id": b},
    ],
)
def test_serve_refuses_bad_text_before_recording(synced, ops, bad, body):
    import json

    raw = json.dumps(body(bad)).encode()  # \u escapes, as a client would send them
    r = synced.post("/v1/prompts/plain/serve", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and code_of(r) == "invalid_input", r.text
    message = r.json()["error"]["message"]  # one plain line naming the field, no pydantic prefix
    assert "Value error" not in message and not message.startswith("body: body."), message
    assert "NUL character or a lone surrogate" in message, message
    synced.app.state.runtime.writer.flush()
    assert ops.serving.live.prompt("plain")  # still serving
    exp = synced.get("/v1/experiments").json()["experiments"][0]
    assert sum(a["decisions"] for a in exp["arms"]) == 0


@pytest.mark.parametrize("bad", BAD_TEXT, ids=["nul", "surrogate"])
@pytest.mark.parametrize("field", ["decision_id", "metric"])
def test_feedback_and_render_refuse_bad_text(synced, bad, field):
    import json

    body = {"decision_id": "d", "reward": 1, field: f"a{bad}"}
    r = synced.post(
        "/v1/feedback", content=json.dumps(body).encode(), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 422 and code_of(r) == "invalid_input", r.text
    r = synced.post(
        "/v1/prompts/plain/render",
        content=json.dumps({"variables": {"topic": bad}}).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code == 422 and code_of(r) == "invalid_input", r.text


@pytest.mark.parametrize(
    "url",
    [
        "/v1/prompts/pl%00ain",
        "/v1/prompts/pl%00ain/serve",
        "/v1/experiments?prompt=a%00b",
        "/v1/audit?prompt=%ED%A0%80",
        "/prompts/x%00",
    ],
)
def test_nul_in_path_or_query_is_refused(synced, url):
    r = synced.post(url, json={}) if url.endswith("/serve") else synced.get(url)
    assert r.status_code == 422 and code_of(r) == "invalid_input", r.text


@pytest.mark.parametrize("reward", ["1", "true", "0.5", None, [1]])
def test_string_rewards_are_refused_on_every_path(synced, reward):
    # The fast path falls through for these; FastAPI's model must refuse them too.
    r = synced.post("/v1/feedback", json={"decision_id": "x", "reward": reward})
    assert r.status_code == 422 and code_of(r) == "invalid_input", r.text
    r = synced.post(
        "/v1/feedback",
        json={"decision_id": "x", "reward": reward},
        headers={"Content-Type": "application/json; charset=utf-8"},
    )
    assert r.status_code == 422, r.text


def test_an_oversized_chunked_body_is_413_on_every_route(synced):
    limit = synced.app.state.runtime.settings.max_body_bytes

    def chunks():
        yield b'{"variables": {"topic": "'
        for _ in range(limit // 10_000 + 1):
            yield b"x" * 10_000
        yield b'"}}'

    for path in ("/v1/prompts/plain/render", "/v1/prompts/plain/serve", "/v1/experiments"):
        r = synced.post(path, content=chunks(), headers={"Content-Type": "application/json"})
        assert r.status_code == 413 and code_of(r) == "payload_too_large", (path, r.text)
