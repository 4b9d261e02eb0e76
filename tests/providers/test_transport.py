"""The provider's HTTP/1.1 transport: keep-alive reuse, body framings, broken peers, timeouts."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import httpx
import pytest

from promptops.providers import ChatRequest
from promptops.providers.client import Provider
from promptops.providers.config import ProviderConfig
from promptops.providers.transport import Http11Transport, _Body, _Connection
from tests.fakeupstream import FakeUpstream, Reply

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler) -> tuple[asyncio.Server, str]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    return server, f"http://127.0.0.1:{port}/"


async def _request(reader: asyncio.StreamReader) -> bytes:
    head = await reader.readuntil(b"\r\n\r\n")
    length = next(
        (
            int(line.split(b":")[1])
            for line in head.split(b"\r\n")
            if line.lower().startswith(b"content-length:")
        ),
        0,
    )
    return head + await reader.readexactly(length)


async def _fetch(transport: Http11Transport, url: str, *, timeout: float = 5.0) -> httpx.Response:
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as client:
        response = await client.post(url, content=b'{"a": 1}')
        return response


def test_provider_calls_reuse_one_connection(fake_upstream: FakeUpstream) -> None:
    async def main() -> None:
        provider = Provider(ProviderConfig(name="fake", base_url=fake_upstream.base_url))
        request = ChatRequest(None, {"model": "m", "messages": [{"role": "user", "content": "hi"}]})
        for _ in range(3):
            assert (await provider.chat(request)).message == {"role": "assistant", "content": "echo: hi"}
        async with provider.stream(ChatRequest(None, {**request.body, "stream": True})) as s:
            assert [e async for e in s]
        await provider.aclose()

    asyncio.run(main())
    assert fake_upstream.connections == 1


def test_chunked_and_read_to_close_bodies() -> None:
    answers = [
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-Trailer: 1\r\n\r\n",
        b"HTTP/1.0 200 OK\r\n\r\nuntil the end",
    ]
    requests: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while answers:
            requests.append(await _request(reader))
            answer = answers.pop(0)
            writer.write(answer)
            await writer.drain()
            if answer.startswith(b"HTTP/1.0"):
                break
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        transport = Http11Transport()
        first = await _fetch(transport, url)
        assert first.content == b"hello world"
        second = await _fetch(transport, url)
        assert second.content == b"until the end"
        server.close()

    asyncio.run(main())
    assert len(requests) == 2
    assert requests[0].startswith(b"POST / HTTP/1.1\r\n")
    assert b"content-length: 8\r\n" in requests[0].lower()
    assert requests[0].endswith(b'\r\n\r\n{"a": 1}')


def test_an_idle_connection_the_server_closed_is_not_reused() -> None:
    connections = 0

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal connections
        connections += 1
        await _request(reader)
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
        await writer.drain()
        writer.close()  # keep-alive announced, then closed: the next call needs a new socket

    async def main() -> None:
        server, url = await _serve(handler)
        transport = Http11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            assert (await client.post(url, content=b"x")).text == "ok"
            [idle] = transport._idle[("http", "127.0.0.1", server.sockets[0].getsockname()[1])]
            while not idle.reader.at_eof():  # the pool has seen the close, as it would when idle
                await asyncio.sleep(0)
            assert (await client.post(url, content=b"x")).text == "ok"
        server.close()

    asyncio.run(main())
    assert connections == 2


@pytest.mark.parametrize(
    "answer, error",
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort", httpx.RemoteProtocolError),
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", httpx.RemoteProtocolError),
        (b"nonsense\r\n\r\n", httpx.RemoteProtocolError),
        (b"", httpx.RemoteProtocolError),
    ],
)
def test_broken_answers_raise_httpx_errors(answer: bytes, error: type[Exception]) -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await _request(reader)
        writer.write(answer)
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        with pytest.raises(error):
            await _fetch(Http11Transport(), url)
        server.close()

    asyncio.run(main())


def test_a_silent_server_times_out_and_a_closed_port_fails_to_connect() -> None:
    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read()

    async def main() -> None:
        server, url = await _serve(handler)
        with pytest.raises(httpx.ReadTimeout):
            await _fetch(Http11Transport(), url, timeout=0.1)
        server.close()
        await server.wait_closed()
        with pytest.raises(httpx.ConnectError):
            await _fetch(Http11Transport(), url)

    asyncio.run(main())


def test_a_body_left_unread_closes_its_connection(fake_upstream: FakeUpstream) -> None:
    fake_upstream.reply = Reply(content="many words in a stream")

    async def main() -> None:
        transport = Http11Transport()
        async with httpx.AsyncClient(transport=transport) as client:
            body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "x"}]}
            async with client.stream(
                "POST", f"{fake_upstream.base_url}/chat/completions", json=body
            ) as response:
                async for _ in response.aiter_bytes():
                    break
            assert (
                await client.post(
                    f"{fake_upstream.base_url}/chat/completions", json={**body, "stream": False}
                )
            ).status_code == 200

    asyncio.run(main())
    assert fake_upstream.connections == 2


def test_provider_request_head_has_each_header_once() -> None:
    heads: list[bytes] = []

    async def handler(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        heads.append(await _request(reader))
        body = b'{"choices": [{"message": {"role": "assistant", "content": "ok"}}]}'
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
        await writer.drain()
        writer.close()

    async def main() -> None:
        server, url = await _serve(handler)
        config = ProviderConfig(
            name="p",
            base_url=url + "v1",
            api_key_env="KEY",
            headers={"X-Org": "acme", "Content-Type": "application/json"},
        )
        provider = Provider(config, env={"KEY": "sk-1"})
        result = await provider.chat(ChatRequest(None, {"model": "m", "messages": []}))
        assert result.message["content"] == "ok"
        await provider.aclose()
        server.close()

    asyncio.run(main())
    head, _, body = heads[0].partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    assert lines[0] == b"post /v1/chat/completions http/1.1"
    names = [line.split(b":")[0] for line in lines[1:]]
    assert sorted(names) == sorted(set(names))
    assert {
        b"x-org: acme",
        b"authorization: bearer sk-1",
        b"content-type: application/json",
        b"host: 127.0.0.1:%d" % int(head.split(b"127.0.0.1:")[1].split(b"\r\n")[0]),
    } <= set(lines)
    assert body == b'{"model":"m","messages":[]}'


def test_a_changed_key_variable_is_sent_on_the_next_call(fake_upstream: FakeUpstream) -> None:
    env = {"KEY": "sk-old"}

    async def main() -> None:
        config = ProviderConfig(name="p", base_url=fake_upstream.base_url, api_key_env="KEY")
        provider = Provider(config, env=env)
        request = ChatRequest(None, {"model": "m", "messages": [{"role": "user", "content": "x"}]})
        await provider.chat(request)
        env["KEY"] = "sk-new"
        await provider.chat(request)
        await provider.aclose()

    asyncio.run(main())
    assert [r.headers["authorization"] for r in fake_upstream.requests] == ["Bearer sk-old", "Bearer sk-new"]


class _Writer:
    closed = False

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed


def test_chunks_read_together_come_out_together() -> None:
    events = [b"data: 1\n\n", b"data: 2\n\n", b"data: 3\n\n"]
    chunked = b"".join(b"%x\r\n%s\r\n" % (len(e), e) for e in events) + b"0\r\nX-T: 1\r\n\r\n"
    writer = _Writer()

    async def decode() -> list[bytes]:
        reader = asyncio.StreamReader()
        conn = _Connection(reader, writer)  # type: ignore[arg-type]
        body = _Body(
            Http11Transport(),
            conn,
            ("http", "h", 80),
            chunked=True,
            length=None,
            keep_alive=False,
            seconds=None,
        )
        reader.feed_data(chunked[:7])  # the first chunk, split mid-way
        pieces = body.__aiter__()
        out = [await pieces.__anext__()]
        reader.feed_data(chunked[7:])  # the rest arrives in one read
        out += [piece async for piece in pieces]
        return out

    assert asyncio.run(decode()) == [b"data", b": 1\n\n" + b"".join(events[1:])]
    assert writer.closed  # not keep-alive: closed once read
