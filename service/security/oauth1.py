"""Mastercard's OAuth 1.0a variant: the base string, the client signer and ``httpx.Auth``.

The server-side verifier (the sandbox's gateway) is in the dev kit: ``pa_devkit.oauth1_verifier``.

It departs from RFC 5849 in one way that changes signatures: parameter values are joined as
``k=v`` without being percent-encoded one by one, and the joined string is percent-encoded once
as a whole. Query parameters enter as they appear in the URL, except that when the query uses
percent-escapes every name and value is re-escaped in canonical form (upper-case hex, RFC 3986
unreserved characters left alone), which is what Mastercard's reference signers do. Pairs are
sorted by name, then value.

The body hash (``oauth_body_hash``) is the standard base64 SHA-256 of the exact body bytes, sent
even for an empty body; encrypt first, then sign the bytes that go on the wire.

Two signature methods sign that same base string with RSA and SHA-256: ``RSA-SHA256``
(PKCS#1 v1.5, the default) and ``RSA-PSS`` (PSS with MGF1-SHA-256 and a 32-byte salt), as
Mastercard's oauth1-signer libraries (1.9 and later for Python) offer them.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import re
import secrets
import string
import time
from collections.abc import Callable, Generator, Mapping
from typing import Literal, get_args
from urllib.parse import quote, unquote, unquote_plus, urlsplit

import httpx
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from pydantic import SecretStr

SignatureMethod = Literal["RSA-SHA256", "RSA-PSS"]
SIGNATURE_METHODS: tuple[SignatureMethod, ...] = get_args(SignatureMethod)
DEFAULT_SIGNATURE_METHOD: SignatureMethod = "RSA-SHA256"
PSS_SALT_LENGTH = 32
"""Bytes of salt in an RSA-PSS signature, as Mastercard's signers use (the SHA-256 length)."""
OAUTH_VERSION = "1.0"
NONCE_LENGTH = 16

_NONCE_ALPHABET = string.ascii_letters + string.digits
_NONCE_LIMIT = 256 - 256 % len(_NONCE_ALPHABET)  # 248
_DEFAULT_PORTS = {"http": 80, "https": 443}
_HEADER_UNSAFE = re.compile(r'[\x00-\x20",%\\\x7f]')


# --- the base string -----------------------------------------------------------------------


def percent_encode(text: str) -> str:
    """RFC 3986 percent-encoding of the UTF-8 bytes; only ``A-Z a-z 0-9 - . _ ~`` stay as is."""
    return quote(text, safe="")


def body_hash(body: bytes) -> str:
    """``oauth_body_hash``: standard base64 of the SHA-256 of the exact body bytes."""
    return base64.b64encode(hashlib.sha256(body).digest()).decode("ascii")


def normalize_url(url: str) -> str:
    """``scheme://host[:port]/path``: lower-case scheme and host, default port dropped, no query.

    User info and fragment are dropped; the path is kept exactly as sent (``/`` when empty).
    Raises ``ValueError`` for a URL that is not absolute http(s).
    """
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    host = parts.hostname
    if scheme not in _DEFAULT_PORTS or not host:
        raise ValueError("expected an absolute http(s) URL")
    if ":" in host:
        host = f"[{host}]"
    port = parts.port
    netloc = host if port is None or port == _DEFAULT_PORTS[scheme] else f"{host}:{port}"
    return f"{scheme}://{netloc}{parts.path or '/'}"


def query_pairs(url: str) -> list[tuple[str, str]]:
    """The query parameters of ``url`` in the form they enter the base string (see module doc)."""
    query = urlsplit(url).query
    canonical = unquote(query) != query
    pairs: list[tuple[str, str]] = []
    for part in query.split("&"):
        if not part:
            continue
        name, _, value = part.partition("=")
        if canonical:
            name, value = percent_encode(unquote_plus(name)), percent_encode(unquote_plus(value))
        pairs.append((name, value))
    return pairs


def signature_base_string(
    method: str, url: str, body: bytes, oauth_params: Mapping[str, str]
) -> str:
    """``METHOD&pct(normalized_url)&pct(k=v&k=v...)`` over the query and the oauth parameters.

    ``oauth_params`` are the ``oauth_*`` parameters except the signature (an ``oauth_signature``
    entry is ignored). ``oauth_body_hash`` is computed from ``body`` when absent; when present it
    must equal that hash (``ValueError`` otherwise), so a base string never covers another body.
    """
    params = {k: v for k, v in oauth_params.items() if k != "oauth_signature"}
    expected = body_hash(body)
    given = params.setdefault("oauth_body_hash", expected)
    if not hmac.compare_digest(given, expected):
        raise ValueError("oauth_body_hash does not match the body")
    encoded_url, url_pairs = _url_parts(url)
    pairs = sorted([*url_pairs, *params.items()])
    param_string = "&".join(f"{k}={v}" for k, v in pairs)
    return f"{method.upper()}&{encoded_url}&{percent_encode(param_string)}"


