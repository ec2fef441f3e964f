"""The operational HTTP endpoint: /metrics, /livez (the event loop answers; /healthz is the
same, kept for the probes and users that ask it) and /readyz (consuming, with the reasons
when not). The listener binds to ``PA_METRICS__HOST`` (loopback unless told otherwise)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service.health import Health
from service.metrics import Metrics


def build_endpoints(metrics: Metrics, health: Health) -> web.Application:
    async def scrape(_: web.Request) -> web.Response:
        body = generate_latest(metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(_: web.Request) -> web.Response:
        # Answering at all is the proof: the event loop runs this handler.
        return web.json_response({"status": "alive"})

    async def readyz(_: web.Request) -> web.Response:
        if health.ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reasons": health.problems()}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/livez", livez)
    app.router.add_get("/healthz", livez)  # the older name, kept as an alias
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def serve_endpoints(
    metrics: Metrics, health: Health, host: str, port: int
) -> AsyncIterator[str]:
    """Serve the endpoints; yields the base URL actually bound."""
    runner = web.AppRunner(build_endpoints(metrics, health), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server  # the bound port, when port=0 asked for any
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
