"""End to end: the PostgreSQL or Redis idempotency store goes away mid-stream and comes back.

The service runs as a child process against a real broker, the sandbox over a socket and a
store server of the test's own, which the test kills (a crash: connections refused) or
freezes with SIGSTOP (connections open, every request hanging: the harder case) for several
times ``PA_IDEMPOTENCY__TIMEOUT_S`` while more commands arrive. One outage per kind of store
and way of taking it away (``run``, module scope) serves every test of the module; each test
checks one promise about it.

What may legitimately reach PAS once the store is gone: only calls whose claim was durable
before it went. The runner holds at most ``PA_PROCESSING__MAX_IN_FLIGHT`` records at once,
each with at most one PAS call, and every call is over within ``PA_PAS__CALL_TIMEOUT_S`` of
its start (plus the sandbox's latency before it applies); so the ledger may grow by at most
``MAX_IN_FLIGHT`` entries, all within that grace, each for a key claimed before the store
was gone.

Timings are short on purpose so that one outage stays under a minute: a store call times out
after 1 s; a claim may be left behind by the outage (written by a frozen server after the
service gave up on it, or one whose PAS call went through but whose ``finish`` failed), and
such a key is only taken over once its lease ends, so the lease is the shortest the settings
allow (the PAS call timeout plus the 5 s margin), the settle time before a history lookup
1 s, and the longest pause between two tries of a faulted record 4 s.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

import httpx
import pytest
from aiokafka import AIOKafkaConsumer, TopicPartition

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.server_process import LocalServer
from pa_devkit.sandbox.app import run_sandbox
from pa_devkit.sandbox.ledger import Ledger, LedgerEntry
from service.codec.avro import AvroCodec
from service.domain.store import IdempotencyRecord, State
from service.idempotency.factory import open_store
from service.kafka.groups import committed_offsets
from service.settings import IdempotencySettings, KafkaSettings
from service.tools.generate import GeneratedBatch, generate_commands
from service.tools.outcomes import OutcomeLog
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
from tests.store_support import own_postgres, own_redis

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(180)]

Kind = Literal["postgresql", "redis"]
How = Literal["kill", "pause"]

PARTITIONS = 2
BATCH = 100
"""Commands sent before the outage, and again as many while the store is away."""
LATE = 10
"""Of those sent while it is away, how many only once the service has noticed."""
ACCOUNTS = 10
"""Few accounts, so few keys: a hung store call holds one of MAX_IN_FLIGHT slots for the
whole timeout, and each key must come round more than once during the outage."""
APPLIED_BEFORE_OUTAGE = 20
"""The store is taken away once PAS applied this many of the first batch."""
LATENCY_MS = 100
MAX_IN_FLIGHT = 4
STORE_TIMEOUT_S = 1.0
PAS_CALL_TIMEOUT_S = 2.0
LEASE_S = PAS_CALL_TIMEOUT_S + 5.0  # the least the settings accept
FAULT_BACKOFF_MAX_S = 4.0
OUTAGE_S = 6.0
"""The shortest outage: six store timeouts, three PAS call timeouts."""
NOTICE_LIMIT_S = 15.0
"""How long the outage lasts at most while waiting for the watchdog (a probe every 5 s)."""
AFTER_NOTICE_S = 2.0
"""How long the outage goes on after the last commands were sent."""
GRACE_S = PAS_CALL_TIMEOUT_S + LATENCY_MS / 1000 + 0.5
"""From the outage's start, how long a call already in flight may still reach the ledger."""
RECOVERY_S = 40.0
"""From the store's return, how long the service has to be ready, done and committed."""
PASSWORD = "Outage-pw-7c41e9"
"""The store's password, given in a file; it must never be printed."""
OUTAGE_METRICS = (
    "points_adjuster_partitions_paused",
    "points_adjuster_ready",
    "points_adjuster_records_consumed_total",
    "points_adjuster_records_buffered ",
    "points_adjuster_faults_total",
    "points_adjuster_store_errors_total",
)
STORE_PARTS = ("store", "records.store")
"""The /readyz reasons that speak for the store: the watchdog's probe, the held-up records."""


