"""PasClient over an httpx MockTransport: the request it sends and how it reports each ending."""

from __future__ import annotations

import gzip
import json
import time
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from pa_devkit.oauth1_verifier import OAuth1Verifier
from service.domain.classification import Action, Observation, Transport, classify
from service.domain.outcome import ErrorDetail
from service.domain.ports import PasReply, PasRequest
from service.pas.client import TRANSPORT_FAILURES, PasClient, _retry_after, transport_failure
from service.pas.credentials import load_credentials
from service.pas.envelope import MAX_DESCRIPTION, parse_envelope
from service.security.jwe import JweDecrypter, JweEncrypter
from service.security.keys import kid_for_certificate, load_certificate, load_private_key
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY
from tests.http_support import Chunks, Recorder, streamed

BASE_URL = "https://sandbox.api.mastercard.com/loyalty"
REQUEST = PasRequest(
    bank_account_number="5123456789012345000",
    points_to_adjust=-250,
    adjustment_type_code="GOODWILL",
    adjustment_reason="Late delivery",
    adjusted_by="agent-0042",
    correlation_id="corr-7",
)

Handler = Callable[[httpx.Request], httpx.Response]


def envelope(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"Errors": {"Error": list(entries)}}


def entry(
    reason: str = "INVALID_POINTS",
    *,
    source: str = "rewards-points-api",
    description: str = "pointsToAdjust must not be zero",
    recoverable: Any = False,
    details: Any = None,
) -> dict[str, Any]:
    return {
        "Source": source,
        "ReasonCode": reason,
        "Description": description,
        "Recoverable": recoverable,
        "Details": details,
    }


KEYS: dict[str, Any] = {}


@pytest.fixture(autouse=True)
def _keys(dev_keyset: DevKeySet) -> None:
    """Credentials for the client, and PAS's side of the keys to read what it sends."""
    KEYS["keyset"] = dev_keyset
    KEYS["credentials"] = load_credentials(
        PasSettings(
            consumer_key=CONSUMER_KEY,
            signing_key_path=dev_keyset.client_signing_p12,
            signing_key_password=DEV_P12_PASSWORD,
            encryption_certificate_path=dev_keyset.pas_encryption_certificate,
            decryption_key_path=dev_keyset.client_decryption_key,
        ),
        now=datetime.now(UTC),
    )


def pas_reads(sent: httpx.Request, field: str = "encryptedValue") -> Any:
    """Decrypt a request body the way PAS does."""
    keyset: DevKeySet = KEYS["keyset"]
    wrapper = json.loads(sent.content)
    assert list(wrapper) == [field]
    decrypter = JweDecrypter(
        load_private_key(keyset.pas_decryption_key),
        expected_kid=kid_for_certificate(load_certificate(keyset.pas_encryption_certificate)),
    )
    return json.loads(decrypter.decrypt(wrapper[field]))


@pytest.fixture
def settings() -> PasSettings:
    return PasSettings(base_url=BASE_URL + "/")


async def call(
    answer: httpx.Response | Exception,
    settings: PasSettings | None = None,
    *,
    deadline: float | None = None,
) -> tuple[PasReply, Recorder]:
    recorder = Recorder(streamed(answer))
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        client = PasClient(http, settings or PasSettings(base_url=BASE_URL), KEYS["credentials"])
        result = await client.adjust(
            REQUEST, deadline=time.monotonic() + 30 if deadline is None else deadline
        )
    return result, recorder


# -- the request ---------------------------------------------------------------------------


async def test_request_is_a_post_of_the_five_fields(settings: PasSettings) -> None:
    """The call POSTs the five camelCase fields as JSON with the Correlation-Id header."""
    _, recorder = await call(httpx.Response(200, json={"pointsAdjusted": -250}), settings)
    (sent,) = recorder.requests
    assert sent.method == "POST"
    assert str(sent.url) == BASE_URL + "/points-adjustments"
    assert sent.headers["Content-Type"] == "application/json"
    assert sent.headers["Correlation-Id"] == "corr-7"
    assert pas_reads(sent) == {
        "bankAccountNumber": "5123456789012345000",
        "pointsToAdjust": -250,
        "adjustmentTypeCode": "GOODWILL",
        "adjustmentReason": "Late delivery",
        "adjustedBy": "agent-0042",
    }


