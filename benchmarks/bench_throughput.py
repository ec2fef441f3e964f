"""End-to-end throughput, latency, CPU and memory of ``points-adjuster run`` (issue 5).

A real Kafka broker (one local KRaft broker for the whole run, or ``--bootstrap-servers``),
the PAS sandbox as a separate process with a fixed latency and no faults, OAuth1 signing and
JWE encryption on, and the service as a separate process per scenario (fresh topics, group
and SQLite store each time). In one invocation:

* the crypto floor: thread CPU of the RSA/AES operations every adjustment needs, measured
  with ``cryptography`` directly before anything else starts;
* the sweep (in the style of Parallel Consumer's published table): a pre-produced backlog of
  commands over key spaces of 1, 10, 100 and 10,000 accounts, on 1 and on 12 partitions,
  with ``PA_PROCESSING__ORDERING=key``;
* the baseline: ``PA_PROCESSING__ORDERING=partition`` (one command at a time per partition)
  on a sample of the 1-partition/10,000-account data;
* the paced runs: commands produced at half (the target's point) and at a quarter of the
  throughput of the 12-partition/10,000-account row while the service runs, for
  command->outcome latency; the quarter shows the pipeline where the co-located broker and
  load generator leave the two cores room (paced records cost the broker far more per
  record than a backlog does);
* the memory runs: peak RSS with a 10,000- and a 100,000-command backlog.

Throughput is commands / (last outcome's record timestamp - the moment /readyz answered);
a scenario that has not finished after ``--max-seconds`` is stopped there and its rate is
the outcomes published by then over that time (marked ``c``). CPU per adjustment is the
service process's utime+stime (/proc/<pid>/stat) over the run, its idle start-up CPU
subtracted, per outcome; peak RSS is its VmHWM. Completion is detected from its /metrics
(``points_adjuster_outcomes_total``); the outcome topics are read once at the end to check
that every command got exactly one original, completed outcome and to get the latencies.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_throughput.py [--quick] [--commands N]
        [--latency-ms 50] [--plain-responses] [--only SCENARIO[,SCENARIO...]] [--json out.json]
        [--http-transport aiohttp|native|httpx] [--pin [--service-core N]]

``--pin`` (2 or more cores) gives every service process of the run a core of its own and
pins the broker, the sandbox and this process (the load generator) to the others
(``pinning.py``), for all rows: with ``--only sweep-p12-a<widest>,paced`` the paced rate is
half the pinned setup's maximum. Each row prints every core's busy share and where the
service's threads ran, and the service's ``PA_PAS__HTTP_TRANSPORT``.

Exit code 0 when every scenario ran and its outcomes checked out (targets missed do not
fail the run), 1 otherwise, 130 when interrupted. Linux only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fnmatch
import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import cryptography
import httpx
from aiokafka import AIOKafkaProducer
from benchkit import (
    BODY_200,
    CLOCK_TICKS,
    BenchError,
    Child,
    Children,
    CryptoFloor,
    cpu_times,
    format_window,
    histogram_buckets,
    histogram_quantile,
    machine_busy_ticks,
    main_thread_cpu_seconds,
    measure_crypto_floor,
    memory_mb,
    metric_sum,
    percentile,
    self_cpu_seconds,
    window_counts,
)
from e2ekit import (
    READY_TIMEOUT_S,
    SERVICE_SHUTDOWN_S,
    STOP_WAIT_S,
    OutcomeRecord,
    Rig,
    Topology,
    create_topics,
    describe_machine,
    discard,
    encode_all,
    finish,
    guarded,
    machine_facts,
    make_workdir,
    print_problems,
    process_cpu,
    produce_backlog,
    quiet_logging,
    read_outcome_records,
    started_rig,
    wait_ready,
    warm_up_broker,
    warn_if_busy,
    write_figures,
)
from pinning import (
    CorePlan,
    affinity,
    core_busy_pct,
    core_list,
    format_core_busy,
    pin_process,
    pin_tree,
    read_core_ticks,
    threads_by_cpu,
)
from profile_summary import read as read_profile
from profile_summary import render as render_profile

from pa_devkit.demo import service_env
from pa_devkit.localinfra.broker_config import free_port
from service.codec.avro import AvroCodec
from service.settings import PasSettings
from service.tools.generate import generate_commands

REPO = Path(__file__).resolve().parent.parent
OUTCOMES_METRIC = "points_adjuster_outcomes_total"
PAS_DURATION_METRIC = "points_adjuster_pas_request_duration_seconds"
COMMAND_DURATION_METRIC = "points_adjuster_command_duration_seconds"
ADDED_METRIC = "points_adjuster_command_service_added_seconds"
STORE_METRIC = "points_adjuster_store_operation_duration_seconds"
STORE_STEPS = ("claim", "finish", "mark_published")  # an adjustment's store calls, in order
"""The service's histogram of each command's time in it: from taking the record from a fetch
to its outcome acknowledged by the broker (acks=all)."""
METRICS_POLL_S = 1.0
METRICS_POLL_NEAR_S = 0.1
IDLE_SAMPLE_S = 3.0  # the paced run first measures the service's CPU with nothing to do

# The targets.
TARGET_VS_BASELINE = 50.0
TARGET_P1_VS_P12 = 0.9
TARGET_CPU_VS_FLOOR = 2.0  # issue 16 (2.5 in issue 5)
TARGET_THROUGHPUT = 800.0
TARGET_LATENCY_SLACK_MS = 50.0
TARGET_RSS_RATIO = 1.1
TARGET_RSS_MB = 200.0


# --- configuration -------------------------------------------------------------------------


@dataclass(frozen=True)
class Config:
    quick: bool
    commands: int
    latency_ms: float
    plain_responses: bool
    bootstrap_servers: str | None
    only: tuple[str, ...]
    json_path: Path | None
    key_spaces: tuple[int, ...]
    partitions: tuple[int, ...]
    max_seconds: float
    baseline_commands: int
    paced_seconds: float
    paced_rate: float | None
    memory_backlogs: tuple[int, int]
    memory_seconds: float
    floor_iterations: int
    seed: int
    service_root: Path | None
    max_in_flight: int | None
    max_buffered: int | None
    http_transport: str | None
    workdir: Path | None
    keep_workdir: bool
    plumbing_floor: bool = True
    profile_dir: Path | None = None
    profile_rate: int = 200
    pin: bool = False
    service_core: int | None = None

    @property
    def encrypted_responses(self) -> bool:
        return not self.plain_responses


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="End-to-end throughput/latency/CPU/memory benchmark of points-adjuster."
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="reduced run (2,000 commands, key spaces 1/100/10,000, shorter caps, memory"
        " backlogs 2,000 vs 20,000): a few minutes",
    )
    parser.add_argument("--commands", type=int, help="commands per sweep scenario (20,000)")
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox latency (50)")
    parser.add_argument(
        "--plain-responses",
        action="store_true",
        help="the sandbox answers in plain JSON (default: encrypted, as in production)",
    )
    parser.add_argument("--bootstrap-servers", help="use this broker instead of starting one")
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="SCENARIO",
        help="run only these scenarios: a name (sweep-p12-a10000), a prefix (sweep, sweep-p1,"
        " baseline, paced, memory) or a glob; repeatable or comma-separated",
    )
    parser.add_argument("--json", type=Path, dest="json_path", help="write every figure here")
    parser.add_argument(
        "--key-spaces", help="comma-separated account counts of the sweep (1,10,100,10000)"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        help="stop a scenario this long after the service is ready (150; quick 30)",
    )
    parser.add_argument(
        "--baseline-commands", type=int, help="sample size of the baseline (400; quick 200)"
    )
    parser.add_argument("--paced-seconds", type=float, help="length of the paced run (20; 10)")
    parser.add_argument(
        "--paced-rate",
        type=float,
        help="commands/s of the paced run (default: half the sweep-p12-a<max> throughput)",
    )
    parser.add_argument(
        "--memory-backlogs",
        help="the two backlogs of the memory runs (10000,100000; quick 2000,20000)",
    )
    parser.add_argument(
        "--memory-seconds",
        type=float,
        help="longest run of a memory scenario after ready (30; quick 15)",
    )
    parser.add_argument("--seed", type=int, default=5, help="data seed (5)")
    parser.add_argument(
        "--service-root",
        type=Path,
        help="run the service (not the sandbox) from this checkout (PYTHONPATH), e.g. an"
        " exported older commit, to compare runners",
    )
    parser.add_argument("--max-in-flight", type=int, help="PA_PROCESSING__MAX_IN_FLIGHT")
    parser.add_argument("--max-buffered", type=int, help="PA_PROCESSING__MAX_BUFFERED")
    parser.add_argument(
        "--http-transport",
        choices=("httpx", "aiohttp", "native"),
        help="PA_PAS__HTTP_TRANSPORT (default: the service's own default)",
    )
    parser.add_argument("--workdir", type=Path, help="parent of the temporary folder")
    parser.add_argument(
        "--keep-workdir", action="store_true", help="keep logs and stores at the end"
    )
    parser.add_argument(
        "--no-plumbing-floor",
        action="store_false",
        dest="plumbing_floor",
        help="skip the plumbing floor (the bare pipeline of the same libraries, run first)",
    )
    parser.add_argument(
        "--profile",
        type=Path,
        dest="profile_dir",
        metavar="DIR",
        help="sample the service of each scenario (and the plumbing floor) with py-spy from"
        " ready to its last outcome; the raw stacks and a summary of the top frames (µs per"
        " adjustment) go to DIR",
    )
    parser.add_argument(
        "--profile-rate", type=int, default=200, help="py-spy samples per second (200)"
    )
    parser.add_argument(
        "--pin",
        action="store_true",
        help="give the service (every service process of the run, and the plumbing floor's"
        " pipeline) a core of its own and pin the broker, the sandbox and this load generator"
        " to the other cores (sched_setaffinity, every thread); needs 2 or more cores",
    )
    parser.add_argument(
        "--service-core",
        type=int,
        metavar="N",
        help="with --pin: the service's core (default: the highest this process may use)",
    )
    args = parser.parse_args(argv)
    if args.service_core is not None and not args.pin:
        parser.error("--service-core goes with --pin")
    quick: bool = args.quick

    def pick(value: Any, full: Any, reduced: Any) -> Any:
        return value if value is not None else (reduced if quick else full)

    key_spaces = (
        tuple(int(part) for part in args.key_spaces.split(","))
        if args.key_spaces
        else ((1, 100, 10_000) if quick else (1, 10, 100, 10_000))
    )
    backlogs = (
        tuple(int(part) for part in args.memory_backlogs.split(","))
        if args.memory_backlogs
        else ((2_000, 20_000) if quick else (10_000, 100_000))
    )
    if len(backlogs) != 2:
        parser.error("--memory-backlogs takes two numbers")
    only = tuple(part.strip() for item in args.only for part in item.split(",") if part.strip())
    return Config(
        quick=quick,
        commands=pick(args.commands, 20_000, 2_000),
        latency_ms=args.latency_ms,
        plain_responses=args.plain_responses,
        bootstrap_servers=args.bootstrap_servers,
        only=only,
        json_path=args.json_path,
        key_spaces=key_spaces,
        partitions=(1, 12),
        max_seconds=pick(args.max_seconds, 150.0, 30.0),
        baseline_commands=pick(args.baseline_commands, 400, 200),
        paced_seconds=pick(args.paced_seconds, 20.0, 10.0),
        paced_rate=args.paced_rate,
        memory_backlogs=(backlogs[0], backlogs[1]),
        memory_seconds=pick(args.memory_seconds, 30.0, 15.0),
        floor_iterations=1000 if quick else 2000,
        seed=args.seed,
        service_root=args.service_root.resolve() if args.service_root else None,
        max_in_flight=args.max_in_flight,
        max_buffered=args.max_buffered,
        http_transport=args.http_transport,
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
        plumbing_floor=args.plumbing_floor,
        profile_dir=args.profile_dir.resolve() if args.profile_dir else None,
        profile_rate=args.profile_rate,
        pin=args.pin,
        service_core=args.service_core,
    )


# --- scenarios -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Scenario:
    name: str
    kind: str  # sweep | baseline | paced | memory
    partitions: int
    accounts: int
    commands: int
    ordering: str
    cap_s: float
    seed: int
    note: str = ""
    share: float = 0.5
    """Paced runs: the share of the maximum rate (sweep-p12-a<widest>) they produce at."""


def plan(cfg: Config) -> list[Scenario]:
    widest = max(cfg.key_spaces)
    scenarios = [
        Scenario(
            f"sweep-p{partitions}-a{accounts}",
            "sweep",
            partitions,
            accounts,
            cfg.commands,
            "key",
            cfg.max_seconds,
            cfg.seed * 1_000_003 + accounts,
        )
        for accounts in cfg.key_spaces
        for partitions in cfg.partitions
    ]
    scenarios.append(
        Scenario(
            f"baseline-p1-a{widest}",
            "baseline",
            1,
            widest,
            min(cfg.baseline_commands, cfg.commands),
            "partition",
            cfg.max_seconds,
            cfg.seed * 1_000_003 + widest,  # the same data as sweep-p1-a<widest>
            note=f"the first {min(cfg.baseline_commands, cfg.commands):,} commands of"
            f" sweep-p1-a{widest}'s data (partition-serial at ~1/latency per partition"
            " would take too long on all of them; the steady rate is what counts)",
        )
    )
    for name, share in ((f"paced-p12-a{widest}", 0.5), (f"paced-quarter-p12-a{widest}", 0.25)):
        scenarios.append(
            Scenario(
                name,
                "paced",
                12,
                widest,
                0,  # set from the rate at run time
                "key",
                cfg.paced_seconds + 30.0,
                cfg.seed * 1_000_003 + 7,
                share=share,
            )
        )
    for backlog in cfg.memory_backlogs:
        scenarios.append(
            Scenario(
                f"memory-{backlog}",
                "memory",
                12,
                widest,
                backlog,
                "key",
                cfg.memory_seconds,
                cfg.seed * 1_000_003 + 11,
                note="runs until drained or the memory cap; peak RSS is what counts",
            )
        )
    if not cfg.only:
        return scenarios
    return [s for s in scenarios if any(matches(s.name, pattern) for pattern in cfg.only)]


def matches(name: str, pattern: str) -> bool:
    return name == pattern or name.startswith(pattern + "-") or fnmatch.fnmatch(name, pattern)


@dataclass
class Result:
    name: str
    kind: str
    ordering: str
    partitions: int
    accounts: int
    commands: int
    capped: bool = False
    done: int = 0
    seconds: float = 0.0
    throughput: float = 0.0
    steady_throughput: float = 0.0
    produce_s: float = 0.0
    ready_s: float = 0.0
    first_outcome_after_s: float = 0.0
    e2e_p50_ms: float = float("nan")
    e2e_p99_ms: float = float("nan")
    service_p50_ms: float = float("nan")
    service_p99_ms: float = float("nan")
    acked_p50_ms: float = float("nan")  # in service, received -> outcome acknowledged
    acked_p99_ms: float = float("nan")
    cpu_ms_per_adj: float = float("nan")
    cpu_user_ms_per_adj: float = float("nan")
    cpu_sys_ms_per_adj: float = float("nan")
    loop_cpu_ms_per_adj: float = float("nan")  # the service's main (event-loop) thread alone
    startup_cpu_s: float = 0.0
    sandbox_cpu_ms_per_adj: float = float("nan")
    broker_cpu_ms_per_adj: float = float("nan")
    bench_cpu_ms_per_adj: float = float("nan")
    machine_busy_pct: float = float("nan")
    others_cpu_ms_per_adj: float = float("nan")  # CPU of processes this run did not start
    others_pct: float = float("nan")  # the same as a share of the machine over the run
    idle_cpu_ms_per_s: float = float("nan")  # the service's CPU with nothing to do (paced)
    core_busy_pct: dict[int, float] = field(default_factory=dict)  # each core, ready -> end
    http_transport: str = ""  # the service's PA_PAS__HTTP_TRANSPORT
    service_cores: str = ""  # the cores the service may run on (its affinity), e.g. "1"
    service_threads_by_cpu: dict[int, int] = field(default_factory=dict)  # at the end
    # The window's observations by bucket (upper bound s, count): the service's histograms
    # of a command's time in it and of its PAS calls (as the client times them).
    acked_buckets: list[tuple[float, float]] = field(default_factory=list)
    pas_buckets: list[tuple[float, float]] = field(default_factory=list)
    pas_p50_ms: float = float("nan")
    pas_p99_ms: float = float("nan")
    # What the service adds to a command's PAS calls (its time in service less theirs),
    # per command, from the service's own histogram over the same window.
    added_buckets: list[tuple[float, float]] = field(default_factory=list)
    added_p50_ms: float = float("nan")
    added_p99_ms: float = float("nan")
    store_ms: dict[str, tuple[float, float]] = field(default_factory=dict)  # p50, p99 by call
    peak_rss_mb: float = 0.0
    rss_mb_at_end: float = 0.0
    paced_rate: float = 0.0
    p99_by_second_ms: list[float] = field(default_factory=list)  # paced: per second of sending
    ready_at: float = 0.0  # wall clock (epoch s) when /readyz first answered 200
    end_at: float = 0.0  # wall clock when the last outcome was counted, or the cap hit
    ledger: int = 0
    exit_code: int | None = None
    wall_s: float = 0.0
    note: str = ""
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def primary_latency(self) -> tuple[float, float, bool]:
        """(p50, p99, in-service): command->outcome for the paced run, else in-service."""
        if self.kind == "paced":
            return self.e2e_p50_ms, self.e2e_p99_ms, False
        return self.service_p50_ms, self.service_p99_ms, True


# --- the bench context ---------------------------------------------------------------------


@dataclass
class PlumbingFloor:
    """The bare pipeline's figures (``plumbing_floor.py``): CPU per adjustment with the same
    libraries and nothing of ours."""

    name: str
    records: int = 0
    failed: int = 0
    cpu_ms_per_adj: float = float("nan")
    loop_cpu_ms_per_adj: float = float("nan")
    wall_s: float = 0.0
    machine_busy_pct: float = float("nan")
    others_pct: float = float("nan")
    problem: str = ""

    @property
    def rate(self) -> float:
        return self.records / self.wall_s if self.wall_s > 0 else 0.0


@dataclass
class Bench(Rig):
    """The rig, with this run's configuration and what it has measured so far."""

    cfg: Config
    results: list[Result] = field(default_factory=list)
    plumbing: PlumbingFloor | None = None
    cores: CorePlan | None = None  # --pin: the service's core and the others'

    def result(self, name: str) -> Result | None:
        return next((r for r in self.results if r.name == name and not r.problems), None)


