"""The idempotency store's cost per adjustment, by kind, and 1 vs 2 replicas on one store.

Two parts in one invocation, each measured against a baseline run in the same invocation:

* **stores**: the store calls of one adjustment, exactly as the service makes them
  (``Claims`` over ``MeteredStore`` over the store ``open_store`` gives for a
  ``PA_IDEMPOTENCY__DSN``: claim, finish, mark_published), for ``--keys`` fresh keys, at
  concurrency 1 and 32 (asyncio tasks, as the service's commands in flight are), for each
  kind: memory (the baseline: no I/O at all), SQLite (a file in the run's temporary folder),
  PostgreSQL and Redis (servers this run starts on free loopback ports in temporary folders
  and stops at the end; ``pa_devkit.localinfra``, durable as in production: fsync on every
  commit, ``appendfsync always``). Per adjustment: this process's CPU (``process_time``: every
  thread, so SQLite's writer thread is in it) and its event-loop thread's CPU
  (``thread_time``: the thread that bounds one replica), in µs; the wall round trip of the
  three calls (p50/p99/max) and the rate; calls that failed (``StoreError``, counted); and
  the server's CPU (the server process, its children
  such as PostgreSQL's backends, and the children it reaped: ``/proc/<pid>/stat``).
* **replicas**: ``points-adjuster run`` as separate processes, with a local Kafka broker and
  the PAS sandbox (50 ms, signing and encryption on) as ``bench_throughput.py`` runs them
  (the rig of ``e2ekit.py``; the steady-window rows of ``steady.py``, which
  ``bench_workers.py`` shares): a pre-produced backlog of ``--backlog`` commands over
  10,000 accounts on 12 partitions, run by 1 replica and by 2 replicas in one consumer group
  sharing one PostgreSQL store (a fresh database each), and by 1 replica on SQLite as the
  reference (a SQLite file refuses a second ``run``: its lock). The rate is taken over the
  steady window: from the moment every replica holds its partitions (the
  ``points_adjuster_assigned_partitions`` gauges add up to 12, each above 0: after the
  start-up rebalance), and no sooner than 3 s after the first /readyz, to the last original
  outcome's record timestamp. Over the same window: each replica's CPU per adjustment (its
  utime+stime over the original outcomes its /metrics counted), the store server's, the
  sandbox's, the broker's and this process's, and how busy the machine was, and how much of
  it went to processes this run did not start. Exactly one original, completed outcome per
  command is checked as ``bench_throughput.py`` checks it.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_stores.py [--keys 5000] [--backlog 12000]
        [--only stores|replicas] [--rows sqlite-1,postgresql-1,postgresql-2] [--json out.json]

``--rows`` names other replicas rows, ``<store>-<replicas>``: ``redis-1,redis-2`` say.

Exit code 0 when every row ran and its outcomes checked out, 1 otherwise, 130 when
interrupted. Linux only; needs the servers of ``make store-tools`` and the jars of ``make
kafka-jars``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import shutil
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import AsyncExitStack
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from hashlib import sha256
from pathlib import Path
from typing import Any

import httpx
from benchkit import (
    BenchError,
    Child,
    Children,
    cpu_seconds,
    metric_sum,
    percentile,
    tree_cpu_seconds,
)
from e2ekit import (
    STOP_WAIT_S,
    OutcomeRecord,
    Rig,
    Topology,
    describe_machine,
    finish,
    fmt,
    guarded,
    machine_facts,
    make_workdir,
    print_problems,
    quiet_logging,
    start_service,
    started_rig,
    wait_ready,
    warn_if_busy,
    write_figures,
)
from steady import (
    ACCOUNTS,
    ASSIGNED_METRIC,
    DUPLICATES_METRIC,
    OUTCOMES_METRIC,
    PARTITIONS,
    RATE_HEADER,
    SETTLE_S,
    Machine,
    add_backlog_arguments,
    add_output_arguments,
    attribute_rest,
    failed_line,
    from_ready,
    open_window,
    print_table,
    rate_cells,
    run_backlog_row,
    run_rows,
    service_run_env,
    wait_done,
    wait_stable,
)

from pa_devkit.localinfra.postgres import LocalPostgres
from pa_devkit.localinfra.redis import LocalRedis
from service import __version__
from service.domain.claims import Claims
from service.domain.outcome import CommandInfo, Completed, SourceRef
from service.domain.store import ClaimStatus, State, StoreError
from service.idempotency.factory import open_store
from service.idempotency.metered import MeteredStore
from service.metrics import Metrics
from service.settings import IdempotencySettings

STORE_KINDS = ("memory", "sqlite", "postgresql", "redis")
BASELINE_KIND = "memory"
CONCURRENCIES = (1, 32)
WARM_UP_KEYS = 200
LEASE_S = 60.0
DEFAULT_ROWS = ("sqlite-1", "postgresql-1", "postgresql-2")


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    keys: int
    backlog: int
    cap_s: float
    latency_ms: float
    parts: tuple[str, ...]
    rows: tuple[str, ...]
    json_path: Path | None
    seed: int
    workdir: Path | None
    keep_workdir: bool


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="The idempotency store's cost per adjustment by kind, and 1 vs 2 replicas"
        " on one PostgreSQL store."
    )
    parser.add_argument(
        "--keys", type=int, default=5000, help="adjustments per store and concurrency (5000)"
    )
    add_backlog_arguments(parser, "replicas row", "replicas")
    parser.add_argument(
        "--only", choices=("stores", "replicas"), help="run one part (default: both)"
    )
    parser.add_argument(
        "--rows",
        default=",".join(DEFAULT_ROWS),
        help="replicas rows, <store>-<replicas> comma-separated, store one of sqlite,"
        f" postgresql, redis ({','.join(DEFAULT_ROWS)})",
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.keys < 100 or args.backlog < 1000:
        parser.error("--keys takes at least 100 and --backlog at least 1000")
    rows = tuple(part.strip() for part in args.rows.split(",") if part.strip())
    for row in rows:
        store, _, count = row.rpartition("-")
        if store not in ("sqlite", "postgresql", "redis") or not count.isdigit():
            parser.error(f"--rows: {row!r} is not <sqlite|postgresql|redis>-<replicas>")
        if store == "sqlite" and count != "1":
            parser.error("--rows: a SQLite file takes one replica (its lock refuses a second)")
    return Config(
        keys=args.keys,
        backlog=args.backlog,
        cap_s=args.max_seconds,
        latency_ms=args.latency_ms,
        parts=(args.only,) if args.only else ("stores", "replicas"),
        rows=rows,
        json_path=args.json_path,
        seed=args.seed,
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
    )


# --- part 1: the store calls of one adjustment ---------------------------------------------


@dataclass
class StoreRun:
    """One store kind at one concurrency."""

    kind: str
    concurrency: int
    adjustments: int
    seconds: float = 0.0
    per_s: float = 0.0
    p50_us: float = float("nan")
    p99_us: float = float("nan")
    max_us: float = float("nan")
    errors: int = 0
    """Adjustments whose store call failed (a ``StoreError``: a timeout, say)."""
    error_sample: str = ""
    process_cpu_us: float = float("nan")
    """This process's CPU (every thread) per adjustment."""
    loop_cpu_us: float = float("nan")
    """The event-loop thread's CPU per adjustment."""
    server_cpu_us: float = float("nan")
    """The store server's CPU per adjustment (NaN: the store runs in this process)."""

    @property
    def total_cpu_us(self) -> float:
        server = 0.0 if math.isnan(self.server_cpu_us) else self.server_cpu_us
        return self.process_cpu_us + server


