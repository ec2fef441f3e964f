"""What only the Redis store does: its durability check, its Lua claim rule, races between
replicas, outages, losses, passwords and batched pruning. The contract every store keeps is
tests/contract/test_store_contract.py.

Tests that stop, pause, flush or configure a server use one of their own (``own_redis``);
the others share the session's Redis under a key prefix of their own."""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import datetime, timedelta
from typing import Any

import pytest
import redis.asyncio
from structlog.testing import capture_logs

from pa_devkit.localinfra.broker_config import free_port
from service.domain.store import (
    ClaimStatus,
    IdempotencyRecord,
    OwnershipLostError,
    State,
    StoreLostError,
    StoreUnavailableError,
    decide_claim,
)
from service.errors import StartupError
from service.idempotency.memory import MemoryStore
from service.idempotency.redis_store import RedisStore, record_fields
from tests.contract.cases import FP, LEASE_S, ME, OTHER, OTHER_FP, OUTCOME, T0, stored_in
from tests.contract.open_redis import delete_prefix
from tests.store_support import own_redis

pytestmark = pytest.mark.redis

DURABLE_SETTING = "PA_IDEMPOTENCY__REDIS_REQUIRE_DURABLE"


@pytest.fixture
async def prefix(redis_url: str) -> AsyncIterator[str]:
    """A key prefix of this test's own on the session's Redis, its keys deleted after."""
    name = f"it-{uuid.uuid4().hex[:12]}"
    yield name
    await delete_prefix(redis_url, name)


@contextlib.asynccontextmanager
async def opened(url: str, prefix: str = "pa", **options: Any) -> AsyncIterator[RedisStore]:
    store = await RedisStore.open(url, prefix=prefix, **options)
    try:
        yield store
    finally:
        await store.close()


@contextlib.asynccontextmanager
async def raw(url: str) -> AsyncIterator[redis.asyncio.Redis]:
    client = redis.asyncio.Redis.from_url(url, decode_responses=True)
    try:
        yield client
    finally:
        await client.aclose()


def chain(error: BaseException) -> Iterator[BaseException]:
    """``error`` and every exception it was raised from or during."""
    seen: BaseException | None = error
    while seen is not None:
        yield seen
        seen = seen.__cause__ or seen.__context__


# -- durability at start-up ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "config", "found"),
    [
        ({"appendonly": False}, {}, "appendonly is no"),
        ({"appendfsync": "everysec"}, {}, "appendfsync is everysec"),
        ({}, {"maxmemory-policy": "allkeys-lru"}, "maxmemory-policy is allkeys-lru"),
    ],
    ids=["appendonly-no", "everysec", "allkeys-lru"],
)
async def test_a_redis_that_may_lose_claims_is_refused_at_start(
    options: dict[str, Any], config: dict[str, str], found: str
) -> None:
    """A Redis without appendonly yes / appendfsync always, or one that evicts any key, is
    refused with a StartupError saying what was found, what is needed and which setting
    overrides it, and nothing is written to it."""
    with own_redis(**options) as server:
        async with raw(server.url) as client:
            for name, value in config.items():
                await client.config_set(name, value)
            with pytest.raises(StartupError) as caught:
                await RedisStore.open(server.url)
            message = str(caught.value)
            assert found in message
            assert "appendonly yes, appendfsync always and maxmemory-policy noeviction" in message
            assert caught.value.setting == DURABLE_SETTING
            assert "\n" not in message
            assert await client.dbsize() == 0


async def test_a_non_durable_redis_is_used_with_a_loud_warning_when_allowed() -> None:
    """require_durable=False opens a Redis without the append-only file, logging
    idempotency.redis_not_durable with what was found; the store then works."""
    with own_redis(appendonly=False) as server, capture_logs() as logs:
        async with opened(server.url, require_durable=False) as store:
            claimed = await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
            assert claimed.status is ClaimStatus.CLAIMED
    warnings = [entry for entry in logs if entry["event"] == "idempotency.redis_not_durable"]
    assert len(warnings) == 1
    assert warnings[0]["log_level"] == "warning"
    assert "appendonly is no" in warnings[0]["problem"]
    assert warnings[0]["setting"] == DURABLE_SETTING