# --- producing -----------------------------------------------------------------------------


async def produce_paced(
    bootstrap: str,
    topic: str,
    commands: list[dict[str, Any]],
    codec: AvroCodec,
    rate: float,
    sent: dict[str, int],
) -> None:
    """Publish the commands at ``rate`` per second; ``sent`` gets each key's send time (the
    record's timestamp), as it goes, so a cancelled run still says what it sent."""
    records = encode_all(codec, commands)
    producer = AIOKafkaProducer(
        bootstrap_servers=bootstrap, acks="all", enable_idempotence=True, linger_ms=5
    )
    await producer.start()
    futures = []
    try:
        loop = asyncio.get_running_loop()
        start = loop.time()
        index = 0
        while index < len(records):
            due = min(len(records), int((loop.time() - start) * rate) + 1)
            while index < due:
                value, key = records[index]
                stamp = int(time.time() * 1000)
                futures.append(await producer.send(topic, value=value, key=key, timestamp_ms=stamp))
                sent[commands[index]["idempotency_key"]] = stamp
                index += 1
            await asyncio.sleep(max(0.0, start + index / rate - loop.time()))
        await asyncio.gather(*futures)
    finally:
        await producer.stop()


# --- one scenario --------------------------------------------------------------------------


def scenario_commands(sc: Scenario, cfg: Config, count: int) -> list[dict[str, Any]]:
    """The scenario's commands: no repeats, no invalid ones; the same seed gives the same data."""
    total = cfg.commands if sc.kind == "baseline" else count
    batch = generate_commands(
        total, accounts=sc.accounts, seed=sc.seed, requested_by="points-adjuster-bench"
    )
    return batch.commands[:count]


