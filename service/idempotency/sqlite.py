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

Identity: the ``meta`` table holds one row, written with the schema when the file is created:
the schema version, the store's UUID (``identity``) and when it was created, and when a
start-up adopted it (``adopt``). A file of the earlier schema gets its row on the first open.

Losing the file: the writer notes the file's device and inode when it opens it, and before
each batch (and about once a second while idle) checks that the path still names that file.
A file deleted or replaced under an open connection goes on taking writes that nobody will
ever read again, so once the check fails the store is lost for good: ``problem`` says why,
every call raises ``StoreLostError``, and nothing is written or created at the path again.
One thing is cleaned up: SQLite keeps the WAL by name (``<path>-wal``) and does not remove it
when closing a file that was unlinked or replaced; left there, its frames would be replayed
into whatever database appears at the path (a restored copy, or a new empty one on restart,
which would then look like an old store). So on a loss the writer checkpoints the WAL into
the file it still has open and truncates it. (A process that opened a replacement in the
second before the loss was seen already shares that WAL: replacing a database under a running
service is never safe, this only makes it noticed.) And ``open`` refuses a path whose
database is missing while a non-empty WAL of it remains.

Outcomes: the ``outcome`` column keeps the JSON of an outcome's event record, epoch
milliseconds for instants (``service.codec.outcome``), as every version has; a row whose
outcome cannot be read back fails the call that read it with ``StoreError``.

