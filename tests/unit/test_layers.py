"""The core never imports an adapter: adapters (``factbus_*``) are found through
entry points (``factbus.plugins``), so a third-party one is on equal footing."""

from __future__ import annotations

import ast
from pathlib import Path

import factbus

ADAPTERS = ("factbus_",)


def _imports(path: Path) -> list[tuple[int, str]]:
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def test_core_imports_no_adapter() -> None:
    core = Path(factbus.__file__).parent
    offenders = [
        f"{path.relative_to(core.parent)}:{line}: import {name}"
        for path in sorted(core.rglob("*.py"))
        for line, name in _imports(path)
        if name.startswith(ADAPTERS)
    ]
    assert not offenders, "\n".join(offenders)
