"""1 vs 2 workers (``points-adjuster run --workers N``) on one SQLite store, in one run.

Each row runs ``points-adjuster run`` with ``PA_WORKERS`` = 1 (the single process every
deployment has had: no parent) and then 2 (a parent and two worker processes sharing one
SQLite file in WAL mode), against a local Kafka broker and the PAS sandbox (50 ms, signing
and encryption on) started by this run, as ``bench_stores.py``'s replicas part does (the rig
of ``e2ekit.py`` and the steady-window rows of ``steady.py``): a pre-produced backlog of
``--backlog`` commands over 10,000 accounts on 12 partitions, a fresh SQLite file, topics and
consumer group per row.

The rate is taken over the steady window: from the moment every worker holds partitions
(the ``points_adjuster_assigned_partitions`` samples of the one /metrics, by ``worker``
label, add up to 12, each above 0), and no sooner than 3 s after /readyz, to the last
original outcome's record timestamp. Over the same window, CPU per adjustment (utime+stime
from ``/proc``) of every process: each worker (over the adjustments its samples counted),
the parent, the sandbox, the broker and this process (polling /metrics); the load
generator (this process producing the backlog, before the window) per command; how busy
the machine was, the share of it taken by processes this run did not start, and the bounds
that leave: the box's cores over the sum of CPU per adjustment, and the part of the box the
other processes left over the same sum. Exactly one original, completed outcome per command
is checked as ``bench_throughput.py`` checks it.

Usage (from the repository root)::

    .venv/bin/python benchmarks/bench_workers.py [--backlog 12000] [--workers 1,2]
        [--max-seconds 60] [--json out.json]

Exit code 0 when every row ran and its outcomes checked out, 1 otherwise, 130 when
interrupted. Linux only; needs the jars of ``make kafka-jars``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import math
import os
import re
import sys
import time
import uuid
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
from benchkit import Child, Children, descendants
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
    process_cpu,
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

DEFAULT_WORKERS = (1, 2)
WORKER_LABEL = re.compile(r'worker="(\d+)"')


@dataclass(frozen=True)
class Config:
    backlog: int
    cap_s: float
    latency_ms: float
    workers: tuple[int, ...]
    json_path: Path | None
    seed: int
    workdir: Path | None
    keep_workdir: bool


def parse_args(argv: Sequence[str] | None) -> Config:
    parser = argparse.ArgumentParser(
        description="1 vs 2 workers (run --workers N) on one SQLite store: the rate and the"
        " CPU of every process."
    )
    add_backlog_arguments(parser, "row", "workers")
    parser.add_argument(
        "--workers",
        default=",".join(str(n) for n in DEFAULT_WORKERS),
        help="the rows: worker counts, comma-separated (1,2)",
    )
    add_output_arguments(parser)
    args = parser.parse_args(argv)
    if args.backlog < 1000:
        parser.error("--backlog takes at least 1000")
    try:
        workers = tuple(int(part) for part in args.workers.split(",") if part.strip())
    except ValueError:
        parser.error(f"--workers: {args.workers!r} is not a list of whole numbers")
    if not workers or not all(1 <= n <= PARTITIONS for n in workers):
        parser.error(f"--workers: each count from 1 to {PARTITIONS}")
    return Config(
        backlog=args.backlog,
        cap_s=args.max_seconds,
        latency_ms=args.latency_ms,
        workers=workers,
        json_path=args.json_path,
        seed=args.seed,
        workdir=args.workdir,
        keep_workdir=args.keep_workdir,
    )


# --- one row -------------------------------------------------------------------------------


@dataclass
class WorkersRow:
    """``points-adjuster run`` with ``workers`` workers on one SQLite file."""

    workers: int
    backlog: int
    done: int = 0
    capped: bool = False
    stable_after_s: float = float("nan")
    """From /readyz to every worker holding its partitions."""
    window_s: float = 0.0
    per_s: float = 0.0
    """Original outcomes in the steady window / its length."""
    from_ready_per_s: float = 0.0
    """Every outcome / (the last one - ready): start-up included."""
    outcomes_by_worker: list[int] = field(default_factory=list)
    cpu_ms_by_worker: list[float] = field(default_factory=list)
    loop_share_by_worker: list[float] = field(default_factory=list)
    """Each worker's CPU seconds per second of the window: how full its one core was."""
    parent_cpu_ms: float = float("nan")
    """The parent's CPU per adjustment (NaN with 1 worker: there is no parent)."""
    sandbox_cpu_ms: float = float("nan")
    broker_cpu_ms: float = float("nan")
    bench_cpu_ms: float = float("nan")
    load_cpu_ms: float = float("nan")
    """This process producing the backlog (before the window), per command."""
    machine_busy_pct: float = float("nan")
    others_pct: float = float("nan")
    """CPU of processes this run did not start, as a share of the machine over the window."""
    duplicates: int = 0
    ledger: int = 0
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.workers} worker" + ("s" if self.workers > 1 else "")

    @property
    def workers_cpu_ms(self) -> float:
        """Every worker's CPU over every adjustment of the window."""
        total = sum(self.outcomes_by_worker)
        if not total:
            return float("nan")
        return (
            sum(
                ms * n for ms, n in zip(self.cpu_ms_by_worker, self.outcomes_by_worker, strict=True)
            )
            / total
        )

    @property
    def all_cpu_ms(self) -> float:
        parts = (
            self.workers_cpu_ms,
            self.parent_cpu_ms,
            self.sandbox_cpu_ms,
            self.broker_cpu_ms,
            self.bench_cpu_ms,
        )
        return sum(p for p in parts if not math.isnan(p))

    @property
    def loop_bound_per_s(self) -> float:
        """What the workers could do if each filled its one event-loop core:
        workers x 1000 / the busiest worker's CPU ms per adjustment."""
        worst = max(self.cpu_ms_by_worker, default=float("nan"))
        return self.workers * 1000 / worst if worst > 0 else float("nan")

    def box_bound_per_s(self, cores: int) -> float:
        """The box's cores / the sum of every process's CPU per adjustment."""
        return cores * 1000 / self.all_cpu_ms if self.all_cpu_ms > 0 else float("nan")

    def left_bound_per_s(self, cores: int) -> float:
        """What the other processes of the machine left of it / the same sum."""
        if math.isnan(self.others_pct) or self.all_cpu_ms <= 0:
            return float("nan")
        return cores * (1 - self.others_pct / 100) * 1000 / self.all_cpu_ms


