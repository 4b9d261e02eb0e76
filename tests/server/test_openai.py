"""The OpenAI-compatible route and /complete, driven by the official `openai` SDK."""

from __future__ import annotations

import dataclasses
import json
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from promptops.db.models import CallRow, DecisionRow
from promptops.server.runtime import server_ops
from tests import fakeupstream
from tests.fakeupstream import Reply
from tests.samples import ASK, CHAT, DUEL
from tests.services.test_gateway import config

# Fixtures shared with other test modules.
fake_upstream = fakeupstream.fake_upstream


@pytest.fixture
def ops(settings, clock):  # type: ignore[no-untyped-def]
    """The services as a server builds them: the tests here run apps over them."""
    service = server_ops(settings, clock=clock)
    yield service
    service.close()


@pytest.fixture
def gateway_settings(tmp_path: Path, settings, ops, fake_upstream):  # type: ignore[no-untyped-def]
    """Settings with a promptops.yaml over the fake upstream, and the test prompts synced."""
    for name, text in (("ask", ASK), ("chat", CHAT), ("duel", DUEL)):
        (tmp_path / "prompts" / f"{name}.yaml").write_text(text)
    ops.sync()
    path = tmp_path / "promptops.yaml"
    path.write_text(config(fake_upstream, timeout=1.0))
    return dataclasses.replace(settings, config_path=path)


@pytest.fixture
def http(gateway_settings, ops, clock) -> Iterator[TestClient]:  # type: ignore[no-untyped-def]
    """A TestClient over an app with the gateway (auth off: loopback, no key)."""
    from promptops.server.app import create_app

    app = create_app(gateway_settings, ops=ops, clock=clock, background=False)
    with TestClient(app) as c:
        yield c


@pytest.fixture
def sdk(http: TestClient) -> openai.OpenAI:
    """The official SDK, talking to the app through the TestClient."""
    return openai.OpenAI(base_url="http://testserver/v1", api_key="unused", http_client=http, max_retries=0)


def post_scope(path: str, *, root_path: str = "") -> dict[str, Any]:
    """The ASGI scope of a JSON POST to the test app, for tests that drive the app directly."""
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": root_path,
        "headers": [(b"host", b"testserver"), (b"content-type", b"application/json")],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
    }


def recorded(ops, http: TestClient, count: int = 1) -> list[CallRow]:  # type: ignore[no-untyped-def]
    """The stored calls, once `count` are (the writer thread may hold a batch in flight)."""
    deadline = time.monotonic() + 10
    while True:
        http.app.state.runtime.writer.flush()
        with ops.ctx.tx() as s:
            rows = list(s.scalars(select(CallRow)))
            s.expunge_all()
        if len(rows) >= count or time.monotonic() > deadline:
            return rows
        time.sleep(0.01)


def test_sdk_completion(sdk, http, ops):
    raw = sdk.chat.completions.with_raw_response.create(
        model="promptops/ask", messages=[], extra_body={"variables": {"question": "hi"}}
    )
    out = raw.parse()
    assert out.choices[0].message.content == "echo: hi"
    assert out.id == raw.headers["x-promptops-decision-id"]
    assert raw.headers["x-promptops-version"] == "1" and raw.headers["x-promptops-cache"] == "miss"
    assert out.usage is not None and out.usage.total_tokens > 0
    [call] = recorded(ops, http)
    assert call.decision_id == out.id and call.status == "ok"


def test_sdk_stream(sdk, http, ops):
    chunks = list(
        sdk.chat.completions.create(
            model="promptops/chat",
            messages=[{"role": "user", "content": "more"}],
            stream=True,
            stream_options={"include_usage": True},
            user="unit-1",
            extra_body={"variables": {"question": "hi"}},
        )
    )
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == "echo: more"
    assert len({c.id for c in chunks}) == 1 and chunks[0].id.startswith("d_")
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    [call] = recorded(ops, http)
    assert call.stream and call.ttft_ms is not None


