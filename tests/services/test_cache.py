"""The response cache: keys, hits, refresh and bypass, single flight, stale-while-revalidate,
stream replay, eviction, and the Redis tier."""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import pytest

from promptops import errors as e
from promptops.services.cache import CacheEntry, CachePolicy, ResponseCache, cache_key, random_prefix
from promptops.services.completions import CompletionRequest
from promptops.services.gateway import Gateway
from tests import fakeupstream
from tests.fakeupstream import Reply
from tests.samples import ASK, CHAT
from tests.services.test_gateway import config

# Fixtures shared with other test modules.
fake_upstream = fakeupstream.fake_upstream

REDIS_URL = "redis://127.0.0.1:6379/0"

CACHED = """\
name: cached
model: {name: fake-model, temperature: 0.9}
variables:
  question: {type: string, required: true}
messages:
  - {role: user, content: "{{ question }}"}
cache: {mode: exact, ttl_hours: 1, stale_hours: 1}
variants:
  uncached:
    messages:
      - {role: user, content: "Q: {{ question }}"}
    cache: {mode: off}
"""


def _redis_up() -> bool:
    try:
        import redis

        return bool(redis.Redis.from_url(REDIS_URL, socket_timeout=1).ping())
    except Exception:
        return False


@pytest.fixture
def make(tmp_path, settings, ops, fake_upstream):  # type: ignore[no-untyped-def]
    """Build a gateway over the fake upstream, with the database or the Redis tier."""
    for name, text in (("ask", ASK), ("chat", CHAT), ("cached", CACHED)):
        (tmp_path / "prompts" / f"{name}.yaml").write_text(text)
    ops.sync()
    prefixes = []

    def build(*, redis: bool = False) -> Gateway:
        path = tmp_path / "promptops.yaml"
        path.write_text(config(fake_upstream))
        gateway = Gateway.create(
            ops.serving,
            dataclasses.replace(settings, config_path=path, redis_url=REDIS_URL if redis else None),
        )
        if redis:
            gateway.cache.prefix = random_prefix()
            prefixes.append(gateway.cache.prefix)
        return gateway

    yield build
    if prefixes:
        import redis as redis_lib

        r = redis_lib.Redis.from_url(REDIS_URL)
        for prefix in prefixes:
            names = list(r.scan_iter(match=prefix + "*"))
            if names:
                r.delete(*names)


def run(gateway: Gateway, coro: Any) -> Any:
    async def go() -> Any:
        try:
            result = await coro
            await gateway.cache.drain()
            return result
        finally:
            await gateway.aclose()

    return asyncio.run(go())


def ask(question: str = "why?", name: str = "ask", **options: Any) -> CompletionRequest:
    return CompletionRequest(name=name, variables={"question": question}, **options)


async def twice(gw: Gateway, first: CompletionRequest, second: CompletionRequest) -> list[str]:
    a = await gw.complete(first)
    await gw.cache.drain()
    b = await gw.complete(second)
    return [str(a.cache), str(b.cache)]


def test_key_ignores_stream_but_not_parameters():
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}], "temperature": 0}
    assert cache_key("p", body) == cache_key(
        "p", {**body, "stream": True, "stream_options": {"include_usage": True}}
    )
    assert cache_key("p", body) != cache_key("p", {**body, "temperature": 0.1})
    assert cache_key("p", body) != cache_key("q", body)


@pytest.mark.parametrize(
    "settings_, model, enabled",
    [
        pytest.param(None, {"temperature": 0}, True, id="temperature-0"),
        pytest.param(None, {"temperature": 0.2}, False, id="temperature-0.2"),
        pytest.param(None, {}, False, id="no-temperature"),
        pytest.param({"mode": "off"}, {"temperature": 0}, False, id="off"),
        pytest.param({"mode": "exact"}, {"temperature": 1}, True, id="exact"),
    ],
)
def test_default_mode(settings_, model, enabled):
    assert CachePolicy.of(settings_, model).enabled is enabled


