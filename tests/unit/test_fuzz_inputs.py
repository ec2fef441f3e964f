"""Fuzzing every parser of outside input: each input is routed, none escapes, none lingers.

Entry points, and the one exception each may raise:

(a) the command decoder (``service.app.command_decoder``) on Kafka record values: nothing,
    it answers ``Undecodable`` with a reason; what decodes then goes through
    ``validate_command``, which raises nothing;
(b) ``validate_command`` on decoded commands of any values (of their fields' types, which
    the decoder guarantees: a mapping with missing, unknown or mistyped fields can no
    longer reach it): nothing;
(c) the sandbox's request parsing, ``PlainCodec``/``JweCodec.decode`` (``ApiError``, 400)
    then ``validate_adjustment`` (nothing) and ``parse_adjustment``
    (``InvalidAdjustmentError`` exactly when ``validate_adjustment`` found problems).

For every input: no other exception escapes; it is routed (a command, or a non-empty list of
errors); what an invalid command leaves in its failed outcome (``identify``,
``safe_metadata``, ``mask_account``, the field errors) is bounded, free of control
characters and known card numbers, and the event encodes under 64 KiB; and it finishes
within ``SLOW_INPUT_S``.

Volume comes from seeded ``random.Random`` loops (seed ``FUZZ_SEED``, default below; sizes
times ``FUZZ_SCALE``, default 1), structure from hypothesis (derandomized, so CI runs are
repeatable). ``pytest -s`` prints the figures. For coverage-guided fuzzing run this file
with atheris installed: ``python tests/unit/test_fuzz_inputs.py decoder|sandbox``.
"""

from __future__ import annotations

import base64
import io
import json
import os
import random
import sys
import time
import tracemalloc
import unicodedata
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import fastavro
import pytest
import structlog
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pa_devkit.keys import generate_rsa_key, make_self_signed_certificate
from pa_devkit.sandbox.codec import JweCodec, PlainCodec, RequestCodec, parse_json_object
from pa_devkit.sandbox.envelope import ApiError
from pa_devkit.sandbox.validation import (
    FIELDS,
    AdjustmentRequest,
    InvalidAdjustmentError,
    parse_adjustment,
    validate_adjustment,
)
from service.app import command_decoder
from service.codec.avro import COMMAND, COMPLETED, FAILED, HEADER_SIZE, MAGIC, AvroCodec
from service.codec.outcome import outcome_record
from service.domain.command import (
    OUR_SOURCE,
    AdjustmentCommand,
    CommandRules,
    FieldError,
    identify,
    mask_account,
    safe_metadata,
    validate_command,
)
from service.domain.inbound import DecodedCommand, Undecodable
from service.domain.outcome import CommandInfo, ErrorDetail, Failed, Reason, SourceRef
from service.errors import UndecodableRecordError
from service.security.jwe import JweDecrypter, JweEncrypter, wrap_payload
from service.security.keys import kid_for_certificate

SEED = int(os.environ.get("FUZZ_SEED", "20250304"))
SCALE = float(os.environ.get("FUZZ_SCALE", "1"))
SLOW_INPUT_S = 1.0
MAX_EVENT_BYTES = 65_536

DECODER_INPUTS = int(60_000 * SCALE)
RAW_COMMAND_INPUTS = int(10_000 * SCALE)
SANDBOX_INPUTS = int(30_000 * SCALE)
JWE_INPUTS = int(2_000 * SCALE)
HYPOTHESIS_EXAMPLES = {"decoder": 300, "command": 400, "sandbox": 300}
PLANNED_INPUTS = (
    DECODER_INPUTS
    + RAW_COMMAND_INPUTS
    + SANDBOX_INPUTS
    + JWE_INPUTS
    + sum(HYPOTHESIS_EXAMPLES.values())
)