async def durations(http: httpx.AsyncClient) -> dict[str, dict[float, float]]:
    """The service's histograms of a command's time in it, of its PAS calls and of what it
    adds to them."""
    text = (await http.get("/metrics")).text
    found = {
        name: histogram_buckets(text, name)
        for name in (COMMAND_DURATION_METRIC, PAS_DURATION_METRIC, ADDED_METRIC)
    }
    for step in STORE_STEPS:
        found[step] = histogram_buckets(text, STORE_METRIC, f'operation="{step}"')
    return found


async def outcome_count(http: httpx.AsyncClient) -> int:
    return int(metric_sum((await http.get("/metrics")).text, OUTCOMES_METRIC))


async def wait_for_outcomes(
    child: Child, http: httpx.AsyncClient, expected: int, deadline: float
) -> tuple[int, float, bool]:
    """Poll /metrics until ``expected`` outcomes or the deadline (wall clock).

    Returns (outcomes counted, wall-clock moment, capped).
    """
    previous, previous_at = 0, time.time()
    while True:
        if not child.alive:
            raise BenchError(f"the service exited mid-run:\n{child.log_tail()}")
        count = await outcome_count(http)
        now = time.time()
        if count >= expected:
            return count, now, False
        if now >= deadline:
            return count, now, True
        # Scraping costs the service CPU: every second while far from the end, 10 times a
        # second once the last outcomes are about 2 s away.
        rate = (count - previous) / max(now - previous_at, 1e-3)
        previous, previous_at = count, now
        near = rate > 0 and (expected - count) / rate < 2.0
        pause = METRICS_POLL_NEAR_S if near else METRICS_POLL_S
        await asyncio.sleep(min(pause, max(0.0, deadline - now)))


async def run_scenario(bench: Bench, sc: Scenario) -> Result:
    cfg = bench.cfg
    started = time.monotonic()
    result = Result(sc.name, sc.kind, sc.ordering, sc.partitions, sc.accounts, sc.commands)
    result.note = sc.note
    topo = Topology(bench.bootstrap, f"{sc.name}-{uuid.uuid4().hex[:6]}")
    names = topo.names
    scenario_dir = bench.workdir / sc.name
    scenario_dir.mkdir(parents=True, exist_ok=True)
    await create_topics(bench.bootstrap, topo.partitions(sc.partitions))
    try:
        if sc.kind == "paced":
            rate = paced_rate(bench, result, sc.share)
            count = max(1, round(rate * cfg.paced_seconds))
            result.paced_rate = rate
            result.commands = count
        else:
            count = sc.commands
        commands = await asyncio.to_thread(scenario_commands, sc, cfg, count)
        sent_at: dict[str, int] = {}
        if sc.kind != "paced":
            begin = time.monotonic()
            sent_at = await produce_backlog(
                bench.bootstrap, names["command"], commands, bench.codec
            )
            result.produce_s = time.monotonic() - begin
        await measure_service(bench, sc, topo, scenario_dir, commands, sent_at, result)
        outcomes = await read_outcome_records(
            bench.bootstrap, [names["completed"], names["failed"]], bench.codec
        )
        result.ledger = await asyncio.to_thread(bench.sandbox.ledger_count)
        analyse(result, commands, sent_at, outcomes)
    finally:
        await discard(bench.sandbox, topo)
        result.wall_s = time.monotonic() - started
    return result


