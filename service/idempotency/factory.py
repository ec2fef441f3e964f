"""Open the idempotency store the settings name (``PA_IDEMPOTENCY__DSN``, or the SQLite
default): the one place that knows every kind of store.

The PostgreSQL and Redis drivers are optional extras of the distribution
(``points-adjuster[postgres]``, ``points-adjuster[redis]``; the image has both): naming such a
store without its driver installed is a start-up error that says which extra to install.
"""

from __future__ import annotations

from service.domain.store import IdempotencyStore
from service.errors import StartupError
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore
from service.settings import IdempotencySettings


def _missing_driver(settings: IdempotencySettings, extra: str, module: str) -> StartupError:
    return StartupError(
        "idempotency store",
        f"{settings.where} needs the {module} driver, which is not installed: install"
        f" points-adjuster[{extra}]",
        setting=settings.setting,
    )


async def open_store(
    settings: IdempotencySettings, *, exclusive: bool, inherited_lock: int | None = None
) -> IdempotencyStore:
    """The store of ``settings``, open. ``exclusive``: the service's own open, which is the
    one owner of a SQLite file (a second ``run`` on it is refused); tools pass False.
    ``inherited_lock``: a worker of ``run --workers N`` opens a SQLite file under its parent's
    lock, this descriptor (ignored by the other stores).

    Raises ``StartupError`` (unreachable, refused, not durable enough, driver missing) or
    ``ConfigError`` (the password file cannot be read)."""
    kind = settings.kind
    if kind == "memory":
        return MemoryStore()
    if kind == "sqlite":
        return await SqliteStore.open(
            settings.sqlite_file, exclusive=exclusive, inherited_lock=inherited_lock
        )
    assert settings.dsn is not None  # a networked store is only named by its DSN
    password = settings.password()
    if kind == "postgresql":
        try:
            from service.idempotency.postgres import PostgresStore
        except ImportError:
            raise _missing_driver(settings, "postgres", "asyncpg") from None
        return await PostgresStore.open(
            settings.dsn,
            password=password,
            pool_size=settings.pool_size,
            timeout_s=settings.timeout_s,
        )
    try:
        from service.idempotency.redis_store import RedisStore
    except ImportError:
        raise _missing_driver(settings, "redis", "redis-py") from None
    return await RedisStore.open(
        settings.dsn,
        password=password,
        prefix=settings.redis_prefix,
        pool_size=settings.pool_size,
        timeout_s=settings.timeout_s,
        require_durable=settings.redis_require_durable,
    )