async def test_a_redis_hiding_config_cannot_be_verified_and_is_refused_unless_allowed() -> None:
    """When CONFIG is refused (a managed Redis, an ACL), the durability cannot be verified:
    refused by default, said so, and opened with the warning when require_durable=False."""
    with own_redis() as server:
        async with raw(server.url) as client:
            await client.acl_setuser(
                "service",
                enabled=True,
                passwords=["+svc-secret"],
                keys="*",
                commands=["+@all", "-config"],
            )
        limited = f"redis://service@127.0.0.1:{server.port}/0"
        with pytest.raises(StartupError, match="cannot verify that Redis") as caught:
            await RedisStore.open(limited, password="svc-secret")
        assert caught.value.setting == DURABLE_SETTING
        assert "svc-secret" not in str(caught.value)
        with capture_logs() as logs:
            async with opened(limited, password="svc-secret", require_durable=False) as store:
                await store.probe()
        assert [entry["event"] for entry in logs] == ["idempotency.redis_not_durable"]


# -- the claim rule in Lua -------------------------------------------------------------------


def random_record(rng: random.Random, key: str, now: datetime) -> IdempotencyRecord | None:
    """A record as any sequence of calls could have left it (or none), its lease around
    ``now`` to the microsecond."""
    if rng.random() < 0.05:
        return None
    state = rng.choice(list(State))
    lease_until = now + timedelta(microseconds=rng.choice([-(10**7), -1, 0, 1, 10**7]))
    return IdempotencyRecord(
        key=key,
        fingerprint=rng.choice([FP, OTHER_FP]),
        state=state,
        owner=rng.choice([ME, OTHER]),
        lease_until=lease_until,
        attempts=rng.randint(0, 3),
        created_at=now - timedelta(hours=1),
        updated_at=now - timedelta(minutes=rng.randint(1, 50)),
        outcome=OUTCOME if state in {State.COMPLETED, State.FAILED, State.UNKNOWN} else None,
        published=rng.random() < 0.5,
        settle_until=now - timedelta(seconds=5) if state is State.RECONCILING else None,
        token=rng.randint(1, 9),
    )


async def test_the_claim_script_agrees_with_decide_claim_on_random_records(
    redis_url: str, prefix: str
) -> None:
    """On 400 random records (every state, both fingerprints, both owners, leases just before,
    at and after now), the Lua claim answers decide_claim's status, and leaves the record the
    in-memory store (the Python rule) leaves."""
    rng = random.Random(20250304)
    cases = []
    for index in range(400):
        key = f"prop-{index}"
        now = T0 + timedelta(seconds=rng.randint(0, 10**6), microseconds=rng.randint(0, 999_999))
        existing = random_record(rng, key, now)
        cases.append((key, existing, rng.choice([FP, OTHER_FP]), rng.choice([ME, OTHER]), now))
    async with raw(redis_url) as client, opened(redis_url, prefix) as store:
        async with client.pipeline(transaction=False) as pipe:
            for key, existing, *_ in cases:
                if existing is not None:
                    fields: dict[Any, Any] = record_fields(existing)  # redis-py's wider types
                    pipe.hset(f"{prefix}:k:{key}", mapping=fields)
            await pipe.execute()
        seen = set()
        for key, existing, fingerprint, owner, now in cases:
            claimed = await store.claim(key, fingerprint, owner=owner, now=now, lease_s=LEASE_S)
            expected = decide_claim(existing, fingerprint, owner, now)
            assert claimed.status is expected, (existing, fingerprint, owner, now)
            oracle = MemoryStore()
            if existing is not None:
                oracle.records[key] = existing
            in_memory = await oracle.claim(key, fingerprint, owner=owner, now=now, lease_s=LEASE_S)
            assert claimed == in_memory, (existing, fingerprint, owner, now)
            assert await store.get(key) == oracle.records[key]
            seen.add(claimed.status)
    assert seen == set(ClaimStatus)


async def test_a_claim_sent_again_with_its_id_answers_the_same(redis_url: str, prefix: str) -> None:
    """A claim that ran but whose answer was lost, sent again by the client with the same
    claim id, gets its own answer back (CLAIMED, token 1), not BUSY from its own claim; a new
    claim id sees the claim as it is."""
    async with opened(redis_url, prefix, claim_ids=lambda: "the-same-id") as store:
        first = await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
        again = await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
        assert (first.status, again.status) == (ClaimStatus.CLAIMED, ClaimStatus.CLAIMED)
        assert again.record == first.record
    async with opened(redis_url, prefix) as store:
        busy = await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
        assert busy.status is ClaimStatus.BUSY


# -- two replicas ----------------------------------------------------------------------------


