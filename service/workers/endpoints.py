"""The parent's endpoint for all workers: /metrics (merged), /livez (= /healthz), /readyz.

Each request asks every worker's own endpoint (on loopback) at once, with a short timeout:
the answer is never older than the request. A worker that is not running, or whose endpoint
does not answer, is named in the reasons.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Protocol

import aiohttp
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge

from service.workers.merge import WorkerAnswer, combine, exposition

ASK_TIMEOUT_S = 3.0
"""How long the parent waits for one worker's endpoint."""


@dataclass(frozen=True)
class WorkerView:
    """One worker as the parent sees it now."""

    index: int
    url: str | None
    """Its endpoint, once it said where it listens (None before, or with metrics off)."""
    state: str
    """``running``, ``starting`` (not listening yet) or why it is not running."""


class Workers(Protocol):
    def views(self) -> Sequence[WorkerView]: ...


class WorkerMetrics:
    """The parent's own metrics."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        self.configured = Gauge(
            "points_adjuster_workers",
            "Worker processes this run is configured for (PA_WORKERS, run --workers).",
            registry=self.registry,
        )
        self.running = Gauge(
            "points_adjuster_workers_running",
            "Worker processes alive now.",
            registry=self.registry,
        )
        self.restarts = Counter(
            "points_adjuster_worker_restarts_total",
            "Workers started again after they died, by worker index.",
            ["worker"],
            registry=self.registry,
        )
        self.scrape_up = Gauge(
            "points_adjuster_worker_scrape_up",
            "1 when the worker's metrics were read at the last scrape, 0 when not.",
            ["worker"],
            registry=self.registry,
        )


async def _ask(
    session: aiohttp.ClientSession, view: WorkerView, path: str
) -> tuple[int, str] | str:
    """(status, body) of the worker's ``path``, or why it could not be asked."""
    if view.url is None:
        return view.state if view.state != "running" else "starting"
    try:
        async with session.get(view.url + path) as response:
            return response.status, await response.text()
    except (aiohttp.ClientError, TimeoutError) as exc:
        return f"its endpoint does not answer ({type(exc).__name__})"


def _answer(view: WorkerView, asked: tuple[int, str] | str) -> WorkerAnswer:
    if isinstance(asked, str):
        return WorkerAnswer(view.index, False, {"process": asked})
    status, body = asked
    if status == 200:
        return WorkerAnswer(view.index, True, {})
    try:
        reasons = json.loads(body).get("reasons") or {"endpoint": f"HTTP {status}"}
    except (ValueError, AttributeError):
        reasons = {"endpoint": f"HTTP {status}"}
    return WorkerAnswer(view.index, False, {str(k): str(v) for k, v in reasons.items()})


def build_parent_endpoints(workers: Workers, metrics: WorkerMetrics) -> web.Application:
    timeout = aiohttp.ClientTimeout(total=ASK_TIMEOUT_S)

    async def ask_all(path: str) -> list[tuple[WorkerView, tuple[int, str] | str]]:
        views = list(workers.views())
        async with aiohttp.ClientSession(timeout=timeout) as session:
            asked = await asyncio.gather(*(_ask(session, view, path) for view in views))
        return list(zip(views, asked, strict=True))

    async def scrape(_: web.Request) -> web.Response:
        texts: dict[str, str] = {}
        for view, asked in await ask_all("/metrics"):
            up = not isinstance(asked, str) and asked[0] == 200
            metrics.scrape_up.labels(worker=str(view.index)).set(1 if up else 0)
            if up and not isinstance(asked, str):
                texts[str(view.index)] = asked[1]
        body = exposition(texts, metrics.registry)
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})

    async def livez(_: web.Request) -> web.Response:
        answers = []
        for view, asked in await ask_all("/livez"):
            if view.url is None:  # starting, or waiting to be started again: the parent's
                answers.append(WorkerAnswer(view.index, True, {}))  # job (restarts.py)
            else:
                answers.append(_answer(view, asked))
        alive, reasons = combine(answers)
        if alive:
            return web.json_response({"status": "alive", "workers": len(answers)})
        return web.json_response({"status": "not alive", "reasons": reasons}, status=503)

    async def readyz(_: web.Request) -> web.Response:
        ready, reasons = combine(_answer(view, asked) for view, asked in await ask_all("/readyz"))
        if ready:
            return web.json_response({"status": "ready"})
        return web.json_response({"status": "not ready", "reasons": reasons}, status=503)

    app = web.Application()
    app.router.add_get("/metrics", scrape)
    app.router.add_get("/livez", livez)
    app.router.add_get("/healthz", livez)
    app.router.add_get("/readyz", readyz)
    return app


@asynccontextmanager
async def serve_parent_endpoints(
    workers: Workers, metrics: WorkerMetrics, host: str, port: int
) -> AsyncIterator[str]:
    """Serve the parent's endpoint; yields the base URL actually bound."""
    runner = web.AppRunner(build_parent_endpoints(workers, metrics), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        server = site._server
        sockets = getattr(server, "sockets", None) or []
        bound = sockets[0].getsockname()[1] if sockets else port
        yield f"http://{host}:{bound}"
    finally:
        await runner.cleanup()