@dataclass(frozen=True)
class Work:
    """What the adjustments write: prepared before the clock starts."""

    keys: list[str]
    fingerprints: list[str]
    outcomes: list[Completed]


def prepare_work(label: str, count: int) -> Work:
    now = datetime.now(UTC)
    keys = [f"bench-{label}-{uuid.uuid4().hex}" for _ in range(count)]
    fingerprints = [sha256(key.encode()).hexdigest() for key in keys]
    outcomes = [
        Completed(
            info=CommandInfo(
                idempotency_key=key,
                correlation_id=str(uuid.uuid4()),
                requested_by="points-adjuster-bench",
                account_ref="ref-0123456789ab",
                account_masked="************2222",
                command_occurred_at=now,
                received_at=now,
                source=SourceRef("bench-commands", index % PARTITIONS, index),
                metadata={"channel": "bench"},
            ),
            adjustment_type_code="GOODWILL",
            points_requested=250,
            points_adjusted=250,
            attempts=1,
            completed_at=now,
            pas_duration_ms=50,
            pas_correlation_id=str(uuid.uuid4()),
            service_version=__version__,
        )
        for index, key in enumerate(keys)
    ]
    return Work(keys, fingerprints, outcomes)


async def one_adjustment(claims: Claims, key: str, fingerprint: str, outcome: Completed) -> float:
    """The store calls of one adjustment that PAS applied; its wall time in seconds."""
    started = time.perf_counter()
    claim = await claims.claim(key, fingerprint)
    if claim.status is not ClaimStatus.CLAIMED:
        raise BenchError(f"a fresh key was not claimed: {claim.status}")
    await claims.finish(outcome, State.COMPLETED)
    await claims.mark_published(key)
    return time.perf_counter() - started


