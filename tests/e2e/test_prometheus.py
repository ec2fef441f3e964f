"""End to end with a real Prometheus: it scrapes the service every second while commands flow,
loads the alert rules of deploy/prometheus/alerts.yml, and answers queries over its HTTP API.

Prometheus is Debian's `prometheus` binary (`make prometheus-tools`), started as a child
process on a free loopback port with its storage in the test's folder and stopped at the end.
With CI=true a missing binary fails the run; elsewhere the test is skipped, saying why.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
import yaml

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from service.tools.generate import generate_commands
from service.tools.send import send_commands
from tests.e2e.harness import ServiceProcess, Topology, secure_sandbox
from tests.kafka_support import create_topics

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(120)]

ROOT = Path(__file__).resolve().parents[2]
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
JOB = "points-adjuster"
"""The scrape job the rules' selectors name (as in deploy/prometheus/prometheus.yml)."""

FORCED_ALERT = "ValidationFailuresSeen"
FORCED_RULES = {
    "groups": [
        {
            "name": "e2e-forced",
            "rules": [
                {
                    # A variant with `for: 0s` on a condition this run makes true.
                    "alert": FORCED_ALERT,
                    "expr": (
                        "sum without (kind, reason) (points_adjuster_outcomes_total"
                        f'{{job="{JOB}", kind="failed", reason="VALIDATION_FAILED"}}) > 0'
                    ),
                    "for": "0s",
                    "labels": {"severity": "info"},
                }
            ],
        }
    ]
}


@pytest.fixture
def prometheus_binary() -> str:
    """Debian's prometheus; missing, it fails under CI=true and skips elsewhere."""
    found = shutil.which("prometheus")
    if found is None:
        reason = "prometheus is not installed (make prometheus-tools installs Debian's package)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


@pytest.fixture
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


def write_config(folder: Path, metrics_port: int) -> Path:
    """A configuration scraping 127.0.0.1:``metrics_port`` every second, with the alert rules
    and the forced rule beside it; returns its path."""
    folder.mkdir()
    shutil.copyfile(ALERT_RULES, folder / "alerts.yml")
    (folder / "forced.yml").write_text(yaml.safe_dump(FORCED_RULES), encoding="utf-8")
    config = {
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": ["alerts.yml", "forced.yml"],
        "scrape_configs": [
            {
                "job_name": JOB,
                "metrics_path": "/metrics",
                "static_configs": [{"targets": [f"127.0.0.1:{metrics_port}"]}],
            }
        ],
    }
    path = folder / "prometheus.yml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def log_text(path: Path) -> str:
    return path.read_text(errors="replace") if path.exists() else "(no log)"


@contextlib.asynccontextmanager
async def running_prometheus(binary: str, config: Path) -> AsyncIterator[httpx.AsyncClient]:
    """Prometheus on ``config``, its data beside it, on a free loopback port; yields a
    client on its HTTP API, SIGTERMs it at the end."""
    port = free_port()
    log_path = config.parent / "prometheus.log"
    with log_path.open("ab") as log:
        process = await asyncio.create_subprocess_exec(
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={config.parent / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
            "--log.level=warn",
            stdout=log,
            stderr=log,
        )
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=5) as client:
            deadline = time.monotonic() + 30
            while True:
                if process.returncode is not None:
                    raise AssertionError(f"prometheus exited:\n{log_text(log_path)}")
                with contextlib.suppress(httpx.TransportError):
                    if (await client.get("/-/ready")).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise AssertionError(f"prometheus not ready:\n{log_text(log_path)}")
                await asyncio.sleep(0.2)
            yield client
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(process.wait(), 15)
            except TimeoutError:
                process.kill()
                await process.wait()


async def query(client: httpx.AsyncClient, promql: str) -> list[dict[str, Any]]:
    """The instant vector of ``promql`` now."""
    response = await client.get("/api/v1/query", params={"query": promql})
    response.raise_for_status()
    body = response.json()
    assert body["status"] == "success", body
    result = body["data"]["result"]
    assert isinstance(result, list)
    return result


