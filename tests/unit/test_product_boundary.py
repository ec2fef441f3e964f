"""The product never imports the dev kit: what runs in production holds no sandbox, no local
broker launcher, no key generator and no server-side verifier."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

SERVICE = Path(__file__).resolve().parents[2] / "service"
DEVKIT_PACKAGE = "pa_devkit"

# What the product's command line and the service load, each in a fresh interpreter.
ENTRY_POINTS = ("service.cli", "service.app", "service.tools.check", "service.tools.dlq")


def loaded_modules(module: str) -> set[str]:
    """The modules a fresh interpreter holds after importing ``module``."""
    code = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(result.stdout.split())


def test_loading_the_products_command_line_pulls_in_no_devkit_module() -> None:
    """Importing the command line, the service, check and dlq loads no pa_devkit module (and
    no aiohttp test server of the sandbox)."""
    for entry in ENTRY_POINTS:
        modules = loaded_modules(entry)
        assert entry in modules
        leaked = sorted(m for m in modules if m.split(".")[0] == DEVKIT_PACKAGE)
        assert leaked == [], f"{entry} loads {leaked}"


def test_no_product_module_names_the_devkit_in_an_import() -> None:
    """No import statement anywhere in service/ names pa_devkit, even a lazy one inside a
    function (which the loading test above would not reach)."""
    offenders = []
    for path in sorted(SERVICE.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            names: list[str]
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            else:
                continue
            offenders += [
                f"{path.relative_to(SERVICE.parent)}:{node.lineno} {name}"
                for name in names
                if name.split(".")[0] == DEVKIT_PACKAGE
            ]
    assert offenders == []
