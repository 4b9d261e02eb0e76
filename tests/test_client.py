"""The SDK against a real uvicorn server on a loopback port, plus retries over a mock transport."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn

from promptops import errors
from promptops.client import AsyncClient, Client
from promptops.config import Settings
from promptops.results import Arm, Experiment, Message, Prompt, RenderResult, ServeResult, Version
from promptops.server.app import create_app
from promptops.server.runtime import server_ops
from promptops.services.facade import PromptOps
from tests.samples import PLAIN, TRIAGE


@pytest.fixture
def database_url(tmp_path: Path) -> str:
    """SQLite only: the live server runs in this process over a temporary file."""
    return f"sqlite:///{tmp_path / 'promptops.db'}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """A uvicorn server in a thread, on a free loopback port."""

    def __init__(self, settings: Settings, ops: PromptOps) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        # The app checks Host against the address it is bound to.
        bound = replace(settings, host="127.0.0.1", port=self.port)
        config = uvicorn.Config(
            create_app(bound, ops=ops), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def start(self) -> None:
        self.thread.start()
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        raise RuntimeError("the server did not start")

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(20)


@pytest.fixture
def ops(settings: Settings, prompts_dir: Path) -> Iterator[PromptOps]:
    """Services over the database, with the example prompts synced."""
    (prompts_dir / "triage.yaml").write_text(TRIAGE)
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    service = server_ops(settings)
    service.sync()
    yield service
    service.close()


@pytest.fixture
def live(settings: Settings, ops: PromptOps) -> Iterator[LiveServer]:
    """A running server over the synced database."""
    server = LiveServer(settings, ops)
    server.start()
    yield server
    server.stop()


@pytest.fixture
def client(live: LiveServer) -> Iterator[Client]:
    """An SDK client of the live server with a short cache TTL and quick retries."""
    with Client(live.url, cache_ttl=0.2, retries=1, backoff=0.01) as c:
        yield c


def wait_for(predicate: Callable[[], bool], *, seconds: float = 10.0) -> None:
    """Poll until the predicate holds (waiting for a refresh interval, not timing anything)."""
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.05)


def test_serve_feedback_duplicate(client, ops):
    out = client.serve("triage", {"message": "where is my parcel"}, unit_id="u1")
    assert out["prompt"] == "triage" and out["fallback"] is False, out
    assert out["decision_id"] and out["experiment_id"] is not None, out
    assert any("where is my parcel" in m["content"] for m in out["messages"]), out
    assert client.feedback(out["decision_id"], 1) == "recorded"
    assert client.feedback(out["decision_id"], 1) == "duplicate"
    assert client.feedback(out["decision_id"], 0.5, metric="latency_ms") == "recorded"
    exp = ops.experiments.get(out["experiment_id"])
    arm = next(a for a in exp.arms if a.version == out["version"])
    assert arm.decisions == 1 and arm.feedback == 1 and arm.reward_sum == 1.0, exp


def test_render_and_get_prompt(client):
    out = client.render("plain", {"topic": "{{ 7*7 }}"})
    assert out["text"] == "Write about {{ 7*7 }}." and out["version"] == 1, out
    assert client.render("triage", {"message": "hi"}, version=2)["variant"] == "terse"
    info = client.get_prompt("triage")
    assert info["labels"] == {"production": 1}, info
    assert [v["number"] for v in info["versions"]] == [2, 1]


@pytest.mark.parametrize(
    ("call", "exc", "needle"),
    [
        pytest.param(lambda c: c.serve("nope", {}), errors.PromptNotFound, "nope", id="prompt"),
        pytest.param(lambda c: c.serve("plain", {}), errors.VariableError, "topic", id="missing"),
        pytest.param(
            lambda c: c.serve("plain", {"topic": "a", "x": 1}),
            errors.VariableError,
            "not declared",
            id="undeclared",
        ),
        pytest.param(
            lambda c: c.render("plain", {"topic": "a"}, version=9),
            errors.VersionNotFound,
            "version 9",
            id="version",
        ),
        pytest.param(
            lambda c: c.render("plain", {"topic": "a"}, label="staging"),
            errors.LabelNotFound,
            "staging",
            id="label",
        ),
        pytest.param(
            lambda c: c.feedback("d_forged.sig", 1), errors.DecisionNotFound, "d_forged", id="decision"
        ),
        pytest.param(
            lambda c: c.feedback(c.serve("triage", {"message": "m"})["decision_id"], 0.5),
            errors.InvalidInput,
            "0 or 1",
            id="reward",
        ),
        pytest.param(lambda c: c.get_prompt("nope"), errors.PromptNotFound, "nope", id="get"),
    ],
)
def test_errors_are_mapped(client, call, exc, needle):
    with pytest.raises(exc) as info:
        call(client)
    assert needle in str(info.value), str(info.value)


def test_auth_errors(settings, ops):
    key = ops.keys.create("serve")
    server = LiveServer(settings, ops)
    server.start()
    try:
        with Client(server.url) as anonymous, pytest.raises(errors.AuthError) as info:
            anonymous.render("plain", {"topic": "a"})
        assert "API key" in str(info.value) and not isinstance(info.value, errors.Forbidden)
        with (
            Client(server.url, api_key="po_serve_wrong") as wrong,
            pytest.raises(errors.AuthError, match="invalid API key"),
        ):
            wrong.serve("plain", {"topic": "a"})
        with Client(server.url, api_key=key) as good:
            assert good.serve("plain", {"topic": "a"})["version"] == 1
    finally:
        server.stop()


def test_fallback_when_server_stops(live, client):
    served = client.serve("triage", {"message": "refund please"})
    production = client.render("triage", {"message": "refund please"})
    assert served["fallback"] is False and production["version"] == 1
    live.stop()
    out = client.serve("triage", {"message": "refund please"})
    assert out["fallback"] is True and out["decision_id"] is None, out
    assert out["experiment_id"] is None
    assert out.rendered() == production
    with pytest.raises(errors.VariableError):
        client.serve("triage", {})  # rendered locally, with the same variable checks
    with pytest.raises(errors.Unavailable):
        client.serve("plain", {"topic": "never served, so nothing is cached"})
    with pytest.raises(errors.Unavailable):
        client.feedback(served["decision_id"], 1)  # feedback never falls back
    with pytest.raises(errors.Unavailable):
        client.render("triage", {"message": "x"})


def test_no_stale_version_after_label_move(live, client, settings, prompts_dir):
    assert client.serve("plain", {"topic": "x"})["version"] == 1
    (prompts_dir / "plain.yaml").write_text(PLAIN.replace("Write about", "Write a poem about"))
    other = PromptOps(settings)  # another process on the same database
    try:
        other.sync()
        other.registry.move_label("plain", 2, "production", actor="test")
    finally:
        other.close()
    # The server notices within its cache refresh interval; the client follows what it serves.
    wait_for(lambda: client.serve("plain", {"topic": "x"})["version"] == 2)
    live.stop()
    out = client.serve("plain", {"topic": "x"})
    assert out["fallback"] is True and out["version"] == 2, out
    assert out["text"] == "Write a poem about x."


def test_production_label_reread_during_experiment(live, client, ops):
    out = client.serve("triage", {"message": "m"})  # an arm; production is read from labels
    assert out["experiment_id"] is not None
    ops.registry.move_label("triage", 2, "production", actor="test")
    time.sleep(0.3)  # past the client's cache_ttl, so the next serve re-reads the labels
    client.serve("triage", {"message": "m"})
    live.stop()
    out = client.serve("triage", {"message": "m"})
    assert out["fallback"] is True and out["version"] == 2 and out["variant"] == "terse", out


class Flaky:
    """A mock transport handler that fails `failures` times, then answers."""

    def __init__(self, failures: int, *, fail: Callable[[httpx.Request], httpx.Response]) -> None:
        self.failures = failures
        self.fail = fail
        self.calls = 0

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls += 1
        if self.calls <= self.failures:
            return self.fail(request)
        assert json.loads(request.content)["decision_id"] == "d_1"
        return httpx.Response(200, json={"status": "recorded"})


def _refuse(request: httpx.Request) -> httpx.Response:
    raise httpx.ConnectError("connection refused", request=request)


def _error(status: int, code: str, message: str) -> Callable[[httpx.Request], httpx.Response]:
    return lambda _: httpx.Response(status, json={"error": {"code": code, "message": message}})


@pytest.mark.parametrize(
    "fail",
    [
        pytest.param(_refuse, id="connect-error"),
        pytest.param(_error(503, "unavailable", "db down"), id="503"),
        pytest.param(_error(502, "bad_gateway", "proxy"), id="502"),
    ],
)
def test_retries_then_succeeds(fail):
    handler = Flaky(2, fail=fail)
    with Client("http://promptops.test", retries=3, backoff=0, transport=httpx.MockTransport(handler)) as c:
        assert c.feedback("d_1", 1) == "recorded"
    assert handler.calls == 3


def test_retries_give_up_with_unavailable():
    handler = Flaky(10, fail=_error(503, "unavailable", "database unreachable"))
    with (
        Client("http://promptops.test", retries=2, backoff=0, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(errors.Unavailable, match="database unreachable"),
    ):
        c.feedback("d_1", 1)
    assert handler.calls == 3


@pytest.mark.parametrize(
    ("status", "code", "exc"),
    [
        pytest.param(404, "decision_not_found", errors.DecisionNotFound, id="404"),
        pytest.param(422, "invalid_input", errors.InvalidInput, id="422"),
        pytest.param(401, "unauthorized", errors.AuthError, id="401"),
        pytest.param(403, "forbidden", errors.Forbidden, id="403"),
        pytest.param(409, "experiment_state", errors.ExperimentStateError, id="409"),
    ],
)
def test_client_errors_are_not_retried(status, code, exc):
    handler = Flaky(10, fail=_error(status, code, "the server's own words"))
    with (
        Client("http://promptops.test", retries=3, backoff=0, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(exc, match="the server's own words"),
    ):
        c.feedback("d_1", 1)
    assert handler.calls == 1


def test_serve_is_not_resent_after_a_read_timeout():
    calls = []

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        raise httpx.ReadTimeout("timed out", request=request)

    with (
        Client("http://promptops.test", retries=3, backoff=0, transport=httpx.MockTransport(handler)) as c,
        pytest.raises(errors.Unavailable),
    ):
        c.serve("plain", {"topic": "x"})
    assert len(calls) == 1  # the server may have recorded it: a resend would double the decision


def test_async_client(live):
    async def scenario() -> None:
        async with AsyncClient(live.url, cache_ttl=0.2, retries=1, backoff=0.01) as c:
            out = await c.serve("triage", {"message": "late delivery"}, unit_id="u9")
            assert out["decision_id"] and out["fallback"] is False, out
            assert await c.feedback(out["decision_id"], True) == "recorded"
            assert await c.feedback(out["decision_id"], True) == "duplicate"
            assert (await c.render("plain", {"topic": "t"}))["text"] == "Write about t."
            assert (await c.get_prompt("plain"))["labels"] == {"production": 1}
            with pytest.raises(errors.PromptNotFound):
                await c.serve("nope", {})
            await asyncio.to_thread(live.stop)
            fallback = await c.serve("plain", {"topic": "t"})
            assert fallback["fallback"] is True and fallback["text"] == "Write about t."

    asyncio.run(scenario())


@pytest.mark.parametrize(
    "status, code, cls",
    [
        (404, "prompt_not_found", "PromptNotFound"),
        (404, "decision_not_found", "DecisionNotFound"),
        (404, "key_not_found", "NotFound"),
        (422, "invalid_variables", "VariableError"),
        (413, "render_error", "RenderError"),
        (422, "unknown_metric", "InvalidInput"),
        (413, "payload_too_large", "InvalidInput"),
        (401, "unauthorized", "AuthError"),
        (403, "forbidden", "Forbidden"),
        (409, "conflict", "Conflict"),
        (409, "experiment_state", "ExperimentStateError"),
        (503, "unavailable", "Unavailable"),
        (418, "teapot", "PromptOpsError"),
    ],
)
def test_an_error_answer_becomes_its_exception(status, code, cls):
    import httpx

    from promptops import errors
    from promptops.client.wire import error_of as _error

    resp = httpx.Response(status, json={"error": {"code": code, "message": "said", "field": "f"}})
    exc = _error(resp, {"name": "p", "decision_id": "d"})
    assert type(exc) is getattr(errors, cls) and exc.message == "said" and str(exc) == "said"


def test_results_are_typed_and_frozen(client):
    out = client.serve("triage", {"message": "late parcel"}, unit_id="u5")
    assert isinstance(out, ServeResult) and isinstance(out.messages[0], Message), out
    assert out.decision_id == out["decision_id"] and out.fallback is False
    with pytest.raises(dataclasses.FrozenInstanceError):
        out.version = 9  # type: ignore[misc]
    with pytest.raises(KeyError):
        out["nope"]
    rendered = client.render("plain", {"topic": "t"})
    assert isinstance(rendered, RenderResult) and rendered.text == "Write about t."
    prompt = client.get_prompt("triage")
    assert isinstance(prompt, Prompt) and prompt.production == 1, prompt
    assert all(isinstance(v, Version) and len(v.content_hash) == 64 for v in prompt.versions)
    experiment = client.get_experiment(out.experiment_id)
    assert isinstance(experiment, Experiment) and experiment.status == "running", experiment
    assert [type(a) for a in experiment.arms] == [Arm, Arm] and experiment.arms[0].is_control
    assert sum(a.decisions for a in experiment.arms) == 1
    assert [x.id for x in client.list_experiments(prompt="triage")] == [experiment.id]
    assert client.list_experiments(prompt="plain", status="running") == []


def test_the_package_is_typed():
    import promptops

    assert (Path(promptops.__file__).parent / "py.typed").is_file()


def down_transport(calls: list[httpx.Request], state: dict[str, Any]) -> httpx.MockTransport:
    """A server that refuses connections while state["down"], then answers `state["answer"]`."""

    def handler(request: httpx.Request) -> httpx.Response:
        calls.append(request)
        if state["down"]:
            raise httpx.ConnectError("connection refused", request=request)
        return state["answer"](request)

    return httpx.MockTransport(handler)


def recorded(_: httpx.Request) -> httpx.Response:
    return httpx.Response(200, json={"status": "recorded"})


def test_fallback_dir_renders_main_when_the_server_was_never_reached(prompts_dir, caplog):
    (prompts_dir / "triage.yaml").write_text(TRIAGE)
    (prompts_dir / "broken.yaml").write_text("name: Broken Name\ntemplate: x\n")
    calls: list[httpx.Request] = []
    transport = down_transport(calls, {"down": True})
    with (
        caplog.at_level("WARNING", logger="promptops.client"),
        Client("http://promptops.test", retries=0, fallback_dir=prompts_dir, transport=transport) as c,
    ):
        out = c.serve("triage", {"message": "refund please"})
        assert out.fallback is True and out.decision_id is None and out.experiment_id is None
        assert (out.version, out.variant) == (None, "main"), out
        assert out.messages == (
            Message("system", "Answer with one category."),
            Message("user", "Text: refund please"),
        ), out
        with pytest.raises(errors.VariableError):
            c.serve("triage", {})
        with pytest.raises(errors.Unavailable):
            c.serve("broken", {})
    assert calls, "the server was asked first"
    assert any("broken.yaml:1" in r.getMessage() for r in caplog.records), caplog.text


def test_queued_feedback_is_sent_when_the_server_comes_back():
    calls: list[httpx.Request] = []
    state: dict[str, Any] = {"down": True, "answer": recorded}
    with Client(
        "http://promptops.test",
        retries=0,
        backoff=0,
        queue_feedback=True,
        transport=down_transport(calls, state),
    ) as c:
        assert c.feedback("d_1", 1) == "queued"
        asked = len(calls)
        assert c.feedback("d_2", 0, metric="csat") == "queued"
        assert c.feedback_pending == 2
        state["down"] = False
        assert c.flush_feedback(timeout=30) is True
        assert c.feedback_pending == 0 and c.feedback_dropped == 0
        sent = [json.loads(r.content) for r in calls[asked:] if r.url.path == "/v1/feedback"]
        assert sent[-2:] == [
            {"decision_id": "d_1", "reward": 1},
            {"decision_id": "d_2", "reward": 0, "metric": "csat"},
        ], sent
        assert c.feedback("d_3", 1) == "recorded"


def test_feedback_queue_is_bounded_and_never_drops_silently(caplog):
    calls: list[httpx.Request] = []
    state: dict[str, Any] = {"down": True, "answer": recorded}
    with caplog.at_level("WARNING", logger="promptops.client"):
        c = Client(
            "http://promptops.test",
            retries=0,
            backoff=0,
            queue_feedback=True,
            feedback_queue_size=2,
            flush_timeout=0,
            transport=down_transport(calls, state),
        )
        assert [c.feedback(f"d_{i}", 1) for i in range(3)] == ["queued"] * 3
        assert (c.feedback_pending, c.feedback_dropped) == (2, 1)
        assert "d_2" in caplog.text and "queue is full" in caplog.text, caplog.text
        c.close()  # the server is still down: what is left is counted and logged
    assert (c.feedback_pending, c.feedback_dropped) == (0, 3)
    assert "d_0" in caplog.text and "unreachable until close" in caplog.text, caplog.text
    with pytest.raises(errors.Unavailable):
        Client("http://promptops.test", retries=0, transport=down_transport([], state)).feedback(
            "d_9", 1
        )  # without queue_feedback, an outage is an error as before


def test_queued_feedback_the_server_refuses_is_dropped_and_logged(caplog):
    state: dict[str, Any] = {"down": True, "answer": _error(404, "decision_not_found", "no such")}
    with (
        caplog.at_level("WARNING", logger="promptops.client"),
        Client(
            "http://promptops.test",
            retries=0,
            backoff=0,
            queue_feedback=True,
            transport=down_transport([], state),
        ) as c,
    ):
        assert c.feedback("d_gone", 1) == "queued"
        state["down"] = False
        assert c.flush_feedback(timeout=30) is True
        assert c.feedback_dropped == 1
    assert "d_gone" in caplog.text and "refused by the server" in caplog.text, caplog.text


def test_async_client_queues_feedback_and_falls_back_to_files(prompts_dir):
    (prompts_dir / "plain.yaml").write_text(PLAIN)
    calls: list[httpx.Request] = []
    state: dict[str, Any] = {"down": True, "answer": recorded}

    async def scenario() -> None:
        async with AsyncClient(
            "http://promptops.test",
            retries=0,
            backoff=0,
            queue_feedback=True,
            fallback_dir=prompts_dir,
            transport=down_transport(calls, state),
        ) as c:
            out = await c.serve("plain", {"topic": "t"})
            assert out.fallback is True and out.text == "Write about t." and out.version is None
            assert await c.feedback("d_1", 1) == "queued"
            assert c.feedback_pending == 1
            state["down"] = False
            assert await c.flush_feedback(timeout=30) is True
            assert (c.feedback_pending, c.feedback_dropped) == (0, 0)
            assert await c.feedback("d_2", 1) == "recorded"
        bodies = [json.loads(r.content) for r in calls if r.url.path == "/v1/feedback"]
        assert bodies[-2:] == [{"decision_id": "d_1", "reward": 1}, {"decision_id": "d_2", "reward": 1}], (
            bodies
        )

    asyncio.run(scenario())


def test_async_close_counts_what_it_could_not_send(caplog):
    state: dict[str, Any] = {"down": True, "answer": recorded}

    async def scenario() -> AsyncClient:
        c = AsyncClient(
            "http://promptops.test",
            retries=0,
            backoff=0,
            queue_feedback=True,
            flush_timeout=0,
            transport=down_transport([], state),
        )
        assert await c.feedback("d_1", 1) == "queued"
        await c.close()
        return c

    with caplog.at_level("WARNING", logger="promptops.client"):
        c = asyncio.run(scenario())
    assert c.feedback_dropped == 1 and "d_1" in caplog.text, caplog.text


def test_the_sdk_doc_examples_run(settings, prompts_dir, tmp_path, monkeypatch, capsys):
    import re

    from promptops.promptfiles import example_prompt_text

    (prompts_dir / "summarize.yaml").write_text(example_prompt_text())
    service = server_ops(settings)
    service.sync()
    server = LiveServer(settings, service)
    server.start()
    monkeypatch.chdir(prompts_dir.parent)  # the examples' fallback_dir="prompts"
    doc = (Path(__file__).parent.parent / "docs" / "sdk.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", doc, flags=re.S)
    assert len(blocks) >= 6, blocks
    try:
        for block in blocks:
            code = block.replace("http://127.0.0.1:8000", server.url)
            exec(compile(code, "docs/sdk.md", "exec"), {"__name__": "docs"})  # noqa: S102
    finally:
        server.stop()
        service.close()
    out = capsys.readouterr().out
    assert "bad variables:" in out and "decision" in out, out


def test_feedback_queued_by_a_client_never_closed_is_reported_at_exit():
    script = (
        "from promptops import Client\n"
        "c = Client('http://127.0.0.1:9', retries=0, queue_feedback=True, flush_timeout=0)\n"
        "print(c.feedback('d_lost', 1))\n"
    )
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stdout == "queued\n", done
    assert "feedback for decision d_lost" in done.stderr and "dropped" in done.stderr, done


SERVED = {"prompt": "p", "version": 1, "variant": "main", "model": {}, "text": "Hi Ann."}
VERSION_1 = {
    "number": 1,
    "variant": "main",
    "content": {"template": "Hi {{ who }}.", "variables": {"who": {"type": "string", "required": True}}},
}


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_both_clients_keep_the_cache_warm_best_effort_and_fall_back_to_it(kind):
    # The operations are written once for both clients: a failed cache read never fails the serve
    # that triggered it, and the version read later is what the fallback renders.
    seen: list[str] = []
    state = {"versions": 0, "down": False}

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(f"{request.method} {request.url.path}")
        if state["down"]:
            raise httpx.ConnectError("connection refused", request=request)
        if request.url.path == "/v1/prompts/p/serve":
            return httpx.Response(200, json={**SERVED, "decision_id": "d_1", "experiment_id": None})
        state["versions"] += 1
        if state["versions"] == 1:
            return httpx.Response(503, json={"error": {"code": "unavailable", "message": "busy"}})
        return httpx.Response(200, json=VERSION_1)

    def serve_three_times(serve: Callable[[], Any]) -> list[Any]:
        first, second = serve(), serve()
        state["down"] = True
        return [first, second, serve()]

    if kind == "sync":
        with Client("http://promptops.test", retries=0, transport=httpx.MockTransport(handler)) as c:
            served = serve_three_times(lambda: c.serve("p", {"who": "Ann"}))
    else:

        async def scenario() -> list[Any]:
            async with AsyncClient(
                "http://promptops.test", retries=0, transport=httpx.MockTransport(handler)
            ) as c:
                out = [await c.serve("p", {"who": "Ann"}), await c.serve("p", {"who": "Ann"})]
                state["down"] = True
                return [*out, await c.serve("p", {"who": "Ann"})]

        served = asyncio.run(scenario())
    assert [s.decision_id for s in served] == ["d_1", "d_1", None], served
    assert served[2].fallback is True and (served[2].version, served[2].text) == (1, "Hi Ann.")
    assert seen == ["POST /v1/prompts/p/serve", "GET /v1/prompts/p/versions/1"] * 2 + [
        "POST /v1/prompts/p/serve"
    ], seen