@dataclass
class Driven:
    seconds: float
    latencies: list[float]
    """Of the adjustments whose calls all succeeded."""
    errors: list[str]


async def drive(claims: Claims, work: Work, concurrency: int) -> Driven:
    """Every adjustment of ``work`` by ``concurrency`` tasks. A call that fails as the store's
    fault (``StoreError``, e.g. no answer within ``timeout_s``) is counted, not raised."""
    indices = iter(range(len(work.keys)))
    driven = Driven(0.0, [], [])

    async def worker() -> None:
        for index in indices:  # shared: each task takes the next key
            try:
                driven.latencies.append(
                    await one_adjustment(
                        claims, work.keys[index], work.fingerprints[index], work.outcomes[index]
                    )
                )
            except StoreError as exc:
                driven.errors.append(f"{type(exc).__name__}: {exc}")

    started = time.perf_counter()
    async with asyncio.TaskGroup() as group:
        for _ in range(concurrency):
            group.create_task(worker())
    driven.seconds = time.perf_counter() - started
    return driven


async def measure_store(
    kind: str,
    claims: Claims,
    concurrency: int,
    keys: int,
    server_cpu: Callable[[], float] | None,
) -> StoreRun:
    await drive(claims, prepare_work(f"{kind}-warm", WARM_UP_KEYS), concurrency)
    work = prepare_work(f"{kind}-c{concurrency}", keys)
    run = StoreRun(kind, concurrency, keys)
    server0 = server_cpu() if server_cpu else float("nan")
    process0, loop0 = time.process_time(), time.thread_time()
    driven = await drive(claims, work, concurrency)
    process1, loop1 = time.process_time(), time.thread_time()
    server1 = server_cpu() if server_cpu else float("nan")
    run.seconds = driven.seconds
    run.per_s = len(driven.latencies) / driven.seconds
    run.p50_us = percentile(driven.latencies, 0.50) * 1e6
    run.p99_us = percentile(driven.latencies, 0.99) * 1e6
    run.max_us = max(driven.latencies, default=float("nan")) * 1e6
    run.errors = len(driven.errors)
    if driven.errors:
        run.error_sample = driven.errors[0]
    run.process_cpu_us = (process1 - process0) * 1e6 / keys
    run.loop_cpu_us = (loop1 - loop0) * 1e6 / keys
    run.server_cpu_us = (server1 - server0) * 1e6 / keys
    return run


@dataclass
class Servers:
    """The PostgreSQL and Redis servers of this run (either may be absent)."""

    postgres: LocalPostgres | None = None
    redis: LocalRedis | None = None
    versions: dict[str, str] = field(default_factory=dict)