def test_cached_answer_replays_as_a_stream(sdk, http, fake_upstream):
    body = {"variables": {"question": "same"}}
    sdk.chat.completions.create(model="promptops/ask", messages=[], extra_body=body)
    http.app.state.runtime.writer.flush()
    raw = sdk.chat.completions.with_raw_response.create(
        model="promptops/ask", messages=[], stream=True, extra_body=body
    )
    assert raw.headers["x-promptops-cache"] == "hit"
    text = "".join(c.choices[0].delta.content or "" for c in raw.parse() if c.choices)
    assert text == "echo: same" and fake_upstream.count == 1


def test_cache_control_header(sdk, fake_upstream):
    body = {"variables": {"question": "x"}}
    sdk.chat.completions.create(model="promptops/ask", messages=[], extra_body=body)
    raw = sdk.chat.completions.with_raw_response.create(
        model="promptops/ask", messages=[], extra_body=body, extra_headers={"Cache-Control": "no-store"}
    )
    assert raw.headers["x-promptops-cache"] == "bypass" and fake_upstream.count == 2


def test_pinned_version(sdk):
    raw = sdk.chat.completions.with_raw_response.create(model="promptops/duel@v2", messages=[])
    assert raw.headers["x-promptops-version"] == "2" and raw.headers["x-promptops-variant"] == "two"
    raw = sdk.chat.completions.with_raw_response.create(model="promptops/duel@production", messages=[])
    assert raw.headers["x-promptops-version"] == "1"


@pytest.mark.parametrize(
    "model, error, code",
    [
        pytest.param("gpt-4o", openai.NotFoundError, "model_not_found", id="not-promptops"),
        pytest.param("promptops/nope", openai.NotFoundError, "prompt_not_found", id="unknown-prompt"),
        pytest.param("promptops/duel@v9", openai.NotFoundError, "version_not_found", id="no-version"),
        pytest.param(
            "promptops/ask", openai.UnprocessableEntityError, "invalid_variables", id="missing-variable"
        ),
    ],
)
def test_errors_in_openai_shape(sdk, model, error, code):
    with pytest.raises(error) as caught:
        sdk.chat.completions.create(model=model, messages=[])
    assert caught.value.code == code
    body: Any = caught.value.body
    assert set(body) == {"message", "type", "param", "code"}


@pytest.mark.parametrize(
    "reply, error, status",
    [
        pytest.param(Reply(status=500), openai.InternalServerError, 502, id="refuses"),
        pytest.param(Reply(status=429), openai.RateLimitError, 429, id="rate-limited"),
        pytest.param(Reply(hang=True), openai.InternalServerError, 504, id="hangs"),
        pytest.param(Reply(body=b"<html>"), openai.InternalServerError, 502, id="malformed"),
    ],
)
def test_upstream_failures(sdk, http, ops, fake_upstream, reply, error, status):
    fake_upstream.enqueue(reply)
    with pytest.raises(error) as caught:
        sdk.chat.completions.create(
            model="promptops/chat", messages=[], extra_body={"variables": {"question": "q"}}
        )
    assert caught.value.status_code == status
    [call] = recorded(ops, http)
    assert call.status != "ok"


def test_error_after_the_stream_started(sdk, fake_upstream):
    fake_upstream.enqueue(Reply(content="a b c d", break_after=2))
    with pytest.raises(openai.APIError) as caught:
        list(
            sdk.chat.completions.create(
                model="promptops/chat", messages=[], stream=True, extra_body={"variables": {"question": "q"}}
            )
        )
    assert "broke off" in caught.value.message


def test_serve_key_is_the_api_key(gateway_settings, ops, clock):
    from promptops.server.app import create_app

    key = ops.keys.create("serve")
    app = create_app(gateway_settings, ops=ops, clock=clock, background=False)
    with TestClient(app) as http:
        good = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=http)
        out = good.chat.completions.create(model="promptops/duel", messages=[])
        assert out.choices[0].message.content == "echo: one" or "echo: two"
        bad = openai.OpenAI(base_url="http://testserver/v1", api_key="wrong", http_client=http, max_retries=0)
        with pytest.raises(openai.AuthenticationError):
            bad.chat.completions.create(model="promptops/duel", messages=[])


