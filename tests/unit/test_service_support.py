"""tests/service_support.py without a real server: which source is used, what is stopped, and
the skip off CI that becomes a failure under ``CI=true``."""

from __future__ import annotations

import pytest
from _pytest.outcomes import Failed, Skipped

from pa_devkit.localinfra.errors import LocalInfraError, LocalKafkaError
from tests.service_support import Container, ExternalService

SERVICE = ExternalService(
    "Kafka broker", "PA_TEST_FAKE_SERVICE", env_example="=host:port", errors=LocalKafkaError
)
HEADER = "no Kafka broker for the tests (set PA_TEST_FAKE_SERVICE=host:port to use a running one):"


NO_CONTAINER: Container[str] = Container(make=object, under_test=str)
"""Never made here: the Docker engine is absent (the autouse fixture below)."""


class FakeServer:
    """Records start and stop; ``start`` raises ``failure`` when one is given."""

    def __init__(self, failure: Exception | None = None) -> None:
        self.failure = failure
        self.calls: list[str] = []

    def start(self) -> None:
        self.calls.append("start")
        if self.failure is not None:
            raise self.failure

    def stop(self) -> None:
        self.calls.append("stop")


@pytest.fixture(autouse=True)
def _no_docker(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PA_TEST_FAKE_SERVICE", raising=False)
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setattr("tests.service_support.docker_unavailable_reason", lambda: "no engine")


def first_value(
    service: ExternalService, server: FakeServer, container: Container[str] | None = None
) -> str:
    found = service.find_or_start(
        from_env=lambda value: f"env {value}",
        local=lambda: server,
        from_local=lambda started: f"local {started.calls}",
        local_label="local broker",
        container=container,
    )
    value = next(found)
    assert next(found, None) is None  # the end of the session: what was started is stopped
    return value


def test_a_server_named_by_the_variable_is_used_and_nothing_is_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The stripped value of the variable is the session's server; no local one starts."""
    monkeypatch.setenv("PA_TEST_FAKE_SERVICE", " host:9092 ")
    server = FakeServer()
    assert first_value(SERVICE, server) == "env host:9092"
    assert server.calls == []


def test_else_a_local_server_is_started_and_stopped_at_the_end() -> None:
    """Without the variable a local server serves the session and is stopped after it."""
    server = FakeServer()
    assert first_value(SERVICE, server) == "local ['start']"
    assert server.calls == ["start", "stop"]


@pytest.mark.parametrize(("ci", "outcome"), [("", Skipped), ("true", Failed)])
def test_a_server_that_cannot_start_skips_off_ci_and_fails_under_ci(
    monkeypatch: pytest.MonkeyPatch, ci: str, outcome: type[BaseException]
) -> None:
    """Every reason is named: the container's and the local server's."""
    monkeypatch.setenv("CI", ci)
    with pytest.raises(outcome) as raised:
        first_value(SERVICE, FakeServer(LocalKafkaError("no jars")), NO_CONTAINER)
    assert str(raised.value) == "\n- ".join(
        [HEADER, "testcontainers: no engine", "local broker: no jars"]
    )


def test_the_install_hint_comes_before_the_variable() -> None:
    """A store's message says what installs one, then which variable names a running one."""
    service = ExternalService("Redis server", "PA_TEST_X", install_hint="make x installs one")
    with (
        pytest.raises(Skipped) as raised,
        service.started(FakeServer(LocalInfraError("gone")), "l"),
    ):
        pass
    assert str(raised.value) == (
        "no Redis server for the tests (make x installs one; set PA_TEST_X to use a running"
        " one):\n- l: gone"
    )


def test_an_error_other_than_the_services_own_is_not_turned_into_a_skip() -> None:
    """Only the service's own start error means "unavailable"; another one is a bug, raised."""
    with (
        pytest.raises(LocalInfraError, match="other"),
        SERVICE.started(FakeServer(LocalInfraError("other")), "local broker"),
    ):
        pass
