"""A single-node KRaft Apache Kafka broker on loopback, run from Maven Central jars.

No Docker engine is needed: Maven resolves the broker's jars once into a cache folder, and
``LocalKafka`` formats a data dir and runs ``java ... kafka.Kafka server.properties`` as a
child process (broker and controller in one JVM). Only the standard library is used, so the
module works before the service's own dependencies are installed.

Layout::

    <cache>/kafka/<version>/pom.xml       copy of resources/kafka-pom.xml
    <cache>/kafka/<version>/libs/*.jar    the broker's runtime classpath
    <cache>/kafka/<version>/.complete     written last: its presence means "no network needed"

    <data dir>/server.properties          rewritten on every start
    <data dir>/log4j2.properties          copy of resources/kafka-log4j2.properties
    <data dir>/kraft-logs/                log.dirs: the metadata log and topic partitions
    <data dir>/logs/server.log            the broker's own log (INFO)
    <data dir>/logs/kafka.out             the JVM's stdout and stderr
    <data dir>/kafka.pid                  only for a broker started by ``start`` on the CLI

Command line: ``python -m service.localinfra.kafka {fetch,start,stop,status} --help``.
"""

from __future__ import annotations

import argparse
import atexit
import base64
import contextlib
import fcntl
import hashlib
import importlib.resources
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import IO, Self

KAFKA_VERSION = "4.1.2"
KAFKA_VERSION_ENV = "POINTS_ADJUSTER_KAFKA_VERSION"
CACHE_DIR_ENV = "POINTS_ADJUSTER_CACHE_DIR"

HOST = "127.0.0.1"
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
FETCH_TIMEOUT_S = 900.0
FORMAT_TIMEOUT_S = 120.0
LOG_TAIL_LINES = 30
STARTED_MESSAGE = "Kafka Server started"

SERVER_PROPERTIES = "server.properties"
LOG4J_CONFIG = "log4j2.properties"
LOG_DIRS = "kraft-logs"
LOGS = "logs"
SERVER_LOG = "server.log"
STDOUT_LOG = "kafka.out"
PID_FILE = "kafka.pid"

_RESOURCE_PACKAGE = "service.localinfra"
_POM_RESOURCE = "kafka-pom.xml"
_LOG4J_RESOURCE = "kafka-log4j2.properties"
_COMPLETE_MARKER = ".complete"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


class LocalKafkaError(Exception):
    """The local broker could not be fetched, started or stopped; the message says why."""


# --- locations -----------------------------------------------------------------------------


def resolve_cache_dir(
    environ: Mapping[str, str] | None = None,
    *,
    package_dir: Path | None = None,
    home: Path | None = None,
) -> Path:
    """Where downloaded jars live: $POINTS_ADJUSTER_CACHE_DIR, else the checkout's .cache.

    ``package_dir`` is the ``service/`` folder; when its parent holds pyproject.toml the code
    runs from a checkout and the git-ignored ``<repo>/.cache`` is used, otherwise
    ``~/.cache/points-adjuster``.
    """
    env = os.environ if environ is None else environ
    configured = env.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    service_dir = package_dir if package_dir is not None else Path(__file__).resolve().parent.parent
    repo_root = service_dir.parent
    if (repo_root / "pyproject.toml").is_file():
        return repo_root / ".cache"
    return (home if home is not None else Path.home()) / ".cache" / "points-adjuster"


def default_kafka_version(environ: Mapping[str, str] | None = None) -> str:
    """The Kafka version to run: $POINTS_ADJUSTER_KAFKA_VERSION, else ``KAFKA_VERSION``."""
    env = os.environ if environ is None else environ
    return env.get(KAFKA_VERSION_ENV, "").strip() or KAFKA_VERSION


def kafka_libs_dir(version: str, cache_dir: Path) -> Path:
    """The classpath folder of one Kafka version inside the cache."""
    return cache_dir / "kafka" / version / "libs"


def _read_resource(name: str) -> str:
    resource = importlib.resources.files(_RESOURCE_PACKAGE).joinpath("resources", name)
    return resource.read_text(encoding="utf-8")


# --- fetching the jars ---------------------------------------------------------------------


