"""A real HTTP stand-in for Mastercard's Points Activity Service (PAS), on aiohttp.web.

PAS routes (``{prefix}`` is :attr:`SandboxConfig.path_prefix`, e.g. ``/loyalty``)::

    POST {prefix}/points-adjustments           apply one adjustment
    GET  {prefix}/points-adjustments-details   an account's adjustment history

Admin routes, the tests' oracle. They are NOT part of PAS, are never prefixed and skip
the gateway check::

    GET  /_sandbox/ledger    every applied adjustment, balances and request counts
    POST /_sandbox/reset     forget every adjustment and count
    GET  /_sandbox/health    liveness

``POST points-adjustments`` runs these steps; the first that fails answers:

    ==  ========================================  ======  ================================
    #   step                                      status  ReasonCode (Source)
    ==  ========================================  ======  ================================
    1   read the body, at most ``max_body_bytes`` 413     PAYLOAD_TOO_LARGE (PAS)
    2   gateway check (:class:`GatewayAuth`)      401...  as the hook decides (Gateway)
    3   decode the body (:class:`RequestCodec`)   400     INVALID_JSON (PAS)
    4   validate the five fields                  400     one entry per problem (PAS)
    5   account in ``unknown_accounts``           404     ACCOUNT_NOT_FOUND (PAS)
    6   wait ``latency_ms``, apply to the ledger  200     ``{"pointsAdjusted": n}``
    ==  ========================================  ======  ================================

Steps 2 and 3 are the seams for the OAuth 1.0a check and JWE decryption: by default the
gateway lets everything through and the codec speaks plain JSON. The success body goes
back through the encoder the codec chose for that request.

Other answers: an unknown path is 404 ``NOT_FOUND`` and a wrong method 405
``METHOD_NOT_ALLOWED`` with an ``Allow`` header (both Source ``Gateway``, which routes the
call); an unexpected failure is 500 ``INTERNAL_ERROR``. Every response, errors included,
is ``application/json`` and carries ``X-MC-Correlation-ID``: the caller's
``Correlation-Id`` or a fresh UUID.

Step 6 applies the adjustment even when the caller has stopped waiting (aiohttp does not
cancel a handler when its client disconnects): a client timeout during the latency leaves
an applied adjustment behind, the "unknown outcome" the client has to reconcile.

Logs name events and never hold a full account number (last four digits only), a query
string or a request body; aiohttp's access log, which would print query strings, is off.
"""

from __future__ import annotations

import asyncio
import json
import signal
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Any, Protocol

import structlog
from aiohttp import web

from service.sandbox.config import SandboxConfig
from service.sandbox.envelope import ApiError, ErrorItem, ReasonCode
from service.sandbox.ledger import Clock, Ledger, utc_now
from service.sandbox.validation import (
    BANK_ACCOUNT_NUMBER,
    FieldError,
    InvalidAdjustmentError,
    ValidationRules,
    is_valid_account_number,
    parse_adjustment,
)

log = structlog.get_logger("service.sandbox")

ADJUSTMENTS_PATH = "/points-adjustments"
HISTORY_PATH = "/points-adjustments-details"
ADMIN_PREFIX = "/_sandbox"
CORRELATION_REQUEST_HEADER = "Correlation-Id"
CORRELATION_RESPONSE_HEADER = "X-MC-Correlation-ID"
USER_ID_TYPES = frozenset({"RANAC", "RANCU"})

LEDGER_KEY = web.AppKey("sandbox.ledger", Ledger)
CONFIG_KEY = web.AppKey("sandbox.config", SandboxConfig)

_ROUTE_ADJUST = "pas.points-adjustments"
_ROUTE_HISTORY = "pas.points-adjustments-details"
_SHUTDOWN_TIMEOUT_S = 5.0

Sleep = Callable[[float], Awaitable[None]]

_correlation_id: ContextVar[str] = ContextVar("sandbox_correlation_id")


# --- pluggable step: body codec -----------------------------------------------------------

ResponseEncoder = Callable[[Mapping[str, Any]], bytes]
"""Turns a success payload into the response body bytes."""


