"""Shared test configuration: real-broker, store-server and schema-registry fixtures
(tests/kafka_support.py, tests/store_support.py, tests/registry_support.py) and dev keys."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path

import pytest
import structlog

from pa_devkit.keys import DEV_P12_PASSWORD, DevKeySet, generate_dev_keyset

pytest_plugins = ["tests.kafka_support", "tests.store_support", "tests.registry_support"]

CONSUMER_KEY = "points-adjuster-test"
CHAOS_SMALL = 600
CHAOS_FULL = 5000


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--chaos-full",
        action="store_true",
        default=False,
        help=f"run the chaos suite at full size ({CHAOS_FULL} commands, not {CHAOS_SMALL})",
    )


@pytest.fixture
def chaos_size(request: pytest.FixtureRequest) -> int:
    """How many commands the chaos suite sends."""
    return CHAOS_FULL if request.config.getoption("--chaos-full") else CHAOS_SMALL


@pytest.fixture(autouse=True)
def _no_leftover_service_processes() -> Iterator[None]:
    """Whatever a test does, no service process it started outlives it."""
    yield
    from tests.e2e.harness import kill_leftovers

    kill_leftovers()


@pytest.fixture(scope="session")
def dev_keyset(tmp_path_factory: pytest.TempPathFactory) -> DevKeySet:
    """One development key set for the session (RSA key generation is slow-ish)."""
    return generate_dev_keyset(tmp_path_factory.mktemp("keys"))


def pas_key_env(keyset: DevKeySet) -> dict[str, str]:
    """The PA_PAS__* variables that point the service at a dev key set."""
    return {
        "PA_PAS__CONSUMER_KEY": CONSUMER_KEY,
        "PA_PAS__SIGNING_KEY_PATH": str(keyset.client_signing_p12),
        "PA_PAS__SIGNING_KEY_PASSWORD": DEV_P12_PASSWORD,
        "PA_PAS__ENCRYPTION_CERTIFICATE_PATH": str(keyset.pas_encryption_certificate),
        "PA_PAS__DECRYPTION_KEY_PATH": str(keyset.client_decryption_key),
    }


@pytest.fixture
def pas_keys_in_env(dev_keyset: DevKeySet, monkeypatch: pytest.MonkeyPatch) -> DevKeySet:
    """The dev key set, with the service's PA_PAS__* key settings pointing at it."""
    for name, value in pas_key_env(dev_keyset).items():
        monkeypatch.setenv(name, value)
    return dev_keyset


@pytest.fixture
def cli_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    """For tests that call the command line: no PA_* variable of the caller's shell and no
    .env file reach the settings, and the logging that ``main`` configures is undone after."""
    for name in list(os.environ):
        if name.startswith("PA_"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    levels = {name: logging.getLogger(name).level for name in ("aiokafka", "kafka", "httpx")}
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)
    structlog.reset_defaults()