async def measure_plumbing_floor(bench: Bench) -> PlumbingFloor:
    """The bare pipeline (``plumbing_floor.py``) over the data of sweep-p12-a<widest>, with the
    service's environment, on fresh topics; its CPU per adjustment."""
    cfg = bench.cfg
    widest = max(cfg.key_spaces)
    sc = Scenario(
        f"plumbing-p12-a{widest}",
        "plumbing",
        12,
        widest,
        cfg.commands,
        "key",
        cfg.max_seconds,
        cfg.seed * 1_000_003 + widest,
    )
    floor = PlumbingFloor(sc.name)
    topo = Topology(bench.bootstrap, f"{sc.name}-{uuid.uuid4().hex[:6]}")
    names = topo.names
    folder = bench.workdir / sc.name
    folder.mkdir(parents=True, exist_ok=True)
    await create_topics(bench.bootstrap, topo.partitions(sc.partitions))
    out = folder / "figures.json"
    try:
        commands = await asyncio.to_thread(scenario_commands, sc, cfg, sc.commands)
        await produce_backlog(bench.bootstrap, names["command"], commands, bench.codec)
        env = service_env(
            bench.bootstrap, bench.sandbox.base_url, folder, free_port(), bench.keyset
        )
        env.update(topo.env())
        env.update(PA_LOG__LEVEL="WARNING")
        if cfg.max_in_flight is not None:
            env["PA_PROCESSING__MAX_IN_FLIGHT"] = str(cfg.max_in_flight)
        if cfg.http_transport is not None:
            env["PA_PAS__HTTP_TRANSPORT"] = cfg.http_transport
        child = bench.children.start(
            "plumbing floor",
            [
                sys.executable,
                str(REPO / "benchmarks" / "plumbing_floor.py"),
                *("--expect", str(sc.commands), "--out", str(out)),
            ],
            env=env,
            cwd=folder,
            log_path=folder / "plumbing.log",
        )
        pin_service(bench, child.pid)
        try:
            ready = out.with_suffix(".ready")
            deadline = time.monotonic() + READY_TIMEOUT_S
            while not ready.exists():
                if not child.alive or time.monotonic() > deadline:
                    raise BenchError(f"the plumbing floor did not start:\n{child.log_tail()}")
                await asyncio.sleep(0.05)
            pin_service(bench, child.pid)  # threads started before the first pinning
            before = Snapshot.take(bench, child)
            async with profiled(cfg, sc.name, child.pid) as profile:
                deadline = time.monotonic() + sc.cap_s
                while not out.exists():
                    if not child.alive or time.monotonic() > deadline:
                        raise BenchError(f"the plumbing floor did not finish:\n{child.log_tail()}")
                    await asyncio.sleep(0.05)
                after = Snapshot.take(bench, child)
        finally:
            await asyncio.to_thread(bench.children.stop, child, STOP_WAIT_S)
        figures = json.loads(out.read_text())
        floor.records, floor.failed = int(figures["records"]), int(figures["failed"])
        floor.wall_s = float(figures["wall_s"])
        floor.cpu_ms_per_adj = float(figures["cpu_s"]) * 1000 / max(floor.records, 1)
        probe = Result(sc.name, sc.kind, sc.ordering, sc.partitions, sc.accounts, sc.commands)
        attribute_cpu(probe, before, after, max(floor.records, 1))
        floor.machine_busy_pct, floor.others_pct = probe.machine_busy_pct, probe.others_pct
        floor.loop_cpu_ms_per_adj = probe.loop_cpu_ms_per_adj
        if floor.failed:
            floor.problem = f"{floor.failed} PAS calls did not answer 200"
        if profile is not None:
            report_profile(profile, floor.loop_cpu_ms_per_adj)
    except BenchError as exc:
        floor.problem = str(exc)
    finally:
        await discard(bench.sandbox, topo)
    return floor


@contextlib.asynccontextmanager
async def profiled(cfg: Config, name: str, pid: int) -> AsyncIterator[Path | None]:
    """py-spy sampling process ``pid`` for the body (``--profile``); the raw stacks' path."""
    if cfg.profile_dir is None:
        yield None
        return
    spy = shutil.which("py-spy", path=str(Path(sys.executable).parent)) or shutil.which("py-spy")
    if spy is None:
        raise BenchError("--profile needs py-spy (make setup installs it from dev.lock)")
    cfg.profile_dir.mkdir(parents=True, exist_ok=True)
    path = cfg.profile_dir / f"{name}.txt"
    with (cfg.profile_dir / f"{name}.log").open("wb") as log:
        process = start_spy(spy, pid, cfg.profile_rate, path, log)
        try:
            yield path
        finally:
            process.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
            try:
                await asyncio.to_thread(process.wait, 30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def start_spy(spy: str, pid: int, rate: int, path: Path, log: Any) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [
            *(spy, "record", "--pid", str(pid), "--rate", str(rate)),
            *("--format", "raw", "--nonblocking", "--output", str(path)),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )


def report_profile(path: Path, loop_ms_per_adj: float) -> None:
    """Write and print the summary of a py-spy profile beside its raw stacks."""
    if not path.exists() or math.isnan(loop_ms_per_adj):
        print(f"    no profile written ({path.with_suffix('.log')})", flush=True)
        return
    text = render_profile(read_profile(path), loop_ms_per_adj * 1000)
    path.with_suffix(".summary.txt").write_text(text + "\n")
    print("    profile: " + str(path.with_suffix(".summary.txt")), flush=True)
    print("\n".join("    " + line for line in text.splitlines()[:24]), flush=True)


def service_transport(env: dict[str, str]) -> str:
    """The PA_PAS__HTTP_TRANSPORT the service runs with: its environment's (names are not
    case-sensitive to the service's settings), else the settings' default."""
    for name, value in env.items():
        if name.upper() == "PA_PAS__HTTP_TRANSPORT":
            return value
    return str(PasSettings.model_fields["http_transport"].default)


def pin_service(bench: Bench, pid: int) -> None:
    """With --pin: every thread of the service process ``pid`` onto the service's core."""
    if bench.cores is not None:
        pin_tree(pid, bench.cores.service)


def placement(result: Result) -> str:
    """Each core's busy share over the row, and where the service ran with which transport."""
    threads = ", ".join(
        f"cpu{core} x{count}" for core, count in sorted(result.service_threads_by_cpu.items())
    )
    return (
        f"cores busy (ready -> last outcome): {format_core_busy(result.core_busy_pct)}; the"
        f" service (PA_PAS__HTTP_TRANSPORT={result.http_transport}) may run on CPU"
        f" {result.service_cores or '-'}, its threads last ran on {threads or '-'}"
    )


def pin_the_rest(bench: Bench) -> None:
    """With --pin: the broker, the sandbox and this process (the load generator and the
    outcome reader) onto the other cores, every thread; says which core runs what."""
    plan = bench.cores
    if plan is None:
        return
    print(f"pinning (--pin): {plan.describe()}", flush=True)
    parts = []
    if bench.broker_pid is None:
        parts.append("the broker is external: not pinned")
    else:
        threads = pin_tree(bench.broker_pid, plan.others)
        parts.append(f"broker pid {bench.broker_pid} ({threads} threads)")
    sandbox_pid = bench.sandbox.child.pid
    parts.append(f"sandbox pid {sandbox_pid} ({pin_tree(sandbox_pid, plan.others)} threads)")
    own = pin_process(os.getpid(), plan.others)
    parts.append(f"this benchmark (the load generator) pid {os.getpid()} ({own} threads)")
    print(f"    on CPU {core_list(plan.others)}: " + "; ".join(parts), flush=True)
    print(
        f"    on CPU {core_list(plan.service)}: each service process (and the plumbing"
        " floor's), pinned as it starts and again once ready",
        flush=True,
    )


def paced_rate(bench: Bench, result: Result, share: float) -> float:
    """``share`` of the maximum rate; ``--paced-rate`` gives the rate at a share of 0.5."""
    cfg = bench.cfg
    if cfg.paced_rate is not None:
        rate = cfg.paced_rate * share / 0.5
        scale = share / 0.5
        result.notes.append(f"rate {rate:g}/s from --paced-rate {cfg.paced_rate:g} (x {scale:g})")
        return rate
    source = f"sweep-p12-a{max(cfg.key_spaces)}"
    reference = bench.result(source)
    if reference is None or reference.throughput <= 0:
        rate = 200.0 * share
        result.notes.append(f"{source} was not run: rate {rate:g}/s (use --paced-rate)")
        return rate
    result.notes.append(f"rate = {share:g} x {source}'s {reference.throughput:.0f}/s")
    return reference.throughput * share


async def measure_service(
    bench: Bench,
    sc: Scenario,
    topo: Topology,
    scenario_dir: Path,
    commands: list[dict[str, Any]],
    sent_at: dict[str, int],
    result: Result,
) -> None:
    cfg = bench.cfg
    metrics_port = free_port()
    env = service_env(
        bench.bootstrap, bench.sandbox.base_url, scenario_dir, metrics_port, bench.keyset
    )
    env.update(topo.env())
    env.update(
        PA_LOG__LEVEL="WARNING",
        PA_SHUTDOWN_TIMEOUT_S=str(SERVICE_SHUTDOWN_S),
        PA_PROCESSING__ORDERING=sc.ordering,
    )
    if cfg.max_in_flight is not None:
        env["PA_PROCESSING__MAX_IN_FLIGHT"] = str(cfg.max_in_flight)
    if cfg.max_buffered is not None:
        env["PA_PROCESSING__MAX_BUFFERED"] = str(cfg.max_buffered)
    if cfg.http_transport is not None:
        env["PA_PAS__HTTP_TRANSPORT"] = cfg.http_transport
    if cfg.service_root is not None:
        env["PYTHONPATH"] = os.pathsep.join(
            part for part in (str(cfg.service_root), env.get("PYTHONPATH", "")) if part
        )
    result.http_transport = service_transport(env)
    launched = time.time()
    child = bench.children.start(
        f"service {sc.name}",
        [sys.executable, "-m", "service", "run"],
        env=env,
        cwd=scenario_dir,
        log_path=scenario_dir / "service.log",
    )
    pin_service(bench, child.pid)  # before the interpreter has started any thread
    pacer: asyncio.Task[None] | None = None
    profile: Path | None = None
    try:
        async with httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{metrics_port}", timeout=10
        ) as http:
            ready_at = await wait_ready(child, http)
            result.ready_s = ready_at - launched
            pin_service(bench, child.pid)  # again: a thread that slipped through the first
            result.service_cores = core_list(affinity(child.pid))
            before = Snapshot.take(bench, child)
            result.startup_cpu_s = before.service_user + before.service_sys
            durations0 = await durations(http)
            if sc.kind == "paced":
                await asyncio.sleep(1.0)  # let the group settle
                idle0 = sum(cpu_times(child.pid))
                await asyncio.sleep(IDLE_SAMPLE_S)
                idle1 = sum(cpu_times(child.pid))
                result.idle_cpu_ms_per_s = (idle1 - idle0) * 1000 / IDLE_SAMPLE_S
                before = Snapshot.take(bench, child)
                durations0 = await durations(http)
                rate = result.paced_rate
                pacer = asyncio.create_task(
                    produce_paced(
                        bench.bootstrap, topo.names["command"], commands, bench.codec, rate, sent_at
                    )
                )
            async with profiled(cfg, sc.name, child.pid) as profile:
                done, end_at, capped = await wait_for_outcomes(
                    child, http, len(commands), ready_at + sc.cap_s
                )
                after = Snapshot.take(bench, child)
                result.service_threads_by_cpu = threads_by_cpu(child.pid)
            durations1 = await durations(http)
            acked0, acked1 = (
                durations0[COMMAND_DURATION_METRIC],
                durations1[COMMAND_DURATION_METRIC],
            )
            result.acked_p50_ms = histogram_quantile(acked0, acked1, 0.50) * 1000
            result.acked_p99_ms = histogram_quantile(acked0, acked1, 0.99) * 1000
            result.acked_buckets = window_counts(acked0, acked1)
            pas0, pas1 = durations0[PAS_DURATION_METRIC], durations1[PAS_DURATION_METRIC]
            result.pas_p50_ms = histogram_quantile(pas0, pas1, 0.50) * 1000
            result.pas_p99_ms = histogram_quantile(pas0, pas1, 0.99) * 1000
            result.pas_buckets = window_counts(pas0, pas1)
            added0, added1 = durations0[ADDED_METRIC], durations1[ADDED_METRIC]
            result.added_p50_ms = histogram_quantile(added0, added1, 0.50) * 1000
            result.added_p99_ms = histogram_quantile(added0, added1, 0.99) * 1000
            result.added_buckets = window_counts(added0, added1)
            for step in STORE_STEPS:
                calls0, calls1 = durations0[step], durations1[step]
                result.store_ms[step] = (
                    histogram_quantile(calls0, calls1, 0.50) * 1000,
                    histogram_quantile(calls0, calls1, 0.99) * 1000,
                )
            result.peak_rss_mb, result.rss_mb_at_end = memory_mb(child.pid)
            if pacer is not None:
                if capped and not pacer.done():
                    pacer.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await pacer
    finally:
        if pacer is not None and not pacer.done():
            pacer.cancel()
            with contextlib.suppress(BaseException):
                await pacer
        result.exit_code = await asyncio.to_thread(bench.children.stop, child, STOP_WAIT_S)
    result.done, result.capped = done, capped
    result.ready_at, result.end_at = ready_at, end_at
    result.seconds = end_at - ready_at
    attribute_cpu(result, before, after, max(done, 1))
    if profile is not None:
        report_profile(profile, result.loop_cpu_ms_per_adj)
    if result.exit_code not in (0, None):
        result.notes.append(f"service exit code {result.exit_code} after SIGTERM")


