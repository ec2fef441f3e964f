"""Our own transport (``service.pas.native``) against a scripted HTTP server on a real socket.

What the transport-parametrized tests (test_pas_transports, test_pas_hostile, test_pas_tls)
hold every transport to is not repeated here; these are the pool's own promises: keep-alive
reuse, a fresh connection after one the server closed or could not be reused, the pool's
limit and its timeout, and each malformed answer read as the httpx error the client
classifies. The server reads each request (head and ``Content-Length`` body) and answers
with the bytes the test's script gives for it. The tests run on the standard event loop,
and again on uvloop (the service's default, whose transports are not asyncio's classes),
TLS and mutual TLS included (``test_every_promise_holds_on_uvloop``).
"""

from __future__ import annotations

import asyncio
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import uvloop

from pa_devkit.tls import DevTlsSet, generate_dev_tls
from service.domain.classification import Transport
from service.pas.client import transport_failure
from service.pas.native import NativeTransport
from service.pas.tls import tls_failure

Script = Callable[[int, asyncio.StreamWriter], Awaitable[None]]
"""Answers the n-th request (from 0) by writing to the connection (and may close it)."""


def ok(body: bytes = b'{"pointsAdjusted": 10}', extra: bytes = b"") -> bytes:
    return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s" % (len(body), extra, body)


@dataclass
class Server:
    url: str
    connections: int = 0
    open_now: int = 0
    most_open: int = 0
    requests: int = 0
    closed_by_client: list[int] = field(default_factory=list)


@asynccontextmanager
async def scripted(script: Script, tls: ssl.SSLContext | None = None) -> AsyncIterator[Server]:
    server = Server("")

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        number = server.connections
        server.connections += 1
        server.open_now += 1
        server.most_open = max(server.most_open, server.open_now)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = next(
                    int(line.split(b":", 1)[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                index = server.requests
                server.requests += 1
                await script(index, writer)
                await writer.drain()
                if writer.is_closing():
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            server.closed_by_client.append(number)
        finally:
            server.open_now -= 1
            writer.close()

    listener = await asyncio.start_server(serve, "127.0.0.1", 0, ssl=tls)
    scheme = "http" if tls is None else "https"
    server.url = f"{scheme}://127.0.0.1:{listener.sockets[0].getsockname()[1]}/points-adjustments"
    try:
        yield server
    finally:
        listener.close()


@asynccontextmanager
async def client(
    max_connections: int = 10, tls: ssl.SSLContext | None = None, **timeouts: float
) -> AsyncIterator[httpx.AsyncClient]:
    limits = httpx.Limits(max_connections=max_connections)
    context = ssl.create_default_context() if tls is None else tls
    transport = NativeTransport(ssl_context=context, limits=limits)
    timeout = httpx.Timeout(**({"timeout": 5.0} | timeouts))
    async with httpx.AsyncClient(transport=transport, timeout=timeout) as http:
        yield http


async def post(http: httpx.AsyncClient, url: str) -> httpx.Response:
    return await http.post(url, content=b'{"encryptedValue": "x"}')


async def answer_each(answers: list[bytes]) -> Script:
    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        writer.write(answers[index])

    return script


async def test_a_connection_is_reused_for_answers_of_either_framing() -> None:
    chunked = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=1\r\nhello\r\n0\r\nT: 1\r\n\r\n"
    )
    async with (
        scripted(await answer_each([ok(b"first"), chunked, ok(b"")])) as server,
        client() as http,
    ):
        bodies = [(await post(http, server.url)).content for _ in range(3)]
    assert bodies == [b"first", b"hello", b""]
    assert server.connections == 1


async def test_connection_close_and_a_body_framed_by_the_close_each_end_the_connection() -> None:
    answers = [
        ok(b"one", b"Connection: close\r\n"),
        b"HTTP/1.1 200 OK\r\n\r\nuntil the end",
        ok(b"three"),
    ]

    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        writer.write(answers[index])
        if index < 2:
            writer.close()

    async with scripted(script) as server, client() as http:
        bodies = [(await post(http, server.url)).content for _ in range(3)]
    assert bodies == [b"one", b"until the end", b"three"]
    assert server.connections == 3


async def test_an_idle_connection_the_server_closed_is_replaced() -> None:
    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"%d" % index))
        await writer.drain()
        writer.close()  # without saying so: the client finds out while the connection idles

    async with scripted(script) as server, client() as http:
        first = await post(http, server.url)
        await asyncio.sleep(0.1)
        second = await post(http, server.url)
    assert (first.content, second.content) == (b"0", b"1")
    assert server.connections == 2


async def test_the_pool_never_opens_more_than_its_limit() -> None:
    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        await asyncio.sleep(0.05)
        writer.write(ok())

    async with scripted(script) as server, client(max_connections=2) as http:
        responses = await asyncio.gather(*(post(http, server.url) for _ in range(8)))
    assert [response.status_code for response in responses] == [200] * 8
    assert server.most_open == 2
    assert server.connections == 2


async def test_waiting_longer_than_the_pool_timeout_is_a_pool_timeout() -> None:
    release = asyncio.Event()

    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        await release.wait()
        writer.write(ok())

    async with scripted(script) as server, client(max_connections=1, pool=0.2) as http:
        holding = asyncio.create_task(post(http, server.url))
        await asyncio.sleep(0.05)
        with pytest.raises(httpx.PoolTimeout) as waited:
            await post(http, server.url)
        release.set()
        assert (await holding).status_code == 200
        assert (await post(http, server.url)).status_code == 200  # the slot came back
    assert transport_failure(waited.value) is Transport.POOL_TIMEOUT
    assert server.connections == 1


