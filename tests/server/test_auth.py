"""The auth matrix: no key, wrong key, serve key, admin key, for every route."""

from __future__ import annotations

import pytest

from promptops.config import Settings
from promptops.errors import ConfigError
from tests.samples import TRIAGE_NO_EXPERIMENT

# (method, path, body, role needed); bodies are valid so the admin/serve answers are not 401/403
ROUTES = [
    ("get", "/v1/prompts", None, "read"),
    ("get", "/v1/prompts/triage", None, "read"),
    ("get", "/v1/prompts/triage/versions/1", None, "read"),
    ("get", "/v1/prompts/triage/diff?a=1&b=2", None, "read"),
    ("post", "/v1/prompts/triage/render", {"variables": {"message": "x"}}, "read"),
    ("post", "/v1/prompts/triage/serve", {"variables": {"message": "x"}}, "read"),
    ("post", "/v1/feedback", {"decision_id": "unknown", "reward": 1}, "read"),
    ("get", "/v1/experiments", None, "read"),
    ("get", "/v1/audit", None, "read"),
    ("get", "/metrics", None, "read"),
    ("post", "/v1/experiments", {"prompt": "triage", "versions": [1, 2]}, "admin"),
    ("post", "/v1/experiments/1/stop", None, "admin"),
    ("post", "/v1/experiments/1/promote", None, "admin"),
    ("post", "/v1/prompts/triage/labels/staging", {"version": 2}, "admin"),
]


@pytest.fixture
def keyed(ops, prompts_dir, client):
    (prompts_dir / "triage.yaml").write_text(TRIAGE_NO_EXPERIMENT)
    ops.sync()
    keys = {"serve": ops.keys.create("serve"), "admin": ops.keys.create("admin")}
    client.app.state.runtime.refresh(force=True)
    return client, keys


def call(client, method, path, body, key):
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if body is None:
        return getattr(client, method)(path, headers=headers)
    return getattr(client, method)(path, json=body, headers=headers)


@pytest.mark.parametrize("method, path, body, need", ROUTES, ids=[f"{m} {p}" for m, p, _, _ in ROUTES])
def test_auth_matrix(keyed, method, path, body, need):
    client, keys = keyed
    r = call(client, method, path, body, None)
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized", r.text
    r = call(client, method, path, body, "po_admin_wrong")
    assert r.status_code == 401, r.text
    r = call(client, method, path, body, keys["serve"])
    if need == "admin":
        assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden", r.text
    else:
        assert r.status_code not in (401, 403), r.text
    r = call(client, method, path, body, keys["admin"])
    assert r.status_code not in (401, 403), r.text


def test_public_routes_need_no_key(keyed):
    client, _ = keyed
    for path in ("/healthz", "/openapi.json", "/docs"):
        assert client.get(path).status_code == 200, path


def test_no_keys_on_loopback_means_auth_off(ops, prompts_dir, client):
    (prompts_dir / "triage.yaml").write_text(TRIAGE_NO_EXPERIMENT)
    ops.sync()
    client.app.state.runtime.refresh(force=True)
    assert client.app.state.runtime.auth_off
    assert client.post("/v1/experiments/1/stop").status_code == 404  # reached the handler


def test_public_bind_without_keys_refuses_to_start(settings):
    from dataclasses import replace

    from promptops.server.run import prepare

    with pytest.raises(ConfigError, match="without an API key"):
        prepare(replace(settings, host="0.0.0.0", sync_on_start=False))


def test_public_bind_with_a_key_starts(settings):
    from dataclasses import replace

    from promptops.server.run import prepare
    from promptops.services.facade import PromptOps

    PromptOps(settings).keys.create("admin")
    ops = prepare(replace(settings, host="0.0.0.0", sync_on_start=False))
    assert isinstance(ops, PromptOps)
    assert Settings.from_env({}, host="10.0.0.1").is_loopback is False


def test_revoking_the_last_key_on_a_public_bind_locks_the_server(database_url, prompts_dir, clock):
    from fastapi.testclient import TestClient

    from promptops.server.app import create_app
    from promptops.server.runtime import server_ops

    settings = Settings(database_url=database_url, prompts_dir=prompts_dir, host="0.0.0.0")
    service = server_ops(settings, clock=clock)
    service.keys.create("admin")
    app = create_app(settings, ops=service, clock=clock, background=False)
    with TestClient(app) as client:
        assert client.get("/v1/prompts").status_code == 401
        service.keys.revoke(service.keys.list_keys()[0].id)
        app.state.runtime.refresh()
        assert client.get("/v1/prompts").status_code == 401
    service.close()


def test_a_bad_prompt_file_does_not_stop_the_server_starting(settings, prompts_dir, capsys):
    from promptops.server.run import prepare

    (prompts_dir / "bad.yaml").write_text("name: Bad Name\ntemplate: x\n")
    ops = prepare(settings)
    err = capsys.readouterr().err
    assert "bad.yaml:1:" in err and "sync skipped" in err, err
    assert ops.registry.list_prompts() == []


def test_revoking_the_last_key_on_loopback_keeps_auth_on(ops, prompts_dir, client, caplog):
    rt = client.app.state.runtime
    assert client.get("/v1/prompts").status_code == 200 and rt.auth_off
    ops.keys.create("admin")
    rt.refresh()
    assert client.get("/v1/prompts").status_code == 401
    ops.keys.revoke(ops.keys.list_keys()[0].id)
    with caplog.at_level("WARNING", logger="promptops.server"):
        rt.refresh()
    assert client.get("/v1/prompts").status_code == 401
    assert not rt.auth_off
    ops.keys.auth_off()
    with caplog.at_level("WARNING", logger="promptops.server"):
        rt.refresh()
    assert client.get("/v1/prompts").status_code == 200
    assert "auth is now off" in caplog.text


def test_the_session_cookie_carries_nothing_about_the_key(ops, client):
    from itsdangerous import URLSafeTimedSerializer

    from promptops.server.auth import SESSION_COOKIE, session_token
    from promptops.services.keys import hash_key

    key = ops.keys.create("admin")
    rt = client.app.state.runtime
    rt.refresh()
    token = session_token(rt.secret, key)
    payload = URLSafeTimedSerializer(rt.secret, salt="promptops-session").loads(token)
    assert set(payload) == {"s", "m"}
    assert hash_key(key) not in token and key[:12] not in str(payload)
    assert client.get("/", follow_redirects=False).status_code == 303  # sign in first
    client.cookies.set(SESSION_COOKIE, token)
    assert client.get("/", follow_redirects=False).status_code == 200
    # Revoking the key ends the session.
    ops.keys.revoke(ops.keys.list_keys()[0].id)
    ops.keys.create("serve")
    rt.refresh()
    from promptops.server.auth import session_principal

    class Req:
        app = client.app
        headers: dict[str, str] = {}
        cookies = {SESSION_COOKIE: token}

    assert session_principal(Req()).role is None  # type: ignore[arg-type]