async def scalar(client: httpx.AsyncClient, promql: str) -> float | None:
    """The single value of ``promql`` now, None while it has none."""
    result = await query(client, promql)
    return float(result[0]["value"][1]) if result else None


T = TypeVar("T")


async def eventually(check: Callable[[], Awaitable[T]], timeout_s: float, what: str) -> T:
    """Await ``check()`` until it returns something truthy, at most ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        found = await check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.5)


async def test_a_real_prometheus_counts_every_outcome_and_evaluates_the_alert_rules(
    kafka_bootstrap: str,
    tmp_path: Path,
    codec: AvroCodec,
    dev_keyset: DevKeySet,
    prometheus_binary: str,
) -> None:
    """Scraping the service, Prometheus counts as many completed and failed outcomes as were
    sent, evaluates every alert rule without error (none fires in a healthy run), and fires
    a `for: 0s` rule on the validation failures of the run."""
    topology = Topology(kafka_bootstrap)
    await create_topics(kafka_bootstrap, topology.topics(2))
    batch = generate_commands(40, invalid_share=0.1, accounts=12, seed=23)
    assert batch.invalid_keys
    assert batch.duplicates == 0
    valid = batch.distinct_keys - len(batch.invalid_keys)
    rule_names = {
        rule["alert"]
        for group in yaml.safe_load(ALERT_RULES.read_text("utf-8"))["groups"]
        for rule in group["rules"]
    }
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        service = ServiceProcess(topology, sandbox.base_url, tmp_path, dev_keyset)
        await service.start()
        try:
            config = write_config(tmp_path / "prometheus", service.metrics_port)
            async with running_prometheus(prometheus_binary, config) as prometheus:
                await eventually(
                    lambda: scalar(prometheus, f'points_adjuster_ready{{job="{JOB}"}}'),
                    20,
                    "the first scrape of a ready service",
                )
                await send_commands(topology.kafka, batch.commands, codec=codec)

                async def counted() -> bool:
                    completed = await scalar(
                        prometheus, 'sum(points_adjuster_outcomes_total{kind="completed"})'
                    )
                    failed = await scalar(
                        prometheus, 'sum(points_adjuster_outcomes_total{kind="failed"})'
                    )
                    return (completed, failed) == (valid, len(batch.invalid_keys))

                await eventually(counted, 40, f"{valid} completed and the failed outcomes")
                invalid = await scalar(
                    prometheus,
                    'sum(points_adjuster_outcomes_total{kind="failed",'
                    ' reason="VALIDATION_FAILED"})',
                )
                assert invalid == len(batch.invalid_keys)

                async def forced_alert_firing() -> list[dict[str, Any]]:
                    return await query(
                        prometheus, f'ALERTS{{alertname="{FORCED_ALERT}", alertstate="firing"}}'
                    )

                (firing,) = await eventually(forced_alert_firing, 10, "the forced alert")
                assert firing["metric"]["job"] == JOB

                async def evaluated() -> dict[str, dict[str, Any]]:
                    response = await prometheus.get("/api/v1/rules", params={"type": "alert"})
                    response.raise_for_status()
                    rules = {
                        rule["name"]: rule
                        for group in response.json()["data"]["groups"]
                        if group["file"].endswith("alerts.yml")
                        for rule in group["rules"]
                    }
                    # Before its first evaluation a rule's lastEvaluation is Go's zero time.
                    done = all(
                        not rule.get("lastEvaluation", "0001").startswith("0001")
                        for rule in rules.values()
                    )
                    return rules if done and len(rules) == len(rule_names) else {}

                rules = await eventually(evaluated, 10, "every alert rule evaluated")
                assert set(rules) == rule_names
                assert {name: rule["health"] for name, rule in rules.items()} == dict.fromkeys(
                    rule_names, "ok"
                )
                assert [name for name, rule in rules.items() if rule["state"] == "firing"] == []
        finally:
            exit_code = await service.terminate()
    assert exit_code == 0, service.log_tail()
