"""Core pinning for the end-to-end benchmark (``bench_throughput.py --pin``).

On a machine with two or more cores, the service gets one core to itself and everything else
the benchmark starts (the broker, the sandbox, the load generator, which is the benchmark's
own process) gets the others, so that the service's latency can be read apart from the
competition for cores. Linux's ``sched_setaffinity`` acts on one thread (task) at a time, and
a new thread takes its creator's mask: every existing task of a process and of its
descendants is pinned, and whatever they start later stays on the same cores.

Also reads per-core busy shares from ``/proc/stat`` and which core each thread of a process
last ran on (field 39 of ``/proc/<pid>/task/<tid>/stat``). Linux only.
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from benchkit import BenchError, descendants


@dataclass(frozen=True)
class CorePlan:
    """Which cores the service gets and which the rest of the benchmark gets."""

    service: frozenset[int]
    others: frozenset[int]

    @classmethod
    def choose(cls, available: Iterable[int], service_core: int | None = None) -> CorePlan:
        """The service on ``service_core`` (default: the highest available core), the rest
        on every other available core; needs two or more cores."""
        cores = sorted(set(available))
        if len(cores) < 2:
            raise BenchError(
                f"--pin needs at least 2 cores to keep the service apart; this process may"
                f" run on {len(cores)} ({core_list(cores)})"
            )
        chosen = cores[-1] if service_core is None else service_core
        if chosen not in cores:
            raise BenchError(
                f"--service-core {chosen} is not one of the cores this process may run on"
                f" ({core_list(cores)})"
            )
        return cls(frozenset({chosen}), frozenset(c for c in cores if c != chosen))

    def describe(self) -> str:
        return f"service on CPU {core_list(self.service)}, the rest on CPU {core_list(self.others)}"


def core_list(cores: Iterable[int]) -> str:
    """``0,2-4`` for {0, 2, 3, 4}; ``-`` for none."""
    ordered = sorted(set(cores))
    if not ordered:
        return "-"
    runs: list[str] = []
    start = previous = ordered[0]
    for core in [*ordered[1:], None]:
        if core is not None and core == previous + 1:
            previous = core
            continue
        runs.append(str(start) if start == previous else f"{start}-{previous}")
        if core is not None:
            start = previous = core
    return ",".join(runs)


def task_ids(pid: int) -> list[int]:
    """The thread ids of a live process (empty when it has ended)."""
    try:
        return sorted(int(entry.name) for entry in Path(f"/proc/{pid}/task").iterdir())
    except OSError:
        return []


def pin_process(pid: int, cores: frozenset[int]) -> int:
    """Pin every thread of process ``pid`` to ``cores``; the number of threads pinned (a
    thread that ended meanwhile is skipped)."""
    pinned = 0
    for tid in task_ids(pid):
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(tid, cores)
            pinned += 1
    return pinned


def pin_tree(pid: int, cores: frozenset[int]) -> int:
    """Pin every thread of ``pid`` and of every process below it to ``cores``; the number of
    threads pinned."""
    return sum(pin_process(process, cores) for process in [pid, *descendants(pid)])


def last_cpu(stat_text: str) -> int:
    """The core a task last ran on: field 39 (``processor``) of a ``/proc/.../stat`` line."""
    fields = stat_text[stat_text.rindex(")") + 2 :].split()
    return int(fields[36])  # fields[0] is field 3 (state)


def threads_by_cpu(pid: int) -> dict[int, int]:
    """How many of ``pid``'s threads last ran on each core (read now)."""
    seen: Counter[int] = Counter()
    for tid in task_ids(pid):
        with contextlib.suppress(OSError):
            seen[last_cpu(Path(f"/proc/{pid}/task/{tid}/stat").read_text())] += 1
    return dict(sorted(seen.items()))


def affinity(pid: int) -> frozenset[int]:
    """The cores ``pid``'s main thread may run on (empty when it has ended)."""
    try:
        return frozenset(os.sched_getaffinity(pid))
    except OSError:
        return frozenset()


def core_ticks(stat_text: str) -> dict[int, tuple[int, int]]:
    """(busy, total) jiffies of each core from the text of ``/proc/stat`` (the ``cpuN``
    lines; idle and iowait count as not busy)."""
    ticks: dict[int, tuple[int, int]] = {}
    for line in stat_text.splitlines():
        name, _, rest = line.partition(" ")
        if not name.startswith("cpu") or not name[3:].isdigit():
            continue
        numbers = [int(value) for value in rest.split()]
        idle = numbers[3] + (numbers[4] if len(numbers) > 4 else 0)
        ticks[int(name[3:])] = (sum(numbers) - idle, sum(numbers))
    return ticks


def read_core_ticks() -> dict[int, tuple[int, int]]:
    return core_ticks(Path("/proc/stat").read_text())


def core_busy_pct(
    before: Mapping[int, tuple[int, int]], after: Mapping[int, tuple[int, int]]
) -> dict[int, float]:
    """Each core's busy share (%) between two readings of :func:`core_ticks`; a core with no
    ticks in the window (or missing from either reading) is left out."""
    shares: dict[int, float] = {}
    for core in sorted(set(before) & set(after)):
        busy = after[core][0] - before[core][0]
        total = after[core][1] - before[core][1]
        if total > 0:
            shares[core] = 100.0 * busy / total
    return shares


def format_core_busy(shares: Mapping[int, float]) -> str:
    """``cpu0 88 %, cpu1 71 %``."""
    return ", ".join(f"cpu{core} {share:.0f} %" for core, share in sorted(shares.items())) or "-"
