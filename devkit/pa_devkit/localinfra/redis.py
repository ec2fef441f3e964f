"""A Redis server on loopback for tests: ``LocalRedis`` runs ``redis-server`` as a child process.

No Docker engine is needed: ``redis-server`` is the machine's own (Debian's ``redis-server``
package, installed by ``make store-tools``), found on PATH. By default it is durable: the
append-only file on, fsynced on every write (``appendonly yes``, ``appendfsync always``), RDB
snapshots off (``save ""``), so an acknowledged write survives a SIGKILL and a restart.
``appendonly=False`` starts a Redis that loses data on a restart, for the tests of a store
that must refuse one. Only the standard library is used.

The settings go into a configuration file rather than onto the command line, so that a
password never shows in the process list. Layout of the temporary folder (``stop()``
deletes it)::

    <folder>/redis.conf        rewritten on every start (mode 0600: it may hold the password)
    <folder>/appendonlydir/    the append-only file, kept by restart(), kill() and start()
    <folder>/redis.log         the server's log, appended across restarts

Outages (``pa_devkit.localinfra.server_process``): ``restart()`` (SIGTERM, then start),
``kill()`` then ``start()`` (a crash), ``pause()``/``resume()`` (a server that stopped
answering).
"""

from __future__ import annotations

import os
import shutil
import socket
from pathlib import Path
from typing import Literal
from urllib.parse import quote

from pa_devkit.localinfra.broker_config import HOST
from pa_devkit.localinfra.errors import LocalRedisError
from pa_devkit.localinfra.server_process import LocalServer

START_TIMEOUT_S = 15.0
STOP_TIMEOUT_S = 15.0
CONFIG_FILE = "redis.conf"
AppendFsync = Literal["always", "everysec", "no"]


def find_redis_server() -> str:
    """The ``redis-server`` on PATH."""
    found = shutil.which("redis-server")
    if found is None:
        raise LocalRedisError(
            "redis-server is not on PATH: install Debian's redis-server package (make store-tools)"
        )
    return found


class LocalRedis(LocalServer):
    """One Redis server on 127.0.0.1, durable unless ``appendonly=False``.

    ``port=0`` picks a free port at the first start. ``url`` is ``redis://127.0.0.1:<port>/0``,
    or ``redis://:<password>@127.0.0.1:<port>/0`` with a password.
    """

    server_name = "Redis"
    error = LocalRedisError
    log_name = "redis.log"

    def __init__(
        self,
        port: int = 0,
        *,
        password: str | None = None,
        appendonly: bool = True,
        appendfsync: AppendFsync = "always",
        redis_server: str | None = None,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        if appendfsync not in ("always", "everysec", "no"):
            raise ValueError(f"appendfsync must be always, everysec or no, not {appendfsync!r}")
        if password is not None:
            _check_config_value("password", password)
        self._password = password
        self._appendonly = appendonly
        self._appendfsync = appendfsync
        self._redis_server = redis_server

    @property
    def password(self) -> str | None:
        """The password clients must give (``requirepass``), if any."""
        return self._password

    @property
    def url(self) -> str:
        """``redis://[:<password>@]127.0.0.1:<port>/0``."""
        return self.url_for(0)

    def url_for(self, db: int) -> str:
        """The URL of database number ``db`` on this server."""
        auth = f":{quote(self._password, safe='')}@" if self._password is not None else ""
        return f"redis://{auth}{HOST}:{self.port}/{db}"

    # -- LocalServer's hooks --

    def _prepare(self, folder: Path, port: int, *, first: bool) -> None:
        if self._redis_server is None:
            self._redis_server = find_redis_server()
        elif shutil.which(self._redis_server) is None:
            raise LocalRedisError(f"redis-server executable not found: {self._redis_server}")
        settings = {
            "bind": HOST,
            "port": str(port),
            "protected-mode": "yes",
            "daemonize": "no",
            "dir": str(folder),
            "logfile": "",  # stdout, which goes to the log file
            "save": "",  # no RDB snapshots: the append-only file alone carries the data
            "appendonly": "yes" if self._appendonly else "no",
            "appendfsync": self._appendfsync,
        }
        if self._password is not None:
            settings["requirepass"] = self._password
        lines = [
            "# Written by devkit/pa_devkit/localinfra/redis.py on every start; edits are lost."
        ]
        lines.extend(f"{name} {_config_quote(value)}" for name, value in settings.items())
        config = folder / CONFIG_FILE
        descriptor = os.open(config, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(descriptor, "w", encoding="utf-8") as handle:
            handle.write("\n".join(lines) + "\n")

    def _command(self, folder: Path, port: int) -> list[str]:
        assert self._redis_server is not None
        return [self._redis_server, str(folder / CONFIG_FILE)]

    def _is_ready(self, folder: Path, port: int) -> bool:
        return _answers_ping(port, self._password)

    def _after_start(self, *, first: bool) -> None:
        """Nothing to set up: database 0 exists from the start."""


def _answers_ping(port: int, password: str | None) -> bool:
    """Whether the server answers PING with PONG (not LOADING, not an error)."""
    commands = [_resp("AUTH", password)] if password is not None else []
    commands.append(_resp("PING"))
    try:
        with socket.create_connection((HOST, port), timeout=1.0) as sock:
            sock.sendall(b"".join(commands))
            with sock.makefile("rb") as reader:
                replies = [reader.readline() for _ in commands]
    except OSError:
        return False
    return replies[-1].startswith(b"+PONG")


def _resp(*parts: str) -> bytes:
    """One command in the Redis protocol (RESP): an array of bulk strings."""
    encoded = [part.encode("utf-8") for part in parts]
    return f"*{len(encoded)}\r\n".encode() + b"".join(
        b"$%d\r\n%s\r\n" % (len(part), part) for part in encoded
    )


def _check_config_value(kind: str, value: str) -> None:
    if any(ord(char) < 32 for char in value):
        raise ValueError(f"the {kind} cannot hold control characters")


def _config_quote(value: str) -> str:
    """A value as redis.conf reads it: in double quotes, backslash and quote escaped."""
    _check_config_value("value", value)
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
