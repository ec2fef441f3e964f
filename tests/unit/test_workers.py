"""``run --workers N`` without a broker: each worker's identity, the restart rule, the merged
exposition and readiness, the SQLite owner's lock handed to workers, and the supervisor over
stand-in worker processes (its restarts, crash loop, start-up failure and drain)."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.cli import main
from service.errors import ConfigError, StartupError
from service.idempotency.sqlite import SqliteStore, check_inherited_lock, hold_owner_lock
from service.kafka.transactions import transactional_id
from service.metrics import Metrics
from service.settings import KafkaSettings, Settings, load_settings
from service.workers.child import watch_lifeline
from service.workers.endpoints import WorkerMetrics
from service.workers.identity import worker_settings
from service.workers.merge import WorkerAnswer, combine, exposition
from service.workers.restarts import RestartPolicy
from service.workers.supervisor import Supervisor

# -- identity ---------------------------------------------------------------------------------


def test_each_worker_has_its_own_client_and_instance_id_and_a_private_endpoint() -> None:
    """Worker 1 of a static member gets suffixed ids; its endpoint is loopback, any port."""
    settings = Settings(workers=3, kafka=KafkaSettings(client_id="pa", group_instance_id="pod-0"))
    one = worker_settings(settings, 1)
    assert one.kafka.client_id == "pa-w1"
    assert one.kafka.group_instance_id == "pod-0-w1"
    assert (one.metrics.host, one.metrics.port, one.workers) == ("127.0.0.1", 0, 1)
    assert one.kafka.group_id == settings.kafka.group_id  # one consumer group
    assert worker_settings(Settings(), 0).kafka.group_instance_id is None  # dynamic stays
    ids = {transactional_id(worker_settings(settings, n).kafka) for n in range(3)}
    assert len(ids) == 3  # under transactions, no worker fences another


def test_workers_with_the_memory_store_are_refused() -> None:
    """Each process would have a store of its own: the setting is refused, named."""
    with pytest.raises(ConfigError, match="PA_WORKERS"):
        load_settings(workers=2, idempotency={"backend": "memory"})


@pytest.mark.usefixtures("cli_environment")
def test_the_workers_flag_takes_a_whole_number_from_1_to_64(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``run --workers 0`` stops at the command line with a usage error."""
    with pytest.raises(SystemExit) as exited:
        main(["run", "--workers", "0"])
    assert exited.value.code == 2
    assert "--workers: must be a whole number from 1 to 64" in capsys.readouterr().err


# -- restarts ---------------------------------------------------------------------------------


def test_restarts_back_off_reset_after_a_stable_run_and_give_up_in_a_crash_loop() -> None:
    """1, 2, 4, 8 s, then None at the fifth death in a row; a long run starts the count over."""
    policy = RestartPolicy()
    assert [policy.died(0, up_s=1) for _ in range(4)] == [1.0, 2.0, 4.0, 8.0]
    assert policy.died(1, up_s=1) == 1.0  # counted per worker
    assert policy.died(0, up_s=120) == 1.0
    for _ in range(3):
        policy.died(0, up_s=1)
    assert policy.died(0, up_s=1) is None
    assert policy.deaths(0) == 5


# -- one exposition, one readiness ------------------------------------------------------------


def test_the_merged_exposition_has_each_family_once_and_every_sample_by_worker() -> None:
    """Two workers' counters under one family; the parent's own metrics after them."""
    texts = {}
    for worker, count in (("0", 3), ("1", 4)):
        metrics = Metrics()
        metrics.records_consumed.labels(topic="t").inc(count)
        texts[worker] = generate_latest(metrics.registry).decode()
    body = exposition(texts, CollectorRegistry()).decode()
    families = list(text_string_to_metric_families(body))
    names = [family.name for family in families]
    assert len(names) == len(set(names))
    consumed = next(f for f in families if f.name == "points_adjuster_records_consumed")
    values = {s.labels["worker"]: s.value for s in consumed.samples if s.name.endswith("_total")}
    assert values == {"0": 3.0, "1": 4.0}


