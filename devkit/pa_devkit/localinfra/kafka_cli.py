"""The command line: ``python -m pa_devkit.localinfra.kafka {fetch,start,stop,status} --help``.

``devkit/pa_devkit/localinfra/kafka.py`` calls ``main`` when run with ``-m``; deploy/local/kafka.sh
and the Makefile use it that way.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from pa_devkit.localinfra.broker_config import HOST, _port_of, port_accepts, read_properties
from pa_devkit.localinfra.detached import PID_FILE, is_broker_process, read_pid_file, stop_pid
from pa_devkit.localinfra.errors import LocalKafkaError
from pa_devkit.localinfra.jars import (
    CACHE_DIR_ENV,
    KAFKA_VERSION,
    KAFKA_VERSION_ENV,
    _write_atomically,
    default_kafka_version,
    fetch_kafka,
    resolve_cache_dir,
)
from pa_devkit.localinfra.kafka import (
    DEFAULT_PORT,
    LOGS,
    SERVER_LOG,
    SERVER_PROPERTIES,
    START_TIMEOUT_S,
    STOP_TIMEOUT_S,
    LocalKafka,
)

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
        prog="python -m pa_devkit.localinfra.kafka",
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
    """Entry point of ``python -m pa_devkit.localinfra.kafka``."""
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
