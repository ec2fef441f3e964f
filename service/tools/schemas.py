"""``points-adjuster schemas check``: is each schema in ``schemas/`` compatible with what was
released before it, and with what the schema registry holds for its subject?

For every ``<stem>.avsc`` in the folder, the current version is compared with the previous
released version in ``released/<stem>.v<N>.avsc`` (every released version with
``--transitive``) by the Avro resolution rules of :mod:`service.tools.avro_compat`:

- BACKWARD: the current schema reads what the released one wrote (the service, upgraded,
  reads the commands of producers still on the old schema; consumers upgraded first read the
  outcome events of a service not yet upgraded);
- FORWARD: the released schema reads what the current one writes (a service not yet
  upgraded reads the commands of producers already on the new schema; consumers not yet
  upgraded read the new outcome events).

The "previous" version is the newest released version that differs from the current file (a
current file equal to its highest released version is compared with the one before). With a
registry configured (``PA_SCHEMA_REGISTRY__URL``), the current schema is also checked against
the latest version of its subject (named as the service names it:
``PA_SCHEMA_REGISTRY__SUBJECT_STRATEGY``, the topic each schema travels on) with the
registry's own compatibility endpoint, under the compatibility level the subject has there.

Nothing is registered or changed. Exit code 0 when everything is compatible, 1 otherwise.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from service.errors import PointsAdjusterError
from service.redact import redact_url
from service.registry.client import SchemaRegistryClient
from service.registry.subjects import subject_name
from service.settings import Settings
from service.tools.avro_compat import Incompatibility, SchemaShapeError, incompatibilities

RELEASED_DIR = "released"
_RELEASED_NAME = re.compile(r"^(?P<stem>[A-Za-z0-9_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")
_TOPIC_OF_RECORD = {
    "PointsAdjustmentRequested": "command_topic",
    "PointsAdjustmentCompleted": "completed_topic",
    "PointsAdjustmentFailed": "failed_topic",
}
"""The KafkaSettings attribute naming the topic each record travels on (the subject's topic)."""


@dataclass(frozen=True)
class Comparison:
    """The current schema against one released version."""

    version: int
    backward: list[Incompatibility]
    forward: list[Incompatibility]

    @property
    def ok(self) -> bool:
        return not self.backward and not self.forward


@dataclass(frozen=True)
class RegistryVerdict:
    """The current schema against what the registry holds for its subject."""

    subject: str
    latest_version: int | None = None
    latest_id: int | None = None
    registered_id: int | None = None
    compatible: bool | None = None
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.compatible is not False


@dataclass
class SchemaReport:
    """What was found about one schema file."""

    file: str
    full_name: str | None = None
    current_version: int | None = None
    released_versions: list[int] = field(default_factory=list)
    comparisons: list[Comparison] = field(default_factory=list)
    registry: RegistryVerdict | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        registry_ok = self.registry is None or self.registry.ok
        return not self.problems and registry_ok and all(c.ok for c in self.comparisons)


@dataclass(frozen=True)
class _Loaded:
    text: str
    raw: dict[str, Any]


def default_schemas_dir() -> Path:
    """The schemas the service ships (``service/schemas``; in a checkout, ``schemas/``)."""
    return Path(__file__).resolve().parent.parent / "schemas"


def compare_files(directory: Path, *, transitive: bool = False) -> list[SchemaReport]:
    """One report per ``*.avsc`` in ``directory`` against its released versions, and one per
    released stem whose current file is missing."""
    current_files = sorted(directory.glob("*.avsc"))
    released = _released(directory / RELEASED_DIR)
    reports = [
        _compare_one(path, released.get(path.stem, {}), transitive) for path in current_files
    ]
    for stem in sorted(set(released) - {path.stem for path in current_files}):
        reports.append(
            SchemaReport(
                file=f"{stem}.avsc",
                released_versions=sorted(released[stem]),
                problems=[
                    f"released as {stem}.v{max(released[stem])}.avsc but {stem}.avsc is "
                    "gone: a schema producers or consumers use cannot be removed"
                ],
            )
        )
    return reports


def _released(folder: Path) -> dict[str, dict[int, Path]]:
    found: dict[str, dict[int, Path]] = {}
    if not folder.is_dir():
        return found
    for path in folder.iterdir():
        match = _RELEASED_NAME.match(path.name)
        if match is not None:
            found.setdefault(match["stem"], {})[int(match["version"])] = path
    return found


def _load(path: Path) -> _Loaded:
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (OSError, ValueError) as exc:
        raise SchemaShapeError(f"{path}: not readable as JSON ({exc})") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record" or "name" not in raw:
        raise SchemaShapeError(f"{path}: the top level is not an Avro record with a name")
    return _Loaded(text, raw)


def _full_name(raw: dict[str, Any]) -> str:
    name = str(raw["name"])
    namespace = raw.get("namespace")
    return f"{namespace}.{name}" if namespace and "." not in name else name


def _compare_one(path: Path, released: dict[int, Path], transitive: bool) -> SchemaReport:
    report = SchemaReport(file=path.name, released_versions=sorted(released))
    try:
        current = _load(path)
        report.full_name = _full_name(current.raw)
        versions = {version: _load(released[version]) for version in sorted(released)}
    except SchemaShapeError as exc:
        report.problems.append(str(exc))
        return report
    for version, loaded in versions.items():
        if loaded.raw == current.raw:
            report.current_version = version
    older = [
        version
        for version in sorted(versions)
        if versions[version].raw != current.raw
        and (report.current_version is None or version < report.current_version)
    ]
    targets = older if transitive else older[-1:]
    for version in targets:
        old = versions[version].raw
        try:
            report.comparisons.append(
                Comparison(
                    version,
                    backward=incompatibilities(reader=current.raw, writer=old),
                    forward=incompatibilities(reader=old, writer=current.raw),
                )
            )
        except SchemaShapeError as exc:
            report.problems.append(f"v{version} against the current file: {exc}")
    return report


async def check_registry(
    reports: Sequence[SchemaReport], settings: Settings, directory: Path
) -> None:
    """Fill each report's ``registry`` verdict from the configured registry."""
    async with SchemaRegistryClient.from_settings(settings.schema_registry) as client:
        for report in reports:
            if report.full_name is None or report.problems:
                continue
            subject = _subject(report.full_name, settings)
            if subject is None:
                report.registry = RegistryVerdict(
                    subject="?",
                    error=f"no topic is known for {report.full_name}: its subject under the "
                    f"{settings.schema_registry.subject_strategy!r} strategy is unknown",
                )
                continue
            text = (directory / report.file).read_text(encoding="utf-8")
            report.registry = await _verdict(client, subject, text)


def _subject(full_name: str, settings: Settings) -> str | None:
    strategy = settings.schema_registry.subject_strategy
    attribute = _TOPIC_OF_RECORD.get(full_name.rsplit(".", 1)[-1])
    if attribute is None:
        return full_name if strategy == "record" else None
    topic = str(getattr(settings.kafka, attribute))
    return subject_name(strategy, topic, full_name)


async def _verdict(client: SchemaRegistryClient, subject: str, text: str) -> RegistryVerdict:
    try:
        latest = await client.latest(subject)
        if latest is None:
            return RegistryVerdict(subject)
        registered = await client.lookup(subject, text)
        compatible = await client.is_compatible(subject, text)
    except PointsAdjusterError as exc:
        return RegistryVerdict(subject, error=f"{client.where}: {exc}")
    return RegistryVerdict(
        subject,
        latest_version=latest.version,
        latest_id=latest.id,
        registered_id=registered,
        compatible=compatible,
    )


# --- output ---------------------------------------------------------------------------------


def print_text(reports: Sequence[SchemaReport], out: TextIO, *, registry_url: str | None) -> None:
    """One block per schema, then a summary line."""
    for report in reports:
        status = "ok" if report.ok else "INCOMPATIBLE" if _incompatible(report) else "ERROR"
        name = f" ({report.full_name})" if report.full_name else ""
        print(f"{report.file}{name}: {status}", file=out)
        print(f"  {_version_line(report)}", file=out)
        for problem in report.problems:
            print(f"  ERROR {problem}", file=out)
        if not report.comparisons and not report.problems:
            print("  no earlier released version to compare with", file=out)
        for comparison in report.comparisons:
            print(
                f"  against v{comparison.version}: BACKWARD {_word(comparison.backward)}, "
                f"FORWARD {_word(comparison.forward)}",
                file=out,
            )
            for direction, found in (
                ("BACKWARD", comparison.backward),
                ("FORWARD", comparison.forward),
            ):
                for incompatibility in found:
                    print(f"    {direction}: {incompatibility}", file=out)
        if report.registry is not None:
            print(f"  registry: {_registry_line(report.registry)}", file=out)
    failed = [report.file for report in reports if not report.ok]
    where = f"; registry {registry_url}" if registry_url else "; no registry configured"
    if failed:
        print(
            f"{len(failed)} of {len(reports)} schemas failed the check: {', '.join(failed)}",
            file=out,
        )
    else:
        print(f"{len(reports)} schemas compatible{where}", file=out)


def _incompatible(report: SchemaReport) -> bool:
    registry_refused = report.registry is not None and report.registry.compatible is False
    return registry_refused or not all(c.ok for c in report.comparisons)


def _version_line(report: SchemaReport) -> str:
    released = ", ".join(f"v{v}" for v in report.released_versions) or "none"
    if report.current_version is not None:
        return f"current = v{report.current_version} (released: {released})"
    return f"current: not released yet (released: {released})"


def _word(found: Sequence[Incompatibility]) -> str:
    return "ok" if not found else f"FAILED ({len(found)})"


def _registry_line(verdict: RegistryVerdict) -> str:
    if verdict.error is not None:
        return f"ERROR {verdict.error}"
    if verdict.compatible is None:
        return f"subject {verdict.subject} has no version yet: nothing to check"
    state = "compatible" if verdict.compatible else "NOT compatible"
    registered = (
        f"; registered as id {verdict.registered_id}"
        if verdict.registered_id is not None
        else "; not registered yet"
    )
    return (
        f"{state} with subject {verdict.subject} (latest v{verdict.latest_version}, "
        f"id {verdict.latest_id}, under the subject's compatibility level){registered}"
    )


def as_json(reports: Sequence[SchemaReport], *, registry_url: str | None) -> dict[str, Any]:
    """The reports as one JSON document (``--json``)."""

    def problems(found: Sequence[Incompatibility]) -> list[dict[str, str]]:
        return [{"path": item.path, "message": item.message} for item in found]

    return {
        "ok": all(report.ok for report in reports),
        "registry_url": registry_url,
        "schemas": [
            {
                "file": report.file,
                "full_name": report.full_name,
                "ok": report.ok,
                "current_version": report.current_version,
                "released_versions": report.released_versions,
                "problems": report.problems,
                "comparisons": [
                    {
                        "version": c.version,
                        "backward": problems(c.backward),
                        "forward": problems(c.forward),
                    }
                    for c in report.comparisons
                ],
                "registry": None
                if report.registry is None
                else {
                    "subject": report.registry.subject,
                    "latest_version": report.registry.latest_version,
                    "latest_id": report.registry.latest_id,
                    "registered_id": report.registry.registered_id,
                    "compatible": report.registry.compatible,
                    "error": report.registry.error,
                },
            }
            for report in reports
        ],
    }


async def run_schemas_check(
    settings: Settings,
    *,
    directory: Path | None,
    transitive: bool,
    use_registry: bool,
    as_json_output: bool,
    out: TextIO,
) -> int:
    """The command: compare, ask the registry when configured, print; 0 when all is well."""
    folder = directory or default_schemas_dir()
    if not folder.is_dir():
        raise SchemaShapeError(f"{folder} is not a folder of schemas")
    if not any(folder.glob("*.avsc")):
        raise SchemaShapeError(f"{folder} holds no *.avsc schema")
    reports = compare_files(folder, transitive=transitive)
    registry_url = settings.schema_registry.url if use_registry else None
    if registry_url is not None:
        await check_registry(reports, settings, folder)
    shown_url = redact_url(registry_url) if registry_url is not None else None
    if as_json_output:
        print(json.dumps(as_json(reports, registry_url=shown_url), indent=2), file=out)
    else:
        print_text(reports, out, registry_url=shown_url)
    return 0 if all(report.ok for report in reports) else 1
