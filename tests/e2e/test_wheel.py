"""The product as a platform team installs it: the wheel built from this repository, installed
into a fresh virtual environment outside the repository, run from an empty folder against the
real broker and the PAS sandbox. The same steps the container image takes (Dockerfile): the
product's lock first, every file checked against its hash, then the wheel alone; the
environment belongs to root and the service runs as another, unprivileged user who owns only
its working folder and its copy of the keys. tests/deploy/test_dockerfile.py holds the
Dockerfile to the choices made here (SERVICE_UID, SERVICE_GID, IMAGE_ENV)."""

from __future__ import annotations

import asyncio
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from tests.conftest import CONSUMER_KEY
from tests.e2e.harness import (
    STARTED_PIDS,
    Topology,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = sorted(
    path.relative_to(REPO / "schemas").as_posix() for path in (REPO / "schemas").rglob("*.avsc")
)
"""The current schemas and every released version (``released/``)."""
COMMANDS = 12

SERVICE_UID = 10001
SERVICE_GID = 10001
"""The numeric user and group the service runs as, here and in the image (USER)."""

PRODUCT_LOCK = REPO / "requirements" / "product.lock"
"""The product's dependencies, its store extras' included, with their hashes: installed before
the wheel, here and in the image (docs/dependencies.md)."""

LOCK_OPTIONS = ("--require-hashes", "--only-binary=:all:")
"""How the lock is installed, here and in the image: every file checked against the lock's
sha256, none built from source."""

IMAGE_ENV = {"PYTHONDONTWRITEBYTECODE": "1", "PYTHONUNBUFFERED": "1"}
"""The interpreter's environment the image sets (ENV), set here too."""

PASSWORD_FILE = "signing-key.password"
"""The file beside the keys holding the PKCS#12 password (PA_PAS__SIGNING_KEY_PASSWORD_FILE),
as the compose stack's key job writes it."""


def build_wheel(out: Path) -> Path:
    """The product's wheel, built from the checkout (without the dev kit)."""
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
    subprocess.run(
        [*pip, "-w", str(out), str(REPO)],
        check=True,
        timeout=300,
        cwd=out,
    )
    (wheel,) = out.glob("points_adjuster-*.whl")
    return wheel


def runnable_by_others(path: Path) -> bool:
    """Whether a user without rights of its own can run ``path``: the file and every folder
    above it open to others."""
    resolved = path.resolve()
    if not resolved.is_file():
        return False
    return all(entry.stat().st_mode & stat.S_IXOTH for entry in (resolved, *resolved.parents))


def base_interpreter() -> Path | None:
    """A Python of this version that the service user can run, as the image's
    /usr/local/bin/python: this interpreter's own when others may run it (a Python under
    root's home may not be), else one on the system's paths; None without one."""
    name = f"python{sys.version_info.major}.{sys.version_info.minor}"
    candidates = [Path(sys.base_prefix, "bin", name)]
    candidates += [Path(folder, name) for folder in ("/usr/local/bin", "/usr/bin")]
    return next((path for path in candidates if runnable_by_others(path)), None)


def pip(venv: Path, *args: str) -> str:
    """Run the environment's pip (blocking); its output, AssertionError with it on failure."""
    done = subprocess.run(
        [str(venv / "bin" / "pip"), *args],
        capture_output=True,
        text=True,
        timeout=480,
        check=False,
    )
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout}{done.stderr}"
    return done.stdout


def install_lock(venv: Path) -> None:
    """The product's lock into ``venv`` as the image installs it (LOCK_OPTIONS)."""
    pip(
        venv, "install", "-q", "--disable-pip-version-check", *LOCK_OPTIONS, "-r", str(PRODUCT_LOCK)
    )


def install(wheel: Path, venv: Path, python: Path) -> Path:
    """A fresh virtual environment of ``python`` holding the product's lock and then the wheel
    alone (--no-deps), as the image installs them, pip check finding nothing amiss; its bin
    folder."""
    subprocess.run([str(python), "-m", "venv", str(venv)], check=True, timeout=120)
    install_lock(venv)
    pip(venv, "install", "-q", "--disable-pip-version-check", "--no-deps", str(wheel))
    pip(venv, "check")
    return venv / "bin"