@dataclass(frozen=True)
class Moment:
    """CPU counters and outcome counts of everything involved, at one moment."""

    workers: dict[int, float]
    worker_pids: dict[int, int]
    parent: float
    outcomes: dict[int, int]
    rest: Machine


def by_worker(text: str, name: str) -> dict[int, float]:
    """The samples of ``name`` summed per ``worker`` label (0 when there is none: 1 worker)."""
    found: dict[int, float] = {}
    for line in text.splitlines():
        if not line.startswith(name):
            continue
        sample, _, value = line.rpartition(" ")
        if sample != name and not sample.startswith(name + "{"):
            continue
        match = WORKER_LABEL.search(sample)
        worker = int(match.group(1)) if match else 0
        found[worker] = found.get(worker, 0.0) + float(value)
    return found


def worker_pids(service: Child, workers: int) -> dict[int, int]:
    """Each worker's pid by index: the service itself with 1 worker, else the parent's
    children by their ``--index``."""
    if workers == 1:
        return {0: service.pid}
    pids: dict[int, int] = {}
    for pid in descendants(service.pid):
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"service.workers.child" in argv and b"--index" in argv:
                pids[int(argv[argv.index(b"--index") + 1])] = pid
    return pids


async def adjustments(http: httpx.AsyncClient) -> dict[int, int]:
    """Per worker: outcomes published less the duplicates absorbed (re-deliveries answered
    from the store without a PAS call): the adjustments it made."""
    text = (await http.get("/metrics")).text
    outcomes, dups = by_worker(text, OUTCOMES_METRIC), by_worker(text, DUPLICATES_METRIC)
    return {w: int(n - dups.get(w, 0.0)) for w, n in outcomes.items()}


async def take_moment(rig: Rig, service: Child, workers: int, http: httpx.AsyncClient) -> Moment:
    pids = worker_pids(service, workers)
    outcomes = await adjustments(http)
    return Moment(
        {index: process_cpu(pid) for index, pid in pids.items()},
        pids,
        process_cpu(service.pid) if workers > 1 else float("nan"),
        outcomes,
        Machine.take(rig),
    )


async def run_row(rig: Rig, row: WorkersRow, cfg: Config) -> None:
    run_id = uuid.uuid4().hex[:6]
    topo = Topology(rig.bootstrap, f"workers{row.workers}-{run_id}")
    folder = rig.workdir / f"workers-{row.workers}-{run_id}"  # a fresh SQLite file per row
    folder.mkdir(parents=True, exist_ok=True)
    before, after, records, row.load_cpu_ms = await run_backlog_row(
        rig, row, topo, cfg.seed, lambda: run_service(rig, row, topo, folder, cfg)
    )
    attribute(row, before, after, records)