def store_settings(kind: str, servers: Servers, workdir: Path) -> tuple[str, int | None]:
    """(``PA_IDEMPOTENCY__DSN`` of a fresh store of ``kind``, its server's pid or None)."""
    if kind == "memory":
        return "memory://", None
    if kind == "sqlite":
        return f"sqlite:///{workdir / 'stores' / 'idempotency.sqlite3'}", None
    if kind == "postgresql":
        assert servers.postgres is not None
        return servers.postgres.create_database("bench_stores"), servers.postgres.pid
    assert servers.redis is not None
    return servers.redis.url, servers.redis.pid


async def run_store_kind(kind: str, servers: Servers, workdir: Path, keys: int) -> list[StoreRun]:
    dsn, server_pid = store_settings(kind, servers, workdir)
    if kind == "sqlite":
        (workdir / "stores").mkdir(parents=True, exist_ok=True)
    settings = IdempotencySettings(dsn=dsn, redis_prefix=f"bench{uuid.uuid4().hex[:6]}")
    store = MeteredStore(await open_store(settings, exclusive=True), Metrics())
    try:
        claims = Claims(
            store, owner="bench-worker", lease_s=LEASE_S, clock=lambda: datetime.now(UTC)
        )
        server_cpu = None if server_pid is None else (lambda: tree_cpu_seconds(server_pid))
        return [
            await measure_store(kind, claims, concurrency, keys, server_cpu)
            for concurrency in CONCURRENCIES
        ]
    finally:
        await store.close()


def run_stores(cfg: Config, servers: Servers, workdir: Path) -> list[StoreRun]:
    runs: list[StoreRun] = []
    for kind in STORE_KINDS:
        print(f"store {kind}: {cfg.keys:,} adjustments at concurrency 1, then 32...", flush=True)
        for run in asyncio.run(run_store_kind(kind, servers, workdir, cfg.keys)):
            runs.append(run)
            print(
                f"    c{run.concurrency}: {run.per_s:,.0f}/s, p50/p99/max"
                f" {fmt(run.p50_us, 0)}/{fmt(run.p99_us, 0)}/{fmt(run.max_us, 0)} µs, CPU µs/adj:"
                f" process {fmt(run.process_cpu_us, 0)}, loop {fmt(run.loop_cpu_us, 0)}, server"
                f" {fmt(run.server_cpu_us, 0)}"
                + (f"; {run.errors} FAILED ({run.error_sample})" if run.errors else ""),
                flush=True,
            )
    return runs


def print_stores(runs: list[StoreRun], cfg: Config) -> None:
    print()
    print(
        f"The store calls of one adjustment (claim + finish + mark_published), {cfg.keys:,}"
        " fresh keys per row"
    )
    header = (
        f"{'store':<12}{'conc':>5}{'adj/s':>9}{'p50 µs':>9}{'p99 µs':>9}{'max µs':>11}"
        f"{'failed':>7}{'process':>9}{'loop':>8}{'server':>8}{'total':>8}"
    )
    print(f"{'':<60}{'--- CPU µs per adjustment ---':>33}")
    print(header)
    print("-" * len(header))
    for run in runs:
        print(
            f"{run.kind:<12}{run.concurrency:>5}{run.per_s:>9,.0f}{fmt(run.p50_us, 0):>9}"
            f"{fmt(run.p99_us, 0):>9}{fmt(run.max_us, 0):>11}{run.errors:>7}"
            f"{fmt(run.process_cpu_us, 0):>9}{fmt(run.loop_cpu_us, 0):>8}"
            f"{fmt(run.server_cpu_us, 0):>8}{fmt(run.total_cpu_us, 0):>8}"
        )
    print("-" * len(header))
    print(
        "process: this process's CPU (every thread); loop: its event-loop thread's, the one"
        " thread a replica's rate is bound by; server: the PostgreSQL/Redis server's"
        " processes; total: process + server. p50/p99/max: wall time of the three calls of"
        " one adjustment (at concurrency 32 it includes the wait for a pooled connection: the"
        " stores' pools hold 10, PA_IDEMPOTENCY__POOL_SIZE); failed: adjustments whose store"
        " call raised a StoreError (counted, not retried)."
    )
    base = {r.concurrency: r for r in runs if r.kind == BASELINE_KIND}
    if not base:
        return
    print()
    print(f"against the {BASELINE_KIND} store (the baseline, same run): ratio (added µs)")
    header = (
        f"{'store':<12}{'conc':>5}{'loop CPU':>18}{'total CPU':>18}{'p50 round trip':>20}"
        f"{'adj/s':>10}"
    )
    print(header)
    for run in runs:
        ref = base.get(run.concurrency)
        if ref is None or run.kind == BASELINE_KIND:
            continue

        def versus(value: float, baseline: float) -> str:
            return f"{value / baseline:,.1f}x ({value - baseline:+,.0f})"

        print(
            f"{run.kind:<12}{run.concurrency:>5}{versus(run.loop_cpu_us, ref.loop_cpu_us):>18}"
            f"{versus(run.total_cpu_us, ref.total_cpu_us):>18}"
            f"{versus(run.p50_us, ref.p50_us):>20}{run.per_s / ref.per_s:>9.2f}x"
        )


