"""The API Gateway in front of PAS: which calls reach the sandbox's PAS routes.

Two gateways are shipped:

- :class:`AllowAllGateway`: lets everything through; the default (no security).
- :class:`OAuth1Gateway`: Mastercard's OAuth 1.0a check with
  :class:`~service.security.oauth1.OAuth1Verifier`: parameters in any order, the body hash
  recomputed over the exact bytes, the signature checked against the consumer key's
  registered certificate, the timestamp within the skew window, a nonce never used twice.

Every refusal is the gateway's documented 401 (Source ``Gateway``, ReasonCode ``DECLINED``,
"Unauthorized - Access Not Granted", not recoverable), whatever the cause, as Mastercard's
gateway answers: the precise cause (the :class:`~pa_devkit.oauth1_verifier.SignatureError`
reason) goes to the sandbox's log as ``sandbox.gateway.declined``, never into the answer.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web

from pa_devkit.oauth1_verifier import OAuth1Verifier, SignatureError
from pa_devkit.sandbox.envelope import ApiError


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """What the API Gateway sees of a call: enough to verify an OAuth 1.0a signature."""

    method: str
    url: str
    """The absolute URL as the client addressed it: scheme, ``Host`` header, raw path and
    query."""
    headers: Mapping[str, str]
    """The request headers; lookups are case-insensitive."""
    body: bytes
    """The exact body bytes as received (empty for a GET)."""

    @classmethod
    def from_request(cls, request: web.Request, body: bytes) -> GatewayRequest:
        """The call as received: the URL is rebuilt from the raw request line, not re-quoted."""
        target = request.raw_path
        # An absolute-form request target (RFC 9112 section 3.2.2) already is the URL.
        url = target if not target.startswith("/") else f"{request.scheme}://{request.host}{target}"
        return cls(request.method, url, request.headers, body)


class GatewayAuth(Protocol):
    """Decides whether a call reaches PAS; raise :class:`ApiError` (Source Gateway) if not."""

    async def check(self, request: GatewayRequest) -> None: ...


class EventLogger(Protocol):
    """The slice of a structlog logger the gateway uses; injectable for tests."""

    def info(self, event: str, /, **kw: Any) -> Any: ...


class AllowAllGateway:
    """A gateway that lets every call through: the default when security is off."""

    async def check(self, request: GatewayRequest) -> None:
        """Accept the call."""
        return None


class OAuth1Gateway:
    """Lets through only calls signed by a registered consumer (see the module docstring).

    Args:
        verifier: knows each consumer key's public key, the clock and the skew window, and
            remembers nonces.
        logger: where refusals are logged with their precise cause.
    """

    def __init__(self, verifier: OAuth1Verifier, *, logger: EventLogger | None = None) -> None:
        self._verifier = verifier
        self._log: EventLogger = (
            logger if logger is not None else structlog.get_logger("pa_devkit.sandbox")
        )

    async def check(self, request: GatewayRequest) -> None:
        """Verify the signature; any failure is the gateway's 401."""
        try:
            self._verifier.verify(request.method, request.url, request.headers, request.body)
        except SignatureError as exc:
            self._log.info(
                "sandbox.gateway.declined",
                reason=exc.reason,
                detail=exc.detail,
                method=request.method,
            )
            raise ApiError.unauthorized() from exc