def fetch_kafka(
    version: str | None = None,
    *,
    cache_dir: Path | None = None,
    mvn: str | None = None,
    timeout: float = FETCH_TIMEOUT_S,
) -> Path:
    """Return the classpath folder of Kafka ``version``, downloading it with Maven if needed.

    A complete earlier download (its marker matches this version and pom) is reused without
    running Maven at all. An interrupted download has no marker and is done again.
    """
    version = version or default_kafka_version()
    root = kafka_libs_dir(version, cache_dir or resolve_cache_dir()).parent
    libs = root / "libs"
    pom_text = _read_resource(_POM_RESOURCE)
    stamp = _fetch_stamp(version, pom_text)
    if _fetch_is_complete(root, stamp):
        return libs
    mvn_path = mvn or shutil.which("mvn")
    if mvn_path is None:
        raise LocalKafkaError(
            f"Maven (mvn) is not on PATH; it is needed once to download the Kafka {version} "
            f"jars into {libs}. Install Maven 3.8+ (Debian: apt-get install maven)."
        )
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / ".lock"):
        if _fetch_is_complete(root, stamp):  # another process finished while we waited
            return libs
        (root / _COMPLETE_MARKER).unlink(missing_ok=True)
        staging = root / "libs.partial"
        shutil.rmtree(libs, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        pom = root / "pom.xml"
        pom.write_text(pom_text, encoding="utf-8")
        command = [
            mvn_path,
            "-q",
            "-B",
            "-Dstyle.color=never",
            "-f",
            str(pom),
            "dependency:copy-dependencies",
            "-DincludeScope=runtime",
            f"-DoutputDirectory={staging}",
            f"-Dkafka.version={version}",
        ]
        try:
            result = subprocess.run(
                command,
                cwd=root,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalKafkaError(
                f"fetching the Kafka {version} jars with Maven took over {timeout:.0f} s"
            ) from exc
        if result.returncode != 0:
            output = _ANSI_ESCAPE.sub("", result.stdout + result.stderr)
            tail = "\n".join(output.strip().splitlines()[-40:])
            raise LocalKafkaError(
                f"fetching the Kafka {version} jars failed (mvn exit code {result.returncode}); "
                f"is the version published on Maven Central?\n{tail}"
            )
        _check_jars(staging, version)
        staging.rename(libs)
        _write_atomically(root / _COMPLETE_MARKER, stamp)
    return libs


def _fetch_stamp(version: str, pom_text: str) -> str:
    digest = hashlib.sha256(pom_text.encode("utf-8")).hexdigest()
    return f"kafka {version}\npom-sha256 {digest}\n"


def _fetch_is_complete(root: Path, stamp: str) -> bool:
    marker = root / _COMPLETE_MARKER
    try:
        return marker.read_text(encoding="utf-8") == stamp and (root / "libs").is_dir()
    except OSError:
        return False


def _check_jars(libs: Path, version: str) -> None:
    names = {jar.name for jar in libs.glob("*.jar")}
    core = f"kafka_2.13-{version}.jar"
    if core not in names:
        raise LocalKafkaError(f"Maven finished but {core} is not in {libs}")
    slf4j_apis = sorted(name for name in names if name.startswith("slf4j-api-"))
    if not slf4j_apis:
        return
    binding = (
        "log4j-slf4j2-impl" if slf4j_apis[-1].startswith("slf4j-api-2.") else "log4j-slf4j-impl"
    )
    if not any(name.startswith(f"{binding}-") for name in names):
        raise LocalKafkaError(
            f"Kafka {version} logs through {slf4j_apis[-1]}, whose Log4j 2 binding is "
            f"{binding}, but resources/{_POM_RESOURCE} does not bring it: the broker would log "
            "nothing. Change the binding in the pom."
        )


def _write_atomically(path: Path, text: str) -> None:
    partial = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    partial.write_text(text, encoding="utf-8")
    partial.replace(path)


@contextlib.contextmanager
def _exclusive_lock(path: Path) -> Iterator[None]:
    with path.open("a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


# --- configuration -------------------------------------------------------------------------


def new_cluster_id() -> str:
    """A random cluster id: 16 bytes as 22 base64url characters, never starting with '-'."""
    while True:
        text = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode("ascii").rstrip("=")
        if not text.startswith("-"):  # it would be read as an option by the storage tool
            return text


def render_server_properties(
    *,
    port: int,
    controller_port: int,
    log_dirs: Path,
    extra: Mapping[str, str] | None = None,
) -> str:
    """The broker+controller configuration of a one-node cluster on 127.0.0.1."""
    properties: dict[str, str] = {
        "process.roles": "broker,controller",
        "node.id": "1",
        "controller.quorum.voters": f"1@{HOST}:{controller_port}",
        "listeners": f"PLAINTEXT://{HOST}:{port},CONTROLLER://{HOST}:{controller_port}",
        "advertised.listeners": f"PLAINTEXT://{HOST}:{port}",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "inter.broker.listener.name": "PLAINTEXT",
        "controller.listener.names": "CONTROLLER",
        "log.dirs": str(log_dirs),
        "num.partitions": "1",
        "default.replication.factor": "1",
        "min.insync.replicas": "1",
        "auto.create.topics.enable": "true",
        "offsets.topic.replication.factor": "1",
        "transaction.state.log.replication.factor": "1",
        "transaction.state.log.min.isr": "1",
        "share.coordinator.state.topic.replication.factor": "1",
        "share.coordinator.state.topic.min.isr": "1",
        "group.initial.rebalance.delay.ms": "0",
    }
    properties.update(extra or {})
    lines = ["# Written by service/localinfra/kafka.py on every start; edits are lost."]
    lines.extend(f"{key}={_escape_property(value)}" for key, value in properties.items())
    return "\n".join(lines) + "\n"


def _escape_property(value: str) -> str:
    if "\n" in value or "\r" in value:
        raise ValueError(f"a property value cannot span lines: {value!r}")
    return value.replace("\\", "\\\\")


def read_properties(path: Path) -> dict[str, str]:
    """The key=value lines of a simple Java properties file (comments skipped)."""
    result: dict[str, str] = {}
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", "!")) or "=" not in line:
            continue
        key, _, value = line.partition("=")
        result[key.strip()] = value.strip().replace("\\\\", "\\")
    return result


def _port_of(address: str) -> int:
    return int(address.rsplit(":", 1)[1])


def find_java() -> str:
    """The java executable: $JAVA_HOME/bin/java, else the one on PATH."""
    java_home = os.environ.get("JAVA_HOME", "").strip()
    if java_home:
        candidate = Path(java_home) / "bin" / "java"
        if candidate.is_file() and os.access(candidate, os.X_OK):
            return str(candidate)
    found = shutil.which("java")
    if found is None:
        raise LocalKafkaError(
            "java is not on PATH (and JAVA_HOME does not point at a JDK): Kafka 4.x needs "
            "Java 17 or newer (Debian: apt-get install openjdk-17-jre-headless)."
        )
    return found


# --- ports -----------------------------------------------------------------------------------


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Whether a server could listen on 127.0.0.1:port (sockets in TIME_WAIT do not count)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def port_accepts(port: int, timeout: float = 0.5) -> bool:
    """Whether 127.0.0.1:port accepts a TCP connection."""
    try:
        with socket.create_connection((HOST, port), timeout=timeout):
            return True
    except OSError:
        return False


# --- the broker ------------------------------------------------------------------------------


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
        for name, port in (("broker", self._port), ("controller", self._controller_port)):
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
            extra=self._extra_properties,
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


# --- a detached broker, known by its pid file ------------------------------------------------


def read_pid_file(data_dir: Path) -> int | None:
    """The pid recorded by ``start`` on the CLI, if any."""
    try:
        return int((data_dir / PID_FILE).read_text(encoding="utf-8").strip())
    except (FileNotFoundError, ValueError):
        return None


def is_broker_process(pid: int, data_dir: Path) -> bool:
    """Whether ``pid`` is alive and is a kafka.Kafka JVM running this data dir's config."""
    if not _pid_alive(pid):
        return False
    command_line = _command_line(pid)
    return "kafka.Kafka" in command_line and str(data_dir / SERVER_PROPERTIES) in command_line


def stop_pid(pid: int, timeout: float = STOP_TIMEOUT_S) -> None:
    """SIGTERM one process that is not our child, then SIGKILL it after ``timeout``."""
    for sig, wait_for in ((signal.SIGTERM, timeout), (signal.SIGKILL, STOP_TIMEOUT_S)):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
        deadline = time.monotonic() + wait_for
        while time.monotonic() < deadline:
            if not _pid_alive(pid):
                return
            time.sleep(0.2)
    raise LocalKafkaError(f"process {pid} survived SIGKILL")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[0] != "Z"  # a zombie has exited already


def _command_line(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except FileNotFoundError:
        if Path("/proc/self").exists():
            return ""
    except OSError:
        return ""
    result = subprocess.run(
        ["ps", "-o", "command=", "-p", str(pid)], capture_output=True, text=True, check=False
    )
    return result.stdout


# --- command line ----------------------------------------------------------------------------

_STATUS_STOPPED = 3  # like an LSB init script's "program is not running"


def _default_data_dir() -> Path:
    return resolve_cache_dir() / "kafka-data"


def _cmd_fetch(args: argparse.Namespace) -> int:
    started = time.monotonic()
    libs = fetch_kafka(args.kafka_version, cache_dir=args.cache_dir)
    jars = len(list(libs.glob("*.jar")))
    print(f"Kafka {args.kafka_version}: {jars} jars in {libs} ({time.monotonic() - started:.1f} s)")
    return 0


def _cmd_start(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    pid = read_pid_file(data_dir)
    if pid is not None and is_broker_process(pid, data_dir):
        raise LocalKafkaError(
            f"a broker already runs on {data_dir} (pid {pid}); stop it first with "
            f"'stop --data-dir {data_dir}'"
        )
    (data_dir / PID_FILE).unlink(missing_ok=True)
    broker = LocalKafka(
        args.port,
        data_dir=data_dir,
        version=args.kafka_version,
        cache_dir=args.cache_dir,
        start_timeout=args.timeout,
    )
    started = time.monotonic()
    broker.start()
    elapsed = time.monotonic() - started
    bootstrap = broker.bootstrap_servers
    pid = broker.detach()
    _write_atomically(data_dir / PID_FILE, f"{pid}\n")
    print(bootstrap)
    print(
        f"Kafka {args.kafka_version} ready in {elapsed:.1f} s: pid {pid}, data dir {data_dir}, "
        f"log {data_dir / LOGS / SERVER_LOG}",
        file=sys.stderr,
    )
    return 0


def _cmd_stop(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    pid = read_pid_file(data_dir)
    if pid is None:
        print(f"no broker recorded in {data_dir / PID_FILE}: nothing to stop")
        return 0
    if is_broker_process(pid, data_dir):
        stop_pid(pid, args.timeout)
        print(f"stopped the broker (pid {pid})")
    else:
        print(f"pid {pid} is no longer a broker of {data_dir}: removing the stale pid file")
    (data_dir / PID_FILE).unlink(missing_ok=True)
    return 0


def _cmd_status(args: argparse.Namespace) -> int:
    data_dir: Path = args.data_dir.resolve()
    pid = read_pid_file(data_dir)
    if pid is None or not is_broker_process(pid, data_dir):
        print(f"stopped (data dir {data_dir})")
        return _STATUS_STOPPED
    listeners = read_properties(data_dir / SERVER_PROPERTIES).get("advertised.listeners", "")
    port = _port_of(listeners)
    state = "running" if port_accepts(port) else "running, port not accepting yet"
    print(f"{state}: pid {pid}, bootstrap {HOST}:{port}, data dir {data_dir}")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    cache_help = f"jar cache folder (default: ${CACHE_DIR_ENV}, else <repo>/.cache in a checkout)"
    version_help = f"Kafka version (default: ${KAFKA_VERSION_ENV} or {KAFKA_VERSION})"
    data_help = "broker data dir (default: <cache>/kafka-data)"
    parser = argparse.ArgumentParser(
        prog="python -m service.localinfra.kafka",
        description=(
            "Run a single-node KRaft Apache Kafka broker on 127.0.0.1 from Maven Central jars "
            "(needs java 17+; mvn only for the first fetch)."
        ),
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    fetch = commands.add_parser(
        "fetch",
        help="download the broker jars once (later runs need no network)",
        description="Resolve the broker's jars with Maven into <cache>/kafka/<version>/libs.",
    )
    start = commands.add_parser(
        "start",
        help="start a detached broker, print its bootstrap servers once it is ready",
        description=(
            "Start a broker in the background, record its pid in <data dir>/kafka.pid and "
            "print host:port on stdout once it accepts clients. Topics survive a stop/start "
            "on the same data dir."
        ),
    )
    stop = commands.add_parser(
        "stop",
        help="stop the broker recorded in the data dir's pid file",
        description="SIGTERM exactly the pid in <data dir>/kafka.pid; SIGKILL after --timeout.",
    )
    status = commands.add_parser(
        "status",
        help="say whether the data dir's broker runs (exit code 3 when not)",
        description="Print the state of the data dir's broker; exit 0 running, 3 stopped.",
    )
    for sub in (fetch, start):
        sub.add_argument("--kafka-version", default=default_kafka_version(), help=version_help)
        sub.add_argument("--cache-dir", type=Path, default=None, help=cache_help)
    for sub in (start, stop, status):
        sub.add_argument("--data-dir", type=Path, default=_default_data_dir(), help=data_help)
    start.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help="PLAINTEXT port; 0 picks a free one"
    )
    start.add_argument(
        "--timeout", type=float, default=START_TIMEOUT_S, help="seconds to wait for readiness"
    )
    stop.add_argument(
        "--timeout", type=float, default=STOP_TIMEOUT_S, help="seconds before SIGKILL"
    )
    fetch.set_defaults(handler=_cmd_fetch)
    start.set_defaults(handler=_cmd_start)
    stop.set_defaults(handler=_cmd_stop)
    status.set_defaults(handler=_cmd_status)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m service.localinfra.kafka``."""
    args = _build_parser().parse_args(argv)
    try:
        exit_code: int = args.handler(args)
    except LocalKafkaError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return exit_code


if __name__ == "__main__":
    sys.exit(main())
