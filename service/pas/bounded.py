"""One HTTP exchange with PAS under a deadline and a byte cap, never decompressed.

httpx's timeouts apply per phase and per read: an answer that trickles a byte at a time
never trips them. ``response.content`` holds whatever PAS sends, inflated when it comes
compressed. ``exchange`` closes both holes:

- the whole exchange (pool wait, connect, send, the whole answer) runs under one
  ``asyncio.timeout``; past it, ``DeadlineError`` (the request may have left);
- it asks for ``Accept-Encoding: identity`` and refuses, unread, an answer whose
  ``Content-Encoding`` is anything else;
- it reads the raw bytes (``aiter_raw``: never httpx's decoders) and abandons an answer
  longer than ``max_bytes``, declared or as read.

A refused answer comes back as an ``Answer`` whose ``body`` is ``None`` and ``refused`` says
why; the response is always closed, so an unread one drops its connection. Transport
failures are httpx's ``RequestError``s, left to the caller to classify.

No transport inflates under ``aiter_raw``: httpcore and ours (``service.pas.native``) hand
over the bytes as received, and httpx-aiohttp's transport passes ``auto_decompress=False``
to aiohttp on every request.

Both PAS clients (the adjustment and the history) exchange through here, and share what
goes with it: the correlation headers, the least time worth sending a request with, and how
a failed exchange is described.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import httpx

from service.errors import PointsAdjusterError
from service.pas.tls import tls_failure

IDENTITY = "identity"
CORRELATION_HEADER = "Correlation-Id"
"""Our correlation id on a request: the command's ``correlation_id``."""
RESPONSE_CORRELATION_HEADER = "X-MC-Correlation-ID"
"""PAS's correlation id of the exchange, logged next to ours."""
MIN_CALL_S = 0.05
"""A request with less time than this before its deadline is not sent at all."""


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: its status, headers and body, or why the body was not read."""

    status: int
    headers: httpx.Headers
    body: bytes | None
    refused: str = ""


class DeadlineError(PointsAdjusterError):
    """The exchange did not end within its time; the request may have left."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(f"no complete answer within {timeout_s:.3g} s")
        self.timeout_s = timeout_s


async def exchange(
    http: httpx.AsyncClient,
    request: httpx.Request,
    *,
    max_bytes: int,
    timeout_s: float,
    auth: httpx.Auth | None = None,
) -> Answer:
    """Send ``request`` and read its answer, all within ``timeout_s`` and ``max_bytes``.

    Raises ``DeadlineError`` when time runs out and httpx's ``RequestError`` when the
    transport fails; a compressed or oversized answer is an ``Answer`` with no body.
    """
    request.headers["Accept-Encoding"] = IDENTITY
    try:
        async with asyncio.timeout(timeout_s):
            response = await http.send(request, stream=True, auth=auth)
            try:
                return await _read(response, max_bytes)
            finally:
                await response.aclose()
    except TimeoutError as exc:
        raise DeadlineError(timeout_s) from exc


async def _read(response: httpx.Response, max_bytes: int) -> Answer:
    status, headers = response.status_code, response.headers
    refused = _refusal(headers, max_bytes)
    if refused:
        return Answer(status, headers, None, refused)
    body = await _read_capped(response, max_bytes)
    if body is None:
        return Answer(status, headers, None, _too_large(max_bytes))
    return Answer(status, headers, body)


def _refusal(headers: httpx.Headers, max_bytes: int) -> str:
    """Why the answer is refused from its headers alone, or ``""``."""
    codings = [coding.strip().lower() for coding in headers.get("Content-Encoding", "").split(",")]
    encoded = [coding for coding in codings if coding not in ("", IDENTITY)]
    if encoded:
        return f"compressed answer (Content-Encoding: {','.join(encoded)[:40]}), not decompressed"
    declared = headers.get("Content-Length", "")
    if declared.strip().isdigit() and int(declared) > max_bytes:
        return _too_large(max_bytes)
    return ""


async def _read_capped(response: httpx.Response, max_bytes: int) -> bytes | None:
    """The raw body, or ``None`` as soon as it grows past ``max_bytes`` (not read further)."""
    body = bytearray()
    async for chunk in response.aiter_raw():
        if len(body) + len(chunk) > max_bytes:
            return None
        body += chunk
    return bytes(body)


def _too_large(max_bytes: int) -> str:
    return f"answer larger than {max_bytes} bytes"


def describe(exc: BaseException) -> str:
    """``Type: message`` of a failed exchange. For a TLS failure the message is what TLS said
    (``service.pas.tls.tls_failure``); an exception without a message (httpx's ``ReadError``
    of a reset connection) borrows the first one down its chain of causes; with none at all,
    the type alone."""
    tls = tls_failure(exc)
    message = tls.text if tls is not None else _first_message(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


def _first_message(exc: BaseException) -> str:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if str(current):
            return str(current)
        current = current.__cause__ or current.__context__
    return ""
