"""What only the SQLite store does (its files, schemas, batches, losses) and the continuity
check; the contract every store keeps is tests/contract/test_store_contract.py."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from service.domain.outcome import CommandInfo, Completed, ErrorDetail, Failed, SourceRef
from service.domain.store import (
    ClaimStatus,
    OwnershipLostError,
    State,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
)
from service.errors import PointsAdjusterError, StartupError
from service.idempotency.continuity import check_continuity, verify_continuity
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore
from service.settings import IdempotencySettings, KafkaSettings
from tests.contract.cases import (
    FP,
    KEY,
    LEASE_S,
    ME,
    OTHER,
    T0,
    claim,
    finish,
    park,
)

# -- SQLite files written by the previous version ------------------------------------------------

PREVIOUS_SCHEMA = """
CREATE TABLE idempotency (
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
    published    INTEGER NOT NULL DEFAULT 0
) WITHOUT ROWID;
"""


async def test_a_database_of_the_previous_schema_still_works(tmp_path: Path) -> None:
    """A SQLite file created before settle_until existed opens, keeps its records and parks."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_SCHEMA)
    old.execute(
        "INSERT INTO idempotency VALUES (?, ?, 'COMPLETED', ?, ?, 1, ?, ?, 'completed', ?, 1)",
        (KEY, FP, OTHER, T0.timestamp(), T0.timestamp(), T0.timestamp(), EARLIER_COMPLETED),
    )
    old.commit()
    old.close()
    store = await SqliteStore.open(path)
    try:
        duplicate = await claim(store, now=T0 + timedelta(hours=1))
        assert duplicate.status is ClaimStatus.DUPLICATE
        assert duplicate.record.outcome == EARLIER_COMPLETED_OUTCOME
        assert duplicate.record.settle_until is None
        fresh = await claim(store, key="new-key", now=T0)
        assert fresh.status is ClaimStatus.CLAIMED
        await park(store, key="new-key")
        parked = await store.get("new-key")
        assert parked is not None
        assert parked.settle_until == T0 + timedelta(seconds=30)
    finally:
        await store.close()


# -- outcomes as SQLite keeps them ---------------------------------------------------------------

