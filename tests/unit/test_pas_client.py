"""PasClient over an httpx MockTransport: the request it sends and how it classifies answers."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from service.domain.outcome import ErrorDetail
from service.domain.ports import (
    PasApplied,
    PasNotSent,
    PasRefused,
    PasRequest,
    PasResult,
    PasUnknown,
)
from service.pas.client import PasClient
from service.pas.credentials import load_credentials
from service.pas.envelope import MAX_DESCRIPTION, parse_envelope
from service.security.jwe import JweDecrypter, JweEncrypter
from service.security.keys import (
    DEV_P12_PASSWORD,
    DevKeySet,
    kid_for_certificate,
    load_certificate,
    load_private_key,
)
from service.security.oauth1 import OAuth1Verifier
from service.settings import PasSettings
from tests.conftest import CONSUMER_KEY

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


class Recorder:
    """An httpx handler that records requests and answers with a scripted response or error."""

    def __init__(self, answer: httpx.Response | Exception) -> None:
        self.answer = answer
        self.requests: list[httpx.Request] = []

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


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
    answer: httpx.Response | Exception, settings: PasSettings | None = None
) -> tuple[PasResult, Recorder]:
    recorder = Recorder(answer)
    async with httpx.AsyncClient(transport=httpx.MockTransport(recorder)) as http:
        client = PasClient(http, settings or PasSettings(base_url=BASE_URL), KEYS["credentials"])
        result = await client.adjust(REQUEST)
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
    result, _ = await call(httpx.Response(200, json=body))
    assert isinstance(result, PasApplied)
    assert result.points_adjusted == -250


async def test_an_encrypted_answer_that_fails_to_decrypt_is_unknown() -> None:
    """A 200 whose JWE cannot be decrypted is an unknown outcome, never a crash."""
    keyset: DevKeySet = KEYS["keyset"]
    to_someone_else = JweEncrypter(load_certificate(keyset.pas_encryption_certificate))
    body = {"encryptedValue": to_someone_else.encrypt(b'{"pointsAdjusted": -250}')}
    result, _ = await call(httpx.Response(200, json=body))
    assert isinstance(result, PasUnknown)


async def test_method_and_path_come_from_settings() -> None:
    """The HTTP method and the path are settings."""
    custom = PasSettings(base_url=BASE_URL, adjustment_path="/v2/adjust", method="GET")
    _, recorder = await call(httpx.Response(200, json={"pointsAdjusted": 1}), custom)
    (sent,) = recorder.requests
    assert sent.method == "GET"
    assert str(sent.url) == BASE_URL + "/v2/adjust"


# -- classification of answers ---------------------------------------------------------------


async def test_200_with_points_is_applied() -> None:
    """HTTP 200 with pointsAdjusted is PasApplied carrying PAS's correlation id."""
    result, _ = await call(
        httpx.Response(200, json={"pointsAdjusted": -250}, headers={"X-MC-Correlation-ID": "mc-9"})
    )
    assert isinstance(result, PasApplied)
    assert result.points_adjusted == -250
    assert result.pas_correlation_id == "mc-9"
    assert result.duration_s >= 0


async def test_200_without_correlation_header_is_applied_with_none() -> None:
    """A 200 without X-MC-Correlation-ID is applied with no PAS correlation id."""
    result, _ = await call(httpx.Response(200, json={"pointsAdjusted": 5}))
    assert result == PasApplied(5, result.duration_s, None)


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
        b"\xff\xfe",
    ],
    ids=["junk", "empty", "list", "missing", "string", "bool", "float", "not-utf8"],
)
async def test_200_with_an_unreadable_body_is_unknown(body: bytes) -> None:
    """A 200 whose body does not say how many points were adjusted is an unknown outcome."""
    result, _ = await call(httpx.Response(200, content=body))
    assert isinstance(result, PasUnknown)
    assert result.status == 200


async def test_400_envelope_is_refused_with_parsed_errors() -> None:
    """A 400 with the Mastercard envelope is PasRefused carrying every parsed entry."""
    body = envelope(
        entry(details="pointsToAdjust"),
        entry("INVALID_ADJUSTMENT_TYPE_CODE", description="unknown code", details=None),
    )
    result, _ = await call(httpx.Response(400, json=body))
    assert isinstance(result, PasRefused)
    assert result.status == 400
    assert result.recoverable is False
    assert result.errors == (
        ErrorDetail(
            "rewards-points-api",
            "INVALID_POINTS",
            "pointsToAdjust must not be zero",
            False,
            "pointsToAdjust",
        ),
        ErrorDetail("rewards-points-api", "INVALID_ADJUSTMENT_TYPE_CODE", "unknown code"),
    )