def test_ttl_and_stale_windows():
    policy = CachePolicy.of({"mode": "exact", "ttl_hours": 1, "stale_hours": 2}, {})
    assert [policy.state(s) for s in (0, 3599, 3600, 3 * 3600 - 1, 3 * 3600)] == [
        "fresh",
        "fresh",
        "stale",
        "stale",
        "expired",
    ]
    assert CachePolicy.of({"mode": "exact"}, {}).state(1e12) == "fresh"


def test_second_identical_call_is_a_hit(make, fake_upstream):
    gw = make()
    assert run(gw, twice(gw, ask(), ask())) == ["miss", "hit"]
    assert fake_upstream.count == 1


def test_different_variables_miss(make, fake_upstream):
    gw = make()
    assert run(gw, twice(gw, ask("a"), ask("b"))) == ["miss", "miss"]


def test_temperature_above_zero_is_not_cached(make, fake_upstream):
    gw = make()
    assert run(gw, twice(gw, ask(name="chat"), ask(name="chat"))) == ["bypass", "bypass"]
    assert fake_upstream.count == 2


def test_refresh_skips_the_read_and_rewrites(make, fake_upstream):
    gw = make()

    async def go() -> list[str]:
        out = await twice(gw, ask(), ask(cache="refresh"))
        fake_upstream.reply = Reply(content="never")
        await gw.cache.drain()
        third = await gw.complete(ask())
        return [*out, str(third.cache), third.message["content"]]

    assert run(gw, go()) == ["miss", "refresh", "hit", "echo: why?"]
    assert fake_upstream.count == 2


def test_bypass_neither_reads_nor_writes(make, fake_upstream):
    gw = make()
    assert run(gw, twice(gw, ask(cache="bypass"), ask())) == ["bypass", "miss"]
    assert fake_upstream.count == 2


def test_the_database_tier_serves_another_process(make, fake_upstream):
    first, second = make(), make()
    run(first, first.complete(ask()))
    out = run(second, second.complete(ask()))
    assert str(out.cache) == "hit" and fake_upstream.count == 1


def test_concurrent_identical_misses_make_one_call(make, fake_upstream):
    gw = make()
    fake_upstream.reply = Reply(latency=0.2)

    async def go() -> list[str]:
        results = await asyncio.gather(*(gw.complete(ask()) for _ in range(8)))
        return sorted(str(r.cache) for r in results)

    assert run(gw, go()) == ["hit"] * 7 + ["miss"]
    assert fake_upstream.count == 1


def test_stale_entries_are_served_while_one_call_refreshes(make, fake_upstream, clock):
    gw = make()

    async def go() -> list[str]:
        await gw.complete(ask(name="cached"))
        await gw.cache.drain()
        clock.advance(hours=1.5)  # past ttl, within stale
        fake_upstream.reply = Reply(content="fresher", latency=0.1)
        stale = await asyncio.gather(*(gw.complete(ask(name="cached")) for _ in range(3)))
        await gw.cache.drain()
        after = await gw.complete(ask(name="cached"))
        return [*(r.message["content"] for r in stale), after.message["content"]]

    assert run(gw, go()) == ["echo: why?"] * 3 + ["fresher"]
    assert fake_upstream.count == 2


def test_streams_after_a_remembered_key_refresh_and_call_upstream(make, fake_upstream, clock):
    gw = make()

    async def go() -> list[str]:
        await gw.complete(ask(name="cached"))  # the key is remembered from here on
        await gw.cache.drain()
        clock.advance(hours=1.5)  # past ttl, within stale
        fake_upstream.reply = Reply(content="fresher")
        stale = await gw.open_stream(ask(name="cached"))
        served = [str(stale.cache), *[c.decode() async for c in stale]]
        await gw.cache.drain()
        again = await gw.open_stream(ask(name="cached", cache="refresh"))
        return [*served, str(again.cache), *[c.decode() async for c in again]]

    out = run(gw, go())
    assert out[0] == "hit" and "echo: why?" in "".join(out)
    assert out.index("refresh") > 0 and "fresher" in "".join(out[out.index("refresh") :])
    assert fake_upstream.count == 3  # the first call, the background refresh, the refresh


