"""The SRE pack, read against the service: alert rules, their unit tests and runbooks, the
Grafana dashboard.

Every metric a dashboard panel or an alert rule queries must be one the service exports
(collected from `service.metrics.Metrics().registry`, no live scrape), every alert has a
runbook section and promtool's unit tests fire and resolve each one. promtool comes with
Debian's `prometheus` package (`make prometheus-tools`); with CI=true a missing promtool fails
the run, elsewhere its tests are skipped, saying why.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.kafka.runner import fault_part
from service.metrics import Metrics
from service.registry.errors import RegistryUnavailable
from service.settings import PasSettings
from service.workers.endpoints import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "alerts_test.yml"
CHART_RULES = ROOT / "helm" / "points-adjuster" / "files" / "alerts.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "points-adjuster.json"
RUNBOOKS = ROOT / "docs" / "runbooks.md"

SCRAPE_JOB = 'job="points-adjuster"'
"""The job every rule's selector names; the chart rewrites it to its release's job."""

PROMETHEUS_OWN_SERIES = {"up"}
"""Series Prometheus writes itself for each target, which rules may query too."""

REQUIRED_ALERTS = {
    "ConsumerLagHigh",
    "NoProgress",
    "DeadLettersRising",
    "ErrorRatioHigh",
    "OutcomeUnknown",
    "CircuitOpen",
    "ServiceNotReady",
    "StoreErrors",
}

PROMQL_KEYWORDS = {"and", "or", "unless", "offset", "bool", "inf", "nan", "atan2"}
MODIFIER_LISTS = re.compile(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)")
IDENTIFIER = re.compile(r"[A-Za-z_:][\w:]*")


# -- what the service exports, and what a query names ----------------------------------------


def exported_metric_names() -> set[str]:
    """Every series name the service exports: counters with _total, histograms' parts, info
    metrics with _info (a labelled family has no sample until first used)."""
    names: set[str] = set()
    families = [*Metrics().registry.collect(), *WorkerMetrics().registry.collect()]
    for family in families:
        names.add(family.name)
        names.update(sample.name for sample in family.samples)
        if family.type == "counter":
            names.add(family.name + "_total")
        if family.type == "histogram":
            names.update(family.name + part for part in ("_bucket", "_sum", "_count"))
        if family.type == "info":
            names.add(family.name + "_info")
    return names


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression selects (functions, keywords, label names and
    Grafana's $variables left out)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)
    text = re.sub(r"\{[^}]*\}", " ", text)
    text = re.sub(r"\[[^\]]*\]", " ", text)
    text = MODIFIER_LISTS.sub(" ", text)
    text = re.sub(r"\$\w+", " ", text)
    names: set[str] = set()
    for match in IDENTIFIER.finditer(text):
        before = text[match.start() - 1] if match.start() else " "
        if before.isdigit() or before == ".":
            continue  # a number's exponent or a duration's unit (1e3, 15m)
        if text[match.end() :].lstrip().startswith("("):
            continue  # a function or an aggregation
        if match.group().lower() in PROMQL_KEYWORDS:
            continue
        names.add(match.group())
    return names


@cache
def rules() -> dict[str, dict[str, Any]]:
    """The alert rules of deploy/prometheus/alerts.yml by name."""
    loaded = yaml.safe_load(RULES.read_text("utf-8"))
    found: dict[str, dict[str, Any]] = {}
    for group in loaded["groups"]:
        for rule in group["rules"]:
            assert rule["alert"] not in found, rule["alert"]
            found[rule["alert"]] = rule
    return found


@cache
def dashboard() -> dict[str, Any]:
    loaded = json.loads(DASHBOARD.read_text("utf-8"))
    assert isinstance(loaded, dict)
    return loaded


def panels() -> list[dict[str, Any]]:
    """Every panel of the dashboard, rows' collapsed panels included, rows themselves not."""
    found: list[dict[str, Any]] = []
    for panel in dashboard()["panels"]:
        if panel["type"] == "row":
            found.extend(panel.get("panels", []))
        else:
            found.append(panel)
    return found


def runbook_sections() -> dict[str, str]:
    """docs/runbooks.md's level-2 sections by their anchor (GitHub's: lower case)."""
    text = RUNBOOKS.read_text("utf-8")
    parts = re.split(r"^## (.+)$", text, flags=re.MULTILINE)
    return {
        re.sub(r"[^\w\- ]", "", title).strip().lower().replace(" ", "-"): body
        for title, body in zip(parts[1::2], parts[2::2], strict=True)
    }


@pytest.fixture(scope="session")
def promtool() -> str:
    """Debian's promtool; missing, it fails under CI=true and skips elsewhere."""
    found = shutil.which("promtool")
    if found is None:
        reason = "promtool is not installed (make prometheus-tools installs Debian's prometheus)"
        if os.environ.get("CI") == "true":
            pytest.fail(reason, pytrace=False)
        pytest.skip(reason)
    return found


