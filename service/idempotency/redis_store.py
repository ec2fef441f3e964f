"""The idempotency store on Redis: shared by every replica of the service.

Layout: one hash per record, ``<prefix>:k:<idempotency key>``, one field per attribute of an
``IdempotencyRecord`` (instants as integer microseconds since the epoch, in decimal); the
hash ``<prefix>:meta`` with the store's identity; the sorted set ``<prefix>:updated`` of
every key, scored by when its record last changed, which ``prune`` walks. Nothing carries a
TTL: retention is ``prune``'s business alone. An expiry would delete a claim that is IN_FLIGHT
or RECONCILING (whose request may have reached PAS) as readily as a finished one, silently.

Durability, and what this store requires of the server. A claim must outlive a crash of
Redis: if it vanished, the re-delivered command would be claimed afresh and the credit
applied twice. ``open`` reads the server's configuration (``CONFIG GET``) and requires:

- ``appendonly yes`` and ``appendfsync always``: every write is in the append-only file and
  fsynced before Redis answers, so an acknowledged claim survives a crash of Redis or of its
  machine (with ``everysec`` the last second of claims may vanish; RDB snapshots lose more);
- ``maxmemory-policy`` ``noeviction`` (or a ``volatile-*`` policy, which only evicts keys with
  a TTL, and these have none): an ``allkeys-*`` policy evicts claims under memory pressure.
  Writes refused as out of memory fail as ``StoreUnavailableError``; nothing is lost.

A server short of that is refused with ``StartupError``; with ``require_durable=False``
(``PA_IDEMPOTENCY__REDIS_REQUIRE_DURABLE=false``) it is used anyway and the event
``idempotency.redis_not_durable`` is logged at every open. A managed Redis that hides
``CONFIG`` (renamed, or refused by an ACL) cannot be verified and is refused the same way:
check it by hand, then turn the setting off.

Replicas: replication is asynchronous, so a claim acknowledged by the primary may not have
reached a replica when the primary dies, and a failover (Sentinel, a managed service's
automatic one) would promote a replica without it; the store keeps its identity across that,
so nothing notices. ``min-replicas-to-write`` only stops writes while replicas lag or are
gone, and ``WAIT`` (not issued here) narrows the window without closing it. What we require:
one primary, durable as above, and no automatic failover to a replica; a replica is fine as
a backup. A deployment that needs a store that fails over should use PostgreSQL with
synchronous replication. Redis Cluster is not supported: a script touches the meta hash, the
sorted set and a record, which are in different hash slots.

Atomicity: every call that reads and writes a record is one Lua script (``EVALSHA``), which
Redis runs alone: the claim reads the record and applies the claim rule of
``service.domain.store.decide_claim`` (a released key reset and claimed again, the token
incremented whenever the record changes hands) in one step, so two replicas claiming one key
never both get CLAIMED. The rule is written twice, in Python and in Lua; the contract suite
(tests/contract) and a property test comparing the script with ``decide_claim`` on random
records (tests/integration/test_redis_store.py) hold them to each other. The instants ``now``
and the lease's end come from the caller, as for every store; Lua only compares them (as
doubles, exact below 2**53 microseconds, the year 2255) and copies the caller's strings into
the record, never formatting a number of its own (its ``tostring`` keeps 14 digits).

Fencing: ``finish``, ``park`` and ``resume`` change a record only while it names the caller as
owner under the caller's token, and raise ``OwnershipLostError`` otherwise (or when the key
has no record); ``release`` turns the record RELEASED only when it is the caller's and
IN_FLIGHT, and else does nothing.

Retries: redis-py sends a command again, once and at once, after a connection error (a
pooled connection that died with a restarted server fails its first use). Every script is
safe to run twice: the writes after a claim set the same values again, and each claim carries
a random ``claim_id`` that the record keeps with the status it returned, so a claim that ran
but whose answer was lost answers the same when sent again instead of finding its own claim
BUSY. A timeout is not retried: its call fails as unavailable after ``timeout_s`` (which also
bounds connecting and waiting for a pooled connection), and whatever the runner does next
(claim again: BUSY, then TAKEN_OVER once the lease ends) stays safe.

Pruning: ``prune`` reads the keys last changed before the cut-off from ``<prefix>:updated`` in
batches of ``prune_batch`` (``ZRANGEBYSCORE ... LIMIT``), and a script deletes those whose
record is still prunable and old (checked again, atomically: a key claimed again meanwhile is
kept) and removes them from the set. Each batch is short, so Redis never stalls for long on
it; old records that must stay (IN_FLIGHT, RECONCILING) are stepped over.

Identity: ``<prefix>:meta`` holds ``store_id`` (a UUID), ``created_at`` and ``adopted_at``,
written atomically by the first open. ``created`` says the store was not adopted and holds no
records. Losing it: every script first checks that ``<prefix>:meta`` still holds the
``store_id`` this instance opened (one hash read inside the script, no round trip), and
``probe`` does the same while idle. A missing meta hash (``FLUSHALL``, a Redis restarted
without its append-only file, the key deleted) or another ``store_id`` (another store's data
restored over it) means the records this service relied on are gone: the script writes
nothing, ``problem`` says why, and every later call raises ``StoreLostError``.

Outcomes: the ``outcome`` field keeps the JSON of the outcome's event record
(``service.codec.outcome.stored_record``), as the SQLite store's column does, so an outcome
reads back equal; one that cannot be read back fails the call with ``StoreError``.

Errors: a refused or reset connection, a timeout, a Redis still loading its data
(``LOADING``), a read-only replica (``READONLY``), an out-of-memory refusal (``OOM``), a Redis
that cannot write its append-only file (``MISCONF``) or busy with a script (``BUSY``) fail the
call with ``StoreUnavailableError``, the redis-py error chained; the pool reconnects by itself
once the server is back. Any other Redis error is a plain ``StoreError``. Messages name the
store by its URL with the password hidden (``service.redact``), never a key or an outcome.

Why redis-py: it is Redis's own maintained client, asyncio-native (``redis.asyncio``), typed
inline, with a connection pool, socket timeouts, and ``register_script``, which sends
``EVALSHA`` and loads the script again when a restarted Redis answers ``NOSCRIPT``.
"""

