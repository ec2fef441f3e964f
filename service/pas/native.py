"""Our own HTTP/1.1 transport under httpx (``PA_PAS__HTTP_TRANSPORT=native``).

PAS's exchange is simple: a request with a ``Content-Length`` body, an answer framed by
``Content-Length`` or chunked. ``NativeTransport`` does that and no more, on an
``asyncio.Protocol`` per connection and a keep-alive pool, so a call costs the event loop's
work and a few string operations instead of httpcore's or aiohttp's request machinery
(docs/benchmarks.md, "A transport of our own").

What it guarantees, as the other two transports do (tests/integration/test_pas_*.py):

- TLS with the context it is given (``service.pas.tls``), the host name sent for SNI and
  checked; plain HTTP only for an ``http://`` URL;
- the timeouts of each request (``request.extensions["timeout"]``): waiting for a pooled
  connection (``httpx.PoolTimeout``), connecting with its TLS handshake
  (``httpx.ConnectTimeout``), each wait for the answer's bytes (``httpx.ReadTimeout``),
  each wait for the socket to take the request (``httpx.WriteTimeout``);
- at most ``limits.max_connections`` connections; idle ones reused newest first, dropped
  after ``limits.keepalive_expiry`` or when the server closed them;
- the answer's bytes as received (nothing decompressed), read only as fast as they are
  asked for: past ``HIGH_WATER`` unread bytes the socket is paused, so a huge answer the
  caller abandons is never held whole;
- no redirect followed (nothing here follows one), no request retried;
- a failure as the httpx exception the client classifies (``service.pas.client``): not
  connected (``ConnectError``, ``ConnectTimeout``, ``PoolTimeout``), reset or dropped after
  sending (``ReadError``, ``WriteError``), closed or garbled answer (``RemoteProtocolError``),
  the underlying error (an ``ssl`` one, say) kept as the cause;
- a connection is reused only after an answer read to its end with nothing after it, from
  an HTTP/1.1 server that did not say ``Connection: close``; any other ending (an error,
  a cancellation, an answer abandoned unread) closes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import ssl
import time
from collections import deque
from collections.abc import AsyncIterator
from dataclasses import dataclass
from enum import Enum
from typing import cast

import httpx

HIGH_WATER = 256 * 1024
"""Unread bytes of an answer past which the socket is paused until the reader catches up."""
MAX_HEAD_BYTES = 64 * 1024
"""Longest status line and headers accepted."""
MAX_CHUNK_LINE = 1024
"""Longest chunk-size line (or trailer line) accepted."""

_HEADER = re.compile(rb"([!#$%&'*+.^_`|~0-9A-Za-z-]+):[ \t]*([^\x00\r\n]*?)[ \t]*")
_HEX = re.compile(rb"[0-9A-Fa-f]{1,16}")
_UNSAFE = re.compile(rb"[\x00\r\n]")
_NO_BODY = frozenset({204, 304})

Origin = tuple[bytes, str, int]


class Framing(Enum):
    """How the end of an answer's body is known."""

    LENGTH = "Content-Length"
    CHUNKED = "chunked"
    CLOSE = "connection close"


@dataclass(frozen=True, slots=True)
class Head:
    """A parsed status line and headers."""

    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]
    framing: Framing
    length: int
    keep_alive: bool


def encode_request(
    method: bytes, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
) -> bytes:
    """The request's bytes: request line, headers (as given, ``Host`` among them) and body.

    A header name or value holding CR, LF or NUL is refused (``httpx.LocalProtocolError``):
    it would end the header early and smuggle the rest in as another one."""
    lines = [method, b" ", target, b" HTTP/1.1\r\n"]
    chunked = False
    for name, value in headers:
        if _UNSAFE.search(name) or _UNSAFE.search(value):
            raise httpx.LocalProtocolError(f"header {name[:40]!r} holds CR, LF or NUL")
        if name.lower() == b"transfer-encoding" and value.lower() == b"chunked":
            chunked = True
        lines += (name, b": ", value, b"\r\n")
    lines.append(b"\r\n")
    if chunked:
        if body:
            lines += (b"%x\r\n" % len(body), body, b"\r\n")
        lines.append(b"0\r\n\r\n")
    else:
        lines.append(body)
    return b"".join(lines)