def test_expired_entries_miss(make, fake_upstream, clock):
    gw = make()

    async def go() -> str:
        await gw.complete(ask(name="cached"))
        await gw.cache.drain()
        clock.advance(hours=2.5)
        return str((await gw.complete(ask(name="cached"))).cache)

    assert run(gw, go()) == "miss"
    assert fake_upstream.count == 2


def test_a_variant_may_turn_the_cache_off(make, fake_upstream, ops):
    gw = make()
    out = run(
        gw, gw.complete(CompletionRequest(name="cached", variables={"question": "q"}, label="production"))
    )
    assert str(out.cache) == "miss"
    prompt = ops.registry.get_prompt("cached")
    uncached = next(v.number for v in prompt.versions if v.variant == "uncached")
    gw = make()
    assert run(gw, twice(gw, ask(name="cached", version=uncached), ask(name="cached", version=uncached))) == [
        "bypass",
        "bypass",
    ]


def test_a_hit_replays_as_a_stream(make, fake_upstream):
    gw = make()

    async def go() -> tuple[str, list[bytes]]:
        await gw.complete(ask())
        await gw.cache.drain()
        stream = await gw.open_stream(ask(include_usage=True))
        return str(stream.cache), [chunk async for chunk in stream]

    cache, chunks = run(gw, go())
    assert cache == "hit" and chunks[-1] == b"data: [DONE]\n\n"
    events = [json.loads(c[6:]) for c in chunks[:-1]]
    text = "".join(ev["choices"][0]["delta"].get("content") or "" for ev in events if ev["choices"])
    assert text == "echo: why?" and events[-1]["usage"]["total_tokens"] > 0
    assert fake_upstream.count == 1


ODD_TOOL_CALLS = json.dumps(
    {
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "f"}}, "odd"],
                },
                "finish_reason": "tool_calls",
            }
        ],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1},
    }
).encode()


def test_a_hit_with_tool_calls_that_are_not_objects_replays_as_a_stream(make, fake_upstream):
    """A provider's answer is passed through as it came, odd tool calls included; its hit
    replays as a stream with them too (each object numbered), instead of failing."""
    fake_upstream.enqueue(Reply(body=ODD_TOOL_CALLS))
    gw = make()

    async def go() -> tuple[bytes | None, list[bytes]]:
        await gw.complete(ask())
        stream = await gw.open_stream(ask())
        whole = stream.replay()
        await stream.aclose()
        again = await gw.open_stream(ask())
        return whole, [chunk async for chunk in again]

    whole, chunks = run(gw, go())
    assert whole is not None and whole.endswith(b"data: [DONE]\n\n") and chunks[-1] == b"data: [DONE]\n\n"
    for first in (whole.split(b"\n\n")[0], chunks[0]):
        delta = json.loads(first[6:])["choices"][0]["delta"]
        assert delta["tool_calls"] == [
            {"id": "c1", "type": "function", "function": {"name": "f"}, "index": 0},
            "odd",
        ]
    assert fake_upstream.count == 1


def test_a_stream_fills_the_cache(make, fake_upstream):
    gw = make()

    async def go() -> str:
        stream = await gw.open_stream(ask())
        async for _ in stream:
            pass
        await gw.cache.drain()
        return str((await gw.complete(ask())).cache)

    assert run(gw, go()) == "hit" and fake_upstream.count == 1


def test_failures_are_not_cached(make, fake_upstream):
    gw = make()
    fake_upstream.enqueue(Reply(status=500))

    async def go() -> str:
        with pytest.raises(e.UpstreamError):
            await gw.complete(ask())
        return str((await gw.complete(ask())).cache)

    assert run(gw, go()) == "miss"


def entry(n: int) -> CacheEntry:
    return CacheEntry(
        provider="p",
        model="m",
        message={"role": "assistant", "content": str(n)},
        finish_reason="stop",
        prompt_tokens=1,
        completion_tokens=1,
        created_at=0.0,
        prompt="ask" if n % 2 else "chat",
    )


