"""A PostgreSQL server on loopback for tests: ``LocalPostgres`` runs it as a child process.

No Docker engine is needed: the server binaries are the machine's own (Debian's ``postgresql``
package, installed by ``make store-tools``), found through ``pg_config --bindir``, then the
newest ``/usr/lib/postgresql/<major>/bin`` (Debian keeps them off PATH), then PATH. The first
start runs ``initdb`` (trust authentication, loopback only) and creates the database; every
start runs ``postgres -D <data> -k <folder> -p <port> -c listen_addresses=127.0.0.1`` with
``fsync``, ``synchronous_commit`` and ``full_page_writes`` on, so a committed row survives a
SIGKILL as it would in production. Only the standard library is used.

Root: postgres refuses to run as root, so when this process is root, initdb and postgres run
as an unprivileged user (``nobody`` unless ``run_as`` names another one) that owns the folder;
the temporary directory must then be reachable by that user (``/tmp`` is).

Layout of the temporary folder (``stop()`` deletes it)::

    <folder>/data/              the cluster, kept by restart(), kill() and start()
    <folder>/.s.PGSQL.<port>    the Unix socket (clients use TCP on 127.0.0.1)
    <folder>/postgres.log       the server's stdout and stderr, appended across restarts

Outages (``pa_devkit.localinfra.server_process``): ``restart()`` (fast shutdown, then start),
``kill()`` then ``start()`` (a crash: the postmaster and its backends SIGKILLed, the WAL
replayed at the next start), ``pause()``/``resume()`` (a server that stopped answering).
"""

from __future__ import annotations

import os
import pwd
import re
import shutil
import signal
import stat
import subprocess
from collections.abc import Mapping
from pathlib import Path

from pa_devkit.localinfra.broker_config import HOST, port_accepts
from pa_devkit.localinfra.errors import LocalPostgresError
from pa_devkit.localinfra.server_process import LocalServer

DEFAULT_DATABASE = "points_adjuster"
DEFAULT_USER = "postgres"
ROOT_RUNS_AS = "nobody"
START_TIMEOUT_S = 30.0
STOP_TIMEOUT_S = 30.0
TOOL_TIMEOUT_S = 60.0
DEBIAN_BINDIRS = Path("/usr/lib/postgresql")
DURABLE_SETTINGS: Mapping[str, str] = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
}
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_PM_STATUS_LINE = 8  # postmaster.pid: "ready" on this line once connections are accepted


def find_postgres_bindir() -> Path:
    """The folder holding ``postgres`` and ``initdb``: ``pg_config --bindir``, the newest
    ``/usr/lib/postgresql/<major>/bin``, else the folder of the ``postgres`` on PATH."""
    candidates: list[Path] = []
    pg_config = shutil.which("pg_config")
    if pg_config is not None:
        try:
            result = subprocess.run(
                [pg_config, "--bindir"], capture_output=True, text=True, timeout=10, check=False
            )
        except (OSError, subprocess.TimeoutExpired):
            result = None
        if result is not None and result.returncode == 0 and result.stdout.strip():
            candidates.append(Path(result.stdout.strip()))
    candidates.extend(sorted(DEBIAN_BINDIRS.glob("*/bin"), key=_major_version, reverse=True))
    on_path = shutil.which("postgres")
    if on_path is not None:
        candidates.append(Path(on_path).resolve().parent)
    for folder in candidates:
        if all(_is_executable(folder / name) for name in ("postgres", "initdb")):
            return folder
    looked = ", ".join(str(folder) for folder in candidates) or "nowhere"
    raise LocalPostgresError(
        "the PostgreSQL server binaries (postgres, initdb) were not found (looked in: "
        f"{looked}; and PATH). Install Debian's postgresql package (make store-tools)."
    )


def _major_version(bindir: Path) -> tuple[int, str]:
    name = bindir.parent.name
    return (int(name) if name.isdigit() else -1, name)


def _is_executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def _check_identifier(kind: str, name: str) -> str:
    if not _IDENTIFIER.fullmatch(name):
        raise ValueError(f"{kind} must match {_IDENTIFIER.pattern}, not {name!r}")
    return name