@dataclass(frozen=True)
class Snapshot:
    """CPU counters of every process involved, at one moment (seconds; jiffies for the box)."""

    service_user: float
    service_sys: float
    service_loop: float
    sandbox: float
    broker: float
    bench: float
    busy_ticks: int
    total_ticks: int
    core_ticks: dict[int, tuple[int, int]] = field(default_factory=dict)

    @classmethod
    def take(cls, bench: Bench, service: Child) -> Snapshot:
        user, system = cpu_times(service.pid)
        busy, total = machine_busy_ticks()
        return cls(
            user,
            system,
            main_thread_cpu_seconds(service.pid),
            process_cpu(bench.sandbox.child.pid),
            process_cpu(bench.broker_pid),
            self_cpu_seconds(),
            busy,
            total,
            read_core_ticks(),
        )


def attribute_cpu(result: Result, before: Snapshot, after: Snapshot, adjustments: int) -> None:
    """CPU per adjustment of each process, and of the processes this run did not start."""

    def per_adj(seconds: float) -> float:
        return seconds * 1000 / adjustments

    result.cpu_user_ms_per_adj = per_adj(after.service_user - before.service_user)
    result.cpu_sys_ms_per_adj = per_adj(after.service_sys - before.service_sys)
    result.cpu_ms_per_adj = result.cpu_user_ms_per_adj + result.cpu_sys_ms_per_adj
    result.loop_cpu_ms_per_adj = per_adj(after.service_loop - before.service_loop)
    result.sandbox_cpu_ms_per_adj = per_adj(after.sandbox - before.sandbox)
    result.broker_cpu_ms_per_adj = per_adj(after.broker - before.broker)
    result.bench_cpu_ms_per_adj = per_adj(after.bench - before.bench)
    result.core_busy_pct = core_busy_pct(before.core_ticks, after.core_ticks)
    total = after.total_ticks - before.total_ticks
    if total <= 0:
        return
    busy = after.busy_ticks - before.busy_ticks
    result.machine_busy_pct = 100.0 * busy / total
    ours = sum(
        value
        for value in (
            result.cpu_ms_per_adj,
            result.sandbox_cpu_ms_per_adj,
            result.broker_cpu_ms_per_adj,
            result.bench_cpu_ms_per_adj,
        )
        if not math.isnan(value)
    )
    result.others_cpu_ms_per_adj = max(0.0, per_adj(busy / CLOCK_TICKS) - ours)
    result.others_pct = 100.0 * result.others_cpu_ms_per_adj / per_adj(total / CLOCK_TICKS)