@functools.lru_cache(maxsize=256)
def _url_parts(url: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    """The encoded normalized URL and the query pairs: the same few URLs are signed each time."""
    return percent_encode(normalize_url(url)), tuple(query_pairs(url))


def signature_padding(method: SignatureMethod) -> padding.AsymmetricPadding:
    """The RSA padding of ``method`` (both hash with SHA-256); ``ValueError`` for another.

    For RSA-PSS the salt length is fixed at 32 bytes on both sides: a verifier given this
    padding refuses a PSS signature made with another salt length.
    """
    if method == "RSA-SHA256":
        return padding.PKCS1v15()
    if method == "RSA-PSS":
        return padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=PSS_SALT_LENGTH)
    raise ValueError(f"unknown signature method {method!r}")


# --- the client ----------------------------------------------------------------------------


def make_nonce() -> str:
    """16 random alphanumerics from the OS CSPRNG, uniform over the 62 characters.

    One ``token_bytes`` call per nonce (``secrets.choice`` costs a syscall per character);
    bytes at or above the largest multiple of 62 are skipped so no character is favoured.
    """
    chars: list[str] = []
    while len(chars) < NONCE_LENGTH:
        chars.extend(_NONCE_ALPHABET[b % 62] for b in secrets.token_bytes(24) if b < _NONCE_LIMIT)
    return "".join(chars[:NONCE_LENGTH])


class OAuth1Signer:
    """Builds the ``Authorization`` header value for one request.

    ``clock`` (Unix seconds) and ``nonce`` are injected so signatures are reproducible in tests
    (an RSA-PSS signature stays random: its salt is).
    """

    def __init__(
        self,
        consumer_key: SecretStr | str,
        private_key: rsa.RSAPrivateKey,
        *,
        signature_method: SignatureMethod = DEFAULT_SIGNATURE_METHOD,
        clock: Callable[[], float] = time.time,
        nonce: Callable[[], str] = make_nonce,
    ) -> None:
        if isinstance(consumer_key, str):
            consumer_key = SecretStr(consumer_key)
        _check_header_safe("consumer_key", consumer_key.get_secret_value())
        self._consumer_key = consumer_key
        """Unwrapped only where the header is built: never in a repr, a log or an error."""
        self._private_key = private_key
        self._method = signature_method
        self._padding = signature_padding(signature_method)
        self._clock = clock
        self._nonce = nonce

    @property
    def consumer_key(self) -> SecretStr:
        return self._consumer_key

    @property
    def signature_method(self) -> SignatureMethod:
        return self._method

    def oauth_params(self, method: str, url: str, body: bytes) -> dict[str, str]:
        """The seven ``oauth_*`` parameters, ``oauth_signature`` as plain base64."""
        nonce = self._nonce()
        _check_header_safe("nonce", nonce)
        params = {
            "oauth_consumer_key": self._consumer_key.get_secret_value(),
            "oauth_nonce": nonce,
            "oauth_timestamp": str(int(self._clock())),
            "oauth_signature_method": self._method,
            "oauth_version": OAUTH_VERSION,
            "oauth_body_hash": body_hash(body),
        }
        base_string = signature_base_string(method, url, body, params)
        signature = self._private_key.sign(
            base_string.encode("utf-8"), self._padding, hashes.SHA256()
        )
        params["oauth_signature"] = base64.b64encode(signature).decode("ascii")
        return params

    def authorization_header(self, method: str, url: str, body: bytes = b"") -> str:
        """``OAuth k="v",...``; only the signature is percent-encoded, as Mastercard sends it."""
        params = self.oauth_params(method, url, body)
        params["oauth_signature"] = percent_encode(params["oauth_signature"])
        return "OAuth " + ",".join(f'{k}="{v}"' for k, v in params.items())


class MastercardOAuth1Auth(httpx.Auth):
    """Signs each outgoing request (each retry gets a fresh nonce and timestamp).

    The body hash covers the exact bytes of ``request.content``, so set the body (already
    encrypted) before the request reaches the client. Works with ``Client`` and ``AsyncClient``.
    """

    requires_request_body = True

    def __init__(self, signer: OAuth1Signer) -> None:
        self._signer = signer

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        request.headers["Authorization"] = self._signer.authorization_header(
            request.method, str(request.url), request.content
        )
        yield request


def _check_header_safe(name: str, value: str) -> None:
    if not value or _HEADER_UNSAFE.search(value):
        raise ValueError(f"{name} must be non-empty without quotes, commas, '%' or spaces")