from __future__ import annotations

import asyncio
import functools
import json
import secrets
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import redis.asyncio
import redis.exceptions
import structlog
from pydantic import SecretStr
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from service.codec.outcome import outcome_from_record, stored_record
from service.domain.outcome import Outcome
from service.domain.store import (
    PRUNABLE,
    TERMINAL,
    Claim,
    ClaimStatus,
    IdempotencyRecord,
    OwnershipLostError,
    State,
    StoreError,
    StoreLostError,
    StoreUnavailableError,
)
from service.errors import StartupError
from service.redact import MASK, redact_in_text, redact_url

T = TypeVar("T")

log = structlog.get_logger("service.idempotency")

SCHEMA_VERSION = 1
PRUNE_BATCH = 500
"""The most keys one prune script looks at."""

DURABLE_SETTING = "PA_IDEMPOTENCY__REDIS_REQUIRE_DURABLE"
URL_SETTING = "PA_IDEMPOTENCY__DSN"
PASSWORD_SETTING = "PA_IDEMPOTENCY__PASSWORD_FILE"  # noqa: S105 (a setting's name)

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_US = timedelta(microseconds=1)

# -- the scripts -------------------------------------------------------------------------------
# KEYS[1] is always the meta hash and ARGV[1] the store_id this instance opened; the record
# scripts take KEYS[2] = the sorted set, KEYS[3] = the record, ARGV[2] = the idempotency key.
# The first element of every answer says what happened: 'lost' (with the store_id found, or
# ''), 'ok', 'owner' (not held by the caller), 'damaged', or a claim's status.


