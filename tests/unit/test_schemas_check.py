"""``points-adjuster schemas check`` (service/tools/schemas.py) on folders of schemas: what it
compares, what it prints, its exit codes. Against a real registry:
tests/integration/test_schemas_check_registry.py."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from service.cli import main
from service.tools.schemas import compare_files

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"
COMMAND = "points_adjustment_requested"


@pytest.fixture(autouse=True)
def _cli_environment(cli_environment: None) -> None:
    """No PA_* variable (so no registry) and no .env reach the command."""


@pytest.fixture
def schemas(tmp_path: Path) -> Path:
    """A copy of the repository's schemas/, to change."""
    folder = tmp_path / "schemas"
    shutil.copytree(SCHEMAS, folder)
    return folder


def _edit(folder: Path, stem: str, change: Any) -> None:
    """Apply ``change`` to the current <stem>.avsc as a new, unreleased version."""
    path = folder / f"{stem}.avsc"
    schema = json.loads(path.read_text(encoding="utf-8"))
    change(schema)
    path.write_text(json.dumps(schema, indent=2), encoding="utf-8")


def _field(schema: dict[str, Any], name: str) -> dict[str, Any]:
    return next(item for item in schema["fields"] if item["name"] == name)


def test_the_repositorys_schemas_pass(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "check", "--dir", str(SCHEMAS), "--transitive"]) == 0
    out = capsys.readouterr().out
    assert (
        "points_adjustment_requested.avsc (loyalty.points.adjustment.v1.PointsAdjustmentRequested)"
        ": ok" in out
    )
    assert "current = v2 (released: v1, v2)" in out
    assert "against v1: BACKWARD ok, FORWARD ok" in out
    assert out.rstrip().endswith("3 schemas compatible; no registry configured")


def test_the_default_folder_is_the_shipped_schemas(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["schemas", "check"]) == 0
    assert "3 schemas compatible" in capsys.readouterr().out


def test_a_removed_field_without_default_fails_forward(
    schemas: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    _edit(
        schemas,
        COMMAND,
        lambda s: s.update(fields=[f for f in s["fields"] if f["name"] != "adjusted_by"]),
    )
    assert main(["schemas", "check", "--dir", str(schemas)]) == 1
    out = capsys.readouterr().out
    assert "points_adjustment_requested.avsc (" in out
    assert ": INCOMPATIBLE" in out
    assert "current: not released yet (released: v1, v2)" in out
    assert "against v2: BACKWARD ok, FORWARD FAILED (1)" in out
    assert (
        "FORWARD: PointsAdjustmentRequested.adjusted_by: the reader's field has no default "
        "and the writer has no such field" in out
    )
    assert "1 of 3 schemas failed the check: points_adjustment_requested.avsc" in out


def test_a_changed_type_fails_both_ways(schemas: Path) -> None:
    _edit(schemas, COMMAND, lambda s: _field(s, "points_to_adjust").update(type="string"))
    [_, _, report] = compare_files(schemas)
    [comparison] = report.comparisons
    assert comparison.version == 2
    assert [str(item) for item in comparison.backward] == [
        "PointsAdjustmentRequested.points_to_adjust: the writer's long cannot be read as the "
        "reader's string"
    ]
    assert len(comparison.forward) == 1


def test_a_new_enum_symbol_fails_forward_without_a_default(schemas: Path) -> None:
    colour = {"type": "enum", "name": "Channel", "symbols": ["WEB", "BRANCH"]}
    _edit(
        schemas,
        COMMAND,
        lambda s: s["fields"].append({"name": "via", "type": colour, "default": "WEB"}),
    )
    # release it as v3, then add a symbol in the current file
    shutil.copy(schemas / f"{COMMAND}.avsc", schemas / "released" / f"{COMMAND}.v3.avsc")
    _edit(schemas, COMMAND, lambda s: _field(s, "via")["type"]["symbols"].append("PHONE"))
    [_, _, report] = compare_files(schemas)
    [comparison] = report.comparisons
    assert comparison.version == 3
    assert comparison.backward == []
    assert [item.message for item in comparison.forward] == [
        "enum loyalty.points.adjustment.v1.Channel: the writer's symbol(s) PHONE are not the "
        "reader's, which has no default symbol"
    ]


def test_a_field_added_without_default_fails_backward_and_transitive_names_each_version(
    schemas: Path,
) -> None:
    _edit(schemas, COMMAND, lambda s: s["fields"].append({"name": "site", "type": "string"}))
    [_, _, previous_only] = compare_files(schemas)
    [_, _, every] = compare_files(schemas, transitive=True)
    assert [c.version for c in previous_only.comparisons] == [2]
    assert [c.version for c in every.comparisons] == [1, 2]
    for comparison in every.comparisons:
        assert [item.path for item in comparison.backward] == ["PointsAdjustmentRequested.site"]
        assert comparison.forward == []


def test_json_output(schemas: Path, capsys: pytest.CaptureFixture[str]) -> None:
    _edit(schemas, COMMAND, lambda s: _field(s, "points_to_adjust").update(type="int"))
    assert main(["schemas", "check", "--dir", str(schemas), "--json"]) == 1
    document = json.loads(capsys.readouterr().out)
    assert document["ok"] is False
    assert document["registry_url"] is None
    command = document["schemas"][2]
    assert command["file"] == "points_adjustment_requested.avsc"
    assert command["current_version"] is None
    assert command["comparisons"] == [
        {
            "version": 2,
            "backward": [
                {
                    "path": "PointsAdjustmentRequested.points_to_adjust",
                    "message": "the writer's long cannot be read as the reader's int",
                }
            ],
            "forward": [],
        }
    ]


def test_a_removed_schema_and_an_unreadable_one_are_errors(
    schemas: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    (schemas / "points_adjustment_failed.avsc").unlink()
    (schemas / "points_adjustment_completed.avsc").write_text("{not json", encoding="utf-8")
    assert main(["schemas", "check", "--dir", str(schemas)]) == 1
    out = capsys.readouterr().out
    assert (
        "ERROR released as points_adjustment_failed.v1.avsc but "
        "points_adjustment_failed.avsc is gone" in out
    )
    assert "points_adjustment_completed.avsc: not readable as JSON" in out


def test_a_first_version_has_nothing_to_compare(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(SCHEMAS / f"{COMMAND}.avsc", tmp_path / "new_thing.avsc")
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "current: not released yet (released: none)" in out
    assert "no earlier released version to compare with" in out


def test_a_folder_without_schemas_is_a_usage_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 2
    assert f"{tmp_path} holds no *.avsc schema" in capsys.readouterr().err


def test_help_explains_the_directions(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["schemas", "check", "--help"])
    out = capsys.readouterr().out
    assert "BACKWARD  the current schema reads what the released one wrote" in out
    assert "PA_SCHEMA_REGISTRY__URL" in out