def test_complete_route(http):
    r = http.post("/v1/prompts/ask/complete", json={"variables": {"question": "q"}})
    assert r.status_code == 200, r.text
    body = r.json()
    assert set(body) == {
        "decision_id",
        "prompt",
        "version",
        "variant",
        "experiment_id",
        "model",
        "output",
        "finish_reason",
        "usage",
        "cost_usd",
        "latency_ms",
        "cache",
    }
    assert body["output"] == {"role": "assistant", "content": "echo: q"}
    r = http.post("/v1/prompts/ask/complete", json={"variables": {"question": "q"}})
    assert r.json()["cache"] == "hit" and r.json()["cost_usd"] == 0.0
    r = http.post("/v1/prompts/ask/complete", json={"variables": {}, "cache": "sometimes"})
    assert r.status_code == 422 and r.json()["error"]["code"] == "invalid_input"
    r = http.post("/v1/prompts/nope/complete", json={})
    assert r.status_code == 404 and r.json()["error"]["code"] == "prompt_not_found"


def test_a_message_whose_content_is_not_text_is_refused_before_the_upstream(http):
    for content in ({"a": 1}, 5, True):
        r = http.post(
            "/v1/chat/completions",
            json={
                "model": "promptops/ask",
                "messages": [{"role": "user", "content": content}],
                "variables": {"question": "q"},
            },
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "invalid_input"
        assert r.json()["error"]["param"] == "messages"
    ok = [
        {"role": "user", "content": [{"type": "text", "text": "hi"}]},
        {"role": "assistant", "content": None},
    ]
    r = http.post(
        "/v1/chat/completions",
        json={"model": "promptops/ask", "messages": ok, "variables": {"question": "q"}},
    )
    assert r.status_code == 200, r.text


def test_a_body_that_is_not_json_says_why(http):
    bodies = {
        b'{"model": "promptops/ask", "user": "\\ud800"}': "no low surrogate in string",
        b'{"model": "promptops/ask", "x": ' + b"[" * 2000 + b"]" * 2000 + b"}": "depth limit exceeded",
    }
    for body, why in bodies.items():
        for url in ("/v1/chat/completions", "/v1/prompts/ask/complete"):
            r = http.post(url, content=body, headers={"content-type": "application/json"})
            assert r.status_code == 422, r.text
            assert r.json()["error"]["message"].startswith(f"the body is not valid JSON: {why}"), r.text
    r = http.post("/v1/chat/completions", json=[1])
    assert r.json()["error"]["message"] == "the body must be a JSON object", r.text


DEEP: list = []
for _ in range(300):
    DEEP = [DEEP]

CHAT_BODY_ERRORS = [
    ("model", 123, "model", "model must be a string, got a number: promptops/NAME"),
    ("model", None, "model", "model is required: promptops/NAME, promptops/NAME@LABEL or promptops/NAME@vN"),
    ("model", ["promptops/ask"], "model", "model must be a string, got a list"),
    (
        "messages",
        "x",
        "messages",
        'messages must be a list of chat messages ({"role": ..., "content": ...}), got a string',
    ),
    ("messages", {"role": "user"}, "messages", "messages must be a list of chat messages"),
    ("messages", 5, "messages", "messages must be a list of chat messages"),
    ("messages", False, "messages", "messages must be a list of chat messages"),
    ("messages", ["hi"], "messages", "messages[0] must be an object with a role among"),
    ("variables", "x", "variables", "variables must be an object, got a string"),
    ("variables", [1], "variables", "variables must be an object, got a list"),
    ("user", 5, "user", "user must be a string of at most 256 characters, got a number"),
    ("user", "u" * 300, "user", "user must be a string of at most 256 characters, got 300 characters"),
    ("stream", "yes", "stream", "stream must be true or false, got a string"),
    ("stream", 1, "stream", "stream must be true or false, got a number"),
    ("stream_options", "x", "stream_options", "stream_options must be an object, got a string"),
    (
        "stream_options",
        {"include_usage": "yes"},
        "stream_options.include_usage",
        "stream_options.include_usage must be true or false, got a string",
    ),
    ("cache", 5, "cache", 'cache must be "refresh" or "bypass", got a number'),
    ("cache", "sometimes", "cache", """cache must be "refresh" or "bypass", got 'sometimes'"""),
    ("temperature", "hot", "temperature", "temperature must be a number, got a string"),
    ("temperature", True, "temperature", "temperature must be a number, got true"),
    ("top_p", [1], "top_p", "top_p must be a number, got a list"),
    ("max_tokens", 1.5, "max_tokens", "max_tokens must be an integer, got a number"),
    ("max_completion_tokens", "9", "max_completion_tokens", "max_completion_tokens must be an integer"),
    ("n", "2", "n", "n must be an integer, got a string"),
    ("seed", {}, "seed", "seed must be an integer, got an object"),
    ("stop", 5, "stop", "stop must be a string or a list of strings, got a number"),
    ("stop", ["a", 1], "stop", "stop must be a string or a list of strings, got a list"),
    ("tools", {}, "tools", "tools must be a list, got an object"),
    ("tool_choice", 5, "tool_choice", "tool_choice must be a string or an object, got a number"),
    ("response_format", "json", "response_format", "response_format must be an object, got a string"),
    ("logprobs", "yes", "logprobs", "logprobs must be true or false, got a string"),
    ("logit_bias", [], "logit_bias", "logit_bias must be an object, got a list"),
    ("presence_penalty", "0", "presence_penalty", "presence_penalty must be a number, got a string"),
    ("user", "a\x00b", "user", "user must not contain NUL characters"),
    # A pinned model is looked up in the database, which refuses such text (PostgreSQL's 500).
    ("model", "promptops/ask@x\x00y", "model", "model must not contain NUL characters"),
    ("model", "promptops/a\x00sk@v1", "model", "model must not contain NUL characters"),
    # Deeper than the JSON writer of the upstream request goes (it stopped with a plain-text 500).
    ("tools", DEEP, "tools", "tools nests deeper than 128 levels"),
    ("response_format", {"a": DEEP}, "response_format", "response_format nests deeper than 128"),
    ("x_vendor_field", DEEP, "x_vendor_field", "x_vendor_field nests deeper than 128 levels"),
    ("messages", [{"role": "user", "content": DEEP}], "messages", "messages[0] nests deeper than 128"),
]


def _no_decision_and_no_call(http: TestClient, ops, fake_upstream) -> None:  # type: ignore[no-untyped-def]
    http.app.state.runtime.writer.flush()
    with ops.ctx.tx() as s:
        assert s.scalar(select(func.count()).select_from(DecisionRow)) == 0
    assert fake_upstream.count == 0


@pytest.mark.parametrize(
    "field, value, param, message",
    [pytest.param(*case, id=f"{case[0]}={str(case[1])[:12]}") for case in CHAT_BODY_ERRORS],
)
def test_a_chat_body_field_of_the_wrong_type_is_a_422_that_says_what_is_expected(
    http, ops, fake_upstream, field, value, param, message
):
    body = {"model": "promptops/ask", "messages": [], "variables": {"question": "q"}, field: value}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["type"], error["param"]) == ("invalid_input", "invalid_request_error", param)
    assert error["message"].startswith(message), error["message"]
    _no_decision_and_no_call(http, ops, fake_upstream)


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("variables", "x", "variables must be an object, got a string"),
        ("unit_id", 7, "unit_id must be a string of at most 256 characters, got a number"),
        ("messages", "x", "messages must be a list of chat messages"),
        ("messages", {}, "messages must be a list of chat messages"),
        ("cache", True, 'cache must be "refresh" or "bypass", got true'),
        ("messages", [{"role": "user", "content": DEEP}], "messages[0] nests deeper than 128 levels"),
    ],
)
def test_a_complete_body_field_of_the_wrong_type_is_a_422(http, ops, fake_upstream, field, value, message):
    r = http.post("/v1/prompts/ask/complete", json={"variables": {"question": "q"}, field: value})
    assert r.status_code == 422, r.text
    error = r.json()["error"]
    assert error["code"] == "invalid_input" and error["message"].startswith(message), error
    _no_decision_and_no_call(http, ops, fake_upstream)


