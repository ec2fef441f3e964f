"""A real HTTP stand-in for Mastercard's Points Activity Service (PAS), on aiohttp.web.

PAS routes (``{prefix}`` is :attr:`SandboxConfig.path_prefix`, e.g. ``/loyalty``)::

    POST {prefix}/points-adjustments           apply one adjustment
    GET  {prefix}/points-adjustments-details   an account's adjustment history

Admin routes under ``/_sandbox/`` (the tests' oracle, not PAS, never prefixed, never
checked by the gateway) are described in :mod:`pa_devkit.sandbox.admin`.

``POST points-adjustments`` runs these steps; the first that fails answers:

    ==  ==========================================  ======  ==============================
    #   step                                        status  ReasonCode (Source)
    ==  ==========================================  ======  ==============================
    1   read the body, at most ``max_body_bytes``   413     PAYLOAD_TOO_LARGE (PAS)
    2   gateway check (:class:`GatewayAuth`)        401     DECLINED (Gateway)
    3   rate limit (``faults.rate_limit``)          429     TOO_MANY_REQUESTS (Gateway)
    4   decode the body (:class:`RequestCodec`)     400     INVALID_JSON, JWE codes (PAS)
    5   validate the five fields                    400     one entry per problem (PAS)
    6   injected fate: error / hang / reset         any     see :mod:`~.faults`
    7   account in ``unknown_accounts``             404     ACCOUNT_NOT_FOUND (PAS)
    8   wait the latency, apply to the ledger
    9   injected fate: apply_then_drop              none    (connection dropped)
    10  answer                                      200     ``{"pointsAdjusted": n}``
    ==  ==========================================  ======  ==============================

Steps 2 and 4 are pluggable. With ``SandboxConfig.security`` set they are Mastercard's
OAuth 1.0a check (:class:`~.gateway.OAuth1Gateway`) and JWE bodies
(:class:`~.codec.JweCodec`); without it the gateway lets everything through and bodies are
plain JSON. ``GET points-adjustments-details`` passes the same gateway check (a GET signs
an empty body) and always answers plain JSON. The success body goes back through the
encoder the codec chose for that request.

Step 6 draws at most one fate per request (:mod:`~.injector`): an injected error answers
at once and applies nothing; a hang waits ``hang.seconds`` and then carries on (``applies``)
or answers the gateway's 504; a reset aborts the connection with a TCP RST and applies
nothing. Step 9 closes the connection without an answer after the adjustment was applied.
Faults concern ``POST points-adjustments`` only.

Other answers: an unknown path is 404 ``NOT_FOUND`` and a wrong method 405
``METHOD_NOT_ALLOWED`` with an ``Allow`` header (both Source ``Gateway``, which routes the
call); an unexpected failure is 500 ``INTERNAL_ERROR``. Every response, errors included,
is ``application/json`` and carries ``X-MC-Correlation-ID``: the caller's
``Correlation-Id`` or a fresh UUID.

Step 8 applies the adjustment even when the caller has stopped waiting (aiohttp does not
cancel a handler when its client disconnects): a client timeout during the latency or a
hang leaves an applied adjustment behind, the "unknown outcome" the client has to
reconcile.

Logs name events and never hold a full account number (last four digits only), a query
string or a request body; aiohttp's access log, which would print query strings, is off.
"""

from __future__ import annotations

import asyncio
import signal
import socket
import ssl
import struct
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager, suppress
from contextvars import ContextVar
from dataclasses import dataclass, field

import structlog
from aiohttp import web

from pa_devkit.sandbox.admin import AdminRoutes
from pa_devkit.sandbox.codec import (
    DecodedBody,
    PlainCodec,
    RequestCodec,
    encode_json,
    json_body_response,
    json_response,
    parse_json_object,
)
from pa_devkit.sandbox.config import SandboxConfig
from pa_devkit.sandbox.envelope import ApiError, ErrorItem, ReasonCode
from pa_devkit.sandbox.gateway import AllowAllGateway, GatewayAuth, GatewayRequest
from pa_devkit.sandbox.injector import FateKind, FaultInjector, hang_timeout, injected_error
from pa_devkit.sandbox.ledger import Clock, Ledger, utc_now
from pa_devkit.sandbox.security import load_security_material, secured_hooks
from pa_devkit.sandbox.tls import server_ssl_context
from pa_devkit.sandbox.validation import (
    BANK_ACCOUNT_NUMBER,
    FieldError,
    InvalidAdjustmentError,
    ValidationRules,
    is_valid_account_number,
    parse_adjustment,
)
from service.domain.command import mask_account

__all__ = [
    "ADJUSTMENTS_PATH",
    "CONFIG_KEY",
    "FAULTS_KEY",
    "HISTORY_PATH",
    "LEDGER_KEY",
    "AllowAllGateway",
    "DecodedBody",
    "GatewayAuth",
    "GatewayRequest",
    "PlainCodec",
    "RequestCodec",
    "RunningSandbox",
    "build_app",
    "encode_json",
    "parse_json_object",
    "run_sandbox",
    "serve_forever",
]

