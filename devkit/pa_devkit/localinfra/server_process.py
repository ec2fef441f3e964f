"""The life of one local server process, shared by the PostgreSQL and Redis launchers.

``LocalServer`` is the base of ``LocalPostgres`` (postgres.py) and ``LocalRedis`` (redis.py):
a temporary folder of its own, a loopback port chosen once and kept, the server run as a
child process, and the helpers that simulate an outage:

``restart()``
    a clean stop and a start on the same port and data: a planned restart;
``kill()``, then ``start()``
    SIGKILL to the server and every process it forked: a crash, with the data on disk kept;
``pause()``, ``resume()``
    SIGSTOP and SIGCONT: a hung server whose port still completes TCP handshakes.

The server runs in a session of its own, so a signal sent to its process group reaches it and
its children (PostgreSQL's backends) and nothing else, and a Ctrl-C aimed at the tests misses
it. Its stdout and stderr go to one log file in the folder, appended across restarts; a
failed start raises the subclass's error with the tail of that log.
"""

from __future__ import annotations

import abc
import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import ClassVar, Self

from pa_devkit.localinfra.broker_config import free_port, port_is_free
from pa_devkit.localinfra.errors import LocalInfraError

LOG_TAIL_LINES = 30
_POLL_S = 0.05

_UNSTOPPED: set[LocalServer] = set()


@atexit.register
def _stop_forgotten_servers() -> None:
    """A safety net: a server in its own session would outlive a script that forgot it."""
    for server in list(_UNSTOPPED):
        server.stop()


