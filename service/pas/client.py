"""The PAS adjustment call on one pooled ``httpx.AsyncClient``.

``PasClient.adjust`` never raises for what PAS or the network does: it reports how the call
ended as a ``PasReply`` (an HTTP status with the envelope, or a transport failure); what to
do about it is the classification table's business (``service.domain.classification``).

A call is bounded (``service.pas.bounded``): it ends by its deadline, reads at most
``max_response_bytes`` of the answer and never decompresses one. A call too close to its
deadline is not sent (``POOL_TIMEOUT``); one that runs out of time once its request may
have left is a ``READ_TIMEOUT``; an answer too long or compressed cannot be read (for a 200,
``UNREADABLE_ANSWER``; for an error status, an answer without an envelope).

PAS's answer is not trusted to leave the account number out: the texts of its error
envelope and every problem text are masked (the request's account number wherever it appears,
and any card number, ``service.domain.pii``) before they reach a log line or an outcome.

A request whose ``PasRequest.trace`` is set goes out as a child span of it: its own
``traceparent`` (same trace, a new span id) and the ``tracestate`` carried through.
"""

from __future__ import annotations

import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Protocol

import aiohttp
import httpx
import structlog

from service.domain.classification import Observation, Transport
from service.domain.command import mask_account
from service.domain.outcome import ErrorDetail
from service.domain.pii import mask_card_numbers
from service.domain.ports import PasReply, PasRequest
from service.pas.bounded import (
    CORRELATION_HEADER,
    MIN_CALL_S,
    RESPONSE_CORRELATION_HEADER,
    Answer,
    DeadlineError,
    describe,
    exchange,
)
from service.pas.credentials import Credentials
from service.pas.envelope import parse_envelope
from service.pas.jwe_codec import JweBodyCodec
from service.pas.rotation import CredentialStore
from service.pas.tls import load_pas_tls
from service.security.oauth1 import MastercardOAuth1Auth
from service.settings import PasSettings
from service.tracing import NO_SPANS, Span, SpanSink

log = structlog.get_logger("service.pas")

NOT_SENT_MARGIN_S = 0.05
"""How long before the deadline waiting for a connection, and connecting, give up."""

# httpx's exceptions, most specific first, and what each says about the request.
TRANSPORT_FAILURES: tuple[tuple[type[Exception], Transport], ...] = (
    (httpx.ConnectTimeout, Transport.CONNECT_TIMEOUT),
    (httpx.PoolTimeout, Transport.POOL_TIMEOUT),
    (httpx.ConnectError, Transport.CONNECT),
    (httpx.UnsupportedProtocol, Transport.CONNECT),
    (httpx.ReadTimeout, Transport.READ_TIMEOUT),
    (httpx.WriteTimeout, Transport.WRITE_TIMEOUT),
    (httpx.ReadError, Transport.RESET),
    (httpx.WriteError, Transport.RESET),
    (httpx.RemoteProtocolError, Transport.PROTOCOL),
)


def _aiohttp_failure(cause: BaseException) -> Transport | None:
    """What an aiohttp error (under the aiohttp transport) says about the request.

    httpx-aiohttp maps every ``aiohttp.ClientConnectionError`` to ``httpx.ConnectTimeout``,
    including a server that disconnected after our request was sent: read as "not sent",
    that would retry an adjustment that may have been applied. So the original aiohttp
    error decides: only a failure to establish the connection counts as not sent.
    """
    if not isinstance(cause, aiohttp.ClientError):
        return None
    if isinstance(cause, aiohttp.ConnectionTimeoutError):
        return Transport.CONNECT_TIMEOUT
    if isinstance(cause, aiohttp.ClientConnectorError | aiohttp.InvalidURL):
        return Transport.CONNECT
    if isinstance(cause, aiohttp.ServerTimeoutError):
        return Transport.READ_TIMEOUT
    return Transport.RESET


def transport_failure(exc: httpx.RequestError) -> Transport:
    """What an httpx error says about the request; unlisted ones count as answer lost."""
    from_aiohttp = _aiohttp_failure(exc.__cause__) if exc.__cause__ is not None else None
    if from_aiohttp is not None:
        return from_aiohttp
    for kind, failure in TRANSPORT_FAILURES:
        if isinstance(exc, kind):
            return failure
    return Transport.PROTOCOL


class BodyCodec(Protocol):
    """Turns the plaintext JSON body into the bytes sent, and the answer back into JSON."""

    content_type: str

    def encode(self, body: dict[str, object]) -> bytes: ...

    def decode(self, body: bytes) -> object: ...


