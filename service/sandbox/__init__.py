"""A local HTTP sandbox of Mastercard's Points Activity Service (PAS).

It implements the contract in ``docs/pas-api.md`` for tests, the demo and benchmarks:
``run_sandbox`` serves it on a real socket, ``serve_forever`` runs it for the CLI, and the
``/_sandbox/`` admin routes (not part of PAS) expose its ledger as a test oracle.
"""

from service.sandbox.app import (
    AllowAllGateway,
    DecodedBody,
    GatewayAuth,
    GatewayRequest,
    PlainCodec,
    RequestCodec,
    RunningSandbox,
    build_app,
    run_sandbox,
    serve_forever,
)
from service.sandbox.config import SandboxConfig
from service.sandbox.envelope import ApiError, ErrorItem, ReasonCode
from service.sandbox.ledger import Ledger, LedgerEntry
from service.sandbox.validation import (
    AdjustmentRequest,
    FieldError,
    ValidationRules,
    validate_adjustment,
)

__all__ = [
    "AdjustmentRequest",
    "AllowAllGateway",
    "ApiError",
    "DecodedBody",
    "ErrorItem",
    "FieldError",
    "GatewayAuth",
    "GatewayRequest",
    "Ledger",
    "LedgerEntry",
    "PlainCodec",
    "ReasonCode",
    "RequestCodec",
    "RunningSandbox",
    "SandboxConfig",
    "ValidationRules",
    "build_app",
    "run_sandbox",
    "serve_forever",
    "validate_adjustment",
]