async def run_service(
    rig: Rig, row: WorkersRow, topo: Topology, folder: Path, cfg: Config
) -> tuple[float, float, Moment, Moment]:
    """Start the service, wait for the steady assignment, run the backlog out.

    Returns (ready, end, the moment the window opened, the moment it closed)."""
    env, port = service_run_env(rig, topo, folder, PA_WORKERS=str(row.workers))
    service = start_service(rig.children, f"service {row.name}", env, folder)
    try:
        async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:

            async def held() -> list[float]:
                counts = by_worker((await http.get("/metrics")).text, ASSIGNED_METRIC)
                return [counts.get(index, 0.0) for index in range(row.workers)]

            async def made() -> int:
                return sum((await adjustments(http)).values())

            ready_at = await wait_ready(service, http)
            await wait_stable([service], held)
            row.stable_after_s = time.time() - ready_at
            await asyncio.sleep(max(0.0, ready_at + SETTLE_S - time.time()))
            before = await take_moment(rig, service, row.workers, http)
            row.capped = await wait_done([service], made, row.backlog, before.rest.at + cfg.cap_s)
            after = await take_moment(rig, service, row.workers, http)
    finally:
        code = await asyncio.to_thread(rig.children.stop, service, STOP_WAIT_S)
        if code not in (0, None):
            row.notes.append(f"{service.name} exit code {code} after SIGTERM")
    if before.worker_pids != after.worker_pids:
        row.problems.append(f"a worker was restarted in the window: {service.log_tail()}")
    return ready_at, after.rest.at, before, after


def attribute(row: WorkersRow, before: Moment, after: Moment, records: list[OutcomeRecord]) -> None:
    """The steady window's rate, and CPU per adjustment of every process over it."""
    if not open_window(row, before.rest, records):
        return
    indexes = range(row.workers)
    row.outcomes_by_worker = [after.outcomes.get(i, 0) - before.outcomes.get(i, 0) for i in indexes]
    spent = [after.workers.get(i, math.nan) - before.workers.get(i, math.nan) for i in indexes]
    row.cpu_ms_by_worker = [
        s * 1000 / max(1, n) for s, n in zip(spent, row.outcomes_by_worker, strict=True)
    ]
    seconds = after.rest.at - before.rest.at
    row.loop_share_by_worker = [s / seconds if seconds > 0 else math.nan for s in spent]
    made = max(1, sum(row.outcomes_by_worker))
    row.parent_cpu_ms = (after.parent - before.parent) * 1000 / made
    attribute_rest(row, before.rest, after.rest, made)


async def run_all_rows(rig: Rig, cfg: Config) -> list[WorkersRow]:
    rows = [WorkersRow(n, cfg.backlog) for n in cfg.workers]
    await run_rows(
        rig,
        rows,
        lambda row: (
            f"{row.name}: points-adjuster run --workers {row.workers} on one SQLite file,"
            f" {row.backlog:,} commands, {ACCOUNTS:,} accounts, {PARTITIONS} partitions"
        ),
        lambda row: run_row(rig, row, cfg),
        lambda row: (
            f"    {row.per_s:,.1f}/s over {row.window_s:.1f} s (steady, after"
            f" {fmt(row.stable_after_s)} s); worker CPU ms/adj"
            f" {' / '.join(fmt(v, 2) for v in row.cpu_ms_by_worker)}; box"
            f" {fmt(row.machine_busy_pct, 0)} % busy, others {fmt(row.others_pct, 0)} %"
        ),
    )
    return rows


