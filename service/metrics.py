"""Prometheus metrics of the service, on an injected registry. Labels are bounded sets."""

from __future__ import annotations

import contextlib
import platform
from collections.abc import Mapping
from datetime import datetime
from importlib.metadata import PackageNotFoundError, version
from typing import Generic, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from service import __version__

M = TypeVar("M", Counter, Gauge, Histogram)

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
COMMAND_BUCKETS = (
    *(0.005, 0.01, 0.025, 0.05, 0.06, 0.07, 0.08, 0.09, 0.1, 0.125, 0.15, 0.2, 0.25),
    *(0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
"""A command's time in the service is the PAS call (tens of milliseconds) and a little more:
10 ms steps from 50 to 100 ms, so that a p99 against "the API's latency + 50 ms" can be read."""
ADDED_BUCKETS = (
    *(0.001, 0.0025, 0.005, 0.01, 0.02, 0.03, 0.04, 0.05, 0.06, 0.075, 0.1, 0.25, 0.5),
    *(1.0, 2.5, 5.0, 10.0, 30.0),
)
"""What the service adds to a command's PAS calls: a few milliseconds when healthy (the claim,
the outcome stored, the produce and its acknowledgement), 10 ms steps up to 60 ms so that a
p99 against "the API's latency + 50 ms" can be read."""
STORE_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
"""The idempotency store answers in well under a millisecond when healthy (SQLite, WAL)."""

SERVICE_NAME = "points-adjuster"


def _distribution_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "unknown"


def build_labels() -> dict[str, str]:
    """What ``points_adjuster_build_info`` carries: the service, its version and the versions
    of Python and aiokafka it runs on."""
    return {
        "service": SERVICE_NAME,
        "version": __version__,
        "python": platform.python_version(),
        "aiokafka": _distribution_version("aiokafka"),
    }


class Children(Generic[M]):
    """The labelled children of one metric, each looked up once: ``labels()`` checks and
    copies the values and takes the metric's lock on every call, which the per-command
    metrics would pay several times per command. Label sets are bounded, and so is this."""

    def __init__(self, metric: M) -> None:
        self._metric: M = metric
        self._children: dict[tuple[str, ...], M] = {}

    def __call__(self, *values: str) -> M:
        child = self._children.get(values)
        if child is None:
            child = self._children[values] = self._metric.labels(*values)
        return child


class Metrics:
    """Every metric the service exports."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        Info(
            "points_adjuster_build",
            "The running service: its name and version, and those of Python and aiokafka.",
            registry=r,
        ).info(build_labels())
        self.records_consumed = Counter(
            "points_adjuster_records_consumed_total",
            "Command records read from Kafka.",
            ["topic"],
            registry=r,
        )
        self.outcomes = Counter(
            "points_adjuster_outcomes_total",
            "Outcome events published, by kind (completed, failed) and failure reason.",
            ["kind", "reason"],
            registry=r,
        )
        self.duplicates = Counter(
            "points_adjuster_duplicates_total",
            "Repeated commands absorbed without a PAS call, by the stored state they matched"
            " (completed, failed, unknown) or conflict.",
            ["kind"],
            registry=r,
        )
        self.undecodable = Counter(
            "points_adjuster_undecodable_records_total",
            "Records that could not be decoded as a command, by reason.",
            ["reason"],
            registry=r,
        )
        self.invalid = Counter(
            "points_adjuster_invalid_commands_total",
            "Commands that failed validation.",
            registry=r,
        )
        self.pas_requests = Counter(
            "points_adjuster_pas_requests_total",
            "PAS adjustment calls by classified result (applied, retry, permanent, unknown,"
            " dead_letter) and HTTP status or transport failure.",
            ["result", "status"],
            registry=r,
        )
        self.pas_latency = Histogram(
            "points_adjuster_pas_request_duration_seconds",
            "Duration of PAS adjustment calls.",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.pas_history_requests = Counter(
            "points_adjuster_pas_history_requests_total",
            "PAS history lookups (reconciliation) by result (found, incomplete, failed) and"
            " HTTP status (none when no answer came).",
            ["result", "status"],
            registry=r,
        )
        self.pas_history_latency = Histogram(
            "points_adjuster_pas_history_request_duration_seconds",
            "Duration of PAS history lookups, by result.",
            ["result"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.processing = Histogram(
            "points_adjuster_command_duration_seconds",
            "From taking a command to its outcome being acknowledged by Kafka.",
            buckets=COMMAND_BUCKETS,
            registry=r,
        )
        self.service_added = Histogram(
            "points_adjuster_command_service_added_seconds",
            "A command's time in the service (points_adjuster_command_duration_seconds) minus"
            " the time its PAS calls took: what the service adds to the API's latency,"
            " including any backoff before a retry.",
            buckets=ADDED_BUCKETS,
            registry=r,
        )
        self.retries = Counter(
            "points_adjuster_retries_scheduled_total",
            "Records handed back for later: backoff (nothing applied), busy (claim held"
            " elsewhere), reconcile (unknown outcome awaiting a history lookup).",
            ["kind"],
            registry=r,
        )
        self.dead_letters = Counter(
            "points_adjuster_dead_letters_total",
            "Records copied to the dead-letter (dlt) or review topic, by reason.",
            ["target", "reason"],
            registry=r,
        )
        self.buffered = Gauge(
            "points_adjuster_records_buffered",
            "Records fetched and not yet finished (bounded by PA_PROCESSING__MAX_BUFFERED).",
            registry=r,
        )
        self.paused = Gauge(
            "points_adjuster_partitions_paused",
            "Partitions whose fetching is paused because their share of the buffer is full.",
            registry=r,
        )
        self.circuit_open = Gauge(
            "points_adjuster_circuit_open",
            "1 while the circuit breaker keeps calls from PAS (open or half-open).",
            registry=r,
        )
        self.pas_concurrency_limit = Gauge(
            "points_adjuster_pas_concurrency_limit",
            "PAS calls allowed in flight now (adaptive: lower while PAS pushes back).",
            registry=r,
        )
        self.pruned = Counter(
            "points_adjuster_idempotency_pruned_total",
            "Idempotency records deleted after the retention window.",
            registry=r,
        )
        self.in_flight = Gauge(
            "points_adjuster_commands_in_flight",
            "Commands taken from Kafka whose outcome is not yet acknowledged.",
            registry=r,
        )
        self.commits = Counter(
            "points_adjuster_offset_commits_total",
            "Offset commits, by result (ok, failed).",
            ["result"],
            registry=r,
        )
        self.assigned_partitions = Gauge(
            "points_adjuster_assigned_partitions",
            "Command partitions currently assigned to this instance.",
            registry=r,
        )
        self._ready = Gauge(
            "points_adjuster_ready",
            "1 when consuming, 0 when starting, stopping or held up by a fault (see /readyz).",
            registry=r,
        )
        self.faults = Counter(
            "points_adjuster_faults_total",
            "Records held up by a fault of our own infrastructure and tried again later, by"
            " part (kafka, store, claim, registry, other).",
            ["part"],
            registry=r,
        )
        self.buffered_bytes = Gauge(
            "points_adjuster_records_buffered_bytes",
            "Bytes of records fetched and not yet finished (bounded by"
            " PA_PROCESSING__MAX_BUFFERED_BYTES).",
            registry=r,
        )

        self.lag_records = Gauge(
            "points_adjuster_consumer_lag_records",
            "Records of a command partition not yet done: from its first unfinished record (or"
            " the next to fetch) to its last stable offset (read_committed's end).",
            ["partition"],
            registry=r,
        )
        self.lag_seconds = Gauge(
            "points_adjuster_consumer_lag_seconds",
            "Age of the oldest fetched record of a command partition not yet done (now minus"
            " its record timestamp); 0 when none is in hand.",
            ["partition"],
            registry=r,
        )
        self.commit_gap = Gauge(
            "points_adjuster_commit_gap_records",
            "Records of a command partition finished but not yet committed.",
            ["partition"],
            registry=r,
        )
        self.store_latency = Histogram(
            "points_adjuster_store_operation_duration_seconds",
            "Duration of idempotency store calls, by operation, failed calls included.",
            ["operation"],
            buckets=STORE_BUCKETS,
            registry=r,
        )
        self.store_errors = Counter(
            "points_adjuster_store_errors_total",
            "Idempotency store calls that failed, by operation (a claim lost to another"
            " worker is not counted: it is no fault of the store).",
            ["operation"],
            registry=r,
        )
        self.unknown_outcomes = Counter(
            "points_adjuster_unknown_outcomes_total",
            "Outcome events published with reason OUTCOME_UNKNOWN (duplicates not counted):"
            " PAS may or may not have applied the adjustment.",
            registry=r,
        )
        self.review_copies = Counter(
            "points_adjuster_review_copies_total",
            "Records copied to the review topic (unknown outcomes for a person to settle).",
            registry=r,
        )
        self.certificate_expiry = Gauge(
            "points_adjuster_certificate_expiry_seconds",
            "Seconds until a loaded certificate expires (negative once expired), by certificate"
            " (pas_encryption, signing, decryption, tls_client); refreshed every minute.",
            ["certificate"],
            registry=r,
        )

        # The per-command metrics' children, looked up once (``Children``).
        self.records_consumed_for = Children(self.records_consumed)
        self.outcomes_for = Children(self.outcomes)
        self.pas_requests_for = Children(self.pas_requests)
        self.pas_latency_for = Children(self.pas_latency)
        self.store_latency_for = Children(self.store_latency)
        self.store_errors_for = Children(self.store_errors)

    def set_certificate_expiry(self, expiry: Mapping[str, datetime], now: datetime) -> None:
        """Set each certificate's seconds to expiry, as of ``now`` (timezone-aware)."""
        for certificate, not_after in expiry.items():
            self.certificate_expiry.labels(certificate).set((not_after - now).total_seconds())

    def forget_partition(self, partition: int) -> None:
        """Drop the per-partition series of a partition no longer assigned here."""
        label = str(partition)
        for gauge in (self.lag_records, self.lag_seconds, self.commit_gap):
            with contextlib.suppress(KeyError):  # never observed here
                gauge.remove(label)

    def set_ready(self, ready: bool) -> None:
        self._ready.set(1 if ready else 0)