class LocalServer(abc.ABC):
    """One server process on 127.0.0.1 in a temporary folder that ``stop()`` deletes.

    ``port=0`` picks a free port at the first start; every later start keeps it.
    """

    #: what the messages call the server
    server_name: ClassVar[str]
    #: the error raised when it cannot be found, started or stopped
    error: ClassVar[type[LocalInfraError]]
    #: the signal that asks it to shut down cleanly
    stop_signal: ClassVar[signal.Signals] = signal.SIGTERM
    #: the file in the folder that receives its stdout and stderr
    log_name: ClassVar[str]

    def __init__(self, port: int, *, start_timeout: float, stop_timeout: float) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        self._port: int | None = port or None
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._folder: Path | None = None
        self._process: subprocess.Popen[bytes] | None = None
        self._log_offset = 0

    # -- what a subclass provides --

    @abc.abstractmethod
    def _prepare(self, folder: Path, port: int, *, first: bool) -> None:
        """Make the folder ready for a start (the first one: ``first``)."""

    @abc.abstractmethod
    def _command(self, folder: Path, port: int) -> list[str]:
        """The server's command line."""

    @abc.abstractmethod
    def _is_ready(self, folder: Path, port: int) -> bool:
        """Whether the started server serves requests."""

    @abc.abstractmethod
    def _after_start(self, *, first: bool) -> None:
        """Called once the server is ready (the first time: ``first``)."""

    def _make_folder(self) -> Path:
        return Path(tempfile.mkdtemp(prefix=f"local-{self.server_name.lower()}-"))

    def _user_ids(self) -> tuple[int, int] | None:
        """(uid, gid) to run the server as, or None for this process's own user."""
        return None

    def _environment(self) -> Mapping[str, str] | None:
        """The server's environment (None: this process's)."""
        return None

    # -- properties --

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1 (chosen at the first start when the constructor got 0)."""
        if self._port is None:
            raise self.error("the port is chosen when the server starts; call start()")
        return self._port

    @property
    def folder(self) -> Path:
        """The temporary folder holding the data, the configuration and the log."""
        if self._folder is None:
            raise self.error(f"no folder: the {self.server_name} server was never started")
        return self._folder

    @property
    def log_path(self) -> Path:
        """The server's log: its stdout and stderr, appended across restarts."""
        return self.folder / self.log_name

    @property
    def pid(self) -> int | None:
        """The server's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the process this object started is alive (a paused one is)."""
        return self._process is not None and self._process.poll() is None

    # -- lifecycle --

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Start the server (after ``kill()`` too: same port, same data) and wait until ready."""
        if self.running:
            raise self.error(f"the {self.server_name} server is already running (pid {self.pid})")
        self._process = None
        first = self._folder is None
        if self._folder is None:
            self._folder = self._make_folder()
            _UNSTOPPED.add(self)
        folder = self._folder
        try:
            if self._port is None:
                self._port = free_port()
            if not port_is_free(self._port):
                raise self.error(
                    f"port 127.0.0.1:{self._port} is already in use; "
                    "stop what listens there or use port 0 to pick a free port"
                )
            self._prepare(folder, self._port, first=first)
            self._launch(folder, self._command(folder, self._port))
            self._wait_until_ready(folder, self._port)
            self._after_start(first=first)
        except BaseException:
            self._kill_group()
            if first:
                self._remove_folder()
            raise

    def stop(self) -> None:
        """Shut the server down cleanly (SIGKILL after the stop timeout) and delete the folder.

        A no-op when it was never started; fine after ``kill()``.
        """
        try:
            self._shut_down()
        finally:
            self._remove_folder()

    def restart(self) -> None:
        """Shut down cleanly and start again on the same port and data: a planned restart."""
        if self._folder is None:
            raise self.error("restart() needs a server that was started before")
        self._shut_down()
        self.start()

    def kill(self) -> None:
        """SIGKILL the server and all it forked, as a crash would; ``start()`` brings it back
        on the same port with the data that reached the disk."""
        if not self.running:
            raise self.error(f"the {self.server_name} server is not running")
        self._kill_group()

    def pause(self) -> None:
        """Freeze the server (SIGSTOP to its process group): connections open and requests
        hang, as with a server that stopped answering. ``resume()`` undoes it."""
        self._signal_group(signal.SIGSTOP)

    def resume(self) -> None:
        """Let a paused server go on (SIGCONT)."""
        self._signal_group(signal.SIGCONT)

    # -- the process --

    def _launch(self, folder: Path, command: Sequence[str]) -> None:
        log_path = folder / self.log_name
        self._log_offset = log_path.stat().st_size if log_path.exists() else 0
        ids = self._user_ids()
        with log_path.open("ab") as log:  # the child keeps its own copy of the descriptor
            log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
            log.flush()
            try:
                self._process = subprocess.Popen(
                    command,
                    cwd=folder,
                    env=self._environment(),
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # its own process group, see the module docstring
                    user=ids[0] if ids else None,
                    group=ids[1] if ids else None,
                    extra_groups=[] if ids else None,
                )
            except OSError as exc:
                raise self.error(f"{command[0]} could not be started: {exc}") from exc

    def _wait_until_ready(self, folder: Path, port: int) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._start_timeout
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                raise self.error(
                    f"the {self.server_name} server exited with code {exit_code} before it was "
                    f"ready\n{self.log_tail()}"
                )
            if self._is_ready(folder, port):
                return
            if time.monotonic() > deadline:
                raise self.error(
                    f"the {self.server_name} server was not ready after "
                    f"{self._start_timeout:.0f} s\n{self.log_tail()}"
                )
            time.sleep(_POLL_S)

    def log_tail(self, lines: int = LOG_TAIL_LINES) -> str:
        """The last lines the server logged since its latest start."""
        if self._folder is None:
            return "(no log)"
        path = self._folder / self.log_name
        try:
            with path.open("rb") as handle:
                size = handle.seek(0, os.SEEK_END)
                handle.seek(max(self._log_offset, size - 64 * 1024))
                text = handle.read().decode("utf-8", errors="replace")
        except FileNotFoundError:
            return "(the server wrote no log)"
        tail = text.strip().splitlines()[-lines:]
        return f"--- last lines of {path}:\n" + "\n".join(tail)

    def _signal_group(self, sig: signal.Signals) -> None:
        if self._process is None or self._process.poll() is not None:
            raise self.error(f"the {self.server_name} server is not running")
        os.killpg(self._process.pid, sig)  # the group of exactly the process we started
        _signal_descendants(self._process.pid, sig)  # PostgreSQL's backends leave the group

    def _shut_down(self) -> None:
        process = self._process
        if process is None:
            return
        if process.poll() is None:
            process.send_signal(self.stop_signal)
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGCONT)  # a paused server must see the signal
            with contextlib.suppress(subprocess.TimeoutExpired):  # SIGKILLed below
                process.wait(timeout=self._stop_timeout)
        self._kill_group()

    def _kill_group(self) -> None:
        """SIGKILL whatever is left of the process group; wait until none of it runs."""
        process = self._process
        if process is None:
            return
        _signal_descendants(process.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=self._stop_timeout)
        _wait_group_gone(process.pid, self._stop_timeout)
        self._process = None

    def _remove_folder(self) -> None:
        _UNSTOPPED.discard(self)
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def _wait_group_gone(pgid: int, timeout: float) -> None:
    """Wait until no live process is left in group ``pgid`` (zombies do not count: they hold no
    port and no shared memory, and whether anyone reaps an orphan is not ours to decide)."""
    proc = Path("/proc")
    if not proc.is_dir():
        return
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and _group_has_live_process(proc, pgid):
        time.sleep(_POLL_S)


def _group_has_live_process(proc: Path, pgid: int) -> bool:
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text(encoding="ascii", errors="replace")
        except OSError:
            continue
        fields = stat.rpartition(")")[2].split()  # state ppid pgrp ...
        if len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            return True
    return False


def _descendants(pid: int) -> list[int]:
    """Every live process below ``pid`` (from /proc), children before grandchildren."""
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:  # gone meanwhile
            continue
        fields = stat.rsplit(")", 1)[-1].split()
        parents[int(entry.name)] = int(fields[1])
    found: list[int] = []
    frontier = [pid]
    while frontier:
        children = [child for child, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def _signal_descendants(pid: int, sig: signal.Signals) -> None:
    """``sig`` to every process below ``pid``, wherever its process group: PostgreSQL's
    backends call setsid(), so a signal to the postmaster's group misses them."""
    for child in _descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(child, sig)
