"""The request/response body codec of PAS: JWE-encrypted JSON (docs/pas.md, encryption)."""

from __future__ import annotations

import json
from typing import Protocol

from service.security.errors import DecryptionError
from service.security.jwe import JweEncrypter, unwrap_payload, wrap_payload


class Decrypter(Protocol):
    """A ``JweDecrypter``, or the credential store trying its current and previous keys."""

    def decrypt(self, compact: str) -> bytes: ...


class JweBodyCodec:
    """Encrypts the whole plaintext body into one field; decrypts answers that come encrypted."""

    content_type = "application/json"

    def __init__(self, encrypter: JweEncrypter, decrypter: Decrypter, field: str) -> None:
        self._encrypter = encrypter
        self._decrypter = decrypter
        self._field = field

    def encode(self, body: dict[str, object]) -> bytes:
        plaintext = json.dumps(body, separators=(",", ":")).encode("utf-8")
        wrapped = wrap_payload(self._encrypter.encrypt(plaintext), self._field)
        return json.dumps(wrapped, separators=(",", ":")).encode("utf-8")

    def decode(self, body: bytes) -> object:
        """The answer's JSON, decrypted when it carries a JWE; ``ValueError`` when unreadable."""
        try:
            return self._decode(body)
        except RecursionError as exc:  # a hostile answer nesting thousands of brackets
            raise ValueError("answer nests too deeply") from exc

    def _decode(self, body: bytes) -> object:
        document = json.loads(body)
        try:
            found = unwrap_payload(document)
        except DecryptionError as exc:
            raise ValueError(f"malformed encrypted answer: {exc.reason}") from exc
        if found is None:
            return document
        _, compact = found
        try:
            return json.loads(self._decrypter.decrypt(compact))
        except DecryptionError as exc:
            raise ValueError(f"encrypted answer cannot be decrypted: {exc.reason}") from exc
