"""Avro schema resolution rules (service/tools/avro_compat.py), each case cross-checked with
fastavro actually resolving a datum written with the writer schema into the reader schema:
the rules and an independent implementation agree on every example."""

from __future__ import annotations

import io
import itertools
import json
import random
from collections.abc import Iterator
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


# --- random pairs: whatever the rules call compatible, fastavro resolves -----------------------

PRIMITIVE_DATA: dict[str, Any] = {
    "null": lambda rng: None,
    "boolean": lambda rng: rng.random() < 0.5,
    "int": lambda rng: rng.randint(-1000, 1000),
    "long": lambda rng: rng.randint(-(2**40), 2**40),
    "float": lambda rng: float(rng.randint(-100, 100)),
    "double": lambda rng: rng.random(),
    "bytes": lambda rng: rng.choice([b"x", b"yz", b""]),  # UTF-8: bytes may be read as string
    "string": lambda rng: rng.choice(["a", "bc", ""]),
}
KINDS = list(PRIMITIVE_DATA)


def _random_type(rng: random.Random, depth: int, names: Iterator[int]) -> Any:
    roll = rng.random()
    if depth > 2 or roll < 0.5:
        return rng.choice(KINDS[1:])
    if roll < 0.6:
        return ["null", rng.choice(KINDS[1:])]
    if roll < 0.7:
        return {
            "type": "enum",
            "name": f"E{next(names)}",
            "symbols": ["A", "B", "C"][: rng.randint(1, 3)],
        }
    if roll < 0.8:
        return {"type": "array", "items": _random_type(rng, depth + 1, names)}
    if roll < 0.9:
        return {"type": "map", "values": _random_type(rng, depth + 1, names)}
    return _random_record(rng, depth + 1, names)


def _random_record(rng: random.Random, depth: int, names: Iterator[int]) -> dict[str, Any]:
    fields = [
        {"name": f"f{index}", "type": _random_type(rng, depth, names)}
        for index in range(rng.randint(1, 4))
    ]
    return {"type": "record", "name": f"R{next(names)}", "fields": fields}


def _mutate(rng: random.Random, schema: Any) -> Any:
    """A changed copy: each node may be swapped for another type, widened, narrowed..."""
    if isinstance(schema, str):
        roll = rng.random()
        if roll < 0.15:
            return rng.choice(KINDS[1:])
        if roll < 0.3:
            return ["null", schema]
        return schema
    if isinstance(schema, list):
        return schema if rng.random() < 0.7 else schema[1]
    kind = schema["type"]
    if kind == "enum":
        symbols = ["A", "B", "C", "D"][: rng.randint(1, 4)]
        changed = {**schema, "symbols": symbols}
        if rng.random() < 0.3:
            changed["default"] = symbols[0]
        return changed
    if kind == "array":
        return {**schema, "items": _mutate(rng, schema["items"])}
    if kind == "map":
        return {**schema, "values": _mutate(rng, schema["values"])}
    fields = [{**field, "type": _mutate(rng, field["type"])} for field in schema["fields"]]
    if len(fields) > 1 and rng.random() < 0.2:
        fields.pop(rng.randrange(len(fields)))
    if rng.random() < 0.3:
        added: dict[str, Any] = {"name": f"new{len(fields)}", "type": "int"}
        if rng.random() < 0.5:
            added["default"] = 0
        fields.append(added)
    return {**schema, "fields": fields}


def _datum(rng: random.Random, schema: Any) -> Any:
    if isinstance(schema, str):
        return PRIMITIVE_DATA[schema](rng)
    if isinstance(schema, list):
        return _datum(rng, rng.choice(schema))
    kind = schema["type"]
    if kind == "enum":
        return rng.choice(schema["symbols"])
    if kind == "array":
        return [_datum(rng, schema["items"]) for _ in range(rng.randint(0, 2))]
    if kind == "map":
        return {f"k{i}": _datum(rng, schema["values"]) for i in range(rng.randint(0, 2))}
    return {field["name"]: _datum(rng, field["type"]) for field in schema["fields"]}


def test_whatever_the_rules_call_compatible_fastavro_resolves() -> None:
    rng = random.Random(14)
    verdicts = {True: 0, False: 0}
    for _ in range(400):
        names = itertools.count()
        writer = _random_record(rng, 0, names)
        reader = _mutate(rng, json.loads(json.dumps(writer)))
        compatible = not incompatibilities(reader, writer)
        verdicts[compatible] += 1
        for _ in range(3):
            case = Case("random", reader, writer, _datum(rng, writer), compatible)
            if compatible:
                assert _resolves_with_fastavro(case), (reader, writer, case.datum)
    assert min(verdicts.values()) > 50, verdicts  # both verdicts were exercised
