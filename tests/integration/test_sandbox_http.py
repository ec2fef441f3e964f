"""The PAS sandbox over a real socket, driven by an httpx client."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from structlog.testing import capture_logs

from pa_devkit.sandbox import (
    ApiError,
    DecodedBody,
    GatewayRequest,
    RunningSandbox,
    SandboxConfig,
    run_sandbox,
    serve_forever,
)
from service.domain.command import mask_account

ACCOUNT = "1234567890123456000"
UNKNOWN_ACCOUNT = "9999999999999999000"
PREFIX = "/loyalty"


def adjustment(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "bankAccountNumber": ACCOUNT,
        "pointsToAdjust": 500,
        "adjustmentTypeCode": "GOODWILL",
        "adjustmentReason": "late delivery",
        "adjustedBy": "agent-42",
    }
    payload.update(overrides)
    return payload


def reason_codes(response: httpx.Response) -> list[str]:
    return [error["ReasonCode"] for error in response.json()["Errors"]["Error"]]


@pytest.fixture
def config() -> SandboxConfig:
    return SandboxConfig(
        port=0,
        path_prefix=PREFIX,
        unknown_accounts=frozenset({UNKNOWN_ACCOUNT}),
        max_body_bytes=2048,
    )


@pytest.fixture
async def sandbox(config: SandboxConfig) -> AsyncIterator[RunningSandbox]:
    async with run_sandbox(config) as running:
        yield running


@pytest.fixture
async def client(sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as http:
        yield http


async def post_adjustment(client: httpx.AsyncClient, payload: Any, **kwargs: Any) -> httpx.Response:
    return await client.post(f"{PREFIX}/points-adjustments", json=payload, **kwargs)


async def test_valid_adjustment_is_applied_and_answered_with_points(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """A valid POST answers 200 {"pointsAdjusted": n} as JSON and records one ledger entry."""
    response = await post_adjustment(client, adjustment(pointsToAdjust=-120))

    assert response.status_code == 200
    assert response.headers["content-type"].startswith("application/json")
    assert response.json() == {"pointsAdjusted": -120}
    [entry] = sandbox.ledger.entries()
    assert (entry.adjustment_id, entry.bank_account_number, entry.points_adjusted) == (
        "ADJ-000001",
        ACCOUNT,
        -120,
    )
    assert sandbox.ledger.balance(ACCOUNT) == -120


async def test_the_applied_adjustment_is_logged_with_the_products_account_mask(
    client: httpx.AsyncClient,
) -> None:
    """The sandbox's log of an applied adjustment shows the account as the product masks it
    (``mask_account``), never in full."""
    with capture_logs() as logs:
        response = await post_adjustment(client, adjustment())

    assert response.status_code == 200
    [applied] = [event for event in logs if event["event"] == "sandbox.adjustment.applied"]
    assert applied["account"] == mask_account(ACCOUNT)
    assert ACCOUNT not in repr(logs)


async def test_invalid_fields_get_a_400_envelope_with_one_error_per_problem(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """Several bad fields yield one PAS envelope entry each, naming the field, and no write."""
    payload = adjustment(pointsToAdjust=0, adjustmentTypeCode="goodwill", extra=True)
    del payload["adjustedBy"]

    response = await post_adjustment(client, payload)

    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
    errors = response.json()["Errors"]["Error"]
    assert [(e["ReasonCode"], e["Details"]) for e in errors] == [
        ("INVALID_POINTS", "pointsToAdjust"),
        ("INVALID_ADJUSTMENT_TYPE_CODE", "adjustmentTypeCode"),
        ("MISSING_FIELD", "adjustedBy"),
        ("UNKNOWN_FIELD", "extra"),
    ]
    for error in errors:
        assert error["Source"] == "rewards-points-api"
        assert error["Recoverable"] is False
        assert isinstance(error["Description"], str)
        assert error["Description"]
    assert len(sandbox.ledger) == 0


@pytest.mark.parametrize(
    "body",
    [b"", b"not json", b"[1, 2]", b'"text"', b'{"a": 1, "a": 2}', b'{"a": NaN}', b"\xff\xfe"],
    ids=["empty", "garbage", "array", "string", "duplicate-key", "nan", "not-utf8"],
)
async def test_a_body_that_is_not_one_json_object_is_invalid_json(
    client: httpx.AsyncClient, body: bytes
) -> None:
    """Anything but a strict UTF-8 JSON object is answered 400 with a single INVALID_JSON."""
    response = await client.post(
        f"{PREFIX}/points-adjustments",
        content=body,
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 400
    assert reason_codes(response) == ["INVALID_JSON"]
    assert response.json()["Errors"]["Error"][0]["Details"] is None


async def test_unknown_account_is_404_and_not_applied(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """An account configured as unknown is answered 404 ACCOUNT_NOT_FOUND and nothing is applied."""
    response = await post_adjustment(client, adjustment(bankAccountNumber=UNKNOWN_ACCOUNT))

    assert response.status_code == 404
    assert reason_codes(response) == ["ACCOUNT_NOT_FOUND"]
    assert response.json()["Errors"]["Error"][0]["Details"] == "bankAccountNumber"
    assert len(sandbox.ledger) == 0


@pytest.mark.parametrize("method", ["GET", "PUT", "DELETE", "PATCH"])
async def test_other_methods_on_the_adjustment_path_get_405_allow_post(
    client: httpx.AsyncClient, method: str
) -> None:
    """Any method but POST on /points-adjustments is 405 METHOD_NOT_ALLOWED with Allow: POST."""
    response = await client.request(method, f"{PREFIX}/points-adjustments")

    assert response.status_code == 405
    assert response.headers["allow"] == "POST"
    assert response.headers["content-type"].startswith("application/json")
    assert reason_codes(response) == ["METHOD_NOT_ALLOWED"]


async def test_unknown_path_gets_a_404_envelope(client: httpx.AsyncClient) -> None:
    """A path the sandbox does not serve (here: missing the prefix) is a 404 NOT_FOUND envelope."""
    response = await client.post("/points-adjustments", json=adjustment())

    assert response.status_code == 404
    assert reason_codes(response) == ["NOT_FOUND"]


async def test_oversize_body_is_413(sandbox: RunningSandbox, client: httpx.AsyncClient) -> None:
    """A body over max_body_bytes is answered 413 PAYLOAD_TOO_LARGE and nothing is applied."""
    payload = adjustment(adjustmentReason="r" * 3000)

    response = await post_adjustment(client, payload)

    assert response.status_code == 413
    assert reason_codes(response) == ["PAYLOAD_TOO_LARGE"]
    assert len(sandbox.ledger) == 0


async def test_oversize_chunked_body_is_413(client: httpx.AsyncClient) -> None:
    """A body without Content-Length is cut off at max_body_bytes as well."""

    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(4):
            yield b" " * 1000

    response = await client.post(f"{PREFIX}/points-adjustments", content=chunks())

    assert response.status_code == 413
    assert reason_codes(response) == ["PAYLOAD_TOO_LARGE"]


async def test_history_lists_the_accounts_adjustments_and_balance(
    client: httpx.AsyncClient,
) -> None:
    """The details endpoint returns the account's adjustments oldest first and its balance."""
    await post_adjustment(client, adjustment(pointsToAdjust=300, adjustmentTypeCode="PROMO"))
    await post_adjustment(client, adjustment(pointsToAdjust=-100, adjustmentReason="undo"))
    await post_adjustment(client, adjustment(bankAccountNumber="555", pointsToAdjust=7))

    response = await client.get(
        f"{PREFIX}/points-adjustments-details",
        params={"user_id": ACCOUNT, "user_id_type": "RANAC"},
    )

    assert response.status_code == 200
    body = response.json()
    assert body["balance"] == 200
    assert [
        (a["adjustmentId"], a["pointsAdjusted"], a["adjustmentTypeCode"], a["adjustmentReason"])
        for a in body["adjustments"]
    ] == [("ADJ-000001", 300, "PROMO", "late delivery"), ("ADJ-000002", -100, "GOODWILL", "undo")]
    first = body["adjustments"][0]
    assert first["adjustedBy"] == "agent-42"
    assert datetime.fromisoformat(first["adjustedAt"]).tzinfo is not None
    assert "bankAccountNumber" not in first


