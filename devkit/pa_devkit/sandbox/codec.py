"""Request-body codecs of the sandbox: plain JSON, and JWE as PAS speaks it.

A codec turns the body bytes as sent into the plaintext JSON object (step "decode" of
``POST points-adjustments``) and decides how the 200 answer to that very request is
encoded. Two are shipped:

- :class:`PlainCodec`: plain JSON both ways; the sandbox's default (no security).
- :class:`JweCodec`: the body must be ``{"encryptedValue"|"encryptedData"|"encryptedPayload":
  "<compact JWE>"}`` addressed to the PAS encryption key; the answer comes back in the same
  field name, encrypted to the client's certificate when one is configured, else as plain
  JSON.

Every refusal is HTTP 400 with Source ``rewards-points-api``:

    ==========================  =====================================================
    ReasonCode                  when
    ==========================  =====================================================
    INVALID_JSON                the body (or the decrypted plaintext) is not one strict
                                JSON object
    ENCRYPTION_REQUIRED         JWE codec: a JSON object without any encrypted field
    INVALID_ENCRYPTED_PAYLOAD   the encrypted body or the JWE is malformed: other keys
                                beside the encrypted field, several encrypted fields, a
                                non-string value, not five segments, bad base64url, a
                                bad or unsupported header, a wrong IV or tag length
    INVALID_KID                 the JWE names another key (``kid``) than the PAS
                                encryption certificate's, or none
    DECRYPTION_FAILED           the key unwrap or the GCM tag check failed; which one is
                                logged, never answered (that would be an oracle)
    ==========================  =====================================================

The precise :class:`~service.security.errors.DecryptionError` reason goes to the log
(``sandbox.codec.refused``), never the plaintext or the JWE.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from aiohttp import web

from pa_devkit.sandbox.envelope import ApiError, ReasonCode
from service.security.errors import DecryptionError
from service.security.jwe import JweDecrypter, JweEncrypter, unwrap_payload, wrap_payload

log = structlog.get_logger("pa_devkit.sandbox")

ResponseEncoder = Callable[[Mapping[str, Any]], bytes]
"""Turns a success payload into the response body bytes."""

_MALFORMED_JWE_REASONS = frozenset(
    {
        "not_five_parts",
        "bad_base64",
        "bad_header",
        "unsupported_algorithm",
        "truncated",
        "bad_iv",
        "bad_envelope",
    }
)


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


class PlainCodec:
    """Plain JSON both ways: the sandbox's codec when security is off."""

    def decode(self, body: bytes, headers: Mapping[str, str]) -> DecodedBody:
        """The body parsed by :func:`parse_json_object`; the answer is plain JSON."""
        return DecodedBody(parse_json_object(body), encode_json)


class JweCodec:
    """JWE-encrypted JSON, as PAS expects it (see the module docstring for the refusals).

    Args:
        decrypter: holds the PAS private key and the one ``kid`` accepted; or several, each
            with its own ``kid`` (PAS's encryption key being rotated): a JWE is decrypted by
            the one whose ``kid`` it names.
        response_encrypter: encrypts 200 answers to the client's certificate; ``None``
            answers them in plain JSON. ``respond_to`` changes it at run time (the client's
            response key being rotated); an answer already being encoded keeps the key it
            started with.
    """

    def __init__(
        self,
        decrypter: JweDecrypter | Sequence[JweDecrypter],
        response_encrypter: JweEncrypter | None,
    ) -> None:
        self._decrypters = (decrypter,) if isinstance(decrypter, JweDecrypter) else tuple(decrypter)
        if not self._decrypters:
            raise ValueError("JweCodec needs at least one decrypter")
        self._response_encrypter = response_encrypter

    def respond_to(self, encrypter: JweEncrypter | None) -> None:
        """Encrypt the answers decoded from now on to ``encrypter`` (``None``: plain JSON)."""
        self._response_encrypter = encrypter

    def decode(self, body: bytes, headers: Mapping[str, str]) -> DecodedBody:
        """Unwrap, decrypt and parse the body; the answer uses the field name received."""
        document = parse_json_object(body)
        try:
            found = unwrap_payload(document)
        except DecryptionError as exc:
            raise _refused(exc.reason, ReasonCode.INVALID_ENCRYPTED_PAYLOAD, exc.detail) from exc
        if found is None:
            log.info("sandbox.codec.refused", reason="not_encrypted")
            raise ApiError.pas(
                400,
                ReasonCode.ENCRYPTION_REQUIRED,
                "the request body must be encrypted: "
                '{"encryptedValue"|"encryptedData"|"encryptedPayload": "<compact JWE>"}',
            )
        field, compact = found
        if len(document) > 1:
            raise _refused(
                "extra_fields",
                ReasonCode.INVALID_ENCRYPTED_PAYLOAD,
                f"an encrypted body holds {field} and nothing else",
            )
        plaintext = self._decrypt(compact)
        return DecodedBody(parse_json_object(plaintext), self._encoder_for(field))

    def _decrypt(self, compact: str) -> bytes:
        """With the decrypter whose ``kid`` the JWE names (the header is read before any
        RSA work); ``INVALID_KID`` when none is."""
        refusal: DecryptionError | None = None
        for decrypter in self._decrypters:
            try:
                return decrypter.decrypt(compact)
            except DecryptionError as exc:
                if exc.reason != "kid_mismatch":
                    raise _decryption_refusal(exc) from exc
                refusal = refusal or exc
        assert refusal is not None
        raise _decryption_refusal(refusal) from refusal

    def _encoder_for(self, field: str) -> ResponseEncoder:
        encrypter = self._response_encrypter
        if encrypter is None:
            return encode_json

        def encode(payload: Mapping[str, Any]) -> bytes:
            return encode_json(wrap_payload(encrypter.encrypt(encode_json(payload)), field))

        return encode


def _decryption_refusal(exc: DecryptionError) -> ApiError:
    if exc.reason == "kid_mismatch":
        return _refused(
            exc.reason, ReasonCode.INVALID_KID, "the JWE is not addressed to the PAS encryption key"
        )
    if exc.reason in _MALFORMED_JWE_REASONS:
        return _refused(exc.reason, ReasonCode.INVALID_ENCRYPTED_PAYLOAD, exc.detail)
    return _refused(exc.reason, ReasonCode.DECRYPTION_FAILED, "the JWE cannot be decrypted")


def _refused(reason: str, reason_code: ReasonCode, description: str) -> ApiError:
    log.info("sandbox.codec.refused", reason=reason, reason_code=str(reason_code))
    if reason_code is ReasonCode.INVALID_ENCRYPTED_PAYLOAD:
        description = f"malformed encrypted payload: {description}"
    return ApiError.pas(400, reason_code, description)


# --- JSON ---------------------------------------------------------------------------------


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
    except RecursionError as exc:  # thousands of nested brackets in a small body
        raise _invalid_json("request body nests too deeply") from exc
    except ValueError as exc:  # from the two hooks
        raise _invalid_json(str(exc)) from exc
    if not isinstance(value, dict):
        raise _invalid_json("request body must be a JSON object")
    return value


def encode_json(payload: Mapping[str, Any]) -> bytes:
    """Compact UTF-8 JSON."""
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def json_response(
    payload: Mapping[str, Any], *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """``payload`` as an ``application/json`` response."""
    return json_body_response(encode_json(payload), status=status, headers=headers)


def json_body_response(
    body: bytes, *, status: int = 200, headers: Mapping[str, str] | None = None
) -> web.Response:
    """Ready-encoded JSON bytes as an ``application/json`` response."""
    return web.Response(body=body, status=status, headers=headers, content_type="application/json")


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
