"""The gateway service: decisions, provider calls, the call record, errors and streams."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import select

from promptops import errors as e
from promptops.db.models import CallRow, DecisionRow
from promptops.services.calls import arm_usage
from promptops.services.completions import CompletionRequest, parse_model
from promptops.services.gateway import Gateway
from tests import fakeupstream
from tests.fakeupstream import FakeUpstream, Reply
from tests.samples import ASK, CHAT, DUEL

# Fixtures shared with other test modules.
fake_upstream = fakeupstream.fake_upstream

SECRET = "sk-test-4f1c9a77d2e0b5c3"

ELSEWHERE = """\
name: elsewhere
model: {name: fake-model, provider: nowhere}
messages:
  - {role: user, content: "hi"}
"""

KEYED = """\
name: keyed
model: {name: fake-model, provider: keyed}
messages:
  - {role: user, content: "hi"}
"""


def config(fake: FakeUpstream, *, timeout: float = 2.0) -> str:
    """A promptops.yaml pointing at the fake upstream."""
    return f"""\
default_provider: fake
providers:
  fake: {{base_url: "{fake.base_url}", max_retries: 0, timeout_seconds: {timeout},
          prices: {{fake-model: {{input_per_mtok: 1.0, output_per_mtok: 2.0}}}}}}
  keyed: {{base_url: "{fake.base_url}", max_retries: 0, api_key_env: GW_TEST_KEY}}
