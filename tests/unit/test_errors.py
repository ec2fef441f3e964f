"""The exception tree drawn in ``service.errors`` is the one the code defines, and every error
in it is raised somewhere."""

from __future__ import annotations

import importlib
import pkgutil
import re
from pathlib import Path

import service
import service.errors
from service.errors import PointsAdjusterError

SERVICE = Path(service.__file__).parent
OUTSIDE_MARKER = "Outside the tree, on purpose:"
_ROOT = re.compile(r"^(?P<name>[A-Z]\w*)\s")
_CHILD = re.compile(r"^(?P<indent>(?:│   |    )*)(?:├── |└── )(?P<name>\w+)\s")
_OUTSIDE = re.compile(r"^(?P<name>_?[A-Z]\w*) \((?P<base>\w+)\)")


def defined_exceptions() -> dict[str, type[BaseException]]:
    """Every exception class defined in a module of ``service``, by name."""
    found: dict[str, type[BaseException]] = {}
    for info in pkgutil.walk_packages([str(SERVICE)], prefix="service."):
        if info.name.endswith("__main__"):
            continue
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if (
                isinstance(value, type)
                and issubclass(value, BaseException)
                and value.__module__ == module.__name__
            ):
                found[value.__name__] = value
    return found


def drawn_tree() -> tuple[dict[str, str | None], dict[str, str]]:
    """(each name in the tree with its drawn parent, each name drawn outside with its base)."""
    doc = service.errors.__doc__ or ""
    tree_part, _, outside_part = doc.partition(OUTSIDE_MARKER)
    parents: dict[str, str | None] = {}
    path: list[str] = []
    for line in tree_part.splitlines():
        child = _CHILD.match(line)
        root = _ROOT.match(line)
        if child:
            depth = len(child["indent"]) // 4 + 1
            path[depth:] = [child["name"]]
            parents[child["name"]] = path[depth - 1]
        elif root and root["name"].endswith("Error"):
            path = [root["name"]]
            parents[root["name"]] = None
    outside = {m["name"]: m["base"] for m in map(_OUTSIDE.match, outside_part.splitlines()) if m}
    return parents, outside


def test_every_exception_the_service_defines_is_drawn_once() -> None:
    """Each exception class of service/ appears in the drawing, in the tree or outside it."""
    parents, outside = drawn_tree()
    assert not set(parents) & set(outside)
    assert set(defined_exceptions()) == set(parents) | set(outside)


def test_the_tree_matches_the_classes() -> None:
    """Each class in the tree derives directly from the parent drawn above it, and the root is
    ``PointsAdjusterError``."""
    parents, _ = drawn_tree()
    classes = defined_exceptions()
    assert [name for name, parent in parents.items() if parent is None] == ["PointsAdjusterError"]
    for name, parent in parents.items():
        if parent is not None:
            assert classes[parent] in classes[name].__bases__, f"{name} is not a {parent}"


def test_what_is_drawn_outside_is_outside_with_its_stated_base() -> None:
    """The errors drawn outside the tree are not PointsAdjusterErrors and have the base the
    drawing names (OwnershipLostError stays a RuntimeError: the runner catches it by name)."""
    _, outside = drawn_tree()
    classes = defined_exceptions()
    assert outside["OwnershipLostError"] == "RuntimeError"
    for name, base in outside.items():
        assert not issubclass(classes[name], PointsAdjusterError)
        assert base in {b.__name__ for b in classes[name].__bases__}


def test_every_error_without_subclasses_is_raised_somewhere() -> None:
    """Each leaf of the drawing is built somewhere in service/ besides its own definition (a
    ``raise X(...)``, or a helper returning one to raise)."""
    parents, outside = drawn_tree()
    bases = set(parents.values())
    source = "\n".join(path.read_text(encoding="utf-8") for path in SERVICE.rglob("*.py"))
    for name in (set(parents) | set(outside)) - bases:
        built = len(re.findall(rf"(?<![\w.]){name}\(", source))
        defined = len(re.findall(rf"class {name}\(", source))
        assert built > defined, f"{name} is never raised"
