"""PAS rate-limits the service: with adaptive concurrency it slows down instead of running
its commands out of attempts. The same 400 commands against the same 50/s quota, with it
off, then on: with PAS answering in 100 ms (about five calls in flight fill the quota: the
concurrency limit's case) and in 5 ms (less than one call fills it: the rate pacer's)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.faults import FaultConfig
from service.codec.avro import AvroCodec
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    ledger_per_correlation,
    metric_value,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

QUOTA = {"rate_limit": {"rate_per_s": 50, "burst": 10}}
LATENCIES_MS = (100, 5)
# Few, quick attempts, so that a service that ignores the quota visibly runs out of them.
SERVICE_ENV = {
    "PA_RETRY__MAX_ATTEMPTS": "3",
    "PA_RETRY__INITIAL_BACKOFF_S": "0.2",
    "PA_RETRY__MAX_BACKOFF_S": "1",
    "PA_CIRCUIT__FAILURE_THRESHOLD": "100000",  # the breaker stays out of this comparison
}


async def run_against_the_quota(
    kafka_bootstrap: str, tmp_path: Path, keyset: DevKeySet, adaptive: bool, latency_ms: int
) -> dict[str, Any]:
    codec = AvroCodec.from_directory()
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(3))
    batch = generate_commands(400, accounts=400, seed=21)
    config = secure_sandbox(keyset, latency_ms=latency_ms, faults=FaultConfig.from_dict(QUOTA))
    workdir = tmp_path / f"{'adaptive' if adaptive else 'fixed'}-{latency_ms}ms"
    workdir.mkdir()
    async with run_sandbox(config) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            workdir,
            keyset,
            PA_PROCESSING__ADAPTIVE_CONCURRENCY=str(adaptive).lower(),
            **SERVICE_ENV,
        )
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            outcomes = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 120)
            metrics = await service.metrics()
        finally:
            assert await service.terminate() == 0, service.log_tail()
        ledger = sandbox.ledger.entries()
        rate_limited = sandbox.faults.counts()["rate_limited"]
    per_key = originals_per_key(outcomes)
    assert len(per_key) == batch.distinct_keys
    assert max(per_key.values()) == 1
    assert max(ledger_per_correlation(ledger).values()) == 1
    ran_out = [e for e in outcomes.failed if e["reason_code"] == "PAS_UNAVAILABLE"]
    return {
        "ran_out": len(ran_out),
        "rate_limited": rate_limited,
        "applied": len(ledger),
        "limit_now": metric_value(metrics, "points_adjuster_pas_concurrency_limit"),
    }


@pytest.mark.parametrize("latency_ms", LATENCIES_MS, ids=[f"pas-{n}ms" for n in LATENCIES_MS])
async def test_adaptive_concurrency_keeps_commands_from_running_out_of_attempts(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet, latency_ms: int
) -> None:
    fixed = await run_against_the_quota(
        kafka_bootstrap, tmp_path, dev_keyset, adaptive=False, latency_ms=latency_ms
    )
    adaptive = await run_against_the_quota(
        kafka_bootstrap, tmp_path, dev_keyset, adaptive=True, latency_ms=latency_ms
    )
    print(f"\nagainst a 50/s quota, PAS at {latency_ms} ms: fixed {fixed}, adaptive {adaptive}")

    assert fixed["ran_out"] > 20, f"the quota did not bite: {fixed}"
    assert adaptive["ran_out"] * 4 <= fixed["ran_out"], (fixed, adaptive)
    assert adaptive["rate_limited"] * 2 <= fixed["rate_limited"], (fixed, adaptive)
    assert adaptive["applied"] > fixed["applied"]
    assert fixed["limit_now"] == 200
