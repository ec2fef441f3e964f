"""Schema fingerprints: the standard one, and the non-standard ones popular libraries compute.

The single-object header names its writer schema by the CRC-64-AVRO fingerprint of the
schema's Parsing Canonical Form (Avro specification, "Parsing Canonical Form for Schemas").
Not every library computes that form as the specification says, so a record framed by one of
them carries a fingerprint no reader computing the standard form knows. The service
recognises, for every schema it ships, the fingerprint of each form below:

``standard``
    The specification's form (what Java's ``SchemaNormalization``, fastavro and this module
    compute): a primitive type written as an object, ``{"type": "long", "logicalType":
    "timestamp-millis"}``, becomes ``"long"``; a named type is written in full once, then by
    its full name.
``avro-python``
    Apache avro-python (the ``avro`` package, 1.11 and 1.12): a primitive type with any
    attribute besides ``type`` (a ``logicalType``, ``avro.java.string``...) stays an object
    holding only its type, ``{"type":"long"}``; a ``fixed`` type is written in full at every
    use (records and enums in full once, as the specification says).
``goavro``
    linkedin/goavro v2 (linkedin/goavro#174): a primitive with attributes besides ``type``
    stays ``{"type":"long"}`` too, except ``string`` with ``logicalType`` ``uuid``, which is
    ``"string"``, and ``bytes`` with ``logicalType`` ``decimal``, which is
    ``{"name":"bytes.decimal","type":"bytes"}``; a named type is written in full once.

For the shipped schemas (primitives annotated only with ``timestamp-millis``, no named type
used twice) the two non-standard forms are the same string. ``tests/unit/test_fingerprints``
checks each form against the library itself: fastavro for ``standard``, the ``avro``
package for ``avro-python``, and a small Go program built with goavro for ``goavro``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Literal

from service.codec.crc64 import crc64_avro

Style = Literal["standard", "avro-python", "goavro"]
STYLES: tuple[Style, ...] = ("standard", "avro-python", "goavro")

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})


def canonical_form(schema: Any, style: Style = "standard") -> str:
    """The Parsing Canonical Form of ``schema`` (its JSON, parsed) as ``style`` writes it."""
    return json.dumps(_Canonical(style).node(schema, ""), ensure_ascii=False, separators=(",", ":"))


def fingerprint(schema: Any, style: Style = "standard") -> bytes:
    """The 8 bytes a single-object header carries for ``schema``: the CRC-64-AVRO of its
    canonical form in ``style``, little-endian."""
    return crc64_avro(canonical_form(schema, style).encode("utf-8")).to_bytes(8, "little")


def fingerprints(schema: Any) -> dict[Style, bytes]:
    """The fingerprint of ``schema`` in every style (some may be equal)."""
    return {style: fingerprint(schema, style) for style in STYLES}


class _Canonical:
    def __init__(self, style: Style) -> None:
        self._style = style
        self._defined: dict[str, tuple[Mapping[str, Any], str]] = {}
        self._depth = 0

    def node(self, schema: Any, namespace: str) -> Any:
        if isinstance(schema, str):
            return self._reference(schema, namespace)
        if isinstance(schema, list):
            return [self.node(branch, namespace) for branch in schema]
        if not isinstance(schema, Mapping):
            raise ValueError(f"not an Avro schema: {type(schema).__name__}")
        kind = schema.get("type")
        if isinstance(kind, str) and kind in PRIMITIVES:
            return self._primitive(kind, schema)
        if isinstance(kind, str) and kind in NAMED:
            return self._named(kind, schema, namespace)
        if kind in ("array", "map"):
            inner = "items" if kind == "array" else "values"
            return {"type": kind, inner: self.node(schema[inner], namespace)}
        return self.node(kind, namespace)  # {"type": <a name, a union or a schema>}

    def _primitive(self, kind: str, schema: Mapping[str, Any]) -> Any:
        if self._style == "standard" or set(schema) == {"type"}:
            return kind
        logical = schema.get("logicalType")
        if self._style == "goavro" and kind == "string" and logical == "uuid":
            return kind
        if self._style == "goavro" and kind == "bytes" and logical == "decimal":
            return {"name": "bytes.decimal", "type": "bytes"}
        return {"type": kind}

    def _reference(self, name: str, namespace: str) -> Any:
        if name in PRIMITIVES:
            return name
        full = _full_name(name, namespace)
        if (
            self._style == "avro-python"
            and full in self._defined
            and self._defined[full][0].get("type") == "fixed"
        ):
            if self._depth > 64:  # a recursive type: its name ends the expansion
                return full
            definition, outer = self._defined[full]
            self._depth += 1
            try:
                return self._named(str(definition["type"]), definition, outer, again=True)
            finally:
                self._depth -= 1
        return full

    def _named(
        self, kind: str, schema: Mapping[str, Any], namespace: str, *, again: bool = False
    ) -> Any:
        name = str(schema["name"])
        given = schema.get("namespace")
        full = _full_name(name, str(given) if given is not None else namespace)
        if full in self._defined and not again:
            return self._reference(full, namespace)
        self._defined.setdefault(full, (schema, namespace))
        inner = full.rpartition(".")[0]
        out: dict[str, Any] = {"name": full, "type": kind}
        if kind in ("record", "error"):
            out["fields"] = [
                {"name": field["name"], "type": self.node(field["type"], inner)}
                for field in schema["fields"]
            ]
        elif kind == "enum":
            out["symbols"] = list(schema["symbols"])
        else:
            out["size"] = int(schema["size"])
        return out


def _full_name(name: str, namespace: str) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"