async def test_two_stores_racing_for_the_same_200_keys_claim_each_exactly_once(
    redis_url: str, prefix: str
) -> None:
    """Two store instances (two replicas) claiming the same 200 keys at once: per key exactly
    one CLAIMED, the other BUSY, and the record names the winner."""
    keys = [f"race-{index}" for index in range(200)]
    async with opened(redis_url, prefix) as first, opened(redis_url, prefix) as second:
        calls = [
            (key, store, owner) for key in keys for store, owner in ((first, ME), (second, OTHER))
        ]
        random.Random(7).shuffle(calls)
        results = await asyncio.gather(
            *(
                store.claim(key, FP, owner=owner, now=T0, lease_s=LEASE_S)
                for key, store, owner in calls
            )
        )
        by_key: dict[str, list[tuple[ClaimStatus, str]]] = {}
        for (key, _, owner), result in zip(calls, results, strict=True):
            by_key.setdefault(key, []).append((result.status, owner))
        for key in keys:
            statuses = sorted(status for status, _ in by_key[key])
            assert statuses == [ClaimStatus.BUSY, ClaimStatus.CLAIMED], key
            [winner] = [owner for status, owner in by_key[key] if status is ClaimStatus.CLAIMED]
            record = await first.get(key)
            assert record is not None
            assert (record.owner, record.token) == (winner, 1)


async def test_after_a_takeover_the_old_owner_is_fenced_off(redis_url: str, prefix: str) -> None:
    """Replica A's lease lapses and replica B takes the key over (token 2): A's finish and park
    raise OwnershipLostError, its release does nothing, and B's finish is what is stored."""
    async with opened(redis_url, prefix) as a, opened(redis_url, prefix) as b:
        await a.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
        later = T0 + timedelta(seconds=LEASE_S + 1)
        taken = await b.claim("k", FP, owner=OTHER, now=later, lease_s=LEASE_S)
        assert (taken.status, taken.record.token) == (ClaimStatus.TAKEN_OVER, 2)
        with pytest.raises(OwnershipLostError):
            await a.finish(
                "k",
                owner=ME,
                token=1,
                state=State.COMPLETED,
                outcome=OUTCOME,
                attempts=1,
                now=later,
            )
        with pytest.raises(OwnershipLostError):
            await a.park("k", owner=ME, token=1, now=later, settle_until=later, lease_until=later)
        await a.release("k", owner=ME, token=1, now=later)
        assert await b.get("k") == taken.record
        await b.finish(
            "k", owner=OTHER, token=2, state=State.FAILED, outcome=OUTCOME, attempts=2, now=later
        )
        record = await a.get("k")
        assert record is not None
        assert (record.state, record.owner, record.attempts, record.outcome) == (
            State.FAILED,
            OTHER,
            2,
            OUTCOME,
        )


# -- outages ---------------------------------------------------------------------------------


async def test_a_crashed_redis_fails_calls_as_unavailable_and_the_store_recovers_its_claims() -> (
    None
):
    """While Redis is down, calls fail with StoreUnavailableError within the timeout (the
    redis-py error chained); once it is back, the same store instance works again, and a
    claim acknowledged before the crash is still there (appendfsync always)."""
    with own_redis() as server:
        async with opened(server.url, timeout_s=1.0) as store:
            acknowledged = await store.claim("before", FP, owner=ME, now=T0, lease_s=LEASE_S)
            assert acknowledged.status is ClaimStatus.CLAIMED
            server.kill()
            started = time.monotonic()
            with pytest.raises(StoreUnavailableError, match="cannot reach Redis") as caught:
                await store.claim("during", FP, owner=ME, now=T0, lease_s=LEASE_S)
            assert time.monotonic() - started < 1.5
            assert isinstance(caught.value.__cause__, redis.exceptions.ConnectionError)
            assert caught.value.retriable
            assert store.problem is None
            server.start()
            assert await store.get("before") == acknowledged.record
            busy = await store.claim("before", FP, owner=OTHER, now=T0, lease_s=LEASE_S)
            assert busy.status is ClaimStatus.BUSY
            await store.probe()  # the same store: its meta hash came back with the rest