def run_tool(
    tool: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed command line once as the service's user (blocking; call it in a
    thread)."""
    return subprocess.run(
        [tool, *args],
        env=env,
        cwd=cwd,
        capture_output=True,
        timeout=120,
        check=False,
        user=SERVICE_UID,
        group=SERVICE_GID,
        extra_groups=[],
    )


def clean_env(**settings: str) -> dict[str, str]:
    """The environment of a process that knows nothing of this checkout."""
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("PA_", "PYTHON", "VIRTUAL_ENV"))
    }
    env.update(settings)
    return env


@dataclass(frozen=True)
class Layout:
    """Where the installed service lives: root's folders and the service user's."""

    root: Path
    dist: Path
    venv: Path
    workdir: Path
    keys: Path


@pytest.fixture
def layout() -> Iterator[Layout]:
    """Folders outside pytest's private temporary tree (which only root may enter): the
    distribution and environment folders root's, the working folder and the keys folder the
    service user's, both empty."""
    reason = None
    if os.geteuid() != 0:
        reason = "running the service as another user needs root"
    elif base_interpreter() is None:
        reason = "no Python of this version that an unprivileged user may run"
    if reason is not None:
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)  # CI runs as root on a machine that has one
        pytest.skip(reason)
    root = Path(tempfile.mkdtemp(prefix="pa-wheel-"))
    try:
        root.chmod(0o755)
        found = Layout(root, root / "dist", root / "venv", root / "app", root / "keys")
        found.dist.mkdir()
        for folder in (found.workdir, found.keys):
            folder.mkdir(mode=0o700)
            os.chown(folder, SERVICE_UID, SERVICE_GID)
        yield found
    finally:
        shutil.rmtree(root)


def copy_keys(keyset: DevKeySet, folder: Path) -> DevKeySet:
    """The files the service reads, copied into ``folder`` for the service user (the private
    ones mode 0600, as generated), with the PKCS#12 password in a file beside them."""
    copied = DevKeySet.in_directory(folder)
    for source, target in (
        (keyset.client_signing_p12, copied.client_signing_p12),
        (keyset.client_decryption_key, copied.client_decryption_key),
        (keyset.pas_encryption_certificate, copied.pas_encryption_certificate),
    ):
        shutil.copyfile(source, target)
        target.chmod(source.stat().st_mode & 0o777)
        os.chown(target, SERVICE_UID, SERVICE_GID)
    password = folder / PASSWORD_FILE
    password.write_text(DEV_P12_PASSWORD + "\n", encoding="utf-8")
    password.chmod(0o600)
    os.chown(password, SERVICE_UID, SERVICE_GID)
    return copied


def tree_state(root: Path) -> dict[str, tuple[int, int, int, int]]:
    """Every entry under ``root`` (symbolic links not followed) with its owner, mode, size and
    modification time."""
    state: dict[str, tuple[int, int, int, int]] = {}
    for folder, names, files in os.walk(root):
        for name in (*names, *files):
            path = Path(folder, name)
            info = path.lstat()
            state[str(path.relative_to(root))] = (
                info.st_uid,
                info.st_mode,
                info.st_size,
                info.st_mtime_ns,
            )
    return state


def process_ids(pid: int) -> dict[str, list[int]]:
    """The Uid, Gid and Groups lines of a running process, from /proc."""
    ids: dict[str, list[int]] = {}
    for line in Path(f"/proc/{pid}/status").read_text(encoding="ascii").splitlines():
        key, _, value = line.partition(":")
        if key in {"Uid", "Gid", "Groups"}:
            ids[key] = [int(number) for number in value.split()]
    return ids


def test_the_wheel_carries_the_schemas_and_no_devkit(tmp_path: Path) -> None:
    """The built wheel holds every .avsc of schemas/ (released/ included) as package data,
    the product package, and no dev-kit, test or benchmark module."""
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(
        n.removeprefix("service/schemas/") for n in names if n.startswith("service/schemas/")
    )
    assert shipped == SCHEMAS
    assert "service/cli.py" in names
    assert not [n for n in names if n.startswith(("pa_devkit/", "tests/", "benchmarks/"))]