@pytest.mark.parametrize("redis", [False, pytest.param(True, id="redis")])
def test_eviction_keeps_the_recently_used(ops, redis, clock):
    if redis and not _redis_up():
        pytest.skip("no Redis at 127.0.0.1:6379")
    cache = ResponseCache(
        ops.ctx, max_entries=3, redis_url=REDIS_URL if redis else None, redis_prefix=random_prefix()
    )

    async def go() -> None:
        for n in range(5):
            clock.advance(1)
            await cache.put(f"k{n}", entry(n))
        cache.forget_local()
        clock.advance(1)
        assert await cache.get("k0") is not None  # used last: kept
        assert cache.evict() == 2
        assert cache.stats().entries == 3
        cache.forget_local()
        kept = [k for k in (f"k{n}" for n in range(5)) if await cache.get(k) is not None]
        assert kept == ["k0", "k3", "k4"]
        assert cache.clear("ask") == 1  # k3
        assert cache.clear() == 2
        assert cache.stats().entries == 0

    async def main() -> None:
        try:
            await go()
        finally:
            cache.clear()
            await cache.aclose()

    asyncio.run(main())


@pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")
@pytest.mark.parametrize("raw", [b"\xff", b"[1, 2]", b'{"prompt": 5}', b"[" * 5000])
def test_eviction_removes_damaged_redis_entries(ops, clock, raw):
    """`promptops gc` evicts a Redis entry it cannot read instead of failing."""
    import redis as redis_lib

    cache = ResponseCache(ops.ctx, max_entries=1, redis_url=REDIS_URL, redis_prefix=random_prefix())

    async def go() -> None:
        try:
            for n in range(3):
                clock.advance(1)
                await cache.put(f"k{n}", entry(n))
            redis_lib.Redis.from_url(REDIS_URL).set(cache.prefix + "rc:k0", raw)
            assert cache.evict() == 2
            cache.forget_local()
            assert [await cache.get(f"k{n}") is not None for n in range(3)] == [False, False, True]
        finally:
            cache.clear()
            await cache.aclose()

    asyncio.run(go())


@pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")
def test_the_redis_tier_is_shared(make, fake_upstream):
    first, second = make(redis=True), make(redis=True)
    second.cache.prefix = first.cache.prefix
    run(first, first.complete(ask()))
    out = run(second, second.complete(ask()))
    assert str(out.cache) == "hit" and fake_upstream.count == 1
    assert second.cache.stats().by_prompt == {"ask": 1}


def test_remembered_keys_are_the_keys_of_the_upstream_bodies(make, fake_upstream):
    gw = make()

    async def go() -> list[tuple[str, str]]:
        keys = []
        for req in (
            ask("why?"),
            ask("why?"),  # remembered
            ask("how?"),
            ask("why?", messages=[{"role": "user", "content": "more"}]),  # caller messages: hashed
            CompletionRequest(name="cached", variables={"question": "why?"}, unit_id="u1"),
        ):
            decision, upstream, key, _, _ = await gw._prepare(req, 0.0, stream=False)
            built.append(upstream is not None)
            upstream = gw._upstream(req, decision, stream=False)
            keys.append((key, cache_key(gw.providers.get(upstream.provider).name, upstream.body)))
        return keys

    built: list[bool] = []
    keys = run(gw, go())
    assert all(remembered == computed for remembered, computed in keys)
    assert built == [True, False, True, True, True]  # a remembered key needs no upstream request
    assert keys[0][0] == keys[1][0] and len({k for k, _ in keys}) == 4
    assert len(gw._keys) == 3  # the call with caller messages was not remembered


PICKY = """\
name: picky
model: {name: fake-model, temperature: 0}
variables:
  options: {type: string, required: true}
messages:
  - {role: user, content: "Pick one of {{ options.split(',') | random }}"}
"""


