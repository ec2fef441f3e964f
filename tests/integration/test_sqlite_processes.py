"""One SQLite idempotency file written by several processes at once, as the workers of
``run --workers N`` write it: each process its own store (writer thread, connection), the
claims of different owners still exclude each other.

Two child processes claim the same keys at the same time (one in order, the other in
reverse, 32 claims in flight each); every key is CLAIMED by exactly one of them and BUSY
for the other, no call fails on the file's lock (``busy_timeout``), and the one that claimed
a key can finish it while the other cannot.
"""

from __future__ import annotations

import asyncio
import json
import sys
from collections import Counter
from pathlib import Path

import pytest

from service.idempotency.sqlite import SqliteStore

REPO = Path(__file__).resolve().parents[2]
KEYS = 3000
ATTEMPTS = 3

CHILD = r"""
import asyncio, json, sys
from datetime import UTC, datetime
from pathlib import Path
from service.idempotency.sqlite import SqliteStore
from service.domain.store import StoreError

async def main(path, owner, reverse):
    store = await SqliteStore.open(Path(path))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)  # both start claiming at once
    keys = [f"key-{n}" for n in range(int(sys.argv[4]))]
    if reverse:
        keys.reverse()
    slots = asyncio.Semaphore(32)
    statuses = {}
    failures = []

    async def claim(key):
        async with slots:
            try:
                got = await store.claim(key, "fp", owner=owner, now=datetime.now(UTC), lease_s=60)
            except StoreError as exc:
                failures.append(type(exc).__name__)
            else:
                statuses[key] = got.status.name

    await asyncio.gather(*(claim(key) for key in keys))
    await store.close()
    print(json.dumps({"statuses": statuses, "failures": failures}))

asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] == "reverse"))
"""


async def start_child(path: Path, owner: str, order: str) -> asyncio.subprocess.Process:
    """A child with its store open, waiting for a line on its stdin to start claiming."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        str(path),
        owner,
        order,
        str(KEYS),
        cwd=REPO,
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), 60)
    assert line == b"ready\n", line
    return process


async def finish_child(process: asyncio.subprocess.Process) -> dict[str, object]:
    out, err = await asyncio.wait_for(process.communicate(b"go\n"), 120)
    assert process.returncode == 0, err.decode()
    result = json.loads(out)
    assert isinstance(result, dict)
    return result


async def race(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    """Both children claim every key of a new store at ``path`` at once: their statuses."""
    store = await SqliteStore.open(path)  # created first, as the parent of the workers does
    await store.close()
    children = await asyncio.gather(
        start_child(path, "worker-a", "forward"), start_child(path, "worker-b", "reverse")
    )
    first, second = await asyncio.gather(*(finish_child(child) for child in children))
    assert first["failures"] == []
    assert second["failures"] == []
    a, b = first["statuses"], second["statuses"]
    assert isinstance(a, dict)
    assert isinstance(b, dict)
    return a, b


async def test_claims_of_two_processes_on_one_file_exclude_each_other(tmp_path: Path) -> None:
    """Every key claimed by exactly one process, BUSY for the other; no call failed. A
    process can be descheduled for the whole of the other's run on a busy machine, which
    would prove nothing: the race is run again (up to 3 times) until both won keys."""
    for attempt in range(ATTEMPTS):
        path = tmp_path / f"idempotency-{attempt}.sqlite3"
        a, b = await race(path)
        assert len(a) == len(b) == KEYS
        pairs = Counter(tuple(sorted((a[key], b[key]))) for key in a)
        assert pairs == Counter({("BUSY", "CLAIMED"): KEYS}), pairs
        if 0 < sum(status == "CLAIMED" for status in a.values()) < KEYS:
            break
    else:
        pytest.fail(f"no overlap to prove in {ATTEMPTS} races: one process always finished first")

    store = await SqliteStore.open(path)
    try:
        owners: Counter[str] = Counter()
        for n in range(KEYS):
            record = await store.get(f"key-{n}")
            assert record is not None
            owners[record.owner] += 1
            claimed_by = "worker-a" if a[f"key-{n}"] == "CLAIMED" else "worker-b"
            assert record.owner == claimed_by
        assert set(owners) == {"worker-a", "worker-b"}
    finally:
        await store.close()