async def test_the_installed_wheel_runs_the_service_end_to_end(
    kafka_bootstrap: str, layout: Layout, dev_keyset: DevKeySet
) -> None:
    """Installed from its wheel into a fresh, root-owned environment and started as an
    unprivileged user in an empty folder of that user's, with its keys copied for it, the
    service creates its topics, takes generated commands and publishes one completed outcome
    for each, every adjustment applied once by the sandbox, and leaves its environment exactly
    as installed."""
    python = base_interpreter()
    assert python is not None  # the layout fixture skips otherwise
    wheel = await asyncio.to_thread(build_wheel, layout.dist)
    bin_dir = await asyncio.to_thread(install, wheel, layout.venv, python)
    installed = tree_state(layout.venv)
    assert {owner for owner, *_ in installed.values()} == {0}
    writable = [
        name
        for name, (_, mode, *_) in installed.items()
        if not stat.S_ISLNK(mode) and mode & (stat.S_IWGRP | stat.S_IWOTH)
    ]
    assert writable == []  # only root may write there (a link's own mode means nothing)
    keys = copy_keys(dev_keyset, layout.keys)
    workdir = layout.workdir
    topology = Topology(kafka_bootstrap)
    k = topology.kafka
    metrics_port = free_port()
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        env = clean_env(
            HOME=str(workdir),
            **IMAGE_ENV,
            PA_KAFKA__BOOTSTRAP_SERVERS=k.bootstrap_servers,
            PA_KAFKA__GROUP_ID=k.group_id,
            PA_KAFKA__COMMAND_TOPIC=k.command_topic,
            PA_KAFKA__COMPLETED_TOPIC=k.completed_topic,
            PA_KAFKA__FAILED_TOPIC=k.failed_topic,
            PA_KAFKA__DEAD_LETTER_TOPIC=k.dead_letter_topic,
            PA_KAFKA__REVIEW_TOPIC=k.review_topic,
            PA_PAS__BASE_URL=sandbox.base_url,
            PA_PAS__ALLOW_PLAIN_HTTP="true",  # the sandbox over http (tests/e2e/test_tls.py: https)
            PA_METRICS__PORT=str(metrics_port),
            PA_LOG__LEVEL="INFO",
            PA_PAS__CONSUMER_KEY=CONSUMER_KEY,
            PA_PAS__SIGNING_KEY_PATH=str(keys.client_signing_p12),
            PA_PAS__SIGNING_KEY_PASSWORD_FILE=str(layout.keys / PASSWORD_FILE),
            PA_PAS__ENCRYPTION_CERTIFICATE_PATH=str(keys.pas_encryption_certificate),
            PA_PAS__DECRYPTION_KEY_PATH=str(keys.client_decryption_key),
        )
        tool = str(bin_dir / "points-adjuster")
        topics = await asyncio.to_thread(
            run_tool, tool, "topics", "--partitions", "2", env=env, cwd=workdir
        )
        assert topics.returncode == 0, topics.stderr.decode()
        log_path = layout.root / "service.log"
        with log_path.open("wb") as log:
            service = await asyncio.create_subprocess_exec(
                tool,
                "run",
                env=env,
                cwd=workdir,
                stdout=log,
                stderr=log,
                user=SERVICE_UID,
                group=SERVICE_GID,
                extra_groups=[],
            )
        STARTED_PIDS.add(service.pid)
        try:
            sent = await asyncio.to_thread(
                run_tool,
                tool,
                *("send", "--count", str(COMMANDS), "--accounts", "5", "--seed", "7"),
                env=env,
                cwd=workdir,
            )
            assert sent.returncode == 0, sent.stderr.decode()
            started = time.monotonic()
            outcomes = await wait_for_originals(k, AvroCodec.from_directory(), COMMANDS, 90)
            assert service.returncode is None, log_path.read_text()
            ids = process_ids(service.pid)
        finally:
            if service.returncode is None:
                service.terminate()
            code = await asyncio.wait_for(service.wait(), 60)
            STARTED_PIDS.discard(service.pid)
        assert code == 0, log_path.read_text()[-3000:]
        ledger = sandbox.ledger.entries()
    assert ids == {"Uid": [SERVICE_UID] * 4, "Gid": [SERVICE_GID] * 4, "Groups": []}
    per_key = originals_per_key(outcomes)
    assert len(per_key) == COMMANDS, log_path.read_text()[-3000:]
    assert {event["duplicate"] for event in outcomes.originals()} == {False}
    assert len(outcomes.completed) == COMMANDS
    assert len(ledger) == COMMANDS
    assert list(workdir.iterdir()) in ([], [workdir / "var"])  # only the store, if anything
    assert all(path.stat().st_uid == SERVICE_UID for path in workdir.rglob("*"))
    assert tree_state(layout.venv) == installed  # no file added, changed or removed
    print(
        f"\nwheel: {COMMANDS} commands completed {time.monotonic() - started:.1f} s after sending"
    )

    # Without its extra's driver (as a plain `pip install points-adjuster` leaves it), a shared
    # store is one clear line naming the extra to install; with the drivers back from the lock
    # (as the image has them), both stores import.
    await asyncio.to_thread(pip, layout.venv, "uninstall", "-q", "-y", "asyncpg", "redis")
    shared = clean_env(
        PA_IDEMPOTENCY__DSN="postgresql://pa@127.0.0.1:1/points",
        PA_KAFKA__BOOTSTRAP_SERVERS="127.0.0.1:1",
        PA_KAFKA__STARTUP_TIMEOUT_S="1",
    )
    checked = await asyncio.to_thread(run_tool, tool, "check", env=shared, cwd=workdir)
    assert b"install points-adjuster[postgres]" in checked.stdout, checked.stdout
    await asyncio.to_thread(install_lock, layout.venv)
    probe = "import asyncpg, redis.asyncio, service.idempotency.postgres"
    probe += ", service.idempotency.redis_store"
    imported = await asyncio.to_thread(
        subprocess.run, [str(layout.venv / "bin" / "python"), "-c", probe], check=False
    )
    assert imported.returncode == 0
