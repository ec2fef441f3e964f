"""The sandbox's admin routes: the tests' oracle and remote control. NOT part of PAS.

They are never prefixed, never pass the gateway check (no signature needed) and never
receive injected faults::

    GET    /_sandbox/ledger    applied adjustments, balances, request and fault counts
    POST   /_sandbox/reset     forget every adjustment and count
    GET    /_sandbox/health    liveness
    GET    /_sandbox/faults    the fault configuration in force (FaultConfig JSON)
    PUT    /_sandbox/faults    replace it; 400 INVALID_FAULT_CONFIG when invalid
    DELETE /_sandbox/faults    inject nothing from now on
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import structlog
from aiohttp import web

from pa_devkit.sandbox.codec import json_response
from pa_devkit.sandbox.envelope import ApiError, ReasonCode
from pa_devkit.sandbox.faults import FaultConfig, FaultConfigError
from pa_devkit.sandbox.injector import FaultInjector
from pa_devkit.sandbox.ledger import Ledger

ADMIN_PREFIX = "/_sandbox"

log = structlog.get_logger("pa_devkit.sandbox")


@dataclass(frozen=True, slots=True)
class AdminRoutes:
    """Handlers over the sandbox's state: the ledger, the answer counts and the injector."""

    ledger: Ledger
    adjust_requests: Counter[int]
    """``POST points-adjustments`` answers by status (dropped connections are not answers)."""
    injector: FaultInjector

    def register(self, router: web.UrlDispatcher) -> None:
        """Add the admin routes under ``/_sandbox``."""
        router.add_get(f"{ADMIN_PREFIX}/ledger", self.ledger_dump, allow_head=False)
        router.add_post(f"{ADMIN_PREFIX}/reset", self.reset)
        router.add_get(f"{ADMIN_PREFIX}/health", self.health, allow_head=False)
        router.add_get(f"{ADMIN_PREFIX}/faults", self.get_faults, allow_head=False)
        router.add_put(f"{ADMIN_PREFIX}/faults", self.put_faults)
        router.add_delete(f"{ADMIN_PREFIX}/faults", self.delete_faults)

    async def ledger_dump(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/ledger``: everything applied, for tests to assert on.

        ``{"adjustments": [... with bankAccountNumber and correlationId ...], "count": n,
        "accounts": k, "balances": {account: n}, "requests": {"total": t, "byStatus":
        {"200": n, ...}}, "faults": {"apply_then_drop": n, "error_503": n, "hang": n,
        "rate_limited": n, "reset": n}}``. ``requests`` counts the answers to ``POST
        points-adjustments`` by status; connections dropped without an answer appear only
        under ``faults`` (``reset``, ``apply_then_drop``).
        """
        return json_response(
            {
                "adjustments": [entry.to_admin_json() for entry in self.ledger.entries()],
                "count": len(self.ledger),
                "accounts": len(self.ledger.balances()),
                "balances": self.ledger.balances(),
                "requests": {
                    "total": sum(self.adjust_requests.values()),
                    "byStatus": {str(s): n for s, n in sorted(self.adjust_requests.items())},
                },
                "faults": self.injector.counts(),
            }
        )

    async def reset(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/reset``: empty the ledger, the request and the fault counts.

        Answers ``{"cleared": n}``, the number of adjustments dropped. The fault
        configuration stays.
        """
        cleared = self.ledger.reset()
        self.adjust_requests.clear()
        self.injector.clear_counts()
        log.info("sandbox.reset", cleared=cleared)
        return json_response({"cleared": cleared})

    async def health(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/health``: ``{"status": "ok", "adjustments": n}``."""
        return json_response({"status": "ok", "adjustments": len(self.ledger)})

    async def get_faults(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/faults``: the configuration in force, as ``FaultConfig.to_dict``."""
        return json_response(self.injector.config.to_dict())

    async def put_faults(self, request: web.Request) -> web.Response:
        """``PUT /_sandbox/faults``: replace the configuration; answers the new one."""
        try:
            config = FaultConfig.from_json(await request.read())
        except FaultConfigError as exc:
            raise ApiError.pas(400, ReasonCode.INVALID_FAULT_CONFIG, str(exc)) from exc
        self.injector.replace(config)
        log.info("sandbox.faults.replaced", faults=config.to_dict())
        return json_response(config.to_dict())

    async def delete_faults(self, request: web.Request) -> web.Response:
        """``DELETE /_sandbox/faults``: inject nothing from now on; answers the empty config."""
        config = FaultConfig()
        self.injector.replace(config)
        log.info("sandbox.faults.cleared")
        return json_response(config.to_dict())
