"""End to end: the service's /metrics after a real run (a real broker, the sandbox over a
socket, the service as a child process) is bounded, settled and valid for Prometheus.

One run serves every test of the module: ~60 commands (repeats and invalid ones among them)
over three partitions; the scrape is taken once every outcome is out and the service has
committed everything it did.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import time
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.samples import Sample

from pa_devkit.keys import DevKeySet
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from service.domain.command import account_ref, mask_account
from service.idempotency.metered import OPERATIONS
from service.tools.generate import GeneratedBatch, generate_commands
from service.tools.outcomes import OutcomeLog
from service.tools.send import send_commands
from tests.e2e.harness import (
    ServiceProcess,
    Topology,
    metric_value,
    secure_sandbox,
    wait_for_originals,
)
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(300)]

PARTITIONS = 3
SETTLED = (
    "points_adjuster_consumer_lag_records",
    "points_adjuster_consumer_lag_seconds",
    "points_adjuster_commit_gap_records",
)
MAX_VALUES_PER_LABEL = 40
"""More distinct values than this under one label name would mean an unbounded label."""


@dataclass
class Run:
    """What one run of the pipeline left to check."""

    batch: GeneratedBatch
    outcomes: OutcomeLog
    scrape: str
    exit_code: int
    log_tail: str

    def samples(self) -> list[Sample]:
        return [
            sample
            for family in text_string_to_metric_families(self.scrape)
            for sample in family.samples
        ]


async def _settled(service: ServiceProcess, timeout_s: float) -> str:
    """Scrape until every partition's lag and commit gap are 0 (the last commit lands within
    a commit interval); the last scrape either way."""
    deadline = time.monotonic() + timeout_s
    while True:
        text = await service.metrics()
        figures = [metric_value(text, name, partition=str(p)) for name in SETTLED for p in range(3)]
        present = all(f"{name}{{" in text for name in SETTLED)
        if (present and not any(figures)) or time.monotonic() > deadline:
            return text
        await asyncio.sleep(0.5)


async def _run_pipeline(bootstrap: str, workdir: Path, keyset: DevKeySet) -> Run:
    codec = AvroCodec.from_directory()
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(PARTITIONS))
    batch = generate_commands(60, duplicate_share=0.1, invalid_share=0.05, accounts=15, seed=23)
    async with run_sandbox(secure_sandbox(keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, workdir, keyset)
        await service.start()
        try:
            await send_commands(topology.kafka, batch.commands, codec=codec)
            outcomes = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 120)
            scrape = await _settled(service, 20)
            outcomes = await wait_for_originals(topology.kafka, codec, batch.distinct_keys, 0)
        finally:
            exit_code = await service.terminate()
    return Run(batch, outcomes, scrape, exit_code, service.log_tail())


@pytest.fixture(scope="module")
def run(
    kafka_bootstrap: str, tmp_path_factory: pytest.TempPathFactory, dev_keyset: DevKeySet
) -> Run:
    """The pipeline, run once for the module's tests."""
    workdir = tmp_path_factory.mktemp("metrics-scrape")
    return asyncio.run(_run_pipeline(kafka_bootstrap, workdir, dev_keyset))


def test_the_run_completed_and_the_counters_match_the_outcome_topics(run: Run) -> None:
    """Every key got its outcome, the service stopped cleanly, and the outcome counters say
    exactly what the outcome topics hold."""
    assert run.exit_code == 0, run.log_tail
    assert len(run.outcomes.originals()) == run.batch.distinct_keys
    completed = metric_value(
        run.scrape, "points_adjuster_outcomes_total", kind="completed", reason=""
    )
    assert completed == len(run.outcomes.completed)
    failed = sum(
        sample.value
        for sample in run.samples()
        if sample.name == "points_adjuster_outcomes_total" and sample.labels["kind"] == "failed"
    )
    assert failed == len(run.outcomes.failed)
    valid = run.batch.distinct_keys - len(run.batch.invalid_keys)
    applied = metric_value(
        run.scrape, "points_adjuster_pas_requests_total", result="applied", status="200"
    )
    assert applied == valid


def test_lag_and_commit_gap_are_zero_once_everything_is_done(run: Run) -> None:
    """With every command done and committed, each partition's lag (records and seconds) and
    commit gap read 0, and each of the three partitions has its series."""
    for name in SETTLED:
        series = {
            sample.labels["partition"]: sample.value
            for sample in run.samples()
            if sample.name == name
        }
        assert series == {str(p): 0.0 for p in range(PARTITIONS)}, name


def test_every_label_is_bounded_and_carries_no_key_id_or_account(run: Run) -> None:
    """No label value equals or contains an idempotency key, a correlation id, an account
    number, its masked form or its reference; each label name has few distinct values, the
    partition and store operation labels only their known ones."""
    secrets: set[str] = set()
    for command in run.batch.commands:
        secrets.add(str(command["idempotency_key"]))
        secrets.add(str(command["correlation_id"]))
        account = str(command["bank_account_number"])
        if account:
            secrets.update({account, mask_account(account), account_ref(account)})
    values: dict[str, set[str]] = defaultdict(set)
    leaks: list[str] = []
    for sample in run.samples():
        for name, value in sample.labels.items():
            values[name].add(value)
            leaks.extend(
                f"{sample.name}{{{name}={value!r}}}" for secret in secrets if secret in value
            )
    assert leaks == []
    wide = {name: len(found) for name, found in values.items() if len(found) > MAX_VALUES_PER_LABEL}
    assert wide == {}
    assert values["partition"] <= {str(p) for p in range(PARTITIONS)}
    assert values["operation"] == set(OPERATIONS)
    assert values["service"] == {"points-adjuster"}


def test_the_real_scrape_passes_promtool(run: Run, tmp_path: Path) -> None:
    """``promtool check metrics`` finds nothing to say about the real scrape (promtool comes
    with Debian's prometheus package; ``make test`` installs it)."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool is not installed (make prometheus-tools installs Debian's prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=run.scrape,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")
