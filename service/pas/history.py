"""PAS's adjustment history (``GET /points-adjustments-details``), read to reconcile.

``PasHistoryClient.lookup`` signs the GET (OAuth1 over the URL with its query and an empty
body) and reads ``{"adjustments": [{adjustmentId, pointsAdjusted, adjustmentTypeCode,
adjustmentReason, adjustedBy, adjustedAt}, ...], "balance": n}``, decrypting it first when
it comes as a JWE wrapper. It never raises for what PAS or the network does: every failure
is a ``HistoryFailed``. One malformed entry fails the whole lookup, since skipping it could
hide the very adjustment being looked for and turn "applied" into "absent".

A lookup is bounded like an adjustment call (``service.pas.bounded``): one deadline for the
whole exchange (``call_timeout_s``, or the caller's ``deadline`` when sooner), at most
``max_response_bytes`` read, nothing decompressed; running out of time, an answer too long
or a compressed one is a ``HistoryFailed`` saying so. It carries the command's correlation
id in ``Correlation-Id``, as an adjustment call does.

Like adjustment calls, lookups go through the circuit breaker, the adaptive limit and the
metrics: the decorators in ``guarded``, ``limited`` and ``metered`` wrap this client, each
a :class:`TimedHistoryPort`, so the deadline a lookup got its slot under reaches the
exchange.

Paging is not documented for this endpoint. An answer that shows signs of it (a link or
token to a next page, a "more" flag, or a total above the entries returned) is read as
incomplete: what it lists still counts, but an absence in it proves nothing.

The account number travels in the query string (``user_id``); it is never logged, and is
masked in any problem text an exception might carry.
"""

from __future__ import annotations

import time
from typing import Any, Protocol, TypedDict, Unpack

import httpx
import structlog

from service.domain.command import mask_account
from service.domain.reconcile import HistoryEntry, HistoryFailed, HistoryFound, HistoryLookup
from service.errors import PointsAdjusterError
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
from service.security.oauth1 import MastercardOAuth1Auth
from service.settings import PasSettings

__all__ = [
    "DEFAULT_HISTORY_PATH",
    "DEFAULT_USER_ID_TYPE",
    "HistoryEntry",
    "HistoryFailed",
    "HistoryFound",
    "HistoryLookup",
    "LookupOptions",
    "PasHistoryClient",
    "TimedHistoryPort",
]

log = structlog.get_logger("service.pas")

DEFAULT_HISTORY_PATH = "/points-adjustments-details"
DEFAULT_USER_ID_TYPE = "RANAC"


class MalformedHistoryError(PointsAdjusterError):
    """The 200 answer is not the history's shape."""


class LookupOptions(TypedDict, total=False):
    """What a lookup carries besides the account: the reconciled command's correlation id,
    and the deadline (a ``time.monotonic()`` instant) by which the lookup is over."""

    correlation_id: str | None
    deadline: float | None


class TimedHistoryPort(Protocol):
    """A ``HistoryPort`` that also takes the lookup's deadline: what the decorators of
    ``service.pas`` pass down, unchanged but for the deadline, to the client."""

    async def lookup(
        self, account_number: str, **options: Unpack[LookupOptions]
    ) -> HistoryLookup: ...