# Outcomes exactly as version 0.4.0 wrote them into the ``outcome`` column.
EARLIER_COMPLETED = (
    '{"event_id": "1e19d27d-f2fa-5fc1-a74d-12fa53799622", "idempotency_key": "case-1234-credit",'
    ' "correlation_id": "corr-1", "requested_by": "crm",'
    ' "account_ref": "acct-0123456789abcdef0123456789abcdef",'
    ' "account_masked": "***************5000", "command_occurred_at": 1741064400000,'
    ' "received_at": 1741064767123, "source": {"topic": "points-adjustments.requested.v1",'
    ' "partition": 3, "offset": 101}, "duplicate": false,'
    ' "metadata": {"case": "1234", "pan": "************1111"}, "service_version": "0.4.0",'
    ' "adjustment_type_code": "GOODWILL", "points_requested": 250, "points_adjusted": 250,'
    ' "attempts": 1, "completed_at": 1741064767145, "pas_duration_ms": 22,'
    ' "pas_correlation_id": "mc-1"}'
)
EARLIER_FAILED = (
    '{"event_id": "1e19d27d-f2fa-5fc1-a74d-12fa53799622", "idempotency_key": "case-1234-credit",'
    ' "correlation_id": "corr-1", "requested_by": "crm",'
    ' "account_ref": "acct-0123456789abcdef0123456789abcdef",'
    ' "account_masked": "***************5000", "command_occurred_at": 1741064400000,'
    ' "received_at": 1741064767123, "source": {"topic": "points-adjustments.requested.v1",'
    ' "partition": 3, "offset": 101}, "duplicate": false,'
    ' "metadata": {"case": "1234", "pan": "************1111"}, "service_version": "0.4.0",'
    ' "reason_code": "PAS_REJECTED",'
    ' "description": "PAS did not apply the adjustment: HTTP 400 INVALID_POINTS",'
    ' "retryable": false, "errors": [{"source": "rewards-points-api",'
    ' "reason_code": "INVALID_POINTS", "description": "bad points", "recoverable": false,'
    ' "field": "pointsToAdjust"}, {"source": "Gateway", "reason_code": "DECLINED",'
    ' "description": "x", "recoverable": true, "field": null}], "http_status": 400,'
    ' "attempts": 1, "failed_at": 1741064768000}'
)
EARLIER_INFO = CommandInfo(
    idempotency_key=KEY,
    correlation_id="corr-1",
    requested_by="crm",
    account_ref="acct-0123456789abcdef0123456789abcdef",
    account_masked="***************5000",
    command_occurred_at=datetime(2025, 3, 4, 5, 0, 0, tzinfo=UTC),
    received_at=datetime(2025, 3, 4, 5, 6, 7, 123_000, tzinfo=UTC),
    source=SourceRef("points-adjustments.requested.v1", 3, 101),
    metadata={"case": "1234", "pan": "************1111"},
)
EARLIER_COMPLETED_OUTCOME = Completed(
    info=EARLIER_INFO,
    adjustment_type_code="GOODWILL",
    points_requested=250,
    points_adjusted=250,
    attempts=1,
    completed_at=datetime(2025, 3, 4, 5, 6, 7, 145_000, tzinfo=UTC),
    pas_duration_ms=22,
    pas_correlation_id="mc-1",
    service_version="0.4.0",
)
EARLIER_FAILED_OUTCOME = Failed(
    info=EARLIER_INFO,
    reason_code="PAS_REJECTED",
    description="PAS did not apply the adjustment: HTTP 400 INVALID_POINTS",
    retryable=False,
    failed_at=datetime(2025, 3, 4, 5, 6, 8, tzinfo=UTC),
    errors=(
        ErrorDetail("rewards-points-api", "INVALID_POINTS", "bad points", False, "pointsToAdjust"),
        ErrorDetail("Gateway", "DECLINED", "x", True, None),
    ),
    http_status=400,
    attempts=1,
    service_version="0.4.0",
)
EARLIER = [
    ("completed", EARLIER_COMPLETED, EARLIER_COMPLETED_OUTCOME),
    ("failed", EARLIER_FAILED, EARLIER_FAILED_OUTCOME),
]


def outcome_column(path: Path, key: str = KEY) -> tuple[str, str]:
    """``(outcome_kind, outcome)`` of ``key`` as the file holds them."""
    with contextlib.closing(sqlite3.connect(path)) as db:
        row = db.execute(
            "SELECT outcome_kind, outcome FROM idempotency WHERE key = ?", (key,)
        ).fetchone()
    return str(row[0]), str(row[1])