@pytest.mark.parametrize("status", [400, 401, 403, 404, 405, 409])
async def test_client_errors_are_refused_not_recoverable(status: int) -> None:
    """A 4xx other than 429 without Recoverable=true is a non-recoverable refusal."""
    result, _ = await call(
        httpx.Response(status, json=envelope(entry("DECLINED", source="Gateway")))
    )
    assert isinstance(result, PasRefused)
    assert result.status == status
    assert result.recoverable is False
    assert result.errors[0].source == "Gateway"


async def test_429_is_recoverable_even_without_envelope() -> None:
    """429 means try again later: a recoverable refusal, envelope or not."""
    result, _ = await call(httpx.Response(429, content=b"slow down"))
    assert isinstance(result, PasRefused)
    assert result.status == 429
    assert result.recoverable is True
    assert result.errors == ()


async def test_4xx_with_recoverable_entry_is_recoverable() -> None:
    """A 4xx whose envelope says Recoverable=true is a recoverable refusal."""
    result, _ = await call(httpx.Response(409, json=envelope(entry(recoverable=True))))
    assert isinstance(result, PasRefused)
    assert result.recoverable is True


async def test_503_with_recoverable_true_is_refused_recoverable() -> None:
    """A 5xx saying Recoverable=true did not apply anything: a recoverable refusal."""
    body = envelope(entry("SERVICE_UNAVAILABLE", recoverable=True, source="Gateway"))
    result, _ = await call(httpx.Response(503, json=body))
    assert isinstance(result, PasRefused)
    assert result.status == 503
    assert result.recoverable is True
    assert result.errors[0].reason_code == "SERVICE_UNAVAILABLE"


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
async def test_5xx_without_recoverable_is_unknown(status: int, body: bytes) -> None:
    """A 5xx without Recoverable=true may have applied the adjustment: PasUnknown."""
    result, _ = await call(httpx.Response(status, content=body))
    assert isinstance(result, PasUnknown)
    assert result.status == status
    assert str(status) in result.problem


@pytest.mark.parametrize(
    "error",
    [
        httpx.ConnectError("connection refused"),
        httpx.ConnectTimeout("connect timed out"),
        httpx.PoolTimeout("no free connection"),
    ],
    ids=["connect-error", "connect-timeout", "pool-timeout"],
)
async def test_failures_before_sending_are_not_sent(error: Exception) -> None:
    """A failure that happens before the request leaves is PasNotSent, naming the error."""
    result, recorder = await call(error)
    assert isinstance(result, PasNotSent)
    assert type(error).__name__ in result.problem
    assert len(recorder.requests) == 1


@pytest.mark.parametrize(
    "error",
    [
        httpx.ReadTimeout("read timed out"),
        httpx.WriteTimeout("write timed out"),
        httpx.ReadError("connection reset"),
        httpx.RemoteProtocolError("server disconnected"),
    ],
    ids=["read-timeout", "write-timeout", "read-error", "protocol-error"],
)
async def test_failures_after_sending_are_unknown(error: Exception) -> None:
    """A failure once the request may have left is PasUnknown without a status."""
    result, _ = await call(error)
    assert isinstance(result, PasUnknown)
    assert result.status is None
    assert type(error).__name__ in result.problem


async def test_undecodable_response_content_is_unknown_not_raised() -> None:
    """A response whose Content-Encoding cannot be decoded is PasUnknown, not an exception.

    PAS answered, so the request reached it; adjust() promises never to raise for what PAS
    or the network does.
    """
    answer = httpx.Response(
        200, headers={"Content-Encoding": "gzip"}, stream=httpx.ByteStream(b"not gzip")
    )
    result, _ = await call(answer)
    assert isinstance(result, PasUnknown)


async def test_results_never_carry_the_account() -> None:
    """No classified result carries the account number."""
    body = envelope(entry(description="bad", details="bankAccountNumber"))
    for answer in (httpx.Response(400, json=body), httpx.Response(500), httpx.ReadTimeout("x")):
        result, _ = await call(answer)
        assert REQUEST.bank_account_number not in repr(result)


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