async def test_the_request_is_signed_over_the_encrypted_bytes_sent(settings: PasSettings) -> None:
    """The Authorization header verifies against the exact encrypted body, as the gateway checks."""
    _, recorder = await call(httpx.Response(200, json={"pointsAdjusted": -250}), settings)
    (sent,) = recorder.requests
    keyset: DevKeySet = KEYS["keyset"]
    verifier = OAuth1Verifier(
        {CONSUMER_KEY: load_certificate(keyset.client_signing_certificate).public_key()}  # type: ignore[dict-item]
    )
    consumer = verifier.verify(sent.method, str(sent.url), dict(sent.headers), sent.content)
    assert consumer == CONSUMER_KEY
    assert b"5123456789012345000" not in sent.content


async def test_the_jwe_field_name_is_a_setting() -> None:
    """With encryptedData configured, the JWE travels in that field."""
    custom = PasSettings(base_url=BASE_URL, encrypted_field="encryptedData")
    _, recorder = await call(httpx.Response(200, json={"pointsAdjusted": 1}), custom)
    (sent,) = recorder.requests
    assert pas_reads(sent, "encryptedData")["pointsToAdjust"] == -250


async def test_an_encrypted_answer_is_decrypted() -> None:
    """A 200 whose body is a JWE to our key is decrypted and read."""
    keyset: DevKeySet = KEYS["keyset"]
    to_us = JweEncrypter(load_certificate(keyset.client_decryption_certificate))
    body = {"encryptedValue": to_us.encrypt(b'{"pointsAdjusted": -250}')}
    reply, _ = await call(httpx.Response(200, json=body))
    assert reply.observation == Observation(status=200)
    assert reply.points_adjusted == -250


async def test_an_encrypted_answer_that_fails_to_decrypt_is_unreadable() -> None:
    """A 200 whose JWE cannot be decrypted is UNREADABLE_ANSWER, never a crash."""
    keyset: DevKeySet = KEYS["keyset"]
    to_someone_else = JweEncrypter(load_certificate(keyset.pas_encryption_certificate))
    body = {"encryptedValue": to_someone_else.encrypt(b'{"pointsAdjusted": -250}')}
    reply, _ = await call(httpx.Response(200, json=body))
    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert reply.points_adjusted is None


async def test_method_and_path_come_from_settings() -> None:
    """The HTTP method and the path are settings."""
    custom = PasSettings(base_url=BASE_URL, adjustment_path="/v2/adjust", method="GET")
    _, recorder = await call(httpx.Response(200, json={"pointsAdjusted": 1}), custom)
    (sent,) = recorder.requests
    assert sent.method == "GET"
    assert str(sent.url) == BASE_URL + "/v2/adjust"


# -- how answers are reported ----------------------------------------------------------------


async def test_200_with_points_is_applied() -> None:
    """HTTP 200 with pointsAdjusted is an observed 200 with the points and PAS's correlation id."""
    reply, _ = await call(
        httpx.Response(200, json={"pointsAdjusted": -250}, headers={"X-MC-Correlation-ID": "mc-9"})
    )
    assert reply.observation == Observation(status=200)
    assert reply.points_adjusted == -250
    assert reply.pas_correlation_id == "mc-9"
    assert reply.errors == ()
    assert reply.retry_after_s is None
    assert reply.duration_s >= 0
    assert classify(reply.observation).action is Action.APPLIED