@pytest.mark.parametrize(("kind", "text", "outcome"), EARLIER, ids=["completed", "failed"])
async def test_an_outcome_written_by_an_earlier_version_reads_back_and_is_written_alike(
    tmp_path: Path, kind: str, text: str, outcome: Completed | Failed
) -> None:
    """An outcome stored by version 0.4.0 reads back as the outcome it was, and this version
    stores that outcome as exactly the same JSON: a store survives an upgrade either way."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store)
        await store.finish(
            KEY, owner=ME, token=1, state=State.COMPLETED, outcome=outcome, attempts=1, now=T0
        )
        assert outcome_column(path) == (kind, text)
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute("UPDATE idempotency SET outcome = ? WHERE key = ?", (text, KEY))
        duplicate = await claim(store, owner=OTHER, now=T0 + timedelta(hours=1))
        assert duplicate.status is ClaimStatus.DUPLICATE
        assert duplicate.record.outcome == outcome
    finally:
        await store.close()


@pytest.mark.parametrize(
    ("kind", "text"),
    [
        ("completed", "not json"),
        ("completed", '{"event_id": "e-1"}'),
        ("completed", EARLIER_FAILED),
        ("failed", '["a list"]'),
        ("failed", EARLIER_FAILED.replace('"errors": [', '"errors": [5, ')),
        ("refunded", EARLIER_COMPLETED),
    ],
    ids=["not-json", "missing-fields", "wrong-kind", "a-list", "bad-error", "unknown-kind"],
)
async def test_an_outcome_that_cannot_be_read_back_is_a_store_error(
    tmp_path: Path, kind: str, text: str
) -> None:
    """A damaged stored outcome fails the call that reads it with a StoreError (naming the
    store, quoting nothing of the row), never with another exception; other keys work on."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store)
        await finish(store)
        with contextlib.closing(sqlite3.connect(path)) as db, db:
            db.execute(
                "UPDATE idempotency SET outcome_kind = ?, outcome = ? WHERE key = ?",
                (kind, text, KEY),
            )
        for call in (lambda: store.get(KEY), lambda: claim(store, owner=OTHER)):
            with pytest.raises(StoreError) as caught:
                await call()
            assert type(caught.value) is StoreError
            assert str(path.absolute()) in str(caught.value)
            assert "corr-1" not in str(caught.value)
            assert "acct-" not in str(caught.value)
        assert (await claim(store, key="other-key")).status is ClaimStatus.CLAIMED
    finally:
        await store.close()


# -- SQLite group commit -------------------------------------------------------------------------


def rows_in(path: Path) -> set[str]:
    """The keys stored in the file, read through a connection of its own."""
    reader = sqlite3.connect(path)
    try:
        return {row[0] for row in reader.execute("SELECT key FROM idempotency")}
    finally:
        reader.close()