async def test_after_a_restart_the_pool_reconnects_and_the_scripts_are_loaded_again() -> None:
    """A planned restart kills the pooled connections and empties Redis's script cache: the
    next calls still succeed (stale connections replaced, NOSCRIPT answered by loading the
    script again), and so after SCRIPT FLUSH."""
    with own_redis() as server:
        async with opened(server.url, timeout_s=2.0) as store:
            await asyncio.gather(*(store.get(f"k-{index}") for index in range(5)))
            server.restart()
            claimed = await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
            assert claimed.status is ClaimStatus.CLAIMED
            async with raw(server.url) as client:
                await client.script_flush()
            await store.release("k", owner=ME, token=1, now=T0)
            record = await store.get("k")
            assert record is not None
            assert record.state is State.RELEASED


async def test_a_hung_redis_fails_calls_within_the_timeout_and_the_store_goes_on_after() -> None:
    """A Redis that stopped answering (SIGSTOP) fails a call with StoreUnavailableError after
    timeout_s, not later; once it answers again the same store serves calls."""
    with own_redis() as server:
        async with opened(server.url, timeout_s=0.5) as store:
            await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
            server.pause()
            try:
                started = time.monotonic()
                with pytest.raises(StoreUnavailableError):
                    await store.get("k")
                assert time.monotonic() - started < 1.2
            finally:
                server.resume()
            record = await store.get("k")
            assert record is not None
            assert record.owner == ME


# -- losing the store ------------------------------------------------------------------------


async def test_flushall_makes_the_store_lost_for_good_and_nothing_is_written_after() -> None:
    """After FLUSHALL, probe raises StoreLostError and sets problem; a store that notices it
    in a claim instead writes nothing; every later call of either raises StoreLostError; a
    new open makes a new, created store."""
    with own_redis() as server:
        async with (
            raw(server.url) as client,
            opened(server.url, "first") as probed,
            opened(server.url, "second") as claiming,
        ):
            identity = probed.identity
            await probed.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
            await claiming.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
            await client.flushall()
            with pytest.raises(StoreLostError):
                await probed.probe()
            assert probed.problem is not None
            assert "FLUSHALL" in probed.problem
            with pytest.raises(StoreLostError):
                await claiming.claim("other", FP, owner=ME, now=T0, lease_s=LEASE_S)
            assert claiming.problem is not None
            assert await client.dbsize() == 0
            for store in (probed, claiming):
                with pytest.raises(StoreLostError) as caught:
                    await store.get("k")
                assert not caught.value.retriable
                with pytest.raises(StoreLostError):
                    await store.adopt()
            assert await client.dbsize() == 0
            async with opened(server.url, "first") as reopened:
                assert reopened.created
                assert reopened.identity != identity


async def test_another_store_restored_over_it_is_lost(redis_url: str, prefix: str) -> None:
    """When the meta hash names another store (data restored from elsewhere), the next call
    raises StoreLostError naming both ids, and the store stays lost if it changes back."""
    async with raw(redis_url) as client, opened(redis_url, prefix) as store:
        mine = store.identity
        await client.hset(f"{prefix}:meta", "store_id", "another-store")
        with pytest.raises(StoreLostError):
            await store.claim("k", FP, owner=ME, now=T0, lease_s=LEASE_S)
        assert store.problem is not None
        assert "another-store" in store.problem
        assert mine in store.problem
        assert await client.exists(f"{prefix}:k:k") == 0
        await client.hset(f"{prefix}:meta", "store_id", mine)
        with pytest.raises(StoreLostError):
            await store.probe()


async def test_created_until_adopted_and_then_not(redis_url: str, prefix: str) -> None:
    """A new prefix opens created with a fresh identity; the identity is kept by later opens;
    once adopted (or holding records) the store no longer opens created."""
    async with opened(redis_url, prefix) as first:
        assert first.created
    async with opened(redis_url, prefix) as second:
        assert second.created
        assert second.identity == first.identity
        await second.adopt()
        await second.adopt()
    async with opened(redis_url, prefix) as third:
        assert not third.created
        assert third.identity == first.identity


# -- passwords and addresses -----------------------------------------------------------------


async def test_a_wrong_password_is_a_startup_error_within_seconds_that_never_shows_it() -> None:
    """A wrong password (given apart or in the URL) or none is a StartupError within seconds
    naming the password setting; no message in the chain holds the password."""
    secret = "wr0ng-Pa55-word"
    with own_redis(password="the-right-one") as server:
        plain = f"redis://127.0.0.1:{server.port}/0"
        in_url = f"redis://:{secret}@127.0.0.1:{server.port}/0"
        for url, password in ((plain, secret), (in_url, None), (plain, None)):
            started = time.monotonic()
            with pytest.raises(StartupError) as caught:
                await RedisStore.open(url, password=password, timeout_s=2.0)
            assert time.monotonic() - started < 3.0
            assert caught.value.setting == "PA_IDEMPOTENCY__PASSWORD_FILE"
            assert "refused the password" in str(caught.value)
            for error in chain(caught.value):
                assert secret not in str(error), error
                assert secret not in repr(error.args)
        async with opened(plain, password="the-right-one") as store:
            await store.probe()


