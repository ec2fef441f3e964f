"""The per-command metrics' children are looked up once and count where labels() would."""

from __future__ import annotations

from service.metrics import Metrics


def test_a_child_is_looked_up_once_and_counts_in_its_series() -> None:
    metrics = Metrics()
    child = metrics.outcomes_for("completed", "")
    assert metrics.outcomes_for("completed", "") is child
    child.inc()
    metrics.outcomes_for("failed", "PAS_REJECTED").inc(2)
    sample = metrics.registry.get_sample_value
    assert sample("points_adjuster_outcomes_total", {"kind": "completed", "reason": ""}) == 1
    assert (
        sample("points_adjuster_outcomes_total", {"kind": "failed", "reason": "PAS_REJECTED"}) == 2
    )


def test_a_histogram_child_observes_in_its_series() -> None:
    metrics = Metrics()
    metrics.store_latency_for("claim").observe(0.002)
    count = metrics.registry.get_sample_value(
        "points_adjuster_store_operation_duration_seconds_count", {"operation": "claim"}
    )
    assert count == 1