def _lua_set(states: frozenset[State]) -> str:
    return "{" + ", ".join(f"{state.value} = true" for state in sorted(states)) + "}"


_STILL_OURS = """
local found = redis.call('HGET', KEYS[1], 'store_id')
if found ~= ARGV[1] then return {'lost', found or ''} end
"""

_OPEN = """
local id = redis.call('HGET', KEYS[1], 'store_id')
local records = redis.call('ZCARD', KEYS[2])
if not id then
  redis.call('HSET', KEYS[1], 'store_id', ARGV[1], 'created_at', ARGV[2], 'version', ARGV[3])
  if records > 0 then redis.call('HSET', KEYS[1], 'adopted_at', ARGV[2]) end
  return {ARGV[1], records == 0 and 1 or 0, 1}
end
local adopted = redis.call('HEXISTS', KEYS[1], 'adopted_at')
return {id, (adopted == 0 and records == 0) and 1 or 0, 0}
"""

_CLAIM = (
    _STILL_OURS
    + f"""
local rec = KEYS[3]
local fingerprint, owner, now, lease_until, claim_id = ARGV[3], ARGV[4], ARGV[5], ARGV[6], ARGV[7]
local terminal = {_lua_set(TERMINAL)}
local function unchanged(status) return {{status, redis.call('HGETALL', rec)}} end
local function taken(status, token)
  redis.call('HSET', rec, 'owner', owner, 'lease_until', lease_until, 'updated_at', now,
    'token', token, 'claim_id', claim_id, 'claim_status', status)
  redis.call('ZADD', KEYS[2], now, ARGV[2])
  return unchanged(status)
end
local current = redis.call('HMGET', rec, 'fingerprint', 'state', 'owner', 'lease_until',
  'token', 'claim_id', 'claim_status')
local state = current[2]
if not state then
  redis.call('HSET', rec, 'fingerprint', fingerprint, 'state', 'IN_FLIGHT', 'attempts', '0',
    'created_at', now, 'published', '0')
  return taken('CLAIMED', '1')
end
if current[6] == claim_id then return unchanged(current[7]) end
local token = tostring(tonumber(current[5]) + 1)
if current[1] ~= fingerprint then return unchanged('CONFLICT') end
if state == 'RELEASED' then
  redis.call('HSET', rec, 'state', 'IN_FLIGHT', 'attempts', '0', 'published', '0')
  redis.call('HDEL', rec, 'outcome_kind', 'outcome', 'settle_until')
  return taken('CLAIMED', token)
end
if terminal[state] then return unchanged('DUPLICATE') end
local lapsed = tonumber(current[4]) <= tonumber(now)
if state == 'RECONCILING' then
  if current[3] == owner or lapsed then return taken('RECONCILE', token) end
  return unchanged('BUSY')
end
if state == 'IN_FLIGHT' then
  if lapsed then return taken('TAKEN_OVER', token) end
  return unchanged('BUSY')
end
return {{'damaged', state}}
"""
)

_OWNED = (
    _STILL_OURS
    + """
local current = redis.call('HMGET', KEYS[3], 'owner', 'token')
if current[1] ~= ARGV[3] or current[2] ~= ARGV[4] then return {'owner'} end
redis.call('HSET', KEYS[3], 'updated_at', ARGV[5], unpack(ARGV, 6))
redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
return {'ok'}
"""
)

_RELEASE = (
    _STILL_OURS
    + """
local current = redis.call('HMGET', KEYS[3], 'owner', 'token', 'state')
if current[1] == ARGV[3] and current[2] == ARGV[4] and current[3] == 'IN_FLIGHT' then
  redis.call('HSET', KEYS[3], 'state', 'RELEASED', 'updated_at', ARGV[5])
  redis.call('ZADD', KEYS[2], ARGV[5], ARGV[2])
end
return {'ok'}
"""
)

