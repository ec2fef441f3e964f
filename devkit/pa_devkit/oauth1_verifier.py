"""The server side of Mastercard's OAuth 1.0a variant: parsing and verifying the header.

The PAS sandbox's gateway uses it; the product only signs (``service.security.oauth1``), and
this module reuses its base string, body hash and signature paddings so both sides agree by
construction. Both of Mastercard's signature methods verify (``RSA-SHA256`` and ``RSA-PSS``)
unless the verifier is told to accept only some of them. A consumer key may have several public
keys (a signing key being rotated): a signature by any of them verifies.
"""

from __future__ import annotations

import base64
import binascii
import heapq
import hmac
import re
import threading
import time
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from urllib.parse import unquote

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa

from service.security.errors import SecurityError
from service.security.oauth1 import (
    OAUTH_VERSION,
    SIGNATURE_METHODS,
    SignatureMethod,
    body_hash,
    signature_base_string,
    signature_padding,
)

DEFAULT_MAX_SKEW_SECONDS = 300
DEFAULT_NONCE_CACHE_SIZE = 100_000
_REQUIRED_PARAMS = (
    "oauth_consumer_key",
    "oauth_nonce",
    "oauth_timestamp",
    "oauth_signature_method",
    "oauth_version",
    "oauth_body_hash",
    "oauth_signature",
)
_SCHEME = re.compile(r"\s*OAuth\s+", re.IGNORECASE)
_PARAM = re.compile(r'\s*([A-Za-z0-9_.~-]+)\s*=\s*"([^"]*)"\s*(?:,|\Z)')


class SignatureError(SecurityError):
    """An OAuth 1.0a signed request is rejected; ``reason`` says which check failed.

    Reasons: ``missing_header``, ``malformed_header``, ``unsupported_signature_method``,
    ``unsupported_version``, ``unknown_consumer_key``, ``body_hash_mismatch``,
    ``stale_timestamp``, ``future_timestamp``, ``replayed_nonce``, ``bad_signature``.
    """


def parse_authorization_header(value: str) -> dict[str, str]:
    """Parse ``OAuth k="v", k2 = "v2"`` into percent-decoded values, in any order.

    Raises ``SignatureError('malformed_header')`` for another scheme, an unquoted or repeated
    parameter, or no parameter at all.
    """
    start = _SCHEME.match(value)
    if start is None:
        raise SignatureError("malformed_header", "not an OAuth Authorization header")
    params: dict[str, str] = {}
    pos = start.end()
    while pos < len(value):
        match = _PARAM.match(value, pos)
        if match is None:
            raise SignatureError("malformed_header", f"cannot parse parameters at offset {pos}")
        name = match.group(1)
        if name in params:
            raise SignatureError("malformed_header", f"{name} appears twice")
        params[name] = unquote(match.group(2))
        pos = match.end()
    if not params:
        raise SignatureError("malformed_header", "no OAuth parameters")
    return params


@dataclass(slots=True)
class _SeenNonces:
    """One consumer key's nonces, each kept until its timestamp leaves the skew window.

    When full, the entry expiring first is dropped and ``floor`` rises to its expiry: requests
    that would expire no later than the floor are refused, since their nonce may be forgotten.
    """

    expiry_by_nonce: dict[str, float] = field(default_factory=dict)
    heap: list[tuple[float, str]] = field(default_factory=list)
    floor: float = float("-inf")