def analyse(
    result: Result,
    commands: list[dict[str, Any]],
    sent_at: dict[str, int],
    outcomes: list[OutcomeRecord],
) -> None:
    """Check exactly-once and completion; derive throughput and latencies."""
    ready_at, end_at = result.ready_at, result.end_at
    keys = {c["idempotency_key"] for c in commands}
    originals = [o for o in outcomes if not o.duplicate]
    per_key = Counter(o.key for o in originals)
    unknown = [k for k in per_key if k not in keys]
    repeated = [k for k, n in per_key.items() if n > 1]
    failed = Counter(o.reason for o in originals if o.kind == "failed")
    duplicates = len(outcomes) - len(originals)
    if unknown:
        result.problems.append(f"{len(unknown)} outcomes for commands never sent")
    if repeated:
        result.problems.append(f"{len(repeated)} commands got more than one original outcome")
    if failed:
        result.problems.append(f"failed outcomes: {dict(failed)}")
    if duplicates:
        result.notes.append(f"{duplicates} duplicate outcomes (re-deliveries)")
    expected = set(sent_at) if result.kind == "paced" else keys
    if len(expected) < len(keys):
        result.notes.append(f"only {len(expected)} of {len(keys)} commands were sent")
    missing = len(expected - set(per_key))
    if missing and not result.capped:
        result.problems.append(f"{missing} commands have no outcome")
    completed = sum(1 for o in originals if o.kind == "completed")
    if result.ledger < completed:
        result.problems.append(
            f"the sandbox applied {result.ledger} adjustments for {completed} completed outcomes"
        )
    elif result.ledger > completed:
        note = f"the sandbox applied {result.ledger - completed} adjustments with no outcome"
        (result.notes if result.capped else result.problems).append(
            note + (" (cut off by the stop after the cap)" if result.capped else "")
        )
    stamps = sorted(o.timestamp_ms for o in originals)
    if not stamps:
        result.problems.append("no outcome at all")
        return
    result.first_outcome_after_s = stamps[0] / 1000 - ready_at
    if result.capped:
        window = [s for s in stamps if s / 1000 <= end_at]
        result.seconds = end_at - ready_at
        result.throughput = len(window) / result.seconds if result.seconds > 0 else 0.0
    else:
        window = stamps
        result.seconds = stamps[-1] / 1000 - ready_at
        result.throughput = len(stamps) / result.seconds if result.seconds > 0 else 0.0
    if len(window) > 1 and window[-1] > window[0]:
        result.steady_throughput = (len(window) - 1) / ((window[-1] - window[0]) / 1000)
    if result.kind == "paced" and sent_at:
        first_sent = min(sent_at.values())
        result.seconds = (stamps[-1] - first_sent) / 1000
        result.throughput = len(stamps) / result.seconds if result.seconds > 0 else 0.0
    e2e = [o.timestamp_ms - sent_at[o.key] for o in originals if o.key in sent_at]
    service = [o.timestamp_ms - o.received_ms for o in originals]
    result.e2e_p50_ms = percentile(e2e, 0.50)
    result.e2e_p99_ms = percentile(e2e, 0.99)
    result.service_p50_ms = percentile(service, 0.50)
    result.service_p99_ms = percentile(service, 0.99)
    if result.kind == "paced" and e2e:
        # Where in the run the slow ones were: a start-up transient, or spread throughout.
        first_sent = min(sent_at.values())
        by_second: dict[int, list[float]] = {}
        for o in originals:
            if o.key in sent_at:
                second = (sent_at[o.key] - first_sent) // 1000
                by_second.setdefault(second, []).append(o.timestamp_ms - sent_at[o.key])
        result.p99_by_second_ms = [percentile(by_second[k], 0.99) for k in sorted(by_second)]


# --- the report ----------------------------------------------------------------------------


def fmt(value: float, digits: int = 1) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:,.{digits}f}"


def print_table(results: list[Result], cfg: Config) -> None:
    header = (
        f"{'scenario':<22}{'order':>10}{'parts':>6}{'accounts':>9}{'commands':>9}{'done':>9}"
        f"{'secs':>7}{'adj/s':>8}{'p50 ms':>9}{'p99 ms':>9}{'CPU ms/adj':>11}{'RSS MB':>8}"
    )
    print()
    print(header)
    print("-" * len(header))
    for r in results:
        if r.problems and not r.done:
            print(f"{r.name:<22}  FAILED: {r.problems[0].splitlines()[0]}")
            continue
        p50, p99, in_service = r.primary_latency
        mark = "†" if in_service else " "
        done = f"{r.done:,}{'c' if r.capped else ' '}"
        print(
            f"{r.name:<22}{r.ordering:>10}{r.partitions:>6}{r.accounts:>9,}{r.commands:>9,}"
            f"{done:>9}{r.seconds:>7.1f}{r.throughput:>8,.1f}{fmt(p50, 0) + mark:>9}"
            f"{fmt(p99, 0) + mark:>9}{fmt(r.cpu_ms_per_adj, 2):>11}{r.peak_rss_mb:>8.1f}"
        )
    print("-" * len(header))
    print(
        "adj/s: outcomes / (last outcome's record timestamp - service ready); c: stopped"
        f" after the cap ({cfg.max_seconds:g} s; memory runs {cfg.memory_seconds:g} s), the"
        " rate counts what was done by then."
    )
    print(
        "p50/p99: command->outcome (record timestamps) in the paced row; †: in the backlog"
        " rows every command waits in the backlog, so they show the time in the service"
        " instead (received_at -> outcome record)."
    )
    print(
        "CPU ms/adj: the service process's utime+stime from ready to the last outcome, per"
        " adjustment; RSS MB: its peak (VmHWM)."
    )
    for r in results:
        if r.note:
            print(f"  {r.name}: {r.note}")


def print_breakdown(results: list[Result]) -> None:
    cores = os.cpu_count() or 1
    print()
    print("CPU per adjustment by process (ms), and the rate this box could sustain at that cost")
    header = (
        f"{'scenario':<22}{'svc usr':>8}{'svc sys':>8}{'service':>9}{'sandbox':>9}"
        f"{'broker':>9}{'bench':>9}{'sum':>9}{'others':>9}{'others %':>9}"
        f"{'box busy':>10}{'bound/s':>9}{'svc 1 core':>11}{'steady/s':>10}{'ready s':>9}"
        f"{'1st out s':>10}"
    )
    print(header)
    for r in results:
        if not r.done:
            continue
        parts = [
            r.cpu_ms_per_adj,
            r.sandbox_cpu_ms_per_adj,
            r.broker_cpu_ms_per_adj,
            r.bench_cpu_ms_per_adj,
        ]
        total = sum(p for p in parts if not math.isnan(p))
        bound = cores * 1000 / total if total > 0 else float("nan")
        service_bound = 1000 / r.cpu_ms_per_adj if r.cpu_ms_per_adj > 0 else float("nan")
        print(
            f"{r.name:<22}{fmt(r.cpu_user_ms_per_adj, 2):>8}{fmt(r.cpu_sys_ms_per_adj, 2):>8}"
            f"{fmt(parts[0], 2):>9}{fmt(parts[1], 2):>9}{fmt(parts[2], 2):>9}"
            f"{fmt(parts[3], 2):>9}{fmt(total, 2):>9}{fmt(r.others_cpu_ms_per_adj, 2):>9}"
            f"{fmt(r.others_pct, 0) + ' %':>9}"
            f"{fmt(r.machine_busy_pct, 0) + ' %':>10}"
            f"{fmt(bound, 0):>9}{fmt(service_bound, 0):>11}{fmt(r.steady_throughput, 1):>10}"
            f"{r.ready_s:>9.1f}"
            f"{r.first_outcome_after_s:>10.2f}"
        )
    print(
        f"bound/s = {cores} cores / the sum: what the co-located processes could reach if"
        " nothing but CPU limited them; svc 1 core = 1000 / the service's ms: the rate at"
        " which the service alone fills one core (its event loop is one thread); others: CPU"
        " of processes this run did not start,"
        " per adjustment and as a share of the machine (above a few % the machine was not"
        " quiet and every figure is low)."
    )
    for r in results:
        if not math.isnan(r.idle_cpu_ms_per_s):
            print(
                f"service CPU with nothing to do ({r.name}, before pacing):"
                f" {r.idle_cpu_ms_per_s:.0f} ms per second"
            )


def print_split(plumbing: PlumbingFloor | None, floor_us: float, results: list[Result]) -> None:
    """Each row's service CPU per adjustment as crypto floor + plumbing floor + our overhead."""
    if plumbing is None:
        return
    print()
    if plumbing.problem:
        print(f"plumbing floor: not measured ({plumbing.problem.splitlines()[0]})")
        return
    bare_us = plumbing.cpu_ms_per_adj * 1000
    plumbing_us = bare_us - floor_us
    print(
        f"plumbing floor ({plumbing.name}, {plumbing.records:,} commands, {plumbing.rate:,.0f}/s,"
        f" others {fmt(plumbing.others_pct, 0)} %): the bare pipeline costs {bare_us:,.0f} µs"
        f" per adjustment = crypto floor {floor_us:,.0f} + plumbing floor {plumbing_us:,.0f}"
        f" ({bare_us / floor_us:.2f}x the crypto floor; its event-loop thread"
        f" {fmt(plumbing.loop_cpu_ms_per_adj * 1000, 0)} µs)"
    )
    header = (
        f"{'scenario':<22}{'service µs':>11}{'= crypto':>10}{'+ plumbing':>12}{'+ ours':>9}"
        f"{'svc/crypto':>12}{'svc/bare':>10}{'loop µs':>9}{'others %':>10}"
    )
    print("service CPU per adjustment, split (µs)")
    print(header)
    for r in results:
        if not r.done or math.isnan(r.cpu_ms_per_adj):
            continue
        service_us = r.cpu_ms_per_adj * 1000
        print(
            f"{r.name:<22}{service_us:>11,.0f}{floor_us:>10,.0f}{plumbing_us:>12,.0f}"
            f"{service_us - bare_us:>9,.0f}{service_us / floor_us:>11.2f}x"
            f"{service_us / bare_us:>9.2f}x{fmt(r.loop_cpu_ms_per_adj * 1000, 0):>9}"
            f"{fmt(r.others_pct, 0) + ' %':>10}"
        )
    print(
        "crypto: RSA/AES with `cryptography` alone; plumbing: the bare pipeline of the same"
        " libraries (aiokafka in and out, the signed and encrypted POST on the service's httpx"
        " client, fastavro) minus the crypto; ours: the service minus the bare pipeline;"
        " loop: the service's event-loop thread alone (the rest: SQLite's writer thread)."
    )


