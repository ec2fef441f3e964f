"""A local HTTP(S) sandbox of Mastercard's Points Activity Service (PAS).

It implements the contract in ``docs/pas.md`` for tests, the demo and benchmarks:
``run_sandbox`` serves it on a real socket, ``serve_forever`` runs it for the CLI, and the
``/_sandbox/`` admin routes (not part of PAS) expose its ledger as a test oracle and its
fault injection as a remote control.

Modules: ``app`` (routes and request steps, running it), ``codec`` (plain and JWE bodies),
``gateway`` (the OAuth 1.0a check), ``security`` (loading the key material), ``tls`` (the
https server context), ``faults`` (the fault configuration), ``injector`` and ``ratelimit``
(carrying it out), ``admin`` (the ``/_sandbox/`` routes), ``cli_args`` (the ``sandbox``
command's flags), ``config``, ``envelope``, ``ledger`` and ``validation``.
"""

from pa_devkit.sandbox.app import RunningSandbox, build_app, run_sandbox, serve_forever
from pa_devkit.sandbox.codec import DecodedBody, JweCodec, PlainCodec, RequestCodec
from pa_devkit.sandbox.config import SandboxConfig, SandboxSecurity, SandboxTls
from pa_devkit.sandbox.envelope import ApiError, ErrorItem, ReasonCode
from pa_devkit.sandbox.faults import (
    ApplyThenDropFault,
    ErrorFault,
    FaultConfig,
    FaultConfigError,
    FixedLatency,
    HangFault,
    LognormalLatency,
    RateLimit,
    ResetFault,
    UniformLatency,
)
from pa_devkit.sandbox.gateway import AllowAllGateway, GatewayAuth, GatewayRequest, OAuth1Gateway
from pa_devkit.sandbox.injector import FaultInjector
from pa_devkit.sandbox.ledger import Ledger, LedgerEntry
from pa_devkit.sandbox.validation import (
    AdjustmentRequest,
    FieldError,
    ValidationRules,
    validate_adjustment,
)

__all__ = [
    "AdjustmentRequest",
    "AllowAllGateway",
    "ApiError",
    "ApplyThenDropFault",
    "DecodedBody",
    "ErrorFault",
    "ErrorItem",
    "FaultConfig",
    "FaultConfigError",
    "FaultInjector",
    "FieldError",
    "FixedLatency",
    "GatewayAuth",
    "GatewayRequest",
    "HangFault",
    "JweCodec",
    "Ledger",
    "LedgerEntry",
    "LognormalLatency",
    "OAuth1Gateway",
    "PlainCodec",
    "RateLimit",
    "ReasonCode",
    "RequestCodec",
    "ResetFault",
    "RunningSandbox",
    "SandboxConfig",
    "SandboxSecurity",
    "SandboxTls",
    "UniformLatency",
    "ValidationRules",
    "build_app",
    "run_sandbox",
    "serve_forever",
    "validate_adjustment",
]