RULES = CommandRules(1_000_000, frozenset({"GOODWILL", "CORRECTION"}))
NOW = datetime(2025, 3, 4, 5, 6, 7, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
DECODE_REASONS = frozenset(
    {
        "EMPTY_RECORD",
        "UNKNOWN_FRAMING",
        "TRUNCATED_FRAME",
        "CONFLUENT_WITHOUT_REGISTRY",  # starts with 00, and the decoder has no registry
        "UNKNOWN_SCHEMA",
        "CORRUPT_AVRO",
        "UNEXPECTED_SCHEMA",  # service.app.command_decoder: a known schema, not a command
    }
)
COPY_LIMITS = {"idempotency_key": 128, "correlation_id": 128, "requested_by": 128}
CARDS = ("4111111111111111", "4012888888881881", "6221260000000000001", "5555555555554444")
ALPHABET = (
    "aZq09 -_.:/@é中🎉"  # ordinary text, digits, separators, multi-byte characters
    "\u202e\u202a\u2066\u2069\u200d\u200b\ufeff"  # bidi overrides and isolates, zero-widths, BOM
    "\x00\n\t\x1b\x7f\x85"  # C0 and C1 controls
)
HUGE_LENGTHS = (2**31, 2**31 - 1, 2**32, 2**62, 2**63 - 1, -1, -(2**31), -(2**63))
COMMAND_FIELDS = (
    ("idempotency_key", "string"),
    ("bank_account_number", "string"),
    ("points_to_adjust", "long"),
    ("adjustment_type_code", "string"),
    ("adjustment_reason", "string"),
    ("adjusted_by", "string"),
    ("correlation_id", "string"),
    ("requested_by", "string"),
    ("occurred_at", {"type": "long", "logicalType": "timestamp-millis"}),
    ("metadata", {"type": "map", "values": "string"}),
    ("channel", ["null", "string"]),
)
STRING_FIELDS = tuple(name for name, kind in COMMAND_FIELDS if kind == "string")

TOTALS: Counter[str] = Counter()


# -- the properties --------------------------------------------------------------------------------


class Timer:
    """Runs each input through its route, timing it; keeps the slowest."""

    def __init__(self) -> None:
        self.slowest = 0.0
        self.started = time.perf_counter()

    def run(self, route: Callable[[Any], str], value: Any) -> str:
        """``route(value)``; a failure or an undocumented exception names the input."""
        start = time.perf_counter()
        try:
            kind = route(value)
        except Exception as exc:
            kind_of = type(exc).__name__
            raise AssertionError(f"{kind_of}: {exc} (seed {SEED}) for {preview(value)}") from exc
        took = time.perf_counter() - start
        self.slowest = max(self.slowest, took)
        assert took < SLOW_INPUT_S, f"input took {took:.2f} s: {preview(value)}"
        return kind

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.started


def preview(value: Any) -> str:
    text = value.hex() if isinstance(value, bytes) else repr(value)
    return text[:300] + ("..." if len(text) > 300 else "")


def has_refused(text: str) -> bool:
    """Independent oracle: any control, format or surrogate character."""
    return not text.isprintable() and any(
        unicodedata.category(char) in ("Cc", "Cf", "Cs") for char in text
    )


def shows_a_card(text: str) -> bool:
    plain = text.replace(" ", "").replace("-", "")
    return any(card in plain for card in CARDS)


def check_safe(text: str, limit: int, what: str) -> None:
    assert len(text) <= limit, f"{what} of {len(text)} characters"
    assert not has_refused(text), f"{what} holds a refused character: {text!r}"


def check_metadata(metadata: Mapping[str, str]) -> None:
    assert len(metadata) <= 32
    for key, value in metadata.items():
        check_safe(key, 64, "metadata key")
        check_safe(value, 256, "metadata value")
        assert not shows_a_card(key + " " + value), f"card number left in {key!r}: {value!r}"


def check_event(
    codec: AvroCodec,
    copies: tuple[str, str, str],
    metadata: dict[str, str],
    errors: list[FieldError],
    account: str | None,
) -> None:
    """The failed outcome made of these copies fits its schema and stays small."""
    info = CommandInfo(
        idempotency_key=copies[0],
        correlation_id=copies[1],
        requested_by=copies[2],
        account_ref=None,
        account_masked=account,
        command_occurred_at=EPOCH,
        received_at=NOW,
        source=SourceRef("points-adjustments.requested.v1", 0, 0),
        metadata=metadata,
    )
    fields = ", ".join(sorted({error.field for error in errors}))
    failed = Failed(
        info=info,
        reason_code=Reason.VALIDATION_FAILED,
        description=f"invalid command: {fields}",
        retryable=False,
        failed_at=NOW,
        errors=tuple(ErrorDetail.from_field_error(error, OUR_SOURCE) for error in errors),
        service_version="fuzz",
    )
    event = outcome_record(failed, event_id="fuzz", source=info.source, duplicate=False)
    encoded = codec.encode(FAILED, event)
    assert len(encoded) <= MAX_EVENT_BYTES, f"failed event of {len(encoded)} bytes"


def check_invalid(codec: AvroCodec, raw: DecodedCommand, errors: list[FieldError]) -> None:
    """What the processor copies of an invalid command is safe to publish."""
    assert errors, "an invalid command must have at least one error"
    assert len(errors) <= len(COMMAND_FIELDS) + 10
    for error in errors:
        check_safe(error.field, 64, "error field")
        assert error.reason_code
        assert 0 < len(error.description) <= 200
    copies = identify(raw)
    for name, copy in zip(COPY_LIMITS, copies, strict=True):
        check_safe(copy, COPY_LIMITS[name], name)
    metadata = safe_metadata(raw.metadata)
    check_metadata(metadata)
    account = raw.bank_account_number
    masked = mask_account(account) if account else None
    if masked is not None:
        check_safe(masked, 30, "masked account")
    check_event(codec, copies, metadata, errors, masked)


def check_valid(codec: AvroCodec, command: AdjustmentCommand) -> None:
    """A valid command is inside every limit, checked by an independent oracle."""
    check_safe(command.correlation_id, 128, "correlation_id")
    check_safe(command.requested_by, 128, "requested_by")
    check_safe(command.adjustment_reason, 256, "adjustment_reason")
    check_safe(command.adjusted_by, 64, "adjusted_by")
    assert 1 <= len(command.idempotency_key) <= 128
    assert command.idempotency_key.isascii()
    assert command.idempotency_key.isprintable()
    assert " " not in command.idempotency_key
    assert 0 < abs(command.points_to_adjust) <= RULES.max_points
    published = command.published_metadata()
    check_metadata(published)
    copies = (command.idempotency_key, command.correlation_id, command.requested_by)
    check_event(codec, copies, published, [], mask_account(command.bank_account_number))


def route_command(codec: AvroCodec, raw: DecodedCommand, record_bytes: int = 0) -> str:
    checked = validate_command(raw, RULES, record_bytes=record_bytes)
    if isinstance(checked, AdjustmentCommand):
        check_valid(codec, checked)
        return "valid"
    assert isinstance(checked, list)
    check_invalid(codec, raw, checked)
    return "invalid:" + ",".join(sorted({error.field for error in checked})[:2])


def record_router(codec: AvroCodec) -> Callable[[bytes], str]:
    """Decode as the service does, then validate what decodes."""
    decode = command_decoder(codec)

    def route(data: bytes) -> str:
        decoded = decode(data)
        if isinstance(decoded, Undecodable):
            assert decoded.reason in DECODE_REASONS, decoded.reason
            assert decoded.detail
            return decoded.reason
        assert isinstance(decoded, DecodedCommand)
        return route_command(codec, decoded, len(data))

    return route


def outcome_of(call: Callable[[Any], Any], value: Any, documented: type[Exception]) -> Any:
    """What ``call(value)`` returns, or the documented exception it raised (any other
    exception propagates and fails the test)."""
    try:
        return call(value)
    except documented as exc:
        return exc


def body_router(codec: RequestCodec) -> Callable[[bytes], str]:
    """Parse a request body as the sandbox does."""

    def route(body: bytes) -> str:
        decoded = outcome_of(lambda data: codec.decode(data, {}), body, ApiError)
        if isinstance(decoded, ApiError):
            assert decoded.status == 400, decoded
            assert decoded.errors
            return str(decoded.errors[0].reason_code)
        errors = validate_adjustment(decoded.payload)
        request = outcome_of(parse_adjustment, decoded.payload, InvalidAdjustmentError)
        if isinstance(request, InvalidAdjustmentError):
            assert errors, "parse_adjustment refused what validate_adjustment passed"
            assert request.errors == errors
            return "invalid"
        assert errors == []
        assert isinstance(request, AdjustmentRequest)
        return "valid"

    return route


def report(name: str, tried: int, timer: Timer, kinds: Counter[str]) -> None:
    TOTALS[name] += tried
    common = ", ".join(f"{kind}={count}" for kind, count in kinds.most_common(8))
    print(
        f"\nfuzz {name}: {tried} inputs in {timer.elapsed:.2f} s, slowest"
        f" {timer.slowest * 1000:.1f} ms (seed {SEED}); {common}"
    )


# -- generators for the seeded loops ---------------------------------------------------------------


def zigzag(number: int) -> bytes:
    """Avro's variable-length zig-zag encoding of a 64-bit long."""
    value = ((number << 1) ^ (number >> 63)) & (2**64 - 1)
    out = bytearray()
    while True:
        low, value = value & 0x7F, value >> 7
        out.append(low | (0x80 if value else 0))
        if not value:
            return bytes(out)


def random_text(rng: random.Random) -> str:
    """A text from the pool most of the time (cheap), else a fresh one."""
    if rng.random() < 0.9:
        return rng.choice(text_pool())
    return fresh_text(rng)


_POOL: list[str] = []


def text_pool() -> list[str]:
    """4,096 texts made once from a fixed seed: generating fresh ones per input is slow."""
    if not _POOL:
        rng = random.Random(SEED - 1)
        _POOL.extend(fresh_text(rng) for _ in range(4_096))
    return _POOL


def fresh_text(rng: random.Random) -> str:
    pick = rng.random()
    if pick < 0.45:
        return "".join(rng.choice(ALPHABET) for _ in range(rng.randint(0, 24)))
    if pick < 0.75:
        length = rng.choice((0, 1, 63, 64, 65, 127, 128, 129, 255, 256, 257))
        return rng.choice("xé🎉\u202e ") * length
    if pick < 0.95:
        card = rng.choice(CARDS)
        if rng.random() < 0.5:
            sep = rng.choice(" -")
            card = sep.join(card[index : index + 4] for index in range(0, len(card), 4))
        return "x" * rng.choice((0, 3, 240, 250, 300)) + f" {card} " + "y" * rng.randint(0, 4)
    return rng.choice("x\u202e") * rng.choice((1_000, 70_000))


def random_points(rng: random.Random) -> int:
    return rng.choice((0, 1, -1, 250, 1_000_000, -1_000_001, rng.randint(-(2**63), 2**63 - 1)))


def random_record(rng: random.Random) -> dict[str, Any]:
    """A command record the Avro schema accepts, each field good or, at a rate drawn per
    record (none to half), random."""
    bad = rng.choice((0.0, 0.05, 0.2, 0.5))

    def text(good: str) -> str:
        return random_text(rng) if rng.random() < bad else good

    entries = rng.choice((0, 0, 1, 1, 2, 3, 5, 32, 33, 100) if rng.random() < 0.3 else (0, 1))
    metadata = {random_text(rng): random_text(rng) for _ in range(entries)}
    return {
        "idempotency_key": text(f"key-{rng.randrange(10**6)}"),
        "bank_account_number": text(rng.choice(("5123456789012345000", "7", "9" * 30))),
        "points_to_adjust": random_points(rng) if rng.random() < bad else 250,
        "adjustment_type_code": text(rng.choice(("GOODWILL", "CORRECTION", "PROMO"))),
        "adjustment_reason": text("Late delivery"),
        "adjusted_by": text("agent-0042"),
        "correlation_id": text("corr-1"),
        "requested_by": text("crm"),
        "occurred_at": EPOCH + timedelta(milliseconds=rng.randint(-(10**12), 4 * 10**12)),
        "metadata": metadata if bad else {"case": "1234", "pan": "4111 1111 1111 1111"},
    }


def field_encodings(record: Mapping[str, Any]) -> list[bytes]:
    """The command body field by field, each written by fastavro with its own schema."""
    parts = []
    for name, kind in COMMAND_FIELDS:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, fastavro.parse_schema(kind), record.get(name))
        parts.append(out.getvalue())
    return parts