class PasHistoryClient:
    """Implements ``HistoryPort`` (and ``TimedHistoryPort``) over HTTP, on the process's
    pooled ``httpx.AsyncClient``."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        settings: PasSettings,
        credentials: Credentials | CredentialStore,
        *,
        path: str = DEFAULT_HISTORY_PATH,
        user_id_type: str = DEFAULT_USER_ID_TYPE,
    ) -> None:
        if not path.startswith("/"):
            raise ValueError("path must start with '/'")
        if not user_id_type:
            raise ValueError("user_id_type must not be empty")
        self._http = http
        self._url = settings.base_url + path
        self._user_id_type = user_id_type
        self._credentials = (
            credentials
            if isinstance(credentials, CredentialStore)
            else CredentialStore(settings, credentials)
        )
        self._field = settings.encrypted_field
        self._call_timeout_s = settings.call_timeout_s
        self._max_bytes = settings.max_response_bytes

    async def lookup(
        self,
        account_number: str,
        *,
        correlation_id: str | None = None,
        deadline: float | None = None,
    ) -> HistoryLookup:
        """Every adjustment of the account, oldest first, or why they could not be read.

        ``correlation_id`` goes out as ``Correlation-Id``; the lookup is over by ``deadline``
        (a ``time.monotonic()`` instant) or ``call_timeout_s``, whichever comes first.
        """
        started = time.monotonic()
        end = started + self._call_timeout_s
        remaining = (end if deadline is None else min(deadline, end)) - started
        if remaining < MIN_CALL_S:
            problem = f"{max(remaining, 0.0) * 1000:.0f} ms left before the deadline: not sent"
            return _failed(problem, None, started, correlation_id)
        credentials = self._credentials.current  # one snapshot for the whole lookup
        codec = JweBodyCodec(credentials.encrypter, self._credentials, self._field)
        try:
            answer = await exchange(
                self._http,
                self._build(account_number, correlation_id),
                max_bytes=self._max_bytes,
                timeout_s=remaining,
                auth=MastercardOAuth1Auth(credentials.signer),
            )
        except (httpx.HTTPError, httpx.InvalidURL, DeadlineError) as exc:
            problem = _mask(describe(exc), account_number)
            return _failed(problem, None, started, correlation_id)
        their_id = answer.headers.get(RESPONSE_CORRELATION_HEADER)
        if answer.status != 200 or answer.body is None:
            return _failed(_problem(answer), answer.status, started, correlation_id, their_id)
        try:
            document, entries = _read(answer.body, codec)
        except (MalformedHistoryError, ValueError, RecursionError) as exc:
            problem = _mask(f"HTTP 200 with an unreadable history: {exc}", account_number)
            return _failed(problem, 200, started, correlation_id, their_id)
        complete = _complete(document, len(entries))
        log.debug(
            "pas.history.read",
            entries=len(entries),
            complete=complete,
            duration_s=round(time.monotonic() - started, 4),
            correlation_id=correlation_id,
            pas_correlation_id=their_id,
        )
        return HistoryFound(entries, complete)

    def _build(self, account_number: str, correlation_id: str | None) -> httpx.Request:
        headers = {"Accept": "application/json"}
        if correlation_id:
            headers[CORRELATION_HEADER] = correlation_id
        params = {"user_id": account_number, "user_id_type": self._user_id_type}
        return self._http.build_request("GET", self._url, params=params, headers=headers)


def _read(body: bytes, codec: JweBodyCodec) -> tuple[dict[str, Any], list[HistoryEntry]]:
    document = codec.decode(body)  # ValueError when not JSON or not decryptable
    if not isinstance(document, dict):
        raise MalformedHistoryError("not a JSON object")
    adjustments = document.get("adjustments")
    if not isinstance(adjustments, list):
        raise MalformedHistoryError("no 'adjustments' list")
    return document, [_entry(item, index) for index, item in enumerate(adjustments)]


# Fields by which common paging styles say there is more (cursor, page links, flags).
_NEXT_FIELDS = ("next", "nextPage", "nextPageToken", "nextCursor", "cursor", "hasMore", "more")
_TOTAL_FIELDS = ("total", "totalCount", "totalItems", "totalElements", "totalRecords")


def _complete(document: dict[str, Any], returned: int) -> bool:
    """False when the answer says it holds more adjustments than the ``returned`` ones."""
    for name in _NEXT_FIELDS:
        if document.get(name) not in (None, False, "", [], {}):
            return False
    links = document.get("links") or document.get("_links")
    if isinstance(links, dict) and links.get("next"):
        return False
    if isinstance(links, list) and any(
        isinstance(link, dict) and link.get("rel") == "next" for link in links
    ):
        return False
    for name in _TOTAL_FIELDS:
        total = document.get(name)
        if isinstance(total, int) and not isinstance(total, bool) and total > returned:
            return False
    return True


def _entry(item: Any, index: int) -> HistoryEntry:
    if not isinstance(item, dict):
        raise MalformedHistoryError(f"adjustments[{index}] is not an object")
    adjustment_id = item.get("adjustmentId")
    if isinstance(adjustment_id, int) and not isinstance(adjustment_id, bool):
        adjustment_id = str(adjustment_id)
    points = item.get("pointsAdjusted")
    reason = item.get("adjustmentReason")
    adjusted_at = item.get("adjustedAt")
    if not isinstance(adjustment_id, str) or not adjustment_id:
        raise MalformedHistoryError(f"adjustments[{index}].adjustmentId is missing or invalid")
    if not isinstance(points, int) or isinstance(points, bool):
        raise MalformedHistoryError(f"adjustments[{index}].pointsAdjusted is not an integer")
    if not isinstance(reason, str):
        raise MalformedHistoryError(f"adjustments[{index}].adjustmentReason is not a string")
    if not isinstance(adjusted_at, str):
        raise MalformedHistoryError(f"adjustments[{index}].adjustedAt is not a string")
    return HistoryEntry(adjustment_id, points, reason, adjusted_at)


def _problem(answer: Answer) -> str:
    """What a non-200 answer, or a 200 whose body was refused, says went wrong."""
    if answer.status == 200:
        return f"HTTP 200 with an unreadable history: {answer.refused}"
    codes = [] if answer.body is None else [e.reason_code for e in parse_envelope(answer.body)]
    problem = f"HTTP {answer.status}" + (f" {','.join(codes)}" if codes else "")
    return problem + (f" ({answer.refused})" if answer.refused else "")


def _failed(
    problem: str,
    status: int | None,
    started: float,
    correlation_id: str | None,
    their_id: str | None = None,
) -> HistoryFailed:
    log.info(
        "pas.history.failed",
        problem=problem,
        status=status,
        duration_s=round(time.monotonic() - started, 4),
        correlation_id=correlation_id,
        pas_correlation_id=their_id,
    )
    return HistoryFailed(problem, status)


def _mask(text: str, account_number: str) -> str:
    """``text`` with the account number masked as everywhere else (``mask_account``)."""
    if not account_number:
        return text
    return text.replace(account_number, mask_account(account_number))
