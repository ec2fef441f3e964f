"""PasHistoryClient on an httpx MockTransport: the signed GET it sends, how it reads answers."""

from __future__ import annotations

import gzip
import json
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import pytest
from structlog.testing import capture_logs

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from service.domain.command import mask_account
from service.domain.reconcile import HistoryEntry, HistoryFailed, HistoryFound, HistoryLookup
from service.pas.credentials import Credentials, load_credentials
from service.pas.history import PasHistoryClient
from service.security.jwe import JweEncrypter
from service.security.keys import load_certificate
from service.security.oauth1 import body_hash
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY
from tests.http_support import Chunks, Recorder, streamed

BASE_URL = "https://sandbox.api.mastercard.com/loyalty"
ACCOUNT = "5123456789012345000"
ADJUSTMENT = {
    "adjustmentId": "adj-000001",
    "pointsAdjusted": 250,
    "adjustmentTypeCode": "GOODWILL",
    "adjustmentReason": "late delivery ref:abcdefghijkl",
    "adjustedBy": "agent-0042",
    "adjustedAt": "2024-05-01T12:00:00.000Z",
}
ENTRY = HistoryEntry(
    "adj-000001", 250, "late delivery ref:abcdefghijkl", "2024-05-01T12:00:00.000Z"
)

Handler = Callable[[httpx.Request], httpx.Response]


@pytest.fixture(scope="module")
def credentials(dev_keyset: DevKeySet) -> Credentials:
    return load_credentials(settings_for(dev_keyset), now=datetime.now(UTC))


def settings_for(keyset: DevKeySet, **overrides: Any) -> PasSettings:
    return PasSettings(
        **overrides,
        base_url=BASE_URL,
        consumer_key=CONSUMER_KEY,
        signing_key_path=keyset.client_signing_p12,
        signing_key_password=DEV_P12_PASSWORD,
        encryption_certificate_path=keyset.pas_encryption_certificate,
        decryption_key_path=keyset.client_decryption_key,
    )


async def lookup(
    credentials: Credentials,
    dev_keyset: DevKeySet,
    answer: httpx.Response | Exception,
    overrides: dict[str, Any] | None = None,
    *,
    correlation_id: str | None = "corr-9",
    deadline: float | None = None,
    **kwargs: Any,
) -> tuple[HistoryLookup, Recorder]:
    recorder = Recorder(streamed(answer))
    settings = settings_for(dev_keyset, **(overrides or {}))
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        client = PasHistoryClient(http, settings, credentials, **kwargs)
        result = await client.lookup(ACCOUNT, correlation_id=correlation_id, deadline=deadline)
    return result, recorder


def history(*adjustments: Any) -> httpx.Response:
    return httpx.Response(200, json={"adjustments": list(adjustments), "balance": 250})


# --- the request -----------------------------------------------------------------------------