def parse_head(head: bytes, *, head_request: bool = False) -> Head:
    """Status line and headers (without the blank line ending them), and the body's framing.

    ``httpx.RemoteProtocolError`` for anything not HTTP/1.x or ambiguous about where the
    body ends (a non-chunked ``Transfer-Encoding``, conflicting ``Content-Length``s)."""
    lines = head.split(b"\r\n")
    version, _, rest = lines[0].partition(b" ")
    code, _, reason = rest.partition(b" ")
    if version not in (b"HTTP/1.1", b"HTTP/1.0") or len(code) != 3 or not code.isdigit():
        raise httpx.RemoteProtocolError(f"not an HTTP/1.x status line: {lines[0][:60]!r}")
    status = int(code)
    headers: list[tuple[bytes, bytes]] = []
    keep_alive = version == b"HTTP/1.1"
    lengths: set[bytes] = set()
    codings = b""
    for line in lines[1:]:
        match = _HEADER.fullmatch(line)
        if match is None:
            raise httpx.RemoteProtocolError(f"malformed header line: {line[:60]!r}")
        name, value = match.groups()
        headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            lengths.add(value)
        elif lowered == b"transfer-encoding":
            codings = value.lower()
        elif lowered == b"connection" and b"close" in value.lower():
            keep_alive = False
    if head_request or status in _NO_BODY or status < 200:
        return Head(status, reason, headers, Framing.LENGTH, 0, keep_alive)
    if codings:
        if codings.rsplit(b",", 1)[-1].strip() != b"chunked":
            raise httpx.RemoteProtocolError(f"unsupported Transfer-Encoding: {codings[:40]!r}")
        # chunked wins over a Content-Length (RFC 9112 6.3), but such an answer is suspect
        return Head(status, reason, headers, Framing.CHUNKED, 0, keep_alive and not lengths)
    if lengths:
        if len(lengths) > 1 or not (length := lengths.pop()).isdigit():
            raise httpx.RemoteProtocolError("invalid or conflicting Content-Length")
        return Head(status, reason, headers, Framing.LENGTH, int(length), keep_alive)
    return Head(status, reason, headers, Framing.CLOSE, 0, False)