_PUBLISHED = (
    _STILL_OURS
    + """
if redis.call('EXISTS', KEYS[3]) == 1 then redis.call('HSET', KEYS[3], 'published', '1') end
return {'ok'}
"""
)

_GET = _STILL_OURS + "return {'ok', redis.call('HGETALL', KEYS[3])}\n"

_PRUNE = (
    _STILL_OURS
    + f"""
local prunable = {_lua_set(PRUNABLE)}
local cutoff = tonumber(ARGV[2])
local deleted, removed = 0, 0
for i = 3, #KEYS do
  local current = redis.call('HMGET', KEYS[i], 'state', 'updated_at')
  if not current[1] then
    redis.call('ZREM', KEYS[2], ARGV[i])
    removed = removed + 1
  elseif prunable[current[1]] and tonumber(current[2]) < cutoff then
    redis.call('DEL', KEYS[i])
    redis.call('ZREM', KEYS[2], ARGV[i])
    deleted = deleted + 1
    removed = removed + 1
  end
end
return {{'ok', deleted, removed}}
"""
)

_ADOPT = _STILL_OURS + "redis.call('HSETNX', KEYS[1], 'adopted_at', ARGV[2])\nreturn {'ok'}\n"

_PROBE = _STILL_OURS + "return {'ok'}\n"


# -- records -----------------------------------------------------------------------------------