def with_huge_length(rng: random.Random, header: bytes, record: Mapping[str, Any]) -> bytes:
    """A command whose string field, or map block, declares a huge or negative length."""
    parts = field_encodings(record)
    index = rng.randrange(len(COMMAND_FIELDS))
    name, _ = COMMAND_FIELDS[index]
    if name in STRING_FIELDS or name == "metadata":
        value = record[name]
        payload = b"" if name == "metadata" else value.encode("utf-8")
        parts[index] = zigzag(rng.choice(HUGE_LENGTHS)) + payload[: rng.randint(0, 8)]
    else:
        parts[index] = zigzag(rng.choice(HUGE_LENGTHS)) + b"\xff" * rng.randint(0, 12)
    return header + b"".join(parts[: index + 1 + rng.randint(0, 1)])


def mutate(rng: random.Random, data: bytes, keep: int = 0) -> bytes:
    """One to four byte-level changes after the first ``keep`` bytes."""
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        at = rng.randint(keep, max(len(buffer), keep))
        operation = rng.randrange(7)
        if operation == 0 and at < len(buffer):
            buffer[at] ^= 1 << rng.randrange(8)
        elif operation == 1 and at < len(buffer):
            buffer[at] = rng.randrange(256)
        elif operation == 2:
            buffer[at:at] = rng.randbytes(rng.randint(1, 8))
        elif operation == 3:
            del buffer[at : at + rng.randint(1, 16)]
        elif operation == 4:
            del buffer[at:]
        elif operation == 5:
            buffer[at:at] = zigzag(rng.choice(HUGE_LENGTHS))
        else:
            start = rng.randrange(len(buffer) + 1)
            buffer[at:at] = buffer[start : start + rng.randint(1, 32)]
    return bytes(buffer)