# -- the tests -------------------------------------------------------------------------------


def test_metric_names_are_read_out_of_promql_and_nothing_else() -> None:
    """The name extraction finds selected metrics and skips functions, aggregation labels,
    label values, ranges, keywords, numbers and Grafana variables, so the checks below are
    no rubber stamp."""
    expr = (
        'histogram_quantile(0.99, sum by (le, operation) (rate(a_bucket{job="$job",'
        ' x="rate(b)"}[$__rate_interval]))) / on (job) c offset 15m unless d > bool 1e3'
        " and max without (partition) (e:recorded) > 0.05"
    )
    assert metric_names(expr) == {"a_bucket", "c", "d", "e:recorded"}


def test_every_dashboard_query_uses_metrics_the_service_exports() -> None:
    """Each expression of each panel selects only series the service exports."""
    exported = exported_metric_names()
    for panel in panels():
        for target in panel["targets"]:
            unknown = metric_names(target["expr"]) - exported
            assert unknown == set(), f"{panel['title']}: {unknown}"


def test_the_dashboard_shows_what_on_call_reads_first() -> None:
    """The dashboard covers throughput and outcomes, the error ratio, PAS latency percentiles,
    lag per partition in records and seconds, dead letters, review copies, unknown outcomes,
    the circuit, the concurrency limit and the store's latency and errors."""
    exprs = [t["expr"] for panel in panels() for t in panel["targets"]]
    used = set().union(*(metric_names(e) for e in exprs))
    assert used >= {
        "points_adjuster_outcomes_total",
        "points_adjuster_pas_request_duration_seconds_bucket",
        "points_adjuster_consumer_lag_records",
        "points_adjuster_consumer_lag_seconds",
        "points_adjuster_dead_letters_total",
        "points_adjuster_review_copies_total",
        "points_adjuster_unknown_outcomes_total",
        "points_adjuster_circuit_open",
        "points_adjuster_pas_concurrency_limit",
        "points_adjuster_store_operation_duration_seconds_bucket",
        "points_adjuster_store_errors_total",
    }
    quantiles = {
        quantile
        for e in exprs
        for quantile in re.findall(
            r"histogram_quantile\(([\d.]+),.*pas_request_duration_seconds_bucket", e
        )
    }
    assert quantiles >= {"0.5", "0.95", "0.99"}
    per_partition = [e for e in exprs if "consumer_lag" in e and "by (partition)" in e]
    assert len(per_partition) >= 2


def test_the_dashboard_shows_days_left_per_certificate_at_the_alerts_thresholds() -> None:
    """One panel shows each certificate's time to expiry in days (seconds over 86,400, one
    series per certificate label), red under the days of CertificateExpiringSoon (14) and
    orange under the start-up warning's 30 (PA_PAS__CERTIFICATE_WARNING_DAYS' default)."""
    (panel,) = [
        p
        for p in panels()
        if any("points_adjuster_certificate_expiry_seconds" in t["expr"] for t in p["targets"])
    ]
    (target,) = panel["targets"]
    assert "by (certificate)" in target["expr"]
    assert target["expr"].rstrip().endswith("/ 86400")
    assert target["legendFormat"] == "{{certificate}}"
    defaults = panel["fieldConfig"]["defaults"]
    assert defaults["unit"] == "d"
    steps = [(step["color"], step["value"]) for step in defaults["thresholds"]["steps"]]
    alert = re.fullmatch(r".*< (\d+) \* 86400", rules()["CertificateExpiringSoon"]["expr"].strip())
    assert alert is not None
    alert_days = int(alert.group(1))
    warning_days = PasSettings.model_fields["certificate_warning_days"].default
    assert steps == [("red", None), ("orange", alert_days), ("green", warning_days)]
    assert (alert_days, warning_days) == (14, 30)


def test_the_dashboard_shows_the_schema_registrys_faults() -> None:
    """A panel shows the records held up by the schema registry (faults of part registry),
    the part the runner counts a RegistryError under."""
    assert fault_part(RegistryUnavailable("GET /schemas/ids/7: timed out")) == "registry"
    registry = [
        t["expr"]
        for p in panels()
        for t in p["targets"]
        if "points_adjuster_faults_total" in t["expr"] and 'part="registry"' in t["expr"]
    ]
    assert len(registry) == 1


def test_the_dashboard_is_a_grafana_dashboard_laid_out_without_overlap() -> None:
    """schemaVersion 39, a stable uid, every query on the dashboard's data source variable,
    panels inside the 24-column grid and none covering another."""
    board = dashboard()
    assert board["schemaVersion"] == 39
    assert board["uid"] == "points-adjuster"
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    taken: set[tuple[int, int]] = set()
    ids = [panel["id"] for panel in board["panels"]]
    assert len(ids) == len(set(ids))
    for panel in board["panels"]:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        cells = {
            (x, y)
            for x in range(grid["x"], grid["x"] + grid["w"])
            for y in range(grid["y"], grid["y"] + grid["h"])
        }
        assert not cells & taken, panel["title"]
        taken |= cells
        if panel["type"] != "row":
            assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
            assert panel["targets"], panel["title"]
            for target in panel["targets"]:
                assert target["datasource"]["uid"] == "${datasource}", panel["title"]