async def test_200_without_correlation_header_is_applied_with_none() -> None:
    """A 200 without X-MC-Correlation-ID is applied with no PAS correlation id."""
    reply, _ = await call(httpx.Response(200, json={"pointsAdjusted": 5}))
    assert reply == PasReply(Observation(status=200), reply.duration_s, 5)


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"",
        b"[1, 2]",
        b'{"points": 5}',
        b'{"pointsAdjusted": "5"}',
        b'{"pointsAdjusted": true}',
        b'{"pointsAdjusted": 5.5}',
        b'{"pointsAdjusted": null}',
        b"\xff\xfe",
        b'{"encryptedValue": 7}',
        b'{"encryptedValue": "a.b", "encryptedData": "c.d"}',
        b"[" * 50_000 + b"]" * 50_000,
    ],
    ids=[
        "junk",
        "empty",
        "list",
        "missing",
        "string",
        "bool",
        "float",
        "null",
        "not-utf8",
        "jwe-not-a-string",
        "two-jwe-fields",
        "nested-too-deep",
    ],
)
async def test_200_with_an_unreadable_body_is_an_unreadable_answer(body: bytes) -> None:
    """A 200 whose body does not say how many points were adjusted is UNREADABLE_ANSWER."""
    reply, _ = await call(
        httpx.Response(200, content=body, headers={"X-MC-Correlation-ID": "mc-3"})
    )
    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert reply.points_adjusted is None
    assert reply.pas_correlation_id == "mc-3"
    assert "200" in reply.problem
    assert classify(reply.observation).action is Action.UNKNOWN


async def test_400_envelope_is_observed_with_parsed_errors() -> None:
    """A 400 with the Mastercard envelope reports the status and every parsed entry."""
    body = envelope(
        entry(details="pointsToAdjust"),
        entry("INVALID_ADJUSTMENT_TYPE_CODE", description="unknown code", details=None),
    )
    reply, _ = await call(httpx.Response(400, json=body, headers={"X-MC-Correlation-ID": "mc-4"}))
    assert reply.observation == Observation(status=400, recoverable=False)
    assert reply.points_adjusted is None
    assert reply.pas_correlation_id == "mc-4"
    assert reply.errors == (
        ErrorDetail(
            "rewards-points-api",
            "INVALID_POINTS",
            "pointsToAdjust must not be zero",
            False,
            "pointsToAdjust",
        ),
        ErrorDetail("rewards-points-api", "INVALID_ADJUSTMENT_TYPE_CODE", "unknown code"),
    )
    assert reply.problem == "HTTP 400 INVALID_POINTS,INVALID_ADJUSTMENT_TYPE_CODE"
    assert classify(reply.observation).action is Action.PERMANENT


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409])
async def test_client_errors_are_observed_not_recoverable(status: int) -> None:
    """A 4xx without Recoverable=true is observed with its status and recoverable False."""
    reply, _ = await call(
        httpx.Response(status, json=envelope(entry("DECLINED", source="Gateway")))
    )
    assert reply.observation == Observation(status=status, recoverable=False)
    assert reply.errors[0].source == "Gateway"
    assert reply.errors[0].reason_code == "DECLINED"
    assert reply.problem == f"HTTP {status} DECLINED"


async def test_429_without_envelope_is_observed_as_is_and_retried() -> None:
    """A bare 429 reports no errors and recoverable False, and the table still retries it."""
    reply, _ = await call(httpx.Response(429, content=b"slow down"))
    assert reply.observation == Observation(status=429, recoverable=False)
    assert reply.errors == ()
    assert reply.problem == "HTTP 429 no error envelope"
    assert classify(reply.observation).action is Action.RETRY


async def test_4xx_with_a_recoverable_entry_is_recoverable() -> None:
    """A 4xx whose envelope has one entry with Recoverable=true is observed as recoverable."""
    body = envelope(entry("A"), entry("B", recoverable=True))
    reply, _ = await call(httpx.Response(409, json=body))
    assert reply.observation == Observation(status=409, recoverable=True)
    assert [error.recoverable for error in reply.errors] == [False, True]
    assert classify(reply.observation).action is Action.RETRY


async def test_503_with_recoverable_true_is_recoverable() -> None:
    """A 5xx saying Recoverable=true is observed as recoverable, with its reason code."""
    body = envelope(entry("SERVICE_UNAVAILABLE", recoverable=True, source="Gateway"))
    reply, _ = await call(httpx.Response(503, json=body))
    assert reply.observation == Observation(status=503, recoverable=True)
    assert reply.errors[0].reason_code == "SERVICE_UNAVAILABLE"
    assert classify(reply.observation).action is Action.RETRY


