"""Opens PostgreSQL stores for the contract suite: each test in a new database of its own on
the session's server (``tests/store_support.py``), dropped when the test ends."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack
from urllib.parse import urlsplit

import asyncpg
import pytest

from service.domain.store import IdempotencyStore
from service.idempotency.postgres import PostgresStore
from tests.contract.cases import Backend

TIMEOUT_S = 10.0


async def open_postgres(stack: AsyncExitStack, request: pytest.FixtureRequest) -> Backend:
    """A store in a fresh database; ``reopen`` opens another store on the same database."""
    dsn = await fresh_database(stack, request.getfixturevalue("postgres_dsn"))

    async def opened() -> IdempotencyStore:
        store = await PostgresStore.open(dsn, pool_size=2, timeout_s=TIMEOUT_S)
        stack.push_async_callback(store.close)
        return store

    return Backend(await opened(), opened)


async def fresh_database(stack: AsyncExitStack, server_dsn: str) -> str:
    """The DSN of a new, empty database on the server of ``server_dsn``, dropped (with any
    connection still open to it) when ``stack`` closes.

    Made here rather than by the ``fresh_postgres_dsn`` fixture: that one is async, and the
    ``backend`` fixture that calls this runs on the event loop already, where
    ``request.getfixturevalue`` cannot set an async fixture up ("Runner.run() cannot be
    called from a running event loop")."""
    name = f"contract_{uuid.uuid4().hex}"
    await _execute(server_dsn, f'CREATE DATABASE "{name}"')
    drop = f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'
    stack.push_async_callback(_execute, server_dsn, drop)
    return urlsplit(server_dsn)._replace(path=f"/{name}").geturl()


async def _execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=TIMEOUT_S)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()