def test_repeated_inputs_reuse_the_rendering_only_for_pure_templates(make, ops, tmp_path, monkeypatch):
    """A hit on inputs seen before takes the rendering kept then (no render): only for a version
    that renders by substitution, string variables and no caller messages; the decision and its
    answer are the same as a fresh render's."""
    from promptops.rendering.renderer import PreparedContent

    (tmp_path / "prompts" / "picky.yaml").write_text(PICKY)
    ops.sync()
    renders: list[str] = []
    real = PreparedContent.render

    def counting(self, variables, **kw):  # type: ignore[no-untyped-def]
        renders.append(kw["prompt"])
        return real(self, variables, **kw)

    monkeypatch.setattr(PreparedContent, "render", counting)
    gw = make()

    async def go() -> list[Any]:
        out = []
        for req in (
            ask("why?"),
            ask("why?"),  # the same inputs: rendering and key kept
            ask("why?", messages=[{"role": "user", "content": "more"}]),  # caller messages: rendered
            CompletionRequest(name="picky", variables={"options": "a,b"}),  # Jinja: rendered
            CompletionRequest(name="picky", variables={"options": "a,b"}),
        ):
            out.append(await gw.complete(req))
        return out

    first, second, _, _, _ = run(gw, go())
    assert renders == ["ask", "ask", "picky", "picky"]
    assert str(first.cache) == "miss" and str(second.cache) == "hit"
    assert second.decision.rendered == first.decision.rendered
    assert second.decision.id != first.decision.id and second.decision.variables == {"question": "why?"}
    assert len(gw._inputs) == 1


TOOLED = """\
name: tooled
model:
  name: fake-model
  temperature: 0
  tools: [{type: function, function: {name: lookup, parameters: {type: object}}}]
variables:
  question: {type: string, required: true}
messages:
  - {role: user, content: "{{ question }}"}
"""


def test_remembered_renderings_of_a_version_share_its_model_settings(make, ops, tmp_path):
    """Each render copies the version's model settings (deeply when they nest, as tools do):
    the renderings kept for repeated inputs share one copy per version, so what the memo holds
    stays the size of its short texts, not that many copies of a long tools list."""
    (tmp_path / "prompts" / "tooled.yaml").write_text(TOOLED)
    ops.sync()
    gw = make()

    async def go() -> list[Any]:
        return [await gw.complete(ask(str(n), name="tooled")) for n in range(3)]

    outs = run(gw, go())
    kept = [rendered for rendered, _ in gw._inputs.values()]
    assert len(kept) == 3 and len({id(r.model) for r in kept}) == 1
    assert [r.messages for r in kept] == [o.decision.rendered.messages for o in outs]
    assert all(r.model == outs[0].decision.rendered.model for r in kept)


@pytest.mark.parametrize("value", [1, 1.0, True, None, ["why?"], {"a": "b"}])
def test_inputs_other_than_strings_are_rendered_every_time(make, monkeypatch, value):
    """1, 1.0 and True are equal as keys but render as "1", "1.0" and "True": only strings are
    remembered."""
    gw = make()
    choice = gw.serving.choose("ask", {"question": value})
    assert gw._inputs_of(CompletionRequest(name="ask", variables={"question": value}), choice) is None
    choice = gw.serving.choose("ask", {"question": "why?"})
    assert gw._inputs_of(ask("why?"), choice) == (choice.version.id, (("question", "why?"),))
    long = "x" * 5000
    assert gw._inputs_of(ask(long), gw.serving.choose("ask", {"question": long})) is None
    run(gw, asyncio.sleep(0))


DAMAGED = [
    "not an object",
    {"provider": "fake"},  # fields missing
    {"provider": "fake", "model": "m", "message": {"content": ["a"]}, "created_at": 1.0},
    {"provider": "fake", "model": "m", "message": {"content": "a"}, "created_at": "yesterday"},
    {"provider": "fake", "model": "m", "message": {"content": "a"}, "created_at": 1.0, "prompt_tokens": -1},
    # Values the answer or the call record cannot hold: a time past a float, a token count past
    # the calls table's integers, a message nested deeper or with an integer larger than the
    # answer's JSON encoder takes.
    {"provider": "fake", "model": "m", "message": {"content": "a"}, "created_at": 10**400},
    {
        "provider": "fake",
        "model": "m",
        "message": {"content": "a"},
        "created_at": 1.0,
        "prompt_tokens": 2**40,
    },
    {
        "provider": "fake",
        "model": "m",
        "message": {"content": "a", "x": json.loads("[" * 300 + "]" * 300)},
        "created_at": 1.0,
    },
    {"provider": "fake", "model": "m", "message": {"content": "a", "x": 2**70}, "created_at": 1.0},
]


