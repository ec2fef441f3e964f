"""Avro schema resolution rules (service/tools/avro_compat.py), each case cross-checked with
fastavro actually resolving a datum written with the writer schema into the reader schema:
the rules and an independent implementation agree on every example."""

from __future__ import annotations

import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import fastavro
import pytest

from service.tools.avro_compat import SchemaShapeError, incompatibilities

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


def record(*fields: dict[str, Any], name: str = "Thing") -> dict[str, Any]:
    return {"type": "record", "name": name, "namespace": "test.compat", "fields": list(fields)}


def f(name: str, type_: Any, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, **extra}


COLOUR = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN"]}
COLOUR_MORE = {"type": "enum", "name": "Colour", "symbols": ["RED", "GREEN", "BLUE"]}
COLOUR_DEFAULT = {**COLOUR, "default": "RED"}


@dataclass(frozen=True)
class Case:
    id: str
    reader: Any
    writer: Any
    datum: Any
    compatible: bool
    message: str = ""


CASES = [
    Case("same", record(f("a", "string")), record(f("a", "string")), {"a": "x"}, True),
    Case(
        "field added with default",
        record(f("a", "string"), f("b", "int", default=0)),
        record(f("a", "string")),
        {"a": "x"},
        True,
    ),
    Case(
        "field added without default",
        record(f("a", "string"), f("b", "int")),
        record(f("a", "string")),
        {"a": "x"},
        False,
        "Thing.b: the reader's field has no default",
    ),
    Case(
        "writer field the reader lacks is skipped",
        record(f("a", "string")),
        record(f("a", "string"), f("b", "int")),
        {"a": "x", "b": 1},
        True,
    ),
    Case(
        "changed type",
        record(f("a", "int")),
        record(f("a", "string")),
        {"a": "x"},
        False,
        "Thing.a: the writer's string cannot be read as the reader's int",
    ),
    Case("int promoted to long", record(f("a", "long")), record(f("a", "int")), {"a": 7}, True),
    Case("int promoted to double", record(f("a", "double")), record(f("a", "int")), {"a": 7}, True),
    Case("long promoted to float", record(f("a", "float")), record(f("a", "long")), {"a": 7}, True),
    Case(
        "long narrowed to int",
        record(f("a", "int")),
        record(f("a", "long")),
        {"a": 7},
        False,
        "writer's long cannot be read as the reader's int",
    ),
    Case(
        "double narrowed to float",
        record(f("a", "float")),
        record(f("a", "double")),
        {"a": 1.5},
        False,
        "writer's double cannot be read as the reader's float",
    ),
    Case(
        "string read as bytes", record(f("a", "bytes")), record(f("a", "string")), {"a": "x"}, True
    ),
    Case(
        "bytes read as string", record(f("a", "string")), record(f("a", "bytes")), {"a": b"x"}, True
    ),
    Case(
        "new enum symbol, reader without default",
        record(f("c", COLOUR)),
        record(f("c", COLOUR_MORE)),
        {"c": "BLUE"},
        False,
        "Thing.c: enum test.compat.Colour: the writer's symbol(s) BLUE",
    ),
    Case(
        "new enum symbol, reader with a default",
        record(f("c", COLOUR_DEFAULT)),
        record(f("c", COLOUR_MORE)),
        {"c": "BLUE"},
        True,
    ),
    Case(
        "enum symbol removed by the writer",
        record(f("c", COLOUR_MORE)),
        record(f("c", COLOUR)),
        {"c": "RED"},
        True,
    ),
    Case(
        "null made optional",
        record(f("a", ["null", "string"], default=None)),
        record(f("a", "string")),
        {"a": "x"},
        True,
    ),
    Case(
        "optional made required",
        record(f("a", "string")),
        record(f("a", ["null", "string"])),
        {"a": None},
        False,
        "Thing.a<null>: the writer's null cannot be read as the reader's string",
    ),
    Case(
        "union branch removed",
        record(f("a", ["null", "string"])),
        record(f("a", ["null", "string", "int"])),
        {"a": 3},
        False,
        "Thing.a<int>: the writer's int matches no branch",
    ),
    Case(
        "union read through a promotion",
        record(f("a", ["null", "double"])),
        record(f("a", ["null", "int"])),
        {"a": 3},
        True,
    ),
    Case(
        "record renamed without alias",
        record(f("a", "string"), name="Other"),
        record(f("a", "string")),
        {"a": "x"},
        False,
        "the reader's record is named test.compat.Other and the writer's test.compat.Thing",
    ),
    Case(
        "record renamed with an alias",
        {**record(f("a", "string"), name="Other"), "aliases": ["Thing"]},
        record(f("a", "string")),
        {"a": "x"},
        True,
    ),
    Case(
        "field renamed with an alias",
        record(f("b", "string", aliases=["a"])),
        record(f("a", "string")),
        {"a": "x"},
        True,
    ),
    Case(
        "fixed size changed",
        record(f("h", {"type": "fixed", "name": "Hash", "size": 8})),
        record(f("h", {"type": "fixed", "name": "Hash", "size": 4})),
        {"h": b"abcd"},
        False,
        "fixed test.compat.Hash has size 8",
    ),
    Case(
        "array items promoted",
        record(f("xs", {"type": "array", "items": "long"})),
        record(f("xs", {"type": "array", "items": "int"})),
        {"xs": [1, 2]},
        True,
    ),
    Case(
        "map values changed",
        record(f("m", {"type": "map", "values": "int"})),
        record(f("m", {"type": "map", "values": "string"})),
        {"m": {"k": "v"}},
        False,
        "Thing.m{}: the writer's string cannot be read as the reader's int",
    ),
    Case(
        "nested record field removed without default",
        record(f("n", record(f("x", "int"), f("y", "int"), name="Inner"))),
        record(f("n", record(f("x", "int"), name="Inner"))),
        {"n": {"x": 1}},
        False,
        "Thing.n.y: the reader's field has no default",
    ),
    Case(
        "logical type read as its underlying type",
        record(f("t", "long")),
        record(f("t", {"type": "long", "logicalType": "timestamp-millis"})),
        {"t": 5},
        True,
    ),
]