log = structlog.get_logger("pa_devkit.sandbox")

ADJUSTMENTS_PATH = "/points-adjustments"
HISTORY_PATH = "/points-adjustments-details"
CORRELATION_REQUEST_HEADER = "Correlation-Id"
CORRELATION_RESPONSE_HEADER = "X-MC-Correlation-ID"
USER_ID_TYPES = frozenset({"RANAC", "RANCU"})

LEDGER_KEY = web.AppKey("sandbox.ledger", Ledger)
CONFIG_KEY = web.AppKey("sandbox.config", SandboxConfig)
FAULTS_KEY = web.AppKey("sandbox.faults", FaultInjector)

_ROUTE_ADJUST = "pas.points-adjustments"
_ROUTE_HISTORY = "pas.points-adjustments-details"
_SHUTDOWN_TIMEOUT_S = 5.0
_LINGER_RESET = struct.pack("ii", 1, 0)  # SO_LINGER on, 0 s: close() sends a TCP RST

Sleep = Callable[[float], Awaitable[None]]

_correlation_id: ContextVar[str] = ContextVar("sandbox_correlation_id")


class _DropConnection(Exception):  # noqa: N818 - a control-flow signal, not an error
    """Raised by a handler to end the connection without any HTTP answer."""

    def __init__(self, *, reset: bool) -> None:
        super().__init__("reset" if reset else "drop")
        self.reset = reset


