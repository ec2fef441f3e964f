"""The local PostgreSQL and Redis launchers (pa_devkit.localinfra) and the store fixtures."""

from __future__ import annotations

import socket

import asyncpg
import pytest
import redis.asyncio

from pa_devkit.localinfra.errors import LocalPostgresError, LocalRedisError
from pa_devkit.localinfra.postgres import LocalPostgres
from pa_devkit.localinfra.redis import LocalRedis
from tests.store_support import own_postgres, own_redis, postgres_bindir


async def _rows(dsn: str, sql: str) -> list[tuple[object, ...]]:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        return [tuple(row) for row in await connection.fetch(sql)]
    finally:
        await connection.close()


@pytest.mark.postgres
async def test_postgres_keeps_committed_rows_across_a_restart_and_a_crash() -> None:
    """A row committed on the local PostgreSQL is still there after a clean restart and
    after a SIGKILL of the server and its backends, on the same port and DSN."""
    with own_postgres() as server:
        assert server.dsn == f"postgresql://postgres@127.0.0.1:{server.port}/points_adjuster"
        connection = await asyncpg.connect(server.dsn, timeout=10)
        try:
            await connection.execute("CREATE TABLE claims (key text PRIMARY KEY)")
            await connection.execute("INSERT INTO claims VALUES ('k-1')")
            assert await connection.fetchval("SHOW fsync") == "on"
            assert await connection.fetchval("SHOW synchronous_commit") == "on"
        finally:
            await connection.close()

        server.restart()
        assert await _rows(server.dsn, "SELECT key FROM claims") == [("k-1",)]

        server.kill()
        assert not server.running
        server.start()
        assert await _rows(server.dsn, "SELECT key FROM claims") == [("k-1",)]


@pytest.mark.postgres
async def test_a_paused_postgres_hangs_its_clients_until_resumed() -> None:
    """While paused, the server takes TCP connections but answers nothing; once resumed,
    it serves again."""
    with own_postgres() as server:
        opened = await asyncpg.connect(server.dsn)  # its backend left the postmaster's group
        try:
            server.pause()
            try:
                with pytest.raises(TimeoutError):
                    await asyncpg.connect(server.dsn, timeout=0.5)
                with pytest.raises(TimeoutError):  # a connection opened before hangs too
                    await opened.fetchval("SELECT 1", timeout=0.5)
            finally:
                server.resume()
            assert await _rows(server.dsn, "SELECT 1") == [(1,)]
        finally:
            opened.terminate()


@pytest.mark.postgres
def test_a_failed_postgres_start_says_why_with_the_server_log() -> None:
    """A server that exits at start raises LocalPostgresError carrying its log's tail, and
    leaves no temporary folder behind."""
    server = LocalPostgres(bindir=postgres_bindir(), settings={"shared_buffers": "lots"})
    with pytest.raises(LocalPostgresError, match="exited with code") as caught:
        server.start()
    assert "shared_buffers" in str(caught.value)
    assert "last lines of" in str(caught.value)
    assert not server.running
    with pytest.raises(LocalPostgresError, match="never started"):
        _ = server.folder


@pytest.mark.postgres
async def test_fresh_postgres_dsn_is_an_empty_database_of_its_own(
    postgres_dsn: str, fresh_postgres_dsn: str
) -> None:
    """The fresh DSN names another, empty database on the session's server."""
    [(session_db,)] = await _rows(postgres_dsn, "SELECT current_database()")
    [(fresh_db,)] = await _rows(fresh_postgres_dsn, "SELECT current_database()")
    assert fresh_db != session_db
    assert str(fresh_db).startswith("test_")
    tables = await _rows(
        fresh_postgres_dsn, "SELECT tablename FROM pg_tables WHERE schemaname = 'public'"
    )
    assert tables == []


@pytest.mark.redis
async def test_durable_redis_keeps_acknowledged_writes_across_a_restart_and_a_crash() -> None:
    """The local Redis runs with the append-only file fsynced on every write: a key set
    before a clean restart, and one set before a SIGKILL, are both there afterwards."""
    with own_redis(password="local secret") as server:
        assert server.url == f"redis://:local%20secret@127.0.0.1:{server.port}/0"
        client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
        try:
            assert await client.config_get("appendonly") == {"appendonly": "yes"}
            assert await client.config_get("appendfsync") == {"appendfsync": "always"}
            await client.set("before-restart", "1")
            server.restart()
            await client.connection_pool.disconnect()  # its connections died with the server
            assert await client.get("before-restart") == "1"
            await client.set("before-crash", "2")
            server.kill()
            server.start()
            await client.connection_pool.disconnect()
            assert await client.mget("before-restart", "before-crash") == ["1", "2"]
        finally:
            await client.aclose()


@pytest.mark.redis
async def test_a_non_durable_redis_reports_appendonly_no() -> None:
    """``appendonly=False`` starts the Redis a durable store must refuse, and says so."""
    with own_redis(appendonly=False) as server:
        client = redis.asyncio.Redis.from_url(server.url, decode_responses=True)
        try:
            assert await client.config_get("appendonly") == {"appendonly": "no"}
        finally:
            await client.aclose()


@pytest.fixture
async def _key_left_behind(redis_url: str) -> None:
    """A key an earlier test left in the session's Redis."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.set("left-by-an-earlier-test", "x")
    finally:
        await client.aclose()


@pytest.mark.redis
@pytest.mark.usefixtures("_key_left_behind")  # set up before the test's own arguments
async def test_fresh_redis_url_is_empty(fresh_redis_url: str) -> None:
    """fresh_redis_url hands out the session's database emptied of earlier tests' keys."""
    client = redis.asyncio.Redis.from_url(fresh_redis_url)
    try:
        assert await client.dbsize() == 0
    finally:
        await client.aclose()


def test_missing_redis_binary_and_busy_port_are_reported() -> None:
    """A redis-server that does not exist, and a port already taken, each raise
    LocalRedisError saying so, before any process starts."""
    with pytest.raises(LocalRedisError, match="not found"):
        LocalRedis(redis_server="/nonexistent/redis-server").start()
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        server = LocalRedis(port=busy.getsockname()[1], redis_server="/bin/true")
        with pytest.raises(LocalRedisError, match="already in use"):
            server.start()
