"""The Mastercard error envelope and the reason codes the sandbox answers with.

Every error response of the sandbox has this body::

    {"Errors": {"Error": [
        {"Source": "rewards-points-api", "ReasonCode": "INVALID_POINTS",
         "Description": "...", "Recoverable": false, "Details": "pointsToAdjust"}
    ]}}

``Source`` is ``rewards-points-api`` for what PAS itself decides and ``Gateway`` for what the
Mastercard API Gateway decides before PAS sees the request (authentication, routing).
``Details`` names the offending field or query parameter when there is one, else ``null``.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

PAS_SOURCE = "rewards-points-api"
GATEWAY_SOURCE = "Gateway"


class ReasonCode(StrEnum):
    """Reason codes of the sandbox. The names are ours: PAS publishes none."""

    # 400, one per request
    INVALID_JSON = "INVALID_JSON"
    # 400, one per offending field
    MISSING_FIELD = "MISSING_FIELD"
    UNKNOWN_FIELD = "UNKNOWN_FIELD"
    INVALID_BANK_ACCOUNT_NUMBER = "INVALID_BANK_ACCOUNT_NUMBER"
    INVALID_POINTS = "INVALID_POINTS"
    INVALID_ADJUSTMENT_TYPE_CODE = "INVALID_ADJUSTMENT_TYPE_CODE"
    INVALID_ADJUSTMENT_REASON = "INVALID_ADJUSTMENT_REASON"
    INVALID_ADJUSTED_BY = "INVALID_ADJUSTED_BY"
    # 400, query parameters of the history call
    MISSING_PARAMETER = "MISSING_PARAMETER"
    INVALID_PARAMETER = "INVALID_PARAMETER"
    # 400, the JWE layer (see pa_devkit.sandbox.codec)
    ENCRYPTION_REQUIRED = "ENCRYPTION_REQUIRED"
    INVALID_ENCRYPTED_PAYLOAD = "INVALID_ENCRYPTED_PAYLOAD"
    INVALID_KID = "INVALID_KID"
    DECRYPTION_FAILED = "DECRYPTION_FAILED"
    # 400, the admin route PUT /_sandbox/faults
    INVALID_FAULT_CONFIG = "INVALID_FAULT_CONFIG"
    # 404 / 405 / 413 / 500
    ACCOUNT_NOT_FOUND = "ACCOUNT_NOT_FOUND"
    NOT_FOUND = "NOT_FOUND"
    METHOD_NOT_ALLOWED = "METHOD_NOT_ALLOWED"
    PAYLOAD_TOO_LARGE = "PAYLOAD_TOO_LARGE"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    # 401 from the gateway, as Mastercard documents it
    DECLINED = "DECLINED"
    # 429 from the gateway's rate limit; 504 when an injected hang ends unapplied
    TOO_MANY_REQUESTS = "TOO_MANY_REQUESTS"
    GATEWAY_TIMEOUT = "GATEWAY_TIMEOUT"


@dataclass(frozen=True, slots=True)
class ErrorItem:
    """One entry of the envelope's ``Error`` list."""

    reason_code: str
    description: str
    source: str = PAS_SOURCE
    recoverable: bool = False
    details: str | None = None

    def to_json(self) -> dict[str, Any]:
        """The entry in the envelope's wire spelling."""
        return {
            "Source": self.source,
            "ReasonCode": str(self.reason_code),
            "Description": self.description,
            "Recoverable": self.recoverable,
            "Details": self.details,
        }


def error_envelope(errors: Iterable[ErrorItem]) -> dict[str, Any]:
    """Wrap one or several errors in the envelope; at least one is required."""
    items = [error.to_json() for error in errors]
    if not items:
        raise ValueError("an error envelope needs at least one error")
    return {"Errors": {"Error": items}}


class ApiError(Exception):
    """An error answer: the HTTP status, the envelope's entries and any extra headers.

    Raised by the sandbox's handlers and by the pluggable request steps (codec, gateway
    check); the app turns it into a JSON response carrying the envelope.
    """

    def __init__(
        self,
        status: int,
        errors: Iterable[ErrorItem],
        *,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.status = status
        self.errors = list(errors)
        if not self.errors:
            raise ValueError("an ApiError needs at least one error")
        self.headers = dict(headers or {})
        codes = ", ".join(str(error.reason_code) for error in self.errors)
        super().__init__(f"{status} {codes}")

    @classmethod
    def pas(
        cls,
        status: int,
        reason_code: str,
        description: str,
        *,
        recoverable: bool = False,
        details: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiError:
        """A single error decided by PAS."""
        item = ErrorItem(reason_code, description, PAS_SOURCE, recoverable, details)
        return cls(status, [item], headers=headers)

    @classmethod
    def gateway(
        cls,
        status: int,
        reason_code: str,
        description: str,
        *,
        recoverable: bool = False,
        details: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> ApiError:
        """A single error decided by the API Gateway."""
        item = ErrorItem(reason_code, description, GATEWAY_SOURCE, recoverable, details)
        return cls(status, [item], headers=headers)

    @classmethod
    def unauthorized(cls) -> ApiError:
        """The gateway's documented 401."""
        return cls.gateway(401, ReasonCode.DECLINED, "Unauthorized - Access Not Granted")

    def envelope(self) -> dict[str, Any]:
        """The response body."""
        return error_envelope(self.errors)
