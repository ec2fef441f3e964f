"""Find or start a real service for the tests, else skip (off CI) or fail (``CI=true``).

The support modules of the services the integration tests need (tests/kafka_support.py,
tests/store_support.py, tests/registry_support.py) each describe their service once as an
``ExternalService`` and build their fixtures from it:

``ExternalService.find_or_start(...)``
    The body of a session fixture: the value of ``$<env>`` when set (a server someone else
    runs); else a testcontainers container when a ``Container`` is given and a Docker engine
    answers a ping; else a local server from the dev kit, stopped at the end. When none
    works the test is skipped with every reason, or fails when ``$CI`` is ``true``.
``ExternalService.started(server, label)``
    Starts a local server (a test's own, one it may stop or kill), stopped at the end; when
    it cannot start, the same skip or failure.
``ExternalService.unavailable(reasons)``
    That skip or failure on its own.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, NoReturn, Protocol, TypeVar

import pytest

from pa_devkit.localinfra.errors import LocalInfraError

T = TypeVar("T")


class LocalService(Protocol):
    """A dev-kit server (``LocalKafka``, ``LocalPostgres``, ``LocalRedis``, ``LocalRegistry``)."""

    def start(self) -> None: ...

    def stop(self) -> None: ...


S = TypeVar("S", bound=LocalService)


@dataclass(frozen=True)
class Container(Generic[T]):
    """How to make a testcontainers container (importing its module inside ``make``, so a
    missing module is a reason, not an error) and what the tests get from the started one."""

    make: Callable[[], Any]
    under_test: Callable[[Any], T]


@dataclass(frozen=True)
class ExternalService:
    """One kind of server the tests need, and what to say when there is none."""

    name: str
    """As in "no <name> for the tests": ``Kafka broker``, ``PostgreSQL server``."""
    env: str
    """The variable naming a running server, which the tests then use."""
    env_example: str = ""
    """What the variable holds, shown after it in the message (``=host:port``)."""
    install_hint: str = ""
    """What installs a local server, when something does (``make store-tools installs one``)."""
    errors: type[Exception] = LocalInfraError
    """What a local server's ``start()`` raises when it cannot start."""

    def configured(self) -> str:
        """The value of ``$<env>``, stripped; empty when unset."""
        return os.environ.get(self.env, "").strip()

    def unavailable(self, reasons: Sequence[str]) -> NoReturn:
        """Skip the test with ``reasons``, or fail it when ``$CI`` is ``true``."""
        hints = [self.install_hint] if self.install_hint else []
        hints.append(f"set {self.env}{self.env_example} to use a running one")
        header = f"no {self.name} for the tests ({'; '.join(hints)}):"
        message = "\n- ".join([header, *reasons])
        if os.environ.get("CI") == "true":
            pytest.fail(message, pytrace=False)
        pytest.skip(message)

    @contextlib.contextmanager
    def started(self, server: S, label: str, reasons: Sequence[str] = ()) -> Iterator[S]:
        """Start ``server`` and stop it at the end; when it cannot start, ``unavailable`` with
        ``reasons`` and ``<label>: <why it did not start>``."""
        failure: Exception | None = None
        try:
            server.start()
        except self.errors as exc:
            failure = exc
        if failure is not None:  # outside the except block: no chained traceback in the report
            self.unavailable([*reasons, f"{label}: {failure}"])
        try:
            yield server
        finally:
            server.stop()

    def find_or_start(
        self,
        *,
        from_env: Callable[[str], T],
        local: Callable[[], S],
        from_local: Callable[[S], T],
        local_label: str,
        container: Container[T] | None = None,
    ) -> Iterator[T]:
        """Yield one ``T`` for the session (``yield from`` it in a session fixture): from
        ``$<env>``, else from a started container, else from a started local server; what
        was started here is stopped at the end."""
        configured = self.configured()
        if configured:
            yield from_env(configured)
            return
        reasons: list[str] = []
        if container is not None:
            running = start_container(container.make, reasons)
            if running is not None:
                try:
                    yield container.under_test(running)
                finally:
                    running.stop()
                return
        with self.started(local(), local_label, reasons) as server:
            yield from_local(server)


def start_container(make: Callable[[], Any], reasons: list[str]) -> Any | None:
    """A started testcontainers container made by ``make``, or None with why not appended to
    ``reasons`` (no Docker engine, the module not importable, the container did not start)."""
    reason = docker_unavailable_reason()
    if reason is not None:
        reasons.append(f"testcontainers: {reason}")
        return None
    try:
        container = make()
    except ImportError as exc:
        reasons.append(f"testcontainers: not importable ({exc})")
        return None
    try:
        container.start()
    except Exception as exc:  # image pull or container start failed: fall back
        reasons.append(f"testcontainers: the container did not start ({exc})")
        with contextlib.suppress(Exception):
            container.stop()
        return None
    return container


def docker_unavailable_reason() -> str | None:
    """None when a Docker engine answers a ping, else why not."""
    if not os.environ.get("DOCKER_HOST") and not Path("/var/run/docker.sock").exists():
        return "no Docker engine (no DOCKER_HOST, no /var/run/docker.sock)"
    reason: str | None = None
    # A failed connection leaves an unclosed socket behind; collect it here, quietly, rather
    # than let its ResourceWarning surface in some later test as an error.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            import docker  # type: ignore[import-untyped]

            client = docker.from_env(timeout=3)
            try:
                client.ping()
            finally:
                client.close()
        except Exception as exc:  # any failure means "no usable engine"
            reason = f"no Docker engine answers ({type(exc).__name__}: {exc})"
        gc.collect()
    return reason
