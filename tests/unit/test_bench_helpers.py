"""The benchmarks' own arithmetic: the in-service latency read from the service's histogram,
the py-spy summary's attribution of samples to µs per adjustment, and the pure parts of
``bench_throughput.py --pin`` (which core gets what, per-core busy shares, /proc fields)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))

from bench_throughput import parse_args, service_transport
from benchkit import (
    BenchError,
    descendants,
    format_window,
    histogram_buckets,
    histogram_quantile,
    window_counts,
)
from pinning import (
    CorePlan,
    affinity,
    core_busy_pct,
    core_list,
    core_ticks,
    format_core_busy,
    last_cpu,
    pin_tree,
    task_ids,
    threads_by_cpu,
)
from profile_summary import package_of, read, render

from service.settings import PasSettings

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


# --- bench_throughput.py --pin: the pure parts ----------------------------------------------

STAT_2_CORES = """cpu  300 0 100 500 100 0 0 0 0 0
cpu0 100 0 50 300 50 0 0 0 0 0
cpu1 200 0 50 200 50 0 0 0 0 0
intr 12345 0 0
ctxt 99
"""


def test_core_plan_gives_the_service_the_highest_core_and_the_rest_the_others() -> None:
    plan = CorePlan.choose({0, 1, 2, 3})
    assert plan.service == frozenset({3})
    assert plan.others == frozenset({0, 1, 2})
    assert plan.describe() == "service on CPU 3, the rest on CPU 0-2"
    chosen = CorePlan.choose([0, 1], service_core=0)
    assert (chosen.service, chosen.others) == (frozenset({0}), frozenset({1}))


def test_core_plan_refuses_one_core_and_a_core_it_may_not_use() -> None:
    with pytest.raises(BenchError, match="at least 2 cores"):
        CorePlan.choose({5})
    with pytest.raises(BenchError, match="--service-core 7 is not one of"):
        CorePlan.choose({0, 1}, service_core=7)


def test_core_list_writes_runs_of_cores() -> None:
    assert core_list({0, 2, 3, 4, 7}) == "0,2-4,7"
    assert core_list([1]) == "1"
    assert core_list([]) == "-"


def test_last_cpu_reads_field_39_past_a_command_name_with_spaces_and_parens() -> None:
    stat = (
        "749 (a (b) c) R 706 706 31087 0 -1 4194304 102 0 0 0 0 0 0 0 20 0 1 0 2349899"
        " 3133440 416 18446744073709551615 1 2 3 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0"
    )
    assert last_cpu(stat) == 1


def test_core_busy_pct_is_each_cores_busy_share_between_two_readings() -> None:
    before = core_ticks(STAT_2_CORES)
    assert before == {0: (150, 500), 1: (250, 500)}  # idle + iowait are not busy
    after = {0: (150 + 90, 500 + 100), 1: (250 + 25, 500 + 100), 2: (10, 20)}
    shares = core_busy_pct(before, after)
    assert shares == {0: pytest.approx(90.0), 1: pytest.approx(25.0)}  # core 2: no "before"
    assert format_core_busy(shares) == "cpu0 90 %, cpu1 25 %"
    assert core_busy_pct(before, before) == {}  # no time passed: nothing to say
    assert format_core_busy({}) == "-"


def test_service_transport_is_the_environments_else_the_settings_default() -> None:
    assert service_transport({"PA_PAS__HTTP_TRANSPORT": "native"}) == "native"
    assert service_transport({"pa_pas__http_transport": "httpx"}) == "httpx"
    default = PasSettings.model_fields["http_transport"].default
    assert service_transport({"PATH": "/bin"}) == default


def test_pin_options_parse_and_service_core_needs_pin() -> None:
    cfg = parse_args(["--pin", "--service-core", "0", "--only", "sweep-p12-a10000,paced"])
    assert (cfg.pin, cfg.service_core) == (True, 0)
    assert cfg.only == ("sweep-p12-a10000", "paced")
    assert parse_args([]).pin is False
    with pytest.raises(SystemExit):
        parse_args(["--service-core", "1"])


def test_pin_tree_pins_every_thread_of_a_process_and_of_its_children() -> None:
    core = min(os.sched_getaffinity(0))
    script = "import subprocess, sys, time; subprocess.Popen(['sleep', '30']); time.sleep(30)"
    parent = subprocess.Popen([sys.executable, "-c", script])
    try:
        deadline = time.monotonic() + 10
        while not descendants(parent.pid) and time.monotonic() < deadline:
            time.sleep(0.02)
        (child,) = descendants(parent.pid)
        pinned = pin_tree(parent.pid, frozenset({core}))
        assert pinned == len(task_ids(parent.pid)) + len(task_ids(child))
        assert affinity(parent.pid) == affinity(child) == frozenset({core})
        assert set(threads_by_cpu(parent.pid)) <= set(os.sched_getaffinity(0))
    finally:
        for pid in descendants(parent.pid):
            os.kill(pid, signal.SIGTERM)
        parent.terminate()
        parent.wait(10)


def test_window_counts_are_each_buckets_own_observations_between_two_scrapes() -> None:
    before = {0.05: 10.0, 0.06: 10.0, 0.1: 10.0, math.inf: 10.0}
    after = histogram_buckets(SCRAPE, "points_adjuster_command_duration_seconds")
    counts = window_counts(before, after)
    assert counts == [(0.05, 0.0), (0.06, 50.0), (0.1, 30.0), (math.inf, 10.0)]
    assert format_window(counts) == "50-60 ms 50, 60-100 ms 30, >100 ms 10"
    assert format_window([(0.05, 3.0), (math.inf, 0.0)]) == "<=50 ms 3"
    assert format_window(window_counts(after, after)) == "nothing observed"
