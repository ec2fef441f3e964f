"""One exposition for all workers: each worker's families once, its samples labelled
``worker="<index>"``; and readiness and liveness over all of them.

Why a parent that merges rather than prometheus-client's multiprocess mode: the workers'
metrics stay what they are in a single process (the same classes, the ``Info`` of the build,
gauges that need no aggregation mode, no per-sample file writes on the hot path, no files of
dead processes to clean up); the cost is paid at scrape time, in the parent. A worker's series
keep its index across restarts, so a restart is a counter reset, which ``rate()`` handles,
and ``sum without (worker)`` gives the totals.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector
from prometheus_client.samples import Sample

WORKER_LABEL = "worker"


def merge_families(expositions: Mapping[str, str]) -> list[Metric]:
    """The families of every worker's exposition (text format, by worker index), each once,
    with every sample labelled by its worker."""
    merged: dict[str, Metric] = {}
    for worker, text in expositions.items():
        for family in text_string_to_metric_families(text):
            into = merged.get(family.name)
            if into is None:
                into = Metric(family.name, family.documentation, family.type, family.unit)
                merged[family.name] = into
            into.samples.extend(
                Sample(
                    sample.name,
                    {**sample.labels, WORKER_LABEL: worker},
                    sample.value,
                    sample.timestamp,
                    sample.exemplar,
                )
                for sample in family.samples
            )
    return list(merged.values())


class _Fixed(Collector):
    def __init__(self, families: Iterable[Metric]) -> None:
        self._families = list(families)

    def collect(self) -> Iterator[Metric]:
        return iter(self._families)


def exposition(expositions: Mapping[str, str], own: CollectorRegistry) -> bytes:
    """The parent's /metrics body: the workers' families merged, then the parent's own."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_Fixed(merge_families(expositions)))
    return generate_latest(registry) + generate_latest(own)


@dataclass(frozen=True)
class WorkerAnswer:
    """What the parent learnt of one worker for /readyz or /livez."""

    worker: int
    ok: bool
    reasons: Mapping[str, str]
    """Why not, by part (empty when ``ok``)."""


def combine(answers: Iterable[WorkerAnswer]) -> tuple[bool, dict[str, str]]:
    """Ready (or alive) only if every worker is; the reasons of those that are not, each
    part named ``worker <index>: <part>``."""
    ok = True
    reasons: dict[str, str] = {}
    for answer in sorted(answers, key=lambda a: a.worker):
        if answer.ok:
            continue
        ok = False
        for part, reason in answer.reasons.items():
            reasons[f"worker {answer.worker}: {part}"] = reason
    return ok, reasons
