"""Choosing the idempotency store by DSN, its password from a file, and SQLite's one owner."""

from __future__ import annotations

import asyncio
import os
import sys
import textwrap
from pathlib import Path

import pytest

from service.errors import ConfigError, StartupError
from service.idempotency.factory import open_store
from service.idempotency.memory import MemoryStore
from service.idempotency.sqlite import SqliteStore
from service.settings import IdempotencySettings, load_settings

SECRET = "s3cr3t-Pa55"


@pytest.mark.parametrize(
    ("dsn", "kind"),
    [
        ("sqlite:///var/x.sqlite3", "sqlite"),
        ("memory://", "memory"),
        ("postgresql://pa@db.internal:5432/points", "postgresql"),
        ("postgres://pa@db.internal/points", "postgresql"),
        ("redis://cache.internal:6379/2", "redis"),
        ("rediss://pa@cache.internal:6380/0", "redis"),
    ],
)
def test_the_dsn_scheme_names_the_store(dsn: str, kind: str) -> None:
    assert IdempotencySettings(dsn=dsn).kind == kind


def test_without_a_dsn_backend_and_path_decide() -> None:
    settings = IdempotencySettings(backend="sqlite", sqlite_path=Path("a/b.sqlite3"))
    assert (settings.kind, settings.sqlite_file, settings.where) == (
        "sqlite",
        Path("a/b.sqlite3"),
        "sqlite:a/b.sqlite3",
    )
    assert settings.setting == "PA_IDEMPOTENCY__SQLITE_PATH"
    assert IdempotencySettings(backend="memory").kind == "memory"


@pytest.mark.parametrize(
    ("dsn", "path"),
    [
        ("sqlite:///rel/store.sqlite3", Path("rel/store.sqlite3")),
        ("sqlite:////abs/s", Path("/abs/s")),
    ],
)
def test_a_sqlite_dsn_carries_its_file(dsn: str, path: Path) -> None:
    settings = IdempotencySettings(dsn=dsn)
    assert settings.sqlite_file == path
    assert settings.setting == "PA_IDEMPOTENCY__DSN"


@pytest.mark.parametrize(
    ("dsn", "problem"),
    [
        ("mysql://db/x", "must start with sqlite:///"),
        ("db.internal:5432", "must start with sqlite:///"),
        ("sqlite:///", "needs a file path"),
        (f"postgresql://pa:{SECRET}@db/points", "PA_IDEMPOTENCY__PASSWORD_FILE"),
        (f"redis://:{SECRET}@cache:6379/0", "PA_IDEMPOTENCY__PASSWORD_FILE"),
        (f"postgresql://pa@db/points?sslmode=require&password={SECRET}", "PASSWORD_FILE"),
        (f"postgresql://pa@db/points?sslpassword={SECRET}", "PASSWORD_FILE"),
    ],
)
def test_a_wrong_dsn_is_refused_naming_the_setting_and_never_the_password(
    dsn: str, problem: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PA_IDEMPOTENCY__DSN", dsn)
    with pytest.raises(ConfigError) as refused:
        load_settings()
    assert refused.value.setting == "PA_IDEMPOTENCY__DSN"
    assert problem in str(refused.value)
    assert SECRET not in str(refused.value)


def test_where_never_shows_a_password() -> None:
    settings = IdempotencySettings(dsn="postgresql://pa@db.internal:5432/points?api_key=x1y2")
    assert "x1y2" not in settings.where
    assert settings.where.startswith("postgresql://")


def test_the_password_comes_from_its_file(tmp_path: Path) -> None:
    secret = tmp_path / "password"
    secret.write_text(SECRET + "\n")
    settings = IdempotencySettings(dsn="redis://cache:6379/0", password_file=secret)
    password = settings.password()
    assert password is not None
    assert password.get_secret_value() == SECRET
    assert IdempotencySettings(dsn="redis://cache:6379/0").password() is None


def test_a_missing_password_file_is_a_config_error_naming_it(tmp_path: Path) -> None:
    settings = IdempotencySettings(dsn="redis://c:1/0", password_file=tmp_path / "gone")
    with pytest.raises(ConfigError, match=r"PA_IDEMPOTENCY__PASSWORD_FILE: cannot read .*gone"):
        settings.password()


async def test_the_factory_opens_memory_and_sqlite_by_dsn(tmp_path: Path) -> None:
    memory = await open_store(IdempotencySettings(dsn="memory://"), exclusive=True)
    assert isinstance(memory, MemoryStore)
    path = tmp_path / "by-dsn.sqlite3"
    store = await open_store(IdempotencySettings(dsn=f"sqlite:///{path}"), exclusive=True)
    try:
        assert isinstance(store, SqliteStore)
        assert store.path == path
    finally:
        await store.close()


# -- SQLite: one owner -------------------------------------------------------------------------


async def test_a_second_exclusive_open_of_a_sqlite_file_is_refused(tmp_path: Path) -> None:
    """The service's own open holds the file: a second one is refused naming the holder's
    pid; tools may still read it; once the first is closed the file is free again."""
    path = tmp_path / "owned.sqlite3"
    first = await SqliteStore.open(path, exclusive=True)
    try:
        with pytest.raises(
            StartupError, match=rf"already in use by another process \(pid {os.getpid()}"
        ):
            await SqliteStore.open(path, exclusive=True)
        reader = await SqliteStore.open(path)  # check, dlq: no lock
        assert reader.identity == first.identity
        await reader.close()
    finally:
        await first.close()
    again = await SqliteStore.open(path, exclusive=True)
    await again.close()


HOLDER = textwrap.dedent(
    """
    import asyncio, sys
    from pathlib import Path
    from service.idempotency.sqlite import SqliteStore

    async def main():
        store = await SqliteStore.open(Path(sys.argv[1]), exclusive=True)
        print("held", flush=True)
        await asyncio.sleep(60)

    asyncio.run(main())
    """
)


async def test_another_process_holding_the_file_is_named_and_its_death_frees_it(
    tmp_path: Path,
) -> None:
    """A lock, not a convention: another process that holds the store keeps this one out;
    when it is killed (no clean close) the kernel lets go and the next start gets the file."""
    path = tmp_path / "shared.sqlite3"
    holder = await asyncio.create_subprocess_exec(
        sys.executable, "-c", HOLDER, str(path), stdout=asyncio.subprocess.PIPE
    )
    try:
        assert holder.stdout is not None
        assert (await holder.stdout.readline()).strip() == b"held"
        with pytest.raises(StartupError) as refused:
            await SqliteStore.open(path, exclusive=True)
        assert f"pid {holder.pid}" in str(refused.value)
        assert "PA_IDEMPOTENCY__DSN=postgresql://" in str(refused.value)
    finally:
        holder.kill()
        await holder.wait()
    store = await SqliteStore.open(path, exclusive=True)
    await store.close()