async def test_an_unreachable_redis_is_a_startup_error_naming_the_url_setting() -> None:
    """Nothing listening at the URL: a StartupError saying Redis cannot be reached, quickly."""
    url = f"redis://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(StartupError, match="cannot reach Redis") as caught:
        await RedisStore.open(url, timeout_s=1.0)
    assert time.monotonic() - started < 3.0
    assert caught.value.setting == "PA_IDEMPOTENCY__DSN"


# -- pruning ---------------------------------------------------------------------------------


@pytest.mark.timeout(20)  # a batch loop that steps over nothing would spin: fail fast
async def test_prune_in_small_batches_deletes_old_finished_records_and_keeps_live_claims(
    redis_url: str, prefix: str
) -> None:
    """With batches of 7 and the oldest keys still live (stepped over, not looped on), prune
    deletes exactly the old terminal and released records, forgets a key whose record was
    deleted by hand, and leaves the sorted set naming exactly the records kept."""
    cutoff = T0 - timedelta(days=30)
    oldest = T0 - timedelta(days=60)
    old = T0 - timedelta(days=40)
    async with raw(redis_url) as client, opened(redis_url, prefix) as store:
        store.prune_batch = 7
        kept: list[str] = []
        gone: list[str] = []
        for index in range(10):
            await stored_in(store, f"live-{index}", State.IN_FLIGHT, at=oldest)
            kept.append(f"live-{index}")
        for index in range(4):
            await stored_in(store, f"parked-{index}", State.RECONCILING, at=oldest)
            kept.append(f"parked-{index}")
        for index, state in enumerate([State.COMPLETED, State.FAILED, State.UNKNOWN] * 7):
            await stored_in(store, f"done-{index}", state, at=old + timedelta(seconds=index))
            gone.append(f"done-{index}")
        for index in range(6):
            await stored_in(store, f"released-{index}", None, at=old)
            await store.release(f"released-{index}", owner=ME, token=1, now=old)
            gone.append(f"released-{index}")
        for index in range(5):
            await stored_in(store, f"recent-{index}", State.COMPLETED, at=T0)
            kept.append(f"recent-{index}")
        await stored_in(store, "deleted-by-hand", State.COMPLETED, at=old)
        await client.delete(f"{prefix}:k:deleted-by-hand")

        assert await store.prune(older_than=cutoff) == len(gone)

        for key in gone:
            assert await store.get(key) is None, key
        for key in kept:
            assert await store.get(key) is not None, key
        assert sorted(await client.zrange(f"{prefix}:updated", 0, -1)) == sorted(kept)
        assert await store.prune(older_than=cutoff) == 0
        again = await store.claim("done-0", OTHER_FP, owner=OTHER, now=T0, lease_s=LEASE_S)
        assert again.status is ClaimStatus.CLAIMED


async def test_more_concurrent_calls_than_connections_wait_their_turn(
    redis_url: str, prefix: str
) -> None:
    """2,000 adjustments' store calls from 64 concurrent callers on 2 connections, with a
    1 s timeout: callers queue first come, first served, so none waits out its timeout while
    later ones are served (redis-py's pool alone let newcomers overtake waiters)."""
    async with opened(redis_url, prefix, pool_size=2, timeout_s=1.0) as store:
        waits: list[float] = []

        async def adjust(key: str) -> None:
            started = time.monotonic()
            await store.claim(key, FP, owner=ME, now=T0, lease_s=LEASE_S)
            await store.finish(
                key, owner=ME, token=1, state=State.COMPLETED, outcome=OUTCOME, attempts=1, now=T0
            )
            await store.mark_published(key)
            waits.append(time.monotonic() - started)

        queue = [f"queued-{index}" for index in range(2000)]

        async def caller() -> None:
            while queue:
                await adjust(queue.pop())

        await asyncio.gather(*(caller() for _ in range(64)))
        assert len(waits) == 2000
        assert max(waits) < 1.0
