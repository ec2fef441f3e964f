"""The steady-window rows of ``bench_stores.py`` (its replicas part) and ``bench_workers.py``:
``points-adjuster run`` processes working off one pre-produced backlog, measured from the
moment every process holds its partitions.

A row: fresh topics (12 partitions), ``backlog`` commands over 10,000 accounts produced
before any service starts, the script's services started and waited for (/readyz, then every
partition held), the window opened no sooner than ``SETTLE_S`` after ready, the backlog run
out or the cap reached, the outcome topics read and checked (exactly one original, completed
outcome per command: ``bench_throughput``'s checks), and the rate and CPU per adjustment
over the window: the script's own processes, and the co-located sandbox, broker and this
process, and how busy the machine was (``Machine``).
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, Self, TypeVar

from bench_throughput import Result, analyse
from benchkit import CLOCK_TICKS, BenchError, Child, machine_busy_ticks
from e2ekit import (
    SERVICE_SHUTDOWN_S,
    OutcomeRecord,
    Rig,
    Topology,
    backlog_commands,
    create_topics,
    discard,
    fmt,
    process_cpu,
    produce_backlog,
    read_outcome_records,
    warm_up_broker,
)

from pa_devkit.demo import service_env
from pa_devkit.localinfra.broker_config import free_port

PARTITIONS = 12
ACCOUNTS = 10_000
OUTCOMES_METRIC = "points_adjuster_outcomes_total"
DUPLICATES_METRIC = "points_adjuster_duplicates_total"
ASSIGNED_METRIC = "points_adjuster_assigned_partitions"
STABLE_TIMEOUT_S = 60.0
SETTLE_S = 3.0
"""The window opens no sooner than this after (the first) /readyz, so that every row's window
leaves out the same start-up (the adaptive concurrency limit's slow start)."""
POLL_S = 0.5
POLL_NEAR_S = 0.1

M = TypeVar("M")
R = TypeVar("R", bound="SteadyRow")


class SteadyRow(Protocol):
    """What the shared steps read and fill in of a script's row."""

    @property
    def name(self) -> str: ...

    backlog: int
    done: int
    capped: bool
    stable_after_s: float
    window_s: float
    per_s: float
    from_ready_per_s: float
    sandbox_cpu_ms: float
    broker_cpu_ms: float
    bench_cpu_ms: float
    machine_busy_pct: float
    others_pct: float
    duplicates: int
    ledger: int
    notes: list[str]
    problems: list[str]

    @property
    def all_cpu_ms(self) -> float: ...


@dataclass(frozen=True)
class Machine:
    """The clock, the co-located processes' CPU (seconds) and the box's jiffies at one moment."""

    at: float
    sandbox: float
    broker: float
    bench: float
    busy_ticks: int
    total_ticks: int

    @classmethod
    def take(cls, rig: Rig) -> Self:
        busy, total = machine_busy_ticks()
        return cls(
            time.time(),
            process_cpu(rig.sandbox.child.pid),
            process_cpu(rig.broker_pid),
            time.process_time(),
            busy,
            total,
        )


def service_run_env(
    rig: Rig, topo: Topology, folder: Path, **settings: str
) -> tuple[dict[str, str], int]:
    """The environment of one ``points-adjuster run`` of a row, and its metrics port (free):
    the development setup against the rig, the row's topics, warnings only, a short
    shutdown, key ordering, then ``settings``."""
    port = free_port()
    env = service_env(rig.bootstrap, rig.sandbox.base_url, folder, port, rig.keyset)
    env.update(topo.env())
    env.update(
        PA_LOG__LEVEL="WARNING",
        PA_SHUTDOWN_TIMEOUT_S=str(SERVICE_SHUTDOWN_S),
        PA_PROCESSING__ORDERING="key",
    )
    env.update(settings)
    return env, port


async def wait_stable(
    services: Sequence[Child], held: Callable[[], Awaitable[Sequence[float]]]
) -> None:
    """Until each process holds partitions (``held``: by process) and they add up to all."""
    deadline = time.monotonic() + STABLE_TIMEOUT_S
    while True:
        for child in services:
            if not child.alive:
                raise BenchError(f"{child.name} exited:\n{child.log_tail()}")
        counts = await held()
        if all(count > 0 for count in counts) and sum(counts) == PARTITIONS:
            return
        if time.monotonic() > deadline:
            raise BenchError(f"partitions held {counts} after {STABLE_TIMEOUT_S:.0f} s")
        await asyncio.sleep(POLL_NEAR_S)


async def wait_done(
    services: Sequence[Child], made: Callable[[], Awaitable[int]], expected: int, deadline: float
) -> bool:
    """Until ``expected`` adjustments in all (``made``: False) or the wall-clock deadline
    (True: capped)."""
    previous, previous_at = 0, time.time()
    while True:
        for child in services:
            if not child.alive:
                raise BenchError(f"{child.name} exited mid-run:\n{child.log_tail()}")
        count = await made()
        now = time.time()
        if count >= expected:
            return False
        if now >= deadline:
            return True
        rate = (count - previous) / max(now - previous_at, 1e-3)
        previous, previous_at = count, now
        near = rate > 0 and (expected - count) / rate < 2.0
        await asyncio.sleep(min(POLL_NEAR_S if near else POLL_S, max(0.0, deadline - now)))


async def run_backlog_row(
    rig: Rig,
    row: SteadyRow,
    topo: Topology,
    seed: int,
    serve: Callable[[], Awaitable[tuple[float, float, M, M]]],
) -> tuple[M, M, list[OutcomeRecord], float]:
    """Fresh topics, the backlog produced, ``serve`` (start the services, run the window;
    returns ready, end and the moments the window opened and closed), the outcomes read and
    checked into ``row``; the topics deleted and the sandbox emptied after.

    Returns (opened, closed, the outcome records, this process's CPU ms per command
    producing the backlog)."""
    names = topo.names
    await create_topics(rig.bootstrap, topo.partitions(PARTITIONS))
    try:
        commands = await asyncio.to_thread(backlog_commands, row.backlog, ACCOUNTS, seed)
        produced = time.process_time()
        sent_at = await produce_backlog(rig.bootstrap, names["command"], commands, rig.codec)
        load_cpu_ms = (time.process_time() - produced) * 1000 / len(commands)
        ready_at, end_at, before, after = await serve()
        records = await read_outcome_records(
            rig.bootstrap, [names["completed"], names["failed"]], rig.codec
        )
        row.ledger = await asyncio.to_thread(rig.sandbox.ledger_count)
        check(row, commands, sent_at, records, ready_at, end_at)
    finally:
        await discard(rig.sandbox, topo)
    return before, after, records, load_cpu_ms


def check(
    row: SteadyRow,
    commands: list[dict[str, Any]],
    sent_at: dict[str, int],
    records: list[OutcomeRecord],
    ready_at: float,
    end_at: float,
) -> None:
    """Exactly one original, completed outcome per command: ``bench_throughput``'s checks."""
    result = Result(row.name, "sweep", "key", PARTITIONS, ACCOUNTS, row.backlog)
    result.capped, result.ready_at, result.end_at, result.ledger = (
        row.capped,
        ready_at,
        end_at,
        row.ledger,
    )
    analyse(result, commands, sent_at, records)
    row.done = len({r.key for r in records if not r.duplicate})
    row.duplicates = sum(1 for r in records if r.duplicate)
    row.from_ready_per_s = result.throughput
    row.notes.extend(result.notes)
    row.problems.extend(result.problems)


def open_window(row: SteadyRow, opened: Machine, records: list[OutcomeRecord]) -> bool:
    """The steady window's rate: original outcomes stamped from ``opened`` on, over the time
    to the last of them; False (a problem noted) when there is none."""
    opened_ms = opened.at * 1000
    stamps = sorted(
        r.timestamp_ms for r in records if not r.duplicate and r.timestamp_ms >= opened_ms
    )
    if not stamps:
        row.problems.append("no outcome in the steady window")
        return False
    row.window_s = stamps[-1] / 1000 - opened.at
    row.per_s = len(stamps) / row.window_s if row.window_s > 0 else float("nan")
    return True


def attribute_rest(row: SteadyRow, before: Machine, after: Machine, adjustments: int) -> None:
    """CPU per adjustment of the sandbox, the broker and this process over the window, then
    how busy the box was and the share of it taken by processes this run did not start (the
    script's own processes already in ``row.all_cpu_ms``)."""

    def per_adj(seconds: float) -> float:
        return seconds * 1000 / adjustments

    row.sandbox_cpu_ms = per_adj(after.sandbox - before.sandbox)
    row.broker_cpu_ms = per_adj(after.broker - before.broker)
    row.bench_cpu_ms = per_adj(after.bench - before.bench)
    total = after.total_ticks - before.total_ticks
    if total > 0:
        row.machine_busy_pct = 100.0 * (after.busy_ticks - before.busy_ticks) / total
        ours = row.all_cpu_ms * adjustments / 1000  # seconds of CPU
        others = (after.busy_ticks - before.busy_ticks) / CLOCK_TICKS - ours
        row.others_pct = max(0.0, 100.0 * others / (total / CLOCK_TICKS))


async def run_rows(
    rig: Rig,
    rows: Sequence[R],
    describe: Callable[[R], str],
    run_one: Callable[[R], Awaitable[None]],
    summary: Callable[[R], str],
) -> None:
    """The broker warmed up, then each row: ``describe``, ``run_one``, ``summary`` (or the
    ``BenchError`` that stopped it, kept as the row's problem)."""
    print("warming the broker up (20,000 records through a 12-partition topic)...", flush=True)
    print(f"    {await warm_up_broker(rig.bootstrap):.1f} s", flush=True)
    for row in rows:
        print(describe(row), flush=True)
        try:
            await run_one(row)
        except BenchError as exc:
            row.problems.append(str(exc))
            print(f"    failed: {exc}", flush=True)
            continue
        print(summary(row), flush=True)


# --- the tables ----------------------------------------------------------------------------

RATE_HEADER = (
    f"{'adjusted':>10}{'dups':>6}{'stable s':>9}{'window s':>9}{'adj/s':>8}{'vs 1':>6}"
    f"{'box busy':>9}{'others':>8}"
)
"""The columns both scripts' rate tables start with, after the row's name."""


def rate_cells(row: SteadyRow, versus: str) -> str:
    """A row's cells under ``RATE_HEADER``; ``versus``: its rate against the 1-process row."""
    return (
        f"{row.done:>9,}{'c' if row.capped else ' '}{row.duplicates:>6,}"
        f"{fmt(row.stable_after_s):>9}{row.window_s:>9.1f}{row.per_s:>8,.0f}{versus:>6}"
        f"{fmt(row.machine_busy_pct, 0) + ' %':>9}{fmt(row.others_pct, 0) + ' %':>8}"
    )


def failed_line(row: SteadyRow, width: int) -> str:
    """The line of a row that did not run: its name and the first line of its problem."""
    return f"{row.name:<{width}}  FAILED: {row.problems[0].splitlines()[0]}"


def print_table(title: str, header: str, lines: Sequence[str], legend: str) -> None:
    """A blank line, ``title``, ``header`` and ``lines`` between rules as wide as it, then
    ``legend``."""
    print()
    print(title)
    print(header)
    print("-" * len(header))
    for line in lines:
        print(line)
    print("-" * len(header))
    print(legend)


def from_ready(rows: Sequence[SteadyRow]) -> str:
    """``1 worker 792/s, 2 workers 725/s``: each row's rate from ready, start-up included."""
    return ", ".join(f"{r.name} {r.from_ready_per_s:,.0f}/s" for r in rows if r.done)


# --- options -------------------------------------------------------------------------------


def add_backlog_arguments(parser: argparse.ArgumentParser, row: str, holders: str) -> None:
    """--backlog, --max-seconds, --latency-ms; ``row`` and ``holders`` name the script's row
    and its processes in the help."""
    parser.add_argument("--backlog", type=int, default=12_000, help=f"commands per {row} (12000)")
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=60.0,
        help=f"stop a {row} this long after its {holders} hold their partitions (60)",
    )
    parser.add_argument("--latency-ms", type=float, default=50.0, help="sandbox latency (50)")


def add_output_arguments(parser: argparse.ArgumentParser) -> None:
    """The options both scripts end with: --json, --seed, --workdir, --keep-workdir."""
    parser.add_argument("--json", type=Path, dest="json_path", help="write every figure here")
    parser.add_argument("--seed", type=int, default=7, help="data seed of the backlog (7)")
    parser.add_argument("--workdir", type=Path, help="parent of the temporary folder")
    parser.add_argument("--keep-workdir", action="store_true", help="keep logs and stores")
