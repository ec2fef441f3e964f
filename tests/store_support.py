"""Pytest fixtures and helpers for tests that need a real PostgreSQL or Redis server.

Register from ``tests/conftest.py``::

    pytest_plugins = ["tests.kafka_support", "tests.store_support"]

Fixtures (session scope, so one server of each kind serves the whole run):

``postgres_server``
    A ``PostgresServer``: its ``dsn``, where it came from (``source``) and, when this session
    started it, the ``LocalPostgres`` (``local``, else None). Found in this order:
    1. ``$PA_TEST_POSTGRES_DSN``, when set: a server someone else runs;
    2. a testcontainers ``PostgresContainer`` (image ``$PA_TEST_POSTGRES_IMAGE``), when the
       module imports and a Docker engine answers a ping;
    3. a ``LocalPostgres`` on a free loopback port (``make store-tools`` installs the server),
       stopped at the end.
    When none works the tests that use it are skipped with the reasons, or fail when ``$CI``
    is ``true``.
``postgres_dsn``
    Its DSN: ``postgresql://postgres@127.0.0.1:<port>/points_adjuster`` for a local one.
``redis_server``, ``redis_url``
    The same for Redis: ``$PA_TEST_REDIS_URL``, a ``RedisContainer`` (image
    ``$PA_TEST_REDIS_IMAGE``), else a ``LocalRedis``; the URL is ``redis://127.0.0.1:<port>/0``
    for a local one. The container and the local server are durable (``appendonly yes``,
    ``appendfsync always``); one given by URL is as its owner configured it.

Function scope:

``fresh_postgres_dsn``
    The DSN of a new, empty database on the session's server, made for the test under a
    unique name and dropped after it (``DROP DATABASE ... WITH (FORCE)``, PostgreSQL 13+).
``fresh_redis_url``
    The session's Redis URL after ``FLUSHDB`` of its database: Redis has no namespace a URL
    could name, so "fresh" means emptied. Tests that take ``redis_url`` itself share its
    keys with every other test: such a test uses keys of its own, or this fixture.

Helpers for tests that restart, kill, pause or configure a server of their own (an outage
must not hit the session's server): ``own_postgres(**options)`` and ``own_redis(**options)``
start a ``LocalPostgres`` / ``LocalRedis`` on a free port and stop it at the end; when it
cannot start the test is skipped with the reason, or fails under ``CI=true``.
``postgres_bindir()`` finds the PostgreSQL binaries the same way, for a test that starts a
``LocalPostgres`` meant to fail.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import asyncpg
import pytest
import redis.asyncio

from pa_devkit.localinfra.errors import LocalInfraError
from pa_devkit.localinfra.postgres import LocalPostgres, find_postgres_bindir
from pa_devkit.localinfra.redis import LocalRedis
from tests.service_support import Container, ExternalService

POSTGRES_DSN_ENV = "PA_TEST_POSTGRES_DSN"
REDIS_URL_ENV = "PA_TEST_REDIS_URL"
POSTGRES_IMAGE_ENV = "PA_TEST_POSTGRES_IMAGE"
REDIS_IMAGE_ENV = "PA_TEST_REDIS_IMAGE"
DEFAULT_POSTGRES_IMAGE = "postgres:17"
DEFAULT_REDIS_IMAGE = "redis:7"
DURABLE_REDIS_COMMAND = "redis-server --appendonly yes --appendfsync always --save ''"
STORE_TOOLS = "make store-tools installs one"
POSTGRES = ExternalService("PostgreSQL server", POSTGRES_DSN_ENV, install_hint=STORE_TOOLS)
REDIS = ExternalService("Redis server", REDIS_URL_ENV, install_hint=STORE_TOOLS)
LOCAL_LABEL = "local server"

Source = Literal["env", "container", "local"]


@dataclass(frozen=True)
class PostgresServer:
    """The PostgreSQL server the test session talks to."""

    dsn: str
    source: Source
    local: LocalPostgres | None = None


@dataclass(frozen=True)
class RedisServer:
    """The Redis server the test session talks to."""

    url: str
    source: Source
    local: LocalRedis | None = None


# --- PostgreSQL ----------------------------------------------------------------------------


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    """Find or start one PostgreSQL server for the session; stop what was started here."""
    yield from POSTGRES.find_or_start(
        from_env=lambda dsn: PostgresServer(dsn, "env"),
        container=Container(_postgres_container, _postgres_container_under_test),
        local=lambda: LocalPostgres(port=0),
        from_local=lambda server: PostgresServer(server.dsn, "local", server),
        local_label=LOCAL_LABEL,
    )


@pytest.fixture(scope="session")
def postgres_dsn(postgres_server: PostgresServer) -> str:
    """The DSN of the session's PostgreSQL database."""
    return postgres_server.dsn


