"""The embedded idempotency store on SQLite: the default for one node.

Durability: the database runs in WAL mode. Writes that precede a PAS call (``claim``,
``resume``) commit with ``synchronous=FULL``: they have reached the disk (fsync) before they
return. The others (``finish``, ``release``, ``park``, ``mark_published``) commit with
``synchronous=NORMAL``: durable across a process crash, and after a machine crash the worst
case is a record that falls back to IN_FLIGHT, which is reconciled, never resent blindly.
So the store survives a process crash and a machine crash of this node. It does not survive
losing the disk, and it cannot be shared between replicas on different machines: run one
replica with it, or use a networked store.

Group commit: one writer thread owns the connection. Every call queues its work and awaits
a future; the thread takes everything queued (up to ``BATCH_MAX`` calls) and runs it in ONE
transaction, each call inside its own savepoint, so a call that fails (``OwnershipLostError``)
fails alone and the others still commit. The transaction is ``synchronous=FULL`` when any
call in it is a ``claim`` or ``resume`` (``NORMAL`` otherwise), and no caller learns its
result before the COMMIT returned: durability is unchanged, a claim or resume has been
fsynced before it returns, and the others are at least as durable as before (fsynced too
when batched with a durable call). The results of a batch reach the event loop in one
``call_soon_threadsafe``: one thread hop and one transaction per batch, not per call.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import queue
import sqlite3
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

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


BATCH_MAX = 256
"""The most calls committed in one transaction."""

IDLE_S = 1.0
"""How often an idle writer checks whether the interpreter is exiting without ``close()``."""

_Outcome = tuple[asyncio.Future[Any], Any, BaseException | None]


class _Op(NamedTuple):
    work: Callable[[], Any]
    future: asyncio.Future[Any]
    durable: bool


def _close_marker() -> None:
    """The work of the op queued by ``close()``: the writer stops when it reaches it."""


def _connect(path: Path) -> sqlite3.Connection:
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA busy_timeout=5000")
        db.executescript(SCHEMA)
        columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}
        if "settle_until" not in columns:  # a database of version 0.1
            db.execute("ALTER TABLE idempotency ADD COLUMN settle_until REAL")
    except BaseException:
        db.close()
        raise
    return db


def _settle(outcomes: list[_Outcome]) -> None:
    """On the event loop: hand each caller its result, skipping callers that went away."""
    for future, value, error in outcomes:
        if future.done():  # cancelled while its batch ran
            continue
        if error is None:
            future.set_result(value)
        else:
            future.set_exception(error)


def _deliver(outcomes: list[_Outcome]) -> None:
    """From the writer thread: one ``call_soon_threadsafe`` per event loop for a batch."""
    by_loop: dict[asyncio.AbstractEventLoop, list[_Outcome]] = {}
    for outcome in outcomes:
        by_loop.setdefault(outcome[0].get_loop(), []).append(outcome)
    for loop, items in by_loop.items():
        with contextlib.suppress(RuntimeError):  # that loop is closed: nobody is waiting
            loop.call_soon_threadsafe(_settle, items)


class SqliteStore:
    """Implements ``IdempotencyStore``; calls are group-committed by one writer thread."""

    _db: sqlite3.Connection  # set on the writer thread before it takes any call

    def __init__(self, path: Path) -> None:
        """Use ``open()``: this only prepares the store, its writer thread is not running."""
        self._path = path
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._closed = False
        self._full = False  # the connection's current PRAGMA synchronous is FULL
        self._transactions = 0
        self._thread = threading.Thread(target=self._serve, name="idempotency-sqlite", daemon=False)
        self._ready: asyncio.Future[None] | None = None

    @classmethod
    async def open(cls, path: Path) -> SqliteStore:
        store = cls(path)
        store._ready = asyncio.get_running_loop().create_future()
        store._thread.start()
        try:
            await store._ready
        except (OSError, sqlite3.Error) as exc:
            store._closed = True
            store._thread.join()  # it has reported the failure and is returning
            raise StartupError(
                "idempotency store",
                f"cannot open SQLite database {path}: {exc}",
                setting="PA_IDEMPOTENCY__SQLITE_PATH",
            ) from exc
        except BaseException:  # cancelled while connecting: let the writer stop on its own
            store._closed = True
            store._queue.put(_Op(_close_marker, store._ready, False))
            raise
        return store

    @property
    def transactions(self) -> int:
        """How many transactions (batches of calls) the writer has committed."""
        return self._transactions

    def _run(self, work: Callable[[], T], *, durable: bool = False) -> asyncio.Future[T]:
        """Queue ``work`` for the writer; the future resolves after its batch committed."""
        if self._closed:
            raise RuntimeError("the SQLite idempotency store is closed")
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(work, future, durable))
        return future

    # -- the writer thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        ready = self._ready
        assert ready is not None
        try:
            self._db = _connect(self._path)
        except BaseException as exc:
            _deliver([(ready, None, exc)])
            return
        _deliver([(ready, None, None)])
        try:
            self._write_forever()
        finally:
            self._db.close()

    def _write_forever(self) -> None:
        get = self._queue.get
        get_nowait = self._queue.get_nowait
        while True:
            try:
                op = get(timeout=IDLE_S)
            except queue.Empty:
                if threading.main_thread().is_alive():
                    continue
                # The interpreter is exiting and nobody called close(): finish what is
                # queued and stop, so this non-daemon thread does not hold the exit up.
                self._closed = True
                try:
                    op = get_nowait()
                except queue.Empty:
                    return
            batch: list[_Op] = []
            stop: _Op | None = None
            while True:
                if op.work is _close_marker:
                    stop = op
                    break
                batch.append(op)
                if len(batch) >= BATCH_MAX:
                    break
                try:
                    op = get_nowait()
                except queue.Empty:
                    break
            if batch:
                self._commit(batch)
            if stop is not None:
                self._db.close()
                _deliver([(stop.future, None, None)])
                return

    def _commit(self, batch: list[_Op]) -> None:
        """Run ``batch`` in one transaction, then hand every caller its result."""
        # A caller cancelled before its batch started is skipped, as run_in_executor skipped
        # work not started yet. (A racy read of another thread's future, but a benign one:
        # only the event loop completes these futures, and a caller cancelled just after this
        # check has its work done, as before.)
        live = [op for op in batch if not op.future.done()]
        if not live:
            return
        db = self._db
        outcomes: list[_Outcome] = []
        try:
            durable = any(op.durable for op in live)
            if durable is not self._full:  # cannot change inside a transaction: set it first
                db.execute("PRAGMA synchronous=FULL" if durable else "PRAGMA synchronous=NORMAL")
                self._full = durable
            db.execute("BEGIN IMMEDIATE")
            try:
                for op in live:
                    db.execute("SAVEPOINT op")
                    try:
                        value = op.work()
                    except Exception as exc:
                        # Undo whatever this call wrote; if even that fails, the transaction
                        # is unusable and the whole batch fails (below).
                        db.execute("ROLLBACK TO op")
                        db.execute("RELEASE op")
                        outcomes.append((op.future, None, exc))
                    else:
                        db.execute("RELEASE op")
                        outcomes.append((op.future, value, None))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except BaseException as exc:  # nothing of this batch was committed
            outcomes = [(op.future, None, exc) for op in live]
        else:
            self._transactions += 1
        _deliver(outcomes)

    def _select(self, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(
            f"SELECT {COLUMNS} FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        return _row_to_record(row) if row else None

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        lease_until = now + timedelta(seconds=lease_s)

        def work() -> Claim:  # inside the batch's transaction: no BEGIN or COMMIT of its own
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
            else:
                assert existing is not None
                return Claim(status, existing)
            record = self._select(key)
            assert record is not None
            return Claim(status, record)

        return await self._run(work, durable=True)

    async def _update_owned(
        self, assignments: str, values: tuple[Any, ...], key: str, owner: str, *, durable: bool
    ) -> None:
        """``UPDATE ... SET <assignments>`` on ``key`` while ``owner`` holds it; else raise."""
        sql = f"UPDATE idempotency SET {assignments} WHERE key = ? AND owner = ?"

        def work() -> None:
            if self._db.execute(sql, (*values, key, owner)).rowcount != 1:
                raise OwnershipLostError("idempotency record is no longer owned by this worker")

        await self._run(work, durable=durable)

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
        await self._update_owned(
            "state = ?, outcome_kind = ?, outcome = ?, attempts = ?, updated_at = ?",
            (state.value, outcome_kind, json.dumps(outcome), attempts, _ts(now)),
            key,
            owner,
            durable=False,
        )

    async def park(
        self, key: str, *, owner: str, now: datetime, settle_until: datetime, lease_until: datetime
    ) -> None:
        await self._update_owned(
            "state = ?, lease_until = ?, settle_until = ?, updated_at = ?",
            (State.RECONCILING.value, _ts(lease_until), _ts(settle_until), _ts(now)),
            key,
            owner,
            durable=False,
        )

    async def resume(self, key: str, *, owner: str, lease_until: datetime, now: datetime) -> None:
        await self._update_owned(
            "state = ?, lease_until = ?, updated_at = ?",
            (State.IN_FLIGHT.value, _ts(lease_until), _ts(now)),
            key,
            owner,
            durable=True,
        )

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
        """Commit what is queued, close the connection on the writer thread, stop it."""
        if self._closed:
            return
        self._closed = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(_close_marker, done, False))
        await done
        self._thread.join()  # it has closed the connection and is returning