"""


@pytest.fixture
def make(tmp_path: Path, settings, ops, fake_upstream, monkeypatch):  # type: ignore[no-untyped-def]
    """Build a gateway over the fake upstream (options: store_io, timeout)."""
    monkeypatch.setenv("GW_TEST_KEY", SECRET)
    for name, text in (
        ("ask", ASK),
        ("chat", CHAT),
        ("duel", DUEL),
        ("elsewhere", ELSEWHERE),
        ("keyed", KEYED),
    ):
        (tmp_path / "prompts" / f"{name}.yaml").write_text(text)
    ops.sync()

    def build(*, store_io: bool = True, timeout: float = 2.0) -> Gateway:
        path = tmp_path / "promptops.yaml"
        path.write_text(config(fake_upstream, timeout=timeout))
        return Gateway.create(ops.serving, dataclasses.replace(settings, config_path=path, store_io=store_io))

    return build


def run(gateway: Gateway, coro: Any) -> Any:
    async def go() -> Any:
        try:
            return await coro
        finally:
            await gateway.aclose()

    return asyncio.run(go())


def calls(ops) -> list[CallRow]:  # type: ignore[no-untyped-def]
    with ops.ctx.tx() as s:
        rows = list(s.scalars(select(CallRow).order_by(CallRow.created_at)))
        s.expunge_all()
    return rows


def ask(question: str = "why?", **options: Any) -> CompletionRequest:
    return CompletionRequest(name="ask", variables={"question": question}, **options)


def test_complete_records_decision_and_call(make, ops, fake_upstream):
    gw = make()
    out = run(gw, gw.complete(ask()))
    body = out.payload()
    assert body["output"] == {"role": "assistant", "content": "echo: why?"}
    assert body["cache"] == "miss" and body["prompt"] == "ask" and body["version"] == 1
    assert body["usage"]["total_tokens"] > 0 and body["cost_usd"] > 0
    sent = fake_upstream.requests[0].json()
    assert sent["model"] == "fake-model" and sent["temperature"] == 0
    assert sent["messages"][-1] == {"role": "user", "content": "why?"}
    [call] = calls(ops)
    assert call.decision_id == body["decision_id"] and call.status == "ok"
    assert call.input_per_mtok == 1.0 and call.output_per_mtok == 2.0
    assert call.variables == {"question": "why?"} and call.output["content"] == "echo: why?"
    with ops.ctx.tx() as s:
        assert s.get(DecisionRow, body["decision_id"]) is not None


def test_store_io_off_keeps_no_variables_or_output(make, ops):
    gw = make(store_io=False)
    run(gw, gw.complete(ask()))
    [call] = calls(ops)
    assert call.variables is None and call.output is None and call.prompt_tokens


def test_caller_messages_follow_the_rendered_ones(make, fake_upstream):
    gw = make()
    conversation = [{"role": "assistant", "content": "what?"}, {"role": "user", "content": "more"}]
    run(gw, gw.complete(ask(messages=conversation)))
    assert fake_upstream.requests[0].json()["messages"][-2:] == conversation


def test_version_settings_win_over_the_callers(make, fake_upstream):
    gw = make()
    run(gw, gw.complete(ask(extra={"temperature": 1.5, "seed": 7})))
    sent = fake_upstream.requests[0].json()
    assert sent["temperature"] == 0 and sent["seed"] == 7


@pytest.mark.parametrize(
    "model, expected",
    [
        pytest.param("promptops/ask", ("ask", None, None), id="routed"),
        pytest.param("promptops/ask@v2", ("ask", 2, None), id="version"),
        pytest.param("promptops/ask@staging", ("ask", None, "staging"), id="label"),
    ],
)
def test_parse_model(model, expected):
    assert parse_model(model) == expected


@pytest.mark.parametrize("model", ["gpt-4o", "promptops/", "promptops/ask@", 3, None])
def test_parse_model_refuses_others(model):
    with pytest.raises(e.ModelNotFound):
        parse_model(model)


def test_pinned_version_skips_the_experiment(make, ops):
    gw = make()
    out = run(gw, gw.complete(CompletionRequest(name="duel", version=2)))
    assert out.decision.token.experiment_id is None and out.decision.rendered.version == 2
    other = make()
    with pytest.raises(e.VersionNotFound):
        run(other, other.complete(CompletionRequest(name="duel", version=9)))


def test_bad_input_makes_no_call(make, ops, fake_upstream):
    gw = make()
    with pytest.raises(e.PromptNotFound):
        run(gw, gw.complete(CompletionRequest(name="nope")))
    with pytest.raises(e.VariableError):
        run(gw, gw.complete(CompletionRequest(name="ask", variables={"question": 3})))
    with pytest.raises(e.InvalidInput):
        run(gw, gw.complete(ask(messages=[{"content": "no role"}])))
    assert fake_upstream.count == 0 and calls(ops) == []


def test_provider_not_configured_is_recorded(make, ops, fake_upstream):
    gw = make()
    with pytest.raises(e.ProviderNotConfigured):
        run(gw, gw.complete(CompletionRequest(name="elsewhere")))
    [call] = calls(ops)
    assert call.status == "error" and "nowhere" in (call.error or "")
    assert fake_upstream.count == 0


@pytest.mark.parametrize("stream", [False, True])
def test_a_provider_key_unset_at_call_time_is_recorded(make, ops, fake_upstream, monkeypatch, stream):
    """A provider's key is read when the call is made: with its environment variable unset the
    call fails before reaching the provider, and is recorded with its decision (it was not)."""
    gw = make()
    monkeypatch.delenv("GW_TEST_KEY")
    req = CompletionRequest(name="keyed")
    with pytest.raises(e.ProviderNotConfigured, match="GW_TEST_KEY"):
        run(gw, gw.open_stream(req) if stream else gw.complete(req))
    [call] = calls(ops)
    assert call.status == "error" and "GW_TEST_KEY" in (call.error or "") and call.stream is stream
    assert fake_upstream.count == 0


@pytest.mark.parametrize(
    "reply, error, status",
    [
        pytest.param(Reply(status=500), e.UpstreamError, "error", id="refuses"),
        pytest.param(Reply(status=429), e.UpstreamRateLimited, "rate_limited", id="rate-limited"),
        pytest.param(Reply(hang=True), e.UpstreamTimeout, "timeout", id="hangs"),
        pytest.param(Reply(body=b"{not json"), e.UpstreamError, "error", id="malformed"),
        pytest.param(Reply(huge=50_000_000), e.UpstreamError, "error", id="50MB"),
    ],
)
def test_upstream_failures_are_recorded(make, ops, fake_upstream, reply, error, status):
    gw = make(timeout=0.5)
    fake_upstream.enqueue(reply)
    with pytest.raises(error) as caught:
        run(gw, gw.complete(ask()))
    assert type(caught.value) is error
    [call] = calls(ops)
    assert call.status == status and call.error


def test_no_secret_in_errors_or_calls(make, ops, fake_upstream, caplog):
    gw = make()
    fake_upstream.enqueue(Reply(status=401, error=f"bad key {SECRET}"))
    with pytest.raises(e.UpstreamError) as caught:
        run(gw, gw.complete(CompletionRequest(name="keyed")))
    assert fake_upstream.requests[0].headers["authorization"] == f"Bearer {SECRET}"
    [call] = calls(ops)
    stored = json.dumps({c.key: getattr(call, c.key) for c in CallRow.__table__.columns})
    for text in (str(caught.value), stored, caplog.text):
        assert SECRET not in text


def sse_events(chunks: list[bytes]) -> list[bytes]:
    """The server-sent events in a stream's chunks (events that arrived together share one)."""
    return [event + b"\n\n" for event in b"".join(chunks).split(b"\n\n") if event]


