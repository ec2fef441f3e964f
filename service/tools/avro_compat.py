"""Whether one Avro schema can read what another wrote: the specification's schema resolution
("Schema Resolution" in the Avro 1.12 specification), checked on the parsed JSON schemas.

``incompatibilities(reader, writer)`` lists every reason a reader schema cannot read some
datum written with the writer schema (empty: it can read all of them). A change from ``old``
to ``new`` is

- BACKWARD compatible when ``new`` reads what ``old`` wrote:
  ``incompatibilities(reader=new, writer=old) == []``;
- FORWARD compatible when ``old`` reads what ``new`` writes:
  ``incompatibilities(reader=old, writer=new) == []``;
- FULL when both hold.

The rules, reader against writer:

- the same primitive type, or a promotion: int to long, float or double; long to float or
  double; float to double; string to bytes and bytes to string;
- records of the same name (unqualified, as the specification says, or a reader alias naming
  the writer's full name): every reader field is found in the writer by its name or one of
  its aliases and its type reads the writer's, or it has a default; writer fields the reader
  does not have are skipped;
- enums of the same name: every writer symbol is a reader symbol, unless the reader has a
  default symbol;
- fixed of the same name and size; arrays whose items and maps whose values resolve;
- a writer union: each of its branches resolves against the reader (a branch that does not
  fails the records written with it); a reader union read from a non-union writer: one of its
  branches resolves;
- logical types are read as their underlying types (the specification resolves on those).

Named types may be referenced by name and may be recursive: a (reader, writer) pair of named
types already being compared is taken as compatible, so recursion ends.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from service.errors import PointsAdjusterError

PRIMITIVES = frozenset({"null", "boolean", "int", "long", "float", "double", "bytes", "string"})
NAMED = frozenset({"record", "error", "enum", "fixed"})
PROMOTIONS: Mapping[str, frozenset[str]] = {
    "int": frozenset({"long", "float", "double"}),
    "long": frozenset({"float", "double"}),
    "float": frozenset({"double"}),
    "string": frozenset({"bytes"}),
    "bytes": frozenset({"string"}),
}


class SchemaShapeError(PointsAdjusterError):
    """The JSON is not an Avro schema this module understands; the message says where."""


@dataclass(frozen=True)
class Incompatibility:
    """One reason the reader cannot read what the writer wrote, at ``path`` (dotted, from the
    top-level record: ``Record.field.nested``)."""

    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


def incompatibilities(reader: Any, writer: Any) -> list[Incompatibility]:
    """Every reason ``reader`` (parsed JSON) cannot read data written with ``writer``."""
    checker = _Checker(_Names.of(reader), _Names.of(writer))
    return checker.check(reader, writer, _top_path(reader, writer))


def _top_path(reader: Any, writer: Any) -> str:
    for schema in (reader, writer):
        if isinstance(schema, dict) and isinstance(schema.get("name"), str):
            return str(schema["name"]).rsplit(".", 1)[-1]
    return "(root)"


# --- named types ------------------------------------------------------------------------------


def _full_name(name: str, namespace: str | None) -> str:
    if "." in name or not namespace:
        return name
    return f"{namespace}.{name}"


class _Names:
    """The named types of one schema, by full name, each with its enclosing namespace."""

    def __init__(self) -> None:
        self.types: dict[str, dict[str, Any]] = {}
        self.namespace_of: dict[int, str | None] = {}

    @classmethod
    def of(cls, schema: Any) -> _Names:
        names = cls()
        names._collect(schema, None)
        return names

    def _collect(self, schema: Any, namespace: str | None) -> None:
        if isinstance(schema, list):
            for branch in schema:
                self._collect(branch, namespace)
            return
        if not isinstance(schema, dict):
            return
        kind = schema.get("type")
        if kind in NAMED:
            self._collect_named(schema, str(kind), namespace)
        elif kind == "array":
            self._collect(schema.get("items"), namespace)
        elif kind == "map":
            self._collect(schema.get("values"), namespace)
        elif isinstance(kind, dict | list):
            self._collect(kind, namespace)

    def _collect_named(self, schema: dict[str, Any], kind: str, namespace: str | None) -> None:
        name = schema.get("name")
        if not isinstance(name, str) or not name:
            raise SchemaShapeError(f"a {kind} without a name: {_short(schema)}")
        own = schema.get("namespace")
        if "." in name:
            namespace = name.rsplit(".", 1)[0]
        elif isinstance(own, str):
            namespace = own or None
        full = _full_name(name, namespace)
        self.types[full] = schema
        self.namespace_of[id(schema)] = namespace
        if kind not in ("record", "error"):
            return
        fields = schema.get("fields")
        if not isinstance(fields, list):
            raise SchemaShapeError(f"record {full} has no list of fields")
        for field in fields:
            if not isinstance(field, dict) or "type" not in field or "name" not in field:
                raise SchemaShapeError(f"record {full}: a field without a name or a type")
            self._collect(field["type"], namespace)

    def full_name(self, schema: dict[str, Any]) -> str:
        return _full_name(str(schema["name"]), self.namespace_of.get(id(schema)))

    def aliases(self, schema: dict[str, Any]) -> set[str]:
        namespace = self.namespace_of.get(id(schema))
        return {_full_name(str(alias), namespace) for alias in schema.get("aliases", ())}

    def resolve(self, schema: Any, namespace_hint: str | None = None) -> Any:
        """A named type referenced by name becomes its definition; anything else as is."""
        if isinstance(schema, str) and schema not in PRIMITIVES:
            for candidate in (schema, _full_name(schema, namespace_hint)):
                if candidate in self.types:
                    return self.types[candidate]
            for full, definition in self.types.items():  # a short name, defined elsewhere
                if full.rsplit(".", 1)[-1] == schema:
                    return definition
            raise SchemaShapeError(f"unknown type {schema!r}")
        if isinstance(schema, dict) and isinstance(schema.get("type"), dict | list):
            return self.resolve(schema["type"], namespace_hint)
        if isinstance(schema, dict) and schema.get("type") in PRIMITIVES:
            return schema["type"]  # {"type": "long", "logicalType": ...} reads as "long"
        if isinstance(schema, dict) and isinstance(schema.get("type"), str):
            kind = schema["type"]
            if kind not in PRIMITIVES and kind not in NAMED and kind not in ("array", "map"):
                return self.resolve(kind, namespace_hint)
        return schema


# --- the rules --------------------------------------------------------------------------------


class _Checker:
    def __init__(self, reader_names: _Names, writer_names: _Names) -> None:
        self._r = reader_names
        self._w = writer_names
        self._in_progress: set[tuple[int, int]] = set()

    def check(self, reader: Any, writer: Any, path: str) -> list[Incompatibility]:
        reader = self._r.resolve(reader)
        writer = self._w.resolve(writer)
        if isinstance(writer, list):
            found: list[Incompatibility] = []
            for branch in writer:
                found += self.check(reader, branch, f"{path}<{_kind(self._w.resolve(branch))}>")
            return found
        if isinstance(reader, list):
            return self._reader_union(reader, writer, path)
        return self._single(reader, writer, path)

    def _single(self, reader: Any, writer: Any, path: str) -> list[Incompatibility]:
        reader_kind = _kind(reader)
        writer_kind = _kind(writer)
        if reader_kind in PRIMITIVES or writer_kind in PRIMITIVES:
            promoted = reader_kind in PROMOTIONS.get(writer_kind, ())
            ok = reader_kind == writer_kind or promoted
            return [] if ok else [_mismatch(path, reader_kind, writer_kind)]
        if reader_kind != writer_kind and {reader_kind, writer_kind} != {"record", "error"}:
            return [_mismatch(path, reader_kind, writer_kind)]
        if reader_kind == "array":
            return self.check(reader.get("items"), writer.get("items"), f"{path}[]")
        if reader_kind == "map":
            return self.check(reader.get("values"), writer.get("values"), f"{path}{{}}")
        return self._named(reader_kind, reader, writer, path)

    def _named(
        self, kind: str, reader: dict[str, Any], writer: dict[str, Any], path: str
    ) -> list[Incompatibility]:
        name_problem = self._names_match(reader, writer, path)
        if name_problem is not None:
            return [name_problem]
        if kind == "fixed":
            if reader.get("size") == writer.get("size"):
                return []
            return [
                Incompatibility(
                    path,
                    f"fixed {self._r.full_name(reader)} has size {reader.get('size')} but "
                    f"the writer's has {writer.get('size')}",
                )
            ]
        if kind == "enum":
            return self._enum(reader, writer, path)
        return self._record(reader, writer, path)

    def _reader_union(self, reader: Sequence[Any], writer: Any, path: str) -> list[Incompatibility]:
        for branch in reader:
            if not self.check(branch, writer, path):
                return []
        kinds = ", ".join(_kind(self._r.resolve(branch)) for branch in reader)
        return [
            Incompatibility(
                path,
                f"the writer's {_describe(writer)} matches no branch of the reader's union "
                f"[{kinds}]",
            )
        ]

    def _names_match(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str
    ) -> Incompatibility | None:
        reader_full = self._r.full_name(reader)
        writer_full = self._w.full_name(writer)
        same_short = reader_full.rsplit(".", 1)[-1] == writer_full.rsplit(".", 1)[-1]
        if same_short or writer_full in self._r.aliases(reader):
            return None
        return Incompatibility(
            path,
            f"the reader's {_kind(reader)} is named {reader_full} and the writer's "
            f"{writer_full} (rename only by giving the reader an alias of the old name)",
        )

    def _enum(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str
    ) -> list[Incompatibility]:
        reader_symbols = list(reader.get("symbols", ()))
        missing = [s for s in writer.get("symbols", ()) if s not in reader_symbols]
        if not missing or "default" in reader:
            return []
        return [
            Incompatibility(
                path,
                f"enum {self._r.full_name(reader)}: the writer's symbol(s) "
                f"{', '.join(missing)} are not the reader's, which has no default symbol",
            )
        ]

    def _record(
        self, reader: dict[str, Any], writer: dict[str, Any], path: str
    ) -> list[Incompatibility]:
        key = (id(reader), id(writer))
        if key in self._in_progress:
            return []  # recursive: assumed compatible while being compared
        self._in_progress.add(key)
        try:
            writer_fields = {str(f["name"]): f for f in writer.get("fields", ())}
            found: list[Incompatibility] = []
            for field in reader.get("fields", ()):
                name = str(field["name"])
                match = writer_fields.get(name)
                if match is None:
                    for alias in field.get("aliases", ()):
                        match = writer_fields.get(str(alias))
                        if match is not None:
                            break
                field_path = f"{path}.{name}"
                if match is None:
                    if "default" not in field:
                        found.append(
                            Incompatibility(
                                field_path,
                                "the reader's field has no default and the writer has no such "
                                "field",
                            )
                        )
                    continue
                found += self.check(field["type"], match["type"], field_path)
            return found
        finally:
            self._in_progress.discard(key)


def _kind(schema: Any) -> str:
    if isinstance(schema, str):
        return schema
    if isinstance(schema, list):
        return "union"
    if isinstance(schema, dict):
        kind = schema.get("type")
        return kind if isinstance(kind, str) else "union"
    raise SchemaShapeError(f"not an Avro schema: {_short(schema)}")


def _describe(schema: Any) -> str:
    if isinstance(schema, dict) and schema.get("type") in NAMED:
        return f"{schema['type']} {schema.get('name')}"
    return _kind(schema)


def _mismatch(path: str, reader_kind: str, writer_kind: str) -> Incompatibility:
    return Incompatibility(
        path, f"the writer's {writer_kind} cannot be read as the reader's {reader_kind}"
    )


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."
