"""Publish points-adjustment commands as another team's service would: confluent-kafka.

Two framings, both read by points-adjuster (docs/producers.md):

``--framing confluent`` (the default when ``--registry-url`` is given)
    Confluent's ``AvroSerializer`` with a schema registry: the schema is registered under the
    subject ``<topic>-value`` and each value is ``00`` + the 4-byte schema id + the Avro body.
``--framing single-object``
    No registry: Avro single-object encoding written with fastavro, ``C3 01`` + the 8-byte
    CRC-64-AVRO fingerprint of the schema (little-endian) + the Avro body.

Every record is keyed by the account reference, ``acct-`` + the first 32 hex digits of the
SHA-256 of the account number, so one account's commands stay in order. One line per command
is printed: its idempotency key.

    pip install 'confluent-kafka[avro,schemaregistry]'
    python produce_command.py --bootstrap-servers localhost:9092 \\
        --registry-url http://localhost:8081 --account 5500000000000004 --points 150
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import fastavro
from confluent_kafka import Producer, SerializingProducer
from confluent_kafka.schema_registry import SchemaRegistryClient
from confluent_kafka.schema_registry.avro import AvroSerializer
from confluent_kafka.serialization import StringSerializer

DEFAULT_TOPIC = "points-adjustments.requested.v1"
DEFAULT_SCHEMA = (
    Path(__file__).resolve().parents[2] / "schemas" / "points_adjustment_requested.avsc"
)
SINGLE_OBJECT_MARKER = b"\xc3\x01"


def account_ref(account_number: str) -> str:
    """The record key: never the account number itself."""
    return "acct-" + hashlib.sha256(account_number.encode("utf-8")).hexdigest()[:32]


def make_command(account: str, points: int, channel: str | None) -> dict[str, Any]:
    """One command, with a fresh idempotency key (reuse the key to retry the same command)."""
    return {
        "idempotency_key": f"example-{uuid.uuid4()}",
        "bank_account_number": account,
        "points_to_adjust": points,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Apology for a delayed delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": str(uuid.uuid4()),
        "requested_by": "example-producer-python",
        "occurred_at": datetime.now(UTC),
        "metadata": {"ticket": "CS-1234"},
        "channel": channel,
    }


def single_object(schema: dict[str, Any], record: dict[str, Any]) -> bytes:
    """``C3 01`` + the schema's CRC-64-AVRO fingerprint (little-endian) + the Avro body."""
    parsed = fastavro.parse_schema(schema)
    canonical = fastavro.schema.to_parsing_canonical_form(parsed)
    fingerprint = bytes.fromhex(fastavro.schema.fingerprint(canonical, "CRC-64-AVRO"))
    body = io.BytesIO()
    fastavro.schemaless_writer(body, parsed, record)
    return SINGLE_OBJECT_MARKER + fingerprint + body.getvalue()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bootstrap-servers", required=True)
    parser.add_argument("--topic", default=DEFAULT_TOPIC)
    parser.add_argument("--registry-url", help="the schema registry (Confluent API)")
    parser.add_argument("--framing", choices=["confluent", "single-object"])
    parser.add_argument("--schema", type=Path, default=DEFAULT_SCHEMA)
    parser.add_argument("--account", default="5500000000000004", help="1-30 digits")
    parser.add_argument("--points", type=int, default=100, help="non-zero; negative deducts")
    parser.add_argument("--channel", default="example", help="where it was asked for")
    parser.add_argument("--count", type=int, default=1)
    args = parser.parse_args(argv)
    framing = args.framing or ("confluent" if args.registry_url else "single-object")
    if framing == "confluent" and not args.registry_url:
        parser.error("--framing confluent needs --registry-url")
    schema_text = args.schema.read_text(encoding="utf-8")
    commands = [make_command(args.account, args.points, args.channel) for _ in range(args.count)]
    delivery_errors: list[str] = []

    def delivered(error: Any, message: Any) -> None:
        if error is not None:
            delivery_errors.append(str(error))

    base = {"bootstrap.servers": args.bootstrap_servers, "enable.idempotence": True}
    if framing == "confluent":
        registry = SchemaRegistryClient({"url": args.registry_url})
        producer: Any = SerializingProducer(
            {
                **base,
                "key.serializer": StringSerializer("utf_8"),
                "value.serializer": AvroSerializer(registry, schema_text),
            }
        )
        for command in commands:
            key = account_ref(command["bank_account_number"])
            producer.produce(args.topic, key=key, value=command, on_delivery=delivered)
    else:
        producer = Producer(base)
        schema = json.loads(schema_text)
        for command in commands:
            key_bytes = account_ref(command["bank_account_number"]).encode("utf-8")
            value = single_object(schema, command)
            producer.produce(args.topic, key=key_bytes, value=value, on_delivery=delivered)
    remaining = producer.flush(30)
    if framing == "confluent":
        registry.close()
    if remaining or delivery_errors:
        print(f"not delivered: {remaining} pending, errors {delivery_errors}", file=sys.stderr)
        return 1
    for command in commands:
        print(command["idempotency_key"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