# --- part 2: 1 vs 2 replicas on one store --------------------------------------------------


@dataclass
class ReplicaRow:
    """One replicas scenario: ``replicas`` services on one ``store``."""

    name: str
    store: str
    replicas: int
    backlog: int
    done: int = 0
    capped: bool = False
    stable_after_s: float = float("nan")
    """From the first replica's /readyz to every replica holding its partitions."""
    window_s: float = 0.0
    per_s: float = 0.0
    """Outcomes in the steady window / its length."""
    from_ready_per_s: float = 0.0
    """Every outcome / (the last one - the first replica ready): start-up included."""
    outcomes_by_replica: list[int] = field(default_factory=list)
    cpu_ms_by_replica: list[float] = field(default_factory=list)
    services_cpu_ms: float = float("nan")
    store_cpu_ms: float = float("nan")
    sandbox_cpu_ms: float = float("nan")
    broker_cpu_ms: float = float("nan")
    bench_cpu_ms: float = float("nan")
    machine_busy_pct: float = float("nan")
    others_pct: float = float("nan")
    """CPU of processes this run did not start, as a share of the machine over the window."""
    duplicates: int = 0
    """Outcomes published again for commands already done (re-deliveries after a rebalance)."""
    ledger: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def replica_bound_per_s(self) -> float:
        """What one replica's event loop could do alone: 1000 / its CPU ms per adjustment."""
        worst = max(self.cpu_ms_by_replica, default=float("nan"))
        return 1000 / worst if worst > 0 else float("nan")

    @property
    def all_cpu_ms(self) -> float:
        parts = (
            self.services_cpu_ms,
            self.store_cpu_ms,
            self.sandbox_cpu_ms,
            self.broker_cpu_ms,
            self.bench_cpu_ms,
        )
        return sum(p for p in parts if not math.isnan(p))


@dataclass(frozen=True)
class Moment:
    """CPU counters and outcome counts of everything involved, at one moment."""

    services: list[float]
    outcomes: list[int]
    store: float
    rest: Machine


async def take_moment(
    rig: Rig, replicas: list[Child], https: list[httpx.AsyncClient], store_pid: int | None
) -> Moment:
    outcomes = [await originals(http) for http in https]
    return Moment(
        [cpu_seconds(child.pid) for child in replicas],
        outcomes,
        tree_cpu_seconds(store_pid) if store_pid is not None else float("nan"),
        Machine.take(rig),
    )


async def assigned(http: httpx.AsyncClient) -> int:
    return int(metric_sum((await http.get("/metrics")).text, ASSIGNED_METRIC))


async def originals(http: httpx.AsyncClient) -> int:
    """Outcomes a replica published, less the duplicates it absorbed (re-deliveries after a
    rebalance, answered from the store without a PAS call): the adjustments it made."""
    text = (await http.get("/metrics")).text
    return int(metric_sum(text, OUTCOMES_METRIC) - metric_sum(text, DUPLICATES_METRIC))