def print_rows(rows: list[WorkersRow]) -> None:
    cores = os.cpu_count() or 1
    single = next((r for r in rows if r.workers == 1 and not r.problems), None)
    lines: list[str] = []
    for r in rows:
        if r.problems and not r.done:
            lines.append(failed_line(r, 11))
            continue
        versus = f"{r.per_s / single.per_s:.2f}" if single and single.per_s > 0 else "-"
        lines.append(
            f"{r.name:<11}{rate_cells(r, versus)}"
            f"{fmt(r.loop_bound_per_s, 0):>13}{fmt(r.box_bound_per_s(cores), 0):>12}"
            f"{fmt(r.left_bound_per_s(cores), 0):>13}"
        )
    print_table(
        "Workers on one SQLite store: the steady rate",
        f"{'row':<11}{RATE_HEADER}{'loop bound/s':>13}{'box bound/s':>12}{'left bound/s':>13}",
        lines,
        "adjusted: commands with their one original outcome (c: stopped at the cap); dups:"
        " outcomes published again for re-delivered commands (answered from the store, no PAS"
        " call); stable s: from /readyz until every worker held partitions; adj/s: original"
        " outcomes whose record timestamp falls in the window (from stable, and at least"
        f" {SETTLE_S:g} s after ready, to the last outcome) / its length; vs 1: against 1"
        f" worker; box busy: all {cores} cores over the window; others: the share of them"
        " used by processes this run did not start; loop bound: workers x 1000 / the busiest"
        " worker's CPU ms per adjustment (each worker's event loop full); box bound:"
        f" {cores} cores / the sum below; left bound: what the others left of the {cores}"
        " cores / the same sum.",
    )
    lines = []
    for r in rows:
        if not r.done:
            continue
        each = [
            f"{ms:.2f} ({n:,}, {share:.0%})"
            for ms, n, share in zip(
                r.cpu_ms_by_worker, r.outcomes_by_worker, r.loop_share_by_worker, strict=True
            )
        ] + ["-", "-"]
        lines.append(
            f"{r.name:<11}{each[0]:>18}{each[1]:>18}{fmt(r.parent_cpu_ms, 3):>8}"
            f"{fmt(r.sandbox_cpu_ms, 2):>8}{fmt(r.broker_cpu_ms, 2):>7}"
            f"{fmt(r.bench_cpu_ms, 2):>7}{fmt(r.all_cpu_ms, 2):>7}{fmt(r.load_cpu_ms, 3):>9}"
        )
    print_table(
        "CPU per adjustment over the window (ms), by process",
        f"{'row':<11}{'worker 0':>18}{'worker 1':>18}{'parent':>8}{'sandbox':>8}"
        f"{'broker':>7}{'bench':>7}{'sum':>7}{'load gen':>9}",
        lines,
        "worker N: that process's utime+stime over the adjustments its samples counted in the"
        " window (in brackets, with its CPU seconds per second of the window: how full its"
        " one core was); with 1 worker, the service process itself; parent: the parent of"
        " --workers N (its merged /metrics scrapes included); sandbox, broker, bench (this"
        " process polling /metrics): the co-located rest; sum: all of them (SQLite runs in"
        " the workers); load gen: this process producing the backlog, per command, before"
        f" the window. From ready, start-up and rebalance included: {from_ready(rows)}.",
    )


# --- main ----------------------------------------------------------------------------------


def run(cfg: Config, facts: dict[str, Any], workdir: Path) -> list[WorkersRow]:
    with started_rig(Children(), workdir, facts, latency_ms=cfg.latency_ms) as rig:
        return asyncio.run(run_all_rows(rig, cfg))


def main(argv: Sequence[str] | None = None) -> int:
    cfg = parse_args(argv)
    quiet_logging()
    wall = time.monotonic()
    facts = machine_facts()
    print(
        f"points-adjuster workers benchmark: rows {', '.join(map(str, cfg.workers))};"
        f" {describe_machine(facts)}",
        flush=True,
    )
    warn_if_busy(facts, "the figures below will be low")
    workdir = make_workdir("points-adjuster-bench-workers-", cfg.workdir, facts)
    empty: list[WorkersRow] = []
    rows, status = guarded("bench_workers", lambda: run(cfg, facts, workdir), empty)
    elapsed = time.monotonic() - wall
    if rows:
        print_rows(rows)
    if print_problems(rows):
        status = status or 1
    if cfg.json_path is not None and rows:
        write_json(cfg, facts, rows, elapsed)
    finish(status, elapsed, facts, workdir, cfg.keep_workdir, "SQLite files")
    return status


def write_json(cfg: Config, facts: dict[str, Any], rows: list[WorkersRow], elapsed: float) -> None:
    cores = os.cpu_count() or 1
    document = {
        "machine": facts,
        "config": asdict(cfg),
        "rows": [
            {
                **asdict(r),
                "workers_cpu_ms": r.workers_cpu_ms,
                "all_cpu_ms": r.all_cpu_ms,
                "loop_bound_per_s": r.loop_bound_per_s,
                "box_bound_per_s": r.box_bound_per_s(cores),
                "left_bound_per_s": r.left_bound_per_s(cores),
            }
            for r in rows
        ],
        "elapsed_s": elapsed,
    }
    assert cfg.json_path is not None
    write_figures(cfg.json_path, document)


if __name__ == "__main__":
    sys.exit(main())
