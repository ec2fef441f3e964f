"""The outcome schemas' registry ids, found or registered at start-up (Confluent framing).

With ``PA_KAFKA__OUTCOME_FRAMING=confluent`` each outcome event carries the registry id of
its schema. At start-up the service looks each outcome schema up under its subject
(``PA_SCHEMA_REGISTRY__SUBJECT_STRATEGY``) and registers it when it is not there. While the
registry cannot be reached it tries again with a growing pause for
``PA_SCHEMA_REGISTRY__STARTUP_WAIT_S``, then start-up fails naming
``PA_SCHEMA_REGISTRY__URL``; a refusal (credentials, an incompatible schema under the
subject) fails start-up at once, saying what was refused.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from service.codec.avro import COMPLETED, FAILED, AvroCodec
from service.errors import StartupError
from service.registry.client import SchemaRegistryClient
from service.registry.errors import RegistryError, RegistryUnavailable
from service.registry.subjects import SubjectStrategy, subject_name

log = structlog.get_logger("service.registry")

FIRST_PAUSE_S = 0.5
MAX_PAUSE_S = 5.0


async def outcome_schema_ids(
    registry: SchemaRegistryClient,
    codec: AvroCodec,
    topics: dict[str, str],
    strategy: SubjectStrategy,
    *,
    wait_s: float,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> dict[str, int]:
    """The registry id of each outcome schema (full name → id); ``topics`` maps the full
    names of ``COMPLETED`` and ``FAILED`` to their topics."""
    deadline = clock() + wait_s
    pause = FIRST_PAUSE_S
    while True:
        try:
            return {
                name: await _id_of(registry, codec, name, topic, strategy)
                for name, topic in topics.items()
            }
        except RegistryUnavailable as exc:
            if clock() + pause > deadline:
                raise StartupError(
                    "schema registry",
                    f"unreachable for {wait_s:g} s while registering the outcome schemas: {exc}",
                    setting="PA_SCHEMA_REGISTRY__URL",
                ) from exc
            log.warning("registry.waiting", retry_in_s=pause, error=str(exc))
            await sleep(pause)
            pause = min(pause * 2, MAX_PAUSE_S)
        except RegistryError as exc:
            raise StartupError(
                "schema registry",
                f"refused the outcome schemas: {exc}",
                setting="PA_SCHEMA_REGISTRY__URL",
            ) from exc


async def _id_of(
    registry: SchemaRegistryClient,
    codec: AvroCodec,
    name: str,
    topic: str,
    strategy: SubjectStrategy,
) -> int:
    subject = subject_name(strategy, topic, name)
    text = codec.entry(name).text
    found = await registry.lookup(subject, text)
    if found is None:
        found = await registry.register(subject, text)
        log.info("registry.schema_registered", subject=subject, schema_id=found)
    else:
        log.info("registry.schema_found", subject=subject, schema_id=found)
    return found


def outcome_topics(completed_topic: str, failed_topic: str) -> dict[str, str]:
    """The topic of each outcome schema, by full name."""
    return {COMPLETED: completed_topic, FAILED: failed_topic}