def _us(moment: datetime) -> str:
    """``moment`` as the store keeps it: whole microseconds since the epoch, in decimal."""
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return str((moment - EPOCH) // _US)


def _dt(text: str) -> datetime:
    return EPOCH + int(text) * _US


def record_fields(record: IdempotencyRecord) -> dict[str, str]:
    """The hash that stores ``record`` (for tests that lay records down directly)."""
    fields = {
        "fingerprint": record.fingerprint,
        "state": record.state.value,
        "owner": record.owner,
        "lease_until": _us(record.lease_until),
        "attempts": str(record.attempts),
        "created_at": _us(record.created_at),
        "updated_at": _us(record.updated_at),
        "published": "1" if record.published else "0",
        "token": str(record.token),
    }
    if record.outcome is not None:
        fields["outcome_kind"] = record.outcome.kind
        fields["outcome"] = json.dumps(stored_record(record.outcome))
    if record.settle_until is not None:
        fields["settle_until"] = _us(record.settle_until)
    return fields


def _pairs(flat: Sequence[str]) -> dict[str, str]:
    """A flat ``HGETALL`` answer (field, value, field, value...) as a dict."""
    return dict(zip(flat[::2], flat[1::2], strict=True))


def _record(key: str, fields: Mapping[str, str], store: str) -> IdempotencyRecord:
    try:
        outcome = fields.get("outcome")
        settle_until = fields.get("settle_until")
        return IdempotencyRecord(
            key=key,
            fingerprint=fields["fingerprint"],
            state=State(fields["state"]),
            owner=fields["owner"],
            lease_until=_dt(fields["lease_until"]),
            attempts=int(fields["attempts"]),
            created_at=_dt(fields["created_at"]),
            updated_at=_dt(fields["updated_at"]),
            outcome=_read_outcome(fields.get("outcome_kind"), outcome) if outcome else None,
            published=fields["published"] == "1",
            settle_until=_dt(settle_until) if settle_until is not None else None,
            token=int(fields["token"]),
        )
    except (KeyError, ValueError) as exc:  # a damaged record, or one of an incompatible version
        what = f"field {exc} is missing" if isinstance(exc, KeyError) else str(exc)
        raise StoreError(
            f"idempotency store {store}: a record cannot be read back: {what}", store=store
        ) from None


def _read_outcome(kind: str | None, text: str) -> Outcome:
    return outcome_from_record(str(kind), json.loads(text))


# -- errors ------------------------------------------------------------------------------------

_UNAVAILABLE: tuple[tuple[type[redis.exceptions.RedisError], str], ...] = (
    # the most specific first: BusyLoading and Authentication are ConnectionErrors
    (redis.exceptions.BusyLoadingError, "Redis is loading its data set (just restarted)"),
    (redis.exceptions.AuthenticationError, "Redis refused the password"),
    (redis.exceptions.ConnectionError, "cannot reach Redis"),
    (redis.exceptions.TimeoutError, "Redis did not answer in time"),
    (redis.exceptions.ReadOnlyError, "Redis is a read-only replica (a failover?)"),
    (redis.exceptions.OutOfMemoryError, "Redis is out of memory (maxmemory) and refuses writes"),
    (redis.exceptions.TryAgainError, "Redis cannot serve the call now"),
    (redis.exceptions.ClusterDownError, "Redis cannot serve the call now"),
)
"""Redis errors that waiting may cure, and what each means."""

_UNAVAILABLE_REPLIES = {
    "MISCONF": "Redis cannot write its append-only file or snapshot (a full disk?)",
    "BUSY": "Redis is busy running a script",
    "NOREPLICAS": "Redis has too few replicas to take writes (min-replicas-to-write)",
}
"""The same for error replies redis-py has no class of its own for, by their first word."""


def _what_failed(exc: redis.exceptions.RedisError) -> str | None:
    """Why the call failed, in words, when Redis or the way to it is unavailable; None for an
    error that waiting would not cure."""
    for kind, words in _UNAVAILABLE:
        if isinstance(exc, kind):
            return words
    return _UNAVAILABLE_REPLIES.get(str(exc).split(" ", 1)[0])


class RedisStore:
    """Implements ``IdempotencyStore`` on Redis through redis-py's asyncio client."""

    prune_batch: int = PRUNE_BATCH
    """How many keys one prune script looks at (an attribute, so tests can make it small)."""

    def __init__(
        self,
        client: redis.asyncio.Redis,
        *,
        where: str,
        password: SecretStr | None,
        prefix: str,
        timeout_s: float,
        claim_ids: Callable[[], str],
        pool_size: int = 10,
    ) -> None:
        """Use ``open()``: this wraps a client whose server was not checked yet."""
        self._client = client
        self._where = where
        self._password = password
        self._prefix = prefix
        self._timeout_s = timeout_s
        self._claim_ids = claim_ids
        self._slots = asyncio.Semaphore(pool_size)
        """One per pooled connection, taken in arrival order: redis-py's pool lets a newcomer
        take a freed connection ahead of callers already waiting, and under more concurrent
        calls than connections some waited out their whole timeout (measured: 44 of 12,000
        calls failed at 32 concurrent callers on 10 connections, max wait 1.76 s at p99
        5 ms). asyncio's semaphore wakes its waiters first come, first served."""
        self._meta = f"{prefix}:meta"
        self._updated = f"{prefix}:updated"
        self._identity = ""
        self._created = False
        self._problem: str | None = None
        self._closed = False
        register = client.register_script
        self._open_script = register(_OPEN)
        self._claim_script = register(_CLAIM)
        self._owned_script = register(_OWNED)
        self._release_script = register(_RELEASE)
        self._published_script = register(_PUBLISHED)
        self._get_script = register(_GET)
        self._prune_script = register(_PRUNE)
        self._adopt_script = register(_ADOPT)
        self._probe_script = register(_PROBE)

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        password: SecretStr | str | None = None,
        prefix: str = "pa",
        timeout_s: float = 5.0,
        require_durable: bool = True,
        pool_size: int = 10,
        claim_ids: Callable[[], str] = lambda: secrets.token_hex(12),
    ) -> RedisStore:
        """Connect to the Redis at ``url`` (``redis://`` or ``rediss://``; ``password``, when
        given, overrides one in the URL), check that it is durable (see the module docstring),
        and open or create the store under ``prefix``. ``timeout_s`` bounds every call, and
        connecting; ``pool_size`` connections at most. ``claim_ids`` makes the id each claim
        carries (see Retries in the module docstring). Raises ``StartupError``."""
        where = f"{redact_url(url)} (prefix {prefix})"
        if not prefix:
            raise StartupError("idempotency store", "the Redis key prefix is empty")
        try:
            pool = redis.asyncio.BlockingConnectionPool.from_url(
                url,
                max_connections=pool_size,
                timeout=timeout_s,  # waiting for a free connection
                socket_connect_timeout=timeout_s,
                socket_timeout=timeout_s,
                retry=Retry(NoBackoff(), 1, (redis.exceptions.ConnectionError,)),
                decode_responses=True,
                client_name="points-adjuster",
            )
        except ValueError as exc:  # a URL redis-py cannot read
            raise StartupError(
                "idempotency store",
                f"cannot use {redact_url(url)}: {redact_in_text(str(exc), url)}",
                setting=URL_SETTING,
            ) from None
        secret = SecretStr(password) if isinstance(password, str) else password
        if secret is not None:
            pool.connection_kwargs["password"] = secret.get_secret_value()
        store = cls(
            redis.asyncio.Redis.from_pool(pool),
            where=where,
            password=secret,
            prefix=prefix,
            timeout_s=timeout_s,
            claim_ids=claim_ids,
            pool_size=pool_size,
        )
        try:
            await store._start(require_durable=require_durable)
        except BaseException:
            await store._client.aclose()
            raise
        return store

    async def _start(self, *, require_durable: bool) -> None:
        try:
            problem = await self._run(self._durability_problem)
            if problem is not None:
                if require_durable:
                    raise StartupError("idempotency store", problem, setting=DURABLE_SETTING)
                log.warning(
                    "idempotency.redis_not_durable",
                    store=self._where,
                    problem=problem,
                    setting=DURABLE_SETTING,
                )
            answer = await self._run(
                lambda: self._open_script(
                    keys=[self._meta, self._updated],
                    args=[str(uuid.uuid4()), _us(datetime.now(UTC)), SCHEMA_VERSION],
                )
            )
        except StoreError as exc:
            cause = exc.__cause__
            setting = (
                PASSWORD_SETTING
                if isinstance(cause, redis.exceptions.AuthenticationError)
                else URL_SETTING
            )
            what = str(exc).removeprefix(f"idempotency store {self._where}: ")
            raise StartupError(
                "idempotency store", f"Redis at {self._where}: {what}", setting=setting
            ) from cause
        self._identity, created, made = str(answer[0]), bool(answer[1]), bool(answer[2])
        self._created = created
        if made and not created:
            log.error(
                "idempotency.redis_meta_recreated",
                store=self._where,
                meta=self._meta,
                detail="records were found without the meta hash (deleted by hand?);"
                " a new identity was given to them",
            )

    async def _durability_problem(self) -> str | None:
        """What keeps the server from being durable enough for claims, or None."""
        try:
            async with self._client.pipeline(transaction=False) as pipe:
                pipe.config_get("appendonly")
                pipe.config_get("appendfsync")
                pipe.config_get("maxmemory-policy")
                replies = await pipe.execute()
        except redis.exceptions.ResponseError as exc:
            if _what_failed(exc) is not None:
                raise
            return (
                f"cannot verify that Redis at {self._where} is durable: CONFIG GET was refused"
                f" ({self._scrub(str(exc))}, a managed Redis?); check by hand that it runs"
                " appendonly yes, appendfsync always and maxmemory-policy noeviction, then set"
                " the setting to false"
            )
        config: dict[str, str] = {}
        for reply in replies:
            config.update({str(name): str(value) for name, value in reply.items()})
        found: list[str] = []
        if config.get("appendonly") != "yes":
            found.append(f"appendonly is {config.get('appendonly', 'unset')}")
        if config.get("appendfsync") != "always":
            found.append(f"appendfsync is {config.get('appendfsync', 'unset')}")
        policy = config.get("maxmemory-policy", "noeviction")
        if policy.startswith("allkeys"):
            found.append(f"maxmemory-policy is {policy}, which evicts claims")
        if not found:
            return None
        return (
            f"Redis at {self._where} is not durable: {', '.join(found)}; a claim it acknowledges"
            " must survive a crash (or a credit may be applied twice), which needs appendonly"
            " yes, appendfsync always and maxmemory-policy noeviction; set the setting to false"
            " to accept the risk"
        )

    # -- properties ------------------------------------------------------------------------------

    @property
    def identity(self) -> str:
        """The store's UUID, kept in ``<prefix>:meta`` since the store was created."""
        return self._identity

    @property
    def created(self) -> bool:
        """Whether the store was new when opened: no records, and never adopted."""
        return self._created

    @property
    def problem(self) -> str | None:
        """None while ``<prefix>:meta`` names the store opened; once it did not, why."""
        return self._problem

    @property
    def where(self) -> str:
        """The store for a message: its URL (password hidden) and prefix."""
        return self._where

    # -- calls -----------------------------------------------------------------------------------

    def _scrub(self, text: str) -> str:
        if self._password is not None and (password := self._password.get_secret_value()):
            text = text.replace(password, MASK)
        return text

    def _lost(self) -> StoreLostError:
        return StoreLostError(
            f"idempotency store {self._where} is lost: {self._problem}; no call can succeed"
            " any more (stop the service; see the continuity check before starting again)",
            store=self._where,
        )

    def _lose(self, found: str) -> StoreLostError:
        if self._problem is None:
            if found:
                self._problem = (
                    f"{self._meta} names another store ({found}, not {self._identity}):"
                    " another store's data was restored over it"
                )
            else:
                self._problem = (
                    f"{self._meta} is gone: the database was emptied (FLUSHALL, FLUSHDB),"
                    " Redis restarted without its append-only file, or the key was deleted"
                )
            log.error("idempotency.store_lost", store=self._where, problem=self._problem)
        return self._lost()

    def _as_store_error(self, exc: redis.exceptions.RedisError) -> StoreError:
        detail = self._scrub(f"{type(exc).__name__}: {exc}")
        what = _what_failed(exc)
        kind = StoreError if what is None else StoreUnavailableError
        return kind(
            f"idempotency store {self._where}: {what or 'Redis failed'}; redis-py said {detail}",
            store=self._where,
        )

    async def _run(self, call: Callable[[], Awaitable[T]]) -> T:
        """``call()`` within the timeout, Redis's failures as ``StoreError``."""
        if self._closed:
            raise RuntimeError("the Redis idempotency store is closed")
        if self._problem is not None:
            raise self._lost()
        try:
            async with asyncio.timeout(self._timeout_s), self._slots:  # the wait counts too
                return await call()
        except redis.exceptions.RedisError as exc:
            raise self._as_store_error(exc) from exc
        except TimeoutError as exc:  # asyncio.timeout: waiting for a connection, say
            raise StoreUnavailableError(
                f"idempotency store {self._where}: no answer within {self._timeout_s:g} s",
                store=self._where,
            ) from exc

    async def _script(
        self,
        script: Callable[..., Awaitable[Any]],
        keys: Sequence[str],
        args: Sequence[str | int],
    ) -> list[Any]:
        """Run one of the scripts; a 'lost' answer marks the store lost and raises."""
        answer: list[Any] = await self._run(lambda: script(keys=[self._meta, *keys], args=args))
        if answer[0] == "lost":
            raise self._lose(str(answer[1]))
        return answer

    def _record_key(self, key: str) -> str:
        return f"{self._prefix}:k:{key}"

    async def claim(
        self, key: str, fingerprint: str, *, owner: str, now: datetime, lease_s: float
    ) -> Claim:
        lease_until = now + timedelta(seconds=lease_s)
        answer = await self._script(
            self._claim_script,
            [self._updated, self._record_key(key)],
            [
                self._identity,
                key,
                fingerprint,
                owner,
                _us(now),
                _us(lease_until),
                self._claim_ids(),
            ],
        )
        if answer[0] == "damaged":
            raise StoreError(
                f"idempotency store {self._where}: a record has an unknown state",
                store=self._where,
            )
        record = _record(key, _pairs(answer[1]), self._where)
        return Claim(ClaimStatus(answer[0]), record)

    async def _owned(
        self, key: str, owner: str, token: int, now: datetime, fields: Mapping[str, str]
    ) -> None:
        """Set ``fields`` (and ``updated_at``) while ``owner`` holds ``key`` under ``token``."""
        changes = [part for pair in fields.items() for part in pair]
        answer = await self._script(
            self._owned_script,
            [self._updated, self._record_key(key)],
            [self._identity, key, owner, str(token), _us(now), *changes],
        )
        if answer[0] == "owner":
            raise OwnershipLostError("idempotency record is no longer owned by this worker")

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
        await self._owned(
            key,
            owner,
            token,
            now,
            {
                "state": state.value,
                "outcome_kind": outcome.kind,
                "outcome": json.dumps(stored_record(outcome)),
                "attempts": str(attempts),
            },
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
        await self._owned(
            key,
            owner,
            token,
            now,
            {
                "state": State.RECONCILING.value,
                "lease_until": _us(lease_until),
                "settle_until": _us(settle_until),
            },
        )

    async def resume(
        self, key: str, *, owner: str, token: int, lease_until: datetime, now: datetime
    ) -> None:
        await self._owned(
            key,
            owner,
            token,
            now,
            {"state": State.IN_FLIGHT.value, "lease_until": _us(lease_until)},
        )

    async def release(self, key: str, *, owner: str, token: int, now: datetime) -> None:
        await self._script(
            self._release_script,
            [self._updated, self._record_key(key)],
            [self._identity, key, owner, str(token), _us(now)],
        )

    async def mark_published(self, key: str) -> None:
        await self._script(
            self._published_script,
            [self._updated, self._record_key(key)],
            [self._identity, key],
        )

    async def get(self, key: str) -> IdempotencyRecord | None:
        answer = await self._script(
            self._get_script, [self._updated, self._record_key(key)], [self._identity, key]
        )
        fields = _pairs(answer[1])
        return _record(key, fields, self._where) if fields else None

    async def prune(self, *, older_than: datetime) -> int:
        """Delete prunable records last changed before ``older_than``, a batch at a time."""
        await self.probe()  # an emptied database has no old keys, and must not look pruned
        cutoff = _us(older_than)
        deleted = 0
        skip = 0  # old keys kept (still live) ahead of the next batch
        while True:
            batch = self.prune_batch
            members = await self._run(functools.partial(self._old_keys, cutoff, skip, batch))
            if not members:
                return deleted
            answer = await self._script(
                self._prune_script,
                [self._updated, *(self._record_key(member) for member in members)],
                [self._identity, cutoff, *members],
            )
            deleted += int(answer[1])
            skip += len(members) - int(answer[2])
            if len(members) < batch:
                return deleted

    async def _old_keys(self, cutoff: str, skip: int, count: int) -> list[str]:
        """``count`` keys last changed before ``cutoff``, the oldest first, after ``skip``."""
        found = await self._client.zrangebyscore(
            self._updated, "-inf", f"({cutoff}", start=skip, num=count
        )
        return [str(member) for member in found]

    async def probe(self) -> None:
        """Check that ``<prefix>:meta`` still names this store (one script, no write)."""
        await self._script(self._probe_script, [], [self._identity])

    async def adopt(self) -> None:
        await self._script(self._adopt_script, [], [self._identity, _us(datetime.now(UTC))])

    async def close(self) -> None:
        """Close the client and disconnect its pool; later calls raise ``RuntimeError``."""
        if self._closed:
            return
        self._closed = True
        await self._client.aclose()