async def test_history_of_an_account_never_adjusted_is_empty(client: httpx.AsyncClient) -> None:
    """An account with no adjustments has an empty history and a zero balance."""
    response = await client.get(
        f"{PREFIX}/points-adjustments-details", params={"user_id": "42", "user_id_type": "RANCU"}
    )
    assert response.status_code == 200
    assert response.json() == {"adjustments": [], "balance": 0}


@pytest.mark.parametrize(
    ("params", "expected"),
    [
        ({}, [("MISSING_PARAMETER", "user_id"), ("MISSING_PARAMETER", "user_id_type")]),
        ({"user_id": ACCOUNT}, [("MISSING_PARAMETER", "user_id_type")]),
        ({"user_id_type": "RANAC"}, [("MISSING_PARAMETER", "user_id")]),
        ({"user_id": "12ab", "user_id_type": "RANAC"}, [("INVALID_PARAMETER", "user_id")]),
        ({"user_id": ACCOUNT, "user_id_type": "EMAIL"}, [("INVALID_PARAMETER", "user_id_type")]),
    ],
    ids=["none", "no-type", "no-id", "bad-id", "bad-type"],
)
async def test_history_with_missing_or_invalid_params_is_400(
    client: httpx.AsyncClient, params: dict[str, str], expected: list[tuple[str, str]]
) -> None:
    """Each missing or invalid query parameter yields its own 400 error naming it."""
    response = await client.get(f"{PREFIX}/points-adjustments-details", params=params)

    assert response.status_code == 400
    errors = response.json()["Errors"]["Error"]
    assert [(e["ReasonCode"], e["Details"]) for e in errors] == expected


