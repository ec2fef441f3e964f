"""Opens Redis stores for the contract suite: each test under a key prefix of its own on the
session's Redis (tests/store_support.py), its keys deleted when it ends."""

from __future__ import annotations

import uuid
from contextlib import AsyncExitStack

import pytest
import redis.asyncio

from service.domain.store import IdempotencyStore
from service.idempotency.redis_store import RedisStore
from tests.contract.cases import Backend
from tests.store_support import RedisServer


async def delete_prefix(url: str, prefix: str) -> None:
    """Delete every key under ``prefix`` (SCAN, so other tests' keys are not waited on)."""
    client = redis.asyncio.Redis.from_url(url)
    try:
        async for name in client.scan_iter(match=f"{prefix}:*", count=500):
            await client.delete(name)
    finally:
        await client.aclose()


async def open_redis(stack: AsyncExitStack, request: pytest.FixtureRequest) -> Backend:
    server: RedisServer = request.getfixturevalue("redis_server")
    prefix = f"contract-{uuid.uuid4().hex[:12]}"
    # The session's own servers are durable; one named by $PA_TEST_REDIS_URL is as its owner
    # configured it, and the contract is about semantics, not the server's configuration.
    durable = server.source != "env"
    stack.push_async_callback(delete_prefix, server.url, prefix)

    async def opened() -> IdempotencyStore:
        store = await RedisStore.open(
            server.url, prefix=prefix, timeout_s=5.0, require_durable=durable
        )
        stack.push_async_callback(store.close)
        return store

    return Backend(await opened(), opened)