@pytest.mark.parametrize("stored", DAMAGED)
def test_a_damaged_database_entry_is_a_miss_that_the_answer_overwrites(make, ops, fake_upstream, stored):
    from sqlalchemy import update

    from promptops.db.models import ResponseCacheRow

    first, second = make(), make()
    run(first, first.complete(ask()))
    with ops.ctx.tx() as s:
        s.execute(update(ResponseCacheRow).values(entry=stored))
    out = run(second, second.complete(ask()))
    assert str(out.cache) == "miss" and fake_upstream.count == 2
    third = make()
    assert str(run(third, third.complete(ask())).cache) == "hit"


@pytest.mark.parametrize(
    "stored",
    [
        pytest.param("not json", id="not-json"),
        pytest.param("[" * 2000 + "]" * 2000, id="deeper-than-the-parser"),
        pytest.param('{"created_at": 1' + "0" * 5000 + "}", id="digits-past-the-parser"),
    ],
)
def test_a_database_entry_that_does_not_parse_is_a_miss(make, ops, fake_upstream, stored):
    """The JSON column's text is read and parsed by the cache, not by the driver: text that the
    parser refuses is a damaged entry, a miss, instead of a failed call."""
    from sqlalchemy import text

    if stored == "not json" and ops.ctx.engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL's json type refuses such text")
    first, second = make(), make()
    run(first, first.complete(ask()))
    with ops.ctx.tx() as s:
        s.execute(text("UPDATE response_cache SET entry = :entry"), {"entry": stored})

    async def both() -> tuple[Any, dict[str, CacheEntry]]:
        out = await second.complete(ask())
        await second.cache.drain()  # the answer's write, before the entry is damaged again
        second.cache.forget_local()
        with ops.ctx.tx() as s:
            s.execute(text("UPDATE response_cache SET entry = :entry"), {"entry": stored})
        return out, await second.cache.get_many(["k", *[k for k in first.cache._lru]])

    out, many = run(second, both())
    assert str(out.cache) == "miss" and fake_upstream.count == 2 and many == {}


def test_an_old_entry_with_a_lone_surrogate_replays_as_u_fffd(make, ops, fake_upstream):
    """Answers are cleaned before they are cached now; an entry stored before that (SQLite kept
    the `\\ud800` escape) is still answered, not a failure to encode."""
    from sqlalchemy import select, update

    from promptops.db.models import ResponseCacheRow

    if ops.ctx.engine.dialect.name == "postgresql":
        pytest.skip("PostgreSQL never stored such text")
    first, second = make(), make()
    run(first, first.complete(ask()))
    with ops.ctx.tx() as s:
        entry = dict(s.scalar(select(ResponseCacheRow.entry)))
        entry["message"] = {"role": "assistant", "content": "a\ud800b"}
        s.execute(update(ResponseCacheRow).values(entry=entry))
    out = run(second, second.complete(ask()))
    assert str(out.cache) == "hit" and out.message["content"] == "a\ufffdb"


@pytest.mark.skipif(not _redis_up(), reason="no Redis at 127.0.0.1:6379")
@pytest.mark.parametrize("raw", [b"\xff\xfe", b"[1, 2", b"[" * 100_000, json.dumps(DAMAGED[2]).encode()])
def test_a_damaged_redis_entry_is_a_miss(make, fake_upstream, raw):
    import redis as redis_lib

    first, second = make(redis=True), make(redis=True)
    second.cache.prefix = first.cache.prefix
    run(first, first.complete(ask()))
    r = redis_lib.Redis.from_url(REDIS_URL)
    for name in r.scan_iter(match=first.cache.prefix + "rc:*"):
        r.set(name, raw)
    out = run(second, second.complete(ask()))
    assert str(out.cache) == "miss" and fake_upstream.count == 2
