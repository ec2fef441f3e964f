"""README.md stays true to the code it documents."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel

from service.cli import build_parser
from service.metrics import Metrics
from service.settings import Settings, env_name

README = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8")


def _env_names(model: type[BaseModel], prefix: tuple[str, ...] = ()) -> list[str]:
    names: list[str] = []
    for name, field in model.model_fields.items():
        annotation = field.annotation
        if isinstance(annotation, type) and issubclass(annotation, BaseModel):
            names.extend(_env_names(annotation, (*prefix, name)))
        else:
            names.append(env_name((*prefix, name)))
    return names


def test_every_setting_is_documented() -> None:
    """Each environment variable the settings read appears in the README's settings table."""
    missing = [name for name in _env_names(Settings) if f"`{name}`" not in README]
    assert missing == []


def test_every_metric_is_documented() -> None:
    """Each metric family the service exports appears in the README's metrics table."""
    families = {metric.name for metric in Metrics().registry.collect()}
    missing = sorted(
        name for name in families if f"`{name}" not in README and f"`{name}_" not in README
    )
    assert families
    assert missing == []


def test_every_cli_command_is_documented() -> None:
    """Each sub-command of the CLI has a row in the README's command table."""
    parser = build_parser()
    subparsers = next(a for a in parser._actions if a.dest == "command")
    commands = list(subparsers.choices)  # type: ignore[attr-defined]
    assert commands
    assert [c for c in commands if f"| `{c}" not in README] == []
