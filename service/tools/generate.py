"""Generating realistic commands, with a chosen share of duplicates and invalid ones."""

from __future__ import annotations

import random
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

TYPE_CODES = ("GOODWILL", "CORRECTION", "PROMO")

# Ways of making a command invalid, each breaking one rule of docs/pas.md.
INVALID_MUTATIONS: tuple[tuple[str, Any], ...] = (
    ("points_to_adjust", 0),
    ("points_to_adjust", 5_000_000),
    ("adjustment_type_code", "goodwill"),
    ("adjustment_type_code", "NOT_ALLOWED"),
    ("bank_account_number", "5555-4444-3333"),
    ("adjustment_reason", ""),
    ("adjustment_reason", "x" * 257),
    ("adjusted_by", "a" * 65),
)


@dataclass(frozen=True)
class GeneratedBatch:
    """Commands in sending order, and what the generator made of them."""

    commands: list[dict[str, Any]]
    distinct_keys: int
    duplicates: int
    invalid_keys: set[str]
    conflicts: int = 0


def account_number(rng: random.Random) -> str:
    """A 16-digit card-like number followed by 000, as the platform uses."""
    return "5" + "".join(rng.choice("0123456789") for _ in range(15)) + "000"


def generate_commands(
    count: int,
    *,
    duplicate_share: float = 0.0,
    invalid_share: float = 0.0,
    conflict_share: float = 0.0,
    accounts: int = 100,
    seed: int | None = None,
    requested_by: str = "points-adjuster-send",
) -> GeneratedBatch:
    """``count`` commands in all.

    Duplicates repeat an earlier command byte for byte; conflicts reuse an earlier command's
    idempotency key with other points and a new correlation id (the earlier one must win).
    """
    rng = random.Random(seed)
    pool = [account_number(rng) for _ in range(max(accounts, 1))]
    run = uuid.UUID(int=rng.getrandbits(128)).hex[:8]
    commands: list[dict[str, Any]] = []
    originals: list[dict[str, Any]] = []
    invalid_keys: set[str] = set()
    duplicates = 0
    conflicts = 0
    for index in range(count):
        draw = rng.random()
        if originals and draw < duplicate_share:
            commands.append(dict(rng.choice(originals)))
            duplicates += 1
            continue
        if originals and draw < duplicate_share + conflict_share:
            conflicting = dict(rng.choice(originals))
            conflicting["points_to_adjust"] = conflicting["points_to_adjust"] * 2 + 1
            conflicting["correlation_id"] = str(uuid.UUID(int=rng.getrandbits(128)))
            commands.append(conflicting)
            conflicts += 1
            continue
        key = f"{run}-{index:07d}"
        command: dict[str, Any] = {
            "idempotency_key": key,
            "bank_account_number": rng.choice(pool),
            "points_to_adjust": rng.choice((-1, 1)) * rng.randint(1, 5_000),
            "adjustment_type_code": rng.choice(TYPE_CODES),
            "adjustment_reason": f"Goodwill credit for case {rng.randint(10_000, 99_999)}",
            "adjusted_by": f"agent-{rng.randint(1, 200):04d}",
            "correlation_id": str(uuid.UUID(int=rng.getrandbits(128))),
            "requested_by": requested_by,
            "occurred_at": datetime.now(UTC),
            "metadata": {"channel": "demo"},
        }
        if rng.random() < invalid_share:
            field, value = rng.choice(INVALID_MUTATIONS)
            command[field] = value
            invalid_keys.add(key)
        commands.append(command)
        originals.append(command)
    return GeneratedBatch(commands, len(originals), duplicates, invalid_keys, conflicts)
