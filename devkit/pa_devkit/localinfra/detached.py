"""A detached broker, known by its pid file: read the pid, check it is still ours, stop it.

``start`` on the command line leaves its broker running after Python exits and records the
JVM's pid in ``<data dir>/kafka.pid``; ``stop`` and ``status`` find the broker again here.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

from pa_devkit.localinfra.errors import LocalKafkaError
from pa_devkit.localinfra.kafka import SERVER_PROPERTIES, STOP_TIMEOUT_S

PID_FILE = "kafka.pid"


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