class OAuth1Verifier:
    """Checks a signed request as the Mastercard gateway would; returns the consumer key.

    ``url`` must be the URL as the client addressed it (scheme, the ``Host`` it sent, the raw
    path and query), not one rebuilt from a proxy's view: the signature covers it.
    Thread-safe; the nonce check runs only after the signature verified, so unsigned traffic
    cannot fill the cache. ``signature_methods`` are the ``oauth_signature_method`` values
    accepted (both of Mastercard's by default); any other is ``unsupported_signature_method``.
    """

    def __init__(
        self,
        public_key_by_consumer_key: Mapping[str, rsa.RSAPublicKey | Sequence[rsa.RSAPublicKey]],
        *,
        clock: Callable[[], float] = time.time,
        max_skew_seconds: float = DEFAULT_MAX_SKEW_SECONDS,
        nonce_cache_size: int = DEFAULT_NONCE_CACHE_SIZE,
        signature_methods: Collection[SignatureMethod] = SIGNATURE_METHODS,
    ) -> None:
        if nonce_cache_size < 1:
            raise ValueError("nonce_cache_size must be at least 1")
        unknown = set(signature_methods) - set(SIGNATURE_METHODS)
        if not signature_methods or unknown:
            raise ValueError(f"signature_methods must be some of {', '.join(SIGNATURE_METHODS)}")
        self._methods: tuple[SignatureMethod, ...] = tuple(
            m for m in SIGNATURE_METHODS if m in signature_methods
        )
        self._keys: dict[str, tuple[rsa.RSAPublicKey, ...]] = {
            consumer_key: (keys,) if isinstance(keys, rsa.RSAPublicKey) else tuple(keys)
            for consumer_key, keys in public_key_by_consumer_key.items()
        }
        self._clock = clock
        self._skew = max_skew_seconds
        self._cache_size = nonce_cache_size
        self._seen: dict[str, _SeenNonces] = {}
        self._lock = threading.Lock()

    def verify(self, method: str, url: str, headers: Mapping[str, str], body: bytes) -> str:
        """Return the consumer key of a valid request; raise ``SignatureError`` otherwise."""
        value = _find_header(headers, "authorization")
        if value is None:
            raise SignatureError("missing_header", "no Authorization header")
        params = parse_authorization_header(value)
        for name in _REQUIRED_PARAMS:
            if not params.get(name):
                raise SignatureError("malformed_header", f"{name} is missing or empty")
        signing_method = next(
            (m for m in self._methods if m == params["oauth_signature_method"]), None
        )
        if signing_method is None:
            raise SignatureError(
                "unsupported_signature_method", f"expected {' or '.join(self._methods)}"
            )
        if params["oauth_version"] != OAUTH_VERSION:
            raise SignatureError("unsupported_version", f"expected {OAUTH_VERSION}")
        consumer_key = params["oauth_consumer_key"]
        public_keys = self._keys.get(consumer_key)
        if not public_keys:
            raise SignatureError("unknown_consumer_key", "no key registered for this consumer")

        timestamp_text = params["oauth_timestamp"]
        if not (timestamp_text.isascii() and timestamp_text.isdigit()):
            raise SignatureError("malformed_header", "oauth_timestamp is not an integer")
        timestamp = int(timestamp_text)
        now = self._clock()
        if now - timestamp > self._skew:
            raise SignatureError("stale_timestamp", f"older than {self._skew:g}s")
        if timestamp - now > self._skew:
            raise SignatureError("future_timestamp", f"more than {self._skew:g}s ahead")

        if not hmac.compare_digest(params["oauth_body_hash"], body_hash(body)):
            raise SignatureError("body_hash_mismatch", "oauth_body_hash does not match the body")

        try:
            signature = base64.b64decode(params["oauth_signature"], validate=True)
        except binascii.Error as exc:
            raise SignatureError("bad_signature", "oauth_signature is not base64") from exc
        signed = {k: v for k, v in params.items() if k.startswith("oauth_")}
        try:
            base_string = signature_base_string(method, url, body, signed)
        except ValueError as exc:
            raise SignatureError("bad_signature", "the request URL cannot be normalized") from exc
        if not any(_verifies(key, signature, base_string, signing_method) for key in public_keys):
            raise SignatureError("bad_signature", "signature does not verify")

        self._remember_nonce(consumer_key, params["oauth_nonce"], timestamp, now)
        return consumer_key

    def _remember_nonce(self, consumer_key: str, nonce: str, timestamp: int, now: float) -> None:
        expiry = timestamp + self._skew
        with self._lock:
            seen = self._seen.setdefault(consumer_key, _SeenNonces())
            while seen.heap and seen.heap[0][0] < now:
                _, old = heapq.heappop(seen.heap)
                del seen.expiry_by_nonce[old]
            if nonce in seen.expiry_by_nonce:
                raise SignatureError("replayed_nonce", "nonce already used")
            if expiry <= seen.floor:
                raise SignatureError(
                    "stale_timestamp", "older than the nonce cache can vouch for (cache full)"
                )
            seen.expiry_by_nonce[nonce] = expiry
            heapq.heappush(seen.heap, (expiry, nonce))
            if len(seen.heap) > self._cache_size:
                dropped_expiry, dropped = heapq.heappop(seen.heap)
                del seen.expiry_by_nonce[dropped]
                seen.floor = max(seen.floor, dropped_expiry)


def _verifies(
    public_key: rsa.RSAPublicKey, signature: bytes, base_string: str, method: SignatureMethod
) -> bool:
    """Whether ``signature`` is ``public_key``'s over ``base_string``."""
    try:
        public_key.verify(
            signature, base_string.encode("utf-8"), signature_padding(method), hashes.SHA256()
        )
    except InvalidSignature:
        return False
    return True


def _find_header(headers: Mapping[str, str], name: str) -> str | None:
    for key, value in headers.items():
        if key.lower() == name:
            return value
    return None
