"""The product as a platform team installs it: the wheel built from this repository, installed
into a fresh virtual environment outside the repository, run from an empty folder against the
real broker and the PAS sandbox. The same steps the container image takes."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
import zipfile
from pathlib import Path

import pytest

from pa_devkit.keys import DevKeySet
from pa_devkit.localinfra.broker_config import free_port
from pa_devkit.sandbox.app import run_sandbox
from service.codec.avro import AvroCodec
from tests.conftest import pas_key_env
from tests.e2e.harness import (
    STARTED_PIDS,
    Topology,
    originals_per_key,
    secure_sandbox,
    wait_for_originals,
)

pytestmark = [pytest.mark.kafka, pytest.mark.e2e, pytest.mark.timeout(600)]

REPO = Path(__file__).resolve().parents[2]
SCHEMAS = sorted(path.name for path in (REPO / "schemas").glob("*.avsc"))
COMMANDS = 12


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


def install(wheel: Path, venv: Path) -> Path:
    """A fresh virtual environment holding the wheel and its dependencies; its bin folder."""
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "--disable-pip-version-check", str(wheel)],
        check=True,
        timeout=480,
    )
    return venv / "bin"


def run_tool(
    tool: str, *args: str, env: dict[str, str], cwd: Path
) -> subprocess.CompletedProcess[bytes]:
    """Run the installed command line once (blocking; call it in a thread)."""
    return subprocess.run(
        [tool, *args], env=env, cwd=cwd, capture_output=True, timeout=120, check=False
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


def test_the_wheel_carries_the_schemas_and_no_devkit(tmp_path: Path) -> None:
    """The built wheel holds every .avsc of schemas/ as package data, the product package,
    and no dev-kit, test or benchmark module."""
    wheel = build_wheel(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    shipped = sorted(Path(n).name for n in names if n.startswith("service/schemas/"))
    assert shipped == SCHEMAS
    assert "service/cli.py" in names
    assert not [n for n in names if n.startswith(("pa_devkit/", "tests/", "benchmarks/"))]


async def test_the_installed_wheel_runs_the_service_end_to_end(
    kafka_bootstrap: str, tmp_path: Path, dev_keyset: DevKeySet
) -> None:
    """Installed from its wheel into a fresh environment and started in an empty folder,
    the service creates its topics, takes generated commands and publishes one completed
    outcome for each, every adjustment applied once by the sandbox."""
    dist, venv, workdir = tmp_path / "dist", tmp_path / "venv", tmp_path / "empty"
    for folder in (dist, workdir):
        folder.mkdir()
    bin_dir = await asyncio.to_thread(install, await asyncio.to_thread(build_wheel, dist), venv)
    topology = Topology(kafka_bootstrap)
    k = topology.kafka
    metrics_port = free_port()
    async with run_sandbox(secure_sandbox(dev_keyset, latency_ms=5)) as sandbox:
        env = clean_env(
            PA_KAFKA__BOOTSTRAP_SERVERS=k.bootstrap_servers,
            PA_KAFKA__GROUP_ID=k.group_id,
            PA_KAFKA__COMMAND_TOPIC=k.command_topic,
            PA_KAFKA__COMPLETED_TOPIC=k.completed_topic,
            PA_KAFKA__FAILED_TOPIC=k.failed_topic,
            PA_KAFKA__DEAD_LETTER_TOPIC=k.dead_letter_topic,
            PA_KAFKA__REVIEW_TOPIC=k.review_topic,
            PA_PAS__BASE_URL=sandbox.base_url,
            PA_METRICS__PORT=str(metrics_port),
            PA_LOG__LEVEL="INFO",
            **pas_key_env(dev_keyset),
        )
        tool = str(bin_dir / "points-adjuster")
        topics = await asyncio.to_thread(
            run_tool, tool, "topics", "--partitions", "2", env=env, cwd=workdir
        )
        assert topics.returncode == 0, topics.stderr.decode()
        log_path = tmp_path / "service.log"
        with log_path.open("wb") as log:
            service = await asyncio.create_subprocess_exec(
                tool, "run", env=env, cwd=workdir, stdout=log, stderr=log
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
        finally:
            if service.returncode is None:
                service.terminate()
            code = await asyncio.wait_for(service.wait(), 60)
            STARTED_PIDS.discard(service.pid)
        assert code == 0, log_path.read_text()[-3000:]
        ledger = sandbox.ledger.entries()
    per_key = originals_per_key(outcomes)
    assert len(per_key) == COMMANDS, log_path.read_text()[-3000:]
    assert {event["duplicate"] for event in outcomes.originals()} == {False}
    assert len(outcomes.completed) == COMMANDS
    assert len(ledger) == COMMANDS
    assert list(workdir.iterdir()) in ([], [workdir / "var"])  # only the store, if anything
    print(
        f"\nwheel: {COMMANDS} commands completed {time.monotonic() - started:.1f} s after sending"
    )
