"""Fault injection in the PAS sandbox, seen through a real httpx client, and its settings."""

from __future__ import annotations

import argparse
import asyncio
import random
import statistics
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from pa_devkit.keys import DevKeySet, generate_dev_keyset
from pa_devkit.sandbox import (
    ApplyThenDropFault,
    ErrorFault,
    FaultConfig,
    FaultConfigError,
    FaultInjector,
    FixedLatency,
    HangFault,
    LognormalLatency,
    RateLimit,
    ResetFault,
    RunningSandbox,
    SandboxConfig,
    UniformLatency,
    run_sandbox,
)
from pa_devkit.sandbox.cli_args import add_sandbox_arguments, config_from_arguments, dev_keyset_in
from pa_devkit.sandbox.ratelimit import TokenBucket, retry_after_seconds

ACCOUNT = "1234567890123456000"
UNKNOWN_ACCOUNT = "9999999999999999000"
FULL_CONFIG = FaultConfig(
    seed=42,
    latency=LognormalLatency(ms=20, p99_ms=250, max_ms=2000),
    errors=(
        ErrorFault(503, 0.05, recoverable=True),
        ErrorFault(500, 0.01, reason_code="SYSTEM_ERROR"),
    ),
    rate_limit=RateLimit(rate_per_s=200, burst=50),
    hang=HangFault(rate=0.01, seconds=30, applies=True),
    reset=ResetFault(0.01),
    apply_then_drop=ApplyThenDropFault(0.01),
)


def adjustment(**overrides: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "bankAccountNumber": ACCOUNT,
        "pointsToAdjust": 100,
        "adjustmentTypeCode": "GOODWILL",
        "adjustmentReason": "late delivery",
        "adjustedBy": "agent-42",
    }
    payload.update(overrides)
    return payload


def the_error(response: httpx.Response) -> dict[str, Any]:
    [error] = response.json()["Errors"]["Error"]
    assert isinstance(error, dict)
    return error


async def ledger_of(client: httpx.AsyncClient) -> dict[str, Any]:
    response = await client.get("/_sandbox/ledger")
    body: dict[str, Any] = response.json()
    return body


async def wait_for_entries(sandbox: RunningSandbox, count: int) -> None:
    """Poll the ledger for up to five seconds until it holds ``count`` entries."""
    for _ in range(250):
        if len(sandbox.ledger) >= count:
            return
        await asyncio.sleep(0.02)


@pytest.fixture
async def sandbox() -> AsyncIterator[RunningSandbox]:
    async with run_sandbox(SandboxConfig(port=0)) as running:
        yield running


@pytest.fixture
async def client(sandbox: RunningSandbox) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=sandbox.base_url, timeout=10) as http:
        yield http


async def put_faults(client: httpx.AsyncClient, config: FaultConfig) -> None:
    response = await client.put("/_sandbox/faults", content=config.to_json())
    assert response.status_code == 200, response.text


# --- injected errors -------------------------------------------------------------------------


