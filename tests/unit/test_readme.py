"""README.md and docs/ stay true to the code they document, and to each other."""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.metrics import MetricWrapperBase
from pydantic import BaseModel
from pydantic.fields import FieldInfo

from pa_devkit.cli import build_parser as build_devkit_parser
from service.cli import build_parser as build_service_parser
from service.metrics import Metrics
from service.settings import Settings, env_name
from service.workers.endpoints import WorkerMetrics

ROOT = Path(__file__).resolve().parents[2]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]
SETTINGS_PAGE = DOCS / "settings.md"
OPERATIONS_PAGE = DOCS / "operations.md"
METRICS_PAGE = DOCS / "metrics.md"
ALERT_RULES = ROOT / "deploy" / "prometheus" / "alerts.yml"
METRIC_NAME = re.compile(r"\bpoints_adjuster_\w+")

FENCE = re.compile(r"^\s*(```|~~~)")
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$")
CODE_SPAN = re.compile(r"(`+).+?\1")
INLINE_LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]*)>?(?:\s+\"[^\"]*\")?\s*\)")
REFERENCE_DEFINITION = re.compile(r"^\s{0,3}\[[^\]]+\]:\s*(\S+)")
AUTOLINK = re.compile(r"<(?:https?|ftp|mailto):[^>]*>|\bhttps?://\S+", re.IGNORECASE)
TABLE_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|\s*(.*?)\s*\|\s*(.*?)\s*\|\s*$")


def _text(page: Path) -> str:
    return page.read_text(encoding="utf-8")


def _prose_lines(page: Path) -> Iterator[tuple[int, str]]:
    """The page's lines outside fenced code blocks, with their line numbers."""
    fenced = False
    for number, line in enumerate(_text(page).splitlines(), start=1):
        if FENCE.match(line):
            fenced = not fenced
            continue
        if not fenced:
            yield number, line


def _slug(heading: str) -> str:
    """The anchor GitHub gives a heading: markup dropped, lower case, punctuation removed."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading).replace("`", "")
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


@cache
def _headings(page: Path) -> tuple[str, ...]:
    return tuple(match.group(2) for _, line in _prose_lines(page) if (match := HEADING.match(line)))


def _links(page: Path) -> Iterator[tuple[int, str]]:
    """Every link target written on the page outside code."""
    for number, line in _prose_lines(page):
        prose = CODE_SPAN.sub("", line)
        for link in INLINE_LINK.finditer(prose):
            yield number, link.group(1)
        if definition := REFERENCE_DEFINITION.match(prose):
            yield number, definition.group(1)


def _env_names(
    model: type[BaseModel], prefix: tuple[str, ...] = ()
) -> Iterator[tuple[str, FieldInfo]]:
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            yield from _env_names(annotation, (*prefix, name))
        else:
            yield env_name((*prefix, name)), field


def _table(page: Path) -> dict[str, tuple[str, str]]:
    """The page's table rows whose first cell is one code span: first cell -> the next two."""
    rows: dict[str, tuple[str, str]] = {}
    for _, line in _prose_lines(page):
        if match := TABLE_ROW.match(line):
            rows[match.group(1)] = (match.group(2), match.group(3))
    return rows


def _documented_default(value: Any) -> str:
    """A default as the settings table writes it."""
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, frozenset | set | list | tuple):
        return json.dumps(sorted(value), separators=(",", ":"))
    return str(value)


def test_every_setting_is_documented_with_its_default() -> None:
    """Each environment variable the settings read has a row in docs/settings.md, with the
    default the code has."""
    rows = _table(SETTINGS_PAGE)
    missing: list[str] = []
    wrong: list[str] = []
    for name, field in _env_names(Settings):
        if name not in rows:
            missing.append(name)
            continue
        documented = rows[name][0]
        default = field.get_default(call_default_factory=True)
        if default is None:
            if not documented.startswith("none"):
                wrong.append(f"{name}: {documented} (code: none)")
        elif documented != f"`{_documented_default(default)}`":
            wrong.append(f"{name}: {documented} (code: {_documented_default(default)})")
    assert missing == []
    assert wrong == []