def test_every_alert_rule_uses_metrics_the_service_exports() -> None:
    """Each rule's expression selects only the service's series (and Prometheus' own `up`),
    and every selector names the scrape job, so the chart's rewrite scopes all of them."""
    exported = exported_metric_names() | PROMETHEUS_OWN_SERIES
    for name, rule in rules().items():
        expr = rule["expr"]
        used = metric_names(expr)
        assert used, name
        assert used <= exported, f"{name}: {used - exported}"
        selectors = re.findall(r"([A-Za-z_:][\w:]*)\s*(\{[^}]*\})?", expr)
        for metric, matchers in selectors:
            if metric in used:
                assert SCRAPE_JOB in matchers, f"{name}: {metric} without {SCRAPE_JOB}"


def test_the_alerts_the_issue_asks_for_exist_with_severity_summary_and_runbook() -> None:
    """Every asked-for alert is there; each has a severity, a summary, a description and a
    runbook_url pointing at its own section of docs/runbooks.md."""
    assert set(rules()) >= REQUIRED_ALERTS
    sections = runbook_sections()
    for name, rule in rules().items():
        assert rule["labels"]["severity"] in {"critical", "warning"}, name
        annotations = rule["annotations"]
        assert {"summary", "description", "runbook_url"} <= set(annotations), name
        path, _, anchor = annotations["runbook_url"].partition("#")
        assert path == "docs/runbooks.md", name
        assert anchor == name.lower(), name
        assert anchor in sections, name
    assert rules()["ServiceNotReady"]["for"] == "5m"
    assert "points_adjuster_ready" in rules()["ServiceNotReady"]["expr"]


def test_every_runbook_says_what_it_means_how_to_confirm_act_and_escalate() -> None:
    """Each alert's section of docs/runbooks.md has the four parts an on-call engineer looks
    for, and the sections are exactly the alerts (no runbook without its alert)."""
    sections = runbook_sections()
    alerts = {name.lower() for name in rules()}
    assert alerts <= set(sections)
    runbooks = {anchor for anchor, body in sections.items() if "**Confirm**" in body}
    assert runbooks == alerts
    for anchor in alerts:
        body = sections[anchor]
        for part in ("**What it means**", "**Confirm**", "**Act**", "**Escalate**"):
            assert part in body, f"{anchor}: {part}"


def test_the_charts_rules_are_the_same_file() -> None:
    """helm/points-adjuster/files/alerts.yml, which the PrometheusRule reads, is a byte-for-byte
    copy of deploy/prometheus/alerts.yml (a symlink would not survive `helm package`)."""
    assert not CHART_RULES.is_symlink()
    assert CHART_RULES.read_bytes() == RULES.read_bytes()


def test_the_unit_tests_fire_and_resolve_every_alert() -> None:
    """deploy/prometheus/alerts_test.yml has, for each alert, an evaluation expecting it to
    fire and a later one expecting it resolved (promtool proves them, below)."""
    loaded = yaml.safe_load(RULE_TESTS.read_text("utf-8"))
    assert loaded["rule_files"] == [RULES.name]
    proven: dict[str, set[str]] = {}
    for test in loaded["tests"]:
        fired: dict[str, int] = {}
        for case in sorted(test["alert_rule_test"], key=lambda c: minutes(c["eval_time"])):
            name, at = case["alertname"], minutes(case["eval_time"])
            if case["exp_alerts"]:
                fired.setdefault(name, at)
                proven.setdefault(name, set()).add("fires")
            elif name in fired:
                proven.setdefault(name, set()).add("resolves")
    missing = {name for name in rules() if proven.get(name) != {"fires", "resolves"}}
    assert missing == set(), {name: proven.get(name) for name in missing}


def minutes(duration: str) -> int:
    """A promtool eval_time such as 1h5m, in minutes."""
    units = {"h": 60, "m": 1}
    parts = re.findall(r"(\d+)([hm])", duration)
    assert "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


@pytest.mark.parametrize(
    "args",
    [
        ["check", "rules", "alerts.yml"],
        ["test", "rules", "alerts_test.yml"],
        ["check", "config", "prometheus.yml"],
    ],
    ids=["check-rules", "test-rules", "check-config"],
)
def test_promtool_accepts_the_rules_their_tests_and_the_config(
    promtool: str, args: list[str]
) -> None:
    """`promtool check rules`, `promtool test rules` and `promtool check config` (which loads
    the rule files the compose stack's Prometheus reads) pass."""
    result = subprocess.run(
        [promtool, *args],
        capture_output=True,
        text=True,
        cwd=RULES.parent,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