@pytest.mark.parametrize(
    ("status", "body"),
    [
        (500, b""),
        (500, json.dumps(envelope(entry("INTERNAL", recoverable=False))).encode()),
        (502, b"<html>bad gateway</html>"),
        (503, b""),
        (504, json.dumps(envelope(entry("TIMEOUT"))).encode()),
    ],
    ids=["500-empty", "500-not-recoverable", "502-html", "503-empty", "504-envelope"],
)
async def test_5xx_without_recoverable_is_observed_not_recoverable(
    status: int, body: bytes
) -> None:
    """A 5xx without Recoverable=true is observed as not recoverable: the table says unknown."""
    reply, _ = await call(httpx.Response(status, content=body))
    assert reply.observation == Observation(status=status, recoverable=False)
    assert reply.problem.startswith(f"HTTP {status} ")
    assert classify(reply.observation).action is Action.UNKNOWN


@pytest.mark.parametrize("status", [201, 204, 302])
async def test_other_statuses_are_observed_as_they_came(status: int) -> None:
    """A status the table does not name (2xx other than 200, 3xx) is reported unchanged."""
    reply, _ = await call(httpx.Response(status, content=b""))
    assert reply.observation == Observation(status=status, recoverable=False)
    assert reply.points_adjusted is None
    assert classify(reply.observation).action is Action.UNKNOWN


# -- Retry-After -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "seconds"),
    [
        ("7", 7.0),
        ("0", 0.0),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("-1", None),
        ("soon", None),
        ("", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),
    ],
    ids=["seconds", "zero", "fraction", "spaces", "negative", "garbage", "empty", "http-date"],
)
async def test_retry_after_is_read_in_seconds(header: str, seconds: float | None) -> None:
    """Retry-After in delta-seconds is parsed; a negative, garbage or HTTP-date value is None."""
    reply, _ = await call(httpx.Response(429, headers={"Retry-After": header}))
    assert reply.retry_after_s == seconds


async def test_without_retry_after_there_is_none() -> None:
    """An error answer without Retry-After reports retry_after_s None."""
    reply, _ = await call(httpx.Response(503, json=envelope(entry(recoverable=True))))
    assert reply.retry_after_s is None


@pytest.mark.parametrize(
    ("value", "seconds"),
    [(None, None), ("12", 12.0), ("2.25", 2.25), ("-0.5", None), ("NaN", None), ("1e", None)],
)
def test_retry_after_parser(value: str | None, seconds: float | None) -> None:
    """_retry_after turns a header value into non-negative seconds, anything else into None."""
    assert _retry_after(value) == seconds


# -- transport failures ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("error", "expected"),
    [
        (httpx.ConnectError("connection refused"), Transport.CONNECT),
        (httpx.ConnectTimeout("connect timed out"), Transport.CONNECT_TIMEOUT),
        (httpx.PoolTimeout("no free connection"), Transport.POOL_TIMEOUT),
        (httpx.UnsupportedProtocol("ftp"), Transport.CONNECT),
        (httpx.ReadTimeout("read timed out"), Transport.READ_TIMEOUT),
        (httpx.WriteTimeout("write timed out"), Transport.WRITE_TIMEOUT),
        (httpx.ReadError("connection reset"), Transport.RESET),
        (httpx.WriteError("broken pipe"), Transport.RESET),
        (httpx.RemoteProtocolError("server disconnected"), Transport.PROTOCOL),
        (httpx.DecodingError("bad gzip"), Transport.PROTOCOL),
        (httpx.LocalProtocolError("bad header"), Transport.PROTOCOL),
    ],
    ids=[
        "connect-error",
        "connect-timeout",
        "pool-timeout",
        "unsupported-protocol",
        "read-timeout",
        "write-timeout",
        "read-error",
        "write-error",
        "remote-protocol-error",
        "decoding-error-fallback",
        "local-protocol-error-fallback",
    ],
)
async def test_transport_failures_are_reported_as_observed(
    error: httpx.RequestError, expected: Transport
) -> None:
    """Each httpx error maps to its Transport (unlisted ones to PROTOCOL), naming the error."""
    reply, recorder = await call(error)
    assert reply.observation == Observation(transport=expected)
    assert reply.points_adjusted is None
    assert reply.retry_after_s is None
    assert reply.pas_correlation_id is None
    assert type(error).__name__ in reply.problem
    assert str(error) in reply.problem
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    ("kind", "expected"), TRANSPORT_FAILURES, ids=[kind.__name__ for kind, _ in TRANSPORT_FAILURES]
)
def test_every_listed_exception_maps_to_its_own_entry(
    kind: type[httpx.RequestError], expected: Transport
) -> None:
    """No earlier entry of TRANSPORT_FAILURES shadows a later, more specific one."""
    assert transport_failure(kind("x")) is expected