# --- a live server: the SDK over real HTTP, and a client that disconnects mid-stream ---------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture
def live(gateway_settings, ops) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """A uvicorn server over the app; its base URL."""
    import uvicorn

    from promptops.server.app import create_app

    port = _free_port()
    settings = dataclasses.replace(gateway_settings, port=port)
    app = create_app(settings, ops=ops, background=False)
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline, "server did not start"
        time.sleep(0.01)
    yield f"http://127.0.0.1:{port}"
    server.should_exit = True
    thread.join(10)


def test_live_stream_and_disconnect(live, ops, fake_upstream):
    client = openai.OpenAI(base_url=live + "/v1", api_key="unused", max_retries=0)
    chunks = list(
        client.chat.completions.create(
            model="promptops/chat", messages=[], stream=True, extra_body={"variables": {"question": "a b"}}
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "echo: a b"

    fake_upstream.enqueue(Reply(content="one two three four five", stall_after=2))
    with httpx.stream(
        "POST",
        live + "/v1/chat/completions",
        json={"model": "promptops/chat", "messages": [], "stream": True, "variables": {"question": "q"}},
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                json.loads(line[5:])
                break
    assert fake_upstream.left.wait(60), "the upstream request was not cancelled"
    deadline = time.monotonic() + 10
    while True:
        with ops.ctx.tx() as s:
            statuses = sorted(s.scalars(select(CallRow.status)))
        if statuses == ["cancelled", "ok"] or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    assert statuses == ["cancelled", "ok"]


def test_experiment_read_has_per_arm_usage(http, ops):
    for i in range(6):
        assert http.post("/v1/prompts/duel/complete", json={"unit_id": f"u{i}"}).status_code == 200
    assert len(recorded(ops, http, 6)) == 6
    [exp] = http.get("/v1/experiments").json()["experiments"]
    arms = http.get(f"/v1/experiments/{exp['id']}").json()["arms"]
    assert sum(a["calls"] for a in arms) == 6
    for a in arms:
        assert a["calls"] == a["decisions"]
        if a["calls"]:
            assert a["error_rate"] == 0.0 and a["cost_usd_total"] > 0
            assert a["latency_ms_p95"] >= a["latency_ms_p50"] > 0
        else:
            assert a["cost_usd_mean"] is None and a["latency_ms_p50"] is None


def test_dashboard_shows_per_arm_usage(http, ops):
    for i in range(4):
        assert http.post("/v1/prompts/duel/complete", json={"unit_id": f"u{i}"}).status_code == 200
    recorded(ops, http, 4)
    [exp] = http.get("/v1/experiments").json()["experiments"]
    page = http.get(f"/experiments/{exp['id']}", headers={"accept": "text/html"})
    assert page.status_code == 200
    assert "Calls through the gateway" in page.text and "Cost per 1,000 calls" in page.text


TWO = """\
name: two
model: {name: fake-model, temperature: 0}
variables:
  q: {type: string, required: true}
messages:
  - {role: user, content: "{{ q }}"}
variants:
  b:
    messages:
      - {role: user, content: "B {{ q }}"}
"""


def test_production_move_warms_the_new_version(tmp_path, gateway_settings, ops, clock, fake_upstream):
    from promptops.server.app import create_app

    (tmp_path / "prompts" / "two.yaml").write_text(TWO)
    ops.sync()
    config = gateway_settings.config_path
    config.write_text(config.read_text() + "cache: {warm_on_promote: 2}\n")
    app = create_app(gateway_settings, ops=ops, clock=clock, background=False)
    with TestClient(app) as http:
        for q in ("x", "x", "x", "y", "y", "z"):
            assert http.post("/v1/prompts/two/complete", json={"variables": {"q": q}}).status_code == 200
        recorded(ops, http, 6)
        before = fake_upstream.count
        assert http.post("/v1/prompts/two/labels/production", json={"version": 2}).status_code == 200
        deadline = time.monotonic() + 10
        while fake_upstream.count < before + 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        warmed = [r.json()["messages"][-1]["content"] for r in fake_upstream.requests[before:]]
        assert sorted(warmed) == ["B x", "B y"]  # the two most frequent requests
        out = http.post("/v1/prompts/two/complete", json={"variables": {"q": "x"}}).json()
        assert out["version"] == 2 and out["cache"] == "hit"


@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/prompts/ask/complete"])
def test_a_gateway_body_that_never_finishes_gets_408(monkeypatch, path):
    """The gateway's own ASGI layer bounds the body's time as every other route does."""
    import asyncio

    from promptops.server import metrics as metrics_module
    from promptops.server.openai import GatewayPath

    monkeypatch.setattr(metrics_module, "BODY_SECONDS", 0.01)
    sent: list[dict[str, Any]] = []
    first = [True]

    async def slow() -> dict[str, Any]:
        if first[0]:  # part of the body, then nothing more
            first[0] = False
            return {"type": "http.request", "body": b'{"mod', "more_body": True}
        await asyncio.Event().wait()
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    runtime = type("Runtime", (), {"metrics": metrics_module.Metrics()})()
    layer = GatewayPath(None, runtime=runtime, max_body=1000)
    scope = {"type": "http", "method": "POST", "path": path, "headers": []}
    asyncio.run(layer(scope, slow, send))
    assert sent[0]["status"] == 408
    assert json.loads(sent[1]["body"])["error"]["code"] == "request_timeout"


@pytest.mark.parametrize(
    ("path", "body", "shape"),
    [
        (
            "/v1/chat/completions",
            {"model": "promptops/ask", "messages": [], "variables": {"question": "q"}},
            "openai",
        ),
        ("/v1/prompts/ask/complete", {"variables": {"question": "q"}}, "promptops"),
    ],
)
def test_an_unexpected_gateway_failure_is_a_json_500(http, monkeypatch, path, body, shape):
    async def broken(req: Any, **options: Any) -> Any:
        raise RuntimeError("a bug, with a detail that stays in the log")

    monkeypatch.setattr(http.app.state.runtime.gateway, "complete", broken)
    r = http.post(path, json=body)
    assert r.status_code == 500 and r.headers["content-type"] == "application/json"
    error = r.json()["error"]
    assert error["code"] == "internal_error" and "detail" not in error["message"]
    if shape == "openai":
        assert error["type"] == "api_error" and error["param"] is None


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/chat/completions", {"model": "promptops/ask", "messages": [], "variables": {"question": "q"}}),
        ("/v1/prompts/ask/complete", {"variables": {"question": "q"}}),
    ],
)
def test_a_call_is_recorded_after_its_answer_even_when_sending_fails(http, ops, fake_upstream, path, body):
    """The gateway's own layer records a call once its answer is sent (the caller does not wait
    for the record), and records it when the send fails too; the call and its decision count
    in the metrics, as a serve's decision does."""
    app = http.app
    raw = json.dumps(body).encode()
    for cached in (False, True):  # a miss, then a hit of the same inputs

        async def receive(raw: bytes = raw) -> dict[str, Any]:
            return {"type": "http.request", "body": raw, "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body":
                raise OSError("the client is gone")

        with pytest.raises(OSError):  # run on the app's own loop, as the TestClient does
            http.portal.call(app, post_scope(path), receive, send)
        rows = recorded(ops, http, 1 + cached)
        assert [r.cache for r in rows] == ["miss", "hit"][: 1 + cached]
    assert fake_upstream.count == 1
    text = http.get("/metrics").text
    assert 'promptops_decisions_total{experiment="",prompt="ask",version="1"} 2.0' in text
    assert 'cache="hit",model="fake-model",provider="fake",status="ok"} 1.0' in text


SURROGATE_ANSWER = (
    b'{"id": "x", "object": "chat.completion", "choices": [{"index": 0, "message": {"role": "assistant",'
    b' "content": "a\\ud800b"}, "finish_reason": "stop"}],'
    b' "usage": {"prompt_tokens": 1, "completion_tokens": 1}}'
)
SURROGATE_EVENTS = (
    b'data: {"choices": [{"index": 0, "delta": {"role": "assistant", "content": "a\\ud800b"}}]}\n\n',
    b'data: {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}\n\n',
    b"data: [DONE]\n\n",
)


def test_an_answer_with_a_lone_surrogate_is_answered_and_recorded(http, ops, fake_upstream):
    """A provider's \\ud800 escape made the answer unencodable: /complete answered 500 and a
    stream broke off after its headers. It now reads as U+FFFD everywhere."""
    fake_upstream.enqueue(Reply(body=SURROGATE_ANSWER))
    r = http.post("/v1/prompts/ask/complete", json={"variables": {"question": "s1"}})
    assert r.status_code == 200, r.text
    assert r.json()["output"]["content"] == "a\ufffdb"
    fake_upstream.enqueue(Reply(events=SURROGATE_EVENTS))
    body = {"model": "promptops/ask", "messages": [], "variables": {"question": "s2"}, "stream": True}
    r = http.post("/v1/chat/completions", json=body)
    assert r.status_code == 200 and r.text.endswith("data: [DONE]\n\n"), r.text
    assert "a\ufffdb" in r.content.decode("utf-8")
    outputs = [c.output["content"] for c in recorded(ops, http, count=2)]
    assert sorted(outputs) == ["a\ufffdb", "a\ufffdb"]


def test_gateway_answers_have_starlettes_heads():
    from starlette.responses import Response

    from promptops.server.openai import JSONAnswer, SSEResponse

    headers = {"x-promptops-decision-id": "d1", "WWW-Authenticate": "Bearer"}
    for status in (200, 401, 502):
        ours = JSONAnswer(b'{"a":1}', status, headers)
        theirs = Response(b'{"a":1}', status_code=status, media_type="application/json", headers=headers)
        assert (ours.status_code, ours.body, ours.raw_headers) == (
            theirs.status_code,
            theirs.body,
            theirs.raw_headers,
        )
    assert JSONAnswer(b"{}").raw_headers == Response(b"{}", media_type="application/json").raw_headers
    # The x-promptops-* headers, given encoded, land where starlette puts given headers.
    given = {"x-promptops-decision-id": "d1", "x-promptops-cache": "hit"}
    encoded = [(k.encode(), v.encode()) for k, v in given.items()]
    reference = Response(b"{}", media_type="application/json", headers=given)
    assert JSONAnswer(b"{}", raw_headers=encoded).raw_headers == reference.raw_headers
    sse = SSEResponse(None, [(b"x-promptops-cache", b"hit")])  # type: ignore[arg-type]
    reference = Response(
        None,
        media_type="text/event-stream",
        headers={"x-promptops-cache": "hit", "cache-control": "no-cache", "x-accel-buffering": "no"},
    )
    assert sse.raw_headers == [(k, v) for k, v in reference.raw_headers if k != b"content-length"]


class _EndlessStream:
    """A provider's stream that never ends, for the sending side of `SSEResponse`."""

    def __init__(self) -> None:
        self.closed = False
        self.started = None  # an asyncio.Event, made on the running loop

    def replay(self) -> None:
        return None

    async def __aiter__(self) -> Any:
        import asyncio

        yield b"data: {}\n\n"
        self.started.set()
        await asyncio.Event().wait()

    async def aclose(self) -> None:
        self.closed = True


@pytest.mark.parametrize("how", ["the caller leaves", "the server stops"])
def test_a_stream_ends_when_the_caller_leaves_and_is_cancelled_by_a_shutdown(how):
    """The caller leaving ends the stream quietly; a cancellation from outside (a server
    shutting down) is not swallowed. The stream is closed (the upstream call with it) either way."""
    import asyncio

    from promptops.server.openai import SSEResponse

    async def go() -> tuple[BaseException | None, _EndlessStream, list[Any]]:
        stream = _EndlessStream()
        stream.started = asyncio.Event()
        gone = asyncio.Event()
        sent: list[Any] = []

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        response = SSEResponse(stream, [])  # type: ignore[arg-type]
        task = asyncio.ensure_future(response({}, receive, send))
        await stream.started.wait()
        if how == "the caller leaves":
            gone.set()
        else:
            task.cancel()
        try:
            await task
        except BaseException as exc:  # noqa: BLE001 - what the test looks at
            return exc, stream, sent
        return None, stream, sent

    error, stream, sent = asyncio.run(go())
    assert stream.closed and sent[1]["body"] == b"data: {}\n\n"
    if how == "the caller leaves":
        assert error is None
    else:
        assert isinstance(error, asyncio.CancelledError)


class _SlowToCloseChat:
    """A provider's stream that never ends and takes a while to close (its outcome is known as
    soon as closing starts, as `ChatStream.aclose` sets it before closing the connection)."""

    buffered = 0

    def __init__(self) -> None:
        import asyncio

        from promptops.providers import CallResult, CallStatus

        self.result: Any = None
        self.closing = asyncio.Event()
        self._cancelled = CallResult("fake", "fake-model", CallStatus.CANCELLED)

    def __aiter__(self) -> Any:
        return self

    async def __anext__(self) -> Any:
        import asyncio

        await asyncio.Event().wait()

    async def aclose(self) -> None:
        import asyncio

        if self.result is None:
            self.result = self._cancelled
            self.closing.set()
            await asyncio.Event().wait()  # still closing when the caller leaves


def test_a_stream_closing_on_a_shutdown_is_recorded_when_the_caller_leaves_meanwhile():
    """A shutdown cancels a stream; while its upstream closes, the caller leaves and the watcher
    cancels the stream again. The call is still recorded (and its flight ends, or later calls of
    the key would wait for it forever), and the shutdown's cancellation is not swallowed."""
    import asyncio
    from types import SimpleNamespace

    from promptops.providers import ChatRequest
    from promptops.server.openai import SSEResponse
    from promptops.services.calls import CacheResult
    from promptops.services.completions import CompletionRequest
    from promptops.services.completionstream import CompletionStream

    recorded_calls: list[Any] = []

    class Gateway:
        cache = SimpleNamespace(put_soon=lambda *a: None)

        def cache_entry(self, result: Any, decision: Any) -> None:
            return None

        def record_call(self, *args: Any, **kw: Any) -> None:
            recorded_calls.append(kw["result"].status)

    async def go() -> tuple[BaseException | None, bool]:
        chat = _SlowToCloseChat()
        flight: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        stream = CompletionStream(
            Gateway(),  # type: ignore[arg-type]
            CompletionRequest(name="chat"),
            SimpleNamespace(id="d1"),  # type: ignore[arg-type]
            ChatRequest("fake", {"model": "fake-model"}),
            "k",
            0.0,
            CacheResult.MISS,
            chat=chat,
            flight=SimpleNamespace(done=lambda entry: flight.set_result(entry)),
        )
        gone = asyncio.Event()
        started = asyncio.Event()

        async def receive() -> dict[str, Any]:
            await gone.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            started.set()

        task = asyncio.ensure_future(SSEResponse(stream, [])({}, receive, send))
        await started.wait()
        task.cancel()  # the server stops
        await chat.closing.wait()
        gone.set()  # and the caller leaves while the upstream closes
        try:
            await asyncio.wait_for(task, 10)
        except asyncio.CancelledError as exc:
            return exc, flight.done()
        return None, flight.done()

    error, flight_done = asyncio.run(go())
    assert recorded_calls == ["cancelled"] and flight_done
    assert isinstance(error, asyncio.CancelledError)


def test_a_stream_through_the_routes_outlives_the_body_deadline(http, ops, fake_upstream, monkeypatch):
    """Under a `root_path` the gateway's routes answer, behind the middleware that bounds how
    long a body may take: the stream's watch for the caller leaving read past that deadline as
    the caller gone, and cut every stream that outlived it (recorded `cancelled`)."""
    import asyncio

    from promptops.server import metrics as metrics_module

    monkeypatch.setattr(metrics_module, "BODY_SECONDS", 0.0)  # past as soon as the body is in
    raw = json.dumps(
        {"model": "promptops/chat", "messages": [], "variables": {"question": "a b c"}, "stream": True}
    ).encode()
    first = [True]
    watched: list[asyncio.Event] = []

    async def receive() -> dict[str, Any]:
        if first[0]:
            first[0] = False
            return {"type": "http.request", "body": raw, "more_body": False}
        watched[0].set()
        await asyncio.Event().wait()  # the caller stays
        raise AssertionError

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)
        if message["type"] == "http.response.start":
            # The stream goes on only once the watch for the caller leaving waits, and a few
            # turns of the loop later (a deadline already past fires on the next one).
            watched.append(asyncio.Event())
            await watched[0].wait()
            for _ in range(10):
                await asyncio.sleep(0)

    http.portal.call(http.app, post_scope("/x/v1/chat/completions", root_path="/x"), receive, send)
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    assert sent[0]["status"] == 200 and body.endswith(b"data: [DONE]\n\n"), body
    assert [r.status for r in recorded(ops, http)] == ["ok"]
