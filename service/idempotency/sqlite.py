"""The embedded idempotency store on SQLite: the default for one node.

Durability: the database runs in WAL mode. Writes that precede a PAS call (``claim``,
``resume``) commit with ``synchronous=FULL``: they have reached the disk (fsync) before they
return. The others (``finish``, ``release``, ``park``, ``mark_published``) commit with
``synchronous=NORMAL``: durable across a process crash, and after a machine crash the worst
case is a record that falls back to IN_FLIGHT, which is reconciled, never resent blindly.
So the store survives a process crash and a machine crash of this node. It does not survive
losing the disk, and it cannot be shared between replicas on different machines: run one
replica with it, or use a networked store.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

from service.errors import StartupError
from service.idempotency.base import (
    TERMINAL,
    Claim,
    ClaimStatus,
    IdempotencyRecord,
    OwnershipLostError,
    State,
    decide_claim,
)

T = TypeVar("T")

SCHEMA = """
CREATE TABLE IF NOT EXISTS idempotency (
    key          TEXT PRIMARY KEY,
    fingerprint  TEXT NOT NULL,
    state        TEXT NOT NULL,
    owner        TEXT NOT NULL,
    lease_until  REAL NOT NULL,
    attempts     INTEGER NOT NULL,
    created_at   REAL NOT NULL,
    updated_at   REAL NOT NULL,
    outcome_kind TEXT,
    outcome      TEXT,
    published    INTEGER NOT NULL DEFAULT 0,
    settle_until REAL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS idempotency_updated_at ON idempotency (updated_at);
"""

COLUMNS = (
    "key, fingerprint, state, owner, lease_until, attempts, created_at, updated_at, "
    "outcome_kind, outcome, published, settle_until"
)


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _row_to_record(row: tuple[Any, ...]) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row[0],
        fingerprint=row[1],
        state=State(row[2]),
        owner=row[3],
        lease_until=_dt(row[4]),
        attempts=row[5],
        created_at=_dt(row[6]),
        updated_at=_dt(row[7]),
        outcome_kind=row[8],
        outcome=json.loads(row[9]) if row[9] else None,
        published=bool(row[10]),
        settle_until=_dt(row[11]) if row[11] is not None else None,
    )


class SqliteStore:
    """Implements ``IdempotencyStore``; every call runs on one dedicated thread."""

    def __init__(self, connection: sqlite3.Connection, executor: ThreadPoolExecutor) -> None:
        self._db = connection
        self._executor = executor

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="idempotency-sqlite")

        def connect() -> sqlite3.Connection:
            path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.execute("PRAGMA busy_timeout=5000")
            db.executescript(SCHEMA)
            columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}
            if "settle_until" not in columns:  # a database of version 0.1
                db.execute("ALTER TABLE idempotency ADD COLUMN settle_until REAL")
            return db

        try:
            db = await asyncio.get_running_loop().run_in_executor(executor, connect)
        except (OSError, sqlite3.Error) as exc:
            executor.shutdown(wait=False)
            raise StartupError(
                "idempotency store",
                f"cannot open SQLite database {path}: {exc}",
                setting="PA_IDEMPOTENCY__SQLITE_PATH",
            ) from exc
        return cls(db, executor)

    async def _run(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    def _durable(self, work: Callable[[], T]) -> Callable[[], T]:
        """``work`` with its commit fsynced (synchronous=FULL for that transaction)."""

        def run() -> T:
            self._db.execute("PRAGMA synchronous=FULL")
            try:
                return work()
            finally:
                self._db.execute("PRAGMA synchronous=NORMAL")

        return run

    def _select(self, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(
            f"SELECT {COLUMNS} FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        return _row_to_record(row) if row else None

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        lease_until = now + timedelta(seconds=lease_s)

        def work() -> Claim:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                existing = self._select(key)
                status = decide_claim(existing, fingerprint, owner, now)
                if status is ClaimStatus.CLAIMED:
                    self._db.execute(
                        "INSERT INTO idempotency (key, fingerprint, state, owner, lease_until,"
                        " attempts, created_at, updated_at) VALUES (?, ?, ?, ?, ?, 0, ?, ?)",
                        (
                            key,
                            fingerprint,
                            State.IN_FLIGHT.value,
                            owner,
                            _ts(lease_until),
                            _ts(now),
                            _ts(now),
                        ),
                    )
                elif status is ClaimStatus.TAKEN_OVER or status is ClaimStatus.RECONCILE:
                    self._db.execute(
                        "UPDATE idempotency SET owner = ?, lease_until = ?, updated_at = ?"
                        " WHERE key = ?",
                        (owner, _ts(lease_until), _ts(now), key),
                    )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            record = self._select(key)
            assert record is not None
            return Claim(status, record)

        return await self._run(self._durable(work))

    async def finish(
        self,
        key: str,
        *,
        owner: str,
        state: State,
        outcome_kind: str,
        outcome: dict[str, Any],
        attempts: int,
        now: datetime,
    ) -> None:
        def work() -> None:
            cursor = self._db.execute(
                "UPDATE idempotency SET state = ?, outcome_kind = ?, outcome = ?, attempts = ?,"
                " updated_at = ? WHERE key = ? AND owner = ?",
                (state.value, outcome_kind, json.dumps(outcome), attempts, _ts(now), key, owner),
            )
            if cursor.rowcount != 1:
                raise OwnershipLostError("idempotency record is no longer owned by this worker")

        await self._run(work)

    async def _move(
        self, key: str, owner: str, state: State, lease_until: datetime, now: datetime
    ) -> None:
        def work() -> None:
            cursor = self._db.execute(
                "UPDATE idempotency SET state = ?, lease_until = ?, updated_at = ?"
                " WHERE key = ? AND owner = ?",
                (state.value, _ts(lease_until), _ts(now), key, owner),
            )
            if cursor.rowcount != 1:
                raise OwnershipLostError("idempotency record is no longer owned by this worker")

        await self._run(self._durable(work))

    async def park(
        self, key: str, *, owner: str, now: datetime, settle_until: datetime, lease_until: datetime
    ) -> None:
        def work() -> None:
            cursor = self._db.execute(
                "UPDATE idempotency SET state = ?, lease_until = ?, settle_until = ?,"
                " updated_at = ? WHERE key = ? AND owner = ?",
                (
                    State.RECONCILING.value,
                    _ts(lease_until),
                    _ts(settle_until),
                    _ts(now),
                    key,
                    owner,
                ),
            )
            if cursor.rowcount != 1:
                raise OwnershipLostError("idempotency record is no longer owned by this worker")

        await self._run(work)

    async def resume(self, key: str, *, owner: str, lease_until: datetime, now: datetime) -> None:
        await self._move(key, owner, State.IN_FLIGHT, lease_until, now)

    async def prune(self, *, older_than: datetime) -> int:
        terminal = tuple(state.value for state in TERMINAL)

        def work() -> int:
            cursor = self._db.execute(
                "DELETE FROM idempotency WHERE updated_at < ? AND state IN (?, ?, ?)",
                (_ts(older_than), *terminal),
            )
            return int(cursor.rowcount)

        return await self._run(work)

    async def release(self, key: str, *, owner: str) -> None:
        def work() -> None:
            self._db.execute(
                "DELETE FROM idempotency WHERE key = ? AND owner = ? AND state = ?",
                (key, owner, State.IN_FLIGHT.value),
            )

        await self._run(work)

    async def mark_published(self, key: str) -> None:
        def work() -> None:
            self._db.execute("UPDATE idempotency SET published = 1 WHERE key = ?", (key,))

        await self._run(work)

    async def get(self, key: str) -> IdempotencyRecord | None:
        return await self._run(lambda: self._select(key))

    async def close(self) -> None:
        await self._run(self._db.close)
        self._executor.shutdown(wait=True)