class PasClient:
    """Implements ``PasPort`` over HTTP: every request encrypted (JWE), then signed (OAuth1).

    Each call ends by its deadline or ``call_timeout_s``, whichever comes first, and reads
    at most ``max_response_bytes`` of the answer, never decompressed (``bounded.exchange``).
    """

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: PasSettings,
        credentials: Credentials | CredentialStore,
        *,
        spans: SpanSink = NO_SPANS,
    ) -> None:
        self._http = http
        self._spans = spans
        self._url = settings.base_url + settings.adjustment_path
        self._method = settings.method
        self._credentials = (
            credentials
            if isinstance(credentials, CredentialStore)
            else CredentialStore(settings, credentials)
        )
        self._field = settings.encrypted_field
        self._call_timeout_s = settings.call_timeout_s
        self._max_bytes = settings.max_response_bytes

    async def adjust(self, request: PasRequest, *, deadline: float) -> PasReply:
        if request.trace is None:
            return await self._adjust(request, deadline, None)
        span = request.trace.child()
        started_ns = time.time_ns()
        reply = await self._adjust(request, deadline, span)
        observation = reply.observation
        attributes: dict[str, str | int | bool] = {"http.request.method": self._method}
        if observation.status is not None:
            attributes["http.response.status_code"] = observation.status
        if observation.transport is not None:
            attributes["error.type"] = observation.transport.name
        self._spans.finished(span, "PAS adjust", started_ns, time.time_ns(), attributes)
        return reply

    async def _adjust(self, request: PasRequest, deadline: float, span: Span | None) -> PasReply:
        started = time.monotonic()
        remaining = min(deadline, started + self._call_timeout_s) - started
        if remaining < MIN_CALL_S:
            log.info(
                "pas.call_not_sent",
                remaining_s=round(remaining, 3),
                correlation_id=request.correlation_id,
            )
            return PasReply(
                Observation(transport=Transport.POOL_TIMEOUT),
                0.0,
                problem=f"{max(remaining, 0.0) * 1000:.0f} ms left before the call's deadline:"
                " not sent",
            )
        # One snapshot of the credentials for the whole call: a key rotated meanwhile
        # (service.pas.rotation) does not mix keys within it.
        credentials = self._credentials.current
        codec = JweBodyCodec(credentials.encrypter, self._credentials, self._field)
        try:
            answer = await exchange(
                self._http,
                self._build(request, remaining, span, codec),
                max_bytes=self._max_bytes,
                timeout_s=remaining,
                auth=MastercardOAuth1Auth(credentials.signer),
            )
        except DeadlineError as exc:
            log.warning(
                "pas.call_deadline_passed",
                timeout_s=round(remaining, 3),
                correlation_id=request.correlation_id,
            )
            return PasReply(
                Observation(transport=Transport.READ_TIMEOUT),
                time.monotonic() - started,
                problem=_masked(describe(exc), request.bank_account_number),
            )
        except httpx.RequestError as exc:
            return PasReply(
                Observation(transport=transport_failure(exc)),
                time.monotonic() - started,
                problem=_masked(describe(exc), request.bank_account_number),
            )
        return self._read(answer, time.monotonic() - started, request, codec)

    def _build(
        self, request: PasRequest, remaining: float, span: Span | None, codec: BodyCodec
    ) -> httpx.Request:
        """The encrypted request, its pool and connect timeouts cut to fit in ``remaining``.

        Waiting for a connection and connecting fail as "not sent" (safe to retry): they are
        given up a little before the deadline, so a call cut short there is not reported as
        a read timeout (an unknown outcome) by the deadline instead.
        """
        before_deadline = max(remaining - NOT_SENT_MARGIN_S, remaining / 2)
        timeout = self._http.timeout
        headers = {
            "Content-Type": codec.content_type,
            "Accept": "application/json",
            CORRELATION_HEADER: request.correlation_id,
        }
        if span is not None:
            headers.update(span.headers())
        return self._http.build_request(
            self._method,
            self._url,
            content=codec.encode(request.body()),
            headers=headers,
            timeout=httpx.Timeout(
                connect=_at_most(timeout.connect, before_deadline),
                read=timeout.read,
                write=timeout.write,
                pool=_at_most(timeout.pool, before_deadline),
            ),
        )

    def _read(
        self, answer: Answer, elapsed: float, request: PasRequest, codec: BodyCodec
    ) -> PasReply:
        their_id = answer.headers.get(RESPONSE_CORRELATION_HEADER)
        if answer.refused:
            log.warning(
                "pas.answer_refused",
                status=answer.status,
                problem=answer.refused,
                correlation_id=request.correlation_id,
                pas_correlation_id=their_id,
            )
        if answer.status == 200:
            return self._applied(answer, elapsed, their_id, codec)
        return self._error(answer, elapsed, their_id, request.bank_account_number)

    def _applied(
        self, answer: Answer, elapsed: float, their_id: str | None, codec: BodyCodec
    ) -> PasReply:
        points = None if answer.body is None else _points_adjusted(answer.body, codec)
        if points is None:
            why = f": {answer.refused}" if answer.refused else ""
            return PasReply(
                Observation(transport=Transport.UNREADABLE_ANSWER),
                elapsed,
                pas_correlation_id=their_id,
                problem=f"HTTP 200 with an unreadable body{why}",
            )
        return PasReply(Observation(status=200), elapsed, points, pas_correlation_id=their_id)

    def _error(
        self, answer: Answer, elapsed: float, their_id: str | None, account_number: str
    ) -> PasReply:
        status = answer.status
        errors = () if answer.body is None else parse_envelope(answer.body)
        errors = tuple(_masked_error(error, account_number) for error in errors)
        recoverable = any(error.recoverable for error in errors)
        log.info(
            "pas.error_response",
            status=status,
            reason_codes=[error.reason_code for error in errors],
            recoverable=recoverable,
            pas_correlation_id=their_id,
        )
        codes = ",".join(error.reason_code for error in errors) or "no error envelope"
        why = f" ({answer.refused})" if answer.refused else ""
        return PasReply(
            Observation(status=status, recoverable=recoverable),
            elapsed,
            errors=errors,
            retry_after_s=_retry_after(answer.headers.get("Retry-After")),
            pas_correlation_id=their_id,
            problem=f"HTTP {status} {codes}{why}",
        )