def test_an_unlisted_request_error_is_presumed_answer_lost() -> None:
    """A request error not in the list may have reached PAS: PROTOCOL (an unknown outcome)."""
    failure = transport_failure(httpx.ProxyError("proxy said no"))
    assert failure is Transport.PROTOCOL
    assert classify(Observation(transport=failure)).action is Action.UNKNOWN


async def test_an_error_without_a_message_is_named_by_its_class() -> None:
    """An exception with an empty message is described by its class name alone."""
    reply, _ = await call(httpx.ReadTimeout(""))
    assert reply.problem == "ReadTimeout"


# -- bounded answers: size, compression, deadline -------------------------------------------

CAP = 4096
CAPPED = PasSettings(base_url=BASE_URL, max_response_bytes=CAP)


async def test_the_request_asks_for_an_uncompressed_answer() -> None:
    """The call sends Accept-Encoding: identity, so PAS has no reason to compress."""
    _, recorder = await call(httpx.Response(200, json={"pointsAdjusted": 1}))
    (sent,) = recorder.requests
    assert sent.headers["Accept-Encoding"] == "identity"


async def test_an_answer_at_the_cap_is_read() -> None:
    """An answer of exactly max_response_bytes is read whole."""
    body = b'{"pointsAdjusted": 7}'
    padded = body + b" " * (CAP - len(body))
    reply, _ = await call(httpx.Response(200, stream=Chunks(padded, size=1000)), CAPPED)
    assert reply.observation == Observation(status=200)
    assert reply.points_adjusted == 7


async def test_a_200_over_the_cap_is_unreadable_and_not_read_further() -> None:
    """A 200 longer than max_response_bytes is UNREADABLE_ANSWER; reading stops at the cap."""
    body = Chunks(b"x" * (CAP * 100), size=1024)
    reply, _ = await call(
        httpx.Response(200, stream=body, headers={"X-MC-Correlation-ID": "mc-5"}), CAPPED
    )
    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert reply.problem == f"HTTP 200 with an unreadable body: answer larger than {CAP} bytes"
    assert reply.pas_correlation_id == "mc-5"
    assert body.pulled == CAP // 1024 + 1
    assert classify(reply.observation).action is Action.UNKNOWN


async def test_a_declared_length_over_the_cap_is_not_read_at_all() -> None:
    """A Content-Length above the cap is refused before a byte of the body is read."""
    body = Chunks(b"x" * (CAP + 1))
    answer = httpx.Response(200, stream=body, headers={"Content-Length": str(CAP + 1)})
    reply, _ = await call(answer, CAPPED)
    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert f"answer larger than {CAP} bytes" in reply.problem
    assert body.pulled == 0


async def test_an_error_status_over_the_cap_has_no_envelope() -> None:
    """An error answer over the cap keeps its status and Retry-After, with no envelope read."""
    document = json.dumps(envelope(entry("SERVICE_UNAVAILABLE", recoverable=True))).encode()
    body = Chunks(document + b" " * CAP)
    answer = httpx.Response(503, stream=body, headers={"Retry-After": "3"})
    reply, _ = await call(answer, CAPPED)
    assert reply.observation == Observation(status=503, recoverable=False)
    assert reply.errors == ()
    assert reply.retry_after_s == 3.0
    assert reply.problem == f"HTTP 503 no error envelope (answer larger than {CAP} bytes)"


