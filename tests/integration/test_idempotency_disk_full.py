"""The SQLite idempotency store on a full disk, simulated with RLIMIT_FSIZE in a child process.

The file-size limit makes every write past it fail with EFBIG (Python ignores SIGXFSZ), which
SQLite reports as an I/O error: exactly what a full disk looks like to the store. The limit
is set in a child process so that pytest's own files are not affected; the child lifts it
again (the soft limit may go back up to the hard one) to show the store recovers.
"""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

resource = pytest.importorskip("resource")

REPO = Path(__file__).resolve().parents[2]
SECRET_KEY = "key-4242-never-in-messages"
SECRET_FP = "fp-" + "c" * 61

CHILD = r"""
import asyncio, json, os, resource, sys
from datetime import UTC, datetime
from pathlib import Path

from service.domain.store import StoreUnavailableError
from service.idempotency.sqlite import SqliteStore

path, report, secret_key, secret_fp = Path(sys.argv[1]), sys.argv[2], sys.argv[3], sys.argv[4]
T0 = datetime(2025, 3, 4, tzinfo=UTC)


async def main() -> dict:
    seen: dict = {"failures": []}
    store = await SqliteStore.open(path)
    await store.claim("k-0", "f" * 64, owner="w", now=T0, lease_s=60)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    largest = max(os.path.getsize(f"{path}{suffix}") for suffix in ("", "-wal", "-shm"))
    resource.setrlimit(resource.RLIMIT_FSIZE, (largest + 8192, hard))
    failed_key = None
    for i in range(1, 200):  # each claim grows the WAL until a write passes the limit
        key = f"{secret_key}-{i}"
        try:
            await store.claim(key, secret_fp + "x" * 3000, owner="w", now=T0, lease_s=60)
        except StoreUnavailableError as exc:
            failed_key = key
            seen["failures"].append(
                {
                    "type": type(exc).__name__,
                    "message": str(exc),
                    "retriable": exc.retriable,
                    "cause": type(exc.__cause__).__name__,
                    "code": getattr(exc.__cause__, "sqlite_errorname", None),
                }
            )
            break
    if failed_key is not None:
        try:  # still full: the next claim fails the same way, the process goes on
            await store.claim("k-still-full", "f" * 3000, owner="w", now=T0, lease_s=60)
            seen["still_full"] = "claimed"
        except StoreUnavailableError as exc:
            seen["still_full"] = type(exc).__name__
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        after = await store.claim("k-after", "f" * 64, owner="w", now=T0, lease_s=60)
        seen["after"] = after.status.value
        seen["failed_key_stored"] = await store.get(failed_key) is not None
        seen["problem"] = store.problem
    await store.close()
    return seen


result = asyncio.run(main())
Path(report).write_text(json.dumps(result))
"""


def run_child(path: Path, report: Path) -> dict[str, Any]:
    """Run the store in a child process under a file-size limit; what it saw, as JSON."""
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(path), str(report), SECRET_KEY, SECRET_FP],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"the child process died:\n{done.stdout}\n{done.stderr}"
    seen: dict[str, Any] = json.loads(report.read_text())
    return seen


def test_a_full_disk_fails_claims_as_unavailable_and_the_store_recovers(tmp_path: Path) -> None:
    """Writes failing past RLIMIT_FSIZE make claims raise StoreUnavailableError (retriable,
    the sqlite3 error chained, no key or fingerprint in the message) without killing the
    process; once the limit is lifted, claims succeed again on the same open store."""
    path = tmp_path / "idempotency.sqlite3"
    seen = run_child(path, tmp_path / "report.json")
    assert seen["failures"], "no write failed under RLIMIT_FSIZE on this machine"
    failure = seen["failures"][0]
    assert failure["type"] == "StoreUnavailableError"
    assert failure["retriable"] is True
    assert failure["cause"] == "OperationalError"
    assert failure["code"].startswith(("SQLITE_IOERR", "SQLITE_FULL"))
    assert str(path) in failure["message"]
    assert SECRET_KEY not in failure["message"]
    assert SECRET_FP not in failure["message"]
    assert seen["still_full"] == "StoreUnavailableError"
    assert seen["after"] == "CLAIMED"
    assert seen["failed_key_stored"] is False
    assert seen["problem"] is None  # a full disk is not a lost store
    reader = sqlite3.connect(path)
    try:
        keys = {row[0] for row in reader.execute("SELECT key FROM idempotency")}
    finally:
        reader.close()
    assert {"k-0", "k-after"} <= keys
    assert "k-still-full" not in keys
