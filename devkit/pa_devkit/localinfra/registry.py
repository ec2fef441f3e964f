"""A schema registry on loopback for tests: ``LocalRegistry`` runs Apicurio Registry 3.x.

Apicurio Registry serves the Confluent schema registry's REST API under ``/apis/ccompat/v7``
(subjects, versions, schemas by id, compatibility checks), which is what other teams'
serializers and the service's registry client speak. No Docker engine is needed: the
registry's Quarkus build (``io.apicurio:apicurio-registry-app:<version>:tar.gz:all``) is
downloaded once from Maven Central into the jar cache and run with the machine's ``java``,
storing everything in memory (H2): a restart starts empty.

Why 3.0.9 and not a newer 3.x: Apicurio 3.1 and later are compiled for Java 21, and the
machines here have Java 17 (``UnsupportedClassVersionError``). ``$POINTS_ADJUSTER_APICURIO_VERSION``
picks another release where a newer Java is installed. The download goes straight to Maven
Central's file layout with the standard library (Maven itself refuses the artifact: its
parent POM is not served), checked against the ``.sha1`` beside it and, for the default
release, against the SHA-256 pinned below.

Layouts::

    <cache>/apicurio/<version>/app/          the unpacked tar.gz (a runner jar and lib/)
    <cache>/apicurio/<version>/.complete     written last: its presence means "no network"

    <folder>/registry.log                    the server's stdout and stderr (temporary folder)

Subjects can be deleted (``apicurio.rest.deletion.*.enabled``), so tests can clean up.

Command line: ``python -m pa_devkit.localinfra.registry {fetch,run} --help``.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import shutil
import signal
import sys
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from pa_devkit.localinfra.broker_config import HOST, find_java, free_port
from pa_devkit.localinfra.errors import LocalInfraError, LocalRegistryError
from pa_devkit.localinfra.jars import _exclusive_lock, _write_atomically, resolve_cache_dir
from pa_devkit.localinfra.server_process import LocalServer

APICURIO_VERSION = "3.0.9"
APICURIO_VERSION_ENV = "POINTS_ADJUSTER_APICURIO_VERSION"
MAVEN_REPOSITORY = "https://repo.maven.apache.org/maven2"
MAVEN_REPOSITORY_ENV = "POINTS_ADJUSTER_MAVEN_REPOSITORY"
CCOMPAT_PATH = "/apis/ccompat/v7"
HEAP_OPTS: tuple[str, ...] = ("-Xms128m", "-Xmx512m")
START_TIMEOUT_S = 120.0
STOP_TIMEOUT_S = 20.0
FETCH_TIMEOUT_S = 600.0

#: SHA-256 of the downloads this code was tried with; another version is checked by its .sha1
PINNED_SHA256: Mapping[str, str] = {
    "3.0.9": "2b28181501a20cbf6efcd77f9b7153908fc01f3d3a7c32024c0bd9e1b04c8a43",
}

_GROUP_PATH = "io/apicurio/apicurio-registry-app"
_COMPLETE_MARKER = ".complete"
_VERSION_PATTERN = re.compile(r"^[0-9]+\.[0-9]+\.[0-9]+(\.[A-Za-z0-9]+)?$")
_CHUNK = 1 << 20


# --- the download ---------------------------------------------------------------------------


def default_apicurio_version(environ: Mapping[str, str] | None = None) -> str:
    """The release to run: $POINTS_ADJUSTER_APICURIO_VERSION, else ``APICURIO_VERSION``."""
    env = os.environ if environ is None else environ
    return env.get(APICURIO_VERSION_ENV, "").strip() or APICURIO_VERSION


def apicurio_app_dir(version: str, cache_dir: Path) -> Path:
    """The unpacked release inside the cache."""
    return cache_dir / "apicurio" / version / "app"


def download_url(version: str, environ: Mapping[str, str] | None = None) -> str:
    """The tar.gz of ``version`` in the Maven repository ($POINTS_ADJUSTER_MAVEN_REPOSITORY)."""
    env = os.environ if environ is None else environ
    base = env.get(MAVEN_REPOSITORY_ENV, "").strip().rstrip("/") or MAVEN_REPOSITORY
    name = f"apicurio-registry-app-{version}-all.tar.gz"
    return f"{base}/{_GROUP_PATH}/{version}/{name}"


def fetch_apicurio(
    version: str | None = None,
    *,
    cache_dir: Path | None = None,
    timeout: float = FETCH_TIMEOUT_S,
) -> Path:
    """Return the folder of the unpacked Apicurio ``version``, downloading it if needed.

    A complete earlier download is reused without any network; an interrupted one has no
    marker and is done again.
    """
    version = version or default_apicurio_version()
    if not _VERSION_PATTERN.match(version):
        raise LocalRegistryError(f"not an Apicurio Registry version: {version!r}")
    app = apicurio_app_dir(version, cache_dir or resolve_cache_dir())
    root = app.parent
    stamp = f"apicurio-registry-app {version}\n"
    if _is_complete(root, stamp):
        return app
    root.mkdir(parents=True, exist_ok=True)
    with _exclusive_lock(root / ".lock"):
        if _is_complete(root, stamp):  # another process finished while we waited
            return app
        (root / _COMPLETE_MARKER).unlink(missing_ok=True)
        archive = root / "download.tar.gz"
        staging = root / "app.partial"
        shutil.rmtree(app, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)
        url = download_url(version)
        deadline = time.monotonic() + timeout
        sha1, sha256 = _download(url, archive, deadline)
        expected_sha1 = _read_text(f"{url}.sha1", deadline).split()[0].lower()
        if sha1 != expected_sha1:
            raise LocalRegistryError(
                f"{url}: SHA-1 {sha1} does not match the repository's {expected_sha1}"
            )
        pinned = PINNED_SHA256.get(version)
        if pinned is not None and sha256 != pinned:
            raise LocalRegistryError(f"{url}: SHA-256 {sha256} is not the pinned {pinned}")
        staging.mkdir()
        with tarfile.open(archive, "r:gz") as bundle:
            bundle.extractall(staging, filter="data")
        archive.unlink()
        runner_jar(staging)  # fails here, before the marker, on an unexpected layout
        staging.rename(app)
        _write_atomically(root / _COMPLETE_MARKER, stamp)
    return app


def runner_jar(app: Path) -> Path:
    """The jar to run: ``quarkus-run.jar`` (a fast-jar folder, 3.1+) or ``*-runner.jar``."""
    fast_jar = app / "quarkus-run.jar"
    if fast_jar.is_file():
        return fast_jar
    runners = sorted(app.glob("*-runner.jar"))
    if len(runners) == 1:
        return runners[0]
    raise LocalRegistryError(
        f"{app} holds neither quarkus-run.jar nor one *-runner.jar: not an Apicurio Registry "
        "application folder"
    )


def _is_complete(root: Path, stamp: str) -> bool:
    try:
        marker = (root / _COMPLETE_MARKER).read_text(encoding="utf-8")
    except OSError:
        return False
    return marker == stamp and (root / "app").is_dir()


def _download(url: str, target: Path, deadline: float) -> tuple[str, str]:
    """Stream ``url`` into ``target``; return its SHA-1 and SHA-256 (hex)."""
    sha1 = hashlib.sha1(usedforsecurity=False)
    sha256 = hashlib.sha256()
    try:
        with _open(url, 60) as response, target.open("wb") as out:
            while chunk := response.read(_CHUNK):
                if time.monotonic() > deadline:
                    raise LocalRegistryError(f"downloading {url} took too long")
                sha1.update(chunk)
                sha256.update(chunk)
                out.write(chunk)
    except (urllib.error.URLError, OSError) as exc:
        raise LocalRegistryError(
            f"downloading {url} failed ({exc}); is the version published on Maven Central?"
        ) from exc
    return sha1.hexdigest(), sha256.hexdigest()


def _open(url: str, timeout: float) -> Any:
    """``urlopen`` for http(s) URLs only (the repository's comes from the environment)."""
    if not url.startswith(("https://", "http://")):
        raise LocalRegistryError(f"not an http(s) URL: {url}")
    return urllib.request.urlopen(url, timeout=timeout)  # noqa: S310 (scheme checked above)


def _read_text(url: str, deadline: float) -> str:
    try:
        timeout = max(1.0, deadline - time.monotonic())
        with _open(url, timeout) as response:
            return str(response.read(4096).decode("ascii", errors="replace"))
    except (urllib.error.URLError, OSError) as exc:
        raise LocalRegistryError(f"downloading {url} failed ({exc})") from exc


# --- the server -----------------------------------------------------------------------------


class LocalRegistry(LocalServer):
    """One Apicurio Registry on 127.0.0.1, in memory: it starts empty, a restart included.

    ``port=0`` picks a free port at the first start (the management port, which serves
    ``/health``, too). ``url`` is the Confluent-compatible API's base URL, what a client's
    ``schema.registry.url`` (and the service's ``PA_SCHEMA_REGISTRY__URL``) takes.
    """

    server_name = "Apicurio Registry"
    error = LocalRegistryError
    log_name = "registry.log"

    def __init__(
        self,
        port: int = 0,
        *,
        version: str | None = None,
        cache_dir: Path | None = None,
        java: str | None = None,
        heap_opts: Sequence[str] = HEAP_OPTS,
        start_timeout: float = START_TIMEOUT_S,
        stop_timeout: float = STOP_TIMEOUT_S,
    ) -> None:
        super().__init__(port, start_timeout=start_timeout, stop_timeout=stop_timeout)
        self._version = version or default_apicurio_version()
        self._cache_dir = cache_dir
        self._java = java
        self._heap_opts = tuple(heap_opts)
        self._management_port: int | None = None
        self._jar: Path | None = None

    @property
    def version(self) -> str:
        """The Apicurio Registry release this server runs."""
        return self._version

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:<port>``: the registry's own APIs and web console."""
        return f"http://{HOST}:{self.port}"

    @property
    def url(self) -> str:
        """``http://127.0.0.1:<port>/apis/ccompat/v7``: the Confluent-compatible API."""
        return self.base_url + CCOMPAT_PATH

    @property
    def management_port(self) -> int:
        """The port of ``/health/ready`` and ``/metrics`` (Quarkus' management interface)."""
        if self._management_port is None:
            raise self.error("the management port is chosen when the server starts")
        return self._management_port

    # -- LocalServer's hooks --

    def _prepare(self, folder: Path, port: int, *, first: bool) -> None:
        if self._java is None:
            try:
                self._java = find_java()
            except LocalInfraError as exc:  # raised as the broker's error
                raise LocalRegistryError(str(exc)) from exc
        app = fetch_apicurio(self._version, cache_dir=self._cache_dir)
        self._jar = runner_jar(app)
        if self._management_port is None:
            self._management_port = free_port()
            while self._management_port == port:
                self._management_port = free_port()

    def _command(self, folder: Path, port: int) -> list[str]:
        assert self._java is not None
        assert self._jar is not None
        settings = {
            "quarkus.http.host": HOST,
            "quarkus.http.port": str(port),
            "quarkus.management.host": HOST,
            "quarkus.management.port": str(self.management_port),
            "quarkus.http.access-log.enabled": "false",
            "apicurio.rest.deletion.group.enabled": "true",
            "apicurio.rest.deletion.artifact.enabled": "true",
            "apicurio.rest.deletion.artifact-version.enabled": "true",
        }
        return [
            self._java,
            *self._heap_opts,
            *(f"-D{name}={value}" for name, value in settings.items()),
            "-jar",
            str(self._jar),
        ]

    def _is_ready(self, folder: Path, port: int) -> bool:
        try:
            with _open(f"{self.url}/subjects", 2) as response:
                return int(response.status) == 200
        except (urllib.error.URLError, OSError):
            return False

    def _after_start(self, *, first: bool) -> None:
        """Nothing to set up: the registry starts empty, with no compatibility rule."""


# --- command line ---------------------------------------------------------------------------


def _cmd_fetch(args: argparse.Namespace) -> int:
    started = time.monotonic()
    app = fetch_apicurio(args.version, cache_dir=args.cache_dir)
    took = time.monotonic() - started
    print(f"Apicurio Registry {args.version}: {runner_jar(app)} ({took:.1f} s)")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    server = LocalRegistry(args.port, version=args.version, cache_dir=args.cache_dir)
    server.start()
    print(f"Apicurio Registry {server.version} (pid {server.pid}) serves the Confluent API at")
    print(f"  {server.url}")
    print(f"log: {server.log_path}; Ctrl-C stops it and deletes its folder", flush=True)
    try:
        signal.sigwait({signal.SIGINT, signal.SIGTERM})
    finally:
        server.stop()
    return 0


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m pa_devkit.localinfra.registry",
        description="Apicurio Registry (Confluent-compatible API) from Maven Central, in memory.",
    )
    parser.add_argument(
        "--version",
        default=default_apicurio_version(),
        help=f"the Apicurio Registry release (default {APICURIO_VERSION}; "
        f"${APICURIO_VERSION_ENV} changes it)",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where downloads are kept (default: $POINTS_ADJUSTER_CACHE_DIR, else .cache/)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    fetch = commands.add_parser("fetch", help="download and unpack the release once")
    fetch.set_defaults(func=_cmd_fetch)
    run = commands.add_parser("run", help="run a registry in the foreground until Ctrl-C")
    run.add_argument("--port", type=int, default=0, help="HTTP port (default: a free one)")
    run.set_defaults(func=_cmd_run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; errors print one message and exit 1."""
    args = _build_parser().parse_args(argv)
    if args.command == "run":
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    try:
        return int(args.func(args))
    except LocalInfraError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