async def test_the_request_is_a_signed_get_with_the_account_in_the_query(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """lookup sends GET path?user_id=<account>&user_id_type=RANAC, OAuth1-signed over no body."""
    _, recorder = await lookup(credentials, dev_keyset, history())

    (sent,) = recorder.requests
    url = urlsplit(str(sent.url))
    assert sent.method == "GET"
    assert f"{url.scheme}://{url.netloc}{url.path}" == BASE_URL + "/points-adjustments-details"
    assert dict(parse_qsl(url.query)) == {"user_id": ACCOUNT, "user_id_type": "RANAC"}
    assert sent.content == b""
    authorization = sent.headers["Authorization"]
    assert authorization.startswith("OAuth ")
    assert f'oauth_body_hash="{body_hash(b"")}"' in authorization
    assert f'oauth_consumer_key="{CONSUMER_KEY}"' in authorization
    assert sent.headers["Correlation-Id"] == "corr-9"


async def test_without_a_correlation_id_no_correlation_header_is_sent(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """A lookup given no correlation id sends no Correlation-Id header (never an empty one)."""
    _, recorder = await lookup(credentials, dev_keyset, history(), correlation_id=None)

    assert "Correlation-Id" not in recorder.requests[0].headers


async def test_path_and_user_id_type_are_configurable(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """The path and user_id_type given to the constructor are the ones sent."""
    _, recorder = await lookup(
        credentials, dev_keyset, history(), path="/v2/history", user_id_type="RANCU"
    )

    url = urlsplit(str(recorder.requests[0].url))
    assert url.path == "/loyalty/v2/history"
    assert dict(parse_qsl(url.query))["user_id_type"] == "RANCU"


@pytest.mark.parametrize(
    ("kwargs", "message"), [({"path": "no-slash"}, "path"), ({"user_id_type": ""}, "user_id_type")]
)
async def test_a_bad_path_or_user_id_type_is_refused(
    credentials: Credentials, dev_keyset: DevKeySet, kwargs: dict[str, str], message: str
) -> None:
    """A path without a leading slash or an empty user_id_type raises ValueError at once."""
    async with httpx.AsyncClient() as http:
        with pytest.raises(ValueError, match=message):
            PasHistoryClient(http, settings_for(dev_keyset), credentials, **kwargs)


# --- reading the answer ----------------------------------------------------------------------


async def test_a_plain_history_is_read_into_entries(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """The sandbox's plain JSON becomes HistoryEntry values, in the order given."""
    second = {**ADJUSTMENT, "adjustmentId": "adj-000002", "pointsAdjusted": -40}

    result, _ = await lookup(credentials, dev_keyset, history(ADJUSTMENT, second))

    assert result == HistoryFound(
        [ENTRY, HistoryEntry("adj-000002", -40, ENTRY.adjustment_reason, ENTRY.adjusted_at)]
    )


@pytest.mark.parametrize(
    "paging",
    [
        {"next": "/points-adjustments-details?page=2"},
        {"nextPageToken": "abc"},
        {"hasMore": True},
        {"links": {"next": "/points-adjustments-details?page=2"}},
        {"_links": [{"rel": "next", "href": "/points-adjustments-details?page=2"}]},
        {"totalCount": 2},
        {"total": 7},
    ],
    ids=["next", "token", "has-more", "links", "hal-links", "total-count", "total"],
)
async def test_a_history_that_says_it_has_more_is_incomplete(
    credentials: Credentials, dev_keyset: DevKeySet, paging: dict[str, Any]
) -> None:
    """Signs of a further page mark the lookup incomplete; the entries returned still count."""
    answer = httpx.Response(200, json={"adjustments": [ADJUSTMENT], "balance": 250, **paging})

    result, _ = await lookup(credentials, dev_keyset, answer)

    assert result == HistoryFound([ENTRY], complete=False)


@pytest.mark.parametrize(
    "extra",
    [{}, {"next": None}, {"hasMore": False}, {"totalCount": 1}, {"links": {"self": "/x"}}],
    ids=["none", "null-next", "no-more", "total-equal", "self-link"],
)
async def test_a_history_without_more_is_complete(
    credentials: Credentials, dev_keyset: DevKeySet, extra: dict[str, Any]
) -> None:
    """No sign of a further page (or signs saying there is none): the lookup is complete."""
    answer = httpx.Response(200, json={"adjustments": [ADJUSTMENT], "balance": 250, **extra})

    result, _ = await lookup(credentials, dev_keyset, answer)

    assert result == HistoryFound([ENTRY], complete=True)


async def test_an_encrypted_history_is_decrypted(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """An answer wrapped as {"encryptedValue": JWE} to the client's certificate is decrypted."""
    to_client = JweEncrypter(load_certificate(dev_keyset.client_decryption_certificate))
    plaintext = json.dumps({"adjustments": [ADJUSTMENT], "balance": 250}).encode()
    answer = httpx.Response(200, json={"encryptedValue": to_client.encrypt(plaintext)})

    result, _ = await lookup(credentials, dev_keyset, answer)

    assert result == HistoryFound([ENTRY])


async def test_a_numeric_adjustment_id_is_read_as_text(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """An adjustmentId sent as a JSON number is kept, as its decimal text."""
    result, _ = await lookup(credentials, dev_keyset, history({**ADJUSTMENT, "adjustmentId": 17}))

    assert isinstance(result, HistoryFound)
    assert result.entries[0].adjustment_id == "17"


@pytest.mark.parametrize(
    "answer",
    [
        httpx.Response(200, content=b"not json"),
        httpx.Response(200, json=[ADJUSTMENT]),
        httpx.Response(200, json={"balance": 0}),
        httpx.Response(200, json={"encryptedValue": "a.b.c.d.e"}),
        history(ADJUSTMENT, "not an object"),
        history({**ADJUSTMENT, "pointsAdjusted": True}),
        history({**ADJUSTMENT, "pointsAdjusted": "250"}),
        history({**ADJUSTMENT, "adjustmentReason": None}),
        history({k: v for k, v in ADJUSTMENT.items() if k != "adjustedAt"}),
        history({**ADJUSTMENT, "adjustmentId": ""}),
    ],
    ids=[
        "not-json",
        "a-list",
        "no-adjustments",
        "undecryptable",
        "entry-not-object",
        "bool-points",
        "text-points",
        "null-reason",
        "no-adjusted-at",
        "empty-id",
    ],
)
async def test_an_unreadable_200_fails_the_whole_lookup(
    credentials: Credentials, dev_keyset: DevKeySet, answer: httpx.Response
) -> None:
    """Any malformed part of a 200 is HistoryFailed(200): a skipped entry could hide ours."""
    result, _ = await lookup(credentials, dev_keyset, answer)

    assert isinstance(result, HistoryFailed)
    assert result.status == 200
    assert result.problem.startswith("HTTP 200 with an unreadable history")


async def test_an_error_answer_is_a_failure_with_its_status_and_codes(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """A 503 with the error envelope is HistoryFailed(503) naming the reason codes."""
    envelope = {
        "Errors": {
            "Error": [
                {
                    "Source": "rewards-points-api",
                    "ReasonCode": "SERVICE_UNAVAILABLE",
                    "Description": "try later",
                    "Recoverable": True,
                    "Details": None,
                }
            ]
        }
    }

    result, _ = await lookup(credentials, dev_keyset, httpx.Response(503, json=envelope))

    assert result == HistoryFailed("HTTP 503 SERVICE_UNAVAILABLE", 503)


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ReadTimeout("timed out"),
        httpx.RemoteProtocolError("server disconnected"),
        httpx.ConnectError(f"cannot reach https://x/?user_id={ACCOUNT}"),
    ],
    ids=["connect", "read-timeout", "protocol", "message-with-the-account"],
)
async def test_a_transport_error_is_a_failure_without_status(
    credentials: Credentials, dev_keyset: DevKeySet, error: Exception
) -> None:
    """A network failure never raises: HistoryFailed without status, the account masked."""
    result, _ = await lookup(credentials, dev_keyset, error)

    assert isinstance(result, HistoryFailed)
    assert result.status is None
    assert result.problem.startswith(type(error).__name__)
    assert ACCOUNT not in result.problem


async def test_the_account_in_a_failure_is_masked_as_everywhere_else(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """An account number in an error's message shows as ``mask_account`` shows it."""
    error = httpx.ConnectError(f"refused for user_id={ACCOUNT}")

    result, _ = await lookup(credentials, dev_keyset, error)

    assert isinstance(result, HistoryFailed)
    assert result.problem == f"ConnectError: refused for user_id={mask_account(ACCOUNT)}"


# --- bounded answers: size, compression, one deadline ------------------------------------------

CAP = 4096


async def test_the_lookup_asks_for_an_uncompressed_answer(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """lookup sends Accept-Encoding: identity."""
    _, recorder = await lookup(credentials, dev_keyset, history())

    assert recorder.requests[0].headers["Accept-Encoding"] == "identity"


async def test_a_history_over_the_cap_fails_unread(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """A 200 longer than max_response_bytes is HistoryFailed(200); reading stops at the cap."""
    body = Chunks(b" " * (CAP * 100), size=1024)
    overrides = {"max_response_bytes": CAP}

    result, _ = await lookup(credentials, dev_keyset, httpx.Response(200, stream=body), overrides)

    assert result == HistoryFailed(
        f"HTTP 200 with an unreadable history: answer larger than {CAP} bytes", 200
    )
    assert body.pulled == CAP // 1024 + 1


async def test_an_error_answer_over_the_cap_fails_with_its_status(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """An error answer over the cap is HistoryFailed with its status and no reason codes."""
    answer = httpx.Response(503, stream=Chunks(b" " * (CAP + 1)))

    result, _ = await lookup(credentials, dev_keyset, answer, {"max_response_bytes": CAP})

    assert result == HistoryFailed(f"HTTP 503 (answer larger than {CAP} bytes)", 503)


async def test_a_compressed_history_fails_unread(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """A gzip-encoded history is refused, not inflated: HistoryFailed(200) saying so."""
    plain = json.dumps({"adjustments": [ADJUSTMENT], "balance": 250}).encode()
    body = Chunks(gzip.compress(plain))
    answer = httpx.Response(200, stream=body, headers={"Content-Encoding": "gzip"})

    result, _ = await lookup(credentials, dev_keyset, answer)

    assert isinstance(result, HistoryFailed)
    assert result.status == 200
    assert "compressed answer (Content-Encoding: gzip), not decompressed" in result.problem
    assert body.pulled == 0


async def test_a_trickling_history_fails_at_the_call_timeout(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """An answer that trickles past call_timeout_s is HistoryFailed without status, on time."""
    trickle = Chunks(b'{"adjustments": []}', size=1, pause_s=0.05)
    started = time.monotonic()

    result, _ = await lookup(
        credentials, dev_keyset, httpx.Response(200, stream=trickle), {"call_timeout_s": 0.2}
    )

    assert time.monotonic() - started < 0.5
    assert result == HistoryFailed("DeadlineError: no complete answer within 0.2 s", None)


async def test_a_sooner_deadline_of_the_caller_bounds_the_exchange(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """A deadline sooner than call_timeout_s ends the exchange by that deadline."""
    trickle = Chunks(b'{"adjustments": []}', size=1, pause_s=0.05)
    started = time.monotonic()

    result, _ = await lookup(
        credentials,
        dev_keyset,
        httpx.Response(200, stream=trickle),
        {"call_timeout_s": 30.0},
        deadline=started + 0.2,
    )

    assert time.monotonic() - started < 0.5
    assert isinstance(result, HistoryFailed)
    assert result.status is None
    assert result.problem.startswith("DeadlineError: no complete answer within 0.")


async def test_a_lookup_too_close_to_its_deadline_is_not_sent(
    credentials: Credentials, dev_keyset: DevKeySet
) -> None:
    """With less than MIN_CALL_S left before its deadline, a lookup fails without a request."""
    result, recorder = await lookup(
        credentials, dev_keyset, history(), deadline=time.monotonic() - 1.0
    )

    assert result == HistoryFailed("0 ms left before the deadline: not sent", None)
    assert recorder.requests == []


@pytest.mark.parametrize(
    "answer",
    [history(ADJUSTMENT), httpx.Response(500), httpx.ConnectError(f"user_id={ACCOUNT}")],
    ids=["found", "http-error", "transport-error"],
)
async def test_the_account_number_is_never_logged(
    credentials: Credentials, dev_keyset: DevKeySet, answer: httpx.Response | Exception
) -> None:
    """No log event of a lookup, whatever its ending, holds the account number."""
    with capture_logs() as logs:
        await lookup(credentials, dev_keyset, answer)

    assert logs
    assert ACCOUNT not in repr(logs)
