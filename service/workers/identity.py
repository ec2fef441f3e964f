"""What makes each worker of ``run --workers N`` its own member of the consumer group."""

from __future__ import annotations

from service.settings import Settings


def worker_suffix(index: int) -> str:
    return f"w{index}"


def worker_settings(settings: Settings, index: int) -> Settings:
    """The settings worker ``index`` runs with: its own Kafka client id and (under static
    membership) group instance id, so its transactional id is its own too; its endpoints on
    a free loopback port (the parent serves the public one); one worker (itself)."""
    suffix = worker_suffix(index)
    kafka = settings.kafka
    instance = kafka.group_instance_id
    return settings.model_copy(
        update={
            "workers": 1,
            "kafka": kafka.model_copy(
                update={
                    "client_id": f"{kafka.client_id}-{suffix}",
                    "group_instance_id": f"{instance}-{suffix}" if instance else None,
                }
            ),
            "metrics": settings.metrics.model_copy(update={"host": "127.0.0.1", "port": 0}),
        }
    )