One owner: the service opens its store ``exclusive``: it holds an exclusive ``flock`` on a
file beside the database (``<path>.lock``, holding the owner's pid) for as long as the store is
open, and a second ``run`` on the same file is refused at start-up, naming the pid that holds
it; the kernel lets go of the lock when the process ends, however it ends. Several replicas
must share a networked store instead (SQLite's own locks do not hold across hosts on a network
file system). Tools that only read (``check``, ``dlq``) open it without the lock.

Workers of one owner: ``run --workers N`` takes the lock in its parent process and hands the
descriptor to its N workers; each opens the store with ``inherited_lock`` (checked to be that
lock, held) and its own writer thread and connection. On one host SQLite serialises writers
across processes: every batch runs in ``BEGIN IMMEDIATE`` (the database's write lock, waited
for up to ``busy_timeout``) and each call reads its record inside that transaction, so claims
of different workers (different owners) exclude each other as the calls of one process do.
The lock is held as long as any of them runs: a second ``run`` is refused until all are gone.
The rest holds across processes as it does in one: the file check compares the path with the
device and inode each process opened (the same file for all), SQLite's automatic checkpoint
runs in whichever process commits past its threshold, and each worker prunes on its own
schedule (the same idempotent ``DELETE``: a second finds nothing).

I/O failures: a batch that fails on the database (disk full, locked past ``busy_timeout``, an
I/O error) fails its calls with ``StoreUnavailableError`` (the ``sqlite3`` error chained); the
connection stays open and later batches try again.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import queue
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import structlog

from service.codec.outcome import outcome_from_record, stored_record
from service.domain.outcome import Outcome
from service.domain.store import (
    PRUNABLE,
    Claim,
    ClaimStatus,
    IdempotencyRecord,
    OwnershipLostError,
    State,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
    decide_claim,
    next_token,
)
from service.errors import StartupError

T = TypeVar("T")

log = structlog.get_logger("service.idempotency")

SCHEMA_VERSION = 3
"""1: the idempotency table alone (``settle_until`` added in 0.2); 2: the ``meta`` table;
3: the fencing ``token`` column (rows of earlier versions read as token 0)."""

SCHEMA = (
    """
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
        settle_until REAL,
        token        INTEGER NOT NULL DEFAULT 0
    ) WITHOUT ROWID
    """,
    "CREATE INDEX IF NOT EXISTS idempotency_updated_at ON idempotency (updated_at)",
    """
    CREATE TABLE IF NOT EXISTS meta (
        id             INTEGER PRIMARY KEY CHECK (id = 1),
        schema_version INTEGER NOT NULL,
        store_id       TEXT NOT NULL,
        created_at     REAL NOT NULL,
        adopted_at     REAL
    )
    """,
)

COLUMNS = (
    "key, fingerprint, state, owner, lease_until, attempts, created_at, updated_at, "
    "outcome_kind, outcome, published, settle_until, token"
)


def _ts(moment: datetime) -> float:
    return moment.timestamp()


def _dt(value: float) -> datetime:
    return datetime.fromtimestamp(value, UTC)


def _row_to_record(row: tuple[Any, ...], store: str) -> IdempotencyRecord:
    return IdempotencyRecord(
        key=row[0],
        fingerprint=row[1],
        state=State(row[2]),
        owner=row[3],
        lease_until=_dt(row[4]),
        attempts=row[5],
        created_at=_dt(row[6]),
        updated_at=_dt(row[7]),
        outcome=_read_outcome(row[8], row[9], store) if row[9] else None,
        published=bool(row[10]),
        settle_until=_dt(row[11]) if row[11] is not None else None,
        token=row[12],
    )


def _write_outcome(outcome: Outcome) -> str:
    """The outcome as the ``outcome`` column keeps it: the JSON of its event record."""
    return json.dumps(stored_record(outcome))


def _read_outcome(kind: str | None, text: str, store: str) -> Outcome:
    """The outcome kept in the ``outcome`` column (of kind ``outcome_kind``)."""
    try:
        return outcome_from_record(str(kind), json.loads(text))
    except ValueError as exc:  # a damaged row, or one of an incompatible version
        raise StoreError(
            f"idempotency store {store}: the outcome of a record cannot be read back: {exc}",
            store=store,
        ) from None


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


def _probe_marker() -> None:
    """The work of the op queued by ``probe()``: answered after the file check, no transaction."""


FileId = tuple[int, int]
"""(st_dev, st_ino): which file a path named."""


class _Opened(NamedTuple):
    db: sqlite3.Connection
    store_id: str
    created: bool
    file_id: FileId


def _prepare(db: sqlite3.Connection) -> tuple[str, bool]:
    """Inside a write transaction: the schema, and the meta row; ``(store_id, created)``."""
    for statement in SCHEMA:
        db.execute(statement)
    columns = {row[1] for row in db.execute("PRAGMA table_info(idempotency)")}
    if "settle_until" not in columns:  # a database of version 0.1
        db.execute("ALTER TABLE idempotency ADD COLUMN settle_until REAL")
    if "token" not in columns:  # a database of schema version 2 or earlier
        db.execute("ALTER TABLE idempotency ADD COLUMN token INTEGER NOT NULL DEFAULT 0")
    has_records = bool(db.execute("SELECT EXISTS (SELECT 1 FROM idempotency)").fetchone()[0])
    row = db.execute("SELECT store_id, adopted_at FROM meta WHERE id = 1").fetchone()
    if row is None:
        # A file with records but no row comes from before identities: it is in use already.
        store_id = str(uuid.uuid4())
        now = time.time()
        db.execute(
            "INSERT INTO meta (id, schema_version, store_id, created_at, adopted_at)"
            " VALUES (1, ?, ?, ?, ?)",
            (SCHEMA_VERSION, store_id, now, now if has_records else None),
        )
        return store_id, not has_records
    db.execute(
        "UPDATE meta SET schema_version = ? WHERE id = 1 AND schema_version < ?",
        (SCHEMA_VERSION, SCHEMA_VERSION),
    )
    return str(row[0]), row[1] is None and not has_records


def _wal_of(path: Path) -> Path:
    return path.with_name(path.name + "-wal")


def _connect(path: Path) -> _Opened:
    """Open (or create) the database, bring its schema up to date, note which file it is."""
    wal = _wal_of(path)
    with contextlib.suppress(FileNotFoundError, NotADirectoryError):
        if not path.exists() and wal.stat().st_size > 0:
            raise FileExistsError(
                f"{wal} remains but the database itself is gone (deleted while in use?);"
                " SQLite would replay it into a new, empty database. Restore the database"
                " next to it, or move the -wal and -shm files away for a deliberate reset"
            )
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    try:
        # First: with workers of one run (module doc) another process may be writing, and
        # even switching to WAL (a no-op once the file is in WAL mode) may wait for it.
        db.execute("PRAGMA busy_timeout=5000")
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")  # the identity is on disk before it is used
        db.execute("BEGIN IMMEDIATE")
        try:
            store_id, created = _prepare(db)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    db.execute("ROLLBACK")
            raise
        db.execute("PRAGMA synchronous=NORMAL")
        stat = os.stat(path)
    except BaseException:
        db.close()
        raise
    return _Opened(db, store_id, created, (stat.st_dev, stat.st_ino))


def _lock_path(path: Path) -> Path:
    return path.with_name(path.name + ".lock")


def hold_owner_lock(path: Path) -> int:
    """Take the owner's lock of the store at ``path``: the descriptor that holds it; raise
    ``StartupError`` when another process holds it (naming its pid) or it cannot be taken."""
    lock = _lock_path(path.absolute())
    try:
        lock.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise StartupError(
            "idempotency store",
            f"cannot open the lock file {lock}: {exc.strerror or exc}",
            setting="PA_IDEMPOTENCY__SQLITE_PATH",
        ) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
        os.close(fd)
        raise StartupError(
            "idempotency store",
            f"SQLite database {path} is already in use by another process (pid {holder}, per"
            f" {lock}): one `run` per SQLite file. Stop the other one, or give several replicas"
            " a shared store (PA_IDEMPOTENCY__DSN=postgresql://... or redis://...)",
            setting="PA_IDEMPOTENCY__SQLITE_PATH",
        ) from exc
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
    return fd


def check_inherited_lock(path: Path, fd: int) -> None:
    """Check that descriptor ``fd``, inherited from the process that started this one, holds
    the owner's lock of the store at ``path`` (a worker of ``run --workers N``); else raise
    ``StartupError``. The descriptor shares the owner's open file description, so taking the
    lock through it succeeds while the owner's lock holds, and fails for anyone else."""
    lock = _lock_path(path.absolute())
    problem = ""
    try:
        held, named = os.fstat(fd), os.stat(lock)
    except OSError as exc:
        problem = exc.strerror or type(exc).__name__
    else:
        if (held.st_dev, held.st_ino) != (named.st_dev, named.st_ino):
            problem = "the descriptor is not that lock file"
        else:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as exc:
                problem = f"the lock is held by another process ({exc.strerror or exc})"
    if problem:
        raise StartupError(
            "idempotency store",
            f"a worker must run under the owner's lock of {path} ({lock}): {problem}",
            setting="PA_IDEMPOTENCY__SQLITE_PATH",
        )


def _is_io_failure(exc: BaseException) -> bool:
    """A failure of the database file rather than of our SQL: disk full, locked, I/O, corrupt."""
    return isinstance(exc, sqlite3.OperationalError) or type(exc) is sqlite3.DatabaseError


def _what_failed(exc: sqlite3.Error) -> str:
    """The failure in words, from SQLite's error code and message (never a bound value)."""
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    if name.startswith("SQLITE_FULL"):
        what = "the disk is full"
    elif name.startswith("SQLITE_BUSY") or name.startswith("SQLITE_LOCKED"):
        what = "the database stayed locked past busy_timeout"
    elif name.startswith("SQLITE_IOERR"):
        what = "an I/O error (a full disk or a file-size limit, for instance)"
    else:
        what = "the database failed"
    return f"{what}; SQLite said {name}: {exc}"


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
        self._path = path.absolute()  # what os.stat checks, whatever the working directory
        self._identity = ""
        self._created = False
        self._file_id: FileId = (0, 0)
        self._problem: str | None = None
        self._queue: queue.SimpleQueue[_Op] = queue.SimpleQueue()
        self._closed = False
        self._full = False  # the connection's current PRAGMA synchronous is FULL
        self._transactions = 0
        self._thread = threading.Thread(target=self._serve, name="idempotency-sqlite", daemon=False)
        self._ready: asyncio.Future[None] | None = None
        self._lock: int | None = None
        """The descriptor holding the owner's flock (``open(exclusive=True)``)."""

    @classmethod
    async def open(
        cls, path: Path, *, exclusive: bool = False, inherited_lock: int | None = None
    ) -> SqliteStore:
        """Open (or create) the store at ``path``; ``exclusive``: as its one owner (see the
        module doc), else raise ``StartupError``. ``inherited_lock``: as a worker of the owner,
        whose lock this descriptor holds (``check_inherited_lock``); it stays the caller's."""
        store = cls(path)
        if inherited_lock is not None:
            check_inherited_lock(store._path, inherited_lock)
        elif exclusive:
            store._lock = hold_owner_lock(store._path)
        try:
            return await store._start()
        except BaseException:
            store._unlock()
            raise

    def _unlock(self) -> None:
        if self._lock is not None:
            os.close(self._lock)  # closing the descriptor lets go of the flock
            self._lock = None

    async def _start(self) -> SqliteStore:
        store = self
        path = self._path
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

    @property
    def identity(self) -> str:
        """The store's UUID, kept in its ``meta`` table since the file was created."""
        return self._identity

    @property
    def created(self) -> bool:
        """Whether the store was new when opened: no records, and never adopted."""
        return self._created

    @property
    def problem(self) -> str | None:
        """None while the file is the one opened; once it was deleted or replaced, which."""
        return self._problem

    @property
    def path(self) -> Path:
        """The database file (absolute)."""
        return self._path

    def _lost(self) -> StoreLostError:
        return StoreLostError(
            f"idempotency store {self._path} is lost: {self._problem}; no call can succeed"
            " any more (stop the service and restore the file)",
            store=str(self._path),
        )

    def _unavailable(self, exc: sqlite3.Error) -> StoreUnavailableError:
        error = StoreUnavailableError(
            f"idempotency store {self._path}: {_what_failed(exc)}", store=str(self._path)
        )
        error.__cause__ = exc
        return error

    def _as_store_error(self, exc: BaseException) -> BaseException:
        """An I/O failure of SQLite as ``StoreUnavailableError``; anything else as it is."""
        if isinstance(exc, sqlite3.Error) and _is_io_failure(exc):
            return self._unavailable(exc)
        return exc

    def _run(self, work: Callable[[], T], *, durable: bool = False) -> asyncio.Future[T]:
        """Queue ``work`` for the writer; the future resolves after its batch committed."""
        if self._closed:
            raise RuntimeError("the SQLite idempotency store is closed")
        if self._problem is not None:
            raise self._lost()
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(work, future, durable))
        return future

    # -- the writer thread -----------------------------------------------------------------------

    def _serve(self) -> None:
        ready = self._ready
        assert ready is not None
        try:
            opened = _connect(self._path)
        except BaseException as exc:
            _deliver([(ready, None, exc)])
            return
        self._db = opened.db
        self._identity = opened.store_id
        self._created = opened.created
        self._file_id = opened.file_id
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
                    with contextlib.suppress(StoreUnavailableError, StoreLostError):
                        self._check_file()  # so that ``problem`` tells a loss while idle
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

    def _check_file(self) -> None:
        """Raise unless the path still names the file opened; a loss is noted for good."""
        if self._problem is None:
            try:
                stat = os.stat(self._path)
            except (FileNotFoundError, NotADirectoryError):
                self._lose("its file was deleted while in use")
            except OSError as exc:
                raise StoreUnavailableError(
                    f"idempotency store {self._path}: cannot check its file"
                    f" ({exc.strerror or type(exc).__name__})",
                    store=str(self._path),
                ) from exc
            else:
                found = (stat.st_dev, stat.st_ino)
                if found != self._file_id:
                    self._lose(
                        "its file was replaced by another while in use (device/inode"
                        f" {self._file_id[0]}/{self._file_id[1]} opened,"
                        f" {found[0]}/{found[1]} found)"
                    )
        if self._problem is not None:
            raise self._lost()

    def _lose(self, problem: str) -> None:
        """Note the loss for good, and empty the WAL left at the path (see the module doc)."""
        self._problem = problem
        try:
            busy = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0]
            wal_emptied = busy == 0
        except sqlite3.Error:
            wal_emptied = False
        log.error(
            "idempotency.store_lost",
            path=str(self._path),
            problem=problem,
            wal_emptied=wal_emptied,
        )

    def _commit(self, batch: list[_Op]) -> None:
        """Check the file, run ``batch`` in one transaction, hand every caller its result."""
        # A caller cancelled before its batch started is skipped, as run_in_executor skipped
        # work not started yet. (A racy read of another thread's future, but a benign one:
        # only the event loop completes these futures, and a caller cancelled just after this
        # check has its work done, as before.)
        live = [op for op in batch if not op.future.done()]
        if not live:
            return
        try:
            self._check_file()
        except (StoreLostError, StoreUnavailableError) as failed:
            # One error per caller (each may add its own traceback), with the same cause.
            outcomes: list[_Outcome] = []
            for op in live:
                error = type(failed)(str(failed), store=failed.store)
                error.__cause__ = failed.__cause__
                outcomes.append((op.future, None, error))
            _deliver(outcomes)
            return
        outcomes = [(op.future, None, None) for op in live if op.work is _probe_marker]
        calls = [op for op in live if op.work is not _probe_marker]
        if calls:
            outcomes += self._transact(calls)
        _deliver(outcomes)

    def _transact(self, live: list[_Op]) -> list[_Outcome]:
        """Run the calls in one transaction; their outcomes, none before the COMMIT returned."""
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
                        outcomes.append((op.future, None, self._as_store_error(exc)))
                    else:
                        db.execute("RELEASE op")
                        outcomes.append((op.future, value, None))
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    with contextlib.suppress(sqlite3.Error):
                        db.execute("ROLLBACK")
                raise
        except sqlite3.Error as exc:  # nothing of this batch was committed
            outcomes = [(op.future, None, self._as_store_error(exc)) for op in live]
        except BaseException as exc:  # nothing of this batch was committed
            outcomes = [(op.future, None, exc) for op in live]
        else:
            self._transactions += 1
        return outcomes

    def _select(self, key: str) -> IdempotencyRecord | None:
        row = self._db.execute(
            f"SELECT {COLUMNS} FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
        return _row_to_record(row, str(self._path)) if row else None

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        lease_until = now + timedelta(seconds=lease_s)

        def work() -> Claim:  # inside the batch's transaction: no BEGIN or COMMIT of its own
            existing = self._select(key)
            status = decide_claim(existing, fingerprint, owner, now)
            token = next_token(existing)
            if status is ClaimStatus.CLAIMED and existing is None:
                row = (
                    *(key, fingerprint, State.IN_FLIGHT.value, owner, _ts(lease_until), 0),
                    *(_ts(now), _ts(now), None, None, 0, None, token),
                )
                self._db.execute(
                    f"INSERT INTO idempotency ({COLUMNS}) VALUES ({', '.join('?' * len(row))})",
                    row,
                )
                # The row as a SELECT would read it back (TEXT, INTEGER and REAL keep Python's
                # str, int and float exactly), without reading it back.
                return Claim(status, _row_to_record(row, str(self._path)))
            elif status is ClaimStatus.CLAIMED:  # a released key, taken again by its command
                self._db.execute(
                    "UPDATE idempotency SET state = ?, owner = ?, lease_until = ?, attempts = 0,"
                    " updated_at = ?, outcome_kind = NULL, outcome = NULL, published = 0,"
                    " settle_until = NULL, token = ? WHERE key = ?",
                    (State.IN_FLIGHT.value, owner, _ts(lease_until), _ts(now), token, key),
                )
            elif status is ClaimStatus.TAKEN_OVER or status is ClaimStatus.RECONCILE:
                self._db.execute(
                    "UPDATE idempotency SET owner = ?, lease_until = ?, updated_at = ?, token = ?"
                    " WHERE key = ?",
                    (owner, _ts(lease_until), _ts(now), token, key),
                )
            else:
                assert existing is not None
                return Claim(status, existing)
            record = self._select(key)
            assert record is not None
            return Claim(status, record)

        return await self._run(work, durable=True)

    async def _update_owned(
        self,
        assignments: str,
        values: tuple[Any, ...],
        key: str,
        owner: str,
        token: int,
        *,
        durable: bool,
    ) -> None:
        """``UPDATE ... SET <assignments>`` on ``key`` while ``owner`` holds it under ``token``;
        else raise."""
        sql = f"UPDATE idempotency SET {assignments} WHERE key = ? AND owner = ? AND token = ?"

        def work() -> None:
            if self._db.execute(sql, (*values, key, owner, token)).rowcount != 1:
                raise OwnershipLostError("idempotency record is no longer owned by this worker")

        await self._run(work, durable=durable)

    async def finish(
        self,
        key: str,
        *,
        owner: str,
        token: int,
        state: State,
        outcome: Outcome,
        attempts: int,
        now: datetime,
    ) -> None:
        await self._update_owned(
            "state = ?, outcome_kind = ?, outcome = ?, attempts = ?, updated_at = ?",
            (state.value, outcome.kind, _write_outcome(outcome), attempts, _ts(now)),
            key,
            owner,
            token,
            durable=False,
        )

    async def park(
        self,
        key: str,
        *,
        owner: str,
        token: int,
        now: datetime,
        settle_until: datetime,
        lease_until: datetime,
    ) -> None:
        await self._update_owned(
            "state = ?, lease_until = ?, settle_until = ?, updated_at = ?",
            (State.RECONCILING.value, _ts(lease_until), _ts(settle_until), _ts(now)),
            key,
            owner,
            token,
            durable=False,
        )

    async def resume(
        self, key: str, *, owner: str, token: int, lease_until: datetime, now: datetime
    ) -> None:
        await self._update_owned(
            "state = ?, lease_until = ?, updated_at = ?",
            (State.IN_FLIGHT.value, _ts(lease_until), _ts(now)),
            key,
            owner,
            token,
            durable=True,
        )

    async def prune(self, *, older_than: datetime) -> int:
        prunable = tuple(state.value for state in PRUNABLE)
        marks = ", ".join("?" for _ in prunable)

        def work() -> int:
            cursor = self._db.execute(
                f"DELETE FROM idempotency WHERE updated_at < ? AND state IN ({marks})",
                (_ts(older_than), *prunable),
            )
            return int(cursor.rowcount)

        return await self._run(work)

    async def release(self, key: str, *, owner: str, token: int, now: datetime) -> None:
        def work() -> None:
            self._db.execute(
                "UPDATE idempotency SET state = ?, updated_at = ?"
                " WHERE key = ? AND owner = ? AND token = ? AND state = ?",
                (State.RELEASED.value, _ts(now), key, owner, token, State.IN_FLIGHT.value),
            )

        await self._run(work)

    async def mark_published(self, key: str) -> None:
        def work() -> None:
            self._db.execute("UPDATE idempotency SET published = 1 WHERE key = ?", (key,))

        await self._run(work)

    async def get(self, key: str) -> IdempotencyRecord | None:
        return await self._run(lambda: self._select(key))

    async def probe(self) -> None:
        """The writer checks that the path still names the file opened (no transaction)."""
        await self._run(_probe_marker)

    async def adopt(self) -> None:
        def work() -> None:
            self._db.execute(
                "UPDATE meta SET adopted_at = ? WHERE id = 1 AND adopted_at IS NULL",
                (time.time(),),
            )

        await self._run(work, durable=True)

    async def close(self) -> None:
        """Commit what is queued, close the connection on the writer thread, stop it."""
        if self._closed:
            return
        self._closed = True
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queue.put(_Op(_close_marker, done, False))
        await done
        self._thread.join()  # it has closed the connection and is returning
        self._unlock()
