"""The schema registry the tests start (Apicurio, tests/registry_support.py) serves the
Confluent API the service and other teams' serializers use: register, fetch by id, look up,
compatibility rules and checks, deletion."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from pa_devkit.localinfra.errors import LocalRegistryError
from pa_devkit.localinfra.registry import fetch_apicurio, runner_jar
from tests.registry_support import (
    RegistryUnderTest,
    own_registry,
    registry_request,
    unique_name,
)

pytestmark = pytest.mark.registry

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"

V1: dict[str, Any] = {
    "type": "record",
    "name": "Probe",
    "namespace": "test.registry",
    "fields": [{"name": "id", "type": "string"}],
}
V2_OPTIONAL: dict[str, Any] = {
    **V1,
    "fields": [*V1["fields"], {"name": "note", "type": "string", "default": ""}],
}
V2_REQUIRED: dict[str, Any] = {**V1, "fields": [*V1["fields"], {"name": "note", "type": "string"}]}


def _register(url: str, subject: str, schema: Mapping[str, object]) -> int:
    response = registry_request(
        url, "POST", f"/subjects/{subject}/versions", {"schema": json.dumps(schema)}
    )
    assert response.status_code == 200, response.text
    schema_id = response.json()["id"]
    assert isinstance(schema_id, int)
    return schema_id


def test_register_fetch_by_id_and_look_up(registry_url: str, fresh_subject: str) -> None:
    command_schema = (SCHEMAS / "points_adjustment_requested.avsc").read_text(encoding="utf-8")
    response = registry_request(
        registry_url, "POST", f"/subjects/{fresh_subject}/versions", {"schema": command_schema}
    )
    assert response.status_code == 200, response.text
    schema_id = response.json()["id"]

    by_id = registry_request(registry_url, "GET", f"/schemas/ids/{schema_id}")
    assert by_id.status_code == 200, by_id.text
    assert json.loads(by_id.json()["schema"]) == json.loads(command_schema)

    again = registry_request(
        registry_url, "POST", f"/subjects/{fresh_subject}/versions", {"schema": command_schema}
    )
    assert again.json()["id"] == schema_id  # the same schema registered twice: one id
    lookup = registry_request(
        registry_url, "POST", f"/subjects/{fresh_subject}", {"schema": command_schema}
    )
    assert lookup.status_code == 200, lookup.text
    assert (lookup.json()["id"], lookup.json()["version"]) == (schema_id, 1)
    latest = registry_request(registry_url, "GET", f"/subjects/{fresh_subject}/versions/latest")
    assert latest.json()["id"] == schema_id
    missing = registry_request(registry_url, "GET", "/schemas/ids/987654321")
    assert missing.status_code == 404


def test_compatibility_checks_follow_the_subjects_rule(
    registry_url: str, fresh_subject: str
) -> None:
    _register(registry_url, fresh_subject, V1)
    rule = registry_request(
        registry_url, "PUT", f"/config/{fresh_subject}", {"compatibility": "BACKWARD"}
    )
    assert rule.status_code == 200, rule.text

    def compatible(schema: Mapping[str, object]) -> bool:
        response = registry_request(
            registry_url,
            "POST",
            f"/compatibility/subjects/{fresh_subject}/versions/latest",
            {"schema": json.dumps(schema)},
        )
        assert response.status_code == 200, response.text
        verdict = response.json()["is_compatible"]
        assert isinstance(verdict, bool)
        return verdict

    assert compatible(V2_OPTIONAL)  # a field added with a default: old records still read
    assert not compatible(V2_REQUIRED)  # without one the new reader cannot read old records
    refused = registry_request(
        registry_url,
        "POST",
        f"/subjects/{fresh_subject}/versions",
        {"schema": json.dumps(V2_REQUIRED)},
    )
    assert refused.status_code == 409, refused.text
    assert _register(registry_url, fresh_subject, V2_OPTIONAL) > 0


def test_subjects_of_one_test_are_not_seen_by_another(
    registry_under_test: RegistryUnderTest,
) -> None:
    subject = unique_name("isolated") + "-value"
    assert subject not in registry_request(registry_under_test.url, "GET", "/subjects").json()
    _register(registry_under_test.url, subject, V1)
    assert subject in registry_request(registry_under_test.url, "GET", "/subjects").json()


def test_the_download_is_cached_and_its_runner_found(tmp_path: Path) -> None:
    app = fetch_apicurio()  # the session's registry fetched it: no network here
    assert runner_jar(app).is_file()
    (tmp_path / "empty").mkdir()
    with pytest.raises(LocalRegistryError, match=r"neither quarkus-run\.jar"):
        runner_jar(tmp_path / "empty")


def test_a_registry_restarts_empty_on_its_port() -> None:
    with own_registry() as server:
        port = server.port
        _register(server.url, "restart-value", V1)
        server.restart()
        assert server.port == port
        after = registry_request(server.url, "GET", "/subjects")
        assert after.json() == []  # in memory: nothing survives a restart
    assert not server.running
