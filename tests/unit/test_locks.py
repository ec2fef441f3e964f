"""requirements/product.lock and requirements/dev.lock stay in step with pyproject.toml and
devkit/pyproject.toml: every dependency those files name is pinned in the lock that installs
it, at a version they allow, with the sha256 hashes pip's --require-hashes checks
(docs/dependencies.md). `make lock` rewrites both; these tests only read them."""

from __future__ import annotations

import re
import tomllib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
from packaging.markers import Marker
from packaging.requirements import Requirement
from packaging.utils import NormalizedName, canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]
PYPROJECT = ROOT / "pyproject.toml"
DEVKIT_PYPROJECT = ROOT / "devkit" / "pyproject.toml"
PRODUCT_LOCK = ROOT / "requirements" / "product.lock"
DEV_LOCK = ROOT / "requirements" / "dev.lock"
DEV_INPUT = ROOT / "requirements" / "dev.in"
MAKEFILE = ROOT / "Makefile"
DOCKERFILE = ROOT / "Dockerfile"

PRODUCT_EXTRAS = ("postgres", "redis")
"""The extras the image installs beside the product's own dependencies (Dockerfile)."""

HASH = re.compile(r"--hash=sha256:[0-9a-f]{64}")


@dataclass(frozen=True)
class Pin:
    """One entry of a lock: a distribution, its exact version and the hashes of its files."""

    name: NormalizedName
    version: Version
    hashes: frozenset[str]
    requirement: Requirement


def _entries(path: Path) -> list[str]:
    """The lock's entries: continuation lines joined, comments and blank lines dropped."""
    entries: list[str] = []
    pending = ""
    for raw in path.read_text("utf-8").splitlines():
        line = raw.strip()
        if line.startswith("#") or not line:
            assert not pending, f"{path.name}: an entry continues into a comment"
            continue
        pending += line.removesuffix("\\").strip() + " "
        if not line.endswith("\\"):
            entries.append(pending.strip())
            pending = ""
    assert not pending, f"{path.name} ends inside a continued entry"
    return entries


