"""Summarise a py-spy raw profile (collapsed stacks) as CPU per adjustment.

``py-spy record --format raw`` writes one line per distinct stack: the frames from the
outermost to the innermost, separated by ``;``, each ``function (file:line)``, then a space and
the number of samples. Only the main thread's stacks are counted (the event loop's, which
bounds a replica): given that thread's CPU per adjustment over the same window, each of its
samples is worth ``loop_us_per_adj / samples`` µs per adjustment, and:

* by package: where the CPU was spent (the innermost frame's package: ``service.security``,
  ``aiokafka.consumer``, ``service.kafka``, the interpreter's own ``asyncio`` ...), self time;
* by function: the functions with the most inclusive time (a function counted once per
  stack however often it recurs), the service's own and the libraries' alike.

Usage::

    python benchmarks/profile_summary.py PROFILE.txt --loop-us-per-adj 1200 [--top 30]
"""

from __future__ import annotations

import argparse
import re
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

FRAME = re.compile(r"^(?P<function>.*?) \((?P<file>[^()]*?)(?::(?P<line>\d+))?\)$")
SUBPACKAGES = {"aiokafka", "httpx", "aiohttp", "prometheus_client", "service"}
"""Packages whose next level is named too (``aiokafka.consumer``, ``service.kafka``)."""
LAUNCHER_FILES = (
    "(<frozen runpy>)",
    "(service/__main__.py)",
    "(service/cli.py)",
    "(service/eventloop.py)",
    "(asyncio/runners.py)",
    "(benchmarks/plumbing_floor.py)",
)
THREAD_ROOT = "Thread._bootstrap"
"""The outermost frame of every thread but the main one (the event loop's)."""


@dataclass(frozen=True)
class Profile:
    samples: int
    """Samples of the main thread (the event loop)."""
    by_package: Counter[str]
    by_function: Counter[str]
    other_threads: Counter[str]
    """Samples of the other threads (SQLite's writer...), by innermost function: py-spy counts
    a thread waiting in a system call (fsync, a lock) as busy, so these are not CPU."""


def package_of(path: str) -> str:
    """``cryptography``, ``aiokafka.consumer``, ``service.kafka``, ``stdlib asyncio`` ... from
    a frame's file as py-spy prints it (relative to its ``sys.path`` entry)."""
    if path.startswith("<frozen "):
        return "stdlib " + path.removeprefix("<frozen ").removesuffix(">")
    parts = path.split("/")
    if len(parts) == 1:
        return "stdlib " + parts[0].removesuffix(".py")
    top = parts[0]
    if top in SUBPACKAGES and len(parts) > 2:
        return f"{top}.{parts[1]}"
    if top in SUBPACKAGES:
        return f"{top}.{parts[1].removesuffix('.py')}"
    return top


def short(frame: str) -> str:
    match = FRAME.match(frame)
    return f"{match['function']} ({match['file']})" if match else frame


def read(path: Path) -> Profile:
    by_package: Counter[str] = Counter()
    by_function: Counter[str] = Counter()
    other_threads: Counter[str] = Counter()
    total = 0
    for line in path.read_text(errors="replace").splitlines():
        stack, _, count_text = line.rpartition(" ")
        if not stack or not count_text.isdigit():
            continue
        count = int(count_text)
        frames = [f for f in stack.split(";") if FRAME.match(f)]
        if not frames:
            continue
        if frames[0].startswith(THREAD_ROOT):
            other_threads[short(frames[-1])] += count
            continue
        total += count
        innermost = FRAME.match(frames[-1])
        by_package[package_of(innermost["file"]) if innermost else "?"] += count
        for name in {short(f) for f in frames}:
            by_function[name] += count
    return Profile(total, by_package, by_function, other_threads)


def render(profile: Profile, loop_us_per_adj: float, top: int = 25) -> str:
    """The main thread's samples as µs per adjustment of its CPU (``loop_us_per_adj``)."""
    if profile.samples == 0:
        return "(no samples)"
    unit = loop_us_per_adj / profile.samples
    other = sum(profile.other_threads.values())
    lines = [
        f"event-loop thread: {profile.samples:,} samples for {loop_us_per_adj:,.0f} µs of its"
        f" CPU per adjustment: one sample = {unit:.3f} µs per adjustment",
        f"(other threads: {other:,} samples, waits included, not counted below)",
        "",
        f"{'self time by package (the innermost frame)':<50}{'µs/adj':>8}{'share':>8}",
    ]
    for name, count in profile.by_package.most_common(top):
        lines.append(f"  {name:<48}{count * unit:>8.0f}{count / profile.samples:>8.1%}")
    lines += ["", f"{'inclusive time by function':<74}{'µs/adj':>8}{'share':>8}"]
    # The frames that start the process and its event loop say nothing: left out.
    common = [
        (n, c)
        for n, c in profile.by_function.most_common()
        if not n.endswith(LAUNCHER_FILES) and c < 0.95 * profile.samples
    ]
    for name, count in common[:top]:
        lines.append(f"  {name[:72]:<72}{count * unit:>8.0f}{count / profile.samples:>8.1%}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy --format raw output")
    parser.add_argument(
        "--loop-us-per-adj",
        type=float,
        required=True,
        help="the event-loop thread's CPU per adjustment over the sampled window (µs)",
    )
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args(argv)
    print(render(read(args.profile), args.loop_us_per_adj, args.top))
    return 0


if __name__ == "__main__":
    sys.exit(main())