def hold_the_write_lock(path: Path) -> sqlite3.Connection:
    """A second connection holding the write lock: the store's writer waits (busy_timeout),
    so the calls made meanwhile queue up and go into the next batch."""
    blocker = sqlite3.connect(path, isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    return blocker


def let_go(blocker: sqlite3.Connection) -> None:
    blocker.execute("ROLLBACK")
    blocker.close()


def loop_errors() -> list[dict[str, Any]]:
    """Collects what reaches the running loop's exception handler (e.g. InvalidStateError)."""
    seen: list[dict[str, Any]] = []
    asyncio.get_running_loop().set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def test_concurrent_claims_are_group_committed_and_persisted(tmp_path: Path) -> None:
    """200 concurrent claims all succeed, reach the file, and take far fewer transactions."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    keys = [f"k-{i}" for i in range(200)]
    try:
        before = store.transactions
        results = await asyncio.gather(
            *(store.claim(key, FP, owner=ME, now=T0, lease_s=LEASE_S) for key in keys)
        )
        committed = store.transactions - before
    finally:
        await store.close()
    assert [result.status for result in results] == [ClaimStatus.CLAIMED] * 200
    assert [result.record.key for result in results] == keys
    assert 1 <= committed <= 200 // 4
    assert rows_in(path) == set(keys)
    reopened = await SqliteStore.open(path)
    try:
        stored = await reopened.get("k-199")
        assert stored is not None
        assert (stored.state, stored.owner) == (State.IN_FLIGHT, ME)
    finally:
        await reopened.close()


async def test_a_fresh_claim_returns_the_record_as_stored(tmp_path: Path) -> None:
    """The record of a new claim is built from the values inserted, not read back: it is the
    record the store then reads, field for field."""
    store = await SqliteStore.open(tmp_path / "fresh.sqlite3")
    try:
        claim = await store.claim("k-fresh", FP, owner=ME, now=T0, lease_s=LEASE_S)
        assert claim.status is ClaimStatus.CLAIMED
        assert await store.get("k-fresh") == claim.record
        assert claim.record.lease_until == T0 + timedelta(seconds=LEASE_S)
        assert (claim.record.attempts, claim.record.published, claim.record.outcome) == (
            0,
            False,
            None,
        )
    finally:
        await store.close()


async def test_a_call_losing_ownership_in_a_batch_fails_alone(tmp_path: Path) -> None:
    """A finish by a non-owner batched among claims raises OwnershipLostError; the claims
    around it in the same transaction are committed, and the record it aimed at is intact."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, owner=OTHER)
        before_record = await store.get(KEY)
        before = store.transactions
        blocker = hold_the_write_lock(path)
        try:
            calls = [claim(store, key=f"k-{i}") for i in range(5)]
            calls.append(finish(store, owner=ME))  # KEY is owned by OTHER
            calls += [claim(store, key=f"k-{i}") for i in range(5, 10)]
            gathered = asyncio.gather(*calls, return_exceptions=True)
            await asyncio.sleep(0.1)  # every call is queued; the writer waits for the lock
        finally:
            let_go(blocker)
        results = await gathered
        assert store.transactions - before <= 2  # the bad finish shared a batch with claims
        assert isinstance(results[5], OwnershipLostError)
        claims = [r for r in results[:5] + results[6:] if not isinstance(r, BaseException)]
        assert [result.status for result in claims] == [ClaimStatus.CLAIMED] * 10
        assert await store.get(KEY) == before_record
    finally:
        await store.close()
    assert rows_in(path) == {KEY} | {f"k-{i}" for i in range(10)}


async def test_a_call_that_raises_after_writing_is_undone_alone(tmp_path: Path) -> None:
    """A call that wrote and then raised is rolled back to its savepoint; its batch commits."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)

    def write_then_fail() -> None:
        # runs on the writer thread, inside the batch; undone by its savepoint
        store._db.execute("DELETE FROM idempotency WHERE key = ?", ("k-0",))
        raise OwnershipLostError("after a write")

    try:
        await claim(store, key="k-0")
        blocker = hold_the_write_lock(path)
        try:
            first = asyncio.ensure_future(claim(store, key="k-1"))
            failing = store._run(write_then_fail)
            last = asyncio.ensure_future(claim(store, key="k-2"))
            await asyncio.sleep(0.1)
        finally:
            let_go(blocker)
        with pytest.raises(OwnershipLostError):
            await failing
        assert (await first).status is ClaimStatus.CLAIMED
        assert (await last).status is ClaimStatus.CLAIMED
    finally:
        await store.close()
    assert rows_in(path) == {"k-0", "k-1", "k-2"}


async def test_a_cancelled_caller_does_not_break_its_batch(tmp_path: Path) -> None:
    """Cancelling callers (one in the running batch, one still queued) fails only them."""
    errors = loop_errors()
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    try:
        blocker = hold_the_write_lock(path)
        try:
            tasks = [asyncio.create_task(claim(store, key=f"k-{i}")) for i in range(10)]
            await asyncio.sleep(0.1)  # k-0 is in the batch waiting for the lock
            tasks[0].cancel()
            tasks[9].cancel()
        finally:
            let_go(blocker)
        results = await asyncio.gather(*tasks, return_exceptions=True)
        assert isinstance(results[0], asyncio.CancelledError)
        assert isinstance(results[9], asyncio.CancelledError)
        claims = [r for r in results[1:9] if not isinstance(r, BaseException)]
        assert [result.status for result in claims] == [ClaimStatus.CLAIMED] * 8
        after = await claim(store, key="k-after")
        assert after.status is ClaimStatus.CLAIMED
    finally:
        await store.close()
    assert {f"k-{i}" for i in range(1, 9)} | {"k-after"} <= rows_in(path)
    assert errors == []


async def test_close_completes_the_calls_in_flight_then_refuses_more(tmp_path: Path) -> None:
    """close() commits what is queued, stops the writer thread; later calls raise."""
    path = tmp_path / "gc.sqlite3"
    store = await SqliteStore.open(path)
    tasks = [asyncio.create_task(claim(store, key=f"k-{i}")) for i in range(20)]
    await asyncio.sleep(0)  # the calls are queued
    await store.close()
    assert all(task.done() for task in tasks)
    assert [task.result().status for task in tasks] == [ClaimStatus.CLAIMED] * 20
    assert not [t for t in threading.enumerate() if t.name == "idempotency-sqlite"]
    assert rows_in(path) == {f"k-{i}" for i in range(20)}
    with pytest.raises(RuntimeError, match="closed"):
        await store.get("k-0")
    with pytest.raises(RuntimeError, match="closed"):
        await claim(store, key="k-new")
    await store.close()  # a second close is harmless


async def test_an_unusable_path_is_a_startup_error_naming_the_setting(tmp_path: Path) -> None:
    """A database path under a regular file cannot be opened: StartupError with the setting."""
    (tmp_path / "file").write_text("not a directory")
    with pytest.raises(StartupError) as caught:
        await SqliteStore.open(tmp_path / "file" / "idempotency.sqlite3")
    assert caught.value.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert not [t for t in threading.enumerate() if t.name == "idempotency-sqlite"]


# -- identity ------------------------------------------------------------------------------------


async def test_a_new_sqlite_store_is_created_with_an_identity_kept_across_opens(
    tmp_path: Path,
) -> None:
    """A new file is ``created`` with a UUID identity; reopened it keeps that identity."""
    path = tmp_path / "db" / "idempotency.sqlite3"
    first = await SqliteStore.open(path)
    try:
        assert first.created is True
        identity = first.identity
        assert len(identity) == 36
        await claim(first)
    finally:
        await first.close()
    again = await SqliteStore.open(path)
    try:
        assert again.identity == identity
        assert again.created is False
    finally:
        await again.close()


async def test_an_empty_store_stays_new_until_adopted(tmp_path: Path) -> None:
    """Reopening a store that holds nothing and was never adopted finds it new again (so a
    refused start stays refused); after adopt() it is not new, with the same identity."""
    path = tmp_path / "idempotency.sqlite3"
    first = await SqliteStore.open(path)
    identity = first.identity
    await first.close()
    second = await SqliteStore.open(path)
    try:
        assert (second.created, second.identity) == (True, identity)
        await second.adopt()
        await second.adopt()  # a second adopt changes nothing
        assert second.created is True  # it was new when this instance opened it
    finally:
        await second.close()
    third = await SqliteStore.open(path)
    try:
        assert (third.created, third.identity) == (False, identity)
    finally:
        await third.close()


@pytest.mark.parametrize("with_records", [True, False])
async def test_a_database_from_before_identities_gets_one(
    tmp_path: Path, with_records: bool
) -> None:
    """A file of the previous schema gets an identity on its first open, kept afterwards; it
    is not new when it holds records, and new when it holds none."""
    path = tmp_path / "old.sqlite3"
    old = sqlite3.connect(path)
    old.executescript(PREVIOUS_SCHEMA)
    if with_records:
        old.execute(
            "INSERT INTO idempotency VALUES (?, ?, 'COMPLETED', ?, ?, 1, ?, ?, 'completed', ?, 1)",
            (KEY, FP, OTHER, T0.timestamp(), T0.timestamp(), T0.timestamp(), "{}"),
        )
    old.commit()
    old.close()
    first = await SqliteStore.open(path)
    identity = first.identity
    assert first.created is not with_records
    await first.close()
    again = await SqliteStore.open(path)
    try:
        assert again.identity == identity
        assert again.created is not with_records
    finally:
        await again.close()


async def test_two_stores_have_different_identities(tmp_path: Path) -> None:
    """Two files created apart have different identities; so do two memory stores."""
    one = await SqliteStore.open(tmp_path / "one.sqlite3")
    two = await SqliteStore.open(tmp_path / "two.sqlite3")
    try:
        assert one.identity != two.identity
    finally:
        await one.close()
        await two.close()
    assert MemoryStore().identity != MemoryStore().identity


async def test_a_memory_store_is_always_new_and_never_lost() -> None:
    """A memory store is created with a fresh identity, has no problem, and probes fine."""
    memory = MemoryStore()
    assert memory.created is True
    assert memory.problem is None
    await memory.probe()
    await memory.adopt()
    assert memory.created is True


# -- a lost store --------------------------------------------------------------------------------


async def test_a_deleted_file_makes_the_next_call_fail_and_nothing_is_recreated(
    tmp_path: Path,
) -> None:
    """Once the file is deleted under an open store, the next claim raises StoreLostError
    (not retriable), ``problem`` says so, every later call fails, and no file reappears."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, key="before")
        assert store.problem is None
        path.unlink()
        with pytest.raises(StoreLostError) as caught:
            await claim(store, key="after")
        assert caught.value.retriable is False
        assert caught.value.store == str(path)
        assert str(path) in str(caught.value)
        assert "after" not in str(caught.value).replace(str(path), "")
        assert store.problem is not None
        assert "deleted" in store.problem
        with pytest.raises(StoreLostError):
            await store.get("before")
        with pytest.raises(StoreLostError):
            await finish(store)
        with pytest.raises(StoreLostError):
            await store.probe()
        assert not path.exists()
    finally:
        await store.close()
    assert not path.exists()


async def test_calls_queued_when_the_file_went_all_fail(tmp_path: Path) -> None:
    """Calls already queued when the loss is found fail together; none of them is written."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, key="before")
        path.unlink()
        results = await asyncio.gather(
            *(claim(store, key=f"k-{i}") for i in range(20)), return_exceptions=True
        )
        assert all(isinstance(result, StoreLostError) for result in results)
        assert len({id(result) for result in results}) == 20  # one error per caller
    finally:
        await store.close()
    assert not path.exists()


async def test_a_file_replaced_by_another_database_is_lost(tmp_path: Path) -> None:
    """A file replaced by another database (another inode at the path) makes the next call
    raise StoreLostError naming the replacement; the replacement is left as it was."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await claim(store, key="before")
        other_path = tmp_path / "other.sqlite3"
        other = sqlite3.connect(other_path)
        other.execute("CREATE TABLE other (x INTEGER)")
        other.execute("INSERT INTO other VALUES (42)")
        other.commit()
        other.close()
        os.replace(other_path, path)
        with pytest.raises(StoreLostError, match="replaced"):
            await claim(store, key="after")
        assert store.problem is not None
        assert "replaced" in store.problem
    finally:
        await store.close()
    replacement = sqlite3.connect(path)
    try:
        tables = {row[0] for row in replacement.execute("SELECT name FROM sqlite_master")}
        assert tables == {"other"}
        assert replacement.execute("SELECT x FROM other").fetchall() == [(42,)]
    finally:
        replacement.close()


async def test_after_a_noticed_deletion_the_next_open_is_a_new_store(tmp_path: Path) -> None:
    """The WAL a lost store leaves at the path is emptied, so a restart finds a new store
    (which the continuity check then refuses) rather than the lost one's last pages."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    identity = store.identity
    try:
        for i in range(20):
            await claim(store, key=f"k-{i}")
        path.unlink()
        with pytest.raises(StoreLostError):
            await claim(store, key="after")
    finally:
        await store.close()
    wal = tmp_path / "idempotency.sqlite3-wal"
    assert not wal.exists() or wal.stat().st_size == 0
    again = await SqliteStore.open(path)
    try:
        assert again.created is True
        assert again.identity != identity
        assert await again.get("k-0") is None
    finally:
        await again.close()


async def test_a_wal_left_without_its_database_is_refused_at_open(tmp_path: Path) -> None:
    """A path whose database is gone while a non-empty WAL of it remains (the service was
    stopped before it noticed the deletion) is a StartupError naming the setting, and no
    database is created there."""
    path = tmp_path / "idempotency.sqlite3"
    writer = sqlite3.connect(path, isolation_level=None)
    writer.execute("PRAGMA journal_mode=WAL")
    writer.execute("CREATE TABLE t (x INTEGER)")
    writer.execute("INSERT INTO t VALUES (1)")
    path.unlink()
    writer.close()  # SQLite leaves the WAL of an unlinked database where it was
    wal = tmp_path / "idempotency.sqlite3-wal"
    assert wal.stat().st_size > 0
    with pytest.raises(StartupError, match="remains but the database itself is gone") as caught:
        await SqliteStore.open(path)
    assert caught.value.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert not path.exists()


async def test_probe_notices_a_deletion_while_idle(tmp_path: Path) -> None:
    """probe() passes on a healthy store and raises StoreLostError once the file is gone,
    with no claim arriving; ``problem`` is set from then on."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        await store.probe()
        before = store.transactions
        await store.probe()
        assert store.transactions == before  # a probe runs no transaction
        path.unlink()
        with pytest.raises(StoreLostError):
            await store.probe()
        assert store.problem is not None
    finally:
        await store.close()
    assert not path.exists()


async def test_a_deleted_parent_directory_is_a_loss(tmp_path: Path) -> None:
    """A store whose whole directory was removed is lost, and the directory is not remade."""
    directory = tmp_path / "var"
    path = directory / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        for leftover in directory.iterdir():
            leftover.unlink()
        directory.rmdir()
        with pytest.raises(StoreLostError):
            await claim(store)
    finally:
        await store.close()
    assert not directory.exists()


# -- I/O failures ------------------------------------------------------------------------------


async def test_a_sqlite_io_failure_is_a_store_unavailable_error(tmp_path: Path) -> None:
    """An sqlite3.OperationalError in a call becomes StoreUnavailableError (retriable, the
    original chained, the file named, no key in it); the calls around it still commit."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)

    def fail() -> None:
        raise sqlite3.OperationalError("database or disk is full")

    try:
        blocker = hold_the_write_lock(path)
        try:
            first = asyncio.ensure_future(claim(store, key="k-1"))
            failing = store._run(fail)
            await asyncio.sleep(0.1)
        finally:
            let_go(blocker)
        with pytest.raises(StoreUnavailableError) as caught:
            await failing
        assert (await first).status is ClaimStatus.CLAIMED
        assert caught.value.retriable is True
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert str(path) in str(caught.value)
        assert "disk is full" in str(caught.value)
        assert store.problem is None  # unavailable is not lost
        assert (await claim(store, key="k-2")).status is ClaimStatus.CLAIMED
    finally:
        await store.close()


def test_the_store_errors_form_one_tree() -> None:
    """Store errors are PointsAdjusterErrors; unavailable is retriable, lost is not, and
    OwnershipLostError stays outside the tree (it is not a fault of the store)."""
    assert issubclass(StoreError, PointsAdjusterError)
    assert issubclass(StoreUnavailableError, StoreError)
    assert issubclass(StoreLostError, StoreError)
    assert StoreUnavailableError("x", store="p").retriable is True
    assert StoreLostError("x", store="p").retriable is False
    assert not issubclass(OwnershipLostError, StoreError)


# -- continuity at start-up ------------------------------------------------------------------

WHERE = {"store": "var/idempotency.sqlite3", "identity": "id-1", "group": "g", "topic": "t"}


@pytest.mark.parametrize(
    ("created", "committed", "allow", "expected"),
    [
        (True, {0: 10, 2: 5}, False, "refused"),
        (True, {}, False, None),
        (False, {0: 10}, False, None),
        (False, {}, False, None),
        (True, {0: 10}, True, "warning"),
        (True, {}, True, None),
        (False, {0: 10}, True, None),
    ],
)
def test_the_continuity_rule(
    created: bool, committed: dict[int, int], allow: bool, expected: str | None
) -> None:
    """A new store next to committed offsets is refused, or only warned about with the
    override; a new store with no offsets, or an old store, is fine."""
    if expected == "refused":
        with pytest.raises(StartupError):
            check_continuity(created, committed, allow, **WHERE)
        return
    result = check_continuity(created, committed, allow, **WHERE)
    if expected is None:
        assert result is None
    else:
        assert result is not None
        assert "PA_IDEMPOTENCY__ALLOW_EMPTY_STORE=true" in result


def test_a_refusal_says_what_was_found_and_what_to_do() -> None:
    """The refusal names the store, its identity, the group, the topic, the partitions, the
    remedy and the path setting."""
    with pytest.raises(StartupError) as caught:
        check_continuity(True, {2: 5, 0: 10}, False, **WHERE)
    message = str(caught.value)
    assert caught.value.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert caught.value.component == "idempotency store"
    for part in (
        "the store at var/idempotency.sqlite3 is new (identity id-1)",
        "consumer group g has committed offsets on t (partitions 0, 2)",
        "re-read commands could be applied twice",
        "Restore the store, or set PA_IDEMPOTENCY__ALLOW_EMPTY_STORE=true",
    ):
        assert part in message


class OffsetsSeen:
    """A fake reader of committed offsets that counts its calls."""

    def __init__(self, offsets: dict[int, int]) -> None:
        self.offsets = offsets
        self.calls = 0

    async def __call__(self, settings: KafkaSettings) -> dict[int, int]:
        self.calls += 1
        return self.offsets


async def test_verify_refuses_a_new_store_and_leaves_it_new(tmp_path: Path) -> None:
    """verify_continuity refuses a new store next to committed offsets and does not adopt it,
    so the next start (a restart after the refusal) is refused too."""
    path = tmp_path / "idempotency.sqlite3"
    settings = IdempotencySettings(sqlite_path=path)
    for _ in range(2):
        store = await SqliteStore.open(path)
        try:
            assert store.created is True
            with pytest.raises(StartupError, match="is new"):
                await verify_continuity(
                    store, settings, KafkaSettings(), read_offsets=OffsetsSeen({0: 3})
                )
        finally:
            await store.close()


async def test_verify_with_the_override_warns_and_adopts(tmp_path: Path) -> None:
    """With allow_empty_store, a new store next to offsets starts with a warning and is
    adopted: the next start finds it not new and does not even ask the broker."""
    path = tmp_path / "idempotency.sqlite3"
    settings = IdempotencySettings(sqlite_path=path, allow_empty_store=True)
    store = await SqliteStore.open(path)
    try:
        warning = await verify_continuity(
            store, settings, KafkaSettings(), read_offsets=OffsetsSeen({1: 7})
        )
    finally:
        await store.close()
    assert warning is not None
    assert "partitions 1" in warning
    reader = OffsetsSeen({1: 7})
    store = await SqliteStore.open(path)
    try:
        assert store.created is False
        strict = IdempotencySettings(sqlite_path=path)
        assert await verify_continuity(store, strict, KafkaSettings(), read_offsets=reader) is None
    finally:
        await store.close()
    assert reader.calls == 0


async def test_verify_adopts_a_new_store_when_the_group_has_no_offsets(tmp_path: Path) -> None:
    """A first start (new store, group without offsets) passes and adopts the store."""
    path = tmp_path / "idempotency.sqlite3"
    store = await SqliteStore.open(path)
    try:
        result = await verify_continuity(
            store,
            IdempotencySettings(sqlite_path=path),
            KafkaSettings(),
            read_offsets=OffsetsSeen({}),
        )
        assert result is None
    finally:
        await store.close()
    store = await SqliteStore.open(path)
    try:
        assert store.created is False
    finally:
        await store.close()


async def test_verify_skips_the_memory_backend() -> None:
    """The memory backend is new on every start by design: not checked, the broker not asked."""
    reader = OffsetsSeen({0: 1})
    result = await verify_continuity(
        MemoryStore(), IdempotencySettings(backend="memory"), KafkaSettings(), read_offsets=reader
    )
    assert result is None
    assert reader.calls == 0