@cache
def read_lock(path: Path) -> dict[NormalizedName, Pin]:
    """The pins of a lock file by name; AssertionError on anything but `name==version` entries
    with --hash options (an option line, an editable, a URL, a range, a repeated name)."""
    pins: dict[NormalizedName, Pin] = {}
    for entry in _entries(path):
        assert not entry.startswith("-"), f"{path.name}: an option or editable: {entry}"
        spec, *options = re.split(r"\s+(?=--)", entry)
        requirement = Requirement(spec)
        (specifier,) = requirement.specifier
        assert specifier.operator == "==", f"{path.name}: not an exact pin: {spec}"
        assert "*" not in specifier.version, f"{path.name}: not an exact pin: {spec}"
        assert requirement.url is None, f"{path.name}: a URL: {spec}"
        name = canonicalize_name(requirement.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        unknown = [option for option in options if not option.startswith("--hash=")]
        assert unknown == [], f"{path.name}: {spec}: {unknown}"
        pins[name] = Pin(name, Version(specifier.version), frozenset(options), requirement)
    assert pins, f"{path.name} pins nothing"
    return pins


def _project(path: Path) -> dict[str, object]:
    project = tomllib.loads(path.read_text("utf-8"))["project"]
    assert isinstance(project, dict)
    return project


def _build_requirements(path: Path) -> list[Requirement]:
    requires = tomllib.loads(path.read_text("utf-8"))["build-system"]["requires"]
    return [Requirement(entry) for entry in requires]


@cache
def lock_python() -> str:
    """The Python version the Makefile compiles the locks for (its --python-version)."""
    found = re.search(r"^LOCK_TARGET\s*:=.*--python-version\s+(\S+)", MAKEFILE.read_text(), re.M)
    assert found is not None, "no LOCK_TARGET with --python-version in the Makefile"
    return found.group(1)


def applies(requirement: Requirement) -> bool:
    """Whether the requirement's marker holds on the locks' target: CPython of the locks'
    version on Linux x86-64 (the image)."""
    if requirement.marker is None:
        return True
    target = {
        "python_version": lock_python(),
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "extra": "",
    }
    return Marker(str(requirement.marker)).evaluate(target)


def project_requirements(path: Path, extras: tuple[str, ...]) -> list[Requirement]:
    """A project's dependencies with those of the given extras, an extra that names the project
    itself (``points-adjuster[otel]`` in dev) followed into the extras it names; the project
    itself is not among them."""
    project = _project(path)
    own = canonicalize_name(str(project["name"]))
    optional = project.get("optional-dependencies", {})
    assert isinstance(optional, dict)
    dependencies = project.get("dependencies", [])
    assert isinstance(dependencies, list)
    found = [Requirement(entry) for entry in dependencies]
    pending, seen = list(extras), set[str]()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        assert extra in optional, f"{path.name} has no extra {extra!r}"
        for entry in optional[extra]:
            requirement = Requirement(entry)
            if canonicalize_name(requirement.name) == own:
                pending.extend(requirement.extras)
            else:
                found.append(requirement)
    return found


def dev_input_requirements() -> list[Requirement]:
    """The requirements requirements/dev.in names itself (its -c and -e lines aside)."""
    found: list[Requirement] = []
    for raw in DEV_INPUT.read_text("utf-8").splitlines():
        line = raw.partition(" #")[0].strip()
        if line and not line.startswith(("#", "-")):
            found.append(Requirement(line))
    return found


def unmet(requirements: list[Requirement], lock: Path) -> list[str]:
    """Each requirement (its marker holding on the target) that the lock does not pin, or pins
    at a version outside its specifier."""
    pins = read_lock(lock)
    problems: list[str] = []
    for requirement in requirements:
        if not applies(requirement):
            continue
        pin = pins.get(canonicalize_name(requirement.name))
        if pin is None:
            problems.append(f"{requirement}: not in {lock.name}")
        elif not requirement.specifier.contains(pin.version, prereleases=True):
            problems.append(f"{requirement}: {lock.name} pins {pin.version}")
    return problems


# --- the tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("lock", [PRODUCT_LOCK, DEV_LOCK], ids=lambda path: path.name)
def test_every_entry_is_an_exact_pin_with_its_hashes(lock: Path) -> None:
    """Each entry of the lock is `name==version` followed by at least one sha256 --hash (all
    of them well formed), and nothing else: no option line, editable, URL or range, no name
    twice; the header names `make lock` as the way to rewrite it."""
    pins = read_lock(lock)
    assert [pin.name for pin in pins.values() if not pin.hashes] == []
    malformed = [h for pin in pins.values() for h in pin.hashes if not HASH.fullmatch(h)]
    assert malformed == []
    assert "#    make lock\n" in lock.read_text("utf-8")


def test_the_product_lock_pins_the_product_and_its_store_extras() -> None:
    """Every dependency of pyproject.toml's [project] and of the extras the image installs
    (postgres, redis) is in product.lock, at a version pyproject.toml allows."""
    requirements = project_requirements(PYPROJECT, PRODUCT_EXTRAS)
    names = {canonicalize_name(r.name) for r in requirements}
    assert {"aiokafka", "asyncpg", "redis"} <= names  # the extras were followed
    assert unmet(requirements, PRODUCT_LOCK) == []


def test_the_dev_lock_pins_the_development_environment() -> None:
    """dev.lock holds what `make setup` needs: the product with its dev extra (and the extras
    that extra names: otel, postgres, redis), the dev kit's dependencies, both projects' build
    backend and the tools requirements/dev.in adds, each at a version allowed."""
    requirements = [
        *project_requirements(PYPROJECT, ("dev",)),
        *project_requirements(DEVKIT_PYPROJECT, ()),
        *_build_requirements(PYPROJECT),
        *_build_requirements(DEVKIT_PYPROJECT),
        *dev_input_requirements(),
    ]
    own = {canonicalize_name(str(_project(path)["name"])) for path in (PYPROJECT, DEVKIT_PYPROJECT)}
    requirements = [r for r in requirements if canonicalize_name(r.name) not in own]
    names = {canonicalize_name(r.name) for r in requirements}
    assert {"pytest", "opentelemetry-sdk", "asyncpg", "setuptools", "uv", "pip-audit"} <= names
    assert unmet(requirements, DEV_LOCK) == []


def test_the_dev_lock_holds_the_products_pins_unchanged() -> None:
    """Every package of product.lock is in dev.lock at the same version with the same hashes,
    so the tests run on the versions the image ships."""
    product, dev = read_lock(PRODUCT_LOCK), read_lock(DEV_LOCK)
    differing = [
        f"{name}: {pin.version} in product.lock, {dev[name].version if name in dev else 'absent'}"
        for name, pin in product.items()
        if name not in dev or (dev[name].version, dev[name].hashes) != (pin.version, pin.hashes)
    ]
    assert differing == []


def test_neither_lock_pins_the_projects_themselves() -> None:
    """points-adjuster and its dev kit are never in a lock: the image installs the product's
    wheel and `make setup` this checkout, both with --no-deps after the lock."""
    own = {canonicalize_name(str(_project(path)["name"])) for path in (PYPROJECT, DEVKIT_PYPROJECT)}
    assert own & set(read_lock(PRODUCT_LOCK)) == set()
    assert own & set(read_lock(DEV_LOCK)) == set()


def test_the_locks_are_compiled_for_the_images_python_on_linux_x86_64() -> None:
    """The Makefile compiles the locks for the Python version of the image's base (the
    Dockerfile's python:X.Y-slim) on Linux x86-64, from pyproject.toml with the image's extras
    and from requirements/dev.in, the dev lock constrained to the product lock."""
    makefile = MAKEFILE.read_text("utf-8")
    bases = set(re.findall(r"^FROM python:(\d+\.\d+)[.\w-]*", DOCKERFILE.read_text(), re.M))
    assert bases == {lock_python()}
    assert re.search(
        r"^LOCK_TARGET\s*:=.*--python-platform x86_64-unknown-linux-gnu", makefile, re.M
    )
    extras = " ".join(f"--extra {extra}" for extra in PRODUCT_EXTRAS)
    assert f"pyproject.toml {extras} -o requirements/product.lock" in makefile
    assert "requirements/dev.in" in makefile
    assert "-c product.lock" in DEV_INPUT.read_text("utf-8").splitlines()