def decoder_inputs(rng: random.Random, codec: AvroCodec, count: int) -> Iterator[bytes]:
    header = MAGIC + codec.entry(COMMAND).fingerprint_bytes
    others = [MAGIC + codec.entry(name).fingerprint_bytes for name in (COMPLETED, FAILED)]
    for _ in range(count):
        pick = rng.random()
        record = random_record(rng)
        if pick < 0.08:
            yield rng.randbytes(rng.randint(0, 48))
        elif pick < 0.16:
            yield header + rng.randbytes(rng.randint(0, 160))
        elif pick < 0.22:
            wrong = rng.choice([*others, MAGIC + rng.randbytes(8), mutate(rng, header, 2)[:10]])
            yield wrong + codec.encode(COMMAND, record)[HEADER_SIZE:]
        elif pick < 0.32:
            yield with_huge_length(rng, header, record)
        elif pick < 0.62:
            yield mutate(rng, codec.encode(COMMAND, record), HEADER_SIZE)
        elif pick < 0.66:
            yield mutate(rng, codec.encode(COMMAND, record))
        else:
            yield codec.encode(COMMAND, record)


def random_json(rng: random.Random, depth: int = 0) -> Any:
    pick = rng.randrange(10 if depth < 3 else 7)
    scalars: list[Any] = [
        None,
        rng.choice((True, False)),
        random_points(rng),
        rng.choice((0.5, -1e308, 1e-300, 250.0)),
        random_text(rng),
        "1234567890123456000",
        rng.choice(("GOODWILL", "PROMO", "goodwill")),
    ]
    if pick < 7:
        return scalars[pick]
    if pick < 8:
        return [random_json(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    keys = [rng.choice((random_text(rng), rng.randrange(100))) for _ in range(rng.randint(0, 4))]
    return {key: random_json(rng, depth + 1) for key in keys}


def random_payload(rng: random.Random) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "bankAccountNumber": "1234567890123456000",
        "pointsToAdjust": 250,
        "adjustmentTypeCode": "GOODWILL",
        "adjustmentReason": "late delivery",
        "adjustedBy": "agent-42",
    }
    for _ in range(rng.randint(0, 3)):
        name = rng.choice([*FIELDS, random_text(rng)])
        if rng.random() < 0.2:
            payload.pop(name, None)
        else:
            payload[name] = random_json(rng)
    return payload


def body_inputs(rng: random.Random, count: int) -> Iterator[bytes]:
    for _ in range(count):
        pick = rng.random()
        if pick < 0.1:
            yield rng.randbytes(rng.randint(0, 64))
        elif pick < 0.2:
            yield json.dumps(random_json(rng)).encode("utf-8", "surrogatepass")
        else:
            body = json.dumps(random_payload(rng), ensure_ascii=rng.random() < 0.5)
            data = body.encode("utf-8", "surrogatepass")
            yield mutate(rng, data) if pick < 0.6 else data


def random_command(rng: random.Random) -> DecodedCommand:
    """A decoded command: each field good or random (of its type), booleans for points too."""
    raw = random_record(rng)
    if rng.random() < 0.05:
        raw["points_to_adjust"] = rng.choice((True, False))  # a bool is an int, never valid
    return DecodedCommand(**raw)


# -- fixtures --------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def codec() -> AvroCodec:
    return AvroCodec.from_directory()


@pytest.fixture(scope="module", autouse=True)
def _print_totals() -> Iterator[None]:
    """Prints the inputs tried by this module's tests (``pytest -s``)."""
    started = time.perf_counter()
    yield
    print(
        f"\nfuzz total: {sum(TOTALS.values())} inputs in {time.perf_counter() - started:.1f} s"
        f" ({dict(TOTALS)})"
    )


@pytest.fixture(scope="module")
def jwe_material() -> tuple[JweCodec, JweEncrypter]:
    key = generate_rsa_key()
    certificate = make_self_signed_certificate(
        key,
        "pas-encryption",
        not_before=NOW - timedelta(days=1),
        not_after=NOW + timedelta(days=365),
        usage="encryption",
    )
    decrypter = JweDecrypter(key, expected_kid=kid_for_certificate(certificate))
    return JweCodec(decrypter, None), JweEncrypter(certificate)


# -- (a) the record decoder ------------------------------------------------------------------------


def test_planned_volume_is_at_least_100k() -> None:
    """The fuzz tests of this module try at least 100,000 inputs between them."""
    assert 100_000 * min(SCALE, 1.0) <= PLANNED_INPUTS


def test_decoder_routes_random_and_mutated_records(codec: AvroCodec) -> None:
    """Random, mutated, mis-fingerprinted and over-long records each decode and validate, or
    fail as UndecodableRecordError, quickly."""
    rng = random.Random(SEED)
    route = record_router(codec)
    timer, kinds = Timer(), Counter[str]()
    tried = 0
    for data in decoder_inputs(rng, codec, DECODER_INPUTS):
        kinds[timer.run(route, data).split(":")[0]] += 1
        tried += 1
    report("decoder", tried, timer, kinds)
    assert tried == DECODER_INPUTS
    for kind in ("valid", "invalid", "CORRUPT_AVRO", "UNKNOWN_SCHEMA", "UNKNOWN_FRAMING"):
        assert kinds[kind] > 0, f"the fuzzer never reached {kind}: {kinds}"


@pytest.mark.parametrize("length", HUGE_LENGTHS)
@pytest.mark.parametrize("field", [*STRING_FIELDS, "metadata"])
def test_huge_declared_length_allocates_nothing_and_fails_fast(
    codec: AvroCodec, field: str, length: int
) -> None:
    """A length prefix claiming gigabytes (or a negative size) is CORRUPT_AVRO at once, having
    allocated less than 1 MB."""
    parts = field_encodings(small_record())
    index = [name for name, _ in COMMAND_FIELDS].index(field)
    parts[index] = zigzag(length) + b"abc"
    data = MAGIC + codec.entry(COMMAND).fingerprint_bytes + b"".join(parts[: index + 1])
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(UndecodableRecordError) as caught:
            codec.decode(data)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert time.perf_counter() - start < 0.5
    assert caught.value.reason == "CORRUPT_AVRO"
    assert peak < 1_000_000, f"decoding {len(data)} bytes allocated {peak} bytes"


def small_record() -> dict[str, Any]:
    return {
        "idempotency_key": "case-1234",
        "bank_account_number": "5123456789012345000",
        "points_to_adjust": 250,
        "adjustment_type_code": "GOODWILL",
        "adjustment_reason": "Late delivery",
        "adjusted_by": "agent-0042",
        "correlation_id": "corr-1",
        "requested_by": "crm",
        "occurred_at": NOW,
        "metadata": {"case": "1234"},
    }


def test_field_encodings_match_the_codec(codec: AvroCodec) -> None:
    """The field-by-field body used to plant huge lengths is the codec's own body."""
    for record in (small_record(), random_record(random.Random(2))):
        assert b"".join(field_encodings(record)) == codec.encode(COMMAND, record)[HEADER_SIZE:]


FINGERPRINTS = st.sampled_from([bytes(8), b"\xff" * 8])


@st.composite
def framed_records(draw: st.DrawFn) -> bytes:
    """Records framed with a known or unknown fingerprint, bodies from hypothesis."""
    codec = shared_codec()
    fingerprint = draw(
        st.one_of(
            st.sampled_from([codec.entry(name).fingerprint_bytes for name in (COMMAND, FAILED)]),
            FINGERPRINTS,
        )
    )
    record = draw(records())
    body = codec.encode(COMMAND, record)[HEADER_SIZE:]
    cut = draw(st.integers(0, len(body)))
    return MAGIC + fingerprint + draw(st.sampled_from([body, body[:cut], body + b"\x00"]))


def texts(max_size: int = 300) -> st.SearchStrategy[str]:
    """Text of every kind: controls, bidi, cards, exact limits and huge sizes."""
    return st.one_of(
        st.text(alphabet=st.characters(codec="utf-8"), max_size=40),
        st.text(alphabet=ALPHABET, max_size=max_size),
        st.sampled_from(CARDS).map(lambda card: f"card {card} end"),
        st.builds(
            lambda char, size: char * size,
            st.sampled_from(["x", "é", "🎉", "\u202e"]),
            st.sampled_from([1, 63, 64, 65, 127, 128, 129, 255, 256, 257, 614_400]),
        ),
    )


def records() -> st.SearchStrategy[dict[str, Any]]:
    """Command records the Avro schema accepts."""
    return st.fixed_dictionaries(
        {
            "idempotency_key": texts(),
            "bank_account_number": st.one_of(st.just("5123456789012345000"), texts()),
            "points_to_adjust": st.integers(-(2**63), 2**63 - 1),
            "adjustment_type_code": st.sampled_from(["GOODWILL", "CORRECTION", "x", ""]),
            "adjustment_reason": texts(),
            "adjusted_by": texts(),
            "correlation_id": texts(),
            "requested_by": texts(),
            "occurred_at": st.datetimes(
                min_value=datetime(1900, 1, 1),
                max_value=datetime(2200, 1, 1),
                timezones=st.just(UTC),
            ),
            "metadata": st.dictionaries(texts(), texts(), max_size=40),
        }
    )


def fuzz_settings(examples: int) -> settings:
    """Repeatable hypothesis runs: derandomized, no example database, no deadline (the
    Timer checks each input instead)."""
    return settings(
        max_examples=examples,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )


@fuzz_settings(HYPOTHESIS_EXAMPLES["decoder"])
@given(data=st.one_of(framed_records(), st.binary(max_size=300)))
def test_decoder_routes_hypothesis_records(data: bytes) -> None:
    """Hypothesis-built records and bytes decode and validate, or fail as
    UndecodableRecordError."""
    codec = shared_codec()
    Timer().run(record_router(codec), data)
    TOTALS["decoder (hypothesis)"] += 1


_CODEC: list[AvroCodec] = []


def shared_codec() -> AvroCodec:
    """One codec for the hypothesis tests, which cannot take module fixtures per example."""
    if not _CODEC:
        _CODEC.append(AvroCodec.from_directory())
    return _CODEC[0]


# -- (b) validate_command on any decoded command ---------------------------------------------------


def test_validate_command_routes_random_commands(codec: AvroCodec) -> None:
    """Decoded commands with any values in their fields are routed, never raise, and leave
    only safe copies."""
    rng = random.Random(SEED + 1)
    timer, kinds = Timer(), Counter[str]()
    tried = 0
    for _ in range(RAW_COMMAND_INPUTS):
        command = random_command(rng)
        kinds[timer.run(lambda value: route_command(codec, value), command)] += 1
        tried += 1
    report("validate_command", tried, timer, kinds)
    assert tried == RAW_COMMAND_INPUTS
    assert kinds["valid"] > 0


@fuzz_settings(HYPOTHESIS_EXAMPLES["command"])
@given(record=records())
def test_validate_command_routes_hypothesis_commands(record: dict[str, Any]) -> None:
    """Hypothesis commands, huge texts and metadata maps included, are routed safely."""
    Timer().run(lambda value: route_command(shared_codec(), value), DecodedCommand(**record))
    TOTALS["validate_command (hypothesis)"] += 1


# -- (c) the sandbox's request parsing -------------------------------------------------------------


def test_sandbox_routes_random_and_mutated_bodies() -> None:
    """Random and mutated plain JSON bodies are refused with a 400 or parsed and validated."""
    rng = random.Random(SEED + 2)
    route = body_router(PlainCodec())
    timer, kinds = Timer(), Counter[str]()
    tried = 0
    for body in body_inputs(rng, SANDBOX_INPUTS):
        kinds[timer.run(route, body)] += 1
        tried += 1
    report("sandbox plain", tried, timer, kinds)
    assert tried == SANDBOX_INPUTS
    assert {"valid", "invalid", "INVALID_JSON"} <= set(kinds)


def mutate_compact(rng: random.Random, compact: str) -> str:
    chars = list(compact)
    for _ in range(rng.randint(1, 3)):
        at = rng.randrange(len(chars) + 1)
        operation = rng.randrange(4)
        if operation == 0 and at < len(chars):
            chars[at] = rng.choice("AZaz09-_.=+/ ")
        elif operation == 1:
            del chars[at : at + rng.randint(1, 8)]
        elif operation == 2:
            chars[at:at] = rng.choice([".", "..", "A", "é"])
        else:
            del chars[at:]
    return "".join(chars)


def jwe_bodies(rng: random.Random, encrypter: JweEncrypter, count: int) -> Iterator[bytes]:
    tokens = [
        encrypter.encrypt(json.dumps(random_payload(rng)).encode("utf-8", "surrogatepass"))
        for _ in range(16)
    ]
    fields = ["encryptedValue", "encryptedData", "encryptedPayload", "encrypted", "value"]
    for _ in range(count):
        compact = rng.choice(tokens)
        pick = rng.random()
        if pick < 0.6:
            compact = mutate_compact(rng, compact)
        document: dict[str, Any] = wrap_payload(compact, rng.choice(fields))
        if pick > 0.9:
            document[rng.choice(fields)] = rng.choice([compact, 5, None])
        body = json.dumps(document).encode()
        yield mutate(rng, body) if rng.random() < 0.15 else body


def test_sandbox_routes_mutated_jwe_bodies(jwe_material: tuple[JweCodec, JweEncrypter]) -> None:
    """Mutated JWE bodies are refused with a 400 or decrypted, parsed and validated."""
    codec, encrypter = jwe_material
    rng = random.Random(SEED + 3)
    route = body_router(codec)
    timer, kinds = Timer(), Counter[str]()
    tried = 0
    with structlog.testing.capture_logs():  # one sandbox.codec.refused per input
        for body in jwe_bodies(rng, encrypter, JWE_INPUTS):
            kinds[timer.run(route, body)] += 1
            tried += 1
    report("sandbox jwe", tried, timer, kinds)
    assert tried == JWE_INPUTS
    assert kinds["valid"] + kinds["invalid"] > 0
    assert kinds["INVALID_ENCRYPTED_PAYLOAD"] > 0


JSON_BODIES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), texts(40)),
    lambda children: st.one_of(
        st.lists(children, max_size=4), st.dictionaries(texts(20), children, max_size=5)
    ),
    max_leaves=12,
)


