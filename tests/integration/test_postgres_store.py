"""What only the PostgreSQL store has, against a real server: replicas sharing one database,
fencing across them, the schema and identity, durable commits, start-up failures, outages,
losing the database, and pruning in batches. The behaviour every store shares is in
tests/contract (the ``postgres`` kind of the ``backend`` fixture)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import tempfile
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from urllib.parse import urlsplit

import asyncpg
import pytest

from pa_devkit.localinfra.postgres import LocalPostgres
from service.domain.store import (
    ClaimStatus,
    OwnershipLostError,
    State,
    StoreLostError,
    StoreUnavailableError,
)
from service.errors import StartupError
from service.idempotency import postgres
from service.idempotency.postgres import SCHEMA_VERSION, PostgresStore, durability_problem
from tests.contract.cases import FP, LEASE_S, OUTCOME, T0, stored_in
from tests.store_support import own_postgres

pytestmark = pytest.mark.postgres

ROLE = "pa_app"
PASSWORD = "right-horse-battery-staple"
WRONG_PASSWORD = "wrong-donkey-battery-staple"
DATABASE = "pa_owned"
HBA = f"""\
local all all trust
host all postgres 127.0.0.1/32 trust
host all {ROLE} 127.0.0.1/32 scram-sha-256
"""
"""The own server's client authentication: the launcher's psql as before, the service's role
by password (the session's server trusts everyone, so a wrong password would pass there)."""

OUTAGE_TIMEOUT_S = 1.0
SLACK_S = 1.5
"""What a refused or timed-out call may take beyond its timeout on a loaded machine."""


@dataclass(frozen=True)
class OwnServer:
    """A server of this module's own, which its tests stop, kill and pause."""

    server: LocalPostgres
    dsn: str
    """The service's role and database, with the password in it."""


@pytest.fixture(scope="module")
def own_server() -> Iterator[OwnServer]:
    folder = Path(tempfile.mkdtemp(prefix="pa-postgres-hba-"))
    folder.chmod(0o755)  # the server may run as another user (root runs it as nobody)
    hba = folder / "pg_hba.conf"
    hba.write_text(HBA, encoding="utf-8")
    hba.chmod(0o644)
    try:
        with own_postgres(settings={"hba_file": str(hba)}) as server:
            server.psql(f"CREATE ROLE {ROLE} LOGIN PASSWORD '{PASSWORD}'")
            server.psql(f"CREATE DATABASE {DATABASE} OWNER {ROLE}")
            yield OwnServer(
                server, f"postgresql://{ROLE}:{PASSWORD}@127.0.0.1:{server.port}/{DATABASE}"
            )
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def stack() -> AsyncIterator[AsyncExitStack]:
    async with AsyncExitStack() as opened:
        yield opened


async def opened(
    stack: AsyncExitStack, dsn: str, *, timeout_s: float = 5.0, pool_size: int = 4
) -> PostgresStore:
    store = await PostgresStore.open(dsn, timeout_s=timeout_s, pool_size=pool_size)
    stack.push_async_callback(store.close)
    return store


async def sql(dsn: str, statement: str) -> object:
    """The first value ``statement`` returns, on a connection of its own."""
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return await connection.fetchval(statement)
    finally:
        await connection.close()


def texts(exc: BaseException) -> str:
    """Every message in ``exc``'s chain (causes and contexts), for leak checks."""
    found: list[str] = []
    current: BaseException | None = exc
    while current is not None and len(found) < 10:
        found.append(f"{type(current).__name__}: {current!s} {current!r}")
        current = current.__cause__ or current.__context__
    return "\n".join(found)


# -- replicas sharing the database -------------------------------------------------------------


async def test_two_replicas_racing_for_200_keys_claim_each_exactly_once(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """Two stores on one database claiming the same 200 keys at once: for every key exactly
    one claim is CLAIMED and the other BUSY, and the record is the winner's."""
    first, second = await asyncio.gather(
        opened(stack, fresh_postgres_dsn, pool_size=8),
        opened(stack, fresh_postgres_dsn, pool_size=8),
    )
    assert first.identity == second.identity  # started together: one schema, one store
    keys = [f"race-{n:03d}" for n in range(200)]
    claims = [
        store.claim(key, FP, owner=owner, now=T0, lease_s=LEASE_S)
        for key in keys
        for store, owner in ((first, "replica-a"), (second, "replica-b"))
    ]
    results = await asyncio.gather(*claims)
    for index, key in enumerate(keys):
        pair = results[2 * index : 2 * index + 2]
        assert Counter(claim.status for claim in pair) == {
            ClaimStatus.CLAIMED: 1,
            ClaimStatus.BUSY: 1,
        }, key
        winner = next(claim for claim in pair if claim.status is ClaimStatus.CLAIMED)
        stored = await first.get(key)
        assert stored is not None
        assert (stored.owner, stored.token) == (winner.record.owner, 1)


async def test_a_lapsed_lease_moves_to_the_other_replica_and_fences_the_first(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """Replica B takes over A's lapsed claim (token 2); A's finish, park and resume under
    token 1 are refused and change nothing, B's finish is kept."""
    a = await opened(stack, fresh_postgres_dsn)
    b = await opened(stack, fresh_postgres_dsn)
    await a.claim("k", FP, owner="a", now=T0, lease_s=LEASE_S)
    taken = await b.claim("k", FP, owner="b", now=T0 + timedelta(seconds=LEASE_S), lease_s=60)
    assert (taken.status, taken.record.token) == (ClaimStatus.TAKEN_OVER, 2)
    later = T0 + timedelta(seconds=LEASE_S + 1)
    with pytest.raises(OwnershipLostError):
        await a.finish(
            "k", owner="a", token=1, state=State.FAILED, outcome=OUTCOME, attempts=1, now=later
        )
    with pytest.raises(OwnershipLostError):
        await a.park("k", owner="a", token=1, now=later, settle_until=later, lease_until=later)
    with pytest.raises(OwnershipLostError):
        await a.resume("k", owner="a", token=1, lease_until=later, now=later)
    await a.release("k", owner="a", token=1, now=later)  # a no-op
    await b.finish(
        "k", owner="b", token=2, state=State.COMPLETED, outcome=OUTCOME, attempts=2, now=later
    )
    seen_by_a = await a.get("k")
    assert seen_by_a is not None
    assert (seen_by_a.state, seen_by_a.owner, seen_by_a.token, seen_by_a.attempts) == (
        State.COMPLETED,
        "b",
        2,
        2,
    )
    assert seen_by_a.outcome == OUTCOME


async def test_a_finish_racing_a_takeover_never_both_succeed(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """For 100 keys, A's finish and B's takeover run at once: either A's finish lands and B
    sees a DUPLICATE, or B takes the key over and A's finish is refused; never both."""
    a = await opened(stack, fresh_postgres_dsn, pool_size=8)
    b = await opened(stack, fresh_postgres_dsn, pool_size=8)
    keys = [f"fence-{n:03d}" for n in range(100)]
    await asyncio.gather(*(a.claim(key, FP, owner="a", now=T0, lease_s=1) for key in keys))
    later = T0 + timedelta(seconds=1)

    async def finish(key: str) -> bool:
        try:
            await a.finish(
                key,
                owner="a",
                token=1,
                state=State.COMPLETED,
                outcome=OUTCOME,
                attempts=1,
                now=later,
            )
        except OwnershipLostError:
            return False
        return True

    for key in keys:
        finished, claim = await asyncio.gather(
            finish(key), b.claim(key, FP, owner="b", now=later, lease_s=60)
        )
        if finished:
            assert claim.status is ClaimStatus.DUPLICATE, key
        else:
            assert claim.status is ClaimStatus.TAKEN_OVER, key
        record = await a.get(key)
        assert record is not None
        assert record.owner == ("a" if finished else "b")


# -- schema, identity, durability ---------------------------------------------------------------


async def test_the_schema_is_versioned_and_a_second_open_keeps_the_identity(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """The first open writes the schema and its version; later opens find the same store,
    which stays new (``created``) until adopted or holding records."""
    first = await opened(stack, fresh_postgres_dsn)
    assert first.created
    assert await sql(fresh_postgres_dsn, "SELECT version FROM pa_schema_version") == SCHEMA_VERSION
    assert await sql(fresh_postgres_dsn, "SELECT count(*) FROM pa_schema_version") == 1
    assert await sql(fresh_postgres_dsn, "SELECT store_id FROM pa_meta") == first.identity
    second = await opened(stack, fresh_postgres_dsn)
    assert (second.identity, second.created) == (first.identity, True)
    await second.adopt()
    await second.adopt()  # repeating it changes nothing
    adopted = await opened(stack, fresh_postgres_dsn)
    assert (adopted.identity, adopted.created) == (first.identity, False)
    assert await sql(fresh_postgres_dsn, "SELECT count(*) FROM pa_schema_version") == 1


async def test_a_store_with_records_is_not_new(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """A store that holds a record opens as not ``created``, even never adopted."""
    first = await opened(stack, fresh_postgres_dsn)
    await first.claim("k", FP, owner="a", now=T0, lease_s=LEASE_S)
    again = await opened(stack, fresh_postgres_dsn)
    assert (again.identity, again.created) == (first.identity, False)


async def test_a_newer_schema_is_refused_at_start_up(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """A database whose schema version is newer than the code's fails open with a
    StartupError that names the versions."""
    await opened(stack, fresh_postgres_dsn)
    newer = SCHEMA_VERSION + 1
    await sql(fresh_postgres_dsn, "UPDATE pa_schema_version SET version = version + 1")
    with pytest.raises(StartupError, match=f"schema version {newer}, newer"):
        await PostgresStore.open(fresh_postgres_dsn)


async def test_commits_are_synchronous_whatever_the_database_default(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """With synchronous_commit off as the database's default and in the DSN, the store's
    connections still commit synchronously; a connection without it is refused."""
    name = urlsplit(fresh_postgres_dsn).path.lstrip("/")
    await sql(fresh_postgres_dsn, f'ALTER DATABASE "{name}" SET synchronous_commit = off')
    assert await sql(fresh_postgres_dsn, "SHOW synchronous_commit") == "off"
    store = await opened(stack, fresh_postgres_dsn + "?synchronous_commit=off", pool_size=3)
    # the pool's own connections, all three at once
    pool = store._pool
    connections = [await pool.acquire() for _ in range(3)]
    try:
        for connection in connections:
            assert await connection.fetchval("SHOW synchronous_commit") == "on"
    finally:
        for connection in connections:
            await pool.release(connection)
    plain = await asyncpg.connect(fresh_postgres_dsn, timeout=10)
    try:
        problem = await durability_problem(plain)
        assert problem is not None
        assert problem.startswith("synchronous_commit is 'off' on a new connection")
    finally:
        await plain.close()


# -- start-up failures -------------------------------------------------------------------------


async def test_a_wrong_password_fails_open_quickly_and_never_shows_it(
    stack: AsyncExitStack, own_server: OwnServer
) -> None:
    """A wrong password (in the DSN, or given apart) is a StartupError within seconds naming
    the server and database; no message in its chain holds either password."""
    port = own_server.server.port
    right = await opened(stack, own_server.dsn)  # the role and its password work
    assert right.where == f"postgresql://{ROLE}:***@127.0.0.1:{port}/{DATABASE}"
    wrong_in_dsn = own_server.dsn.replace(PASSWORD, WRONG_PASSWORD)
    bare = f"postgresql://{ROLE}@127.0.0.1:{port}/{DATABASE}"
    for dsn, password in ((wrong_in_dsn, None), (bare, WRONG_PASSWORD)):
        started = time.monotonic()
        with pytest.raises(StartupError) as caught:
            await PostgresStore.open(dsn, password=password, timeout_s=5)
        assert time.monotonic() - started < 5
        message = str(caught.value)
        assert message.startswith(
            f"idempotency store: cannot connect to PostgreSQL at 127.0.0.1:{port}/{DATABASE}:"
            " the server refused the login"
        ), message
        assert caught.value.setting == "PA_IDEMPOTENCY__DSN"
        assert "\n" not in message
        chain = texts(caught.value)
        assert WRONG_PASSWORD not in chain
        assert PASSWORD not in chain


async def test_a_refused_port_fails_open_at_once() -> None:
    """Nothing listening on the port: a StartupError well within the timeout."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(StartupError, match=f"cannot connect to PostgreSQL at 127.0.0.1:{port}/pa"):
        await PostgresStore.open(f"postgresql://pa:secret@127.0.0.1:{port}/pa", timeout_s=3)
    assert time.monotonic() - started < 3


async def test_a_silent_server_fails_open_within_the_timeout() -> None:
    """A port that accepts connections but never answers: a StartupError saying so, after
    the timeout and not much later."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        started = time.monotonic()
        with pytest.raises(StartupError, match=r"no answer within 0\.5 s"):
            await PostgresStore.open(f"postgresql://pa@127.0.0.1:{port}/pa", timeout_s=0.5)
        took = time.monotonic() - started
    assert 0.4 < took < 0.5 + SLACK_S


# -- outages -----------------------------------------------------------------------------------


async def test_a_server_killed_mid_use_fails_calls_and_the_store_recovers(
    stack: AsyncExitStack, own_server: OwnServer
) -> None:
    """SIGKILL to the server: calls fail with StoreUnavailableError within the timeout (the
    message names the store, without the password); once the server is back the same store
    works again, and the claim made before the crash is there."""
    store = await opened(stack, own_server.dsn, timeout_s=OUTAGE_TIMEOUT_S)
    await store.claim("before-crash", FP, owner="a", now=T0, lease_s=LEASE_S)
    await asyncio.to_thread(own_server.server.kill)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.get("before-crash"),
            lambda: store.claim("during", FP, owner="a", now=T0, lease_s=LEASE_S),
            store.probe,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError) as caught:
                await call()
            assert time.monotonic() - started < OUTAGE_TIMEOUT_S + SLACK_S
            assert str(caught.value).startswith(f"idempotency store {store.where}: ")
            assert PASSWORD not in texts(caught.value)
            assert caught.value.retriable
    finally:
        await asyncio.to_thread(own_server.server.start)
    survived = await store.get("before-crash")
    assert survived is not None
    assert survived.state is State.IN_FLIGHT
    assert (await store.claim("after", FP, owner="a", now=T0, lease_s=LEASE_S)).status is (
        ClaimStatus.CLAIMED
    )
    assert store.problem is None


def server_processes(server: LocalPostgres) -> list[int]:
    """The postmaster and its children. Each backend moves to a process group of its own
    (PostgreSQL calls setsid() in every child), so the launcher's pause(), a signal to the
    postmaster's group, freezes the postmaster alone and open connections go on answering."""
    postmaster = server.pid
    assert postmaster is not None
    children = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        if stat.rpartition(")")[2].split()[1] == str(postmaster):  # state ppid ...
            children.append(int(entry.name))
    return [postmaster, *children]


def signal_all(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)


async def test_a_hung_server_fails_calls_within_the_timeout_and_the_store_recovers(
    stack: AsyncExitStack, own_server: OwnServer
) -> None:
    """A frozen server (SIGSTOP to the postmaster and every backend: connections open, no
    answers): each call fails with StoreUnavailableError at its timeout, close() does not
    hang, and once the server goes on the same store works again."""
    store = await opened(stack, own_server.dsn, timeout_s=OUTAGE_TIMEOUT_S)
    other = await PostgresStore.open(own_server.dsn, timeout_s=OUTAGE_TIMEOUT_S)
    await store.get("warm")  # a pooled connection, open and idle
    frozen = server_processes(own_server.server)
    signal_all(frozen, signal.SIGSTOP)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.claim("hung", FP, owner="a", now=T0, lease_s=LEASE_S),
            lambda: store.get("hung"),
            store.probe,
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match=r"no answer within 1 s"):
                await call()
            assert time.monotonic() - started < OUTAGE_TIMEOUT_S + SLACK_S
        started = time.monotonic()
        await other.close()
        assert time.monotonic() - started < OUTAGE_TIMEOUT_S + SLACK_S
    finally:
        signal_all(frozen, signal.SIGCONT)
    claimed = await store.claim("after-hang", FP, owner="a", now=T0, lease_s=LEASE_S)
    assert claimed.status is ClaimStatus.CLAIMED


async def test_a_call_waiting_on_a_lock_fails_at_its_timeout_and_leaves_the_pool_usable(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """A claim that waits behind another transaction's uncommitted insert of its key fails
    with StoreUnavailableError at the timeout; the next calls work on the same store."""
    store = await opened(stack, fresh_postgres_dsn, timeout_s=0.5, pool_size=1)
    await store.get("warm")  # the schema exists
    holder = await asyncpg.connect(fresh_postgres_dsn, timeout=10)
    try:
        transaction = holder.transaction()
        await transaction.start()
        await holder.execute(
            "INSERT INTO pa_idempotency (key, fingerprint, state, owner, lease_until, attempts,"
            " created_at, updated_at, token) VALUES ('k', 'f', 'IN_FLIGHT', 'x', now(), 0,"
            " now(), now(), 1)"
        )
        started = time.monotonic()
        with pytest.raises(StoreUnavailableError, match=r"no answer within 0\.5 s"):
            await store.claim("k", FP, owner="a", now=T0, lease_s=LEASE_S)
        assert time.monotonic() - started < 0.5 + SLACK_S
        await transaction.rollback()
    finally:
        await holder.close()
    claimed = await store.claim("k", FP, owner="a", now=T0, lease_s=LEASE_S)
    assert claimed.status is ClaimStatus.CLAIMED


# -- a lost store ------------------------------------------------------------------------------


async def _delete_meta_row(dsn: str, server_dsn: str, stack: AsyncExitStack) -> None:
    await sql(dsn, "DELETE FROM pa_meta")


async def _recreate_schema(dsn: str, server_dsn: str, stack: AsyncExitStack) -> None:
    await sql(dsn, "DROP TABLE pa_idempotency, pa_meta, pa_schema_version")
    await opened(stack, dsn)  # another store, made where the first one was


async def _drop_database(dsn: str, server_dsn: str, stack: AsyncExitStack) -> None:
    name = urlsplit(dsn).path.lstrip("/")
    await sql(server_dsn, f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.mark.parametrize(
    ("replace", "problem"),
    [
        (_delete_meta_row, "its pa_meta row is gone"),
        (_recreate_schema, "its pa_meta row names another store"),
        (_drop_database, "its database was dropped"),
    ],
    ids=["meta-row-deleted", "schema-recreated", "database-dropped"],
)
async def test_a_replaced_database_loses_the_store_for_good(
    stack: AsyncExitStack,
    fresh_postgres_dsn: str,
    postgres_dsn: str,
    replace: object,
    problem: str,
) -> None:
    """Once the database no longer holds the store opened, probe raises StoreLostError,
    ``problem`` says why, and every later call fails the same way, writing nothing."""
    store = await opened(stack, fresh_postgres_dsn)
    await store.claim("before", FP, owner="a", now=T0, lease_s=LEASE_S)
    assert callable(replace)
    await replace(fresh_postgres_dsn, postgres_dsn, stack)
    for _ in range(3):  # a dropped database: the first call may only see its connection end
        with contextlib.suppress(StoreUnavailableError):
            with pytest.raises(StoreLostError) as caught:
                await store.probe()
            break
    else:
        pytest.fail("probe never found the store lost")
    assert not caught.value.retriable
    assert store.problem is not None
    assert store.problem.startswith(problem)
    with pytest.raises(StoreLostError, match="is lost: "):
        await store.claim("after", FP, owner="a", now=T0, lease_s=LEASE_S)
    with pytest.raises(StoreLostError):
        await store.get("before")
    if replace is _recreate_schema:
        assert await sql(fresh_postgres_dsn, "SELECT count(*) FROM pa_idempotency") == 0


async def test_a_claim_notices_a_replaced_store_without_a_probe(
    stack: AsyncExitStack, fresh_postgres_dsn: str
) -> None:
    """The check rides on every statement: the next claim after the store was replaced
    raises StoreLostError and inserts nothing into the replacement."""
    store = await opened(stack, fresh_postgres_dsn)
    await sql(fresh_postgres_dsn, "UPDATE pa_meta SET store_id = 'someone-else'")
    with pytest.raises(StoreLostError):
        await store.claim("k", FP, owner="a", now=T0, lease_s=LEASE_S)
    assert store.problem is not None
    assert "someone-else" in store.problem
    assert await sql(fresh_postgres_dsn, "SELECT count(*) FROM pa_idempotency") == 0


# -- prune -------------------------------------------------------------------------------------


async def test_prune_deletes_old_finished_rows_in_batches_and_skips_locked_ones(
    stack: AsyncExitStack, fresh_postgres_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """prune deletes old terminal and released rows 10 at a time until none is left, keeps
    IN_FLIGHT, RECONCILING and recent rows, and passes over a row another transaction holds
    instead of waiting for it."""
    monkeypatch.setattr(postgres, "PRUNE_BATCH", 10)
    store = await opened(stack, fresh_postgres_dsn)
    old = T0 - timedelta(days=40)
    states = [State.COMPLETED, State.FAILED, State.UNKNOWN]
    for n in range(24):
        await stored_in(store, f"old-{n:02d}", states[n % 3], at=old)
    for n in range(3):
        await store.claim(f"released-{n}", FP, owner="a", now=old, lease_s=LEASE_S)
        await store.release(f"released-{n}", owner="a", token=1, now=old)
    await stored_in(store, "old-in-flight", State.IN_FLIGHT, at=old)
    await stored_in(store, "old-reconciling", State.RECONCILING, at=old)
    await stored_in(store, "recent", State.COMPLETED, at=T0)
    holder = await asyncpg.connect(fresh_postgres_dsn, timeout=10)
    try:
        async with holder.transaction():
            await holder.execute("SELECT 1 FROM pa_idempotency WHERE key = 'old-00' FOR UPDATE")
            started = time.monotonic()
            assert await store.prune(older_than=T0 - timedelta(days=30)) == 26
            assert time.monotonic() - started < 2
    finally:
        await holder.close()
    assert await store.prune(older_than=T0 - timedelta(days=30)) == 1
    left = await sql(
        fresh_postgres_dsn, "SELECT string_agg(key, ',' ORDER BY key) FROM pa_idempotency"
    )
    assert left == "old-in-flight,old-reconciling,recent"
