"""docs/producers.md states the exact bytes of every released schema version, computed here
from schemas/released/ two ways (fastavro, and the service's own CRC-64-AVRO), and only reasons
and headers that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

import fastavro
from fastavro.schema import fingerprint, to_parsing_canonical_form

from service.codec.avro import schema_fingerprint
from service.domain.command import account_ref

ROOT = Path(__file__).resolve().parents[2]
GUIDE = ROOT / "docs" / "producers.md"
RELEASED = ROOT / "schemas" / "released"
ROW = re.compile(r"^\| `(\w+)` \| v(\d+) \| `(c3 01(?: [0-9a-f]{2}){8})` \| `(-?\d+)` \|$")


def _expected_rows() -> dict[tuple[str, int], tuple[str, int]]:
    rows = {}
    for path in RELEASED.glob("*.avsc"):
        raw = json.loads(path.read_text(encoding="utf-8"))
        version = int(re.search(r"\.v(\d+)\.avsc$", path.name)[1])  # type: ignore[index]
        by_fastavro = bytes.fromhex(fingerprint(to_parsing_canonical_form(raw), "CRC-64-AVRO"))
        ours = schema_fingerprint(fastavro.parse_schema(raw)).to_bytes(8, "little")
        assert by_fastavro == ours, path.name
        header = (b"\xc3\x01" + ours).hex(" ")
        rows[(str(raw["name"]), version)] = (header, int.from_bytes(ours, "little", signed=True))
    return rows


def test_the_header_bytes_of_every_released_version_are_listed() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    listed = {}
    for line in text.splitlines():
        match = ROW.match(line)
        if match:
            listed[(match[1], int(match[2]))] = (match[3], int(match[4]))
    assert listed == _expected_rows()


def test_the_dead_letter_reasons_listed_exist_in_the_codec() -> None:
    code = "\n".join(
        path.read_text(encoding="utf-8") for path in (ROOT / "service" / "codec").glob("*.py")
    )
    text = GUIDE.read_text(encoding="utf-8")
    section = text.split("## What gets dead-lettered, and why", 1)[1].split("\n## ", 1)[0]
    reasons = re.findall(r"^\| `([A-Z_]+)` \|", section, flags=re.MULTILINE)
    assert reasons
    for reason in reasons:
        assert f'"{reason}"' in code, reason


def test_the_key_is_described_as_the_service_computes_it() -> None:
    text = GUIDE.read_text(encoding="utf-8")
    assert "`acct-` followed by the first 32 hex digits (lower case) of the SHA-256" in text
    assert re.fullmatch(r"acct-[0-9a-f]{32}", account_ref("5500000000000004"))
