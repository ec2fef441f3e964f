"""A hostile PAS over a real socket cannot hold a call past its deadline or exhaust memory.

The server is aiohttp.web on 127.0.0.1 (port 0); every test runs on each HTTP transport
under httpx. The base URL names the server's behaviour: ``/stall``, ``/trickle``, ``/huge``,
``/bomb`` or ``/ok``, each followed by the adjustment path.
"""

from __future__ import annotations

import asyncio
import json
import time
import tracemalloc
import zlib
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiohttp import web

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from service.domain.classification import Action, Observation, Transport, classify
from service.domain.ports import PasReply, PasRequest
from service.pas.client import PasClient, open_http_client
from service.pas.credentials import load_credentials
from service.security.jwe import JweEncrypter
from service.security.keys import load_certificate
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY

REQUEST = PasRequest("5123456789012345000", 10, "GOODWILL", "hostile test", "agent-1", "c-1")
CAP = 256 * 1024
HUGE_BYTES = 50 * 1024 * 1024
BOMB_INFLATED_BYTES = 100 * 1024 * 1024
CHUNK = b"x" * 65_536
PEAK_LIMIT = 4 * 1024 * 1024
TRANSPORTS = pytest.mark.parametrize("transport", ["httpx", "aiohttp", "native"])


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """100 MB of zeros, gzip-compressed as a stream (about 100 KB, never whole in memory)."""
    packer = zlib.compressobj(level=9, wbits=31)
    zeros = bytes(1024 * 1024)
    parts = [packer.compress(zeros) for _ in range(BOMB_INFLATED_BYTES // len(zeros))]
    return b"".join(parts) + packer.flush()


class HostilePas:
    """PAS's adjustment endpoint misbehaving in one chosen way per base URL."""

    def __init__(self, keyset: DevKeySet, bomb: bytes) -> None:
        self.to_client = JweEncrypter(load_certificate(keyset.client_decryption_certificate))
        self.bomb = bomb
        self.accept_encodings: list[str | None] = []
        self.released = asyncio.Event()

    async def answer(self, request: web.Request) -> web.StreamResponse:
        self.accept_encodings.append(request.headers.get("Accept-Encoding"))
        await request.read()
        behaviour = request.match_info["behaviour"]
        if behaviour == "stall":
            await self.released.wait()  # no answer, not even headers, until the test ends
        if behaviour == "trickle":
            return await self._trickle(request)
        if behaviour == "huge":
            return await self._huge(request)
        if behaviour == "bomb":
            return web.Response(
                body=self.bomb,
                headers={"Content-Type": "application/json", "Content-Encoding": "gzip"},
            )
        sealed = self.to_client.encrypt(b'{"pointsAdjusted": 10}')
        return web.json_response({"encryptedValue": sealed})

    async def _trickle(self, request: web.Request) -> web.StreamResponse:
        """A 200 whose body comes one byte every 0.2 s, for up to 20 s."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for byte in json.dumps({"pointsAdjusted": 10}).encode().ljust(100):
                await response.write(bytes([byte]))
                await asyncio.sleep(0.2)
        except ConnectionError:
            pass  # the client gave up, as it should
        return response

    async def _huge(self, request: web.Request) -> web.StreamResponse:
        """A 200 of 50 MB, sent chunked (no Content-Length) in 64 KiB pieces."""
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        try:
            for _ in range(HUGE_BYTES // len(CHUNK)):
                await response.write(CHUNK)
        except ConnectionError:
            pass  # the client stopped reading and closed the connection
        return response


@pytest.fixture
async def pas(dev_keyset: DevKeySet, bomb: bytes) -> AsyncIterator[tuple[HostilePas, str]]:
    """The hostile PAS, listening on a free loopback port, and its root URL."""
    hostile = HostilePas(dev_keyset, bomb)
    app = web.Application()
    app.router.add_post("/{behaviour}/points-adjustments", hostile.answer)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    host, port = runner.addresses[0][:2]
    try:
        yield hostile, f"http://{host}:{port}"
    finally:
        hostile.released.set()
        await runner.cleanup()


def settings_for(keyset: DevKeySet, base_url: str, transport: str, **extra: Any) -> PasSettings:
    return PasSettings.model_validate(
        {
            "base_url": base_url,
            "allow_plain_http": True,
            "http_transport": transport,
            "max_response_bytes": CAP,
            "consumer_key": CONSUMER_KEY,
            "signing_key_path": keyset.client_signing_p12,
            "signing_key_password": DEV_P12_PASSWORD,
            "encryption_certificate_path": keyset.pas_encryption_certificate,
            "decryption_key_path": keyset.client_decryption_key,
            **extra,
        }
    )


async def call(
    settings: PasSettings, *, trace_memory: bool = False, deadline_s: float = 30.0
) -> tuple[PasReply, int]:
    """One adjustment through the production client; the reply and the call's memory peak."""
    credentials = load_credentials(settings, now=datetime.now(UTC))
    async with open_http_client(settings) as http:
        client = PasClient(http, settings, credentials)
        if trace_memory:
            tracemalloc.start()
        try:
            reply = await client.adjust(REQUEST, deadline=time.monotonic() + deadline_s)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
    return reply, peak


@TRANSPORTS
async def test_a_trickling_answer_ends_at_the_call_timeout(
    pas: tuple[HostilePas, str], dev_keyset: DevKeySet, transport: str
) -> None:
    """A 200 trickling a byte every 0.2 s is cut at call_timeout_s (2 s) as a READ_TIMEOUT."""
    _, root = pas
    settings = settings_for(
        dev_keyset, f"{root}/trickle", transport, read_timeout_s=1.0, call_timeout_s=2.0
    )
    started = time.monotonic()

    reply, _ = await call(settings)

    assert 1.9 < time.monotonic() - started < 2.5
    assert reply.observation == Observation(transport=Transport.READ_TIMEOUT)
    assert reply.problem == "DeadlineError: no complete answer within 2 s"
    assert classify(reply.observation).action is Action.UNKNOWN


@TRANSPORTS
async def test_a_caller_deadline_cuts_a_call_waiting_for_headers(
    pas: tuple[HostilePas, str], dev_keyset: DevKeySet, transport: str
) -> None:
    """A PAS that never answers is cut at the caller's deadline (1 s) as a READ_TIMEOUT."""
    _, root = pas
    settings = settings_for(dev_keyset, f"{root}/stall", transport, read_timeout_s=10.0)
    started = time.monotonic()

    reply, _ = await call(settings, deadline_s=1.0)

    assert 0.9 < time.monotonic() - started < 1.5
    assert reply.observation == Observation(transport=Transport.READ_TIMEOUT)


@TRANSPORTS
async def test_a_50_mb_answer_is_abandoned_at_the_cap(
    pas: tuple[HostilePas, str], dev_keyset: DevKeySet, transport: str
) -> None:
    """A 50 MB 200 is UNREADABLE_ANSWER, read no further than the cap (peak memory < 4 MB)."""
    _, root = pas
    settings = settings_for(dev_keyset, f"{root}/huge", transport)

    reply, peak = await call(settings, trace_memory=True)

    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert reply.problem == f"HTTP 200 with an unreadable body: answer larger than {CAP} bytes"
    assert peak < PEAK_LIMIT
    assert classify(reply.observation).action is Action.UNKNOWN


@TRANSPORTS
async def test_a_gzip_bomb_is_refused_not_inflated(
    pas: tuple[HostilePas, str], dev_keyset: DevKeySet, bomb: bytes, transport: str
) -> None:
    """A gzip bomb (100 MB of zeros, under the cap compressed) is refused unread, never inflated."""
    assert len(bomb) < CAP  # only the refusal of compression stands between it and us
    _, root = pas
    settings = settings_for(dev_keyset, f"{root}/bomb", transport)

    reply, peak = await call(settings, trace_memory=True)

    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert "compressed answer (Content-Encoding: gzip), not decompressed" in reply.problem
    assert peak < PEAK_LIMIT


@TRANSPORTS
async def test_a_normal_encrypted_answer_still_works(
    pas: tuple[HostilePas, str], dev_keyset: DevKeySet, transport: str
) -> None:
    """A small JWE-encrypted 200 is read and decrypted, the request having asked for identity."""
    hostile, root = pas
    settings = settings_for(dev_keyset, f"{root}/ok", transport)

    reply, _ = await call(settings)

    assert reply.observation == Observation(status=200)
    assert reply.points_adjusted == 10
    assert hostile.accept_encodings == ["identity"]