def _points_adjusted(body: bytes, codec: BodyCodec) -> int | None:
    try:
        document = codec.decode(body)
    except ValueError:
        return None
    if not isinstance(document, dict):
        return None
    points = document.get("pointsAdjusted")
    if isinstance(points, int) and not isinstance(points, bool):
        return points
    return None


def _masked(text: str, account_number: str) -> str:
    """``text`` with the account number (wherever it is) and any card number masked."""
    if account_number:
        text = text.replace(account_number, mask_account(account_number))
    return mask_card_numbers(text)


def _masked_error(error: ErrorDetail, account_number: str) -> ErrorDetail:
    """An envelope entry with each of its texts masked (``_masked``)."""
    return ErrorDetail(
        _masked(error.source, account_number),
        _masked(error.reason_code, account_number),
        _masked(error.description, account_number),
        error.recoverable,
        None if error.field is None else _masked(error.field, account_number),
    )


def _at_most(timeout_s: float | None, limit_s: float) -> float:
    return limit_s if timeout_s is None else min(timeout_s, limit_s)


def _retry_after(value: str | None) -> float | None:
    """Retry-After in seconds (the delta-seconds form; an HTTP date is ignored)."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


def http_timeout(settings: PasSettings) -> httpx.Timeout:
    return httpx.Timeout(
        connect=settings.connect_timeout_s,
        read=settings.read_timeout_s,
        write=settings.read_timeout_s,
        pool=settings.pool_timeout_s,
    )


class _NoCookies(httpx.Cookies):
    """A cookie jar that keeps nothing: PAS is a stateless API, and httpx's cookie extraction
    costs about 40 µs per response (it rebuilds the exchange as urllib objects)."""

    def extract_cookies(self, response: httpx.Response) -> None:
        return None


class _CookielessClient(httpx.AsyncClient):
    _no_cookies = _NoCookies()

    @property
    def cookies(self) -> httpx.Cookies:
        return self._no_cookies

    @cookies.setter
    def cookies(self, cookies: object) -> None:
        """httpx sets an empty jar at construction; nothing else sets one."""


@asynccontextmanager
async def open_http_client(
    settings: PasSettings, tls: ssl.SSLContext | None = None
) -> AsyncIterator[httpx.AsyncClient]:
    """The one pooled HTTP client of the process, on the transport the settings choose.

    Every transport gets the same TLS context: ``tls``, or the one the settings describe
    (``service.pas.tls``: TLS 1.2 at least, the certificate and host name always verified,
    the CA bundle and client certificate of the settings). Redirects are never followed:
    a 3xx is PAS's answer, not a place to send a signed adjustment to.

    No transport decompresses what ``bounded.exchange`` reads: httpcore and our own
    (``service.pas.native``) return the bytes as received, and httpx-aiohttp's transport
    passes ``auto_decompress=False`` to aiohttp on each request
    (``tests/integration/test_pas_hostile.py`` holds each to that).
    """
    if tls is None:
        tls = load_pas_tls(settings, now=datetime.now(UTC)).context
    limits = httpx.Limits(
        max_connections=settings.max_connections,
        max_keepalive_connections=settings.max_connections,
    )
    transport: httpx.AsyncBaseTransport | None = None
    if settings.http_transport == "aiohttp":
        from httpx_aiohttp import AiohttpTransport

        transport = AiohttpTransport(verify=tls, limits=limits)
    elif settings.http_transport == "native":
        from service.pas.native import NativeTransport

        transport = NativeTransport(ssl_context=tls, limits=limits)
    async with _CookielessClient(
        timeout=http_timeout(settings),
        limits=limits,
        verify=tls,
        follow_redirects=False,
        transport=transport,
    ) as client:
        yield client