class Wire(asyncio.Protocol):
    """One connection: the bytes received and not yet read, and how it ended, if it did."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.eof = False
        self.error: BaseException | None = None
        self._waiter: asyncio.Future[bool] | None = None
        self._reading_paused = False
        self._writing_paused = False

    # -- asyncio.Protocol ----------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # a stream transport (uvloop's is not a subclass of asyncio.Transport, only alike)
        self.transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        if len(self.buffer) > HIGH_WATER and not self._reading_paused and self.transport:
            self._reading_paused = True
            self.transport.pause_reading()
        self._wake()

    def eof_received(self) -> bool:
        self.eof = True
        self._wake()
        return False

    def connection_lost(self, exc: Exception | None) -> None:
        self.eof = True
        if exc is not None:
            self.error = exc
        self._writing_paused = False
        self._wake()

    def pause_writing(self) -> None:
        self._writing_paused = True

    def resume_writing(self) -> None:
        self._writing_paused = False
        self._wake()

    # -- used by the transport -----------------------------------------------------------

    def reusable(self) -> bool:
        """Idle, open and with nothing unasked for received."""
        transport = self.transport
        return (
            not self.eof
            and not self.buffer
            and transport is not None
            and not transport.is_closing()
        )

    def close(self) -> None:
        if self.transport is not None:
            self.transport.abort()  # nothing of ours left to send: no lingering close

    async def send(self, data: bytes, wait_s: float | None) -> None:
        transport = self.transport
        if transport is None or transport.is_closing() or self.eof:
            raise httpx.WriteError("the connection closed before the request was sent")
        transport.write(data)
        while self._writing_paused:
            if not await self._wait(wait_s):
                raise httpx.WriteTimeout(f"the request not taken within {wait_s:.3g} s")

    async def more(self, wait_s: float | None, closed: str) -> None:
        """Wait for more bytes (or the connection's end); past the end, the error it ended
        with, or ``RemoteProtocolError(closed)`` for a server that just closed it."""
        if not self.eof:
            if self._reading_paused and self.transport is not None:
                self._reading_paused = False
                self.transport.resume_reading()
            if not await self._wait(wait_s):
                raise httpx.ReadTimeout(f"no bytes of the answer within {wait_s:.3g} s")
            return
        if self.error is not None:
            raise httpx.ReadError(str(self.error) or type(self.error).__name__) from self.error
        raise httpx.RemoteProtocolError(closed)

    def take(self, limit: int) -> bytes:
        """Up to ``limit`` buffered bytes, removed from the buffer."""
        if len(self.buffer) <= limit:
            data = bytes(self.buffer)
            self.buffer.clear()
        else:
            data = bytes(self.buffer[:limit])
            del self.buffer[:limit]
        if self._reading_paused and len(self.buffer) < HIGH_WATER // 2 and self.transport:
            self._reading_paused = False
            self.transport.resume_reading()
        return data

    async def line(self, wait_s: float | None, closed: str) -> bytes:
        """A CRLF-ended line (of a chunked body), without its CRLF."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > MAX_CHUNK_LINE:
                raise httpx.RemoteProtocolError("chunk-size line too long")
            await self.more(wait_s, closed)
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def head(self, wait_s: float | None) -> bytes:
        """The answer's status line and headers, up to (and consuming) the blank line."""
        start = 0
        while (end := self.buffer.find(b"\r\n\r\n", start)) < 0:
            if len(self.buffer) > MAX_HEAD_BYTES:
                raise httpx.RemoteProtocolError(f"answer head longer than {MAX_HEAD_BYTES} bytes")
            start = max(len(self.buffer) - 3, 0)
            await self.more(wait_s, "Server disconnected without sending a response.")
        head = bytes(self.buffer[:end])
        del self.buffer[: end + 4]
        return head

    async def _wait(self, wait_s: float | None) -> bool:
        """Until woken (``True``) or ``wait_s`` passed (``False``)."""
        waiter: asyncio.Future[bool] = self._loop.create_future()
        self._waiter = waiter
        timer = None if wait_s is None else self._loop.call_later(wait_s, _settle, waiter, False)
        try:
            return await waiter
        finally:
            self._waiter = None
            if timer is not None:
                timer.cancel()

    def _wake(self) -> None:
        if self._waiter is not None:
            _settle(self._waiter, True)


def _settle(waiter: asyncio.Future[bool], value: bool) -> None:
    if not waiter.done():
        waiter.set_result(value)


INCOMPLETE = "peer closed connection without sending complete message body"


class Body(httpx.AsyncByteStream):
    """The answer's body as it arrives; hands the connection back when read or closed."""

    def __init__(
        self, pool: NativeTransport, origin: Origin, wire: Wire, head: Head, read: float | None
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._wire = wire
        self._head = head
        self._read_timeout = read
        self._released = False
        if head.framing is Framing.LENGTH and head.length == 0:
            self._release(head.keep_alive)

    async def __aiter__(self) -> AsyncIterator[bytes]:
        if self._released:
            return
        framing, wire, wait_s = self._head.framing, self._wire, self._read_timeout
        if framing is Framing.LENGTH:
            remaining = self._head.length
            while remaining:
                while not wire.buffer:
                    await wire.more(wait_s, INCOMPLETE)
                chunk = wire.take(remaining)
                remaining -= len(chunk)
                yield chunk
        elif framing is Framing.CHUNKED:
            async for chunk in self._chunks():
                yield chunk
        else:
            while True:
                while not wire.buffer:
                    if wire.eof and wire.error is None:
                        break  # closed: the end of a body framed by the connection's end
                    await wire.more(wait_s, INCOMPLETE)
                if not wire.buffer:
                    break
                yield wire.take(HIGH_WATER)
        self._release(self._head.keep_alive)

    async def _chunks(self) -> AsyncIterator[bytes]:
        wire, wait_s = self._wire, self._read_timeout
        while True:
            size_text = (await wire.line(wait_s, INCOMPLETE)).split(b";", 1)[0].strip()
            if not _HEX.fullmatch(size_text):
                raise httpx.RemoteProtocolError(f"invalid chunk size: {size_text[:20]!r}")
            remaining = int(size_text, 16)
            if remaining == 0:
                while await wire.line(wait_s, INCOMPLETE):
                    pass  # trailers, ignored
                return
            while remaining:
                while not wire.buffer:
                    await wire.more(wait_s, INCOMPLETE)
                chunk = wire.take(remaining)
                remaining -= len(chunk)
                yield chunk
            if await wire.line(wait_s, INCOMPLETE):
                raise httpx.RemoteProtocolError("chunk data longer than its size")

    async def aclose(self) -> None:
        self._release(False)  # not read to its end: the connection cannot be reused

    def _release(self, reusable: bool) -> None:
        if not self._released:
            self._released = True
            self._pool.release(self._origin, self._wire, reusable)


class NativeTransport(httpx.AsyncBaseTransport):
    """httpx's transport for PAS: HTTP/1.1 over a pool of keep-alive connections."""

    def __init__(self, *, ssl_context: ssl.SSLContext, limits: httpx.Limits) -> None:
        self._ssl = ssl_context
        self._max = limits.max_connections or 2**31
        self._max_idle = (
            self._max
            if limits.max_keepalive_connections is None
            else limits.max_keepalive_connections
        )
        self._expiry = limits.keepalive_expiry
        self._idle: dict[Origin, list[tuple[Wire, float]]] = {}
        self._open = 0
        self._waiters: deque[asyncio.Future[bool]] = deque()
        self._closed = False

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        url = request.url
        scheme = url.raw_scheme
        if scheme not in (b"http", b"https"):
            raise httpx.UnsupportedProtocol(f"unsupported URL scheme {url.scheme!r}")
        origin = (scheme, url.host, url.port or (443 if scheme == b"https" else 80))
        timeouts = request.extensions.get("timeout", {})
        data = encode_request(
            request.method.encode("ascii"),
            url.raw_path,
            request.headers.raw,
            await request.aread(),
        )
        wire = await self._connection(origin, timeouts.get("pool"), timeouts.get("connect"))
        try:
            await wire.send(data, timeouts.get("write"))
            head_request = request.method == "HEAD"
            while True:
                head = parse_head(await wire.head(timeouts.get("read")), head_request=head_request)
                if head.status >= 200:
                    break
                if head.status == 101:
                    raise httpx.RemoteProtocolError("unexpected 101 Switching Protocols")
        except BaseException:
            self.release(origin, wire, False)
            raise
        return httpx.Response(
            head.status,
            headers=head.headers,
            stream=Body(self, origin, wire, head, timeouts.get("read")),
            extensions={"http_version": b"HTTP/1.1", "reason_phrase": head.reason},
        )

    async def aclose(self) -> None:
        self._closed = True
        for idle in self._idle.values():
            for wire, _ in idle:
                wire.close()
                self._open -= 1
        self._idle.clear()

    def release(self, origin: Origin, wire: Wire, reusable: bool) -> None:
        """``wire``'s exchange is over: pool it (if it can carry another) or close it."""
        if reusable and not self._closed and wire.reusable():
            idle = self._idle.setdefault(origin, [])
            idle.append((wire, time.monotonic()))
            if len(idle) > self._max_idle:
                idle.pop(0)[0].close()
                self._open -= 1
        else:
            wire.close()
            self._open -= 1
        self._wake_one()

    async def _connection(
        self, origin: Origin, pool_timeout: float | None, connect_timeout: float | None
    ) -> Wire:
        deadline = None if pool_timeout is None else time.monotonic() + pool_timeout
        while True:
            idle = self._idle.get(origin)
            now = time.monotonic()
            while idle:
                wire, since = idle.pop()
                if wire.reusable() and now - since < self._expiry_s():
                    return wire
                wire.close()
                self._open -= 1
            if self._open >= self._max:
                self._evict_other_than(origin)
            if self._open < self._max:
                self._open += 1
                try:
                    return await self._connect(origin, connect_timeout)
                except BaseException:
                    self._open -= 1
                    self._wake_one()
                    raise
            await self._wait_for_room(deadline, pool_timeout)

    def _expiry_s(self) -> float:
        return float("inf") if self._expiry is None else self._expiry

    def _evict_other_than(self, origin: Origin) -> None:
        for other, idle in self._idle.items():
            if other != origin and idle:
                idle.pop(0)[0].close()
                self._open -= 1
                return

    async def _wait_for_room(self, deadline: float | None, pool_timeout: float | None) -> None:
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[bool] = loop.create_future()
        timer = None
        if deadline is not None:
            timer = loop.call_at(
                loop.time() + max(deadline - time.monotonic(), 0.0), _settle, waiter, False
            )
        self._waiters.append(waiter)
        try:
            woken = await waiter
        except BaseException:
            if waiter.done() and not waiter.cancelled() and waiter.result():
                self._wake_one()  # the room it was woken for goes to the next in line
            else:
                self._remove(waiter)
            raise
        finally:
            if timer is not None:
                timer.cancel()
        if not woken:
            self._remove(waiter)
            raise httpx.PoolTimeout(f"no pooled connection free within {pool_timeout:.3g} s")

    def _remove(self, waiter: asyncio.Future[bool]) -> None:
        with contextlib.suppress(ValueError):
            self._waiters.remove(waiter)

    def _wake_one(self) -> None:
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(True)
                return

    async def _connect(self, origin: Origin, wait_s: float | None) -> Wire:
        scheme, host, port = origin
        tls = scheme == b"https"
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(wait_s):
                _, wire = await loop.create_connection(
                    lambda: Wire(loop),
                    host,
                    port,
                    ssl=self._ssl if tls else None,
                    server_hostname=host if tls else None,
                )
        except TimeoutError as exc:
            raise httpx.ConnectTimeout(
                f"not connected to {host}:{port} within {wait_s:.3g} s"
            ) from exc
        except OSError as exc:
            raise httpx.ConnectError(str(exc) or type(exc).__name__) from exc
        return wire