def test_streams_pass_chunks_through_with_the_decision_id(make, ops, fake_upstream):
    gw = make()

    async def go() -> tuple[Any, list[bytes]]:
        stream = await gw.open_stream(CompletionRequest(name="chat", variables={"question": "a b c"}))
        return stream, [chunk async for chunk in stream]

    stream, chunks = run(gw, go())
    chunks = sse_events(chunks)
    events = [json.loads(c[6:]) for c in chunks if c != b"data: [DONE]\n\n"]
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert {ev["id"] for ev in events} == {stream.decision.id}
    assert "".join(ev["choices"][0]["delta"].get("content", "") for ev in events) == "echo: a b c"
    assert all(ev["choices"] for ev in events)  # no usage chunk unless asked for
    [call] = calls(ops)
    assert call.status == "ok" and call.stream and call.ttft_ms is not None
    assert call.prompt_tokens and call.cache == "bypass"


def test_stream_usage_chunk_when_asked(make, fake_upstream):
    gw = make()

    async def go() -> list[bytes]:
        stream = await gw.open_stream(
            CompletionRequest(name="chat", variables={"question": "q"}, include_usage=True)
        )
        return [chunk async for chunk in stream]

    chunks = sse_events(run(gw, go()))
    usage = json.loads(chunks[-2][6:])
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] > 0


def test_a_usage_chunk_when_asked_even_if_the_provider_sends_none(make, ops, fake_upstream):
    """llama.cpp ignores stream_options.include_usage: the caller still gets the usage chunk it
    asked for, with the (estimated) figures the call is recorded with; one only, before [DONE]."""
    gw = make()
    fake_upstream.enqueue(Reply(stream_usage=False))

    async def go() -> list[bytes]:
        stream = await gw.open_stream(
            CompletionRequest(name="chat", variables={"question": "q"}, include_usage=True)
        )
        return [chunk async for chunk in stream]

    chunks = sse_events(run(gw, go()))
    assert chunks[-1] == b"data: [DONE]\n\n"
    events = [json.loads(c[6:]) for c in chunks[:-1]]
    with_usage = [ev for ev in events if "usage" in ev]
    assert len(with_usage) == 1 and with_usage[0] is events[-1] and with_usage[0]["choices"] == []
    usage = with_usage[0]["usage"]
    assert (
        usage["completion_tokens"] > 0
        and usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    )
    assert with_usage[0]["id"] == events[0]["id"]
    [call] = calls(ops)
    assert (call.prompt_tokens, call.completion_tokens) == (
        usage["prompt_tokens"],
        usage["completion_tokens"],
    )


def test_a_caller_that_leaves_cancels_the_upstream(make, ops, fake_upstream):
    gw = make()
    fake_upstream.enqueue(Reply(content="one two three four", stall_after=2))

    async def go() -> None:
        stream = await gw.open_stream(CompletionRequest(name="chat", variables={"question": "q"}))
        async for _ in stream:
            break
        await stream.aclose()

    run(gw, go())
    assert fake_upstream.left.wait(60)
    [call] = calls(ops)
    assert call.status == "cancelled"


def test_a_broken_stream_ends_with_an_error_event(make, ops, fake_upstream):
    gw = make()
    fake_upstream.enqueue(Reply(content="one two three four", break_after=2))

    async def go() -> list[bytes]:
        stream = await gw.open_stream(CompletionRequest(name="chat", variables={"question": "q"}))
        return [chunk async for chunk in stream]

    chunks = run(gw, go())
    assert json.loads(chunks[-1][6:])["error"]["code"] == "upstream_error"
    [call] = calls(ops)
    assert call.status == "error"


def test_a_stream_refused_before_it_starts_raises(make, ops, fake_upstream):
    gw = make()
    fake_upstream.enqueue(Reply(status=503))
    with pytest.raises(e.UpstreamError):
        run(gw, gw.open_stream(CompletionRequest(name="chat", variables={"question": "q"})))
    assert calls(ops)[0].status == "error"


def test_arm_usage_from_the_sums(make, ops, fake_upstream):
    gw = make()

    async def go() -> None:
        for i in range(20):
            await gw.complete(CompletionRequest(name="duel", unit_id=f"u{i}"))
        fake_upstream.enqueue(Reply(status=500))
        with pytest.raises(e.UpstreamError):
            await gw.complete(CompletionRequest(name="duel", unit_id="u0"))

    run(gw, go())
    rows = calls(ops)
    exp_id = rows[0].experiment_id
    with ops.ctx.tx() as s:
        usage = arm_usage(s, exp_id, 2)
    assert sum(u.calls for u in usage) == 21
    for arm, u in enumerate(usage):
        mine = [r for r in rows if r.arm == arm]
        assert u.calls == len(mine)
        if mine:
            assert u.error_rate == pytest.approx(sum(r.status == "error" for r in mine) / len(mine))
            assert u.cost_usd_total == pytest.approx(sum(r.cost_usd or 0 for r in mine))
            assert u.latency_ms_p50 is not None and u.cache_hit_rate == 0.0