def test_the_merged_exposition_passes_promtool() -> None:
    """``promtool check metrics`` finds nothing to say about the parent's /metrics body: two
    workers' whole expositions (every family of service/metrics.py) and the parent's own."""
    promtool = shutil.which("promtool")
    if promtool is None:
        reason = "promtool is not installed (make prometheus-tools installs Debian's prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    texts = {}
    for worker in ("0", "1"):
        metrics = Metrics()
        metrics.records_consumed.labels(topic="t").inc()
        metrics.outcomes.labels(kind="completed", reason="").inc()
        texts[worker] = generate_latest(metrics.registry).decode()
    parent = WorkerMetrics()
    parent.restarts.labels(worker="1").inc()
    parent.scrape_up.labels(worker="0").set(1)
    checked = subprocess.run(
        [promtool, "check", "metrics"],
        input=exposition(texts, parent.registry).decode(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (checked.returncode, checked.stdout + checked.stderr) == (0, "")


def test_ready_only_when_every_worker_is_and_the_reasons_name_the_worker() -> None:
    """One worker's store problem makes the whole not ready, under that worker's name."""
    assert combine([WorkerAnswer(0, True, {}), WorkerAnswer(1, True, {})]) == (True, {})
    ready, reasons = combine(
        [WorkerAnswer(1, False, {"store": "unavailable (for 3 s)"}), WorkerAnswer(0, True, {})]
    )
    assert not ready
    assert reasons == {"worker 1: store": "unavailable (for 3 s)"}


# -- the SQLite owner's lock ------------------------------------------------------------------


async def test_workers_open_the_store_under_the_owners_lock_and_others_are_refused(
    tmp_path: Path,
) -> None:
    """The descriptor holding the lock opens the store; a ``run`` of its own is refused, and
    a descriptor of the lock file that does not hold the lock is refused too."""
    path = tmp_path / "idempotency.sqlite3"
    lock = hold_owner_lock(path)
    try:
        store = await SqliteStore.open(path, inherited_lock=lock)
        await store.close()
        with pytest.raises(StartupError, match="already in use by another process"):
            await SqliteStore.open(path, exclusive=True)
        other = open(path.with_name(path.name + ".lock"), "rb")  # noqa: SIM115, ASYNC230
        with other, pytest.raises(StartupError, match="held by another process"):
            check_inherited_lock(path, other.fileno())
    finally:
        os.close(lock)
    store = await SqliteStore.open(path, exclusive=True)  # free again once the owner let go
    await store.close()


# -- the lifeline -----------------------------------------------------------------------------


async def test_a_worker_stops_when_its_parent_end_of_the_lifeline_closes() -> None:
    """EOF on the lifeline sets the worker's stop event."""
    parent, child = socket.socketpair()
    stop = asyncio.Event()
    watch_lifeline(child, stop)
    await asyncio.sleep(0.05)
    assert not stop.is_set()
    parent.close()
    await asyncio.wait_for(stop.wait(), 5)
    child.close()


# -- the supervisor over stand-in workers -----------------------------------------------------


def python(code: str) -> list[str]:
    return [sys.executable, "-c", code]


FAST = RestartPolicy(base_s=0.01, max_s=0.05, stable_s=60, give_up_after=3)


async def test_a_crash_loop_ends_the_run_non_zero(caplog: pytest.LogCaptureFixture) -> None:
    """A worker that keeps dying is started again until the third death in a row; then the
    supervisor stops and answers 1."""
    supervisor = Supervisor(
        1,
        lock=None,
        shutdown_timeout_s=1,
        policy=FAST,
        command=lambda index, lifeline, lock: python("import sys; sys.exit(3)"),
    )
    assert await asyncio.wait_for(supervisor.run(), 30) == 1
    assert supervisor.metrics.restarts.labels(worker="0")._value.get() == 2


async def test_a_worker_that_cannot_even_be_started_counts_as_a_death() -> None:
    """No such program: each failed start is a death; the crash loop ends the run with 1."""
    supervisor = Supervisor(
        1,
        lock=None,
        shutdown_timeout_s=1,
        policy=FAST,
        command=lambda index, lifeline, lock: ["/nonexistent/points-adjuster-worker"],
    )
    assert await asyncio.wait_for(supervisor.run(), 30) == 1


async def test_a_start_up_error_of_a_first_start_ends_the_run_with_2() -> None:
    """Exit 2 at a worker's first start is a start-up error, not a crash to retry."""
    supervisor = Supervisor(
        2,
        lock=None,
        shutdown_timeout_s=1,
        policy=FAST,
        command=lambda index, lifeline, lock: python(
            f"import sys, time; time.sleep(30) if {index} else sys.exit(2)"
        ),
    )
    assert await asyncio.wait_for(supervisor.run(), 30) == 2


DRAINS = (
    "import signal, sys, time\n"
    "signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))\n"
    "time.sleep(60)\n"
)


async def test_stop_drains_every_worker_and_answers_0() -> None:
    """stop() sends SIGTERM to each worker; all exit 0 within the budget: 0."""
    supervisor = Supervisor(
        2,
        lock=None,
        shutdown_timeout_s=5,
        command=lambda index, lifeline, lock: python(DRAINS),
    )
    running = asyncio.create_task(supervisor.run())
    for _ in range(100):
        await asyncio.sleep(0.05)
        if supervisor.metrics.running._value.get() == 2:
            break
    await asyncio.sleep(0.3)  # the stand-ins install their handler
    supervisor.stop()
    assert await asyncio.wait_for(running, 30) == 0
    assert supervisor.metrics.running._value.get() == 0