@dataclass(frozen=True, slots=True)
class DecodedBody:
    """The plaintext request and how to encode the answer to this very request.

    The encoder travels with the request because the answer may depend on it: the JWE
    codec answers in the field name it received, encrypted to the caller's key.
    """

    payload: dict[str, Any]
    encode_response: ResponseEncoder


class RequestCodec(Protocol):
    """Turns the body bytes as sent into the plaintext JSON object.

    Raise :class:`ApiError` (typically 400) when the body cannot be decoded.
    """

    def decode(self, body: bytes, headers: Mapping[str, str]) -> DecodedBody: ...


def parse_json_object(body: bytes) -> dict[str, Any]:
    """Strict JSON: UTF-8, an object at the top, no duplicate keys, no NaN or Infinity.

    Raises:
        ApiError: 400 ``INVALID_JSON``; the description never quotes the body.
    """
    try:
        value = json.loads(
            body.decode("utf-8"),
            object_pairs_hook=_reject_duplicate_keys,
            parse_constant=_reject_constant,
        )
    except UnicodeDecodeError as exc:
        raise _invalid_json("request body is not valid UTF-8") from exc
    except json.JSONDecodeError as exc:
        raise _invalid_json(f"request body is not valid JSON (at char {exc.pos})") from exc
    except ValueError as exc:  # from the two hooks
        raise _invalid_json(str(exc)) from exc
    if not isinstance(value, dict):
        raise _invalid_json("request body must be a JSON object")
    return value


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


class PlainCodec:
    """Plain JSON both ways: the sandbox's codec until the JWE layer is put in front."""

    def decode(self, body: bytes, headers: Mapping[str, str]) -> DecodedBody:
        """The body parsed by :func:`parse_json_object`; the answer is plain JSON."""
        return DecodedBody(parse_json_object(body), encode_json)


def _reject_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    result: dict[str, Any] = {}
    for key, value in pairs:
        if key in result:
            raise ValueError("request body repeats a key")
        result[key] = value
    return result


def _reject_constant(name: str) -> Any:
    raise ValueError(f"request body holds {name}, which JSON does not allow")


def _invalid_json(description: str) -> ApiError:
    return ApiError.pas(400, ReasonCode.INVALID_JSON, description)


# --- pluggable step: gateway check --------------------------------------------------------


@dataclass(frozen=True, slots=True)
class GatewayRequest:
    """What the API Gateway sees of a call: enough to verify an OAuth 1.0a signature."""

    method: str
    url: str
    """The absolute URL as received, query included."""
    headers: Mapping[str, str]
    """The request headers; lookups are case-insensitive."""
    body: bytes
    """The exact body bytes as received (empty for a GET)."""


class GatewayAuth(Protocol):
    """Decides whether a call reaches PAS; raise :class:`ApiError` (Source Gateway) if not."""

    async def check(self, request: GatewayRequest) -> None: ...


class AllowAllGateway:
    """A gateway that lets every call through: the default until OAuth 1.0a lands."""

    async def check(self, request: GatewayRequest) -> None:
        """Accept the call."""
        return None


# --- the application ----------------------------------------------------------------------