@pytest.mark.parametrize("coding", ["gzip", "deflate", "br", "GZIP", "identity, gzip"])
async def test_a_compressed_200_is_unreadable_and_not_inflated(coding: str) -> None:
    """A 200 with a Content-Encoding other than identity is UNREADABLE_ANSWER, never inflated."""
    body = Chunks(gzip.compress(b'{"pointsAdjusted": 5}'))
    answer = httpx.Response(200, stream=body, headers={"Content-Encoding": coding})
    reply, _ = await call(answer)
    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert reply.points_adjusted is None
    assert "not decompressed" in reply.problem
    assert body.pulled == 0
    assert classify(reply.observation).action is Action.UNKNOWN


async def test_a_gzip_bomb_is_refused_unread() -> None:
    """A gzip bomb (10 MB of zeros in a few KB) is refused without reading a byte of it."""
    packer = zlib.compressobj(wbits=31)
    bomb = packer.compress(bytes(10_000_000)) + packer.flush()
    body = Chunks(bomb)
    answer = httpx.Response(200, stream=body, headers={"Content-Encoding": "gzip"})
    reply, _ = await call(answer)
    assert reply.observation == Observation(transport=Transport.UNREADABLE_ANSWER)
    assert body.pulled == 0


async def test_an_identity_content_encoding_is_read() -> None:
    """Content-Encoding: identity is no compression: the answer is read as usual."""
    answer = httpx.Response(
        200, json={"pointsAdjusted": 9}, headers={"Content-Encoding": "identity"}
    )
    reply, _ = await call(answer)
    assert reply.points_adjusted == 9


async def test_a_compressed_error_answer_has_no_envelope() -> None:
    """A compressed error answer keeps its status, with no envelope read from it."""
    document = json.dumps(envelope(entry("BAD", recoverable=True))).encode()
    body = Chunks(gzip.compress(document))
    answer = httpx.Response(409, stream=body, headers={"Content-Encoding": "gzip"})
    reply, _ = await call(answer)
    assert reply.observation == Observation(status=409, recoverable=False)
    assert reply.errors == ()
    assert reply.problem.startswith("HTTP 409 no error envelope (compressed answer")
    assert body.pulled == 0


@pytest.mark.parametrize("left_s", [-1.0, 0.0, 0.03])
async def test_a_deadline_too_close_sends_nothing(left_s: float) -> None:
    """With less than 50 ms before the deadline the call is not sent: POOL_TIMEOUT, a retry."""
    reply, recorder = await call(
        httpx.Response(200, json={"pointsAdjusted": 1}), deadline=time.monotonic() + left_s
    )
    assert recorder.requests == []
    assert reply.observation == Observation(transport=Transport.POOL_TIMEOUT)
    assert "not sent" in reply.problem
    assert classify(reply.observation).action is Action.RETRY


async def test_an_answer_still_arriving_at_the_deadline_is_a_read_timeout() -> None:
    """An answer that trickles past the deadline ends the call at it as READ_TIMEOUT."""
    trickle = Chunks(b'{"pointsAdjusted": 1}', size=1, pause_s=0.05)
    started = time.monotonic()
    reply, recorder = await call(
        httpx.Response(200, stream=trickle), deadline=time.monotonic() + 0.2
    )
    assert time.monotonic() - started < 0.5
    assert len(recorder.requests) == 1
    assert reply.observation == Observation(transport=Transport.READ_TIMEOUT)
    assert reply.problem.startswith("DeadlineError: no complete answer within")
    assert classify(reply.observation).action is Action.UNKNOWN


async def test_call_timeout_bounds_a_call_with_a_later_deadline() -> None:
    """call_timeout_s ends the call even when the caller's deadline is later."""
    trickle = Chunks(b'{"pointsAdjusted": 1}', size=1, pause_s=0.05)
    short = PasSettings(base_url=BASE_URL, call_timeout_s=0.2)
    started = time.monotonic()
    reply, _ = await call(httpx.Response(200, stream=trickle), short)
    assert time.monotonic() - started < 0.5
    assert reply.observation == Observation(transport=Transport.READ_TIMEOUT)