def replica_env(
    rig: Rig, topo: Topology, folder: Path, dsn: str | None
) -> tuple[dict[str, str], int]:
    env, port = service_run_env(rig, topo, folder)
    if dsn is not None:
        env["PA_IDEMPOTENCY__DSN"] = dsn
        env["PA_IDEMPOTENCY__REDIS_PREFIX"] = topo.group  # a fresh store per row on Redis
    return env, port


async def run_replicas(rig: Rig, servers: Servers, row: ReplicaRow, cfg: Config) -> None:
    topo = Topology(rig.bootstrap, f"{row.name}-{uuid.uuid4().hex[:6]}")
    folder = rig.workdir / row.name
    folder.mkdir(parents=True, exist_ok=True)

    async def serve() -> tuple[float, float, Moment, Moment]:
        dsn, store_pid = None, None
        if row.store == "postgresql":
            assert servers.postgres is not None
            database = f"replicas_{row.name.replace('-', '_')}_{uuid.uuid4().hex[:6]}"
            dsn = await asyncio.to_thread(servers.postgres.create_database, database)
            store_pid = servers.postgres.pid
        elif row.store == "redis":
            assert servers.redis is not None
            dsn, store_pid = servers.redis.url, servers.redis.pid
        return await run_services(rig, row, topo, folder, dsn, store_pid, cfg)

    before, after, records, _ = await run_backlog_row(rig, row, topo, cfg.seed, serve)
    attribute(row, before, after, records)


async def run_services(
    rig: Rig,
    row: ReplicaRow,
    topo: Topology,
    folder: Path,
    dsn: str | None,
    store_pid: int | None,
    cfg: Config,
) -> tuple[float, float, Moment, Moment]:
    """Start the replicas together, wait for the steady assignment, run the backlog out.

    Returns (first ready, end, the moment the window opened, the moment it closed)."""
    replicas: list[Child] = []
    try:
        async with AsyncExitStack() as stack:
            https: list[httpx.AsyncClient] = []
            for index in range(row.replicas):
                replica_dir = folder / f"replica-{index + 1}"
                replica_dir.mkdir(exist_ok=True)
                env, port = replica_env(rig, topo, replica_dir, dsn)
                name = f"service {row.name} #{index + 1}"
                replicas.append(start_service(rig.children, name, env, replica_dir))
                https.append(
                    await stack.enter_async_context(
                        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10)
                    )
                )

            async def held() -> list[int]:
                return [await assigned(http) for http in https]

            async def made() -> int:
                return sum([await originals(http) for http in https])

            ready = await asyncio.gather(  # together: each replica's own moment
                *(wait_ready(child, http) for child, http in zip(replicas, https, strict=True))
            )
            ready_at = min(ready)
            await wait_stable(replicas, held)
            row.stable_after_s = time.time() - ready_at
            await asyncio.sleep(max(0.0, ready_at + SETTLE_S - time.time()))
            before = await take_moment(rig, replicas, https, store_pid)
            row.capped = await wait_done(replicas, made, row.backlog, before.rest.at + cfg.cap_s)
            after = await take_moment(rig, replicas, https, store_pid)
    finally:
        codes = await asyncio.gather(
            *(asyncio.to_thread(rig.children.stop, child, STOP_WAIT_S) for child in replicas)
        )
        for child, code in zip(replicas, codes, strict=True):
            if code not in (0, None):
                row.notes.append(f"{child.name} exit code {code} after SIGTERM")
    return ready_at, after.rest.at, before, after


def attribute(row: ReplicaRow, before: Moment, after: Moment, records: list[OutcomeRecord]) -> None:
    """The steady window's rate, and CPU per adjustment of every process over it."""
    if not open_window(row, before.rest, records):
        return
    row.outcomes_by_replica = [b - a for a, b in zip(before.outcomes, after.outcomes, strict=True)]
    row.cpu_ms_by_replica = [
        (b - a) * 1000 / max(1, n)
        for a, b, n in zip(before.services, after.services, row.outcomes_by_replica, strict=True)
    ]
    adjustments = max(1, sum(row.outcomes_by_replica))
    row.services_cpu_ms = (sum(after.services) - sum(before.services)) * 1000 / adjustments
    row.store_cpu_ms = (after.store - before.store) * 1000 / adjustments
    attribute_rest(row, before.rest, after.rest, adjustments)