def _resolves_with_fastavro(case: Case) -> bool:
    buffer = io.BytesIO()
    writer = fastavro.parse_schema(json.loads(json.dumps(case.writer)))
    reader = fastavro.parse_schema(json.loads(json.dumps(case.reader)))
    fastavro.schemaless_writer(buffer, writer, case.datum)
    buffer.seek(0)
    try:
        fastavro.schemaless_reader(buffer, writer, reader)
    except fastavro.read.SchemaResolutionError:
        return False
    return True


@pytest.mark.parametrize("case", CASES, ids=[case.id for case in CASES])
def test_rules_agree_with_fastavro_resolving_a_datum(case: Case) -> None:
    found = incompatibilities(reader=case.reader, writer=case.writer)
    assert (not found) is case.compatible, found
    if not case.compatible:
        assert case.message in "\n".join(str(item) for item in found)
    assert _resolves_with_fastavro(case) is case.compatible


def test_recursive_named_types_end() -> None:
    node = {
        "type": "record",
        "name": "Node",
        "fields": [{"name": "next", "type": ["null", "Node"], "default": None}],
    }
    assert incompatibilities(node, node) == []
    grown = {**node, "fields": [*node["fields"], {"name": "v", "type": "int", "default": 0}]}
    assert incompatibilities(grown, node) == []
    assert incompatibilities(node, grown) == []


def test_named_types_referenced_by_name_are_resolved() -> None:
    writer = record(f("c", COLOUR), f("d", "Colour"))
    reader = record(f("c", COLOUR), f("d", "test.compat.Colour"))
    assert incompatibilities(reader, writer) == []
    reader_narrow = record(f("c", COLOUR), f("d", "Colour"))
    writer_wide = record(f("c", COLOUR_MORE), f("d", "Colour"))
    found = incompatibilities(reader_narrow, writer_wide)
    assert [item.path for item in found] == ["Thing.c", "Thing.d"]


def test_every_shipped_schema_reads_its_own_data_and_the_released_versions() -> None:
    for path in SCHEMAS.glob("*.avsc"):
        schema = json.loads(path.read_text(encoding="utf-8"))
        assert incompatibilities(schema, schema) == [], path.name
    v1 = json.loads((SCHEMAS / "released" / "points_adjustment_requested.v1.avsc").read_text())
    v2 = json.loads((SCHEMAS / "released" / "points_adjustment_requested.v2.avsc").read_text())
    assert incompatibilities(reader=v2, writer=v1) == []
    assert incompatibilities(reader=v1, writer=v2) == []


def test_what_is_not_a_schema_is_named() -> None:
    with pytest.raises(SchemaShapeError, match="unknown type 'Missing'"):
        incompatibilities(record(f("a", "Missing")), record(f("a", "string")))
    with pytest.raises(SchemaShapeError, match="without a name or a type"):
        incompatibilities(record({"name": "a"}), record(f("a", "string")))