@pytest.fixture
async def fresh_postgres_dsn(postgres_dsn: str) -> AsyncIterator[str]:
    """The DSN of a new, empty database of this test's own, dropped after it."""
    name = f"test_{uuid.uuid4().hex}"
    await _execute(postgres_dsn, f'CREATE DATABASE "{name}"')
    try:
        yield urlsplit(postgres_dsn)._replace(path=f"/{name}").geturl()
    finally:
        await _execute(postgres_dsn, f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


async def _execute(dsn: str, sql: str) -> None:
    connection = await asyncpg.connect(dsn, timeout=10)
    try:
        await connection.execute(sql)
    finally:
        await connection.close()


@contextlib.contextmanager
def own_postgres(**options: Any) -> Iterator[LocalPostgres]:
    """A ``LocalPostgres`` of the caller's own on a free port, stopped at the end."""
    with POSTGRES.started(LocalPostgres(port=0, **options), LOCAL_LABEL) as server:
        yield server


def postgres_bindir() -> Path:
    """The folder of the PostgreSQL binaries; when there is none, the test is skipped with
    the reason, or fails under CI."""
    failure: LocalInfraError | None = None
    try:
        return find_postgres_bindir()
    except LocalInfraError as exc:
        failure = exc
    POSTGRES.unavailable([f"{LOCAL_LABEL}: {failure}"])


def _postgres_container() -> Any:
    from testcontainers.community.postgres import PostgresContainer

    return PostgresContainer(
        os.environ.get(POSTGRES_IMAGE_ENV, DEFAULT_POSTGRES_IMAGE), driver=None
    )


def _postgres_container_under_test(container: Any) -> PostgresServer:
    return PostgresServer(str(container.get_connection_url(driver=None)), "container")


# --- Redis ---------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """Find or start one Redis server for the session; stop what was started here."""
    yield from REDIS.find_or_start(
        from_env=lambda url: RedisServer(url, "env"),
        container=Container(_redis_container, _redis_container_under_test),
        local=lambda: LocalRedis(port=0),
        from_local=lambda server: RedisServer(server.url, "local", server),
        local_label=LOCAL_LABEL,
    )


@pytest.fixture(scope="session")
def redis_url(redis_server: RedisServer) -> str:
    """The URL of the session's Redis database (shared by every test that takes it)."""
    return redis_server.url


@pytest.fixture
async def fresh_redis_url(redis_url: str) -> str:
    """The session's Redis URL, its database emptied (FLUSHDB) for this test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        await client.flushdb()
    finally:
        await client.aclose()
    return redis_url


@contextlib.contextmanager
def own_redis(**options: Any) -> Iterator[LocalRedis]:
    """A ``LocalRedis`` of the caller's own on a free port, stopped at the end."""
    with REDIS.started(LocalRedis(port=0, **options), LOCAL_LABEL) as server:
        yield server


def _redis_container() -> Any:
    """A durable testcontainers RedisContainer."""
    from testcontainers.community.redis import RedisContainer

    image = os.environ.get(REDIS_IMAGE_ENV, DEFAULT_REDIS_IMAGE)
    return RedisContainer(image).with_command(DURABLE_REDIS_COMMAND)


def _redis_container_under_test(container: Any) -> RedisServer:
    host = container.get_container_host_ip()
    port = container.get_exposed_port(container.port)
    return RedisServer(f"redis://{host}:{port}/0", "container")