class LocalPostgres(LocalServer):
    """One PostgreSQL server on 127.0.0.1 with trust authentication and one database.

    ``port=0`` picks a free port at the first start. ``dsn`` is
    ``postgresql://<user>@127.0.0.1:<port>/<database>`` (no password: trust on loopback).
    """

    server_name = "PostgreSQL"
    error = LocalPostgresError
    stop_signal = signal.SIGINT  # "fast" shutdown: roll back open transactions, then exit
    log_name = "postgres.log"

    def __init__(
        self,
        port: int = 0,
        *,
        database: str = DEFAULT_DATABASE,
        user: str = DEFAULT_USER,
        bindir: Path | str | None = None,
        run_as: str | None = None,
        settings: Mapping[str, str] | None = None,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._database = _check_identifier("database", database)
        self._user = _check_identifier("user", user)
        self._bindir = Path(bindir) if bindir is not None else None
        self._run_as = run_as
        self._settings = {**DURABLE_SETTINGS, **(settings or {})}
        self._ids: tuple[int, int] | None = None

    # -- properties --

    @property
    def database(self) -> str:
        """The database created at the first start."""
        return self._database

    @property
    def user(self) -> str:
        """The superuser the DSN connects as."""
        return self._user

    @property
    def dsn(self) -> str:
        """``postgresql://<user>@127.0.0.1:<port>/<database>``."""
        return self.dsn_for(self._database)

    def dsn_for(self, database: str) -> str:
        """The DSN of another database on this server."""
        return f"postgresql://{self._user}@{HOST}:{self.port}/{database}"

    @property
    def data_dir(self) -> Path:
        """The cluster's folder (PGDATA)."""
        return self.folder / "data"

    # -- SQL through psql --

    def create_database(self, name: str) -> str:
        """Create database ``name`` and return its DSN."""
        self.psql(f'CREATE DATABASE "{_check_identifier("database", name)}"')
        return self.dsn_for(name)

    def psql(self, sql: str, *, database: str = "postgres") -> str:
        """Run ``sql`` with psql as the superuser and return what it printed (unaligned)."""
        psql = self._tool("psql")
        command = [
            psql,
            "-X",  # no ~/.psqlrc
            "-w",  # never prompt for a password
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            HOST,
            "-p",
            str(self.port),
            "-U",
            self._user,
            "-d",
            database,
            "-c",
            sql,
        ]
        try:
            result = subprocess.run(
                command,
                env=_clean_environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT_S,
                check=False,
            )
        except subprocess.TimeoutExpired as exc:
            raise LocalPostgresError(f"psql took over {TOOL_TIMEOUT_S:.0f} s") from exc
        if result.returncode != 0:
            raise LocalPostgresError(
                f"psql failed (exit code {result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout

    def _tool(self, name: str) -> str:
        bindir = self._bindir or find_postgres_bindir()
        if _is_executable(bindir / name):
            return str(bindir / name)
        found = shutil.which(name)
        if found is None:
            raise LocalPostgresError(
                f"{name} is neither in {bindir} nor on PATH "
                "(Debian: apt-get install postgresql-client)"
            )
        return found

    # -- LocalServer's hooks --

    def _make_folder(self) -> Path:
        self._ids = _server_user_ids(self._run_as)
        folder = super()._make_folder()
        if self._ids is not None:
            os.chown(folder, *self._ids)
            _check_reachable(folder, self._ids[0])
        return folder

    def _user_ids(self) -> tuple[int, int] | None:
        return self._ids

    def _environment(self) -> Mapping[str, str]:
        environment = _clean_environment()
        environment["LC_ALL"] = "C"
        if self._ids is not None:
            environment["HOME"] = str(self.folder)  # root's home is not the server user's
        return environment

    def _prepare(self, folder: Path, port: int, *, first: bool) -> None:
        if self._bindir is None:
            self._bindir = find_postgres_bindir()
        if not (folder / "data" / "PG_VERSION").is_file():
            self._initdb(folder)

    def _initdb(self, folder: Path) -> None:
        command = [
            str(self._tool("initdb")),
            "-D",
            str(folder / "data"),
            "-U",
            self._user,
            "--auth=trust",  # initdb's pg_hba.conf: the Unix socket and loopback only
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",  # initdb's own files; the server below runs with fsync on
        ]
        ids = self._ids
        try:
            result = subprocess.run(
                command,
                cwd=folder,
                env=self._environment(),
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT_S,
                check=False,
                user=ids[0] if ids else None,
                group=ids[1] if ids else None,
                extra_groups=[] if ids else None,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise LocalPostgresError(f"initdb could not run: {exc}") from exc
        if result.returncode != 0:
            output = "\n".join((result.stdout + result.stderr).strip().splitlines()[-20:])
            raise LocalPostgresError(f"initdb failed (exit code {result.returncode}):\n{output}")

    def _command(self, folder: Path, port: int) -> list[str]:
        command = [
            str(self._tool("postgres")),
            "-D",
            str(folder / "data"),
            "-k",
            str(folder),
            "-p",
            str(port),
            "-c",
            f"listen_addresses={HOST}",
        ]
        for name, value in self._settings.items():
            command.extend(["-c", f"{name}={value}"])
        return command

    def _is_ready(self, folder: Path, port: int) -> bool:
        try:
            lines = (folder / "data" / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except OSError:
            return False
        ready = len(lines) >= _PM_STATUS_LINE and lines[_PM_STATUS_LINE - 1].strip() == "ready"
        return ready and port_accepts(port)

    def _after_start(self, *, first: bool) -> None:
        if first:
            self.create_database(self._database)


def _server_user_ids(run_as: str | None) -> tuple[int, int] | None:
    """(uid, gid) of the user the server runs as, or None for this process's own user."""
    if os.geteuid() != 0:
        if run_as is not None and run_as != pwd.getpwuid(os.geteuid()).pw_name:
            raise LocalPostgresError(f"only root can run the server as another user ({run_as})")
        return None
    name = run_as or ROOT_RUNS_AS
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise LocalPostgresError(
            f"postgres refuses to run as root and the user {name!r} to run it as does not "
            "exist; pass run_as= an unprivileged user"
        ) from None
    if entry.pw_uid == 0:
        raise LocalPostgresError(f"postgres refuses to run as root, and {name!r} is root")
    return entry.pw_uid, entry.pw_gid


def _check_reachable(folder: Path, uid: int) -> None:
    """Every folder above ``folder`` must let ``uid`` pass, or the server cannot reach it."""
    for parent in folder.parents:
        mode = parent.stat()
        if not (mode.st_mode & stat.S_IXOTH or mode.st_uid == uid):
            raise LocalPostgresError(
                f"{parent} is closed to the user the server runs as (uid {uid}); "
                "point TMPDIR at a folder every user may pass through, such as /tmp"
            )


def _clean_environment() -> dict[str, str]:
    """This process's environment less libpq's PG* variables (PGHOST and the like)."""
    return {name: value for name, value in os.environ.items() if not name.startswith("PG")}