@fuzz_settings(HYPOTHESIS_EXAMPLES["sandbox"])
@given(
    body=st.one_of(
        st.binary(max_size=200),
        st.dictionaries(st.sampled_from(FIELDS), JSON_BODIES).map(
            lambda payload: json.dumps(payload).encode("utf-8", "surrogatepass")
        ),
        JSON_BODIES.map(lambda value: json.dumps(value).encode("utf-8", "surrogatepass")),
    )
)
def test_sandbox_routes_hypothesis_bodies(body: bytes) -> None:
    """Hypothesis bodies, JSON or not, are refused with a 400 or parsed and validated."""
    Timer().run(body_router(PlainCodec()), body)
    TOTALS["sandbox (hypothesis)"] += 1


# -- holes the fuzzer found, now closed -----------------------------------------------------------


def test_deeply_nested_body_is_invalid_json() -> None:
    """A body of 2,000 nested arrays is refused as 400 INVALID_JSON."""
    with pytest.raises(ApiError) as caught:
        parse_json_object(b"[" * 2_000 + b"]" * 2_000)
    assert caught.value.status == 400


def test_deeply_nested_jwe_header_is_a_malformed_payload(
    jwe_material: tuple[JweCodec, JweEncrypter],
) -> None:
    """A JWE whose protected header nests 2,000 arrays is refused with a 400."""
    codec, encrypter = jwe_material
    parts = encrypter.encrypt(b"{}").split(".")
    header = b"[" * 2_000 + b"]" * 2_000
    parts[0] = base64.urlsafe_b64encode(header).rstrip(b"=").decode()
    body = json.dumps(wrap_payload(".".join(parts))).encode()
    with pytest.raises(ApiError) as caught:
        codec.decode(body, {})
    assert caught.value.status == 400


# -- coverage-guided fuzzing with atheris (optional, not run by pytest) ----------------------------


def _atheris_main(target: str) -> None:  # pragma: no cover - manual fuzzing
    import atheris

    codec = AvroCodec.from_directory()
    header = MAGIC + codec.entry(COMMAND).fingerprint_bytes
    route_record = record_router(codec)

    def framed(data: bytes) -> str:
        # An odd first byte frames the rest as a command: random bytes rarely carry the header.
        return route_record(header + data[1:] if data[:1] and data[0] & 1 else data)

    routes: dict[str, Callable[[bytes], str]] = {
        "decoder": framed,
        "sandbox": body_router(PlainCodec()),
    }
    route = routes[target]
    atheris.instrument_all()
    atheris.Setup(sys.argv[:1] + sys.argv[2:], route)
    atheris.Fuzz()


if __name__ == "__main__":  # pragma: no cover
    _atheris_main(sys.argv[1] if len(sys.argv) > 1 else "decoder")