@dataclass
class Target:
    what: str
    value: float | None
    target: float
    higher_is_better: bool
    unit: str
    detail: str = ""

    @property
    def verdict(self) -> str:
        if self.value is None or math.isnan(self.value):
            return "n/a"
        ok = self.value >= self.target if self.higher_is_better else self.value <= self.target
        return "PASS" if ok else "MISS"

    @property
    def margin(self) -> str:
        if self.value is None or math.isnan(self.value) or self.target == 0:
            return ""
        share = self.value / self.target
        if self.higher_is_better:
            if share >= 1:
                return f"{(share - 1) * 100:.0f} % above"
            return f"{share * 100:.0f} % of the target, short by {self.target - self.value:,.2f}"
        if share <= 1:
            return f"{(1 - share) * 100:.0f} % under"
        return f"{(share - 1) * 100:.0f} % over"

    def line(self) -> str:
        sign = ">=" if self.higher_is_better else "<="
        value = "-" if self.value is None or math.isnan(self.value) else f"{self.value:,.2f}"
        text = (
            f"  {self.what:<58}{value + self.unit:>12}  {sign} {self.target:,.2f}{self.unit:<4}"
            f" {self.verdict:<5}{self.margin}"
        )
        return text + (f"  [{self.detail}]" if self.detail else "")


def evaluate(bench_results: list[Result], cfg: Config, floor: CryptoFloor) -> list[Target]:
    ok = {r.name: r for r in bench_results if r.done and not r.problems}
    widest = max(cfg.key_spaces)
    targets: list[Target] = []

    def thr(name: str) -> float | None:
        r = ok.get(name)
        return r.throughput if r else None

    p1_widest, baseline = thr(f"sweep-p1-a{widest}"), thr(f"baseline-p1-a{widest}")
    targets.append(
        Target(
            f"key-ordered / partition-serial, 1 partition, {widest:,} accounts",
            p1_widest / baseline if p1_widest and baseline else None,
            TARGET_VS_BASELINE,
            True,
            "x",
            f"{fmt(p1_widest or float('nan'))}/s vs {fmt(baseline or float('nan'))}/s",
        )
    )
    for accounts in cfg.key_spaces:
        one, twelve = thr(f"sweep-p1-a{accounts}"), thr(f"sweep-p12-a{accounts}")
        targets.append(
            Target(
                f"1 partition / 12 partitions, {accounts:,} account{'s' if accounts > 1 else ''}",
                one / twelve if one and twelve else None,
                TARGET_P1_VS_P12,
                True,
                "x",
                f"{fmt(one or float('nan'))}/s vs {fmt(twelve or float('nan'))}/s",
            )
        )
    floor_ms = floor.adjustment_us(cfg.encrypted_responses) / 1000
    for partitions in cfg.partitions:
        r = ok.get(f"sweep-p{partitions}-a{widest}")
        targets.append(
            Target(
                f"service CPU per adjustment / crypto floor, sweep-p{partitions}-a{widest}",
                r.cpu_ms_per_adj / floor_ms if r else None,
                TARGET_CPU_VS_FLOOR,
                False,
                "x",
                f"{fmt(r.cpu_ms_per_adj, 2) if r else '-'} ms vs floor {floor_ms:.2f} ms",
            )
        )
    sweep = [r for r in ok.values() if r.kind == "sweep"]
    best = max(sweep, key=lambda r: r.throughput, default=None)
    ceiling = floor.ceiling_per_s(cfg.encrypted_responses, os.cpu_count() or 1)
    targets.append(
        Target(
            "adjustments/s end to end (best sweep row)",
            best.throughput if best else None,
            TARGET_THROUGHPUT,
            True,
            "/s",
            (best.name if best else "")
            + f"; both sides' crypto alone caps this box at {ceiling:,.0f}/s",
        )
    )
    widest = max(cfg.key_spaces)
    for name, what in (
        (f"paced-p12-a{widest}", "p99 in service (received->acked), half the max rate"),
        (f"paced-quarter-p12-a{widest}", "(not a target) the same at a quarter of it"),
    ):
        paced = ok.get(name)
        targets.append(
            Target(
                what,
                paced.acked_p99_ms if paced else None,
                cfg.latency_ms + TARGET_LATENCY_SLACK_MS,
                False,
                " ms",
                f"{paced.paced_rate:.0f}/s, p50 {fmt(paced.acked_p50_ms, 0)} ms; end to end"
                f" p50/p99 {fmt(paced.e2e_p50_ms, 0)}/{fmt(paced.e2e_p99_ms, 0)} ms; box"
                f" {fmt(paced.machine_busy_pct, 0)} % busy"
                f" ({format_core_busy(paced.core_busy_pct)}); {paced.http_transport}"
                + (f"; service pinned to CPU {paced.service_cores}" if cfg.pin else "")
                if paced
                else "",
            )
        )
    half = ok.get(f"paced-p12-a{widest}")
    targets.append(
        Target(
            "the same, per command: p99 added to its PAS calls",
            half.added_p99_ms if half else None,
            TARGET_LATENCY_SLACK_MS,
            False,
            " ms",
            f"p50 {fmt(half.added_p50_ms, 0)} ms; the PAS calls themselves p50/p99"
            f" {fmt(half.pas_p50_ms, 0)}/{fmt(half.pas_p99_ms, 0)} ms (sandbox latency"
            f" {cfg.latency_ms:.0f} ms)"
            if half
            else "",
        )
    )
    small, large = (ok.get(f"memory-{n}") for n in cfg.memory_backlogs)
    scaled = "" if cfg.memory_backlogs == (10_000, 100_000) else " (scaled down)"
    labels = f"{cfg.memory_backlogs[1]:,} vs {cfg.memory_backlogs[0]:,} backlog{scaled}"
    targets.append(
        Target(
            f"peak RSS ratio, {labels}",
            large.peak_rss_mb / small.peak_rss_mb if large and small else None,
            TARGET_RSS_RATIO,
            False,
            "x",
            f"{large.peak_rss_mb:.1f} MB vs {small.peak_rss_mb:.1f} MB" if large and small else "",
        )
    )
    targets.append(
        Target(
            f"peak RSS with a {cfg.memory_backlogs[1]:,} backlog{scaled}",
            large.peak_rss_mb if large else None,
            TARGET_RSS_MB,
            False,
            " MB",
        )
    )
    return targets


def print_targets(targets: list[Target]) -> None:
    print()
    print("targets of the issue (a MISS does not fail the run)")
    for target in targets:
        print(target.line())


# --- main ----------------------------------------------------------------------------------


