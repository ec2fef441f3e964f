"""The schemas shipped with the service: the current ones and every released version.

``schemas/<stem>.avsc`` is the current version of each schema: what the service reads
commands with (the reader schema) and writes outcome events with. ``schemas/released/``
keeps every version ever released, the current one included, as ``<stem>.v<N>.avsc``; a
released file never changes (``tests/unit/test_schema_layout.py`` keeps the current files
equal to their highest released version and pins each released version's fingerprint).

The released versions are the writer schemas the service knows without a registry: a
single-object record framed with the fingerprint of any of them is read with it and
resolved to the current reader schema (``service.codec.avro``).
"""

from __future__ import annotations

import importlib.resources
import json
import re
from dataclasses import dataclass
from importlib.abc import Traversable
from pathlib import Path
from typing import Any

SCHEMA_STEMS = (
    "points_adjustment_requested",
    "points_adjustment_completed",
    "points_adjustment_failed",
)
"""The file stems of the service's schemas: the command and the two outcome events."""

RELEASED_DIR = "released"
_RELEASED_NAME = re.compile(r"^(?P<stem>[a-z_]+)\.v(?P<version>[1-9][0-9]*)\.avsc$")


def default_schema_dir() -> Traversable:
    """The schemas shipped with the package (``service/schemas``: in a checkout, a link to the
    top-level ``schemas/``; in a wheel, package data), found with ``importlib.resources``."""
    return importlib.resources.files("service") / "schemas"


@dataclass(frozen=True)
class ShippedSchema:
    """One schema file: its stem, version (None for a current file), text and JSON."""

    stem: str
    version: int | None
    text: str
    raw: dict[str, Any]

    @property
    def full_name(self) -> str:
        """``namespace.name`` of the top-level record."""
        namespace = self.raw.get("namespace")
        name = str(self.raw["name"])
        return f"{namespace}.{name}" if namespace and "." not in name else name


def _load(path: Path | Traversable, stem: str, version: int | None) -> ShippedSchema:
    try:
        text = path.read_text(encoding="utf-8")
        raw = json.loads(text)
    except (OSError, ValueError) as exc:
        raise FileNotFoundError(f"cannot load Avro schema {path}: {exc}") from exc
    if not isinstance(raw, dict) or raw.get("type") != "record":
        raise ValueError(f"{path}: a top-level schema must be a record")
    return ShippedSchema(stem, version, text, raw)


def current_schemas(directory: Path | Traversable | None = None) -> list[ShippedSchema]:
    """The current version of each schema, in :data:`SCHEMA_STEMS` order."""
    folder = directory or default_schema_dir()
    return [_load(folder / f"{stem}.avsc", stem, None) for stem in SCHEMA_STEMS]


def released_schemas(directory: Path | Traversable | None = None) -> list[ShippedSchema]:
    """Every released version of every schema, by stem then version (oldest first)."""
    folder = (directory or default_schema_dir()) / RELEASED_DIR
    found: list[ShippedSchema] = []
    for entry in folder.iterdir():
        match = _RELEASED_NAME.match(entry.name)
        if match is None or match["stem"] not in SCHEMA_STEMS:
            continue
        found.append(_load(entry, match["stem"], int(match["version"])))
    found.sort(key=lambda item: (SCHEMA_STEMS.index(item.stem), item.version or 0))
    return found