@dataclass(slots=True)
class _Sandbox:
    config: SandboxConfig
    ledger: Ledger
    codec: RequestCodec
    gateway: GatewayAuth
    faults: FaultInjector
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
        except _DropConnection as exc:
            log.debug("sandbox.connection.dropped", reset=exc.reset, correlation_id=correlation_id)
            _abort_connection(request, reset=exc.reset)
            return web.Response()  # never written: aiohttp finds the transport closed
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
        return json_response(error.envelope(), status=error.status, headers=error.headers)

    # PAS ----------------------------------------------------------------------------------

    async def adjust(self, request: web.Request) -> web.Response:
        """``POST {prefix}/points-adjustments``: see the module docstring for the steps."""
        body = await self._read_body(request)
        await self.gateway.check(GatewayRequest.from_request(request, body))
        self.faults.check_rate_limit()
        decoded = self.codec.decode(body, request.headers)
        try:
            adjustment = parse_adjustment(decoded.payload, self.rules)
        except InvalidAdjustmentError as exc:
            raise ApiError(400, [error.to_error_item() for error in exc.errors]) from exc

        fate = self.faults.draw()
        if fate.error is not None:
            self.faults.count(fate.label)
            raise injected_error(fate.error)
        if fate.hang is not None:
            self.faults.count(fate.label)
            await self.sleep(fate.hang.seconds)
            if not fate.hang.applies:
                raise hang_timeout()
        if fate.kind is FateKind.RESET:
            self.faults.count(fate.label)
            raise _DropConnection(reset=True)

        if adjustment.bank_account_number in self.config.unknown_accounts:
            raise ApiError.pas(
                404,
                ReasonCode.ACCOUNT_NOT_FOUND,
                "no account has this bankAccountNumber",
                details=BANK_ACCOUNT_NUMBER,
            )
        delay = self.faults.latency_seconds(self.config.latency_ms)
        if delay > 0:
            await self.sleep(delay)
        entry = self.ledger.apply(adjustment, correlation_id=_correlation_id.get(None))
        log.debug(
            "sandbox.adjustment.applied",
            adjustment_id=entry.adjustment_id,
            account=mask_account(entry.bank_account_number),
            points=entry.points_adjusted,
            type_code=entry.adjustment_type_code,
            correlation_id=entry.correlation_id,
        )
        if fate.kind is FateKind.APPLY_THEN_DROP:
            self.faults.count(fate.label)
            raise _DropConnection(reset=False)
        payload = {"pointsAdjusted": entry.points_adjusted}
        return json_body_response(decoded.encode_response(payload))

    async def history(self, request: web.Request) -> web.Response:
        """``GET {prefix}/points-adjustments-details?user_id=...&user_id_type=RANAC|RANCU``.

        Answers ``{"adjustments": [...], "balance": n}``, oldest adjustment first, each with
        ``adjustmentId``, ``pointsAdjusted``, ``adjustmentTypeCode``, ``adjustmentReason``,
        ``adjustedBy`` and ``adjustedAt`` (ISO 8601 UTC). ``user_id`` is, for now, the
        bankAccountNumber whatever the ``user_id_type``.
        """
        await self.gateway.check(GatewayRequest.from_request(request, b""))
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
        return json_response(
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


def build_app(
    config: SandboxConfig,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    codec: RequestCodec | None = None,
    gateway: GatewayAuth | None = None,
    ledger: Ledger | None = None,
    monotonic: Callable[[], float] = time.monotonic,
) -> web.Application:
    """The sandbox as an aiohttp application, not yet listening.

    Args:
        config: limits, latency, path prefix, security and faults.
        clock: stamps applied adjustments (``adjustedAt``) and is the gateway's clock for
            ``oauth_timestamp``; must be timezone-aware.
        sleep: waits out latencies and hangs; inject a fake to test without waiting.
        codec: decodes request bodies and encodes success bodies; by default JWE when
            ``config.security`` is set, else plain JSON.
        gateway: the pre-PAS check of every PAS call; by default OAuth 1.0a when
            ``config.security`` is set, else lets everything through.
        ledger: the state to serve from; a new empty one (using ``clock``) by default.
        monotonic: the rate limit's clock, in seconds.

    Raises:
        service.security.errors.SecurityError: a key or certificate of ``config.security``
            cannot be loaded, or the PAS key does not match its certificate.
    """
    if config.security is not None and (codec is None or gateway is None):
        material = load_security_material(config.security)
        secure_codec, secure_gateway = secured_hooks(material, clock=lambda: clock().timestamp())
        codec = codec if codec is not None else secure_codec
        gateway = gateway if gateway is not None else secure_gateway
    sandbox = _Sandbox(
        config=config,
        ledger=ledger if ledger is not None else Ledger(clock=clock),
        codec=codec if codec is not None else PlainCodec(),
        gateway=gateway if gateway is not None else AllowAllGateway(),
        faults=FaultInjector(config.faults, monotonic=monotonic),
        sleep=sleep,
        rules=ValidationRules(config.max_points, config.allowed_type_codes),
    )
    app = web.Application(
        middlewares=[sandbox.envelope_middleware], client_max_size=config.max_body_bytes
    )
    app[CONFIG_KEY] = config
    app[LEDGER_KEY] = sandbox.ledger
    app[FAULTS_KEY] = sandbox.faults
    prefix = config.path_prefix
    app.router.add_post(prefix + ADJUSTMENTS_PATH, sandbox.adjust, name=_ROUTE_ADJUST)
    app.router.add_get(
        prefix + HISTORY_PATH, sandbox.history, name=_ROUTE_HISTORY, allow_head=False
    )
    AdminRoutes(sandbox.ledger, sandbox.adjust_requests, sandbox.faults).register(app.router)
    return app


# --- running it ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunningSandbox:
    """A sandbox listening on a real socket."""

    base_url: str
    """``http://host:port`` (``https://`` when it serves TLS), without the path prefix or a
    trailing slash."""
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

    @property
    def history_url(self) -> str:
        """The absolute URL of ``GET points-adjustments-details`` (without a query)."""
        return self.api_base_url + HISTORY_PATH

    @property
    def faults(self) -> FaultInjector:
        """The fault injector: its config in force and its counts."""
        return self.app[FAULTS_KEY]


@asynccontextmanager
async def run_sandbox(
    config: SandboxConfig,
    *,
    clock: Clock = utc_now,
    sleep: Sleep = asyncio.sleep,
    codec: RequestCodec | None = None,
    gateway: GatewayAuth | None = None,
    monotonic: Callable[[], float] = time.monotonic,
    ssl_context: ssl.SSLContext | None = None,
) -> AsyncIterator[RunningSandbox]:
    """Serve the sandbox on ``config.host:config.port`` for the block's duration.

    With ``port=0`` the OS picks a free port; ``base_url`` tells which. On exit the socket
    closes and in-flight requests get a few seconds to finish. It serves https when
    ``config.tls`` is set, or with ``ssl_context`` (which wins: a test's own server context,
    such as one that speaks only an old TLS version).
    """
    app = build_app(
        config, clock=clock, sleep=sleep, codec=codec, gateway=gateway, monotonic=monotonic
    )
    if ssl_context is None and config.tls is not None:
        ssl_context = server_ssl_context(config.tls)
    runner = web.AppRunner(app, access_log=None, shutdown_timeout=_SHUTDOWN_TIMEOUT_S)
    await runner.setup()
    try:
        site = web.TCPSite(runner, config.host, config.port, ssl_context=ssl_context)
        await site.start()
        port = int(runner.addresses[0][1])
        host = f"[{config.host}]" if ":" in config.host else config.host
        scheme = "http" if ssl_context is None else "https"
        yield RunningSandbox(f"{scheme}://{host}:{port}", config, app[LEDGER_KEY], app)
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
            security = config.security
            log.info(
                "sandbox.listening",
                base_url=sandbox.base_url,
                api_base_url=sandbox.api_base_url,
                latency_ms=config.latency_ms,
                security="off" if security is None else "oauth1+jwe",
                consumer_keys=None if security is None else sorted(security.clients),
                signature_methods=None if security is None else sorted(security.signature_methods),
                tls=_tls_mode(config),
                encrypted_responses=(
                    None if security is None else security.client_encryption_certificate is not None
                ),
                faults=None if config.faults.is_empty else config.faults.to_dict(),
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


def _tls_mode(config: SandboxConfig) -> str:
    if config.tls is None:
        return "off"
    return "on" if config.tls.client_ca is None else "mutual"


def _abort_connection(request: web.Request, *, reset: bool) -> None:
    """Close the connection at once, without an answer; with ``reset``, as a TCP RST."""
    transport = request.transport
    if transport is None:
        return
    if reset:
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
    transport.abort()


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