async def run_all(bench: Bench, scenarios: list[Scenario]) -> None:
    print("warming the broker up (20,000 records through a 12-partition topic)...", flush=True)
    print(f"    {await warm_up_broker(bench.bootstrap):.1f} s", flush=True)
    if bench.cfg.plumbing_floor:
        widest = max(bench.cfg.key_spaces)
        print(
            f"plumbing floor: the bare pipeline (plumbing_floor.py) over sweep-p12-a{widest}'s"
            f" data, {bench.cfg.commands:,} commands...",
            flush=True,
        )
        bench.plumbing = await measure_plumbing_floor(bench)
        p = bench.plumbing
        if p.problem:
            print(f"    failed: {p.problem}", flush=True)
        else:
            print(
                f"    {p.records:,} in {p.wall_s:.1f} s ({p.rate:,.0f}/s): CPU"
                f" {p.cpu_ms_per_adj:.3f} ms/adj, others {fmt(p.others_pct, 0)} %",
                flush=True,
            )
    for index, sc in enumerate(scenarios, start=1):
        print(
            f"[{index}/{len(scenarios)}] {sc.name}: {sc.kind}, ordering={sc.ordering},"
            f" {sc.partitions} partition{'s' if sc.partitions > 1 else ''}, {sc.accounts:,}"
            f" account{'s' if sc.accounts > 1 else ''}"
            + (f", {sc.commands:,} commands" if sc.commands else ""),
            flush=True,
        )
        try:
            result = await run_scenario(bench, sc)
        except BenchError as exc:
            result = Result(sc.name, sc.kind, sc.ordering, sc.partitions, sc.accounts, sc.commands)
            result.problems.append(str(exc))
            print(f"    failed: {exc}", flush=True)
        else:
            p50, p99, in_service = result.primary_latency
            print(
                f"    {result.done:,} outcomes in {result.seconds:.1f} s"
                f"{' (capped)' if result.capped else ''}: {result.throughput:,.1f}/s,"
                f" p50/p99 {fmt(p50, 0)}/{fmt(p99, 0)} ms{' in service' if in_service else ''},"
                f" CPU {fmt(result.cpu_ms_per_adj, 2)} ms/adj, peak RSS"
                f" {result.peak_rss_mb:.1f} MB  ({result.wall_s:.0f} s wall)",
                flush=True,
            )
            print(f"    {placement(result)}", flush=True)
            if result.kind == "paced":
                print(
                    f"    in service (received -> outcome acknowledged, the service's histogram)"
                    f" p50/p99 {fmt(result.acked_p50_ms, 0)}/{fmt(result.acked_p99_ms, 0)} ms;"
                    f" received -> outcome record stamped p50/p99"
                    f" {fmt(result.service_p50_ms, 0)}/{fmt(result.service_p99_ms, 0)} ms;"
                    f" end to end (command sent -> outcome stamped) p50/p99"
                    f" {fmt(result.e2e_p50_ms, 0)}/{fmt(result.e2e_p99_ms, 0)} ms;"
                    " end-to-end p99 by second of sending: "
                    + " ".join(fmt(v, 0) for v in result.p99_by_second_ms),
                    flush=True,
                )
                print(
                    f"    in service by bucket: {format_window(result.acked_buckets)}; its PAS"
                    f" calls (the client's timing) p50/p99 {fmt(result.pas_p50_ms, 0)}/"
                    f"{fmt(result.pas_p99_ms, 0)} ms, by bucket:"
                    f" {format_window(result.pas_buckets)}",
                    flush=True,
                )
                print(
                    "    added by the service to its PAS calls (in service less their time, per"
                    f" command) p50/p99 {fmt(result.added_p50_ms, 0)}/"
                    f"{fmt(result.added_p99_ms, 0)} ms, by bucket:"
                    f" {format_window(result.added_buckets)}; the store's calls p50/p99: "
                    + ", ".join(
                        f"{step} {fmt(p50, 1)}/{fmt(p99, 1)} ms"
                        for step, (p50, p99) in result.store_ms.items()
                    ),
                    flush=True,
                )
        bench.results.append(result)


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    quiet_logging()
    wall = time.monotonic()
    scenarios = plan(cfg)
    if not scenarios:
        print(f"no scenario matches {', '.join(cfg.only)}", file=sys.stderr)
        return 2
    try:
        pinning = CorePlan.choose(os.sched_getaffinity(0), cfg.service_core) if cfg.pin else None
    except BenchError as exc:
        print(f"bench_throughput: {exc}", file=sys.stderr)
        return 2
    transport = cfg.http_transport or service_transport(dict(os.environ))
    facts = machine_facts(cryptography=cryptography.__version__)
    facts["service_http_transport"] = transport
    facts["pinning"] = (
        {"service": sorted(pinning.service), "others": sorted(pinning.others)} if pinning else None
    )
    print(
        f"points-adjuster throughput benchmark{' (--quick)' if cfg.quick else ''}:"
        f" {len(scenarios)} scenarios, sandbox latency {cfg.latency_ms:g} ms,"
        f" {'plain' if cfg.plain_responses else 'encrypted'} responses,"
        f" {describe_machine(facts)}"
        + (f", service from {cfg.service_root}" if cfg.service_root else "")
        + f", the service's PA_PAS__HTTP_TRANSPORT={transport}"
        + (" (--http-transport)" if cfg.http_transport else " (its default here)")
        + (f", pinned: {pinning.describe()}" if pinning else ", not pinned"),
        flush=True,
    )
    warn_if_busy(facts, "every figure below will be low; see the 'others' column")
    print("measuring the crypto floor (before anything else starts)...", flush=True)
    floor = measure_crypto_floor(cfg.floor_iterations, 3)
    floor_us = floor.adjustment_us(cfg.encrypted_responses)
    print(
        f"crypto floor per adjustment: {floor_us:,.0f} µs = sign {floor.sign_us:.0f} + encrypt"
        f" {floor.encrypt_us:.0f}"
        + (f" + decrypt {floor.decrypt_us:.0f}" if cfg.encrypted_responses else "")
        + f" (RSA-2048, {len(BODY_200)}-byte body, thread CPU, best of {floor.repeats}"
        f" x {floor.iterations})",
        flush=True,
    )
    cores = os.cpu_count() or 1
    print(
        f"the sandbox's side (verify + decrypt{' + encrypt' if cfg.encrypted_responses else ''})"
        f" is {floor.server_us(cfg.encrypted_responses):,.0f} µs more: with both on this box,"
        f" crypto alone caps it at {floor.ceiling_per_s(cfg.encrypted_responses, cores):,.0f}"
        f" adjustments/s on {cores} cores",
        flush=True,
    )
    children = Children()
    workdir = make_workdir("points-adjuster-bench-", cfg.workdir, facts)
    bench: Bench | None = None

    def run() -> None:
        nonlocal bench
        with started_rig(
            children,
            workdir,
            facts,
            latency_ms=cfg.latency_ms,
            plain_responses=cfg.plain_responses,
            bootstrap_servers=cfg.bootstrap_servers,
        ) as rig:
            bench = Bench(**vars(rig), cfg=cfg, cores=pinning)  # vars: the rig's fields
            pin_the_rest(bench)
            asyncio.run(run_all(bench, scenarios))

    try:
        _, status = guarded("bench_throughput", run, None)
    finally:
        children.stop_all()
    results = bench.results if bench is not None else []
    elapsed = time.monotonic() - wall
    if results:
        print_table(results, cfg)
        print_breakdown(results)
        print_split(
            bench.plumbing if bench is not None else None,
            floor.adjustment_us(cfg.encrypted_responses),
            results,
        )
        targets = evaluate(results, cfg, floor)
        print_targets(targets)
        if print_problems(results) and status == 0:
            status = 1
        if cfg.json_path is not None:
            write_json(
                cfg,
                facts,
                floor,
                results,
                targets,
                elapsed,
                bench.plumbing if bench is not None else None,
            )
    finish(status, elapsed, facts, workdir, cfg.keep_workdir, "SQLite stores")
    return status


def write_json(
    cfg: Config,
    facts: dict[str, Any],
    floor: CryptoFloor,
    results: list[Result],
    targets: list[Target],
    elapsed: float,
    plumbing: PlumbingFloor | None = None,
) -> None:
    document = {
        "machine": facts,
        "config": asdict(cfg),
        "crypto_floor_us": {
            "sign": floor.sign_us,
            "encrypt": floor.encrypt_us,
            "decrypt": floor.decrypt_us,
            "verify": floor.verify_us,
            "per_adjustment": floor.adjustment_us(cfg.encrypted_responses),
            "sandbox_side": floor.server_us(cfg.encrypted_responses),
            "box_ceiling_per_s": floor.ceiling_per_s(cfg.encrypted_responses, os.cpu_count() or 1),
            "iterations": floor.iterations,
            "repeats": floor.repeats,
        },
        "plumbing_floor": asdict(plumbing) if plumbing is not None else None,
        "scenarios": [asdict(r) for r in results],
        "targets": [{**asdict(t), "verdict": t.verdict, "margin": t.margin} for t in targets],
        "elapsed_s": elapsed,
    }
    assert cfg.json_path is not None
    write_figures(cfg.json_path, document)


if __name__ == "__main__":
    sys.exit(main())
