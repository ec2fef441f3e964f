"""The idempotency store, read only: whether a replayed command is already terminal."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from service.settings import Settings


class TerminalLookup(Protocol):
    """Tells whether an idempotency key already has a terminal record."""

    async def is_terminal(self, idempotency_key: str) -> bool: ...

    async def close(self) -> None: ...


LookupOpener = Callable[[Settings], Awaitable[tuple[TerminalLookup | None, str | None]]]


class _StoreLookup:
    def __init__(self, store: Any, terminal: frozenset[str]) -> None:
        self._store = store
        self._terminal = terminal

    async def is_terminal(self, idempotency_key: str) -> bool:
        record = await self._store.get(idempotency_key)
        return record is not None and str(getattr(record, "state", "")) in self._terminal

    async def close(self) -> None:
        await self._store.close()


async def open_store_lookup(settings: Settings) -> tuple[TerminalLookup | None, str | None]:
    """The configured idempotency store, or ``None`` and why it is not consulted."""
    config = settings.idempotency
    if config.kind == "memory":
        return None, "the memory backend keeps nothing between processes"
    if config.kind == "sqlite" and not config.sqlite_file.exists():
        return None, f"no store at {config.sqlite_file}"  # never create one on an operator's box
    try:
        from service.domain.store import TERMINAL
        from service.idempotency.factory import open_store
    except Exception as exc:  # the store's modules cannot be imported here
        return None, f"service.idempotency.factory is not importable ({type(exc).__name__})"
    try:
        store = await open_store(config, exclusive=False)
    except Exception as exc:  # an unreadable store only costs the summary line
        return None, f"cannot open {config.where} ({type(exc).__name__})"
    return _StoreLookup(store, frozenset(str(state) for state in TERMINAL)), None