@pytest.mark.parametrize("recoverable", [False, True])
async def test_injected_503_carries_the_configured_recoverable_and_applies_nothing(
    recoverable: bool,
) -> None:
    """An injected 503 answers the gateway envelope with Recoverable as configured, unapplied."""
    faults = FaultConfig(errors=(ErrorFault(503, 1.0, recoverable=recoverable),))
    async with (
        run_sandbox(SandboxConfig(port=0, faults=faults)) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post("/points-adjustments", json=adjustment())
        ledger = await ledger_of(http)

    assert response.status_code == 503
    error = the_error(response)
    assert (error["Source"], error["ReasonCode"], error["Recoverable"]) == (
        "Gateway",
        "SERVICE_UNAVAILABLE",
        recoverable,
    )
    assert len(running.ledger) == 0
    assert ledger["faults"]["error_503"] == 1
    assert ledger["requests"]["byStatus"] == {"503": 1}


async def test_injected_pas_error_uses_the_configured_reason_code(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """An injected 409 is a PAS envelope with the configured reason code, and nothing applied."""
    await put_faults(client, FaultConfig(errors=(ErrorFault(409, 1.0, reason_code="DUPLICATE"),)))

    response = await client.post("/points-adjustments", json=adjustment())

    assert response.status_code == 409
    error = the_error(response)
    assert (error["Source"], error["ReasonCode"], error["Recoverable"]) == (
        "rewards-points-api",
        "DUPLICATE",
        False,
    )
    assert len(sandbox.ledger) == 0


async def test_validation_comes_before_injected_errors(client: httpx.AsyncClient) -> None:
    """An invalid request is answered 400 even when every request is drawn for a 503."""
    await put_faults(client, FaultConfig(errors=(ErrorFault(503, 1.0),)))

    response = await client.post("/points-adjustments", json=adjustment(pointsToAdjust=0))

    assert response.status_code == 400
    assert (await ledger_of(client))["faults"].get("error_503", 0) == 0


# --- rate limit ------------------------------------------------------------------------------


async def test_rate_limit_answers_429_with_retry_after_once_the_bucket_is_empty() -> None:
    """After `burst` requests the bucket is empty: 429, Retry-After, recoverable, unapplied."""
    now = [1000.0]
    faults = FaultConfig(rate_limit=RateLimit(rate_per_s=0.1, burst=2))
    async with (
        run_sandbox(SandboxConfig(port=0, faults=faults), monotonic=lambda: now[0]) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        first = await http.post("/points-adjustments", json=adjustment())
        second = await http.post("/points-adjustments", json=adjustment())
        limited = await http.post("/points-adjustments", json=adjustment())
        now[0] += 10  # one token back
        after_refill = await http.post("/points-adjustments", json=adjustment())
        ledger = await ledger_of(http)

    assert [first.status_code, second.status_code] == [200, 200]
    assert limited.status_code == 429
    assert limited.headers["retry-after"] == "10"
    error = the_error(limited)
    assert (error["Source"], error["ReasonCode"], error["Recoverable"]) == (
        "Gateway",
        "TOO_MANY_REQUESTS",
        True,
    )
    assert after_refill.status_code == 200
    assert len(running.ledger) == 3
    assert ledger["faults"]["rate_limited"] == 1


async def test_rate_limit_comes_before_decoding(client: httpx.AsyncClient) -> None:
    """An unparsable body still takes a token, and past the bucket it gets 429, not 400."""
    await put_faults(client, FaultConfig(rate_limit=RateLimit(rate_per_s=0.001, burst=1)))

    first = await client.post("/points-adjustments", content=b"not json")
    second = await client.post("/points-adjustments", content=b"not json")

    assert (first.status_code, second.status_code) == (400, 429)
    assert int(second.headers["retry-after"]) >= 1


def test_token_bucket_refills_at_its_rate_up_to_its_burst() -> None:
    """The bucket starts full, refills at rate_per_s, never above burst, and says how long."""
    now = [0.0]
    bucket = TokenBucket(2.0, 3, monotonic=lambda: now[0])

    assert [bucket.try_take() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.try_take() == pytest.approx(0.5)
    now[0] += 0.5
    assert bucket.try_take() == 0.0
    now[0] += 100
    assert [bucket.try_take() == 0.0 for _ in range(4)] == [True, True, True, False]
    assert [retry_after_seconds(w) for w in (0.01, 1.0, 1.2)] == [1, 1, 2]


# --- hang, reset, drop -----------------------------------------------------------------------


async def test_hang_makes_the_client_time_out_and_then_applies() -> None:
    """A hang outlasts the client's read timeout; with applies the adjustment lands afterwards."""
    faults = FaultConfig(hang=HangFault(rate=1.0, seconds=1.0, applies=True))
    async with (
        run_sandbox(SandboxConfig(port=0, faults=faults)) as running,
        httpx.AsyncClient(base_url=running.base_url, timeout=0.3) as http,
    ):
        with pytest.raises(httpx.ReadTimeout):
            await http.post("/points-adjustments", json=adjustment())
        assert len(running.ledger) == 0
        await wait_for_entries(running, 1)
        ledger = await ledger_of(http)

    assert ledger["count"] == 1
    assert ledger["faults"]["hang"] == 1


async def test_hang_that_does_not_apply_ends_in_a_gateway_timeout() -> None:
    """A hang without applies waits its seconds (injected sleep), answers 504, applies nothing."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    faults = FaultConfig(hang=HangFault(rate=1.0, seconds=30, applies=False))
    async with (
        run_sandbox(SandboxConfig(port=0, faults=faults), sleep=fake_sleep) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post("/points-adjustments", json=adjustment())

    assert slept == [30]
    assert response.status_code == 504
    error = the_error(response)
    assert (error["Source"], error["ReasonCode"], error["Recoverable"]) == (
        "Gateway",
        "GATEWAY_TIMEOUT",
        True,
    )
    assert len(running.ledger) == 0


async def test_reset_is_a_transport_error_and_applies_nothing(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """A reset aborts the connection (httpx ReadError, no response) and nothing is applied."""
    await put_faults(client, FaultConfig(reset=ResetFault(1.0)))

    with pytest.raises(httpx.ReadError):
        await client.post("/points-adjustments", json=adjustment())
    ledger = await ledger_of(client)

    assert len(sandbox.ledger) == 0
    assert ledger["faults"]["reset"] == 1
    assert ledger["requests"]["total"] == 0


async def test_apply_then_drop_is_a_transport_error_but_the_ledger_has_it(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """apply_then_drop applies, then closes without a response (RemoteProtocolError)."""
    await put_faults(client, FaultConfig(apply_then_drop=ApplyThenDropFault(1.0)))

    with pytest.raises(httpx.RemoteProtocolError):
        await client.post("/points-adjustments", json=adjustment(pointsToAdjust=77))
    ledger = await ledger_of(client)

    assert [e.points_adjusted for e in sandbox.ledger.entries()] == [77]
    assert ledger["faults"]["apply_then_drop"] == 1


async def test_apply_then_drop_does_not_apply_for_an_unknown_account() -> None:
    """Unknown accounts are answered 404 before anything is applied, so nothing is dropped."""
    faults = FaultConfig(apply_then_drop=ApplyThenDropFault(1.0))
    config = SandboxConfig(port=0, faults=faults, unknown_accounts=frozenset({UNKNOWN_ACCOUNT}))
    async with (
        run_sandbox(config) as running,
        httpx.AsyncClient(base_url=running.base_url) as http,
    ):
        response = await http.post(
            "/points-adjustments", json=adjustment(bankAccountNumber=UNKNOWN_ACCOUNT)
        )

    assert response.status_code == 404
    assert running.faults.counts()["apply_then_drop"] == 0


# --- run-time control ------------------------------------------------------------------------


async def test_faults_are_replaced_and_cleared_at_run_time(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """PUT /_sandbox/faults switches 503s on at once, GET shows it, DELETE switches them off."""
    before = await client.post("/points-adjustments", json=adjustment())
    config = FaultConfig(errors=(ErrorFault(503, 1.0, recoverable=True),))
    put = await client.put("/_sandbox/faults", content=config.to_json())
    shown = await client.get("/_sandbox/faults")
    during = await client.post("/points-adjustments", json=adjustment())
    deleted = await client.delete("/_sandbox/faults")
    cleared = await client.get("/_sandbox/faults")
    after = await client.post("/points-adjustments", json=adjustment())

    assert [before.status_code, during.status_code, after.status_code] == [200, 503, 200]
    assert put.status_code == 200
    assert FaultConfig.from_dict(put.json()) == config
    assert FaultConfig.from_dict(shown.json()) == config
    assert deleted.status_code == 200
    assert FaultConfig.from_dict(cleared.json()) == FaultConfig()
    assert len(sandbox.ledger) == 2


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{not json", "not valid JSON"),
        (b"[]", "faults must be a JSON object"),
        (b'{"errors": [{"status": 503, "rate": 1.5}]}', "rate must be within 0..1"),
        (b'{"errors": [{"status": 200, "rate": 0.1}]}', "status must be within 400..599"),
        (b'{"hang": {"rate": 0.1, "seconds": -1}}', "hang.seconds must be positive"),
        (b'{"latency": {"kind": "gamma", "ms": 5}}', "latency.kind must be one of"),
        (b'{"reset": {"rate": 0.6}, "apply_then_drop": {"rate": 0.6}}', "add up to at most 1"),
        (b'{"rate_limit": {"rate_per_s": 10}}', "rate_limit.burst is required"),
        (b'{"resets": {"rate": 0.1}}', "unknown key 'resets'"),
    ],
    ids=[
        "not-json",
        "not-object",
        "rate-above-1",
        "status-not-error",
        "negative-hang",
        "unknown-latency-kind",
        "rates-above-1",
        "missing-burst",
        "unknown-key",
    ],
)
async def test_invalid_fault_config_is_400_and_changes_nothing(
    client: httpx.AsyncClient, body: bytes, message: str
) -> None:
    """A PUT of an invalid configuration is 400 INVALID_FAULT_CONFIG naming the problem."""
    await put_faults(client, FaultConfig(reset=ResetFault(0.25)))

    response = await client.put("/_sandbox/faults", content=body)
    current = await client.get("/_sandbox/faults")

    assert response.status_code == 400
    error = the_error(response)
    assert error["ReasonCode"] == "INVALID_FAULT_CONFIG"
    assert message in error["Description"]
    assert FaultConfig.from_dict(current.json()) == FaultConfig(reset=ResetFault(0.25))


async def test_seeded_mix_of_faults_matches_the_reported_counts(
    sandbox: RunningSandbox, client: httpx.AsyncClient
) -> None:
    """With a seeded mix, what the client saw equals the ledger's fault counts and entries."""
    await put_faults(
        client,
        FaultConfig(
            seed=7,
            errors=(ErrorFault(503, 0.2, recoverable=True),),
            reset=ResetFault(0.1),
            apply_then_drop=ApplyThenDropFault(0.1),
        ),
    )
    seen = {"ok": 0, "503": 0, "transport": 0}
    for _ in range(60):
        try:
            response = await client.post("/points-adjustments", json=adjustment())
        except httpx.TransportError:
            seen["transport"] += 1
        else:
            seen["ok" if response.status_code == 200 else str(response.status_code)] += 1
    ledger = await ledger_of(client)

    faults = ledger["faults"]
    assert seen["503"] == faults["error_503"] > 0
    assert seen["transport"] == faults["reset"] + faults["apply_then_drop"]
    assert faults["reset"] > 0
    assert faults["apply_then_drop"] > 0
    assert ledger["count"] == seen["ok"] + faults["apply_then_drop"]
    assert ledger["requests"]["byStatus"] == {"200": seen["ok"], "503": seen["503"]}

    reset = await client.post("/_sandbox/reset")
    assert reset.status_code == 200
    assert set((await ledger_of(client))["faults"].values()) == {0}


async def test_latency_distribution_goes_through_the_injected_sleep() -> None:
    """A uniform latency delays each adjustment by a sample within its bounds."""
    slept: list[float] = []

    async def fake_sleep(seconds: float) -> None:
        slept.append(seconds)

    faults = FaultConfig(seed=1, latency=UniformLatency(min_ms=10, max_ms=20))
    async with (
        run_sandbox(SandboxConfig(port=0, latency_ms=999, faults=faults), sleep=fake_sleep) as sb,
        httpx.AsyncClient(base_url=sb.base_url) as http,
    ):
        for _ in range(5):
            assert (await http.post("/points-adjustments", json=adjustment())).status_code == 200

    assert len(slept) == 5
    assert all(0.010 <= s <= 0.020 for s in slept)
    assert len(set(slept)) > 1


# --- the configuration as a value ------------------------------------------------------------


def test_fault_config_round_trips_through_json() -> None:
    """to_json then from_json gives back an equal configuration, every fault included."""
    assert FaultConfig.from_json(FULL_CONFIG.to_json()) == FULL_CONFIG
    assert FaultConfig.from_json("{}") == FaultConfig()
    assert FaultConfig.from_json(FaultConfig().to_json()) == FaultConfig()


def test_the_documented_example_parses() -> None:
    """The JSON example in the faults module docstring is a valid configuration."""
    import pa_devkit.sandbox.faults as faults_module

    doc = faults_module.__doc__ or ""
    start = doc.index("\n    {\n")
    example = doc[start : doc.index("\n    }\n", start) + 6]
    assert FaultConfig.from_json(example) == FULL_CONFIG


def test_fault_config_rejects_bad_values_in_code_too() -> None:
    """Building a FaultConfig directly validates like JSON does."""
    with pytest.raises(FaultConfigError, match="errors lists status 503 more than once"):
        FaultConfig(errors=(ErrorFault(503, 0.1), ErrorFault(503, 0.2)))
    with pytest.raises(FaultConfigError, match=r"latency\.p99_ms must not be below"):
        LognormalLatency(ms=50, p99_ms=10)
    with pytest.raises(FaultConfigError, match=r"latency\.max_ms must not be below"):
        UniformLatency(min_ms=5, max_ms=1)
    with pytest.raises(FaultConfigError, match="must be a finite number"):
        FixedLatency(float("nan"))
    with pytest.raises(FaultConfigError, match=r"hang\.applies must be true or false"):
        HangFault(rate=0.1, seconds=1, applies="yes")  # type: ignore[arg-type]


def test_latency_samples_stay_within_sensible_bounds() -> None:
    """Seeded samples: fixed is constant, uniform within bounds, lognormal near median and p99."""
    rng = random.Random(1234)
    assert {FixedLatency(25).sample_ms(rng) for _ in range(10)} == {25.0}

    uniform = [UniformLatency(5, 15).sample_ms(rng) for _ in range(2000)]
    assert min(uniform) >= 5
    assert max(uniform) <= 15
    assert statistics.fmean(uniform) == pytest.approx(10, abs=0.5)

    lognormal = LognormalLatency(ms=20, p99_ms=200)
    samples = sorted(lognormal.sample_ms(rng) for _ in range(20_000))
    assert min(samples) > 0
    assert statistics.median(samples) == pytest.approx(20, rel=0.1)
    assert samples[int(0.99 * len(samples))] == pytest.approx(200, rel=0.2)

    capped = LognormalLatency(ms=20, p99_ms=200, max_ms=50)
    assert max(capped.sample_ms(rng) for _ in range(2000)) == 50


def test_seeded_injector_draws_reproducible_fates() -> None:
    """Two injectors with the same seed draw the same fates; rates hold over many draws."""
    config = FaultConfig(seed=99, errors=(ErrorFault(503, 0.3),), reset=ResetFault(0.2))
    first, second = FaultInjector(config), FaultInjector(config)

    labels = [first.draw().label for _ in range(5000)]
    assert labels == [second.draw().label for _ in range(5000)]
    assert labels.count("error_503") / 5000 == pytest.approx(0.3, abs=0.03)
    assert labels.count("reset") / 5000 == pytest.approx(0.2, abs=0.03)
    assert labels.count("none") / 5000 == pytest.approx(0.5, abs=0.03)
    assert FaultInjector(FaultConfig()).latency_seconds(250) == 0.25


# --- the CLI's arguments ---------------------------------------------------------------------


@pytest.fixture(scope="module")
def keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    return generate_dev_keyset(tmp_path_factory.mktemp("cli-keys"))


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_sandbox_arguments(parser)
    return parser.parse_args(list(argv))


def test_arguments_default_to_a_plain_sandbox_without_faults() -> None:
    """Without flags the sandbox listens on 8081, in plain mode, injecting nothing."""
    config = config_from_arguments(parse())

    assert (config.host, config.port, config.latency_ms, config.path_prefix) == (
        "127.0.0.1",
        8081,
        0.0,
        "",
    )
    assert config.security is None
    assert config.faults == FaultConfig()


def test_arguments_with_keys_and_faults(keyset: DevKeySet, tmp_path: Path) -> None:
    """--keys-dir, --consumer-key, --plain-responses and --faults end up in the config."""
    faults_file = tmp_path / "faults.json"
    faults_file.write_text(FULL_CONFIG.to_json())

    config = config_from_arguments(
        parse(
            "--keys-dir",
            str(keyset.directory),
            "--consumer-key",
            "ck-1",
            "--plain-responses",
            "--faults",
            str(faults_file),
            "--unknown-account",
            "1",
            "--unknown-account",
            "2",
            "--path-prefix",
            "/loyalty",
        )
    )

    assert config.security is not None
    assert dict(config.security.clients) == {"ck-1": keyset.client_signing_certificate}
    assert config.security.client_encryption_certificate is None
    assert config.faults == FULL_CONFIG
    assert config.unknown_accounts == frozenset({"1", "2"})
    assert config.path_prefix == "/loyalty"


def test_dev_keyset_in_finds_what_generate_dev_keyset_writes(keyset: DevKeySet) -> None:
    """dev_keyset_in names the same files as generate_dev_keyset, so the two cannot drift."""
    assert dev_keyset_in(keyset.directory) == keyset


def test_missing_keys_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A --keys-dir that does not exist is a ValueError naming the flag and the folder."""
    missing = tmp_path / "nowhere"
    with pytest.raises(ValueError, match=r"--keys-dir .*nowhere: no such directory"):
        config_from_arguments(parse("--keys-dir", str(missing)))


def test_incomplete_keys_dir_is_a_clear_error(tmp_path: Path) -> None:
    """A --keys-dir without the key set's files is a ValueError listing the missing ones."""
    with pytest.raises(ValueError, match=r"missing client-signing\.crt\.pem"):
        config_from_arguments(parse("--keys-dir", str(tmp_path)))


def test_unusable_key_file_is_a_clear_error(keyset: DevKeySet, tmp_path: Path) -> None:
    """A key set whose PAS key is garbage is refused by config_from_arguments, not at run time."""
    broken = tmp_path / "broken"
    broken.mkdir()
    for path in keyset.files():
        (broken / path.name).write_bytes(path.read_bytes())
    (broken / keyset.pas_decryption_key.name).write_text("not a key")

    with pytest.raises(ValueError, match="unusable key set: not_a_key"):
        config_from_arguments(parse("--keys-dir", str(broken)))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read"),
        ("{oops", "not valid JSON"),
        ('{"hang": {"rate": 2, "seconds": 1}}', "hang.rate must be within 0..1"),
    ],
    ids=["missing-file", "not-json", "invalid-value"],
)
def test_bad_faults_file_is_a_clear_error(
    tmp_path: Path, content: str | None, message: str
) -> None:
    """A missing, unparsable or invalid --faults file is a ValueError naming the file."""
    path = tmp_path / "faults.json"
    if content is not None:
        path.write_text(content)

    with pytest.raises(ValueError, match=r"--faults .*faults\.json: ") as caught:
        config_from_arguments(parse("--faults", str(path)))
    assert message in str(caught.value)


def test_plain_responses_without_keys_is_a_clear_error() -> None:
    """--plain-responses makes no sense without --keys-dir and is refused."""
    with pytest.raises(ValueError, match="--plain-responses needs --keys-dir"):
        config_from_arguments(parse("--plain-responses"))