@dataclass(slots=True)
class _Sandbox:
    config: SandboxConfig
    ledger: Ledger
    codec: RequestCodec
    gateway: GatewayAuth
    sleep: Sleep
    rules: ValidationRules
    adjust_requests: Counter[int] = field(default_factory=Counter)

    # middleware ---------------------------------------------------------------------------

    @web.middleware
    async def envelope_middleware(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        """Correlation id on every response; every failure answered with the envelope."""
        correlation_id = request.headers.get(CORRELATION_REQUEST_HEADER) or str(uuid.uuid4())
        token = _correlation_id.set(correlation_id)
        route = request.match_info.route.name or "unmatched"
        try:
            response = await handler(request)
        except ApiError as exc:
            response = self._error_response(exc, route)
        except web.HTTPException as exc:  # the router's 404 and 405
            response = self._error_response(_from_http_exception(exc), route)
        except Exception:
            log.exception("sandbox.request.failed", route=route, correlation_id=correlation_id)
            error = ApiError.pas(
                500,
                ReasonCode.INTERNAL_ERROR,
                "the sandbox failed unexpectedly",
                recoverable=True,
            )
            response = self._error_response(error, route)
        finally:
            _correlation_id.reset(token)
        if route == _ROUTE_ADJUST:
            self.adjust_requests[response.status] += 1
        response.headers[CORRELATION_RESPONSE_HEADER] = correlation_id
        return response

    def _error_response(self, error: ApiError, route: str) -> web.Response:
        log.debug(
            "sandbox.request.rejected",
            route=route,
            status=error.status,
            reason_codes=[str(item.reason_code) for item in error.errors],
            correlation_id=_correlation_id.get(None),
        )
        return _json_response(error.envelope(), status=error.status, headers=error.headers)

    # PAS ----------------------------------------------------------------------------------

    async def adjust(self, request: web.Request) -> web.Response:
        """``POST {prefix}/points-adjustments``: see the module docstring for the steps."""
        body = await self._read_body(request)
        await self.gateway.check(_gateway_request(request, body))
        decoded = self.codec.decode(body, request.headers)
        try:
            adjustment = parse_adjustment(decoded.payload, self.rules)
        except InvalidAdjustmentError as exc:
            raise ApiError(400, [error.to_error_item() for error in exc.errors]) from exc
        if adjustment.bank_account_number in self.config.unknown_accounts:
            raise ApiError.pas(
                404,
                ReasonCode.ACCOUNT_NOT_FOUND,
                "no account has this bankAccountNumber",
                details=BANK_ACCOUNT_NUMBER,
            )
        if self.config.latency_ms > 0:
            await self.sleep(self.config.latency_ms / 1000)
        entry = self.ledger.apply(adjustment, correlation_id=_correlation_id.get(None))
        log.debug(
            "sandbox.adjustment.applied",
            adjustment_id=entry.adjustment_id,
            account=mask_account(entry.bank_account_number),
            points=entry.points_adjusted,
            type_code=entry.adjustment_type_code,
            correlation_id=entry.correlation_id,
        )
        payload = {"pointsAdjusted": entry.points_adjusted}
        return _json_body_response(decoded.encode_response(payload))

    async def history(self, request: web.Request) -> web.Response:
        """``GET {prefix}/points-adjustments-details?user_id=...&user_id_type=RANAC|RANCU``.

        Answers ``{"adjustments": [...], "balance": n}``, oldest adjustment first, each with
        ``adjustmentId``, ``pointsAdjusted``, ``adjustmentTypeCode``, ``adjustmentReason``,
        ``adjustedBy`` and ``adjustedAt`` (ISO 8601 UTC). ``user_id`` is, for now, the
        bankAccountNumber whatever the ``user_id_type``.
        """
        await self.gateway.check(_gateway_request(request, b""))
        query = request.query
        user_ids = query.getall("user_id", [])
        id_types = query.getall("user_id_type", [])
        errors: list[ErrorItem] = []
        if not user_ids:
            errors.append(_param_error(ReasonCode.MISSING_PARAMETER, "user_id", "is mandatory"))
        elif len(user_ids) > 1 or not is_valid_account_number(user_ids[0]):
            errors.append(
                _param_error(
                    ReasonCode.INVALID_PARAMETER, "user_id", "must be one string of 1 to 30 digits"
                )
            )
        if not id_types:
            errors.append(
                _param_error(ReasonCode.MISSING_PARAMETER, "user_id_type", "is mandatory")
            )
        elif len(id_types) > 1 or id_types[0] not in USER_ID_TYPES:
            errors.append(
                _param_error(
                    ReasonCode.INVALID_PARAMETER, "user_id_type", "must be one of RANAC, RANCU"
                )
            )
        if errors:
            raise ApiError(400, errors)
        account = user_ids[0]
        if account in self.config.unknown_accounts:
            raise ApiError.pas(
                404, ReasonCode.ACCOUNT_NOT_FOUND, "no account has this user_id", details="user_id"
            )
        return _json_response(
            {
                "adjustments": [entry.to_history_json() for entry in self.ledger.history(account)],
                "balance": self.ledger.balance(account),
            }
        )

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.config.max_body_bytes
        declared = request.content_length
        if declared is not None and declared > limit:
            raise _payload_too_large(limit)
        try:
            return await request.read()  # capped by the app's client_max_size (= limit)
        except web.HTTPRequestEntityTooLarge as exc:
            raise _payload_too_large(limit) from exc

    # admin (not PAS) ----------------------------------------------------------------------

    async def admin_ledger(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/ledger`` (not PAS): everything applied, for tests to assert on.

        ``{"adjustments": [... with bankAccountNumber and correlationId ...], "count": n,
        "accounts": k, "balances": {account: n}, "requests": {"total": t, "byStatus":
        {"200": n, ...}}}``; ``requests`` counts ``POST points-adjustments`` calls by status.
        """
        return _json_response(
            {
                "adjustments": [entry.to_admin_json() for entry in self.ledger.entries()],
                "count": len(self.ledger),
                "accounts": len(self.ledger.balances()),
                "balances": self.ledger.balances(),
                "requests": {
                    "total": sum(self.adjust_requests.values()),
                    "byStatus": {str(s): n for s, n in sorted(self.adjust_requests.items())},
                },
            }
        )

    async def admin_reset(self, request: web.Request) -> web.Response:
        """``POST /_sandbox/reset`` (not PAS): empty the ledger and the request counts.

        Answers ``{"cleared": n}``, the number of adjustments dropped.
        """
        cleared = self.ledger.reset()
        self.adjust_requests.clear()
        log.info("sandbox.reset", cleared=cleared)
        return _json_response({"cleared": cleared})

    async def admin_health(self, request: web.Request) -> web.Response:
        """``GET /_sandbox/health`` (not PAS): ``{"status": "ok", "adjustments": n}``."""
        return _json_response({"status": "ok", "adjustments": len(self.ledger)})


def build_app(
    config: SandboxConfig,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    codec: RequestCodec | None = None,
    gateway: GatewayAuth | None = None,
    ledger: Ledger | None = None,
) -> web.Application:
    """The sandbox as an aiohttp application, not yet listening.

    Args:
        config: limits, latency and path prefix.
        clock: stamps applied adjustments (``adjustedAt``); must be timezone-aware.
        sleep: waits out ``latency_ms``; inject a fake to test without waiting.
        codec: decodes request bodies and encodes success bodies; plain JSON by default.
        gateway: the pre-PAS check of every PAS call; lets everything through by default.
        ledger: the state to serve from; a new empty one (using ``clock``) by default.
    """
    sandbox = _Sandbox(
        config=config,
        ledger=ledger if ledger is not None else Ledger(clock=clock),
        codec=codec if codec is not None else PlainCodec(),
        gateway=gateway if gateway is not None else AllowAllGateway(),
        sleep=sleep,
        rules=ValidationRules(config.max_points, config.allowed_type_codes),
    )
    app = web.Application(
        middlewares=[sandbox.envelope_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG_KEY] = config
    app[LEDGER_KEY] = sandbox.ledger
    prefix = config.path_prefix
    app.router.add_post(prefix + ADJUSTMENTS_PATH, sandbox.adjust, name=_ROUTE_ADJUST)
    app.router.add_get(
        prefix + HISTORY_PATH, sandbox.history, name=_ROUTE_HISTORY, allow_head=False
    )
    app.router.add_get(f"{ADMIN_PREFIX}/ledger", sandbox.admin_ledger, allow_head=False)
    app.router.add_post(f"{ADMIN_PREFIX}/reset", sandbox.admin_reset)
    app.router.add_get(f"{ADMIN_PREFIX}/health", sandbox.admin_health, allow_head=False)
    return app


# --- running it ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningSandbox:
    """A sandbox listening on a real socket."""

    base_url: str
    """``http://host:port``, without the path prefix or a trailing slash."""
    config: SandboxConfig
    ledger: Ledger
    app: web.Application

    @property
    def api_base_url(self) -> str:
        """Where the PAS paths start: ``base_url`` plus the path prefix."""
        return self.base_url + self.config.path_prefix

    @property
    def adjustments_url(self) -> str:
        """The absolute URL of ``POST points-adjustments``."""
        return self.api_base_url + ADJUSTMENTS_PATH


@asynccontextmanager
async def run_sandbox(
    config: SandboxConfig,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    codec: RequestCodec | None = None,
    gateway: GatewayAuth | None = None,
) -> AsyncIterator[RunningSandbox]:
    """Serve the sandbox on ``config.host:config.port`` for the block's duration.

    With ``port=0`` the OS picks a free port; ``base_url`` tells which. On exit the socket
    closes and in-flight requests get a few seconds to finish.
    """
    app = build_app(config, clock=clock, sleep=sleep, codec=codec, gateway=gateway)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port)
        await site.start()
        port = int(runner.addresses[0][1])
        host = f"[{config.host}]" if ":" in config.host else config.host
        yield RunningSandbox(f"http://{host}:{port}", config, app[LEDGER_KEY], app)
    finally:
        await runner.cleanup()


async def serve_forever(
    config: SandboxConfig,
    *,
    stop: asyncio.Event | None = None,
    on_ready: Callable[[RunningSandbox], None] | None = None,
) -> None:
    """Run the sandbox until SIGTERM or SIGINT (or until ``stop`` is set), for the CLI.

    Logs ``sandbox.listening`` with the address once the socket is open, then calls
    ``on_ready``. Signal handlers are installed only where the loop supports them (the
    main thread on Unix) and removed on the way out.
    """
    loop = asyncio.get_running_loop()
    stop = stop if stop is not None else asyncio.Event()
    installed: list[signal.Signals] = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        with suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
            installed.append(signum)
    try:
        async with run_sandbox(config) as sandbox:
            log.info(
                "sandbox.listening",
                base_url=sandbox.base_url,
                api_base_url=sandbox.api_base_url,
                latency_ms=config.latency_ms,
            )
            if on_ready is not None:
                on_ready(sandbox)
            await stop.wait()
            log.info("sandbox.stopping", adjustments=len(sandbox.ledger))
    finally:
        for signum in installed:
            loop.remove_signal_handler(signum)
    log.info("sandbox.stopped")


# --- helpers ------------------------------------------------------------------------------


def mask_account(account: str) -> str:
    """The account number as logs may show it: ``****`` and the last four digits at most."""
    if len(account) <= 4:
        return "****"
    return "****" + account[-4:]


def _gateway_request(request: web.Request, body: bytes) -> GatewayRequest:
    return GatewayRequest(request.method, str(request.url), request.headers, body)


def _payload_too_large(limit: int) -> ApiError:
    return ApiError.pas(413, ReasonCode.PAYLOAD_TOO_LARGE, f"request body exceeds {limit} bytes")


def _param_error(reason_code: ReasonCode, name: str, problem: str) -> ErrorItem:
    return FieldError(name, reason_code, f"{name} {problem}").to_error_item()


def _from_http_exception(exc: web.HTTPException) -> ApiError:
    if exc.status == 405:
        return ApiError.gateway(
            405,
            ReasonCode.METHOD_NOT_ALLOWED,
            "this method is not allowed on this path",
            headers={"Allow": exc.headers.get("Allow", "")},
        )
    if exc.status == 404:
        return ApiError.gateway(404, ReasonCode.NOT_FOUND, "no such resource")
    if exc.status == 413:
        return ApiError.pas(413, ReasonCode.PAYLOAD_TOO_LARGE, "request body is too large")
    reason = exc.reason.upper().replace(" ", "_") or "HTTP_ERROR"
    return ApiError.gateway(exc.status, reason, exc.reason, recoverable=exc.status >= 500)


def _json_response(
    payload: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return _json_body_response(encode_json(payload), status=status, headers=headers)


def _json_body_response(
    body: bytes, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")
