"""The ``backend`` fixture: the contract suite runs once per kind of store.

memory and SQLite need nothing; PostgreSQL and Redis use the servers of
``tests/store_support.py`` (started by the test session, skipped with the reason on a laptop
without them, a failure under ``CI=true``), each test in a database or key space of its own.
Each kind opens its stores through ``open_<kind>`` in a module of this package, which also
closes every store it opened when the test ends.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from pathlib import Path

import pytest

from service.domain.store import IdempotencyStore
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore
from tests.contract.cases import Backend

KINDS = ["memory", "sqlite", "postgres", "redis"]


async def open_memory(stack: AsyncExitStack) -> Backend:
    memory = MemoryStore()

    async def same_memory() -> IdempotencyStore:
        return memory  # nothing outlives the process: the same dict is all there is

    stack.push_async_callback(memory.close)
    return Backend(memory, same_memory)


async def open_sqlite(stack: AsyncExitStack, path: Path) -> Backend:
    async def opened() -> IdempotencyStore:
        store = await SqliteStore.open(path)
        stack.push_async_callback(store.close)
        return store

    return Backend(await opened(), opened)


@pytest.fixture(params=KINDS)
async def backend(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Backend]:
    async with AsyncExitStack() as stack:
        if request.param == "memory":
            yield await open_memory(stack)
        elif request.param == "sqlite":
            yield await open_sqlite(stack, tmp_path / "db" / "idempotency.sqlite3")
        elif request.param == "postgres":
            from tests.contract.open_postgres import open_postgres

            yield await open_postgres(stack, request)
        else:
            from tests.contract.open_redis import open_redis

            yield await open_redis(stack, request)


@pytest.fixture
def store(backend: Backend) -> IdempotencyStore:
    return backend.store
