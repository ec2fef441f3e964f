"""The benchmarks' own arithmetic: the in-service latency read from the service's histogram,
and the py-spy summary's attribution of samples to µs per adjustment."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from benchkit import histogram_buckets, histogram_quantile
from profile_summary import package_of, read, render

SCRAPE = """# HELP points_adjuster_command_duration_seconds x
points_adjuster_command_duration_seconds_bucket{le="0.05"} 10.0
points_adjuster_command_duration_seconds_bucket{le="0.06"} 60.0
points_adjuster_command_duration_seconds_bucket{le="0.1"} 90.0
points_adjuster_command_duration_seconds_bucket{le="+Inf"} 100.0
points_adjuster_command_duration_seconds_count 100.0
points_adjuster_outcomes_total{kind="completed",reason=""} 100.0
"""


def test_histogram_buckets_reads_cumulative_counts_by_bound() -> None:
    buckets = histogram_buckets(SCRAPE, "points_adjuster_command_duration_seconds")
    assert buckets == {0.05: 10.0, 0.06: 60.0, 0.1: 90.0, math.inf: 100.0}


def test_histogram_quantile_interpolates_inside_the_bucket_of_the_window() -> None:
    before = {0.05: 10.0, 0.06: 10.0, 0.1: 10.0, math.inf: 10.0}  # 10 observed earlier
    after = histogram_buckets(SCRAPE, "points_adjuster_command_duration_seconds")
    # 90 in the window: 0 up to 50 ms, 50 in 50-60 ms, 30 in 60-100 ms, 10 above.
    assert histogram_quantile(before, after, 0.5) == pytest.approx(0.05 + 0.01 * 45 / 50)
    assert histogram_quantile(before, after, 0.8) == pytest.approx(0.06 + 0.04 * 22 / 30)
    assert histogram_quantile(before, after, 0.99) == 0.1  # in +Inf: the last finite bound
    assert math.isnan(histogram_quantile(after, after, 0.5))  # nothing in the window


def test_profile_counts_the_event_loop_thread_and_scales_to_its_cpu(tmp_path: Path) -> None:
    raw = tmp_path / "profile.txt"
    raw.write_text(
        "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118);"
        "PasClient._adjust (service/pas/client.py:10);sign (service/security/oauth1.py:201) 30\n"
        "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118);"
        "Fetcher.fetch (aiokafka/consumer/fetcher.py:5) 10\n"
        "Thread._bootstrap (threading.py:1002);SqliteStore._transact"
        " (service/idempotency/sqlite.py:613) 50\n"
    )
    profile = read(raw)
    assert profile.samples == 40  # the writer thread's 50 are kept apart
    assert profile.by_package == {"service.security": 30, "aiokafka.consumer": 10}
    assert sum(profile.other_threads.values()) == 50
    text = render(profile, 400.0)  # 400 µs of the loop per adjustment: 10 µs a sample
    security_line = next(line for line in text.splitlines() if "service.security" in line)
    assert security_line.split()[1:] == ["300", "75.0%"]
    assert "PasClient._adjust (service/pas/client.py)" in text
    assert "Runner.run" not in text  # the launcher's frames say nothing


def test_package_of_names_stdlib_and_subpackages() -> None:
    assert package_of("asyncio/streams.py") == "asyncio"
    assert package_of("contextlib.py") == "stdlib contextlib"
    assert package_of("<frozen runpy>") == "stdlib runpy"
    assert package_of("service/kafka/runner.py") == "service.kafka"
    assert package_of("httpx/_models.py") == "httpx._models"