def replica_rows(cfg: Config) -> list[ReplicaRow]:
    rows = []
    for name in cfg.rows:
        store, _, count = name.rpartition("-")
        rows.append(ReplicaRow(name, store, int(count), cfg.backlog))
    return rows


async def run_all_replicas(rig: Rig, servers: Servers, cfg: Config) -> list[ReplicaRow]:
    rows = replica_rows(cfg)
    await run_rows(
        rig,
        rows,
        lambda row: (
            f"replicas {row.name}: {row.replicas} x points-adjuster run on {row.store},"
            f" {row.backlog:,} commands, {ACCOUNTS:,} accounts, {PARTITIONS} partitions"
        ),
        lambda row: run_replicas(rig, servers, row, cfg),
        lambda row: (
            f"    {row.per_s:,.1f}/s over {row.window_s:.1f} s (steady, after"
            f" {fmt(row.stable_after_s)} s); service CPU ms/adj"
            f" {' / '.join(fmt(v, 2) for v in row.cpu_ms_by_replica)}, store"
            f" {fmt(row.store_cpu_ms, 2)}; box {fmt(row.machine_busy_pct, 0)} % busy"
        ),
    )
    return rows


def print_replicas(rows: list[ReplicaRow]) -> None:
    cores = os.cpu_count() or 1
    single = {r.store: r for r in rows if r.replicas == 1 and not r.problems}
    lines: list[str] = []
    for r in rows:
        if r.problems and not r.done:
            lines.append(failed_line(r, 14))
            continue
        ref = single.get(r.store)
        versus = f"{r.per_s / ref.per_s:.2f}" if ref and ref.per_s > 0 else "-"
        box = cores * 1000 / r.all_cpu_ms if r.all_cpu_ms > 0 else float("nan")
        lines.append(
            f"{r.name:<14}{rate_cells(r, versus)}"
            f"{fmt(r.replica_bound_per_s, 0):>16}{fmt(box, 0):>13}"
        )
    print_table(
        "Replicas on one store: the steady rate",
        f"{'row':<14}{RATE_HEADER}{'1-loop bound/s':>16}{'box bound/s':>13}",
        lines,
        "adjusted: commands with their one original outcome (c: stopped at the cap); dups:"
        " outcomes published again for commands re-delivered by the start-up rebalance (the"
        " store answered DUPLICATE, no PAS call); stable s: from the first /readyz until every"
        " replica held partitions; adj/s: original outcomes whose record timestamp falls in"
        f" the window (from stable, and at least {SETTLE_S:g} s after ready, to the last"
        " outcome) / its length; vs 1: against 1 replica on the same store; box busy: all"
        f" {cores} cores over the window; others: the share of them used by processes this"
        " run did not start; 1-loop bound: 1000 / the busiest replica's CPU ms per"
        " adjustment, the rate at which one replica fills its one event-loop thread; box"
        f" bound: {cores} cores / the sum below, if CPU alone limited the co-located processes.",
    )
    lines = []
    for r in rows:
        if not r.done:
            continue
        each = [
            f"{ms:.2f} ({n:,})"
            for ms, n in zip(r.cpu_ms_by_replica, r.outcomes_by_replica, strict=True)
        ] + ["-", "-"]
        lines.append(
            f"{r.name:<14}{each[0]:>16}{each[1]:>16}{fmt(r.services_cpu_ms, 2):>9}"
            f"{fmt(r.store_cpu_ms, 2):>7}{fmt(r.sandbox_cpu_ms, 2):>8}"
            f"{fmt(r.broker_cpu_ms, 2):>7}{fmt(r.bench_cpu_ms, 2):>7}{fmt(r.all_cpu_ms, 2):>7}"
        )
    print_table(
        "CPU per adjustment over the window (ms), by process",
        f"{'row':<14}{'replica 1':>16}{'replica 2':>16}{'services':>9}{'store':>7}"
        f"{'sandbox':>8}{'broker':>7}{'bench':>7}{'sum':>7}",
        lines,
        "replica N: that service process's utime+stime over the adjustments its /metrics"
        " counted in the window (in brackets); services: all of them over all adjustments;"
        " store: the PostgreSQL server (its backends and reaped children included) or the"
        " Redis server (SQLite runs inside the service); sandbox, broker, bench (this"
        " process: metrics polling): the co-located rest. From the first ready, start-up"
        f" and rebalance included: {from_ready(rows)}.",
    )


