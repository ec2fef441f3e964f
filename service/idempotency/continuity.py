"""Start-up refuses a new idempotency store next to a consumer group that has moved on.

The store is what makes a re-read command a duplicate. When it is lost (the file deleted,
a volume not mounted, a new pod without its disk) a plain start creates an empty one; the
consumer group still has its committed offsets, and every command re-read from them (what
was processed but not yet committed before the stop, or anything replayed) is applied to
PAS a second time. So a store that is new (``IdempotencyStore.created``) while the group
has committed offsets on the command topic stops the start with ``StartupError``, unless
``PA_IDEMPOTENCY__ALLOW_EMPTY_STORE`` says the reset is deliberate: then the start goes on
with a warning to log loudly. A start that goes on adopts the store (``adopt``), so the
next one finds it not new; a refused start does not, so a restart is refused too.

``check_continuity`` is the rule, without I/O; ``verify_continuity`` gathers its facts (the
store, the broker) and applies it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from service.domain.store import IdempotencyStore, StoreError
from service.errors import StartupError
from service.kafka.groups import committed_offsets
from service.settings import IdempotencySettings, KafkaSettings

OVERRIDE_SETTING = "PA_IDEMPOTENCY__ALLOW_EMPTY_STORE"
PATH_SETTING = "PA_IDEMPOTENCY__SQLITE_PATH"

OffsetsReader = Callable[[KafkaSettings], Awaitable[dict[int, int]]]
"""Reads the consumer group's committed offsets on the command topic, by partition."""


def check_continuity(
    store_created: bool,
    committed: Mapping[int, int],
    allow_empty_store: bool,
    *,
    store: str,
    identity: str,
    group: str,
    topic: str,
    setting: str = PATH_SETTING,
) -> str | None:
    """None when the store may be used as it is; a warning when only the override lets the
    start go on; ``StartupError`` when the store is new but the group has committed offsets.

    ``store`` says where the store is (its path), ``identity`` is its UUID, ``group`` and
    ``topic`` the consumer group and the command topic ``committed`` was read for; ``setting``
    names where the store is configured.
    """
    if not store_created or not committed:
        return None
    partitions = ", ".join(str(partition) for partition in sorted(committed))
    facts = (
        f"the store at {store} is new (identity {identity}) but consumer group {group} has"
        f" committed offsets on {topic} (partitions {partitions})"
    )
    if not allow_empty_store:
        raise StartupError(
            "idempotency store",
            f"{facts}: the store was lost or replaced, and re-read commands could be applied"
            f" twice. Restore the store, or set {OVERRIDE_SETTING}=true for a deliberate reset",
            setting=setting,
        )
    return (
        f"{facts}: starting anyway because {OVERRIDE_SETTING}=true. Commands re-read from"
        " those offsets are not recognised as already applied and may be applied again"
    )


async def verify_continuity(
    store: IdempotencyStore,
    idempotency: IdempotencySettings,
    kafka: KafkaSettings,
    *,
    read_offsets: OffsetsReader = committed_offsets,
) -> str | None:
    """Apply ``check_continuity`` to an open store at start-up, before the consumer starts.

    Returns None or the warning to log; raises ``StartupError`` when the start must stop
    (also when the broker cannot be asked). The broker is asked only when the store is new,
    and never for the memory backend, which is new by design on every start. When the start
    may go on, the store is adopted.
    """
    if idempotency.kind == "memory":
        return None
    warning: str | None = None
    if store.created:
        warning = check_continuity(
            True,
            await read_offsets(kafka),
            idempotency.allow_empty_store,
            store=idempotency.where,
            setting=idempotency.setting,
            identity=store.identity,
            group=kafka.group_id,
            topic=kafka.command_topic,
        )
    try:
        await store.adopt()
    except StoreError as exc:
        raise StartupError(
            "idempotency store",
            f"cannot record that it was adopted: {exc}",
            setting=idempotency.setting,
        ) from exc
    return warning
