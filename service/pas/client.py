"""The PAS adjustment call on one pooled ``httpx.AsyncClient``.

``PasClient.adjust`` never raises for what PAS or the network does: it classifies every
ending into the processing core's ``PasResult`` (applied, refused, not sent, unknown).
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Protocol

import httpx
import structlog

from service.domain.ports import (
    PasApplied,
    PasNotSent,
    PasRefused,
    PasRequest,
    PasResult,
    PasUnknown,
)
from service.pas.credentials import Credentials
from service.pas.envelope import parse_envelope
from service.pas.jwe_codec import JweBodyCodec
from service.security.oauth1 import MastercardOAuth1Auth
from service.settings import PasSettings

log = structlog.get_logger("service.pas")

CORRELATION_HEADER = "Correlation-Id"
RESPONSE_CORRELATION_HEADER = "X-MC-Correlation-ID"

# Failures where the request provably did not leave this process.
NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol)


class BodyCodec(Protocol):
    """Turns the plaintext JSON body into the bytes sent, and the answer back into JSON."""

    content_type: str

    def encode(self, body: dict[str, object]) -> bytes: ...

    def decode(self, body: bytes) -> object: ...


class PasClient:
    """Implements ``PasPort`` over HTTP: every request encrypted (JWE), then signed (OAuth1)."""

    def __init__(
        self, http: httpx.AsyncClient, settings: PasSettings, credentials: Credentials
    ) -> None:
        self._http = http
        self._url = settings.base_url + settings.adjustment_path
        self._method = settings.method
        self._codec: BodyCodec = JweBodyCodec(
            credentials.encrypter, credentials.decrypter, settings.encrypted_field
        )
        self._auth = MastercardOAuth1Auth(credentials.signer)

    async def adjust(self, request: PasRequest) -> PasResult:
        content = self._codec.encode(request.body())
        headers = {
            "Content-Type": self._codec.content_type,
            "Accept": "application/json",
            CORRELATION_HEADER: request.correlation_id,
        }
        started = time.perf_counter()
        try:
            response = await self._http.request(
                self._method, self._url, content=content, headers=headers, auth=self._auth
            )
        except NOT_SENT as exc:
            return PasNotSent(_describe(exc), time.perf_counter() - started)
        except httpx.RequestError as exc:
            return PasUnknown(_describe(exc), None, (), time.perf_counter() - started)
        elapsed = time.perf_counter() - started
        return self._classify(response, elapsed)

    def _classify(self, response: httpx.Response, elapsed: float) -> PasResult:
        status = response.status_code
        their_id = response.headers.get(RESPONSE_CORRELATION_HEADER)
        if status == 200:
            points = self._points_adjusted(response.content)
            if points is None:
                return PasUnknown("HTTP 200 with an unreadable body", status, (), elapsed)
            return PasApplied(points, elapsed, their_id)
        errors = parse_envelope(response.content)
        recoverable = any(error.recoverable for error in errors)
        log.info(
            "pas.error_response",
            status=status,
            reason_codes=[error.reason_code for error in errors],
            recoverable=recoverable,
            pas_correlation_id=their_id,
        )
        if 400 <= status < 500:
            return PasRefused(status, errors, elapsed, recoverable or status == 429)
        if recoverable:
            return PasRefused(status, errors, elapsed, True)
        return PasUnknown(f"HTTP {status} without Recoverable=true", status, errors, elapsed)

    def _points_adjusted(self, body: bytes) -> int | None:
        try:
            document = self._codec.decode(body)
        except ValueError:
            return None
        if not isinstance(document, dict):
            return None
        points = document.get("pointsAdjusted")
        if isinstance(points, int) and not isinstance(points, bool):
            return points
        return None


def _describe(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def http_timeout(settings: PasSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.pool_timeout_s,
    )


@asynccontextmanager
async def open_http_client(settings: PasSettings) -> AsyncIterator[httpx.AsyncClient]:
    """The one pooled HTTP client of the process."""
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
    )
    async with httpx.AsyncClient(
        timeout=http_timeout(settings), limits=limits, follow_redirects=False
    ) as client:
        yield client
