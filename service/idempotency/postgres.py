"""The idempotency store on PostgreSQL: one database shared by every replica of the service.

Durability: every connection asks for ``synchronous_commit = on`` in its start-up packet, and
checks with ``SHOW`` as it joins the pool that this is what it got (``remote_apply``, which is
stronger, is accepted too); a connection that cannot have it is refused, and at ``open`` that
is a ``StartupError``. So every call's COMMIT has reached the server's disk (and its synchronous
standbys, if any) before the call returns, whatever the server's or the role's default: a
claim is durable before PAS is called. The setting is a start-up parameter rather than a
``SET`` because asyncpg's pool would undo a ``SET`` (``RESET ALL``) whenever it takes a
connection back; this pool's ``reset`` does nothing at all, see *Pool* below.

Concurrency and atomicity: each call is one short transaction on a pooled connection.
``claim`` of a new key is ONE statement: ``INSERT ... ON CONFLICT (key) DO NOTHING RETURNING``;
two replicas racing for a key both reach the unique index, one inserts and the other waits for
its commit and inserts nothing. A claim that inserted nothing takes the existing row in a
transaction: ``SELECT ... FOR UPDATE``, the rule ``decide_claim`` in Python (the one every store
shares; no copy of it in SQL), then the ``UPDATE`` it calls for (a takeover, a RECONCILE, a
released key claimed again: reset as the SQLite store does) and COMMIT; so two claims of one
key are serialised by the row lock and each decides on what the other committed. (A row pruned
between the INSERT and the SELECT is simply inserted on the next round.)

Fencing: ``finish``, ``park`` and ``resume`` are ``UPDATE ... WHERE key AND owner AND token``;
no row changed means the claim changed hands: ``OwnershipLostError``. ``release`` is the same
update, also requiring IN_FLIGHT, and silently changes nothing otherwise. In READ COMMITTED a
write that waited for a concurrent takeover re-checks its WHERE on the committed row, so a
worker whose lease was taken over can never overwrite its successor's record.

Identity and losing the store: ``pa_meta`` holds one row (the store's UUID, when it was
created, when a start-up adopted it): ``identity``, ``created`` (no records and never
adopted) and ``adopt`` read and write it. A database dropped and re-created, restored from
another store's dump, or one whose tables were dropped and made again by another ``open``, no
longer holds that row with that UUID. Every statement the store sends checks it, in the same
statement, at no extra round trip: the writes carry ``EXISTS (SELECT 1 FROM pa_meta WHERE
store_id = <ours>)`` in their WHERE and return the store_id they saw; ``get`` joins the row;
``probe`` reads it; a claim of a key that exists checks it in its ``SELECT ... FOR UPDATE``.
(A primary-key look-up of a one-row table that is always in cache: cheaper than a separate
query once a second, and a claim never lands in a store replaced before its statement ran.)
The meta row missing or naming another store, the database gone
(``invalid_catalog_name``, ``database_dropped``) or the tables gone (``undefined_table``) lose
the store for good: ``problem`` says why, an error event is logged, and every later call raises
``StoreLostError`` (a restart opens whatever is there, and the continuity check of
``service.idempotency.continuity`` judges it). Not detected: the same store restored from an
older backup of its own, which keeps the UUID (the database's OID would tell, but it changes on
a logical-replication switch-over too, which loses nothing).

Schema: created or migrated by ``open`` in one transaction under a transaction-level advisory
lock (``SCHEMA_LOCK``), so replicas starting together take turns; ``pa_schema_version`` holds
the version, and a database of a newer version than this code knows is refused at start-up.
The tables live in the first schema of the role's ``search_path`` (``public`` by default):
give the service a database, or a role and schema, of its own. The index on ``updated_at``
serves ``prune``.

Outcomes: the ``outcome`` column keeps the same JSON text as the SQLite store (an outcome's
event record, ``service.codec.outcome.stored_record``), so an outcome reads back equal. It is
``text``, not ``jsonb``: the bytes written are the bytes read (no re-ordering of keys), and a
description holding ``\\u0000`` (jsonb refuses it) cannot fail the ``finish`` of a credit that
was applied; ``outcome::jsonb`` still serves ad-hoc queries. A row whose outcome cannot be read
back fails the call that read it with ``StoreError``.

Prune: deletes PRUNABLE rows last changed before the cut-off in batches of ``PRUNE_BATCH``,
each batch its own statement, taking its rows ``FOR UPDATE SKIP LOCKED``: a row a claim holds
is left for the next prune, and no claim waits behind a prune for more than one batch.

Errors: every call runs under one deadline, ``timeout_s``, covering the wait for a pooled
connection, connecting, and every statement. A connection refused or reset, a closed
connection, a server shutting down, starting up, out of connections, disk or memory, an I/O
error, a read-only server (a standby after a fail-over), a refused login on reconnecting, a
serialization failure or deadlock, and the deadline itself, fail the call with
``StoreUnavailableError``, naming the store (its DSN, password hidden) and the failure, the
driver's error chained. The connection the call used is then terminated, never given back: a
call the deadline interrupted may leave the connection waiting for an answer, and a ROLLBACK
sent on it could wait for ever; closing the socket is instant and the server rolls back
whatever was open. The pool connects afresh on the next call, so the store recovers by itself
when the server is back. The server side is bounded too: ``statement_timeout`` and
``idle_in_transaction_session_timeout`` are set to ``timeout_s``, so a client that vanished
mid-transaction cannot keep a row locked against the other replicas for longer. As with any
networked store, a write whose connection failed during its COMMIT may have been applied: the
protocol stays safe, because a claim that landed but was reported failed is this owner's
IN_FLIGHT record under a lease (claimed again, it is BUSY until the lease ends, then taken over
and reconciled, never sent blindly).

Pool: between 1 and ``pool_size`` connections (``PA_IDEMPOTENCY__POOL_SIZE``); a call holds one
for its own duration only (one round trip for a new key's claim and for every other call,
four or five for a claim of a key that has a record), so 10 connections serve far more calls
than one process makes (see the figures below), and calls beyond ``pool_size`` queue for the
deadline. Size the server for it: replicas x ``pool_size`` must stay under ``max_connections``
less the superuser's reserve. The pool's ``reset`` hook does nothing: the store never leaves session
state behind (no ``SET``, no ``LISTEN``, no cursors, only transaction-level advisory locks),
and the default reset would cost a round trip per call. Prepared statements are cached per
connection, so a proxy pooling by transaction (pgbouncer's ``transaction`` mode) is not
supported; session mode or a direct connection is.

Why asyncpg: it speaks PostgreSQL's protocol itself (Cython, no libpq), in the binary format,
and prepares and caches every statement it runs, so a call is one round trip and the server
parses each statement once per connection; it has its own pool, an asyncio-native API, and it
is well kept (regular releases for new Python and PostgreSQL versions). psycopg 3 is the other
good choice (libpq's features: service files, every authentication method libpq has, an
easier life behind a transaction-pooling proxy), but for many short statements of a fixed
shape asyncpg is the faster driver, and this store needs nothing it lacks.

Why no group commit here (the SQLite store batches calls into one transaction): PostgreSQL
already groups the WAL flushes of concurrent commits (a backend's fsync covers every commit
record written before it, and the ones waiting meanwhile share the next), and each call here is
one short transaction on a connection of its own, so concurrent calls do not queue behind one
writer. Measured on a development machine (2 CPUs, a local server with fsync on, on a disk
doing about 1,200 fsyncs a second by ``pg_test_fsync``): claim + finish of one adjustment, two
commits, took 0.5 to 0.75 ms (median) on one connection, one after the other (1,300 to 1,900
adjustments a second); 8 workers on 8 connections reached about 5,400 adjustments a second
(1.3 ms median each), some 10,800 commits a second, so about nine commits share each flush
already; 32 workers were no faster on those two CPUs. Batching would add a queue and a hop
to save flushes that are already shared, for a service whose PAS calls are far fewer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

import asyncpg
import structlog
from pydantic import SecretStr

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
from service.redact import MASK, redact_in_text, redact_url

T = TypeVar("T")

log = structlog.get_logger("service.idempotency")

SETTING = "PA_IDEMPOTENCY__DSN"

SCHEMA_VERSION = 1
"""1: ``pa_idempotency`` (with the fencing ``token``), its ``updated_at`` index, ``pa_meta``."""

SCHEMA_LOCK = 0x7061_5F69_6465_6D70
"""The advisory lock key held while the schema is created or migrated ("pa_idemp")."""

MIGRATIONS: dict[int, tuple[str, ...]] = {
    1: (
        """
        CREATE TABLE pa_idempotency (
            key          text PRIMARY KEY,
            fingerprint  text NOT NULL,
            state        text NOT NULL,
            owner        text NOT NULL,
            lease_until  timestamptz NOT NULL,
            attempts     integer NOT NULL,
            created_at   timestamptz NOT NULL,
            updated_at   timestamptz NOT NULL,
            outcome_kind text,
            outcome      text,
            published    boolean NOT NULL DEFAULT false,
            settle_until timestamptz,
            token        bigint NOT NULL
        )
        """,
        "CREATE INDEX pa_idempotency_updated_at ON pa_idempotency (updated_at)",
        """
        CREATE TABLE pa_meta (
            id         integer PRIMARY KEY CHECK (id = 1),
            store_id   text NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now(),
            adopted_at timestamptz
        )
        """,
    ),
}
"""The statements that bring a database from the version before to each version."""

PRUNE_BATCH = 1000
"""The most rows one statement of ``prune`` deletes."""

CLAIM_ROUNDS = 3
"""INSERT, then lock the existing row: how often before giving up on a key whose row keeps
vanishing between the two (a prune deleting it; the next round inserts it)."""

DURABLE_COMMITS = frozenset({"on", "remote_apply"})
"""The ``synchronous_commit`` values under which a COMMIT has reached the disk."""

# -- statements --------------------------------------------------------------------------------
# Every one names the store it expects ($ after the values) or returns the store_id it saw.

CLAIM_INSERT = """
WITH meta AS (SELECT store_id FROM pa_meta WHERE id = 1),
inserted AS (
    INSERT INTO pa_idempotency
        (key, fingerprint, state, owner, lease_until, attempts, created_at, updated_at,
         published, token)
    SELECT $1::text, $2::text, $3::text, $4::text, $5::timestamptz, 0, $6::timestamptz,
           $6::timestamptz, false, $7::bigint
    FROM meta WHERE meta.store_id = $8::text
    ON CONFLICT (key) DO NOTHING
    RETURNING *
)
SELECT (SELECT store_id FROM meta) AS store_id, inserted.*
FROM (VALUES (0)) AS one (n) LEFT JOIN inserted ON true
"""

CLAIM_LOCK = """
SELECT (SELECT store_id FROM pa_meta WHERE id = 1) AS store_id, i.*
FROM pa_idempotency AS i WHERE i.key = $1 FOR UPDATE OF i
"""

CLAIM_AGAIN = """
UPDATE pa_idempotency
SET state = $2, owner = $3, lease_until = $4, attempts = 0, updated_at = $5,
    outcome_kind = NULL, outcome = NULL, published = false, settle_until = NULL, token = $6
