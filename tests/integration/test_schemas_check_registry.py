"""``points-adjuster schemas check`` against the real registry the tests start (Apicurio):
the current schemas checked against what each subject holds, under the subject's rule."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path

import pytest

from pa_devkit.localinfra.broker_config import free_port
from service.cli import main
from tests.registry_support import delete_subject, registry_request, unique_name

pytestmark = pytest.mark.registry

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
COMMAND_V1 = SCHEMAS / "released" / "points_adjustment_requested.v1.avsc"


@pytest.fixture
def command_subject(
    registry_url: str, monkeypatch: pytest.MonkeyPatch, cli_environment: None
) -> Iterator[str]:
    """Topics of this test's own, the command's subject holding v1 under BACKWARD; the
    command line pointed at the registry."""
    topic = unique_name("commands")
    subject = f"{topic}-value"
    monkeypatch.setenv("PA_SCHEMA_REGISTRY__URL", registry_url)
    monkeypatch.setenv("PA_KAFKA__COMMAND_TOPIC", topic)
    monkeypatch.setenv("PA_KAFKA__COMPLETED_TOPIC", unique_name("completed"))
    monkeypatch.setenv("PA_KAFKA__FAILED_TOPIC", unique_name("failed"))
    v1 = COMMAND_V1.read_text(encoding="utf-8")
    registered = registry_request(
        registry_url, "POST", f"/subjects/{subject}/versions", {"schema": v1}
    )
    assert registered.status_code == 200, registered.text
    rule = registry_request(
        registry_url, "PUT", f"/config/{subject}", {"compatibility": "BACKWARD"}
    )
    assert rule.status_code == 200, rule.text
    yield subject
    delete_subject(registry_url, subject)


def test_the_current_schemas_are_compatible_with_the_registry(
    command_subject: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schemas", "check", "--dir", str(SCHEMAS)]) == 0
    out = capsys.readouterr().out
    assert f"registry: compatible with subject {command_subject} (latest v1, id " in out
    assert "not registered yet" in out  # v2 is checked, never registered
    assert "subject" in out
    assert "-value has no version yet: nothing to check" in out  # the outcome subjects
    assert "3 schemas compatible; registry http://127.0.0.1:" in out


def test_an_incompatible_change_is_refused_by_the_rules_and_the_registry(
    command_subject: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, folder)
    path = folder / "points_adjustment_requested.avsc"
    schema = json.loads(path.read_text(encoding="utf-8"))
    schema["fields"].append({"name": "site", "type": "string"})
    path.write_text(json.dumps(schema), encoding="utf-8")

    assert main(["schemas", "check", "--dir", str(folder), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    command = document["schemas"][2]
    assert command["comparisons"][0]["backward"][0]["path"] == "PointsAdjustmentRequested.site"
    assert command["registry"]["subject"] == command_subject
    assert command["registry"]["compatible"] is False
    assert command["registry"]["latest_version"] == 1

    assert main(["schemas", "check", "--dir", str(folder), "--no-registry"]) == 1
    assert "registry:" not in capsys.readouterr().out


def test_an_unreachable_registry_fails_the_check(
    cli_environment: None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PA_SCHEMA_REGISTRY__URL", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("PA_SCHEMA_REGISTRY__MAX_RETRIES", "0")
    assert main(["schemas", "check", "--dir", str(SCHEMAS)]) == 1
    out = capsys.readouterr().out
    assert "registry: ERROR http://127.0.0.1:" in out
    assert "3 of 3 schemas failed the check" in out
