"""A lean HTTP/1.1 keep-alive transport for httpx, on asyncio streams.

httpcore's pool re-examines every pooled connection (a `poll()` system call each) whenever a
request starts or ends, so its cost per call grows with the pool: at 32 concurrent calls it was
most of the gateway's CPU. Here an idle connection is a list entry; a connection the server
closed is noticed by its reader being at EOF, which the event loop already tracks. It speaks only
what a provider's API needs: one request at a time per connection, Content-Length, chunked or
read-to-close bodies, TLS. It raises httpx's own exceptions, so callers handle it like httpcore.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
from collections.abc import AsyncIterator, Mapping

import httpx

_MAX_HEAD_BYTES = 65_536
_READ_BYTES = 65_536
_Origin = tuple[str, str, int]
# Where a chunked body's decoder stands: a size line, data, the CRLF after it, or trailer fields.
_SIZE, _DATA, _CRLF, _TRAILER = range(4)


class _Connection:
    """One open socket to an origin."""

    __slots__ = ("reader", "writer")

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    def usable(self) -> bool:
        return not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()

    async def aclose(self) -> None:
        """Close and wait until the socket is closed: an event loop that ends right after must
        not leave the peer waiting on a socket whose close was only scheduled."""
        self.writer.close()
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.writer.wait_closed(), 1.0)


class Http11Transport(httpx.AsyncBaseTransport):
    """httpx transport keeping up to `max_idle` idle keep-alive connections per origin."""

    def __init__(self, *, max_idle: int = 16, ssl_context: ssl.SSLContext | None = None) -> None:
        self._max_idle = max_idle
        self._ssl = ssl_context
        self._idle: dict[_Origin, list[_Connection]] = {}

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        """Send one request on a pooled (or new) connection; the body streams from the socket."""
        body = await request.aread()
        head = prepare_head(request)
        if body or request.method not in ("GET", "HEAD"):
            head += b"Content-Length: %d\r\n" % len(body)
        return await self._exchange(
            request.url, head + b"\r\n" + body, request.extensions.get("timeout", {}), request.method, request
        )

    async def post(
        self, url: httpx.URL, head: bytes, body: bytes, timeout: Mapping[str, float | None]
    ) -> httpx.Response:
        """POST `body` with a head made once by `prepare_head` (a provider sends the same head on
        every call: building an httpx.Request for each cost more than the rest of the call)."""
        return await self._exchange(
            url, b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body), timeout, "POST", None
        )

    async def _exchange(
        self,
        url: httpx.URL,
        data: bytes,
        timeout: Mapping[str, float | None],
        method: str,
        request: httpx.Request | None,
    ) -> httpx.Response:
        origin = (url.scheme, url.host, url.port or (443 if url.scheme == "https" else 80))
        conn = self._pooled(origin)
        if conn is None:
            conn = await self._connect(origin, timeout.get("connect"))
        try:
            await self._send(conn, data, timeout.get("write"))
            return await self._receive(conn, origin, method, request, timeout.get("read"))
        except BaseException:
            conn.close()
            raise

    def _pooled(self, origin: _Origin) -> _Connection | None:
        idle = self._idle.get(origin)
        while idle:
            conn = idle.pop()
            if conn.usable():
                return conn
            conn.close()
        return None

    def _release(self, origin: _Origin, conn: _Connection) -> None:
        idle = self._idle.setdefault(origin, [])
        if len(idle) < self._max_idle and conn.usable():
            idle.append(conn)
        else:
            conn.close()

    async def _connect(self, origin: _Origin, seconds: float | None) -> _Connection:
        scheme, host, port = origin
        if scheme not in ("http", "https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {scheme!r}")
        context = None
        if scheme == "https":
            if self._ssl is None:
                self._ssl = httpx.create_ssl_context()
            context = self._ssl
        try:
            async with asyncio.timeout(seconds):
                reader, writer = await asyncio.open_connection(
                    host, port, ssl=context, server_hostname=host if context else None, limit=_MAX_HEAD_BYTES
                )
        except TimeoutError:
            raise httpx.ConnectTimeout("timed out while connecting") from None
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from None
        return _Connection(reader, writer)

    async def _send(self, conn: _Connection, data: bytes, seconds: float | None) -> None:
        writer = conn.writer
        try:
            writer.write(data)
            if writer.transport.get_write_buffer_size():  # not all sent at once: wait, bounded
                async with asyncio.timeout(seconds):
                    await writer.drain()
        except TimeoutError:
            raise httpx.WriteTimeout("timed out while sending the request") from None
        except OSError as exc:
            raise httpx.WriteError(str(exc) or type(exc).__name__) from None

    async def _receive(
        self,
        conn: _Connection,
        origin: _Origin,
        method: str,
        request: httpx.Request | None,
        seconds: float | None,
    ) -> httpx.Response:
        while True:
            try:
                async with asyncio.timeout(seconds):
                    head = await conn.reader.readuntil(b"\r\n\r\n")
            except TimeoutError:
                raise httpx.ReadTimeout("timed out while waiting for the answer") from None
            except asyncio.IncompleteReadError:
                raise httpx.RemoteProtocolError("Server disconnected without sending a response.") from None
            except asyncio.LimitOverrunError:
                raise httpx.RemoteProtocolError("the response head is too large") from None
            except OSError as exc:
                raise httpx.ReadError(str(exc) or type(exc).__name__) from None
            version, status, reason, headers = _parse_head(head)
            if not 100 <= status < 200:
                break
        fields = {name.lower(): value for name, value in headers}
        keep_alive = version == b"HTTP/1.1" and b"close" not in fields.get(b"connection", b"").lower()
        if method == "HEAD" or status in (204, 304):
            length: int | None = 0
            chunked = False
        else:
            chunked = b"chunked" in fields.get(b"transfer-encoding", b"").lower()
            declared = fields.get(b"content-length")
            length = None
            if not chunked and declared is not None:
                if not declared.strip().isdigit():
                    raise httpx.RemoteProtocolError("malformed Content-Length")
                length = int(declared)
            keep_alive = keep_alive and (chunked or length is not None)
        body = _Body(
            self, conn, origin, chunked=chunked, length=length, keep_alive=keep_alive, seconds=seconds
        )
        return httpx.Response(
            status,
            headers=headers,
            stream=body,
            request=request,
            extensions={"http_version": version, "reason_phrase": reason},
        )

    async def aclose(self) -> None:
        """Close every idle connection."""
        idle, self._idle = self._idle, {}
        for conns in idle.values():
            for conn in conns:
                await conn.aclose()


def prepare_head(request: httpx.Request) -> bytes:
    """The request line and header lines of a request, without Content-Length (it goes with
    each body) and without the blank line that ends the head."""
    parts = [request.method.encode("ascii"), b" ", request.url.raw_path, b" HTTP/1.1\r\n"]
    for name, value in request.headers.raw:
        if name.lower() not in (b"content-length", b"transfer-encoding"):
            # The body is always whole: it goes with a Content-Length, never chunked.
            parts += (name, b": ", value, b"\r\n")
    return b"".join(parts)


def _parse_head(head: bytes) -> tuple[bytes, int, bytes, list[tuple[bytes, bytes]]]:
    lines = head[:-4].split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if not version.startswith(b"HTTP/1.") or not code.isdigit() or len(code) != 3:
        raise httpx.RemoteProtocolError("malformed status line")
    headers = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip():
            raise httpx.RemoteProtocolError("malformed header line")
        headers.append((name, value.strip()))
    return version, int(code), reason, headers


def _chunk_size(line: bytes) -> int:
    text = line.split(b";", 1)[0].strip()
    if not text or text.strip(b"0123456789abcdefABCDEF"):
        raise httpx.RemoteProtocolError("malformed chunk size")
    return int(text, 16)


class _Body(httpx.AsyncByteStream):
    """A response body read from its connection, which goes back to the pool once read whole."""

    def __init__(
        self,
        transport: Http11Transport,
        conn: _Connection,
        origin: _Origin,
        *,
        chunked: bool,
        length: int | None,
        keep_alive: bool,
        seconds: float | None,
    ) -> None:
        self._transport = transport
        self._conn: _Connection | None = conn
        self._origin = origin
        self._chunked = chunked
        self._length = length
        self._keep_alive = keep_alive
        self._seconds = seconds
        self._complete = False

    async def __aiter__(self) -> AsyncIterator[bytes]:
        conn = self._conn
        if conn is None:
            return
        reader = conn.reader
        try:
            if self._chunked:
                async for data in self._chunks(reader):
                    yield data
            elif self._length is not None:
                remaining = self._length
                while remaining:
                    data = await self._read(reader, min(remaining, _READ_BYTES))
                    if not data:
                        raise httpx.RemoteProtocolError(
                            "peer closed connection without sending complete message body"
                        )
                    remaining -= len(data)
                    yield data
            else:
                while data := await self._read(reader, _READ_BYTES):
                    yield data
        except TimeoutError:
            raise httpx.ReadTimeout("timed out while reading the answer") from None
        except asyncio.IncompleteReadError:
            raise httpx.RemoteProtocolError(
                "peer closed connection without sending complete message body"
            ) from None
        except asyncio.LimitOverrunError:
            raise httpx.RemoteProtocolError("a chunk header is too large") from None
        except OSError as exc:
            raise httpx.ReadError(str(exc) or type(exc).__name__) from None
        self._complete = True
        await self.aclose()

    async def _read(self, reader: asyncio.StreamReader, n: int) -> bytes:
        async with asyncio.timeout(self._seconds):
            return await reader.read(n)

    async def _chunks(self, reader: asyncio.StreamReader) -> AsyncIterator[bytes]:
        """The data of a chunked body: per read, every chunk it completed, joined (a stream's
        events that arrived together are passed on together)."""
        buffer = b""
        state, remaining = _SIZE, 0
        while True:
            out: list[bytes] = []
            pos = 0
            while True:
                if state == _DATA:
                    data = buffer[pos : pos + remaining]
                    if not data:
                        break
                    out.append(data)
                    pos += len(data)
                    remaining -= len(data)
                    if not remaining:
                        state = _CRLF
                elif state == _CRLF:
                    if len(buffer) - pos < 2:
                        break
                    if buffer[pos : pos + 2] != b"\r\n":
                        raise httpx.RemoteProtocolError("malformed chunk ending")
                    pos += 2
                    state = _SIZE
                else:
                    end = buffer.find(b"\r\n", pos)
                    if end < 0:
                        break
                    line, pos = buffer[pos:end], end + 2
                    if state == _TRAILER:
                        if not line:  # the blank line after the trailer fields (not used)
                            if out:
                                yield b"".join(out)
                            return
                        continue
                    remaining = _chunk_size(line)
                    state = _DATA if remaining else _TRAILER
            buffer = buffer[pos:]
            if len(buffer) > _MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError("a chunk header is too large")
            if out:
                yield out[0] if len(out) == 1 else b"".join(out)
            data = await self._read(reader, _READ_BYTES)
            if not data:
                raise asyncio.IncompleteReadError(b"", None)
            buffer += data

    async def aclose(self) -> None:
        """Return the connection to the pool after a whole body; otherwise close it."""
        conn, self._conn = self._conn, None
        if conn is None:
            return
        if self._complete and self._keep_alive:
            self._transport._release(self._origin, conn)
        else:
            await conn.aclose()