WHERE key = $1
RETURNING *
"""

CLAIM_TAKE = """
UPDATE pa_idempotency SET owner = $2, lease_until = $3, updated_at = $4, token = $5
WHERE key = $1
RETURNING *
"""

_OWNED_TAIL = """
    WHERE key = $1 AND owner = $2 AND token = $3
      AND EXISTS (SELECT 1 FROM meta WHERE store_id = $4)
    RETURNING 1
)
SELECT (SELECT store_id FROM meta) AS store_id, (SELECT count(*) FROM changed) AS changed
"""
_OWNED_HEAD = """
WITH meta AS (SELECT store_id FROM pa_meta WHERE id = 1),
changed AS (
    UPDATE pa_idempotency
"""

FINISH = (
    _OWNED_HEAD
    + "SET state = $5, outcome_kind = $6, outcome = $7, attempts = $8, updated_at = $9"
    + _OWNED_TAIL
)
PARK = (
    _OWNED_HEAD
    + "SET state = $5, lease_until = $6, settle_until = $7, updated_at = $8"
    + _OWNED_TAIL
)
RESUME = _OWNED_HEAD + "SET state = $5, lease_until = $6, updated_at = $7" + _OWNED_TAIL
RELEASE = """
WITH meta AS (SELECT store_id FROM pa_meta WHERE id = 1),
changed AS (
    UPDATE pa_idempotency SET state = $5, updated_at = $6
    WHERE key = $1 AND owner = $2 AND token = $3 AND state = $7
      AND EXISTS (SELECT 1 FROM meta WHERE store_id = $4)
    RETURNING 1
)
SELECT (SELECT store_id FROM meta) AS store_id, (SELECT count(*) FROM changed) AS changed
"""

MARK_PUBLISHED = """
WITH meta AS (SELECT store_id FROM pa_meta WHERE id = 1),
changed AS (
    UPDATE pa_idempotency SET published = true
    WHERE key = $1 AND EXISTS (SELECT 1 FROM meta WHERE store_id = $2)
    RETURNING 1
)
SELECT (SELECT store_id FROM meta) AS store_id, (SELECT count(*) FROM changed) AS changed
"""

PRUNE = """
WITH meta AS (SELECT store_id FROM pa_meta WHERE id = 1),
doomed AS (
    SELECT key FROM pa_idempotency
    WHERE updated_at < $1 AND state = ANY($2::text[])
      AND EXISTS (SELECT 1 FROM meta WHERE store_id = $3)
    LIMIT $4
    FOR UPDATE SKIP LOCKED
),
deleted AS (
    DELETE FROM pa_idempotency AS p USING doomed WHERE p.key = doomed.key RETURNING 1
)
SELECT (SELECT store_id FROM meta) AS store_id, (SELECT count(*) FROM deleted) AS changed
"""

GET = """
SELECT m.store_id AS store_id, i.*
FROM pa_meta AS m LEFT JOIN pa_idempotency AS i ON i.key = $1
WHERE m.id = 1
"""

PROBE = "SELECT store_id FROM pa_meta WHERE id = 1"

ADOPT = """
WITH meta AS (SELECT store_id FROM pa_meta WHERE id = 1),
changed AS (
    UPDATE pa_meta SET adopted_at = now()
    WHERE id = 1 AND store_id = $1 AND adopted_at IS NULL
    RETURNING 1
)
SELECT (SELECT store_id FROM meta) AS store_id, (SELECT count(*) FROM changed) AS changed
"""

if TYPE_CHECKING:
    from asyncpg.pool import PoolConnectionProxy

    _Connection = PoolConnectionProxy[asyncpg.Record]


async def durability_problem(connection: asyncpg.Connection[asyncpg.Record]) -> str | None:
    """Why ``connection``'s commits would not be durable (its ``synchronous_commit``), or None."""
    value = await connection.fetchval("SHOW synchronous_commit")
    if value in DURABLE_COMMITS:
        return None
    return (
        f"synchronous_commit is {value!r} on a new connection although the service asked for"
        " 'on' (a proxy in between that drops start-up parameters?), so a commit might not be"
        " on disk when a claim returns"
    )


def _durability_check(
    shown: str,
) -> Callable[[asyncpg.Connection[asyncpg.Record]], Coroutine[Any, Any, None]]:
    """The pool's ``init``: refuse every new connection whose commits would not be durable."""

    async def check(connection: asyncpg.Connection[asyncpg.Record]) -> None:
        problem = await durability_problem(connection)
        if problem is not None:
            raise StoreUnavailableError(f"idempotency store {shown}: {problem}", store=shown)

    return check


async def _keep_session(connection: asyncpg.Connection[asyncpg.Record]) -> None:
    """The pool's ``reset``: nothing to undo (see *Pool* in the module docstring)."""


def _server_settings(dsn: str, timeout_s: float) -> dict[str, str]:
    """The start-up parameters of every connection; they take precedence over the DSN's own
    (so a DSN cannot weaken ``synchronous_commit``), except a DSN's ``application_name``."""
    milliseconds = str(max(1, math.ceil(timeout_s * 1000)))
    settings = {
        "synchronous_commit": "on",
        "statement_timeout": milliseconds,
        "idle_in_transaction_session_timeout": milliseconds,
    }
    if "application_name=" not in dsn:
        settings["application_name"] = "points-adjuster"
    return settings


def _place(shown_dsn: str) -> str:
    """``host:port/database`` of a DSN whose secrets are already hidden, for messages."""
    try:
        parts = urlsplit(shown_dsn)
    except ValueError:
        return shown_dsn
    hosts = parts.netloc.rpartition("@")[2] or "localhost"
    if "," not in hosts and not re.search(r":\d+$", hosts):
        hosts += ":5432"
    return f"{hosts}/{parts.path.lstrip('/') or '(the default database)'}"


_UNAVAILABLE_TYPES: tuple[tuple[type[BaseException], str], ...] = (
    (asyncpg.PostgresConnectionError, "the connection failed"),
    (OSError, "the network failed"),
    (asyncpg.InterfaceError, "the connection is unusable"),
    (asyncpg.InternalClientError, "the connection is unusable"),  # e.g. found dead mid-use
)
_UNAVAILABLE_SQLSTATES = {
    # by class (the first two characters) ...
    "08": "the connection failed",
    "28": "the server refused the login",
    "40": "the server rolled the transaction back (serialization failure or deadlock)",
    "53": "the server is out of resources (disk, memory or connections)",
    "57": "the server cancelled the statement, or is shutting down or starting up",
    "58": "the server had an I/O error",
    # ... or by code
    "25006": "the server is read-only (a standby?)",
    "55006": "a lock was not granted in time",
    "55P03": "a lock was not granted in time",
}


def _unavailability(exc: BaseException, timeout_s: float) -> str | None:
    """What failed, when ``exc`` is a failure of the server, the network or the deadline
    (the call may succeed later); None for anything else."""
    if isinstance(exc, TimeoutError):
        return f"no answer within {timeout_s:g} s"
    for kind, what in _UNAVAILABLE_TYPES:
        if isinstance(exc, kind):
            return what
    if isinstance(exc, asyncpg.PostgresError):
        sqlstate = str(exc.sqlstate or "")
        return _UNAVAILABLE_SQLSTATES.get(sqlstate) or _UNAVAILABLE_SQLSTATES.get(sqlstate[:2])
    return None


def _loss(exc: BaseException) -> str | None:
    """Why the store is gone for good, when ``exc`` says so; else None."""
    if isinstance(exc, asyncpg.InvalidCatalogNameError | asyncpg.DatabaseDroppedError):
        return "its database was dropped while in use"
    if isinstance(exc, asyncpg.UndefinedTableError):
        return "its tables are gone (dropped while in use, or the database was replaced)"
    return None


async def _prepare(connection: _Connection, place: str) -> tuple[str, bool]:
    """Create or migrate the schema and the meta row, under the advisory lock, in one
    transaction; ``(store_id, created)``. The caller terminates the connection on failure,
    which rolls the transaction back."""
    await connection.execute("BEGIN")
    await connection.execute("SELECT pg_advisory_xact_lock($1)", SCHEMA_LOCK)
    await connection.execute(
        "CREATE TABLE IF NOT EXISTS pa_schema_version (version integer NOT NULL)"
    )
    version = await connection.fetchval("SELECT max(version) FROM pa_schema_version") or 0
    if version > SCHEMA_VERSION:
        raise StartupError(
            "idempotency store",
            f"the idempotency tables in PostgreSQL at {place} are of schema version {version},"
            f" newer than this service knows ({SCHEMA_VERSION}): run a version that knows it",
            setting=SETTING,
        )
    for step in range(version + 1, SCHEMA_VERSION + 1):
        for statement in MIGRATIONS[step]:
            await connection.execute(statement)
    if version != SCHEMA_VERSION:
        await connection.execute("DELETE FROM pa_schema_version")
        await connection.execute(
            "INSERT INTO pa_schema_version (version) VALUES ($1)", SCHEMA_VERSION
        )
    has_records = bool(await connection.fetchval("SELECT EXISTS (SELECT 1 FROM pa_idempotency)"))
    row = await connection.fetchrow("SELECT store_id, adopted_at FROM pa_meta WHERE id = 1")
    if row is None:
        # New tables; or tables whose row was deleted: if they hold records, those are what
        # deduplicates, so the store is in use (adopted), under a new identity.
        store_id = str(uuid.uuid4())
        await connection.execute(
            "INSERT INTO pa_meta (id, store_id, adopted_at)"
            " VALUES (1, $1, CASE WHEN $2 THEN now() END)",
            store_id,
            has_records,
        )
        created = not has_records
    else:
        store_id = str(row["store_id"])
        created = row["adopted_at"] is None and not has_records
    await connection.execute("COMMIT")
    return store_id, created


@contextlib.asynccontextmanager
async def _borrowed(pool: asyncpg.Pool[asyncpg.Record]) -> AsyncIterator[_Connection]:
    """A pooled connection; after any failure but a refused write it is terminated, not
    given back (see *Errors* in the module docstring)."""
    connection = await pool.acquire()
    try:
        yield connection
    except OwnershipLostError:  # raised after a statement that ended cleanly
        raise
    except BaseException:
        connection.terminate()
        raise
    finally:
        await pool.release(connection)  # a terminated connection: nothing to do


class PostgresStore:
    """Implements ``IdempotencyStore`` on a pool of asyncpg connections."""

    def __init__(
        self,
        pool: asyncpg.Pool[asyncpg.Record],
        *,
        dsn: str,
        password: SecretStr | None,
        timeout_s: float,
        identity: str,
        created: bool,
    ) -> None:
        """Use ``open()``, which prepares the database and makes the pool."""
        self._pool = pool
        self._dsn = dsn
        self._password = password
        self._timeout_s = timeout_s
        self._shown = redact_url(dsn)
        self._identity = identity
        self._created = created
        self._problem: str | None = None
        self._closed = False

    @classmethod
    async def open(
        cls,
        dsn: str,
        *,
        password: SecretStr | str | None = None,
        pool_size: int = 10,
        timeout_s: float = 5.0,
    ) -> PostgresStore:
        """Connect, create or migrate the schema, read the store's identity: all within
        ``timeout_s``, else ``StartupError`` (whose message never holds the password)."""
        if pool_size < 1:
            raise ValueError(f"pool_size must be at least 1, not {pool_size}")
        shown = redact_url(dsn)
        place = _place(shown)
        doing = f"cannot connect to PostgreSQL at {place}"
        secret = SecretStr(password) if isinstance(password, str) else password
        pool = asyncpg.create_pool(
            dsn,
            password=None if secret is None else secret.get_secret_value(),
            min_size=1,
            max_size=pool_size,
            timeout=timeout_s,
            server_settings=_server_settings(dsn, timeout_s),
            init=_durability_check(shown),
            reset=_keep_session,
        )
        try:
            async with asyncio.timeout(timeout_s):
                await pool
                doing = f"cannot prepare the idempotency tables in PostgreSQL at {place}"
                async with _borrowed(pool) as connection:
                    identity, created = await _prepare(connection, place)
        except BaseException as exc:
            pool.terminate()
            if isinstance(exc, StartupError):
                raise
            reason = _startup_reason(exc, timeout_s, shown)
            if reason is None:
                raise
            text = _cleaned(f"{doing}: {reason}", dsn, secret)
            raise StartupError("idempotency store", text, setting=SETTING) from exc
        return cls(
            pool,
            dsn=dsn,
            password=secret,
            timeout_s=timeout_s,
            identity=identity,
            created=created,
        )

    @property
    def identity(self) -> str:
        """The store's UUID, kept in its ``pa_meta`` row since the schema was created."""
        return self._identity

    @property
    def created(self) -> bool:
        """Whether the store was new when opened: no records, and never adopted."""
        return self._created

    @property
    def problem(self) -> str | None:
        """None while the database holds the store opened; once it was lost, why."""
        return self._problem

    @property
    def where(self) -> str:
        """The DSN, its password hidden."""
        return self._shown

    # -- calls -----------------------------------------------------------------------------------

    async def _call(self, work: Callable[[_Connection], Awaitable[T]]) -> T:
        """Run ``work`` on a pooled connection within the deadline; failures as store errors."""
        if self._closed:
            raise RuntimeError("the PostgreSQL idempotency store is closed")
        if self._problem is not None:
            raise self._lost()
        try:
            async with asyncio.timeout(self._timeout_s), _borrowed(self._pool) as connection:
                return await work(connection)
        except (StoreError, OwnershipLostError):
            raise
        except Exception as exc:
            problem = _loss(exc)
            if problem is not None:
                self._lose(problem)
                raise self._lost() from exc
            what = _unavailability(exc, self._timeout_s)
            if what is None:
                raise
            raise self._unavailable(what, exc) from exc

    def _unavailable(self, what: str, exc: BaseException) -> StoreUnavailableError:
        detail = str(exc)
        said = f" ({type(exc).__name__}: {detail})" if detail else ""
        sqlstate = getattr(exc, "sqlstate", None)
        code = f" [SQLSTATE {sqlstate}]" if sqlstate else ""
        text = _cleaned(f"{what}{said}{code}", self._dsn, self._password)
        return StoreUnavailableError(f"idempotency store {self._shown}: {text}", store=self._shown)

    def _lost(self) -> StoreLostError:
        return StoreLostError(
            f"idempotency store {self._shown} is lost: {self._problem}; no call can succeed"
            " any more (stop the service; restore the database or start on a new store)",
            store=self._shown,
        )

    def _lose(self, problem: str) -> None:
        if self._problem is None:
            self._problem = problem
            log.error("idempotency.store_lost", store=self._shown, problem=problem)

    def _check_identity(self, found: object) -> None:
        """Raise ``StoreLostError`` (for good) unless ``found`` is this store's UUID."""
        if found == self._identity:
            return
        if found is None:
            self._lose("its pa_meta row is gone (the database was emptied or replaced)")
        else:
            self._lose(
                f"its pa_meta row names another store ({found}, not {self._identity}): the"
                " database was replaced"
            )
        raise self._lost()

    def _record(self, row: asyncpg.Record) -> IdempotencyRecord:
        outcome_text = row["outcome"]
        return IdempotencyRecord(
            key=row["key"],
            fingerprint=row["fingerprint"],
            state=State(row["state"]),
            owner=row["owner"],
            lease_until=row["lease_until"],
            attempts=row["attempts"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            outcome=self._read_outcome(row["outcome_kind"], outcome_text) if outcome_text else None,
            published=row["published"],
            settle_until=row["settle_until"],
            token=row["token"],
        )

    def _read_outcome(self, kind: str | None, text: str) -> Outcome:
        try:
            return outcome_from_record(str(kind), json.loads(text))
        except ValueError as exc:  # a damaged row, or one of an incompatible version
            raise StoreError(
                f"idempotency store {self._shown}: the outcome of a record cannot be read"
                f" back: {exc}",
                store=self._shown,
            ) from None

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        lease_until = now + timedelta(seconds=lease_s)

        async def work(connection: _Connection) -> Claim:
            for _ in range(CLAIM_ROUNDS):
                # No record yet: decide_claim(None, ...) is CLAIMED, which this INSERT is.
                row = await connection.fetchrow(
                    CLAIM_INSERT,
                    key,
                    fingerprint,
                    State.IN_FLIGHT.value,
                    owner,
                    lease_until,
                    now,
                    next_token(None),
                    self._identity,
                )
                assert row is not None  # one row, always
                self._check_identity(row["store_id"])
                if row["key"] is not None:
                    return Claim(ClaimStatus.CLAIMED, self._record(row))
                claim = await self._claim_existing(
                    connection, key, fingerprint, owner, now, lease_until
                )
                if claim is not None:
                    return claim
            raise StoreError(
                f"idempotency store {self._shown}: a record kept vanishing while claimed",
                store=self._shown,
            )

        return await self._call(work)

    async def _claim_existing(
        self,
        connection: _Connection,
        key: str,
        fingerprint: str,
        owner: str,
        now: datetime,
        lease_until: datetime,
    ) -> Claim | None:
        """The claim of a key that has a record, in one transaction; None when the record
        vanished before it could be locked. A failure terminates the connection (``_call``),
        which rolls the transaction back."""
        await connection.execute("BEGIN")
        row = await connection.fetchrow(CLAIM_LOCK, key)
        if row is None:
            await connection.execute("COMMIT")
            return None
        self._check_identity(row["store_id"])
        existing = self._record(row)
        status = decide_claim(existing, fingerprint, owner, now)
        token = next_token(existing)
        changed: asyncpg.Record | None = None
        if status is ClaimStatus.CLAIMED:  # a released key, taken again by its command
            changed = await connection.fetchrow(
                CLAIM_AGAIN, key, State.IN_FLIGHT.value, owner, lease_until, now, token
            )
        elif status is ClaimStatus.TAKEN_OVER or status is ClaimStatus.RECONCILE:
            changed = await connection.fetchrow(CLAIM_TAKE, key, owner, lease_until, now, token)
        await connection.execute("COMMIT")
        return Claim(status, existing if changed is None else self._record(changed))

    async def _write(self, sql: str, *args: Any, owned: bool) -> int:
        """Run one guarded write (see the statements); how many rows it changed. ``owned``:
        no row changed means the caller no longer holds the record."""

        async def work(connection: _Connection) -> int:
            row = await connection.fetchrow(sql, *args)
            assert row is not None  # one row, always
            self._check_identity(row["store_id"])
            changed = int(row["changed"])
            if owned and changed != 1:
                raise OwnershipLostError("idempotency record is no longer owned by this worker")
            return changed

        return await self._call(work)

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
        text = json.dumps(stored_record(outcome))
        await self._write(
            FINISH,
            key,
            owner,
            token,
            self._identity,
            state.value,
            outcome.kind,
            text,
            attempts,
            now,
            owned=True,
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
        await self._write(
            PARK,
            key,
            owner,
            token,
            self._identity,
            State.RECONCILING.value,
            lease_until,
            settle_until,
            now,
            owned=True,
        )

    async def resume(
        self, key: str, *, owner: str, token: int, lease_until: datetime, now: datetime
    ) -> None:
        await self._write(
            RESUME,
            key,
            owner,
            token,
            self._identity,
            State.IN_FLIGHT.value,
            lease_until,
            now,
            owned=True,
        )

    async def release(self, key: str, *, owner: str, token: int, now: datetime) -> None:
        await self._write(
            RELEASE,
            key,
            owner,
            token,
            self._identity,
            State.RELEASED.value,
            now,
            State.IN_FLIGHT.value,
            owned=False,
        )

    async def mark_published(self, key: str) -> None:
        await self._write(MARK_PUBLISHED, key, self._identity, owned=False)

    async def prune(self, *, older_than: datetime) -> int:
        """Delete PRUNABLE records last changed before ``older_than``, ``PRUNE_BATCH`` at a
        time, each batch a statement of its own under its own deadline; how many."""
        states = sorted(state.value for state in PRUNABLE)
        total = 0
        while True:
            deleted = await self._write(
                PRUNE, older_than, states, self._identity, PRUNE_BATCH, owned=False
            )
            total += deleted
            if deleted < PRUNE_BATCH:
                return total

    async def get(self, key: str) -> IdempotencyRecord | None:
        async def work(connection: _Connection) -> IdempotencyRecord | None:
            row = await connection.fetchrow(GET, key)
            self._check_identity(None if row is None else row["store_id"])
            assert row is not None
            return None if row["key"] is None else self._record(row)

        return await self._call(work)

    async def probe(self) -> None:
        """Check that the database still holds this store's ``pa_meta`` row."""

        async def work(connection: _Connection) -> None:
            self._check_identity(await connection.fetchval(PROBE))

        await self._call(work)

    async def adopt(self) -> None:
        await self._write(ADOPT, self._identity, owned=False)

    async def close(self) -> None:
        """Close the pool: wait for calls in progress (at most ``timeout_s``), then close
        every connection; connections that do not close in time are terminated."""
        if self._closed:
            return
        self._closed = True
        try:
            await asyncio.wait_for(self._pool.close(), self._timeout_s)
        except TimeoutError:
            self._pool.terminate()
        except BaseException:
            self._pool.terminate()
            raise


def _startup_reason(exc: BaseException, timeout_s: float, shown: str) -> str | None:
    """The reason ``open`` failed, for a ``StartupError``; None: let ``exc`` through."""
    if isinstance(exc, StoreError):  # a connection refused for durability (the pool's init)
        return str(exc).removeprefix(f"idempotency store {shown}: ")
    what = _unavailability(exc, timeout_s)
    said = f"{type(exc).__name__}: {exc}" if str(exc) else ""
    if what is not None:
        return f"{what} ({said})" if said else what
    if isinstance(exc, asyncpg.PostgresError | ValueError):  # no such database, a privilege
        return said or type(exc).__name__  # missing, a malformed DSN: the error says which
    return None


def _cleaned(text: str, dsn: str, password: SecretStr | None) -> str:
    """``text`` on one line, with the DSN's secrets and the password hidden."""
    if password is not None and (value := password.get_secret_value()):
        text = text.replace(value, MASK)
    return " ".join(redact_in_text(text, dsn).split())