# --- the store and how it goes away --------------------------------------------------------


@dataclass
class OutageStore:
    """A store server of this module's own, with how the test takes it away."""

    kind: Kind
    how: How
    server: LocalServer
    dsn: str
    password_file: Path

    @property
    def names(self) -> tuple[str, ...]:
        """Ways a message may name this store: its kind, its address."""
        return (self.kind, "postgres" if self.kind == "postgresql" else "redis", self.address)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def take_away(self) -> None:
        if self.how == "kill":
            self.server.kill()
        else:
            self.server.pause()

    def bring_back(self) -> None:
        if self.how == "kill":
            self.server.start()  # same port, same data
        else:
            self.server.resume()


CASES = [
    pytest.param(("postgresql", "kill"), marks=pytest.mark.postgres, id="postgres-killed"),
    pytest.param(("postgresql", "pause"), marks=pytest.mark.postgres, id="postgres-frozen"),
    pytest.param(("redis", "kill"), marks=pytest.mark.redis, id="redis-killed"),
    pytest.param(("redis", "pause"), marks=pytest.mark.redis, id="redis-frozen"),
]


@pytest.fixture(scope="module", params=CASES)
def outage_store(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[OutageStore]:
    """A private PostgreSQL or Redis (the test takes it away: never the session's server)."""
    kind, how = request.param
    password_file = tmp_path_factory.mktemp("store") / "password"
    password_file.write_text(PASSWORD + "\n", encoding="utf-8")
    if kind == "postgresql":
        # Trust authentication: the password is read and offered, never asked for.
        with own_postgres() as postgres:
            yield OutageStore(kind, how, postgres, postgres.dsn, password_file)
    else:
        with own_redis(password=PASSWORD) as redis:
            dsn = f"redis://127.0.0.1:{redis.port}/0"  # the password comes from the file
            yield OutageStore(kind, how, redis, dsn, password_file)


# --- looking at the service from outside ---------------------------------------------------


@dataclass
class CheckRun:
    """One ``python -m service check`` as a child process."""

    code: int
    out: str
    err: str
    seconds: float

    def store_lines(self) -> list[str]:
        return [line for line in self.out.splitlines() if "idempotency store" in line]

    def failing(self) -> list[str]:
        return [line for line in self.out.splitlines() if line.startswith("FAIL")]


async def run_check(env: dict[str, str]) -> CheckRun:
    started = time.monotonic()
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        "check",
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(process.communicate(), 60)
    except TimeoutError:
        process.kill()
        await process.wait()
        return CheckRun(-1, "", "(killed: no exit within 60 s)", 60.0)
    assert process.returncode is not None
    return CheckRun(
        process.returncode, out.decode(), err.decode(), round(time.monotonic() - started, 2)
    )


@dataclass
class Readiness:
    status: int
    body: dict[str, Any]

    @property
    def reasons(self) -> dict[str, str]:
        reasons: dict[str, str] = self.body.get("reasons", {})
        return reasons

    def store_reasons(self) -> dict[str, str]:
        return {part: text for part, text in self.reasons.items() if part in STORE_PARTS}


async def readiness(client: httpx.AsyncClient, service: ServiceProcess) -> Readiness:
    """/readyz's answer; status 0 when there is none (the body then says why)."""
    try:
        response = await client.get(f"http://127.0.0.1:{service.metrics_port}/readyz", timeout=3)
    except httpx.TransportError as exc:
        return Readiness(0, {"no answer": repr(exc)})
    return Readiness(response.status_code, response.json())


async def wait_ready(service: ServiceProcess, timeout_s: float) -> Readiness:
    deadline = time.monotonic() + timeout_s
    async with httpx.AsyncClient() as client:
        while True:
            state = await readiness(client, service)
            if state.status == 200 or time.monotonic() > deadline:
                return state
            await asyncio.sleep(0.2)


@dataclass
class OutageWatch:
    """What the test saw while the store was away."""

    readiness: list[Readiness] = field(default_factory=list)
    exited: int | None = None
    metrics_early: str = ""
    """Scraped once the calls in flight at the start are over (``GRACE_S``)."""
    noticed_after_s: float | None = None
    """When /readyz first showed the watchdog's ``store`` reason, from the outage's start."""
    metrics_noticed: str = ""
    """Scraped then, before the last commands were sent."""
    metrics_late: str = ""
    """Scraped at the end of the outage."""


async def watch_outage(
    service: ServiceProcess, began: float, send_late: Callable[[], Awaitable[object]]
) -> OutageWatch:
    """Poll /readyz through the outage, which lasts ``OUTAGE_S``, and ``AFTER_NOTICE_S``
    more once the watchdog noticed the store gone (waiting ``NOTICE_LIMIT_S`` at most); then
    ``send_late`` sends the last commands. /metrics is scraped after the grace, when the
    watchdog noticed, and at the end."""
    watch = OutageWatch()
    async with httpx.AsyncClient() as client:
        while True:
            now = time.monotonic()
            if watch.noticed_after_s is None:
                end = began + NOTICE_LIMIT_S
            else:
                end = max(began + OUTAGE_S, began + watch.noticed_after_s + AFTER_NOTICE_S)
            if now >= end:
                break
            assert service.process is not None
            if service.process.returncode is not None:
                watch.exited = service.process.returncode
                return watch
            state = await readiness(client, service)
            watch.readiness.append(state)
            if not watch.metrics_early and now >= began + GRACE_S:
                watch.metrics_early = await service.metrics()
            if watch.noticed_after_s is None and "store" in state.reasons:
                watch.noticed_after_s = now - began
                await asyncio.sleep(0.5)  # the command loop's next round pauses everything
                watch.metrics_noticed = await service.metrics()
                await send_late()
            await asyncio.sleep(0.2)
    watch.metrics_late = await service.metrics()
    return watch


async def group_lag(kafka: KafkaSettings) -> int:
    """Records of the command topic past the group's committed offsets."""
    committed = await committed_offsets(kafka)
    consumer = AIOKafkaConsumer(bootstrap_servers=kafka.bootstrap_servers, group_id=None)
    await consumer.start()
    try:
        partitions = [TopicPartition(kafka.command_topic, number) for number in range(PARTITIONS)]
        ends = await consumer.end_offsets(partitions)
    finally:
        await consumer.stop()
    return sum(end - committed.get(tp.partition, 0) for tp, end in ends.items())


async def wait_no_lag(kafka: KafkaSettings, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while True:
        lag = await group_lag(kafka)
        if lag == 0 or time.monotonic() > deadline:
            return lag
        await asyncio.sleep(0.5)


async def applied_at_least(ledger: Ledger, count: int, timeout_s: float) -> bool:
    """Whether the sandbox applied ``count`` adjustments within ``timeout_s`` (it runs on
    this event loop: a short poll costs nothing)."""
    deadline = time.monotonic() + timeout_s
    while len(ledger) < count:
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.02)
    return True


async def stored_records(store: OutageStore, keys: list[str]) -> dict[str, IdempotencyRecord]:
    """The store's record of each key (read with the service's own store class)."""
    settings = IdempotencySettings(dsn=store.dsn, password_file=store.password_file, timeout_s=10)
    opened = await open_store(settings, exclusive=False)
    try:
        found: dict[str, IdempotencyRecord] = {}
        for key in keys:
            record = await opened.get(key)
            if record is not None:
                found[key] = record
        return found
    finally:
        await opened.close()


# --- one outage ----------------------------------------------------------------------------


@dataclass
class Run:
    """What one outage left to check."""

    store: OutageStore
    before: GeneratedBatch
    during: GeneratedBatch
    log_path: Path
    outage_start: datetime
    """Just before the store was taken away."""
    gone_at: datetime
    """Once it was: no claim can have become durable after this."""
    outage_end: datetime
    store_away_s: float
    applied_at_start: int
    applied_at_end: int
    watch: OutageWatch
    check_down: CheckRun
    ready: Readiness
    ready_after_s: float
    outcomes: OutcomeLog
    lag: int
    all_done_after_s: float
    check_up: CheckRun
    metrics_after: str
    running_after: bool
    exit_code: int
    ledger: list[LedgerEntry]
    records: dict[str, IdempotencyRecord]
    took_s: float

    @property
    def keys(self) -> list[str]:
        return [c["idempotency_key"] for c in self.before.commands + self.during.commands]

    @property
    def key_of(self) -> dict[str, str]:
        """The idempotency key of each correlation id."""
        commands = self.before.commands + self.during.commands
        return {c["correlation_id"]: c["idempotency_key"] for c in commands}

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def log_tail(self, lines: int = 60) -> str:
        return "\n".join(self.log().splitlines()[-lines:])

    def applied_during_outage(self) -> list[LedgerEntry]:
        start, end = self.outage_start, self.outage_end
        return [entry for entry in self.ledger if start <= utc(entry.adjusted_at) < end]

    def store_faults(self) -> list[dict[str, Any]]:
        """The log's ``record.fault`` events of the store (a record's 1st, 2nd, 4th...)."""
        events = []
        for line in self.log().splitlines():
            try:
                event = json.loads(line)
            except ValueError:
                continue
            if isinstance(event, dict) and (event.get("event"), event.get("part")) == (
                "record.fault",
                "store",
            ):
                events.append(event)
        return events

    def summary(self) -> str:
        noticed = self.watch.noticed_after_s
        noticed_text = "never" if noticed is None else f"after {noticed:.1f} s"
        return (
            f"{self.store.kind}/{self.store.how}: PAS applied {self.applied_at_start} before "
            f"the outage and {self.applied_at_end - self.applied_at_start} during it; the "
            f"store was away {self.store_away_s:.1f} s (the watchdog noticed {noticed_text}); "
            f"ready {self.ready_after_s:.1f} s and all done "
            f"{self.all_done_after_s:.1f} s after it was back; check took "
            f"{self.check_down.seconds} s (store down), {self.check_up.seconds} s (up); "
            f"the whole outage case {self.took_s:.1f} s\n"
            + "\n".join(self.check_down.store_lines())
        )


def utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


async def _outage(store: OutageStore, bootstrap: str, workdir: Path, keyset: DevKeySet) -> Run:
    started = time.monotonic()
    codec = AvroCodec.from_directory()
    topology = Topology(bootstrap)
    await create_topics(bootstrap, topology.topics(PARTITIONS))
    before = generate_commands(BATCH, accounts=ACCOUNTS, seed=41)
    during = generate_commands(BATCH, accounts=ACCOUNTS, seed=42)

    async def send_late() -> None:
        await send_commands(topology.kafka, during.commands[-LATE:], codec=codec)

    async with run_sandbox(secure_sandbox(keyset, latency_ms=LATENCY_MS)) as sandbox:
        service = ServiceProcess(
            topology,
            sandbox.base_url,
            workdir,
            keyset,
            PA_IDEMPOTENCY__DSN=store.dsn,
            PA_IDEMPOTENCY__PASSWORD_FILE=str(store.password_file),
            PA_IDEMPOTENCY__TIMEOUT_S=str(STORE_TIMEOUT_S),
            PA_IDEMPOTENCY__LEASE_S=str(LEASE_S),
            PA_PAS__CALL_TIMEOUT_S=str(PAS_CALL_TIMEOUT_S),
            PA_RECONCILIATION__SETTLE_S="1",
            PA_PROCESSING__MAX_IN_FLIGHT=str(MAX_IN_FLIGHT),
            PA_PROCESSING__FAULT_BACKOFF_MAX_S=str(FAULT_BACKOFF_MAX_S),
        )
        await service.start()
        assert service.process is not None
        try:
            # Mid-stream: some of the first batch applied, the rest still to do.
            await send_commands(topology.kafka, before.commands, codec=codec)
            applied = await applied_at_least(sandbox.ledger, APPLIED_BEFORE_OUTAGE, 60)
            assert applied, f"PAS applied too little before the outage\n{service.log_tail()}"

            # The store goes away; the second batch arrives meanwhile, its last commands
            # only once the watchdog has noticed.
            outage_start = datetime.now(UTC)
            applied_at_start = len(sandbox.ledger)
            await asyncio.to_thread(store.take_away)
            gone_at = datetime.now(UTC)
            began = time.monotonic()
            assert applied_at_start < BATCH, "the store went away too late to prove much"
            await send_commands(topology.kafka, during.commands[:-LATE], codec=codec)
            check_down = asyncio.create_task(run_check(service.env))
            watch = await watch_outage(service, began, send_late)
            check_down_run = await check_down
            if watch.exited is not None:  # nothing left to wait for
                raise AssertionError(
                    f"the service exited ({watch.exited}) while the store was away:\n"
                    f"{service.log_tail(60)}"
                )
            outage_end = datetime.now(UTC)
            applied_at_end = len(sandbox.ledger)

            # The store comes back.
            await asyncio.to_thread(store.bring_back)
            back_at = time.monotonic()
            deadline = back_at + RECOVERY_S
            ready = await wait_ready(service, deadline - time.monotonic())
            ready_after_s = time.monotonic() - back_at
            outcomes = await wait_for_originals(
                topology.kafka, codec, 2 * BATCH, max(0.0, deadline - time.monotonic())
            )
            lag = await wait_no_lag(topology.kafka, max(0.0, deadline - time.monotonic()))
            all_done_after_s = time.monotonic() - back_at
            await asyncio.sleep(1)  # a straggling extra outcome (there must be none)
            outcomes = await wait_for_originals(topology.kafka, codec, 2 * BATCH, 0)
            check_up = await run_check(service.env)
            metrics_after = await service.metrics()
            running_after = service.process.returncode is None
        finally:
            exit_code = await service.terminate()
        ledger = sandbox.ledger.entries()
    keys = [c["idempotency_key"] for c in before.commands + during.commands]
    run = Run(
        store=store,
        before=before,
        during=during,
        log_path=service.log_path,
        outage_start=outage_start,
        gone_at=gone_at,
        outage_end=outage_end,
        store_away_s=back_at - began,
        applied_at_start=applied_at_start,
        applied_at_end=applied_at_end,
        watch=watch,
        check_down=check_down_run,
        ready=ready,
        ready_after_s=ready_after_s,
        outcomes=outcomes,
        lag=lag,
        all_done_after_s=all_done_after_s,
        check_up=check_up,
        metrics_after=metrics_after,
        running_after=running_after,
        exit_code=exit_code,
        ledger=ledger,
        records=await stored_records(store, keys),
        took_s=time.monotonic() - started,
    )
    print(run.summary())
    return run


@pytest.fixture(scope="module")
def run(
    outage_store: OutageStore,
    kafka_bootstrap: str,
    tmp_path_factory: pytest.TempPathFactory,
    dev_keyset: DevKeySet,
) -> Run:
    """One outage of the store, for the module's tests."""
    workdir = tmp_path_factory.mktemp("store-outage")
    return asyncio.run(_outage(outage_store, kafka_bootstrap, workdir, dev_keyset))


def samples(text: str, *names: str) -> list[str]:
    """The samples of ``names`` in a scrape, for a failure message."""
    return [line for line in text.splitlines() if line.startswith(names)]


def consumed(scrape: str) -> float:
    """Records taken from the command topic (the one topic the service consumes)."""
    lines = samples(scrape, "points_adjuster_records_consumed_total{")
    return sum(float(line.rpartition(" ")[2]) for line in lines)


def least_time_to(faults: int) -> float:
    """The shortest time from a record's first store fault to its ``faults``-th: the sum of
    the pauses between, each at least half its ceiling (0.5 s doubling, capped)."""
    pauses = [min(0.5 * 2.0 ** (n - 1), FAULT_BACKOFF_MAX_S) / 2 for n in range(1, faults)]
    return float(sum(pauses))


# --- the promises --------------------------------------------------------------------------


def test_while_the_store_is_away_the_service_stays_up_and_is_not_ready_because_of_it(
    run: Run,
) -> None:
    """The process does not exit; /readyz answers 503 throughout the outage once the first
    store call failed, with a reason under the store's part that names the store."""
    watch = run.watch
    assert watch.exited is None, f"the service exited ({watch.exited}):\n{run.log_tail()}"
    assert run.running_after, run.log_tail()
    statuses = [state.status for state in watch.readiness]
    assert 503 in statuses, f"/readyz never answered 503: {watch.readiness[-3:]}"
    first = statuses.index(503)
    assert set(statuses[first:]) == {503}, f"ready again while the store was away: {statuses}"
    texts = [text for state in watch.readiness for text in state.store_reasons().values()]
    assert texts, f"no /readyz reason speaks for the store: {watch.readiness[-1].body}"
    assert any(name.lower() in text.lower() for text in texts for name in run.store.names), (
        f"the store's reasons do not say which store: {sorted(set(texts))}"
    )
    assert watch.noticed_after_s is not None, (
        f"the watchdog did not report the store within {NOTICE_LIMIT_S} s: "
        f"{watch.readiness[-1].body}"
    )


def test_while_the_store_is_away_no_record_is_taken_and_the_metrics_say_why(run: Run) -> None:
    """Partitions are paused (every one once the watchdog noticed), the commands sent after
    that are not taken, and the metrics count the store's errors and the faults."""
    watch = run.watch
    early = f"early in the outage: {samples(watch.metrics_early, *OUTAGE_METRICS)}"
    assert metric_value(watch.metrics_early, "points_adjuster_partitions_paused") >= 1, early
    assert metric_value(watch.metrics_early, "points_adjuster_ready") == 0, early
    for when, scrape in (("noticed", watch.metrics_noticed), ("late", watch.metrics_late)):
        shown = f"{when} in the outage: {samples(scrape, *OUTAGE_METRICS)}"
        assert metric_value(scrape, "points_adjuster_partitions_paused") == PARTITIONS, shown
        assert metric_value(scrape, "points_adjuster_ready") == 0, shown
    assert consumed(watch.metrics_late) == consumed(watch.metrics_noticed), (
        "records were taken while every partition was paused"
    )
    late = watch.metrics_late
    assert metric_value(late, "points_adjuster_faults_total", part="store") > 0
    assert metric_value(late, "points_adjuster_store_errors_total", operation="claim") > 0


def test_no_pas_call_without_a_durable_claim(run: Run) -> None:
    """During the outage PAS applied only calls already in flight at its start: at most
    MAX_IN_FLIGHT, within the grace, none of a command sent during it, each for a key whose
    claim the store holds from before it was gone."""
    during_outage = run.applied_during_outage()
    assert len(during_outage) == run.applied_at_end - run.applied_at_start
    assert len(during_outage) <= MAX_IN_FLIGHT, [e.correlation_id for e in during_outage]
    cutoff = run.outage_start + timedelta(seconds=GRACE_S)
    late = [e for e in during_outage if utc(e.adjusted_at) >= cutoff]
    assert not late, f"PAS applied commands {GRACE_S} s into the outage: {late}"
    sent_during = {c["correlation_id"] for c in run.during.commands}
    assert not [e for e in during_outage if e.correlation_id in sent_during]
    for entry in during_outage:
        assert entry.correlation_id is not None
        record = run.records[run.key_of[entry.correlation_id]]
        assert utc(record.created_at) < run.gone_at, (
            f"applied during the outage, claimed at {record.created_at} (store gone at "
            f"{run.gone_at}): a PAS call without a durable claim"
        )


def test_records_held_up_by_the_store_are_retried_with_backoff(run: Run) -> None:
    """Each faulted record's pause doubles from 0.5 s (drawn in its upper half), so no record
    faulted more often than the outage allows, and some were tried more than once."""
    faults = run.store_faults()
    assert faults, "no record.fault of the store in the log"
    for event in faults:
        ceiling = min(0.5 * 2 ** (event["faults"] - 1), FAULT_BACKOFF_MAX_S)
        assert ceiling / 2 - 0.01 <= event["retry_in_s"] <= ceiling + 0.01, event
        assert least_time_to(event["faults"]) <= run.store_away_s, f"too often: {event}"
    tries = Counter(event["faults"] for event in faults)
    assert max(tries) >= 2, f"no record was tried again: {tries}"


def test_check_fails_on_the_store_while_it_is_away_and_passes_once_back(run: Run) -> None:
    """``points-adjuster check`` prints one FAIL line for the store, naming it, and nothing
    else failing; once the store is back, every line is ok."""
    down = run.check_down
    assert down.code == 1, down
    assert down.failing() == down.store_lines(), down
    (line,) = down.store_lines()
    assert any(name.lower() in line.lower() for name in run.store.names), line
    assert "Traceback" not in down.err, down.err
    up = run.check_up
    assert up.code == 0, up
    (line,) = up.store_lines()
    assert line.startswith("ok"), line


def test_once_the_store_is_back_every_command_is_applied_exactly_once(run: Run) -> None:
    """Ready again; each of the commands has one outcome, completed, none repeated; the
    ledger applied each once; the store holds each as COMPLETED; the group has no lag."""
    assert run.ready.status == 200, f"not ready {RECOVERY_S} s after it was back: {run.ready.body}"
    per_key = originals_per_key(run.outcomes)
    missing = set(run.keys) - set(per_key)
    assert not missing, f"{len(missing)} commands have no outcome\n{run.log_tail()}"
    assert max(per_key.values()) == 1, per_key.most_common(3)
    assert run.outcomes.duplicates() == []
    failed = [(e["idempotency_key"], e["reason_code"]) for e in run.outcomes.failed]
    assert failed == [], failed
    applied = ledger_per_correlation(run.ledger)
    never = set(run.key_of) - set(applied)
    assert not never, f"{len(never)} commands never applied"
    twice = [correlation for correlation, count in applied.items() if count > 1]
    assert not twice, f"applied twice: {twice}"
    states = Counter(record.state for record in run.records.values())
    assert states == Counter({State.COMPLETED: 2 * BATCH}), states
    assert run.lag == 0, f"the consumer group is {run.lag} records behind"
    assert metric_value(run.metrics_after, "points_adjuster_partitions_paused") == 0
    assert metric_value(run.metrics_after, "points_adjuster_ready") == 1
    assert run.exit_code == 0, run.log_tail()


def test_the_store_password_is_never_shown(run: Run) -> None:
    """Not by check, not on /readyz, not in the service's log."""
    shown = [run.check_down.out, run.check_down.err, run.check_up.out, run.check_up.err]
    shown.append(run.log())
    shown.extend(json.dumps(state.body) for state in run.watch.readiness)
    assert not [text for text in shown if PASSWORD in text]