def _metric_labels(metrics: Metrics | WorkerMetrics) -> dict[str, tuple[str, ...]]:
    """Each metric family's label names, from the wrappers (a family without children yet
    has no samples to read them from) and, for the rest, from the samples."""
    labels: dict[str, tuple[str, ...]] = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            labels[value._name] = tuple(value._labelnames)
    for family in metrics.registry.collect():
        if family.name not in labels:
            names = {name for sample in family.samples for name in sample.labels}
            labels[family.name] = tuple(sorted(names - {"le", "quantile"}))
    return labels


def _catalogue() -> dict[str, list[str]]:
    """docs/metrics.md's rows: metric name -> its cells (type, labels, meaning, alerts)."""
    rows: dict[str, list[str]] = {}
    for _, line in _prose_lines(METRICS_PAGE):
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if line.startswith("|") and re.fullmatch(r"`points_adjuster_\w+`", cells[0]):
            rows[cells[0].strip("`")] = cells[1:]
    return rows


def _exported() -> dict[str, tuple[str, tuple[str, ...]]]:
    """Each metric the service exports (and the parent of ``run --workers N``), as a query
    names it: its type and label names."""
    exported: dict[str, tuple[str, tuple[str, ...]]] = {}
    for metrics in (Metrics(), WorkerMetrics()):
        labels = _metric_labels(metrics)
        for family in metrics.registry.collect():
            suffix = {"counter": "_total", "info": "_info"}.get(family.type, "")
            exported[family.name + suffix] = (family.type, labels[family.name])
    return exported


def test_every_metric_is_catalogued_with_its_type_and_labels() -> None:
    """docs/metrics.md has one row per metric the service exports, with its type and every
    label it carries in the labels column, and no row for a metric that is not exported."""
    exported = _exported()
    rows = _catalogue()
    assert exported
    problems = [f"{name}: no row" for name in exported if name not in rows]
    problems += [f"{name}: no such metric" for name in rows if name not in exported]
    for name, (kind, labels) in exported.items():
        if name not in rows:
            continue
        documented_kind, documented_labels = rows[name][0], rows[name][1]
        if documented_kind != kind:
            problems.append(f"{name}: documented as {documented_kind}, is a {kind}")
        problems.extend(
            f"{name}: label {label} not documented"
            for label in labels
            if f"`{label}`" not in documented_labels
        )
        documented = set(re.findall(r"`(\w+)`", documented_labels))
        problems.extend(f"{name}: label {extra} not exported" for extra in documented - set(labels))
    assert problems == []


def test_the_catalogue_names_the_alerts_that_read_each_metric() -> None:
    """Each metric's alert column names exactly the alert rules of deploy/prometheus/alerts.yml
    whose expression reads it (when the rules are there)."""
    if not ALERT_RULES.exists():
        pytest.skip("no alert rules at deploy/prometheus/alerts.yml")
    import yaml

    reading: dict[str, set[str]] = {}
    for group in yaml.safe_load(ALERT_RULES.read_text(encoding="utf-8"))["groups"]:
        for rule in group["rules"]:
            if "alert" in rule:
                for metric in METRIC_NAME.findall(str(rule["expr"])):
                    reading.setdefault(metric, set()).add(rule["alert"])
    rows = _catalogue()
    problems = [
        f"{name}: read by {sorted(alerts)}, not catalogued"
        for name, alerts in reading.items()
        if name not in rows
    ]
    for name, cells in rows.items():
        named = {alert.strip() for alert in cells[3].split(",") if alert.strip()}
        if named != reading.get(name, set()):
            problems.append(
                f"{name}: column says {sorted(named)}, rules read it in "
                f"{sorted(reading.get(name, set()))}"
            )
    assert problems == []


