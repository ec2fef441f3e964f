"""The parent of ``run --workers N``: checks once, starts the workers, keeps them running,
serves their one endpoint, and drains them all on one SIGTERM.

Exit codes: 0 when every worker drained and exited 0 after SIGTERM/SIGINT; 2 when a start-up
check failed (in the parent, before any worker started, or in a worker's first start); 1
when a worker was in a crash loop (``restarts``), or a worker had to be killed because it
did not drain within ``PA_SHUTDOWN_TIMEOUT_S`` plus ``SHUTDOWN_MARGIN_S``, or exited non-zero.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import structlog

from service.settings import Settings
from service.workers.endpoints import WorkerMetrics, WorkerView, serve_parent_endpoints
from service.workers.restarts import RestartPolicy

log = structlog.get_logger("service.workers")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2

SHUTDOWN_MARGIN_S = 15.0
"""Beyond the drain budget: a worker's final commit (5 s at most), its clients' stops, its
exit. The same margin the single-process service is tested against."""

WorkerCommand = Callable[[int, int, int | None], list[str]]
"""The command line of worker ``index`` given its lifeline and lock descriptors."""


def worker_command(index: int, lifeline: int, lock: int | None) -> list[str]:
    command = [sys.executable, "-m", "service.workers.child", "--index", str(index)]
    command += ["--lifeline", str(lifeline)]
    if lock is not None:
        command += ["--lock", str(lock)]
    return command


@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process | None = None
    url: str | None = None
    state: str = "starting"
    started_at: float = 0.0
    starts: int = 0

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.returncode is None


def _describe(code: int) -> str:
    if code < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-code).name}"
    return f"exit code {code}"


class Supervisor:
    """Starts ``count`` workers and keeps them running until ``stop``."""

    def __init__(
        self,
        count: int,
        *,
        lock: int | None,
        shutdown_timeout_s: float,
        metrics: WorkerMetrics | None = None,
        policy: RestartPolicy | None = None,
        command: WorkerCommand = worker_command,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._workers = [_Worker(index) for index in range(count)]
        self._lock = lock
        self._shutdown_timeout_s = shutdown_timeout_s
        self.metrics = metrics or WorkerMetrics()
        self.metrics.configured.set(count)
        self._policy = policy or RestartPolicy()
        self._command = command
        self._clock = clock
        self._stop = asyncio.Event()
        self._failure: int | None = None

    def views(self) -> Sequence[WorkerView]:
        return [WorkerView(w.index, w.url if w.alive else None, w.state) for w in self._workers]

    def stop(self) -> None:
        """Drain every worker and return (``run``)."""
        self._stop.set()

    def forward(self, sig: signal.Signals) -> None:
        """Send ``sig`` to every worker alive."""
        for worker in self._workers:
            if worker.alive and worker.process is not None:
                with contextlib.suppress(ProcessLookupError):
                    worker.process.send_signal(sig)

    async def run(self) -> int:
        """Run the workers until ``stop()`` or a failure; drain them; the exit code."""
        keepers = [
            asyncio.create_task(self._keep(worker), name=f"worker-{worker.index}")
            for worker in self._workers
        ]
        try:
            await self._stop.wait()
        finally:
            code = await self._drain()
            for keeper in keepers:
                keeper.cancel()
            await asyncio.gather(*keepers, return_exceptions=True)
        return code if self._failure is None else self._failure

    def _fail(self, code: int) -> None:
        if self._failure is None:
            self._failure = code
        self._stop.set()

    async def _keep(self, worker: _Worker) -> None:
        """Start ``worker``, and again each time it dies, until stopping or giving up."""
        while not self._stop.is_set():
            try:
                code = await self._run_once(worker)
            except OSError as exc:  # not even started (no memory, no such program): a death
                log.error("worker.start_failed", worker=worker.index, error=str(exc))
                worker.started_at = self._clock()
                code = EXIT_FAILED
            if self._stop.is_set():
                return
            up_s = self._clock() - worker.started_at
            if worker.starts == 1 and code == EXIT_USAGE:
                log.error("worker.startup_failed", worker=worker.index, detail=_describe(code))
                self._fail(EXIT_USAGE)
                return
            pause = self._policy.died(worker.index, up_s=up_s)
            if pause is None:
                log.error(
                    "worker.crash_loop",
                    worker=worker.index,
                    deaths=self._policy.deaths(worker.index),
                    last=_describe(code),
                    detail="giving up: stopping the other workers and exiting non-zero",
                )
                self._fail(EXIT_FAILED)
                return
            worker.state = f"restarting in {pause:g} s after {_describe(code)}"
            log.error(
                "worker.died",
                worker=worker.index,
                how=_describe(code),
                up_s=round(up_s, 1),
                restart_in_s=pause,
            )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stop.wait(), pause)
            if not self._stop.is_set():
                self.metrics.restarts.labels(worker=str(worker.index)).inc()

    async def _run_once(self, worker: _Worker) -> int:
        """Start ``worker``, follow what it says, return its exit code once it exited."""
        ours, theirs = socket.socketpair()
        try:
            command = self._command(worker.index, theirs.fileno(), self._lock)
            fds = (theirs.fileno(),) if self._lock is None else (theirs.fileno(), self._lock)
            worker.process = await asyncio.create_subprocess_exec(
                *command, stdin=asyncio.subprocess.DEVNULL, pass_fds=fds
            )
        except BaseException:
            ours.close()
            raise
        finally:
            theirs.close()  # the worker has its copy; EOF on ours means it is gone
        if self._stop.is_set():  # started while the others were told to drain
            worker.process.send_signal(signal.SIGTERM)
        worker.starts += 1
        worker.started_at = self._clock()
        worker.url = None
        worker.state = "starting"
        self._count_running()
        log.info("worker.started", worker=worker.index, pid=worker.process.pid)
        follower = asyncio.create_task(self._follow(worker, ours))
        try:
            code = await worker.process.wait()
        finally:
            follower.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await follower
            ours.close()
            worker.url = None
            self._count_running()
        worker.state = f"not running ({_describe(code)})"
        return code

    async def _follow(self, worker: _Worker, lifeline: socket.socket) -> None:
        reader, writer = await asyncio.open_unix_connection(sock=lifeline)
        try:
            while line := await reader.readline():
                what, _, value = line.decode("ascii", "replace").strip().partition(" ")
                if what == "listening":
                    worker.url = value
                    worker.state = "running"
        finally:
            writer.transport.abort()

    def _count_running(self) -> None:
        self.metrics.running.set(sum(1 for worker in self._workers if worker.alive))

    async def _drain(self) -> int:
        """SIGTERM every worker, wait for them within the budget, SIGKILL any left."""
        self.forward(signal.SIGTERM)
        budget = self._shutdown_timeout_s + SHUTDOWN_MARGIN_S
        alive = [w.process for w in self._workers if w.alive and w.process is not None]
        code = EXIT_OK
        if alive:
            log.info("workers.draining", workers=len(alive), budget_s=budget)
            _, pending = await asyncio.wait(
                [asyncio.create_task(process.wait()) for process in alive], timeout=budget
            )
            for task in pending:
                task.cancel()
            for worker in self._workers:
                if worker.alive and worker.process is not None:
                    log.error("worker.drain_timeout", worker=worker.index, budget_s=budget)
                    with contextlib.suppress(ProcessLookupError):
                        worker.process.kill()
                    await worker.process.wait()
                    code = EXIT_FAILED
        for worker in self._workers:
            returned = worker.process.returncode if worker.process is not None else None
            if returned not in (None, 0):
                code = EXIT_FAILED
        self._count_running()
        return code


async def preflight(settings: Settings) -> int | None:
    """The start-up checks made once, before any worker starts: the PAS credentials, the
    idempotency store (taking the SQLite owner's lock: its descriptor is returned, for the
    workers) and its continuity with the consumer group, the topics. Raises ``StartupError``
    or ``ConfigError`` as a single ``run`` would."""
    from service.app import load_pas_security, require_topics
    from service.idempotency.continuity import verify_continuity
    from service.idempotency.factory import open_store
    from service.idempotency.sqlite import hold_owner_lock
    from service.kafka.clients import open_producer

    load_pas_security(settings.pas)
    idempotency = settings.idempotency
    lock = hold_owner_lock(idempotency.sqlite_file) if idempotency.kind == "sqlite" else None
    try:
        store = await open_store(idempotency, exclusive=False, inherited_lock=lock)
        try:
            override = await verify_continuity(store, idempotency, settings.kafka)
            if override is not None:
                log.warning(
                    "idempotency.empty_store_allowed", store_id=store.identity, detail=override
                )
        finally:
            await store.close()
        async with open_producer(settings.kafka) as producer:
            await require_topics(producer, settings.kafka)
    except BaseException:
        if lock is not None:
            os.close(lock)
        raise
    return lock


async def supervise(settings: Settings) -> int:
    """``run`` with ``settings.workers`` above 1: the exit code."""
    from service import __version__

    lock = await preflight(settings)
    try:
        supervisor = Supervisor(
            settings.workers, lock=lock, shutdown_timeout_s=settings.shutdown_timeout_s
        )
        loop = asyncio.get_running_loop()

        def request_stop(name: str) -> None:
            log.info("shutdown.requested", signal=name, workers=settings.workers)
            supervisor.stop()

        def forward_reload() -> None:
            log.info("credentials.reload_requested", signal="SIGHUP", workers=settings.workers)
            supervisor.forward(signal.SIGHUP)

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, request_stop, sig.name)
        loop.add_signal_handler(signal.SIGHUP, forward_reload)
        log.info(
            "workers.starting",
            version=__version__,
            workers=settings.workers,
            store=settings.idempotency.where,
        )
        async with contextlib.AsyncExitStack() as stack:
            if settings.metrics.enabled:
                url = await stack.enter_async_context(
                    serve_parent_endpoints(
                        supervisor, supervisor.metrics, settings.metrics.host, settings.metrics.port
                    )
                )
                log.info("endpoints.listening", url=url, workers=settings.workers)
            code = await supervisor.run()
        log.info("workers.stopped", exit_code=code)
        return code
    finally:
        if lock is not None:
            os.close(lock)
