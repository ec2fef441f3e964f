"""The operational endpoint over a real socket: liveness, its older alias, readiness with
reasons, the scrape with the build labels, and the listener's host setting."""

from __future__ import annotations

import platform

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service import __version__
from service.endpoints import serve_endpoints
from service.health import Health
from service.metrics import Metrics
from service.settings import Settings


async def test_livez_and_its_alias_healthz_answer_alive_whatever_the_readiness() -> None:
    """/livez and /healthz answer 200 ``{"status": "alive"}`` while the service is not ready;
    /readyz answers 503 with the reasons, then 200 once started."""
    metrics = Metrics()
    health = Health(on_change=metrics.set_ready)
    async with (
        serve_endpoints(metrics, health, "127.0.0.1", 0) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        for path in ("/livez", "/healthz"):
            response = await client.get(path)
            assert (response.status_code, response.json()) == (200, {"status": "alive"})
        not_ready = await client.get("/readyz")
        assert not_ready.status_code == 503
        assert not_ready.json()["reasons"]["service"].startswith("starting")
        health.started()
        ready = await client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})


async def test_the_scrape_carries_the_build_labels() -> None:
    """/metrics names the service, its version and the Python and aiokafka it runs on."""
    metrics = Metrics()
    async with (
        serve_endpoints(metrics, Health(), "127.0.0.1", 0) as url,
        httpx.AsyncClient(base_url=url) as client,
    ):
        text = (await client.get("/metrics")).text
    (build,) = [
        family.samples[0].labels
        for family in text_string_to_metric_families(text)
        if family.name == "points_adjuster_build_info"
    ]
    assert build["service"] == "points-adjuster"
    assert build["version"] == __version__
    assert build["python"] == platform.python_version()
    assert build["aiokafka"].count(".") >= 1


def test_the_listener_host_is_a_setting_on_loopback_by_default(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """PA_METRICS__HOST chooses the listener's address; unset, it is 127.0.0.1."""
    monkeypatch.delenv("PA_METRICS__HOST", raising=False)
    assert Settings().metrics.host == "127.0.0.1"
    monkeypatch.setenv("PA_METRICS__HOST", "0.0.0.0")  # noqa: S104 - the setting under test
    assert Settings().metrics.host == "0.0.0.0"  # noqa: S104