def _commands(
    parser: argparse.ArgumentParser, path: tuple[str, ...] = ()
) -> Iterator[tuple[tuple[str, ...], list[str]]]:
    """Every sub-command path of ``parser`` with its long options."""
    options: list[str] = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _commands(sub, (*path, name))
        else:
            options.extend(o for o in action.option_strings if o.startswith("--"))
    if path:
        yield path, [o for o in options if o not in {"--help", "--version"}]


@pytest.mark.parametrize(
    ("program", "parser"),
    [
        ("points-adjuster", build_service_parser()),
        ("points-adjuster-devkit", build_devkit_parser()),
    ],
)
def test_every_cli_command_and_option_is_documented(
    program: str, parser: argparse.ArgumentParser
) -> None:
    """Each sub-command of both command lines has a row in the command tables of
    docs/operations.md and of the README, and every option of each appears in
    docs/operations.md."""
    operations = _text(OPERATIONS_PAGE)
    readme = _text(README)
    commands = list(_commands(parser))
    assert commands
    missing: list[str] = []
    for path, options in commands:
        if len(path) == 1:
            missing.extend(
                f"{program} {path[0]}: no row in {page}"
                for page, text in (("docs/operations.md", operations), ("README.md", readme))
                if f"| `{path[0]}" not in text
            )
        elif " ".join(path) not in operations:
            missing.append(f"{program} {' '.join(path)}: not in docs/operations.md")
        missing.extend(
            f"{program} {' '.join(path)} {option}: not in docs/operations.md"
            for option in options
            if not re.search(re.escape(option) + r"(?![\w-])", operations)
        )
    assert missing == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_links_stay_inside_the_repository_and_resolve(page: Path) -> None:
    """Every markdown link on the page is relative, names a file or folder of the repository
    that exists, and any #anchor it carries names a heading of its target; URLs appear only
    in code, never as links."""
    problems: list[str] = []
    for number, target in _links(page):
        where = f"{page.relative_to(ROOT)}:{number}: {target}"
        address, _, anchor = target.partition("#")
        if re.match(r"^[a-z][a-z0-9+.-]*:|^//|^/", address, re.IGNORECASE):
            problems.append(f"{where}: not a relative link")
            continue
        resolved = (page.parent / address).resolve() if address else page
        if not resolved.is_relative_to(ROOT):
            problems.append(f"{where}: outside the repository")
        elif not resolved.exists():
            problems.append(f"{where}: no such file")
        elif (
            anchor
            and resolved.suffix == ".md"
            and anchor not in {_slug(heading) for heading in _headings(resolved)}
        ):
            problems.append(f"{where}: no heading with that anchor")
    for number, line in _prose_lines(page):
        problems.extend(
            f"{page.relative_to(ROOT)}:{number}: bare URL {url}"
            for url in AUTOLINK.findall(CODE_SPAN.sub("", line))
        )
    assert problems == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: page.relative_to(ROOT).as_posix())
def test_no_heading_appears_twice_on_a_page(page: Path) -> None:
    """No two headings of one page have the same text or the same anchor."""
    anchors = Counter(_slug(heading) for heading in _headings(page))
    assert [anchor for anchor, count in anchors.items() if count > 1] == []


def test_the_readme_leads_to_every_page() -> None:
    """Every page under docs/ is linked from the README, so it is found from the front page."""
    linked = {
        (README.parent / target.partition("#")[0]).resolve()
        for _, target in _links(README)
        if target.partition("#")[0]
    }
    assert [page.name for page in PAGES[1:] if page.resolve() not in linked] == []


def test_the_readme_keeps_what_a_newcomer_needs() -> None:
    """The front page says what the service does, gives the two commands with the demo's
    output, the command line, the architecture, and where every reference lives."""
    headings = set(_headings(README))
    assert {
        "The two commands",
        "Command line",
        "How a command flows",
        "Benchmarks",
        "Where to read more",
    } <= headings
    readme = _text(README)
    for needed in ("make demo", "make test", "points-adjuster demo summary", "make bench"):
        assert needed in readme