async def test_an_answer_abandoned_unread_closes_its_connection() -> None:
    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        writer.write(ok(b"x" * 100_000))

    async with scripted(script) as server, client() as http:
        async with http.stream("POST", server.url, content=b"{}") as response:
            assert response.status_code == 200  # the body is left unread
        assert (await post(http, server.url)).content == b"x" * 100_000
    assert server.connections == 2


async def test_headers_then_silence_is_a_read_timeout() -> None:
    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\n12345")
        await asyncio.sleep(2)

    async with scripted(script) as server, client(read=0.2) as http:
        with pytest.raises(httpx.ReadTimeout) as stalled:
            await post(http, server.url)
    assert transport_failure(stalled.value) is Transport.READ_TIMEOUT


GARBLED = [
    (b"hello there\r\n\r\n", "not an HTTP/1.x status line"),
    (b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n", "malformed header line"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", "conflicting"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", "invalid or conflicting"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", "unsupported Transfer-Enc"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "invalid chunk size"),
    (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nabc\r\n", "longer than"),
    (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nshort", "without sending complete"),
    (b"HTTP/1.1 200 OK\r\nX: " + b"y" * 70_000, "head longer than"),
    (b"", "Server disconnected without sending a response"),
]


@pytest.mark.parametrize(("answer", "message"), GARBLED)
async def test_a_garbled_or_cut_answer_is_a_protocol_error(answer: bytes, message: str) -> None:
    async def script(index: int, writer: asyncio.StreamWriter) -> None:
        writer.write(answer if index == 0 else ok())
        if index == 0:
            writer.close()

    async with scripted(script) as server, client() as http:
        with pytest.raises(httpx.RemoteProtocolError) as garbled:
            await post(http, server.url)
        assert (await post(http, server.url)).status_code == 200  # on a new connection
    assert message in str(garbled.value)
    assert transport_failure(garbled.value) is Transport.PROTOCOL
    assert server.connections == 2


async def test_nothing_listening_is_a_connect_error() -> None:
    async with scripted(await answer_each([])) as server:
        url = server.url
    async with client() as http:
        with pytest.raises(httpx.ConnectError) as refused:
            await post(http, url)
    assert transport_failure(refused.value) is Transport.CONNECT


def server_tls(tls: DevTlsSet, client_ca: Path | None = None) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(tls.server_certificate, tls.server_key)
    if client_ca is not None:
        context.load_verify_locations(client_ca)
        context.verify_mode = ssl.CERT_REQUIRED
    return context


def client_tls(ca: Path, client: DevTlsSet | None = None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(ca))
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    if client is not None:
        context.load_cert_chain(client.client_certificate, client.client_key)
    return context


async def tls_on_this_loop(tls: DevTlsSet, stranger: DevTlsSet) -> None:
    """A verified https exchange, with and without a client certificate the server requires;
    an untrusted server refused before anything is sent."""
    answers = await answer_each([ok(b"a"), ok(b"b"), ok(b"c")])
    async with (
        scripted(answers, server_tls(tls)) as server,
        client(tls=client_tls(tls.ca_certificate)) as http,
    ):
        assert (await post(http, server.url)).content == b"a"
        assert (await post(http, server.url)).content == b"b"
    assert server.connections == 1
    async with (
        scripted(answers, server_tls(stranger)) as server,
        client(tls=client_tls(tls.ca_certificate)) as http,
    ):
        with pytest.raises(httpx.ConnectError) as untrusted:
            await post(http, server.url)
    failure = tls_failure(untrusted.value)
    assert failure is not None
    assert failure.text.startswith("TLS: certificate verify failed")
    assert transport_failure(untrusted.value) is Transport.CONNECT
    mutual = server_tls(tls, client_ca=tls.ca_certificate)
    async with (
        scripted(await answer_each([ok(b"ours")]), mutual) as server,
        client(tls=client_tls(tls.ca_certificate, client=tls)) as http,
    ):
        assert (await post(http, server.url)).content == b"ours"
    async with (
        scripted(await answer_each([ok(b"never")]), mutual) as server,
        client(tls=client_tls(tls.ca_certificate)) as http,
    ):
        with pytest.raises(httpx.TransportError) as refused:
            await post(http, server.url)
    assert transport_failure(refused.value) in (
        Transport.RESET,
        Transport.PROTOCOL,
        Transport.CONNECT,
    )
    assert server.requests == 0


async def test_tls_and_mutual_tls(tmp_path: Path) -> None:
    await tls_on_this_loop(generate_dev_tls(tmp_path / "ca"), generate_dev_tls(tmp_path / "other"))


def test_every_promise_holds_on_uvloop(tmp_path: Path) -> None:
    """The tests above, each on a fresh uvloop event loop."""
    scenarios = [
        test_a_connection_is_reused_for_answers_of_either_framing,
        test_connection_close_and_a_body_framed_by_the_close_each_end_the_connection,
        test_an_idle_connection_the_server_closed_is_replaced,
        test_the_pool_never_opens_more_than_its_limit,
        test_waiting_longer_than_the_pool_timeout_is_a_pool_timeout,
        test_an_answer_abandoned_unread_closes_its_connection,
        test_headers_then_silence_is_a_read_timeout,
        test_nothing_listening_is_a_connect_error,
    ]
    for scenario in scenarios:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(scenario())
    for answer, message in GARBLED:
        with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
            runner.run(test_a_garbled_or_cut_answer_is_a_protocol_error(answer, message))
    tls, stranger = generate_dev_tls(tmp_path / "ca"), generate_dev_tls(tmp_path / "other")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(tls_on_this_loop(tls, stranger))
