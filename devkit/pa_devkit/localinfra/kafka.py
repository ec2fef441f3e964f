"""A single-node KRaft Apache Kafka broker on loopback: ``LocalKafka`` runs it as a child process.

No Docker engine is needed: the broker's jars come from Maven Central once
(``pa_devkit.localinfra.jars``), and ``LocalKafka`` formats a data dir and runs
``java ... kafka.Kafka server.properties`` as a child process (broker and controller in one
JVM). Only the standard library is used, so the module works before the service's own
dependencies are installed.

Layout of the data dir (the jar cache is laid out in ``pa_devkit.localinfra.jars``)::

    <data dir>/server.properties          rewritten on every start
    <data dir>/log4j2.properties          copy of resources/kafka-log4j2.properties
    <data dir>/kraft-logs/                log.dirs: the metadata log and topic partitions
    <data dir>/logs/server.log            the broker's own log (INFO)
    <data dir>/logs/kafka.out             the JVM's stdout and stderr
    <data dir>/kafka.pid                  only for a broker started by ``start`` on the CLI
                                          (see ``pa_devkit.localinfra.detached``)

Command line: ``python -m pa_devkit.localinfra.kafka {fetch,start,stop,status} --help``
(``pa_devkit.localinfra.kafka_cli``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

from pa_devkit.localinfra.broker_config import (
    HOST,
    _port_of,
    find_java,
    free_port,
    new_cluster_id,
    port_accepts,
    port_is_free,
    read_properties,
    render_server_properties,
)
from pa_devkit.localinfra.errors import LocalKafkaError
from pa_devkit.localinfra.jars import _read_resource, default_kafka_version, fetch_kafka
from pa_devkit.localinfra.secure import SecureListeners

DEFAULT_PORT = 9092
HEAP_OPTS: tuple[str, ...] = ("-Xms256m", "-Xmx512m")
JVM_OPTS: tuple[str, ...] = (
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 30.0
FORMAT_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 30
STARTED_MESSAGE = "Kafka Server started"

SERVER_PROPERTIES = "server.properties"
LOG4J_CONFIG = "log4j2.properties"
LOG_DIRS = "kraft-logs"
LOGS = "logs"
SERVER_LOG = "server.log"
STDOUT_LOG = "kafka.out"

_LOG4J_RESOURCE = "kafka-log4j2.properties"


_UNSTOPPED: set[LocalKafka] = set()


@atexit.register
def _stop_forgotten_brokers() -> None:
    """A safety net: a JVM started in its own session would outlive a script that forgot it."""
    for broker in list(_UNSTOPPED):
        broker.stop()


class LocalKafka:
    """One KRaft broker+controller JVM on 127.0.0.1, started and stopped by this object.

    ``port=0`` picks a free port at the first start; ``restart()`` keeps the port, the
    controller port and the data. A data dir that this object created (``data_dir=None``)
    is deleted by ``stop()``; a given one is kept.
    """

    def __init__(
        self,
        port: int = DEFAULT_PORT,
        *,
        data_dir: Path | str | None = None,
        controller_port: int | None = None,
        version: str | None = None,
        cache_dir: Path | None = None,
        java: str | None = None,
        heap_opts: Sequence[str] = HEAP_OPTS,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
        extra_properties: Mapping[str, str] | None = None,
        secure: SecureListeners | None = None,
    ) -> None:
        if not 0 <= port <= 65535:
            raise ValueError(f"port must be 0..65535, not {port}")
        self._port: int | None = port or None
        self._controller_port = controller_port
        self._data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self._owns_data_dir = False
        self._version = version or default_kafka_version()
        self._cache_dir = cache_dir
        self._java = java
        self._heap_opts = tuple(heap_opts)
        self._start_timeout = start_timeout
        self._stop_timeout = stop_timeout
        self._extra_properties = dict(extra_properties or {})
        self._secure = secure
        self._process: subprocess.Popen[bytes] | None = None
        self._stdout: IO[bytes] | None = None
        self._server_log_offset = 0
        self._stdout_offset = 0

    # -- properties --

    @property
    def port(self) -> int:
        """The PLAINTEXT port (chosen at the first start when the constructor got 0)."""
        if self._port is None:
            raise LocalKafkaError("the port is chosen when the broker starts; call start()")
        return self._port

    @property
    def bootstrap_servers(self) -> str:
        """``127.0.0.1:<port>``, for the clients' bootstrap_servers."""
        return f"{HOST}:{self.port}"

    @property
    def secure(self) -> SecureListeners | None:
        """The SASL_SSL and mutual-TLS listeners (their ports set by ``start``), if any."""
        return self._secure

    @property
    def data_dir(self) -> Path:
        """The folder holding the configuration, the partitions and the logs."""
        if self._data_dir is None:
            raise LocalKafkaError("no data dir yet: a temporary one is made by start()")
        return self._data_dir

    @property
    def version(self) -> str:
        """The Kafka version this broker runs."""
        return self._version

    @property
    def pid(self) -> int | None:
        """The JVM's process id while it runs."""
        return self._process.pid if self._process is not None else None

    @property
    def running(self) -> bool:
        """Whether the JVM this object started is still alive."""
        return self._process is not None and self._process.poll() is None

    @property
    def server_log(self) -> Path:
        """The broker's log file."""
        return self.data_dir / LOGS / SERVER_LOG

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
        """Fetch the jars if needed, format storage once, run the JVM and wait until ready."""
        if self.running:
            raise LocalKafkaError(f"the broker is already running (pid {self.pid})")
        java = self._java or find_java()
        if shutil.which(java) is None:
            raise LocalKafkaError(f"java executable not found: {java}")
        libs = fetch_kafka(self._version, cache_dir=self._cache_dir)
        made_data_dir = self._data_dir is None
        data_dir = self._prepare_data_dir()
        try:
            port, controller_port = self._choose_ports(data_dir)
            self._write_config(data_dir, port, controller_port)
            if not (data_dir / LOG_DIRS / "meta.properties").is_file():
                self._format_storage(java, libs, data_dir)
            self._launch(java, libs, data_dir)
            self._wait_until_ready()
        except BaseException:
            self._terminate(kill=True)
            if made_data_dir:
                self._remove_owned_data_dir()
            raise

    def stop(self) -> None:
        """SIGTERM the JVM (SIGKILL after the stop timeout); a no-op when not running."""
        self._terminate(kill=False)
        self._remove_owned_data_dir()

    def restart(self) -> None:
        """Stop and start again on the same ports and data dir, keeping every topic."""
        if self._data_dir is None:
            raise LocalKafkaError("restart() needs a broker that was started before")
        self._terminate(kill=False)
        self.start()

    def detach(self) -> int:
        """Leave the running JVM alone from now on (its data dir is kept); returns its pid."""
        process = self._process
        if process is None or process.poll() is not None:
            raise LocalKafkaError("there is no running broker to detach")
        pid = process.pid
        self._process = None
        _UNSTOPPED.discard(self)
        self._owns_data_dir = False
        self._close_stdout()
        with warnings.catch_warnings():
            # Popen warns when dropped while its child runs: here that is the point.
            warnings.simplefilter("ignore", ResourceWarning)
            del process
        return pid

    # -- steps of start() --

    def _prepare_data_dir(self) -> Path:
        if self._data_dir is None:
            self._data_dir = Path(tempfile.mkdtemp(prefix="local-kafka-"))
            self._owns_data_dir = True
        for folder in (self._data_dir, self._data_dir / LOGS, self._data_dir / LOG_DIRS):
            folder.mkdir(parents=True, exist_ok=True)
        return self._data_dir

    def _choose_ports(self, data_dir: Path) -> tuple[int, int]:
        previous = data_dir / SERVER_PROPERTIES
        formatted = (data_dir / LOG_DIRS / "meta.properties").is_file()
        if self._controller_port is None and formatted and previous.is_file():
            voters = read_properties(previous).get("controller.quorum.voters", "")
            if voters:
                self._controller_port = _port_of(voters)
        if self._controller_port is None:
            self._controller_port = free_port()
        while self._port is None or self._port == self._controller_port:
            self._port = free_port()
        ports = [("broker", self._port), ("controller", self._controller_port)]
        if self._secure is not None:
            taken = {self._port, self._controller_port}
            while self._secure.sasl_port in taken or not self._secure.sasl_port:
                self._secure.sasl_port = free_port()
            taken.add(self._secure.sasl_port)
            while self._secure.mtls_port in taken or not self._secure.mtls_port:
                self._secure.mtls_port = free_port()
            ports += [("SASL_SSL", self._secure.sasl_port), ("mTLS", self._secure.mtls_port)]
        for name, port in ports:
            if not port_is_free(port):
                raise LocalKafkaError(
                    f"the {name} port {HOST}:{port} is already in use (another broker?); "
                    "stop it or use port 0 to pick a free port"
                )
        return self._port, self._controller_port

    def _write_config(self, data_dir: Path, port: int, controller_port: int) -> None:
        properties = render_server_properties(
            port=port,
            controller_port=controller_port,
            log_dirs=data_dir / LOG_DIRS,
            extra={
                **(
                    self._secure.properties(
                        port=port, controller_port=controller_port, data_dir=data_dir
                    )
                    if self._secure is not None
                    else {}
                ),
                **self._extra_properties,
            },
        )
        (data_dir / SERVER_PROPERTIES).write_text(properties, encoding="utf-8")
        (data_dir / LOG4J_CONFIG).write_text(_read_resource(_LOG4J_RESOURCE), encoding="utf-8")

    def _java_command(
        self, java: str, libs: Path, data_dir: Path, heap: Sequence[str]
    ) -> list[str]:
        return [
            java,
            *heap,
            *JVM_OPTS,
            f"-Dlog4j2.configurationFile={data_dir / LOG4J_CONFIG}",
            f"-Dkafka.logs.dir={data_dir / LOGS}",
            "-cp",
            f"{libs}{os.sep}*",
        ]

    def _format_storage(self, java: str, libs: Path, data_dir: Path) -> None:
        command = [
            *self._java_command(java, libs, data_dir, ("-Xmx256m",)),
            "kafka.tools.StorageTool",
            "format",
            "--cluster-id",
            new_cluster_id(),
            "--config",
            str(data_dir / SERVER_PROPERTIES),
            *(self._secure.format_arguments() if self._secure is not None else ()),
        ]
        try:
            result = subprocess.run(
                command,
                cwd=data_dir,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=FORMAT_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(f"formatting {data_dir / LOG_DIRS} timed out") from exc
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise LocalKafkaError(
                f"kafka.tools.StorageTool format failed (exit code {result.returncode}):\n{output}"
            )

    def _launch(self, java: str, libs: Path, data_dir: Path) -> None:
        server_log = data_dir / LOGS / SERVER_LOG
        self._server_log_offset = server_log.stat().st_size if server_log.exists() else 0
        command = [
            *self._java_command(java, libs, data_dir, self._heap_opts),
            "kafka.Kafka",
            str(data_dir / SERVER_PROPERTIES),
        ]
        stdout = (data_dir / LOGS / STDOUT_LOG).open("ab")
        self._stdout = stdout
        self._stdout_offset = stdout.tell()
        stdout.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(command)}\n".encode())
        stdout.flush()
        self._process = subprocess.Popen(
            command,
            cwd=data_dir,
            stdin=subprocess.DEVNULL,
            stdout=stdout,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: a Ctrl-C aimed at us misses it
        )
        _UNSTOPPED.add(self)

    def _wait_until_ready(self) -> None:
        process = self._process
        assert process is not None
        deadline = time.monotonic() + self._start_timeout
        scanner = _LogScanner(self.server_log, self._server_log_offset)
        started = False
        while True:
            exit_code = process.poll()
            if exit_code is not None:
                raise LocalKafkaError(
                    f"the Kafka {self._version} broker exited with code {exit_code} before it "
                    f"was ready\n{self._log_tail()}"
                )
            started = started or scanner.contains(STARTED_MESSAGE)
            if started and port_accepts(self.port):
                return
            if time.monotonic() > deadline:
                raise LocalKafkaError(
                    f"the Kafka {self._version} broker was not ready after "
                    f"{self._start_timeout:.0f} s (log says started: {started})\n{self._log_tail()}"
                )
            time.sleep(0.2)

    def _log_tail(self) -> str:
        parts = []
        for path, offset in (
            (self.data_dir / LOGS / SERVER_LOG, self._server_log_offset),
            (self.data_dir / LOGS / STDOUT_LOG, self._stdout_offset),
        ):
            lines = _tail_lines(path, offset, LOG_TAIL_LINES)
            if lines:
                parts.append(f"--- last lines of {LOGS}/{path.name}:\n" + "\n".join(lines))
        return "\n".join(parts) or "(the broker wrote no log)"

    # -- stopping --

    def _terminate(self, *, kill: bool) -> None:
        process = self._process
        if process is None:
            return
        try:
            if process.poll() is None:
                if kill:
                    process.kill()
                else:
                    process.send_signal(signal.SIGTERM)  # exactly the pid we started
                try:
                    process.wait(timeout=self._stop_timeout)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            self._process = None
            self._close_stdout()
            _UNSTOPPED.discard(self)

    def _close_stdout(self) -> None:
        if self._stdout is not None:
            self._stdout.close()
            self._stdout = None

    def _remove_owned_data_dir(self) -> None:
        if self._owns_data_dir and self._data_dir is not None:
            shutil.rmtree(self._data_dir, ignore_errors=True)
            self._data_dir = None
            self._owns_data_dir = False


class _LogScanner:
    """Finds a text in what a growing file gained after ``offset``, reading each byte once."""

    def __init__(self, path: Path, offset: int) -> None:
        self._path = path
        self._position = offset
        self._carry = b""

    def contains(self, text: str) -> bool:
        needle = text.encode("utf-8")
        try:
            with self._path.open("rb") as handle:
                handle.seek(self._position)
                chunk = handle.read()
        except FileNotFoundError:
            return False
        self._position += len(chunk)
        window = self._carry + chunk
        self._carry = window[-len(needle) :]
        return needle in window


def _tail_lines(path: Path, offset: int, count: int) -> list[str]:
    try:
        with path.open("rb") as handle:
            size = handle.seek(0, os.SEEK_END)
            handle.seek(max(offset, size - 64 * 1024))
            data = handle.read()
    except FileNotFoundError:
        return []
    return data.decode("utf-8", errors="replace").splitlines()[-count:]


if __name__ == "__main__":
    from pa_devkit.localinfra.kafka_cli import main

    sys.exit(main())
