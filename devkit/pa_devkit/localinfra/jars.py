"""The broker's jars: where they are cached, and fetching them once from Maven Central.

Maven resolves the broker's runtime classpath once into a cache folder; a later run finds the
complete download and needs no network. Only the standard library is used, so the jars can be
fetched before the service's own dependencies are installed.

Layout::

    <cache>/kafka/<version>/pom.xml       copy of resources/kafka-pom.xml
    <cache>/kafka/<version>/libs/*.jar    the broker's runtime classpath
    <cache>/kafka/<version>/.complete     written last: its presence means "no network needed"
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib.resources
import os
import re
import shutil
import subprocess
from collections.abc import Iterator, Mapping
from pathlib import Path

from pa_devkit.localinfra.errors import LocalKafkaError

KAFKA_VERSION = "4.1.2"
KAFKA_VERSION_ENV = "POINTS_ADJUSTER_KAFKA_VERSION"
CACHE_DIR_ENV = "POINTS_ADJUSTER_CACHE_DIR"
FETCH_TIMEOUT_S = 900.0

_RESOURCE_PACKAGE = "pa_devkit.localinfra"
_POM_RESOURCE = "kafka-pom.xml"
_COMPLETE_MARKER = ".complete"
_ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")


# --- locations -----------------------------------------------------------------------------


def resolve_cache_dir(
    environ: Mapping[str, str] | None = None,
    *,
    package_dir: Path | None = None,
    home: Path | None = None,
) -> Path:
    """Where downloaded jars live: $POINTS_ADJUSTER_CACHE_DIR, else the checkout's .cache.

    ``package_dir`` is the ``pa_devkit/`` folder; when the folder two levels up (the
    repository, beside ``devkit/``) holds pyproject.toml the code runs from a checkout and the
    git-ignored ``<repo>/.cache`` is used, otherwise ``~/.cache/points-adjuster``.
    """
    env = os.environ if environ is None else environ
    configured = env.get(CACHE_DIR_ENV, "").strip()
    if configured:
        return Path(configured).expanduser()
    devkit_dir = package_dir if package_dir is not None else Path(__file__).resolve().parent.parent
    repo_root = devkit_dir.parent.parent
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