async def test_history_of_an_unknown_account_is_404(client: httpx.AsyncClient) -> None:
    """The details endpoint answers 404 ACCOUNT_NOT_FOUND for a configured unknown account."""
    response = await client.get(
        f"{PREFIX}/points-adjustments-details",
        params={"user_id": UNKNOWN_ACCOUNT, "user_id_type": "RANAC"},
    )
    assert response.status_code == 404
    assert reason_codes(response) == ["ACCOUNT_NOT_FOUND"]


async def test_configured_latency_delays_the_answer() -> None:
    """With latency_ms=100 a successful adjustment takes at least 100 ms to be answered."""
    async with (
        run_sandbox(SandboxConfig(port=0, latency_ms=100)) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        started = time.perf_counter()
        response = await http.post("/points-adjustments", json=adjustment())
        elapsed = time.perf_counter() - started

    assert response.status_code == 200
    assert elapsed >= 0.1


async def test_latency_uses_the_injected_sleep() -> None:
    """The latency goes through the injected sleep, so tests can observe it without waiting."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    async with (
        run_sandbox(SandboxConfig(port=0, latency_ms=250), sleep=fake_sleep) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post("/points-adjustments", json=adjustment())

    assert response.status_code == 200
    assert slept == [0.25]


async def test_injected_clock_stamps_adjustments() -> None:
    """adjustedAt comes from the injected clock, in UTC with milliseconds and a Z."""
    moment = datetime(2024, 5, 1, 12, 30, 45, 123456, tzinfo=UTC)
    async with (
        run_sandbox(SandboxConfig(port=0), clock=lambda: moment) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        await http.post("/points-adjustments", json=adjustment())
        history = await http.get(
            "/points-adjustments-details", params={"user_id": ACCOUNT, "user_id_type": "RANAC"}
        )

    assert history.json()["adjustments"][0]["adjustedAt"] == "2024-05-01T12:30:45.123Z"


async def test_correlation_id_is_echoed(sandbox: RunningSandbox, client: httpx.AsyncClient) -> None:
    """The caller's Correlation-Id comes back as X-MC-Correlation-ID and is kept in the ledger."""
    response = await post_adjustment(client, adjustment(), headers={"Correlation-Id": "cmd-77"})

    assert response.headers["x-mc-correlation-id"] == "cmd-77"
    assert sandbox.ledger.entries()[0].correlation_id == "cmd-77"


async def test_correlation_id_is_echoed_on_errors(client: httpx.AsyncClient) -> None:
    """Error answers carry the caller's correlation id too."""
    response = await client.get(
        f"{PREFIX}/points-adjustments", headers={"Correlation-Id": "cmd-405"}
    )
    assert response.status_code == 405
    assert response.headers["x-mc-correlation-id"] == "cmd-405"


async def test_correlation_id_is_generated_when_absent(client: httpx.AsyncClient) -> None:
    """Without a Correlation-Id the sandbox answers with a fresh UUID of its own."""
    first = await post_adjustment(client, adjustment())
    second = await post_adjustment(client, adjustment())

    ids = [first.headers["x-mc-correlation-id"], second.headers["x-mc-correlation-id"]]
    assert all(uuid.UUID(value) for value in ids)
    assert ids[0] != ids[1]


async def test_admin_ledger_shows_adjustments_and_counts(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """/_sandbox/ledger lists applied adjustments with accounts, balances and request counts."""
    await post_adjustment(client, adjustment(pointsToAdjust=10))
    await post_adjustment(client, adjustment(pointsToAdjust=0))

    response = await client.get("/_sandbox/ledger")

    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 1
    assert body["accounts"] == 1
    assert body["balances"] == {ACCOUNT: 10}
    assert body["requests"] == {"total": 2, "byStatus": {"200": 1, "400": 1}}
    [entry] = body["adjustments"]
    assert entry["bankAccountNumber"] == ACCOUNT
    assert entry["adjustmentId"] == "ADJ-000001"


async def test_reset_empties_the_ledger(sandbox: RunningSandbox, client: httpx.AsyncClient) -> None:
    """POST /_sandbox/reset drops every adjustment and count, and ids start again."""
    await post_adjustment(client, adjustment())
    await post_adjustment(client, adjustment())

    reset = await client.post("/_sandbox/reset")
    after = (await client.get("/_sandbox/ledger")).json()
    again = await post_adjustment(client, adjustment())

    assert reset.status_code == 200
    assert reset.json() == {"cleared": 2}
    assert (after["count"], after["adjustments"], after["requests"]["total"]) == (0, [], 0)
    assert again.status_code == 200
    assert [e.adjustment_id for e in sandbox.ledger.entries()] == ["ADJ-000001"]


async def test_health_answers_ok(client: httpx.AsyncClient) -> None:
    """/_sandbox/health answers 200 with status ok."""
    response = await client.get("/_sandbox/health")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "adjustments": 0}


async def test_concurrent_requests_are_each_applied_exactly_once() -> None:
    """Fifty simultaneous adjustments all succeed and each appears in the ledger exactly once."""
    payloads = [
        adjustment(
            bankAccountNumber=str(1000 + i % 5), pointsToAdjust=i + 1, adjustmentReason=f"r{i}"
        )
        for i in range(50)
    ]

    # A little latency keeps all fifty in flight at once inside the sandbox.
    async with (
        run_sandbox(SandboxConfig(port=0, path_prefix=PREFIX, latency_ms=20)) as sandbox,
        httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as client,
    ):
        responses = await asyncio.gather(*(post_adjustment(client, p) for p in payloads))

    assert [r.status_code for r in responses] == [200] * 50
    assert sorted(r.json()["pointsAdjusted"] for r in responses) == list(range(1, 51))
    entries = sandbox.ledger.entries()
    assert sorted(e.adjustment_reason for e in entries) == sorted(f"r{i}" for i in range(50))
    assert len({e.adjustment_id for e in entries}) == 50
    for account_index in range(5):
        account = str(1000 + account_index)
        expected = sum(i + 1 for i in range(50) if i % 5 == account_index)
        assert sandbox.ledger.balance(account) == expected


async def test_serve_forever_serves_until_stopped() -> None:
    """serve_forever answers requests once ready and returns when its stop event is set."""
    stop = asyncio.Event()
    ready: asyncio.Queue[RunningSandbox] = asyncio.Queue()
    task = asyncio.create_task(
        serve_forever(SandboxConfig(port=0), stop=stop, on_ready=ready.put_nowait)
    )
    running = await asyncio.wait_for(ready.get(), timeout=5)
    async with httpx.AsyncClient(base_url=running.base_url) as http:
        health = await http.get("/_sandbox/health")
    stop.set()
    await asyncio.wait_for(task, timeout=5)

    assert health.status_code == 200
    assert task.done()
    assert task.exception() is None


async def test_non_ascii_text_is_stored_unchanged(client: httpx.AsyncClient) -> None:
    """Non-ASCII text in a valid request is accepted and stored unchanged."""
    response = await client.post(
        f"{PREFIX}/points-adjustments",
        content=json.dumps(
            adjustment(adjustmentReason="geste commercial été à Zürich"), ensure_ascii=False
        ).encode(),
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 200
    history = await client.get(
        f"{PREFIX}/points-adjustments-details", params={"user_id": ACCOUNT, "user_id_type": "RANAC"}
    )
    assert history.json()["adjustments"][0]["adjustmentReason"] == "geste commercial été à Zürich"


class DenyingGateway:
    """A gateway hook that records what it saw and refuses every call."""

    def __init__(self) -> None:
        self.seen: list[GatewayRequest] = []

    async def check(self, request: GatewayRequest) -> None:
        self.seen.append(request)
        raise ApiError.unauthorized()


async def test_gateway_hook_sees_the_exact_request_and_can_refuse_it() -> None:
    """A gateway hook gets method, URL, headers and body bytes, and its refusal is the answer."""
    gateway = DenyingGateway()
    body = json.dumps(adjustment()).encode()
    async with (
        run_sandbox(SandboxConfig(port=0), gateway=gateway) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post(
            "/points-adjustments?x=1",
            content=body,
            headers={"Authorization": "OAuth test", "Content-Type": "application/json"},
        )
        admin = await http.get("/_sandbox/health")

    assert response.status_code == 401
    assert response.json()["Errors"]["Error"] == [
        {
            "Source": "Gateway",
            "ReasonCode": "DECLINED",
            "Description": "Unauthorized - Access Not Granted",
            "Recoverable": False,
            "Details": None,
        }
    ]
    [seen] = gateway.seen
    assert (seen.method, seen.url, seen.body) == (
        "POST",
        f"{running.base_url}/points-adjustments?x=1",
        body,
    )
    assert seen.headers["authorization"] == "OAuth test"
    assert len(running.ledger) == 0
    assert admin.status_code == 200  # admin routes bypass the gateway


class WrappingCodec:
    """A codec whose requests and answers are wrapped in {"wrapped": ...}, like a JWE layer."""

    def decode(self, body: bytes, headers: Mapping[str, str]) -> DecodedBody:
        outer = json.loads(body)
        return DecodedBody(
            outer["wrapped"], lambda payload: json.dumps({"wrapped": dict(payload)}).encode()
        )


async def test_codec_decodes_requests_and_encodes_the_success_answer() -> None:
    """A pluggable codec turns the body into the plaintext payload and encodes the 200 body."""
    async with (
        run_sandbox(SandboxConfig(port=0), codec=WrappingCodec()) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post("/points-adjustments", json={"wrapped": adjustment()})

    assert response.status_code == 200
    assert response.json() == {"wrapped": {"pointsAdjusted": 500}}
    assert len(running.ledger) == 1


class BrokenCodec:
    """A codec that fails in a way nobody planned for."""

    def decode(self, body: bytes, headers: Mapping[str, str]) -> DecodedBody:
        raise RuntimeError("boom")


async def test_an_unexpected_failure_is_a_500_envelope() -> None:
    """A bug inside a request step is answered 500 INTERNAL_ERROR in the envelope, not HTML."""
    async with (
        run_sandbox(SandboxConfig(port=0), codec=BrokenCodec()) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post("/points-adjustments", json=adjustment())

    assert response.status_code == 500
    assert response.headers["content-type"].startswith("application/json")
    [error] = response.json()["Errors"]["Error"]
    assert (error["ReasonCode"], error["Recoverable"]) == ("INTERNAL_ERROR", True)


async def test_adjustment_is_applied_even_after_the_client_timed_out() -> None:
    """A client that gives up during the latency still leaves the adjustment applied."""
    async with (
        run_sandbox(SandboxConfig(port=0, latency_ms=200)) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=0.05) as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/points-adjustments", json=adjustment())
        for _ in range(100):
            if len(running.ledger):
                break
            await asyncio.sleep(0.02)

        assert len(running.ledger) == 1