async def test_waiting_and_connecting_give_up_before_the_deadline() -> None:
    """Pool and connect timeouts are cut to end before the deadline, so they report not sent."""
    _, recorder = await call(
        httpx.Response(200, json={"pointsAdjusted": 1}), deadline=time.monotonic() + 1.0
    )
    timeout = recorder.requests[0].extensions["timeout"]
    assert 0.5 < timeout["pool"] < 0.96
    assert 0.5 < timeout["connect"] < 0.96
    assert timeout["read"] == 5.0  # the client's own read timeout (httpx's default), unchanged


async def test_replies_never_carry_the_account() -> None:
    """No reply carries the account number, whatever the answer."""
    body = envelope(entry(description="bad", details="bankAccountNumber"))
    for answer in (
        httpx.Response(400, json=body),
        httpx.Response(500),
        httpx.Response(200, content=b"junk"),
        httpx.ReadTimeout("x"),
    ):
        reply, _ = await call(answer)
        assert REQUEST.bank_account_number not in repr(reply)


# -- the envelope parser ----------------------------------------------------------------------


def parse(document: Any) -> tuple[ErrorDetail, ...]:
    return parse_envelope(json.dumps(document).encode())


def test_envelope_with_a_single_object_error_is_read() -> None:
    """Error given as one object instead of a list is read as a single entry."""
    (detail,) = parse({"Errors": {"Error": entry("DECLINED", source="Gateway")}})
    assert (detail.source, detail.reason_code) == ("Gateway", "DECLINED")


@pytest.mark.parametrize(
    "body",
    [
        b"junk{",
        b"",
        b"\xff",
        b"[]",
        b'"text"',
        b"42",
        b"null",
        b'{"Errors": []}',
        b'{"Errors": {"Error": "oops"}}',
        b'{"Errors": {"Error": 7}}',
        b'{"errors": {"error": []}}',
    ],
)
def test_envelope_parser_tolerates_anything(body: bytes) -> None:
    """A body that is not an envelope gives no entries and never raises."""
    assert parse_envelope(body) == ()


def test_envelope_entries_that_are_not_objects_are_skipped() -> None:
    """Non-object members of the Error list are skipped, the others kept."""
    details = parse({"Errors": {"Error": ["x", None, 3, entry("KEPT")]}})
    assert [detail.reason_code for detail in details] == ["KEPT"]


def test_envelope_entry_with_missing_fields_gets_defaults() -> None:
    """An empty entry reads as source unknown, reason UNKNOWN, empty text, not recoverable."""
    assert parse({"Errors": {"Error": [{}]}}) == (ErrorDetail("unknown", "UNKNOWN", "", False),)


@pytest.mark.parametrize(
    ("flag", "expected"),
    [(True, True), ("true", True), (False, False), ("false", False), (None, False), (1, False)],
)
def test_envelope_recoverable_flag(flag: Any, expected: bool) -> None:
    """Recoverable is true only for JSON true or the string "true"."""
    (detail,) = parse(envelope(entry(recoverable=flag)))
    assert detail.recoverable is expected


@pytest.mark.parametrize(
    ("details", "field"),
    [("adjustedBy", "adjustedBy"), ("", None), (None, None), ({"f": 1}, None), (["x"], None)],
)
def test_envelope_details_become_the_field(details: Any, field: str | None) -> None:
    """A non-empty string Details names the field; anything else names none."""
    (detail,) = parse(envelope(entry(details=details)))
    assert detail.field == field


def test_envelope_description_is_bounded() -> None:
    """An overlong Description is cut to the documented maximum."""
    (detail,) = parse(envelope(entry(description="d" * 10_000)))
    assert len(detail.description) == MAX_DESCRIPTION


async def test_the_pas_http_client_keeps_no_cookies() -> None:
    """A Set-Cookie from PAS is neither stored nor sent back (and costs no parsing)."""
    from service.pas.client import _CookielessClient

    seen: list[str | None] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request.headers.get("cookie"))
        return httpx.Response(200, headers={"set-cookie": "session=abc; Path=/"}, json={})

    async with _CookielessClient(transport=httpx.MockTransport(answer)) as client:
        await client.post("http://pas.test/points-adjustments", content=b"{}")
        await client.post("http://pas.test/points-adjustments", content=b"{}")
        assert len(client.cookies) == 0
    assert seen == [None, None]