# --- servers, facts, main ------------------------------------------------------------------


def server_versions(servers: Servers) -> dict[str, str]:
    versions: dict[str, str] = {}
    if servers.postgres is not None:
        versions["postgresql"] = servers.postgres.psql("SHOW server_version").strip()
    if servers.redis is not None:
        redis_server = shutil.which("redis-server") or "redis-server"
        completed = subprocess.run(
            [redis_server, "--version"], capture_output=True, text=True, check=False
        )
        versions["redis"] = completed.stdout.strip()
    return versions


@contextlib.contextmanager
def local_servers(need_redis: bool) -> Iterator[Servers]:
    with contextlib.ExitStack() as stack:
        print("starting PostgreSQL" + (" and Redis" if need_redis else "") + "...", flush=True)
        servers = Servers(postgres=stack.enter_context(LocalPostgres()))
        if need_redis:
            servers.redis = stack.enter_context(LocalRedis())
        servers.versions = server_versions(servers)
        yield servers


def run(
    cfg: Config, facts: dict[str, Any], workdir: Path
) -> tuple[list[StoreRun], list[ReplicaRow]]:
    store_runs: list[StoreRun] = []
    rows: list[ReplicaRow] = []
    replicas_on_redis = "replicas" in cfg.parts and any(r.startswith("redis-") for r in cfg.rows)
    with local_servers(need_redis="stores" in cfg.parts or replicas_on_redis) as servers:
        facts["servers"] = servers.versions
        if "stores" in cfg.parts:
            store_runs = run_stores(cfg, servers, workdir)
            assert servers.redis is not None
            if not replicas_on_redis:
                servers.redis.stop()  # idle from here on
        if "replicas" not in cfg.parts:
            return store_runs, rows
        with started_rig(Children(), workdir, facts, latency_ms=cfg.latency_ms) as rig:
            rows = asyncio.run(run_all_replicas(rig, servers, cfg))
    return store_runs, rows


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    quiet_logging()
    wall = time.monotonic()
    facts = machine_facts()
    print(
        f"points-adjuster store benchmark: {', '.join(cfg.parts)}; {describe_machine(facts)}",
        flush=True,
    )
    warn_if_busy(facts, "the figures below will be low")
    workdir = make_workdir("points-adjuster-bench-stores-", cfg.workdir, facts)
    empty: tuple[list[StoreRun], list[ReplicaRow]] = ([], [])
    (store_runs, rows), status = guarded("bench_stores", lambda: run(cfg, facts, workdir), empty)
    elapsed = time.monotonic() - wall
    if store_runs:
        print_stores(store_runs, cfg)
    if rows:
        print_replicas(rows)
    if print_problems(rows):
        status = status or 1
    if cfg.json_path is not None and (store_runs or rows):
        write_json(cfg, facts, store_runs, rows, elapsed)
    finish(status, elapsed, facts, workdir, cfg.keep_workdir, "SQLite file")
    return status


def write_json(
    cfg: Config,
    facts: dict[str, Any],
    store_runs: list[StoreRun],
    rows: list[ReplicaRow],
    elapsed: float,
) -> None:
    document = {
        "machine": facts,
        "config": asdict(cfg),
        "stores": [{**asdict(r), "total_cpu_us": r.total_cpu_us} for r in store_runs],
        "replicas": [
            {**asdict(r), "replica_bound_per_s": r.replica_bound_per_s, "all_cpu_ms": r.all_cpu_ms}
            for r in rows
        ],
        "elapsed_s": elapsed,
    }
    assert cfg.json_path is not None
    write_figures(cfg.json_path, document)


if __name__ == "__main__":
    sys.exit(main())
